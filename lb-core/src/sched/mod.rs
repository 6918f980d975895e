//! Backend selection for new connections.
//!
//! ```
//! use lb_core::model::SchedulerKind;
//! use lb_core::sched::{build, Scheduler, SmoothWrr};
//!
//! // nginx's smooth weighted round-robin: weights 5, 1, 1.
//! let mut wrr = SmoothWrr::new(&[5, 1, 1]);
//! let up = [true, true, true];
//! let picks: Vec<usize> = (0..7).filter_map(|_| wrr.pick(&up, 0)).collect();
//! assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
//!
//! // Maglev: the same flow hash keeps its server while the set is stable.
//! let mut maglev = build(SchedulerKind::Maglev, &[1, 1, 1], &["a", "b", "c"]);
//! let first = maglev.pick(&up, 0xdead_beef);
//! assert_eq!(maglev.pick(&up, 0xdead_beef), first);
//! assert_eq!(maglev.pick(&[false; 3], 0xdead_beef), None);
//! ```
//!
//! Servers are indices `0..n` into the caller's list. `up[i]` says whether
//! server `i` is healthy (servers beyond `up.len()` count as down); a server
//! that is down or has weight 0 never gets a new connection, and `pick`
//! returns `None` exactly when no server is eligible.
//!
//! `pick` only chooses: schedulers that count connections ([`Wlc`]) learn
//! about them through [`Scheduler::connected`] (when the caller creates the
//! session) and [`Scheduler::disconnected`] (when it goes away). Each worker
//! owns its schedulers; nothing here is shared between threads.

#[cfg(test)]
mod cluster_tests;
mod maglev;
pub mod slow_start;
mod wlc;
mod wrr;

pub use maglev::{Maglev, DEFAULT_TABLE_SIZE};
pub use slow_start::{ServerState, WEIGHT_SCALE};
pub use wlc::Wlc;
pub use wrr::SmoothWrr;

use crate::model::SchedulerKind;

/// Chooses a server for a new connection.
pub trait Scheduler: std::fmt::Debug + Send {
    /// The server for a new connection with flow hash `hash`, among the
    /// eligible ones (up and weight > 0); `None` if there is none.
    fn pick(&mut self, up: &[bool], hash: u64) -> Option<usize>;

    /// Whether `pick` reads its `hash` (the caller may pass 0 otherwise
    /// and save computing it).
    fn uses_hash(&self) -> bool {
        true
    }

    /// A connection to `server` was established (after `pick`).
    fn connected(&mut self, server: usize) {
        let _ = server;
    }

    /// A connection to `server` went away.
    fn disconnected(&mut self, server: usize) {
        let _ = server;
    }

    /// Sets the effective weight of `server`, in units of
    /// 1/[`WEIGHT_SCALE`] of a configured weight (a configured weight `w`
    /// is `w * WEIGHT_SCALE`; 0 = no new connections): slow start and
    /// drain change it while the configuration stays. Out-of-range servers
    /// are ignored.
    fn set_weight(&mut self, server: usize, weight: u32);

    /// The effective weight of `server` (as [`Scheduler::set_weight`]
    /// takes it; 0 if out of range).
    fn weight(&self, server: usize) -> u32;
}

/// Configured weights (0..=100) in the schedulers' units.
fn scaled(weights: &[u8]) -> Vec<u32> {
    weights
        .iter()
        .map(|&w| u32::from(w) * WEIGHT_SCALE)
        .collect()
}

/// The scheduler of `kind` for servers with these weights. `names` (one per
/// server, e.g. instance ids) seed Maglev's permutations so that every
/// worker and every load balancer node builds the same table; other kinds
/// ignore them.
pub fn build(kind: SchedulerKind, weights: &[u8], names: &[&str]) -> Box<dyn Scheduler> {
    match kind {
        SchedulerKind::Wrr => Box::new(SmoothWrr::new(weights)),
        SchedulerKind::Wlc => Box::new(Wlc::new(weights)),
        SchedulerKind::Maglev => Box::new(Maglev::new(weights, names, DEFAULT_TABLE_SIZE)),
    }
}

/// The hash schedulers choose a server by: a fixed function of the
/// client's flow (addresses, ports, protocol), the same on every node,
/// build and CPU. Every node of a cluster that runs the same server list
/// through [`Maglev`] thus sends a flow to the same server, whichever node
/// the routers' ECMP hands it to. (The session table's hasher, `ahash`,
/// gives no such promise across builds and CPUs.)
pub fn flow_hash(key: &crate::flow::FlowKey) -> u64 {
    fn word(a: std::net::IpAddr) -> u128 {
        match a {
            std::net::IpAddr::V4(a) => u128::from(u32::from(a)),
            std::net::IpAddr::V6(a) => u128::from(a),
        }
    }
    fn mix(h: u64, v: u64) -> u64 {
        let mut z = (h ^ v).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let halves = |a: u128| [(a >> 64) as u64, a as u64];
    let family = u64::from(key.src.is_ipv6()) << 8;
    let [s_hi, s_lo] = halves(word(key.src));
    let [d_hi, d_lo] = halves(word(key.dst));
    let ports = (u64::from(key.sport) << 16) | u64::from(key.dport);
    [s_hi, s_lo, d_hi, d_lo, ports]
        .into_iter()
        .fold(family | u64::from(key.proto), mix)
}

/// Whether server `i` may receive new connections.
#[inline]
fn eligible(up: &[bool], weights: &[u32], i: usize) -> bool {
    weights[i] > 0 && up.get(i).copied().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all_kinds(weights: &[u8]) -> Vec<Box<dyn Scheduler>> {
        let names: Vec<String> = (0..weights.len()).map(|i| format!("srv-{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        vec![
            build(SchedulerKind::Wrr, weights, &names),
            build(SchedulerKind::Wlc, weights, &names),
            Box::new(Maglev::new(weights, &names, 251)),
        ]
    }

    #[test]
    fn empty_and_short_up() {
        for mut s in all_kinds(&[]) {
            assert_eq!(s.pick(&[], 1), None);
            assert_eq!(s.pick(&[true, true], 1), None);
        }
        for mut s in all_kinds(&[1, 1, 1]) {
            // Servers beyond `up` are down.
            for h in 0..20 {
                assert_eq!(s.pick(&[false, true], h), Some(1), "{s:?}");
            }
        }
    }

    proptest! {
        #[test]
        fn pick_only_eligible(
            weights in proptest::collection::vec(prop_oneof![Just(0u8), 1u8..=5, Just(100u8)], 0..9),
            ups in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 0..10), 1..6),
            hashes in proptest::collection::vec(any::<u64>(), 1..20),
            conns in proptest::collection::vec((0usize..10, any::<bool>()), 0..20),
        ) {
            for mut s in all_kinds(&weights) {
                for up in &ups {
                    let w = scaled(&weights);
                    let any = (0..weights.len()).any(|i| eligible(up, &w, i));
                    for (n, &h) in hashes.iter().enumerate() {
                        match s.pick(up, h) {
                            Some(i) => prop_assert!(i < weights.len() && eligible(up, &w, i), "{:?} picked {}", s, i),
                            None => prop_assert!(!any, "{:?} found nothing", s),
                        }
                        if let Some(&(srv, open)) = conns.get(n) {
                            // Counting out-of-range or never-connected servers is harmless.
                            if open { s.connected(srv) } else { s.disconnected(srv) }
                        }
                    }
                }
            }
        }
    }
}
