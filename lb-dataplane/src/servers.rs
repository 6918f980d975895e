//! Drain and slow start in `lbd`: each server's state (up, down, draining,
//! ramping) and effective weight, published to the workers beside its
//! health.
//!
//! - A server drains when the file says `state = "draining"` or after
//!   `lbctl server drain GROUP SERVER [--deadline S]`: its effective weight
//!   is 0 (no new session); its open sessions go on until they end, or
//!   until the deadline (`--deadline`, else the group's `drain_timeout_s`,
//!   else none), when the workers drop them (see
//!   [`lb_core::pipeline::Worker::follow_servers`]).
//! - A server ramps for its group's `slow_start_s` when it comes up: its
//!   health check passes again, its drain ends, or a reload adds it
//!   (servers present when `lbd` starts do not ramp: they start together).
//!   The weights are steps of [`lb_core::sched::slow_start`].
//!
//! The state lives here; the clock is the data plane's (`Shared::now_ns`),
//! passed in. A thread of `lbd` calls [`ServerTable::tick`] every
//! [`TICK`] (the control socket's `server` commands at once): it computes each server's effective weight and publishes the
//! ones that changed with one epoch bump, which the workers read once per
//! burst. Nothing runs per packet.
//!
//! Across reloads a server is known by (group id, server name, port), as
//! its health is. A drain set by `lbctl` survives a reload until the file
//! changes that server's `state` (the most recent instruction wins: a
//! file now saying `"active"` ends a commanded drain, `"draining"` takes
//! it over) or the server leaves the group.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use lb_core::pipeline::{Health, Snapshot};
use lb_core::sched::slow_start::{effective, ServerStatus};
use lb_core::sched::{ServerState, WEIGHT_SCALE};
use lb_core::{Nanos, NANOS_PER_SEC};

/// How often the state thread recomputes the weights: the most a step of
/// a ramp, a health change or a drain deadline waits to apply.
pub const TICK: Duration = Duration::from_millis(20);

/// A server by the key that survives reloads: (group id, name, port).
type Key = (String, String, u16);

/// What the workers read of a server.
#[derive(Debug)]
struct Published {
    /// Effective weight, in 1/`WEIGHT_SCALE` units.
    weight: AtomicU32,
    state: AtomicU8,
    must_close: AtomicBool,
}

/// What the state thread and the control socket keep of a server.
#[derive(Debug, Clone)]
struct Admin {
    key: Key,
    /// `state = "draining"` in the file.
    config_draining: bool,
    /// Drained by `lbctl server drain`, with its deadline if any.
    command: Option<Option<Nanos>>,
    /// When the file's drain began (for `drain_timeout_s`); `None` with
    /// `config_draining`: at the next tick.
    drain_since: Option<Nanos>,
    /// The start of the slow start; `pending_ramp`: at the next tick.
    ramp_since: Option<Nanos>,
    pending_ramp: bool,
    /// Health at the last tick (a change to up starts a slow start).
    was_up: bool,
    /// The drain deadline the last tick applied.
    deadline: Option<Nanos>,
}

impl Admin {
    fn draining(&self) -> bool {
        self.config_draining || self.command.is_some()
    }
}

/// The drain and slow-start state of every server of one configuration
/// generation.
#[derive(Debug)]
pub struct ServerTable {
    epoch: AtomicU64,
    published: Vec<Vec<Published>>,
    admin: Mutex<Vec<Vec<Admin>>>,
}

/// A `lbctl server` command that cannot apply.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServerCommandError {
    #[error("no server group {0}")]
    NoGroup(String),
    #[error("no server {server} in server group {group}")]
    NoServer { group: String, server: String },
    #[error("server {server} of {group} drains by configuration (state = \"draining\" in the file): change it there and reload")]
    DrainedByConfig { group: String, server: String },
    #[error("the deadline must be 0..=86400 seconds, got {0}")]
    Deadline(f64),
}

/// What `lbctl stats` shows of a server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerView {
    pub state: ServerState,
    /// On the configured scale (a weight of 100 ramping halfway: 50.0).
    pub effective_weight: f64,
    /// Seconds until the open sessions are ended (draining with a deadline).
    pub drain_deadline_s: Option<f64>,
    /// Drained by command (`lbctl server drain`), not by the file.
    pub drained_by_command: bool,
}

impl ServerTable {
    /// The table of `snap`, keeping what `old` (the previous generation's)
    /// knew of the servers still there. Without `old` (start-up), no
    /// server ramps.
    pub fn new(snap: &Snapshot, old: Option<&ServerTable>) -> ServerTable {
        let prev: HashMap<Key, Admin> = old
            .map(|o| {
                lock(&o.admin)
                    .iter()
                    .flatten()
                    .map(|a| (a.key.clone(), a.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let admin: Vec<Vec<Admin>> = snap
            .cfg
            .server_groups
            .iter()
            .map(|g| {
                g.servers
                    .iter()
                    .map(|s| {
                        let key = (g.id.clone(), s.name.clone(), s.port);
                        let fresh = Admin {
                            key: key.clone(),
                            config_draining: s.draining,
                            command: None,
                            drain_since: None,
                            ramp_since: None,
                            pending_ramp: old.is_some(),
                            was_up: true,
                            deadline: None,
                        };
                        let Some(p) = prev.get(&key) else {
                            return fresh;
                        };
                        let mut a = p.clone();
                        if p.config_draining != s.draining {
                            // The file changed this server's state: it wins.
                            a.command = None;
                            a.config_draining = s.draining;
                            a.drain_since = None;
                        }
                        if p.draining() && !a.draining() {
                            a.pending_ramp = true;
                        }
                        a
                    })
                    .collect()
            })
            .collect();
        let published = snap
            .cfg
            .server_groups
            .iter()
            .zip(&admin)
            .map(|(g, row)| {
                g.servers
                    .iter()
                    .zip(row)
                    .map(|(s, a)| {
                        let (state, weight) = if a.draining() {
                            (ServerState::Draining, 0)
                        } else {
                            (ServerState::Up, u32::from(s.weight) * WEIGHT_SCALE)
                        };
                        Published {
                            weight: AtomicU32::new(weight),
                            state: AtomicU8::new(state.code()),
                            must_close: AtomicBool::new(false),
                        }
                    })
                    .collect()
            })
            .collect();
        ServerTable {
            epoch: AtomicU64::new(old.map_or(0, |o| o.epoch.load(Ordering::Acquire) + 1)),
            published,
            admin: Mutex::new(admin),
        }
    }

    /// Recomputes every server's state and effective weight at `now` from
    /// its health (`health.is_up`) and drain, and publishes the changes.
    pub fn tick(&self, snap: &Snapshot, health: &dyn Health, now: Nanos) {
        let mut admin = lock(&self.admin);
        let mut changed = false;
        for (gi, g) in snap.cfg.server_groups.iter().enumerate() {
            let slow_start = Nanos::from(g.slow_start_ms) * 1_000_000;
            for (si, s) in g.servers.iter().enumerate() {
                let (Some(a), Some(p)) = (
                    admin.get_mut(gi).and_then(|r| r.get_mut(si)),
                    self.published.get(gi).and_then(|r| r.get(si)),
                ) else {
                    continue;
                };
                let up = health.is_up(gi, si);
                if a.pending_ramp || (up && !a.was_up) {
                    a.ramp_since = Some(now);
                    a.pending_ramp = false;
                }
                a.was_up = up;
                if a.config_draining && a.drain_since.is_none() {
                    a.drain_since = Some(now);
                }
                let deadline = match a.command {
                    Some(d) => d,
                    None if a.config_draining => g
                        .drain_timeout_ms
                        .zip(a.drain_since)
                        .map(|(ms, since)| since + Nanos::from(ms) * 1_000_000),
                    None => None,
                };
                a.deadline = deadline.filter(|_| a.draining());
                let status = ServerStatus {
                    up,
                    draining: a.draining(),
                    drain_deadline: deadline,
                    ramp_since: a.ramp_since,
                };
                let (state, weight) = effective(g.scheduler, s.weight, slow_start, &status, now);
                if state == ServerState::Up {
                    a.ramp_since = None;
                }
                let close = status.must_close(now);
                changed |= p.weight.swap(weight, Ordering::Relaxed) != weight;
                changed |= p.must_close.swap(close, Ordering::Relaxed) != close;
                p.state.store(state.code(), Ordering::Relaxed);
            }
        }
        if changed {
            // After the stores: a worker that sees the new epoch sees them.
            self.epoch.fetch_add(1, Ordering::Release);
        }
    }

    /// `lbctl server drain`: the servers of `group` named `server`
    /// (instance id or address, optionally `:port`) take no new session;
    /// their open ones end `deadline_s` from `now` (default: the group's
    /// `drain_timeout_s`, else never). Returns the servers drained.
    pub fn drain(
        &self,
        snap: &Snapshot,
        group: &str,
        server: &str,
        deadline_s: Option<f64>,
        now: Nanos,
    ) -> Result<Vec<String>, ServerCommandError> {
        let found = find(snap, group, server)?;
        let deadline = match deadline_s {
            Some(d) if !(0.0..=86_400.0).contains(&d) => {
                return Err(ServerCommandError::Deadline(d))
            }
            Some(d) => Some(now + (d * NANOS_PER_SEC as f64).round() as Nanos),
            None => snap.cfg.server_groups[found[0].0]
                .drain_timeout_ms
                .map(|ms| now + Nanos::from(ms) * 1_000_000),
        };
        let mut admin = lock(&self.admin);
        let mut names = Vec::new();
        for &(gi, si) in &found {
            if let Some(a) = admin.get_mut(gi).and_then(|r| r.get_mut(si)) {
                a.command = Some(deadline);
                names.push(label(&a.key));
            }
        }
        Ok(names)
    }

    /// `lbctl server undrain`: ends a commanded drain (the server ramps up
    /// again, over its group's `slow_start_s`). A server that drains by
    /// configuration is refused: the file says so.
    pub fn undrain(
        &self,
        snap: &Snapshot,
        group: &str,
        server: &str,
    ) -> Result<Vec<String>, ServerCommandError> {
        let found = find(snap, group, server)?;
        let mut admin = lock(&self.admin);
        if let Some(a) = found
            .iter()
            .filter_map(|&(gi, si)| admin.get(gi).and_then(|r| r.get(si)))
            .find(|a| a.config_draining)
        {
            return Err(ServerCommandError::DrainedByConfig {
                group: a.key.0.clone(),
                server: a.key.1.clone(),
            });
        }
        let mut names = Vec::new();
        for &(gi, si) in &found {
            if let Some(a) = admin.get_mut(gi).and_then(|r| r.get_mut(si)) {
                if a.command.take().is_some() {
                    a.pending_ramp = true;
                }
                names.push(label(&a.key));
            }
        }
        Ok(names)
    }

    /// What `lbctl stats` shows of server `si` of group `gi` at `now`.
    pub fn view(&self, gi: usize, si: usize, now: Nanos) -> Option<ServerView> {
        let p = self.published.get(gi)?.get(si)?;
        let admin = lock(&self.admin);
        let a = admin.get(gi)?.get(si)?;
        let deadline = a.deadline;
        Some(ServerView {
            state: ServerState::from_code(p.state.load(Ordering::Relaxed)),
            effective_weight: f64::from(p.weight.load(Ordering::Relaxed)) / f64::from(WEIGHT_SCALE),
            drain_deadline_s: deadline.map(|d| d.saturating_sub(now) as f64 / NANOS_PER_SEC as f64),
            drained_by_command: a.command.is_some(),
        })
    }

    /// See [`Health::servers_epoch`].
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// See [`Health::weight`].
    pub fn weight(&self, gi: usize, si: usize) -> Option<u32> {
        let p = self.published.get(gi)?.get(si)?;
        Some(p.weight.load(Ordering::Relaxed))
    }

    /// See [`Health::must_close`].
    pub fn must_close(&self, gi: usize, si: usize) -> bool {
        self.published
            .get(gi)
            .and_then(|r| r.get(si))
            .is_some_and(|p| p.must_close.load(Ordering::Relaxed))
    }
}

/// A server as messages name it: `name:port` (an address-given server's
/// name has its port already).
fn label((_, name, port): &Key) -> String {
    let suffix = format!(":{port}");
    if name.ends_with(&suffix) {
        name.clone()
    } else {
        format!("{name}{suffix}")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The servers of group `group` named `server`: an instance id, or an
/// address, optionally with `:port` (`198.19.1.11:80`, `[2001:db8::11]:80`).
/// `None` if there is none (or no such group).
pub fn find_server(snap: &Snapshot, group: &str, server: &str) -> Option<Vec<(usize, usize)>> {
    let gi = snap.cfg.server_groups.iter().position(|g| g.id == group)?;
    let (name, port) = match server.parse::<std::net::SocketAddr>() {
        Ok(a) => (a.ip().to_string(), Some(a.port())),
        Err(_) => (
            server
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            None,
        ),
    };
    let found: Vec<(usize, usize)> = snap.cfg.server_groups[gi]
        .servers
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            let by_instance = s.instance.is_some_and(|i| snap.cfg.instances[i].id == name);
            let by_addr = s.addresses.iter().any(|a| a.to_string() == name);
            (by_instance || by_addr) && port.is_none_or(|p| p == s.port)
        })
        .map(|(si, _)| (gi, si))
        .collect();
    (!found.is_empty()).then_some(found)
}

/// The servers of `group` named `server`, or why there are none.
fn find(
    snap: &Snapshot,
    group: &str,
    server: &str,
) -> Result<Vec<(usize, usize)>, ServerCommandError> {
    if !snap.cfg.server_groups.iter().any(|g| g.id == group) {
        return Err(ServerCommandError::NoGroup(group.to_string()));
    }
    find_server(snap, group, server).ok_or_else(|| ServerCommandError::NoServer {
        group: group.to_string(),
        server: server.to_string(),
    })
}

/// Adds a server's state to its entry of `lbctl stats` (`entry`, an
/// object): `state` (up, down, draining, ramping), `effective_weight` (on
/// the configured scale), and while it drains `drained_by` (`command` or
/// `config`) and `drain_deadline_s` (seconds left, if it has a deadline).
pub fn describe(
    entry: Option<&mut serde_json::Value>,
    table: &ServerTable,
    (gi, si): (usize, usize),
    now: Nanos,
) {
    let (Some(serde_json::Value::Object(o)), Some(v)) = (entry, table.view(gi, si, now)) else {
        return;
    };
    o.insert("state".into(), v.state.as_str().into());
    o.insert("effective_weight".into(), v.effective_weight.into());
    if v.state == ServerState::Draining {
        let by = if v.drained_by_command {
            "command"
        } else {
            "config"
        };
        o.insert("drained_by".into(), by.into());
        o.insert("drain_deadline_s".into(), v.drain_deadline_s.into());
    }
}

/// The state column of a server in `lbctl stats`' text.
pub fn state_text(sv: &serde_json::Value) -> String {
    let state = sv["state"].as_str().unwrap_or("?");
    let mut s = format!(
        "{state:<8} {:>9.2}",
        sv["effective_weight"].as_f64().unwrap_or(0.0)
    );
    if let Some(d) = sv["drain_deadline_s"].as_f64() {
        s.push_str(&format!("  (sessions end in {d:.0} s)"));
    }
    s
}

/// The servers' states in the Prometheus text format, from the stats
/// document `s`.
pub fn prometheus(s: &serde_json::Value) -> String {
    let servers = s["servers"].as_array().cloned().unwrap_or_default();
    let label = |v: &serde_json::Value| {
        let esc = |v: &serde_json::Value| {
            v.as_str()
                .unwrap_or("")
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
        };
        format!(
            "group=\"{}\",server=\"{}\",port=\"{}\"",
            esc(&v["group"]),
            esc(&v["server"]),
            v["port"].as_u64().unwrap_or(0)
        )
    };
    let mut out = String::from(
        "# HELP lbd_server_state 1 for the state each server is in (up, down, draining, ramping).\n# TYPE lbd_server_state gauge\n",
    );
    for v in &servers {
        for st in [
            ServerState::Up,
            ServerState::Down,
            ServerState::Draining,
            ServerState::Ramping,
        ] {
            let on = u8::from(v["state"].as_str() == Some(st.as_str()));
            out.push_str(&format!(
                "lbd_server_state{{{},state=\"{}\"}} {on}\n",
                label(v),
                st.as_str()
            ));
        }
    }
    out.push_str("# HELP lbd_server_effective_weight The weight new sessions see: the configured one, 0 while down or draining, less while ramping (slow start).\n# TYPE lbd_server_effective_weight gauge\n");
    for v in &servers {
        out.push_str(&format!(
            "lbd_server_effective_weight{{{}}} {}\n",
            label(v),
            v["effective_weight"].as_f64().unwrap_or(0.0)
        ));
    }
    out.push_str(&format!(
        "# HELP lbd_drain_closed_sessions_total Sessions of draining servers ended at their drain deadline.\n# TYPE lbd_drain_closed_sessions_total counter\nlbd_drain_closed_sessions_total {}\n",
        s["drain_closed"].as_u64().unwrap_or(0)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::pipeline::AllUp;

    const S: Nanos = NANOS_PER_SEC;

    fn snap(text: &str, generation: u64) -> Snapshot {
        let cfg = lb_config::parse_str(text, "t.toml").expect("valid");
        Snapshot::compile(cfg, generation)
    }

    fn config(slow_start: u32, states: [&str; 2]) -> String {
        format!(
            r#"
[[server_group]]
id = "sgp"
scheduler = "maglev"
slow_start_s = {slow_start}
drain_timeout_s = 30
[[server_group.server]]
address = "198.19.1.11"
port = 80
state = "{}"
[[server_group.server]]
address = "198.19.1.12"
port = 80
state = "{}"
[[load_balancer]]
id = "lb"
vips = ["198.18.0.10"]
local_addresses = ["198.19.1.250"]
[[load_balancer.listener]]
protocol = "tcp"
port = 80
server_group = "sgp"
"#,
            states[0], states[1]
        )
    }

    struct Ups(Vec<bool>);
    impl Health for Ups {
        fn is_up(&self, _: usize, s: usize) -> bool {
            self.0[s]
        }
    }

    fn state(t: &ServerTable, si: usize, now: Nanos) -> (ServerState, f64) {
        let v = t.view(0, si, now).expect("server");
        (v.state, v.effective_weight)
    }

    #[test]
    fn commanded_drain_deadline_undrain_and_ramp() {
        let wrr = config(10, ["active", "active"]).replace("maglev", "wrr");
        let s1 = snap(&wrr, 1);
        let t = ServerTable::new(&s1, None);
        t.tick(&s1, &AllUp, 0);
        assert_eq!(state(&t, 1, 0), (ServerState::Up, 100.0));
        let e0 = t.epoch();
        let names = t
            .drain(&s1, "sgp", "198.19.1.12", Some(5.0), S)
            .expect("drains");
        assert_eq!(names, ["198.19.1.12:80"]);
        t.tick(&s1, &AllUp, S);
        assert!(t.epoch() > e0);
        assert_eq!(state(&t, 1, S), (ServerState::Draining, 0.0));
        assert_eq!(t.weight(0, 1), Some(0));
        assert!(!t.must_close(0, 1));
        t.tick(&s1, &AllUp, 6 * S);
        assert!(t.must_close(0, 1));
        // Undrain: the slow start begins.
        t.undrain(&s1, "sgp", "198.19.1.12:80").expect("undrains");
        t.tick(&s1, &AllUp, 7 * S);
        assert!(!t.must_close(0, 1));
        assert_eq!(state(&t, 1, 7 * S), (ServerState::Ramping, 2.5));
        t.tick(&s1, &AllUp, 12 * S);
        assert_eq!(state(&t, 1, 12 * S), (ServerState::Ramping, 52.5));
        t.tick(&s1, &AllUp, 17 * S);
        assert_eq!(state(&t, 1, 17 * S), (ServerState::Up, 100.0));
        // Unknown names.
        assert_eq!(
            t.drain(&s1, "nope", "x", None, 0),
            Err(ServerCommandError::NoGroup("nope".into()))
        );
        assert!(matches!(
            t.drain(&s1, "sgp", "198.19.1.99", None, 0),
            Err(ServerCommandError::NoServer { .. })
        ));
        assert!(matches!(
            t.drain(&s1, "sgp", "198.19.1.11", Some(-1.0), 0),
            Err(ServerCommandError::Deadline(_))
        ));
    }

    #[test]
    fn health_coming_back_ramps_and_down_weighs_nothing() {
        let wlc = config(10, ["active", "active"]).replace("maglev", "wlc");
        let s1 = snap(&wlc, 1);
        let t = ServerTable::new(&s1, None);
        t.tick(&s1, &Ups(vec![true, false]), 0);
        assert_eq!(state(&t, 1, 0), (ServerState::Down, 0.0));
        assert_eq!(state(&t, 0, 0), (ServerState::Up, 100.0));
        t.tick(&s1, &Ups(vec![true, true]), S);
        assert_eq!(state(&t, 1, S), (ServerState::Ramping, 2.5));
        t.tick(&s1, &Ups(vec![true, true]), 11 * S);
        assert_eq!(state(&t, 1, 11 * S), (ServerState::Up, 100.0));
    }

    #[test]
    fn reloads_keep_a_commanded_drain_until_the_file_changes_the_state() {
        let s1 = snap(&config(0, ["active", "active"]), 1);
        let t1 = ServerTable::new(&s1, None);
        t1.drain(&s1, "sgp", "198.19.1.11", None, 0)
            .expect("drains");
        t1.tick(&s1, &AllUp, 0);
        // The same file: still draining, with the group's 30 s deadline.
        let s2 = snap(&config(0, ["active", "active"]), 2);
        let t2 = ServerTable::new(&s2, Some(&t1));
        t2.tick(&s2, &AllUp, S);
        assert_eq!(state(&t2, 0, S), (ServerState::Draining, 0.0));
        let v = t2.view(0, 0, S).expect("server");
        assert_eq!(v.drain_deadline_s, Some(29.0));
        assert!(v.drained_by_command);
        // The file drains it: the file's drain takes over (and undrain is
        // refused).
        let s3 = snap(&config(0, ["draining", "active"]), 3);
        let t3 = ServerTable::new(&s3, Some(&t2));
        t3.tick(&s3, &AllUp, 2 * S);
        assert_eq!(state(&t3, 0, 2 * S), (ServerState::Draining, 0.0));
        assert!(matches!(
            t3.undrain(&s3, "sgp", "198.19.1.11"),
            Err(ServerCommandError::DrainedByConfig { .. })
        ));
        // drain_timeout_s counts from when the file's drain began.
        t3.tick(&s3, &AllUp, 31 * S);
        assert!(!t3.must_close(0, 0));
        t3.tick(&s3, &AllUp, 32 * S);
        assert!(t3.must_close(0, 0));
        // The file makes it active again: it is.
        let s4 = snap(&config(0, ["active", "active"]), 4);
        let t4 = ServerTable::new(&s4, Some(&t3));
        t4.tick(&s4, &AllUp, 40 * S);
        assert_eq!(state(&t4, 0, 40 * S), (ServerState::Up, 100.0));
        assert!(!t4.must_close(0, 0));
    }

    #[test]
    fn servers_added_by_a_reload_ramp_those_at_start_do_not() {
        let one = config(20, ["active", "active"]).replace(
            "[[server_group.server]]\naddress = \"198.19.1.12\"\nport = 80\nstate = \"active\"\n",
            "",
        );
        let s1 = snap(&one, 1);
        let t1 = ServerTable::new(&s1, None);
        t1.tick(&s1, &AllUp, 0);
        assert_eq!(state(&t1, 0, 0), (ServerState::Up, 100.0));
        let s2 = snap(&config(20, ["active", "active"]), 2);
        let t2 = ServerTable::new(&s2, Some(&t1));
        assert!(t2.epoch() > t1.epoch());
        t2.tick(&s2, &AllUp, 100 * S);
        assert_eq!(state(&t2, 0, 100 * S), (ServerState::Up, 100.0));
        // Maglev: 5 steps, from 10 %.
        assert_eq!(state(&t2, 1, 100 * S), (ServerState::Ramping, 10.0));
        t2.tick(&s2, &AllUp, 110 * S);
        assert_eq!(state(&t2, 1, 110 * S), (ServerState::Ramping, 50.0));
    }

    #[test]
    fn control_commands_stats_and_metrics() {
        use crate::access::{Level, Peer};
        let dir = std::env::temp_dir().join(format!("lbd-servers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("lb.toml");
        std::fs::write(&path, config(10, ["active", "draining"])).expect("written");
        let shared = crate::daemon::Shared::offline(&path).expect("loads");
        let peer = Peer {
            pid: 1,
            uid: 0,
            gid: 0,
            groups: Vec::new(),
        };
        let ask = |line: &str, level| {
            crate::control::answer(&shared, &|| Ok(1), line.as_bytes(), &peer, level)
        };
        let v = ask("server drain sgp 198.19.1.11", Level::User);
        assert_eq!(v["ok"], false);
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains("admin")),
            "{v}"
        );
        let v = ask("server drain sgp 198.19.1.11 12\n", Level::Admin);
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["servers"][0], "198.19.1.11:80");
        let v = ask("server undrain sgp 198.19.1.12", Level::Admin);
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains("by configuration")),
            "{v}"
        );
        let v = ask("server drain sgp", Level::Admin);
        assert!(
            v["error"].as_str().is_some_and(|e| e.starts_with("usage")),
            "{v}"
        );
        let v = ask("server drain sgp 198.19.1.11 soon", Level::Admin);
        assert_eq!(v["ok"], false);
        let st = ask("stats", Level::User);
        let servers = st["servers"].as_array().expect("servers");
        assert_eq!(servers[0]["state"], "draining", "{st}");
        assert_eq!(servers[0]["drained_by"], "command");
        assert!(servers[0]["drain_deadline_s"]
            .as_f64()
            .is_some_and(|d| d > 10.0 && d <= 12.0));
        assert_eq!(servers[0]["effective_weight"], 0.0);
        assert_eq!(servers[1]["drained_by"], "config");
        assert_eq!(st["drain_closed"], 0);
        let text = crate::stats_text::render(&st);
        assert!(text.contains("draining"), "{text}");
        let m = crate::metrics::prometheus(&shared);
        assert!(
            m.contains("lbd_server_state{group=\"sgp\",server=\"198.19.1.11:80\",port=\"80\",state=\"draining\"} 1"),
            "{m}"
        );
        assert!(m.contains(
            "lbd_server_effective_weight{group=\"sgp\",server=\"198.19.1.11:80\",port=\"80\"} 0"
        ));
        assert!(m.contains("lbd_drain_closed_sessions_total 0"));
        let v = ask("server undrain sgp 198.19.1.11", Level::Admin);
        assert_eq!(v["ok"], true, "{v}");
        let st = ask("stats", Level::User);
        assert_eq!(st["servers"][0]["state"], "ramping", "{st}");
        // Maglev: the first of 5 steps.
        assert_eq!(st["servers"][0]["effective_weight"], 10.0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
