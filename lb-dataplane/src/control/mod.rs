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

mod stats;
#[cfg(test)]
mod tests;

pub use stats::stats;

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
