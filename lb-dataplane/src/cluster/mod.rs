//! The cluster: what this node announces to the upstream routers, and the
//! routing daemon (BIRD 2) that announces it.
//!
//! `lbd` never speaks BGP itself. The node's BIRD runs the BGP and BFD
//! sessions; its `bird.conf` (the operator's) includes a file that `lbd`
//! writes ([`render`]): the BFD protocol, one BGP protocol per
//! `[[cluster.peer]]` and static routes holding exactly what the node
//! announces. Whenever that changes, [`driver`] rewrites the file
//! atomically and runs `birdc configure`, on a thread of its own: the
//! workers never wait for it.
//!
//! What is announced ([`announced`]): each VIP, as a /32 or /128, while
//! at least one of its load balancer's listeners has a healthy server of
//! the VIP's family (health checked and up, weight above 0, not drained)
//! and the node is not draining; and the node's FULLNAT local addresses, which the
//! backends' replies come back to, draining or not. On a clean stop
//! nothing is.
//!
//! The static routes are device routes through the TAP interface of the
//! peer's port ([`route_device`]), so that they go away with it: BIRD
//! withdraws a route whose interface is gone, and the TAP goes when
//! `lbd` does, however it ends.

pub mod driver;
pub mod render;
pub mod text;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use lb_core::model::{Config, Port, SchedulerKind};

use crate::health::HealthTable;

/// What the node announces: host prefixes, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Announced {
    /// VIPs with a healthy server, unless the node drains.
    pub vips: BTreeSet<IpNet>,
    /// FULLNAT local addresses.
    pub locals: BTreeSet<IpNet>,
}

impl Announced {
    /// Every prefix, VIPs first.
    pub fn prefixes(&self) -> impl Iterator<Item = &IpNet> + '_ {
        self.vips.iter().chain(self.locals.difference(&self.vips))
    }

    pub fn len(&self) -> usize {
        self.prefixes().count()
    }

    pub fn is_empty(&self) -> bool {
        self.vips.is_empty() && self.locals.is_empty()
    }
}

/// A host prefix: /32 or /128.
pub fn host(a: IpAddr) -> IpNet {
    IpNet::from(a)
}

/// What the node announces under `cfg` with its servers' `health`:
/// nothing without `[cluster]`.
pub fn announced(cfg: &Config, health: &HealthTable, draining: bool) -> Announced {
    let mut out = Announced::default();
    if cfg.cluster.is_none() {
        return out;
    }
    for lb in &cfg.load_balancers {
        out.locals
            .extend(lb.local_addresses.iter().copied().map(host));
        if draining {
            continue;
        }
        for &vip in &lb.vips {
            let served = lb.listeners.iter().any(|l| {
                let g = &cfg.server_groups[l.server_group];
                g.servers.iter().enumerate().any(|(si, s)| {
                    // A drained server (effective weight 0) serves no new
                    // session, so it does not keep a VIP announced.
                    s.weight > 0
                        && health
                            .servers
                            .weight(l.server_group, si)
                            .is_none_or(|w| w > 0)
                        && s.addresses.iter().any(|a| a.is_ipv6() == vip.is_ipv6())
                        && healthy(health, l.server_group, si, g.health_check.enabled)
                })
            });
            if served {
                out.vips.insert(host(vip));
            }
        }
    }
    out
}

/// A server known to be healthy: its check has concluded and it is up
/// (a server whose check is off counts as up). A server not yet checked
/// is not: a node that starts announces a VIP once its checks say so.
fn healthy(health: &HealthTable, group: usize, server: usize, checked_at_all: bool) -> bool {
    health.server(group, server).is_some_and(|h| {
        h.up.load(Ordering::Relaxed) && (!checked_at_all || h.checked.load(Ordering::Relaxed))
    })
}

/// Warnings about a clustered configuration that works but will not
/// behave as a cluster should: server groups of listeners that choose
/// by something other than Maglev's consistent hash (another node would
/// send the same flow to another server).
pub fn warnings(cfg: &Config) -> Vec<String> {
    if cfg.cluster.is_none() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for lb in &cfg.load_balancers {
        for l in &lb.listeners {
            let g = &cfg.server_groups[l.server_group];
            let name = match g.scheduler {
                SchedulerKind::Maglev => continue,
                SchedulerKind::Wrr => "wrr",
                SchedulerKind::Wlc => "wlc",
            };
            out.push(format!(
                "listener {}:{} of a cluster node uses server group {} with scheduler {name}; \
                 use \"maglev\" so that every node sends a flow to the same server",
                lb.id, l.port, g.id
            ));
        }
    }
    out
}

/// The interface BFD and the static routes of peers behind `port` use:
/// the port's TAP (`[[port]] tap`), through which the node's kernel, and
/// its BIRD, reach the peer, and which goes away with `lbd`.
pub fn route_device(port: &Port) -> Option<&str> {
    port.tap.as_deref()
}

/// What the driver needs of the daemon it runs in: the health checker's
/// view (configuration, servers' health, whether to stop), the daemon's
/// clock and the cluster state.
pub trait Host: crate::health::Host {
    /// Nanoseconds since the daemon started.
    fn now_ns(&self) -> u64;
    fn cluster(&self) -> &ClusterState;
}

/// The cluster's state in the running daemon: drain, what was last
/// announced, and the routing daemon's counters.
#[derive(Debug, Default)]
pub struct ClusterState {
    /// The node withdraws its VIPs (and keeps forwarding its sessions).
    pub draining: AtomicBool,
    drain: Mutex<DrainClock>,
    /// Bumped when the workers are to end their listener sessions (a
    /// drain's deadline passed); each worker compares it with the value it
    /// last saw, between bursts.
    pub end_sessions: AtomicU64,
    /// Prefixes BIRD was last configured with.
    pub announced: Mutex<Vec<String>>,
    pub bird_reconfigs: AtomicU64,
    pub bird_errors: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Set by [`ClusterState::withdraw_all`]: announce nothing, for good.
    stopping: AtomicBool,
    /// The driver's wake-up, and whether the last withdrawal is done.
    wake: Mutex<Wake>,
    woken: Condvar,
}

#[derive(Debug, Default)]
struct DrainClock {
    /// Nanoseconds (the daemon's clock) at which the sessions end.
    deadline_ns: Option<u64>,
    fired: bool,
}

#[derive(Debug, Default)]
struct Wake {
    poked: bool,
    withdrawn: bool,
}

/// The state reported by `lbctl drain` and `lbctl stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainStatus {
    pub draining: bool,
    /// Seconds until the sessions end (rounded up); `None`: no deadline.
    pub deadline_in_s: Option<u64>,
    /// The deadline passed and the sessions were ended.
    pub deadline_passed: bool,
}

impl ClusterState {
    /// Starts draining (again): VIPs are withdrawn at once; with a
    /// `deadline`, the listener sessions that remain end when it passes.
    pub fn drain(&self, deadline: Option<Duration>, now_ns: u64) {
        let mut d = self.drain.lock().unwrap_or_else(|p| p.into_inner());
        d.deadline_ns = deadline
            .map(|t| now_ns.saturating_add(u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)));
        d.fired = false;
        self.draining.store(true, Ordering::Relaxed);
        drop(d);
        self.poke();
    }

    /// Ends a drain: VIPs are announced again (as health allows).
    pub fn undrain(&self) {
        let mut d = self.drain.lock().unwrap_or_else(|p| p.into_inner());
        *d = DrainClock::default();
        self.draining.store(false, Ordering::Relaxed);
        drop(d);
        self.poke();
    }

    pub fn status(&self, now_ns: u64) -> DrainStatus {
        let d = self.drain.lock().unwrap_or_else(|p| p.into_inner());
        DrainStatus {
            draining: self.draining.load(Ordering::Relaxed),
            deadline_in_s: d
                .deadline_ns
                .filter(|_| !d.fired)
                .map(|t| t.saturating_sub(now_ns).div_ceil(1_000_000_000)),
            deadline_passed: d.fired,
        }
    }

    /// "active" or "draining".
    pub fn state_name(&self) -> &'static str {
        if self.draining.load(Ordering::Relaxed) {
            "draining"
        } else {
            "active"
        }
    }

    /// Ends the listener sessions if a drain's deadline passed by
    /// `now_ns` (once per drain). Returns whether it did.
    pub fn check_deadline(&self, now_ns: u64) -> bool {
        let mut d = self.drain.lock().unwrap_or_else(|p| p.into_inner());
        let due = self.draining.load(Ordering::Relaxed)
            && !d.fired
            && d.deadline_ns.is_some_and(|t| now_ns >= t);
        if due {
            d.fired = true;
            self.end_sessions.fetch_add(1, Ordering::Relaxed);
        }
        due
    }

    /// Wakes the driver now (rather than at its next poll).
    pub fn poke(&self) {
        let mut w = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        w.poked = true;
        self.woken.notify_all();
    }

    /// Waits up to `timeout` for a poke; clears it.
    fn wait_poke(&self, timeout: Duration) {
        let w = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        let (mut w, _) = self
            .woken
            .wait_timeout_while(w, timeout, |w| !w.poked)
            .unwrap_or_else(|p| p.into_inner());
        w.poked = false;
    }

    /// Whether the driver is to announce nothing from now on.
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// The driver configured BIRD with nothing announced.
    fn set_withdrawn(&self) {
        let mut w = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        w.withdrawn = true;
        self.woken.notify_all();
    }

    /// A clean stop: asks the driver to withdraw everything and waits up
    /// to `timeout` for BIRD to have taken it. Returns whether it did.
    pub fn withdraw_all(&self, timeout: Duration) -> bool {
        self.stopping.store(true, Ordering::Relaxed);
        self.poke();
        let w = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        let (w, _) = self
            .woken
            .wait_timeout_while(w, timeout, |w| !w.withdrawn)
            .unwrap_or_else(|p| p.into_inner());
        w.withdrawn
    }
}

#[cfg(test)]
mod tests;
