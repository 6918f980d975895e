//! `lbctl eval`: runs a packet trace through the pipeline the workers run,
//! with no network I/O.
//!
//! Trace lines (see CONFIG.md):
//!
//! ```text
//! # comment
//! <time_s> <proto> <src> > <dst> [<tcp_flags>] [icmp=<type>/<code>]
//!     [ttl=<n>] [len=<ip_bytes>] [nodf] [opt=lsrr|ssrr|rr|rh0|rh2]
//!     [quote=<proto>,<src>,<dst>]
//!     [seq=N] [ack=N] [win=N] [data=N] [wscale=N]
//!     [port=<name>] [vlan=<id>|none]
//! @health <server_group> <server> up|down
//! @drain <server_group> <server> [<deadline_s>]
//! @undrain <server_group> <server>
//! @reload <config.toml>
//! @mtu <port> <mtu>
//! ```

use std::collections::HashSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use lb_core::flow::{proto_from_name, FlowKey};
use lb_core::model::proto;
use lb_core::packet::{self, build_frame, FrameSpec, MacAddr};
use lb_core::pipeline::{secs, LocalKind, Reason, Released, RxInfo, Snapshot, Verdict, Worker};
use lb_core::Nanos;

use crate::servers::find_server;

/// What is wrong with a trace line (or the packet it describes), in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TraceError(String);

/// A [`TraceError`] from a format string.
macro_rules! trace_error {
    ($($t:tt)*) => { TraceError(format!($($t)*)) };
}

/// Returns a [`TraceError`] from a format string.
macro_rules! fail {
    ($($t:tt)*) => { return Err(trace_error!($($t)*)) };
}

mod frame;
mod parse;
#[cfg(test)]
mod tests;

pub use frame::build_trace_frame;
pub use parse::{parse_line, IpExtras, IpOpt, TraceLine, TracePacket, TraceTcp};

/// Why `lbctl eval` stopped.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The configuration does not load.
    #[error("{0}")]
    Config(lb_config::ConfigErrors),
    /// A trace line does not parse, or its packet cannot be built; `at`
    /// is `file:line`.
    #[error("{at}")]
    Trace {
        at: String,
        #[source]
        source: TraceError,
    },
    #[error("{at}: no server {server} in server group {group}")]
    NoServer {
        at: String,
        group: String,
        server: String,
    },
    #[error("{at}: no port {port}")]
    NoPort { at: String, port: String },
    #[error("{at}: time goes backwards ({time} after {last})")]
    TimeBackwards { at: String, time: f64, last: f64 },
    /// Writing the verdicts or the notes.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Servers marked down by `@health` lines, and drained by `@drain` lines
/// (with slow start: the trace's clock drives it, as lbd's does).
#[derive(Debug, Default)]
struct TraceHealth {
    down: HashSet<(String, String)>,
    /// Resolved against the current snapshot.
    down_idx: HashSet<(usize, usize)>,
    servers: Option<crate::servers::ServerTable>,
}

impl TraceHealth {
    fn resolve(&mut self, snap: &Snapshot) -> Vec<String> {
        let mut unknown = Vec::new();
        self.down_idx.clear();
        for (g, s) in &self.down {
            match find_server(snap, g, s) {
                Some(found) => self.down_idx.extend(found),
                None => unknown.push(format!("{g} {s}")),
            }
        }
        unknown
    }
}

impl lb_core::pipeline::Health for TraceHealth {
    fn is_up(&self, group: usize, server: usize) -> bool {
        !self.down_idx.contains(&(group, server))
    }

    fn servers_epoch(&self) -> u64 {
        self.servers.as_ref().map_or(0, |t| t.epoch())
    }

    fn weight(&self, group: usize, server: usize) -> Option<u32> {
        self.servers.as_ref()?.weight(group, server)
    }

    fn must_close(&self, group: usize, server: usize) -> bool {
        self.servers
            .as_ref()
            .is_some_and(|t| t.must_close(group, server))
    }
}

/// Runs `trace` (read from `trace_path`, used for messages and to resolve
/// `@reload` paths) against the configuration at `config`, writing one JSON
/// line per packet to `out` and reload notes to `err`.
pub fn run(
    config: &Path,
    trace: &str,
    trace_path: &Path,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), EvalError> {
    let cfg = lb_config::load(config).map_err(EvalError::Config)?;
    let mut snap = Snapshot::compile(cfg, 1);
    let mut log_names = vec![crate::access_log::Names::of(&snap)];
    let mut worker = Worker::new(0, 1, 1 << 20, 1 << 20);
    let mut health = TraceHealth {
        servers: Some(crate::servers::ServerTable::new(&snap, None)),
        ..TraceHealth::default()
    };
    let base = trace_path.parent().unwrap_or(Path::new("."));
    let mut last_time = 0.0f64;
    for (n, line) in trace.lines().enumerate() {
        let lineno = n + 1;
        let at = || format!("{}:{lineno}", trace_path.display());
        let parsed = parse_line(line).map_err(|source| EvalError::Trace { at: at(), source })?;
        match parsed {
            None => {}
            Some(TraceLine::Health { group, server, up }) => {
                if find_server(&snap, &group, &server).is_none() {
                    return Err(EvalError::NoServer {
                        at: at(),
                        group,
                        server,
                    });
                }
                if up {
                    health.down.remove(&(group, server));
                } else {
                    health.down.insert((group, server));
                }
                health.resolve(&snap);
            }
            Some(TraceLine::Drain {
                group,
                server,
                drain,
                deadline_s,
            }) => {
                let Some(table) = &health.servers else {
                    continue;
                };
                let done = if drain {
                    table.drain(&snap, &group, &server, deadline_s, secs(last_time))
                } else {
                    table.undrain(&snap, &group, &server)
                };
                if let Err(e) = done {
                    return Err(EvalError::Trace {
                        at: at(),
                        source: TraceError(e.to_string()),
                    });
                }
            }
            Some(TraceLine::Reload(path)) => {
                let path = base.join(path);
                match lb_config::load(&path) {
                    Ok(cfg) => {
                        snap = Snapshot::compile(cfg, snap.generation + 1);
                        let table =
                            crate::servers::ServerTable::new(&snap, health.servers.as_ref());
                        health.servers = Some(table);
                        log_names.push(crate::access_log::Names::of(&snap));
                        for unknown in health.resolve(&snap) {
                            writeln!(
                                err,
                                "{}:{lineno}: note: @health server {unknown} is gone after reload",
                                trace_path.display()
                            )?;
                        }
                        writeln!(
                            err,
                            "{}:{lineno}: reloaded {} (generation {})",
                            trace_path.display(),
                            path.display(),
                            snap.generation
                        )?;
                    }
                    Err(e) => {
                        writeln!(
                            err,
                            "{}:{lineno}: reload rejected, the previous configuration stays:\n{e}",
                            trace_path.display()
                        )?;
                    }
                }
            }
            Some(TraceLine::Mtu { port, mtu }) => {
                let Some(pi) = snap.cfg.ports.iter().position(|p| p.name == port) else {
                    return Err(EvalError::NoPort { at: at(), port });
                };
                worker.set_port_mtu(pi, mtu);
            }
            Some(TraceLine::Packet(p)) => {
                if p.time < last_time {
                    return Err(EvalError::TimeBackwards {
                        at: at(),
                        time: p.time,
                        last: last_time,
                    });
                }
                last_time = p.time;
                let now: Nanos = secs(p.time);
                let port = match &p.port {
                    Some(name) => Some(
                        snap.cfg
                            .ports
                            .iter()
                            .position(|q| &q.name == name)
                            .and_then(|i| u32::try_from(i).ok())
                            .ok_or_else(|| EvalError::NoPort {
                                at: at(),
                                port: name.clone(),
                            })?,
                    ),
                    // Where a well-behaved sender is: its source's route.
                    None => snap.route(p.key.src).map(|h| h.port),
                };
                let port_vlan = port
                    .and_then(|i| snap.cfg.ports.get(i as usize))
                    .and_then(|q| q.vlan);
                let mut frame = build_trace_frame(&p, p.vlan.unwrap_or(port_vlan))
                    .map_err(|source| EvalError::Trace { at: at(), source })?;
                let sent = frame.clone();
                worker.housekeep(now, &snap);
                if let Some(table) = &health.servers {
                    table.tick(&snap, &health, now);
                }
                let rx = RxInfo {
                    port,
                    ..RxInfo::default()
                };
                let v = worker.process(&mut frame, rx, now, &snap, &health);
                let mut obj = verdict_json(lineno, &v, &snap);
                add_answer(&mut obj, &v, &sent);
                add_access_log(&mut obj, &mut worker, &log_names);
                writeln!(out, "{obj}")?;
                // Fragments held for this line's first fragment go now.
                let mut released = Vec::new();
                worker.take_released(|_, _, r| {
                    if let Released::Forward(f) = r {
                        let mut o = verdict_json(lineno, &Verdict::Forward(f), &snap);
                        o["released"] = true.into();
                        released.push(o);
                    }
                });
                for o in released {
                    writeln!(out, "{o}")?;
                }
            }
        }
    }
    Ok(())
}

/// The access-log lines the packet's line caused (sessions that started,
/// ended, or expired before it), as `"access_log"`: the objects `lbd`
/// writes, times counted from the trace's start as the Unix epoch.
fn add_access_log(
    obj: &mut serde_json::Value,
    worker: &mut Worker,
    names: &[crate::access_log::Names],
) {
    let mut lines = Vec::new();
    let mut text = String::new();
    worker.take_session_records(|r| {
        text.clear();
        let written = names
            .iter()
            .rev()
            .find(|n| n.generation() == r.generation)
            .is_some_and(|n| {
                crate::access_log::format_line(&mut text, &r, n, std::time::UNIX_EPOCH)
            });
        if let Some(v) = written
            .then(|| serde_json::from_str::<serde_json::Value>(&text).ok())
            .flatten()
        {
            lines.push(v);
        }
    });
    if !lines.is_empty() {
        obj["access_log"] = lines.into();
    }
}

/// The ICMP error `lbd` would send back for a dropped packet, as
/// `"answer"`.
fn add_answer(obj: &mut serde_json::Value, v: &Verdict, sent: &[u8]) {
    let Verdict::Drop(r) = v else { return };
    let Ok(p) = packet::parse(sent) else { return };
    if let Some(a) = r.icmp_answer(&p) {
        obj["answer"] = a.to_string().into();
    }
}

/// The JSON object `lbctl eval` prints for one packet.
pub fn verdict_json(line: usize, v: &Verdict, snap: &Snapshot) -> serde_json::Value {
    match v {
        Verdict::Forward(f) | Verdict::Send(f) => {
            let mut o = serde_json::json!({
                "line": line,
                "verdict": if matches!(v, Verdict::Send(_)) { "answer" } else { "forward" },
                "reason": snap.describe(&f.reason),
            });
            if let Some((g, s)) = f.backend {
                o["backend"] = snap.cfg.server_groups[g as usize].servers[s as usize]
                    .name
                    .clone()
                    .into();
            }
            o["out"] = match f.reason {
                // A fragment without the L4 header: no ports.
                Reason::FragmentFollows { .. } => {
                    let name = packet::protocol_name(f.out.proto).map(str::to_string);
                    let name = name.unwrap_or_else(|| f.out.proto.to_string());
                    format!("{name} {} > {}", f.out.src, f.out.dst)
                }
                _ => f.out.to_string(),
            }
            .into();
            o
        }
        Verdict::Drop(r) => serde_json::json!({
            "line": line,
            // A fragment waiting for its first fragment is not dropped yet.
            "verdict": if *r == Reason::FragmentHeld { "held" } else { "drop" },
            "reason": snap.describe(r),
        }),
        Verdict::Local(kind) => serde_json::json!({
            "line": line,
            "verdict": "local",
            "reason": match kind {
                LocalKind::Arp => "arp",
                LocalKind::Neighbor => "neighbor discovery",
                LocalKind::EchoRequest => "echo request to own address",
                LocalKind::ToSelf => "to own address",
            },
        }),
    }
}
