//! The control socket (`lbctl stats`, `lbctl reload`) and the counters it
//! reports (the Prometheus text endpoint is [`crate::metrics`]).
//!
//! Protocol: a client connects to the Unix socket, writes one command line
//! (`stats` or `reload`, at most [`MAX_COMMAND`] bytes, within
//! [`COMMAND_TIMEOUT`]) and reads one JSON document until the server
//! closes the connection. A refused command gets `{"ok": false, "error":
//! "..."}`; a rejected reload `{"ok": false, "errors": "..."}`.
//!
//! Each command needs a level ([`Level`]), which the client gets from its
//! peer credentials ([`crate::access`]). Each client is served on a thread
//! of its own, at most [`MAX_CLIENTS_PER_LEVEL`] per level at a time;
//! reloads compile on the reload thread ([`crate::reloader`]), so `stats`
//! answers while a reload compiles.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_core::pipeline::DropKind;
use serde_json::{json, Value};

use crate::access::{Access, Level, Peer};
use crate::conn::{ReadError, Slot, Slots};
use crate::daemon::Shared;
use crate::reloader::{Outcome, Reloader};
use crate::sockfile::SocketFile;

/// Where `lbd` listens and `lbctl` connects when `--control` is not given.
pub const DEFAULT_CONTROL: &str = "/run/lbd.sock";

/// The longest command line the control socket reads.
pub const MAX_COMMAND: usize = 64 * 1024;

/// How long a control client has to send its command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a control client or a metrics client has to take its reply.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Control clients served at once, per level: read-only clients cannot
/// crowd out an administrator.
pub const MAX_CLIENTS_PER_LEVEL: usize = 8;

/// What went wrong serving the control socket or the metrics endpoint,
/// or asking a running `lbd`.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket file could not be set up (see [`crate::sockfile::bind`]).
    #[error(transparent)]
    SocketFile(crate::sockfile::SocketFileError),
    #[error("setting up the control socket")]
    Setup(#[source] std::io::Error),
    #[error("binding the metrics endpoint {addr}")]
    BindMetrics {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("starting a thread")]
    Thread(#[source] std::io::Error),
    #[error("reading a command: {0}")]
    ReadCommand(std::io::ErrorKind),
    /// Writing a reply, or the end of one.
    #[error(transparent)]
    Write(#[from] std::io::Error),
    #[error("connecting to lbd at {} (is it running? --control sets the path)", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sending the command")]
    Send(#[source] std::io::Error),
    #[error("reading lbd's reply")]
    Reply(#[source] std::io::Error),
    #[error("reading lbd's reply")]
    ReplyJson(#[source] serde_json::Error),
    #[error("lbd refused {command}: {reason}")]
    Refused { command: String, reason: String },
}

/// A command line the control socket does not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("the command is not UTF-8")]
    NotUtf8,
    /// `shown`: the first characters of the word, `...` after them if
    /// there are more.
    #[error("unknown command {shown:?}{more}: the commands are {known}", more = if *.cut { "..." } else { "" }, known = Command::ALL.map(Command::name).join(", "))]
    Unknown { shown: String, cut: bool },
    #[error("{command}: {why}")]
    BadArgument { command: &'static str, why: String },
}

/// In a reply, a refused command line is its message.
impl serde::Serialize for CommandError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A command of the control protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Every counter (read-only).
    Stats,
    /// Re-read the configuration file (changes the running state).
    Reload,
    /// Withdraw the node's VIPs and keep forwarding its sessions; with a
    /// deadline (seconds), end the listener sessions left when it passes.
    Drain { deadline_s: Option<u64> },
    /// Announce the VIPs again.
    Undrain,
    /// Reopen the access logs (after logrotate moved them).
    LogReopen,
}

/// The longest drain deadline, in seconds (a day).
pub const MAX_DRAIN_DEADLINE_S: u64 = 86_400;

impl Command {
    /// Every command, for messages.
    pub const ALL: [Command; 5] = [
        Command::Stats,
        Command::Reload,
        Command::LogReopen,
        Command::Drain { deadline_s: None },
        Command::Undrain,
    ];

    /// Parses one command line (surrounding white space ignored): a
    /// command name, then its arguments (`drain [SECONDS]`).
    pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
        let Ok(text) = std::str::from_utf8(line) else {
            return Err(CommandError::NotUtf8);
        };
        // A command without arguments is its name exactly ("log reopen").
        if let Some(c) = Command::ALL.into_iter().find(|c| c.name() == text.trim()) {
            return Ok(c);
        }
        let mut words = text.split_whitespace();
        let word = words.next().unwrap_or("");
        let args: Vec<&str> = words.collect();
        let Some(cmd) = Command::ALL.into_iter().find(|c| c.name() == word) else {
            let shown: String = text.trim().chars().take(64).collect();
            let cut = shown.len() < text.trim().len();
            return Err(CommandError::Unknown { shown, cut });
        };
        match (cmd, args.as_slice()) {
            (c, []) => Ok(c),
            (Command::Drain { .. }, [d]) => match d.parse::<u64>() {
                Ok(s) if s <= MAX_DRAIN_DEADLINE_S => Ok(Command::Drain {
                    deadline_s: Some(s),
                }),
                _ => Err(CommandError::BadArgument {
                    command: "drain",
                    why: format!("the deadline is a number of seconds, 0..={MAX_DRAIN_DEADLINE_S}"),
                }),
            },
            (c, _) => Err(CommandError::BadArgument {
                command: c.name(),
                why: match c {
                    Command::Drain { .. } => {
                        "it takes at most one argument, the deadline in seconds".into()
                    }
                    _ => "it takes no argument".into(),
                },
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Command::Stats => "stats",
            Command::Reload => "reload",
            Command::Drain { .. } => "drain",
            Command::Undrain => "undrain",
            Command::LogReopen => "log reopen",
        }
    }

    /// The level a client needs for this command.
    pub fn level(self) -> Level {
        match self {
            Command::Stats => Level::User,
            Command::Reload | Command::LogReopen | Command::Drain { .. } | Command::Undrain => {
                Level::Admin
            }
        }
    }
}

/// The control socket, bound (so a second `lbd` on the same path is
/// refused before it opens any port) and not yet served.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    file: SocketFile,
    access: Access,
}

impl ControlSocket {
    /// Creates the socket at `path`: mode 0600, or 0660 and the control
    /// group when `access` has one, whatever the umask. Refuses a path in
    /// use by a running `lbd`, and anything at `path` but a stale socket.
    pub fn bind(path: &Path, access: Access) -> Result<ControlSocket, ControlError> {
        let mode = if access.group.is_some() { 0o660 } else { 0o600 };
        let (listener, file) =
            crate::sockfile::bind(path, mode, access.group).map_err(ControlError::SocketFile)?;
        listener
            .set_nonblocking(true)
            .map_err(ControlError::Setup)?;
        Ok(ControlSocket {
            listener,
            file,
            access,
        })
    }

    /// Serves the socket until `shared.stop` is set, then removes it.
    pub fn serve(
        self,
        shared: Arc<Shared>,
        reloader: Arc<Reloader>,
    ) -> Result<std::thread::JoinHandle<()>, ControlError> {
        let h = std::thread::Builder::new()
            .name("lbd-control".into())
            .spawn(move || {
                let ControlSocket {
                    listener,
                    file,
                    access,
                } = self;
                // By level: [user, admin].
                let slots = [
                    Slots::new(MAX_CLIENTS_PER_LEVEL),
                    Slots::new(MAX_CLIENTS_PER_LEVEL),
                ];
                while !shared.stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => admit(&shared, &reloader, &access, &slots, stream),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => {
                            tracing::warn!("control socket: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
                drop(file);
            })
            .map_err(ControlError::Thread)?;
        Ok(h)
    }
}

/// Checks a new client's credentials and hands it to a thread of its own,
/// or refuses it. Never blocks the accepting thread.
fn admit(
    shared: &Arc<Shared>,
    reloader: &Arc<Reloader>,
    access: &Access,
    slots: &[Arc<Slots>; 2],
    stream: UnixStream,
) {
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let peer = match crate::access::peer(&stream) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!("control client without credentials: {e}");
            return;
        }
    };
    let Some(level) = access.level(&peer) else {
        tracing::warn!(
            uid = peer.uid,
            pid = peer.pid,
            "control client refused: neither root, lbd's user nor in the control group"
        );
        refuse(
            stream,
            &format!(
                "permission denied: uid {} may not use this control socket (root, lbd's user and the control group may)",
                peer.uid
            ),
        );
        return;
    };
    let Some(slot) = slots[usize::from(level == Level::Admin)].take() else {
        refuse(
            stream,
            &format!(
                "too many control clients at the {} level (at most {MAX_CLIENTS_PER_LEVEL} at a time): try again",
                level.as_str()
            ),
        );
        return;
    };
    let (shared, reloader) = (shared.clone(), reloader.clone());
    let spawned = std::thread::Builder::new()
        .name("lbd-control-client".into())
        .spawn(move || {
            if let Err(e) = handle(&shared, &reloader, stream, &peer, level, slot) {
                tracing::debug!("control client: {e}");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("control client dropped: no thread for it ({e})");
    }
}

/// A refusal written without waiting on the client (what it already sent
/// is dropped first, so that the close does not reset the connection).
fn refuse(stream: UnixStream, why: &str) {
    let mut stream = stream;
    if stream.set_nonblocking(true).is_ok() {
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            if !matches!(stream.read(&mut sink), Ok(n) if n > 0) {
                break;
            }
        }
    }
    let text = format!("{}\n", json!({"ok": false, "error": why}));
    let _ = stream.write(text.as_bytes());
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

fn handle(
    shared: &Arc<Shared>,
    reloader: &Reloader,
    mut stream: UnixStream,
    peer: &Peer,
    level: Level,
    _slot: Slot,
) -> Result<(), ControlError> {
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let line = match crate::conn::read_request(
        &mut stream,
        deadline,
        MAX_COMMAND,
        crate::conn::line_end,
    ) {
        Ok(line) => line,
        // A last line without its newline still counts.
        Err(ReadError::Closed(partial)) if !partial.is_empty() => partial,
        Err(ReadError::Closed(_)) => return Ok(()),
        Err(ReadError::TooLong) => {
            let why = format!("command too long: at most {MAX_COMMAND} bytes, then a newline");
            return refuse_after_reading(stream, &why);
        }
        Err(ReadError::TimedOut) => {
            let why = format!("no command within {} s", COMMAND_TIMEOUT.as_secs());
            return refuse_after_reading(stream, &why);
        }
        Err(ReadError::Io(kind)) => return Err(ControlError::ReadCommand(kind)),
    };
    let answer = answer(shared, &|| reloader.reload(), &line, peer, level);
    reply(stream, &answer)
}

/// The answer to one command line (its newline included or not) from a
/// client with `peer`'s credentials at `level`; `reload` reloads the
/// configuration and waits for the outcome.
pub fn answer(
    shared: &Shared,
    reload: &dyn Fn() -> Outcome,
    line: &[u8],
    peer: &Peer,
    level: Level,
) -> Value {
    if let Some(v) = server_command(shared, line, level) {
        return v;
    }
    match Command::parse(line) {
        Err(e) => json!({"ok": false, "error": e}),
        Ok(cmd) if cmd.level() > level => {
            tracing::info!(
                uid = peer.uid,
                pid = peer.pid,
                command = cmd.name(),
                "control command refused"
            );
            json!({"ok": false, "error": format!(
                "permission denied: {} needs the {} level; uid {} has the {} level{}",
                cmd.name(),
                cmd.level().as_str(),
                peer.uid,
                level.as_str(),
                if level == Level::User { " (read-only)" } else { "" },
            )})
        }
        Ok(Command::Stats) => stats(shared),
        Ok(Command::Reload) => match reload() {
            Ok(generation) => json!({"ok": true, "generation": generation}),
            Err(why) => json!({"ok": false, "errors": why.to_string()}),
        },
        Ok(Command::Drain { deadline_s }) => {
            shared.cluster.drain(
                deadline_s.map(std::time::Duration::from_secs),
                shared.now_ns(),
            );
            tracing::info!(
                uid = peer.uid,
                deadline_s,
                "draining: VIPs withdrawn, sessions forwarded"
            );
            drain_reply(shared)
        }
        Ok(Command::Undrain) => {
            shared.cluster.undrain();
            tracing::info!(uid = peer.uid, "drain ended: VIPs announced again");
            drain_reply(shared)
        }
        Ok(Command::LogReopen) => log_reopen(shared),
    }
}

/// `log reopen`: the access log's writer reopens every file; the answer
/// waits for it (a few seconds at most).
fn log_reopen(shared: &Shared) -> Value {
    if shared.access_log.reopen(Duration::from_secs(5)) {
        json!({"ok": true})
    } else {
        json!({"ok": false, "error": "the access log writer did not answer within 5 s"})
    }
}

/// The `server` commands (see [`crate::servers`]), or `None` for a line
/// that is not one:
///
/// ```text
/// server drain GROUP SERVER [DEADLINE_S]
/// server undrain GROUP SERVER
/// ```
///
/// Both need the admin level. The change applies at once (the workers
/// take it at their next burst); the reply names the servers it touched.
fn server_command(shared: &Shared, line: &[u8], level: Level) -> Option<serde_json::Value> {
    let text = std::str::from_utf8(line).ok()?;
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.first() != Some(&"server") {
        return None;
    }
    let usage = "usage: server drain GROUP SERVER [DEADLINE_S] | server undrain GROUP SERVER";
    if level < Level::Admin {
        return Some(json!({"ok": false, "error": format!(
            "permission denied: server {} needs the admin level",
            words.get(1).copied().unwrap_or("")
        )}));
    }
    let rt = shared.runtime.load_full();
    let table = &rt.health.servers;
    let now = shared.now_ns();
    let done = match words.as_slice() {
        ["server", "drain", group, server] => table.drain(&rt.snap, group, server, None, now),
        ["server", "drain", group, server, deadline] => match deadline.parse::<f64>() {
            Ok(d) => table.drain(&rt.snap, group, server, Some(d), now),
            Err(_) => {
                return Some(
                    json!({"ok": false, "error": format!("bad deadline {deadline:?}: seconds expected")}),
                )
            }
        },
        ["server", "undrain", group, server] => table.undrain(&rt.snap, group, server),
        _ => return Some(json!({"ok": false, "error": usage})),
    };
    Some(match done {
        Ok(servers) => {
            // Published now rather than at the next tick.
            table.tick(&rt.snap, rt.health.as_ref(), now);
            tracing::info!(command = text.trim(), ?servers, "server command");
            json!({"ok": true, "servers": servers})
        }
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    })
}

/// The node's drain state and sessions, as `drain` and `undrain` answer.
fn drain_reply(shared: &Shared) -> Value {
    let st = shared.cluster.status(shared.now_ns());
    json!({
        "ok": true,
        "cluster_state": shared.cluster.state_name(),
        "sessions": sessions(shared),
        "deadline_s": st.deadline_in_s,
        "clustered": shared.runtime.load().snap.cfg.cluster.is_some(),
    })
}

/// Sessions in the workers' tables, as they last published them.
pub fn sessions(shared: &Shared) -> usize {
    shared
        .workers
        .iter()
        .map(|w| w.report.lock().unwrap_or_else(|p| p.into_inner()).sessions)
        .sum()
}

/// A refusal to a client that may still be sending.
fn refuse_after_reading(mut stream: UnixStream, why: &str) -> Result<(), ControlError> {
    let text = format!("{}\n", json!({"ok": false, "error": why}));
    crate::conn::write_by(&mut stream, text.as_bytes(), Instant::now() + WRITE_TIMEOUT)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    crate::conn::linger(&mut stream, Duration::from_millis(200), MAX_COMMAND);
    Ok(())
}

fn reply(mut stream: UnixStream, v: &Value) -> Result<(), ControlError> {
    let text = format!("{v}\n");
    crate::conn::write_by(&mut stream, text.as_bytes(), Instant::now() + WRITE_TIMEOUT)?;
    Ok(())
}

/// Sends one command to a running `lbd` and returns its JSON reply; a
/// command `lbd` refused (permission, unknown, too long) is an error.
pub fn request(path: &Path, command: &str) -> Result<Value, ControlError> {
    let mut s = UnixStream::connect(path).map_err(|source| ControlError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    // A reload compiles the whole configuration first.
    let wait = if command == Command::Reload.name() {
        600
    } else {
        30
    };
    s.set_read_timeout(Some(Duration::from_secs(wait)))?;
    // lbd may refuse before it reads the command (a client it does not
    // serve): then its reply is there to read even though the write failed.
    let sent = s.write_all(format!("{command}\n").as_bytes());
    let mut text = Vec::new();
    match s.read_to_end(&mut text) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !text.is_empty() => {}
        Err(e) => return Err(ControlError::Reply(e)),
    }
    if text.is_empty() {
        sent.map_err(ControlError::Send)?;
    }
    let v: Value = serde_json::from_slice(&text).map_err(ControlError::ReplyJson)?;
    if let Some(e) = v["error"].as_str() {
        return Err(ControlError::Refused {
            command: command.to_string(),
            reason: e.to_string(),
        });
    }
    Ok(v)
}

/// A port's exception path: its TAP and its counters (0 without one).
fn exception_counters(
    shared: &Shared,
    pi: usize,
    tap: Option<&str>,
    out: &mut serde_json::Map<String, Value>,
) {
    let c = shared.exception.port(pi).map(|ep| &ep.counters);
    let n = |f: fn(&crate::exception::Counters) -> &std::sync::atomic::AtomicU64| {
        c.map_or(0, |c| f(c).load(Ordering::Relaxed))
    };
    out.insert("tap".into(), json!(tap));
    out.insert("exception_to_kernel".into(), json!(n(|c| &c.to_kernel)));
    out.insert("exception_from_kernel".into(), json!(n(|c| &c.from_kernel)));
    out.insert("exception_drops".into(), json!(n(|c| &c.drops)));
}

/// Every counter of the running daemon.
pub fn stats(shared: &Shared) -> Value {
    let rt = shared.runtime.load_full();
    let snap = &rt.snap;
    let cfg = &snap.cfg;
    let reports: Vec<_> = shared
        .workers
        .iter()
        .map(|w| w.report.lock().unwrap_or_else(|p| p.into_inner()).clone())
        .collect();

    let mut ports = Vec::new();
    for (pi, p) in cfg.ports.iter().enumerate() {
        let mut t = crate::io::IoStats::default();
        let mut d = lb_core::pipeline::PortDrops::default();
        for r in &reports {
            if let Some(c) = r.core.as_ref().and_then(|c| c.port_drops.get(pi)) {
                d.spoofed_source += c.spoofed_source;
                d.vlan_mismatch += c.vlan_mismatch;
            }
            if let Some(s) = r.ports.get(pi) {
                t.rx_packets += s.rx_packets;
                t.rx_bytes += s.rx_bytes;
                t.rx_dropped += s.rx_dropped;
                t.tx_packets += s.tx_packets;
                t.tx_bytes += s.tx_bytes;
                t.tx_dropped += s.tx_dropped;
            }
        }
        ports.push(json!({
            "name": p.name,
            "interface": shared.port_names.get(pi),
            "link": shared.link_status(pi),
            "mtu": shared.port_mtu.get(pi).map_or(0, |m| m.load(Ordering::Relaxed)),
            // FULLNAT replies arriving here are steered to their worker's queue.
            "rss_steering": shared.port_rss.get(pi).is_some_and(Option::is_some),
            "rx_packets": t.rx_packets, "rx_bytes": t.rx_bytes, "rx_dropped": t.rx_dropped,
            "tx_packets": t.tx_packets, "tx_bytes": t.tx_bytes, "tx_dropped": t.tx_dropped,
            "source_check": p.source_check.as_str(),
            "vlan": p.vlan,
            "spoofed_source": d.spoofed_source,
            "vlan_mismatch": d.vlan_mismatch,
        }));
        if let Some(o) = ports.last_mut().and_then(Value::as_object_mut) {
            exception_counters(shared, pi, p.tap.as_deref(), o);
        }
    }

    let mut drops: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut rules: BTreeMap<String, u64> = BTreeMap::new();
    let mut listeners: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut servers: BTreeMap<(usize, usize), (u64, u64)> = BTreeMap::new();
    let mut limited: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    let mut workers = Vec::new();
    let (mut icmp_sent, mut icmp_limited) = (0u64, 0u64);
    let mut syn_flood: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut fragments: BTreeMap<&'static str, u64> = BTreeMap::new();
    for (i, r) in reports.iter().enumerate() {
        icmp_sent += r.icmp_errors_sent;
        icmp_limited += r.icmp_errors_rate_limited;
        let Some(core) = &r.core else { continue };
        for (k, v) in syn_flood_counters(core, r) {
            *syn_flood.entry(k).or_default() += v;
        }
        for (k, v) in fragment_counters(&core.fragments) {
            *fragments.entry(k).or_default() += v;
        }
        for k in DropKind::ALL.iter().skip(1) {
            *drops.entry(k.as_str()).or_default() += core.drops[*k as usize];
        }
        *drops.entry("neighbor_unresolved").or_default() += r.neighbor_unresolved;
        *drops.entry("handoff_queue_full").or_default() += r.handoff_dropped;
        // Counters keyed by configuration indices are only read against the
        // generation they were counted under.
        if r.generation == snap.generation {
            for (origin, hits) in &core.rule_hits {
                let d = lb_core::acl::policy::Decision {
                    action: lb_core::model::Action::Allow,
                    origin: *origin,
                };
                let name = snap.describe(&lb_core::pipeline::Reason::Policy(d));
                // The action in the name is the rule's own.
                let name = name.replace(" (allow)", "");
                *rules.entry(name).or_default() += hits;
            }
            for ((lb, l), c) in core.listener_sessions.iter() {
                if let Some(lbc) = cfg.load_balancers.get(lb as usize) {
                    if let Some(lc) = lbc.listeners.get(l as usize) {
                        let e = listeners
                            .entry(format!("{}:{}", lbc.id, lc.port))
                            .or_default();
                        e.0 += c.active;
                        e.1 += c.total;
                    }
                }
            }
            for ((lb, l), c) in core.listener_limited.iter() {
                *limited.entry((lb, l)).or_default() += c.total;
            }
            for ((g, s), c) in core.server_sessions.iter() {
                let e = servers.entry((g as usize, s as usize)).or_default();
                e.0 += c.active;
                e.1 += c.total;
            }
        }
        workers.push(json!({
            "id": i,
            "rx": core.rx,
            "forwarded": core.forwarded,
            "local": core.local,
            "sessions": r.sessions,
            "sessions_created": core.sessions_created,
            "handoff_out": r.handoff_out,
        }));
    }

    let nc = &shared.neigh.counters;
    for (name, c) in [
        ("neighbor_own_address_claim", &nc.own_address_claims),
        ("neighbor_off_link", &nc.off_link),
        ("neighbor_unsolicited", &nc.unsolicited),
        ("neighbor_table_full", &nc.table_full),
    ] {
        *drops.entry(name).or_default() += c.load(Ordering::Relaxed);
    }
    let neighbor_tables: Vec<Value> = shared
        .neigh
        .sizes()
        .into_iter()
        .enumerate()
        .map(|(pi, (entries, limit))| {
            json!({
                "port": cfg.ports.get(pi).map(|p| p.name.as_str()),
                "entries": entries,
                "limit": limit,
            })
        })
        .collect();

    let mut server_list = Vec::new();
    for (gi, g) in cfg.server_groups.iter().enumerate() {
        for (si, s) in g.servers.iter().enumerate() {
            let h = rt.health.server(gi, si);
            let (active, total) = servers.get(&(gi, si)).copied().unwrap_or_default();
            server_list.push(json!({
                "group": g.id,
                "server": s.name,
                "port": s.port,
                "weight": s.weight,
                "up": h.is_none_or(|h| h.up.load(Ordering::Relaxed)),
                "checked": h.is_some_and(|h| h.checked.load(Ordering::Relaxed)),
                "health_changes": h.map(|h| h.changes.load(Ordering::Relaxed)).unwrap_or(0),
                "active_sessions": active,
                "total_sessions": total,
            }));
            crate::servers::describe(
                server_list.last_mut(),
                &rt.health.servers,
                (gi, si),
                shared.now_ns(),
            );
        }
    }
    let mut listener_list = Vec::new();
    for (lbi, lb) in cfg.load_balancers.iter().enumerate() {
        for (li, l) in lb.listeners.iter().enumerate() {
            let name = format!("{}:{}", lb.id, l.port);
            let (active, total) = listeners.get(&name).copied().unwrap_or_default();
            listener_list.push(json!({
                "listener": name,
                "protocol": format!("{:?}", l.protocol).to_lowercase(),
                "server_group": cfg.server_groups[l.server_group].id,
                "active_sessions": active,
                "total_sessions": total,
                // Opening packets its limits refused since the last reload.
                "listener_limit": u32::try_from(lbi)
                    .ok()
                    .zip(u32::try_from(li).ok())
                    .and_then(|k| limited.get(&k).copied())
                    .unwrap_or(0),
            }));
        }
    }
    let neighbors: Vec<Value> = shared
        .neigh
        .entries()
        .into_iter()
        .map(|((port, addr), e)| {
            json!({
                "port": cfg.ports.get(port as usize).map(|p| p.name.as_str()),
                "address": addr.to_string(),
                "mac": e.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
            })
        })
        .collect();
    json!({
        "generation": snap.generation,
        "uptime_s": shared.started.elapsed().as_secs(),
        "reloads": shared.reloads.load(Ordering::Relaxed),
        "reload_failures": shared.reload_failures.load(Ordering::Relaxed),
        "classifiers": {
            "rule_sets": snap.rule_sets().count(),
            "staged": snap.rule_sets().filter(|r| r.needs_refinement()).count(),
        },
        "ports": ports,
        "workers": workers,
        "drops": drops,
        "icmp_errors": {"sent": icmp_sent, "rate_limited": icmp_limited},
        "rules": rules,
        "listeners": listener_list,
        "servers": server_list,
        "neighbors": neighbors,
        "neighbor_tables": neighbor_tables,
        "syn_flood": syn_flood,
        "fragments": fragments,
        "drain_closed": reports.iter().filter_map(|r| r.core.as_ref()).map(|c| c.drain_closed).sum::<u64>(),
        "cluster_state": shared.cluster.state_name(),
        "sessions": reports.iter().map(|r| r.sessions).sum::<usize>(),
        "cluster": cluster_stats(shared, cfg),
        "access_log_records": shared.access_log.records.load(Ordering::Relaxed),
        "access_log_dropped": shared.access_log.dropped.load(Ordering::Relaxed)
            + reports.iter().map(|r| r.access_log_dropped).sum::<u64>(),
    })
}

/// The cluster part of the stats: the node, the drain, what BIRD was
/// last configured to announce and its counters (`null` without
/// `[cluster]`).
fn cluster_stats(shared: &Shared, cfg: &lb_core::model::Config) -> Value {
    let Some(c) = &cfg.cluster else {
        return Value::Null;
    };
    let state = &shared.cluster;
    let announced = state
        .announced
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let drain = state.status(shared.now_ns());
    let slice = lb_core::nat::node_ports(c.node_id, c.nodes);
    let peers: Vec<Value> = c
        .peers
        .iter()
        .map(|p| {
            json!({
                "address": p.address.to_string(),
                "asn": p.asn,
                "port": cfg.ports.get(p.port).map(|p| p.name.as_str()),
            })
        })
        .collect();
    let last_error = state
        .last_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    json!({
        "node_id": c.node_id,
        "nodes": c.nodes,
        "asn": c.asn,
        "local_ports": format!("{}-{}", slice.start(), slice.end()),
        "peers": peers,
        "drain_deadline_s": drain.deadline_in_s,
        "drain_deadline_passed": drain.deadline_passed,
        "cluster_announced": announced.len(),
        "announced": announced,
        "cluster_bird_reconfigs": state.bird_reconfigs.load(Ordering::Relaxed),
        "cluster_bird_errors": state.bird_errors.load(Ordering::Relaxed),
        "bird_last_error": last_error,
    })
}

/// A worker's IP fragment counters (`fragments` in the stats), each with
/// its help text in [`crate::metrics`]. Their drops are under `drops`
/// (`fragment`, `fragment_overlap`, `fragment_timeout`).
pub(crate) fn fragment_counters(c: &lb_core::pipeline::FragmentCounts) -> [(&'static str, u64); 5] {
    [
        ("first", c.first),
        ("forwarded", c.forwarded),
        ("held", c.held),
        ("released", c.released),
        ("table_full", c.table_full),
    ]
}

/// A worker's counters of the SYN-flood defences (`syn_flood` in the
/// stats), each with its help text in [`crate::metrics`].
pub(crate) fn syn_flood_counters(
    core: &lb_core::pipeline::Stats,
    r: &crate::daemon::WorkerReport,
) -> [(&'static str, u64); 6] {
    [
        ("half_open", r.half_open as u64),
        ("early_drops", core.early_drops),
        ("syn_cookies_sent", core.syn_cookies_sent),
        ("syn_cookies_valid", core.syn_cookies_valid),
        ("syn_cookies_invalid", core.syn_cookies_invalid),
        ("syn_proxy_engaged", r.syn_proxy_engaged as u64),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_their_levels() {
        assert_eq!(Command::parse(b"stats\n"), Ok(Command::Stats));
        assert_eq!(Command::parse(b"  reload \r\n"), Ok(Command::Reload));
        assert_eq!(Command::Stats.level(), Level::User);
        assert_eq!(Command::Reload.level(), Level::Admin);
        assert!(Level::User < Level::Admin);
        let e = Command::parse(b"drop tables\n").expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "unknown command \"drop tables\": the commands are stats, reload, log reopen, drain, undrain"
        );
        assert_eq!(
            Command::parse(b"drain\n"),
            Ok(Command::Drain { deadline_s: None })
        );
        assert_eq!(
            Command::parse(b" drain  30 \n"),
            Ok(Command::Drain {
                deadline_s: Some(30)
            })
        );
        assert_eq!(Command::parse(b"undrain"), Ok(Command::Undrain));
        assert_eq!(Command::Drain { deadline_s: None }.level(), Level::Admin);
        assert_eq!(Command::Undrain.level(), Level::Admin);
        for bad in [
            "drain soon",
            "drain -1",
            "drain 86401",
            "drain 1 2",
            "stats now",
            "undrain 5",
        ] {
            let e = Command::parse(bad.as_bytes()).expect_err(bad).to_string();
            assert!(
                e.starts_with(&format!("{}: ", bad.split(' ').next().unwrap_or(""))),
                "{e}"
            );
        }
        assert_eq!(Command::parse(b"log  reopen\n").ok(), None);
        assert_eq!(Command::parse(b" log reopen\n"), Ok(Command::LogReopen));
        assert_eq!(Command::LogReopen.level(), Level::Admin);
        let long = Command::parse(&[b'x'; 1000])
            .expect_err("unknown")
            .to_string();
        assert!(long.len() < 200, "not echoed whole: {long}");
        assert_eq!(
            Command::parse(&[0xff, b'\n']).map_err(|e| e.to_string()),
            Err("the command is not UTF-8".into())
        );
    }
}
