//! Listeners' access logs: one JSON line per session when it ends (and,
//! with `on_start`, when it starts).
//!
//! The pipeline makes fixed-size records ([`SessionRecord`]) in a bounded
//! buffer of each worker; between bursts the worker moves them into its own
//! bounded lock-free queue here ([`AccessLog::pass`]), and one writer
//! thread ([`run_writer`]) drains every queue, formats the lines and writes
//! them with buffering. The data path never waits for the log: a record
//! that finds the queue full is counted (`access_log_dropped`) and lost.
//!
//! A record names its listener and server by index, under the
//! configuration generation the worker ran: [`AccessLog::register`] keeps
//! the names and files of the last few generations (the daemon registers
//! a configuration before the workers can see it), so a reload that moves
//! a log loses nothing: records of the old generation go to the old file,
//! those of the new one to the new file.
//!
//! The record's times are the pipeline's clock (nanoseconds since the
//! daemon started); the writer turns them into wall-clock time.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::queue::ArrayQueue;
use lb_core::conntrack::TcpState;
use lb_core::pipeline::{RecordKind, SessionRecord, Snapshot};

/// Records one worker's queue holds for the writer.
pub const QUEUE_DEPTH: usize = 65536;

/// Configuration generations whose names the writer keeps.
const GENERATIONS_KEPT: usize = 8;

/// How long the writer sleeps when every queue is empty.
const IDLE_SLEEP: Duration = Duration::from_millis(5);

/// Records the writer takes from one queue before it looks at the next.
const DRAIN_STEP: usize = 4096;

/// The names a generation's records are written with.
#[derive(Debug, Default)]
pub struct Names {
    generation: u32,
    /// Per load balancer, per listener: its name, transport and file
    /// (`None`: it does not log).
    listeners: Vec<Vec<Option<ListenerLog>>>,
    /// Per server group: its servers' names.
    servers: Vec<Vec<String>>,
}

#[derive(Debug, Clone)]
struct ListenerLog {
    /// `lb:port`, as `lbctl stats` names it.
    name: String,
    protocol: &'static str,
    path: String,
}

impl Names {
    /// The names of `snap`'s listeners and servers.
    pub fn of(snap: &Snapshot) -> Names {
        let cfg = &snap.cfg;
        Names {
            generation: snap.generation as u32,
            listeners: cfg
                .load_balancers
                .iter()
                .map(|lb| {
                    lb.listeners
                        .iter()
                        .map(|l| {
                            l.access_log.as_ref().map(|a| ListenerLog {
                                name: format!("{}:{}", lb.id, l.port),
                                protocol: if l.protocol.ip_protocol() == lb_core::model::proto::UDP
                                {
                                    "udp"
                                } else {
                                    "tcp"
                                },
                                path: a.path.clone(),
                            })
                        })
                        .collect()
                })
                .collect(),
            servers: cfg
                .server_groups
                .iter()
                .map(|g| g.servers.iter().map(|s| s.name.clone()).collect())
                .collect(),
        }
    }

    /// The low 32 bits of the generation they are the names of.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    fn listener(&self, r: &SessionRecord) -> Option<&ListenerLog> {
        self.listeners
            .get(usize::from(r.lb))?
            .get(usize::from(r.listener))?
            .as_ref()
    }

    /// Whether some listener logs.
    fn any(&self) -> bool {
        self.listeners.iter().flatten().any(Option::is_some)
    }

    fn paths(&self) -> impl Iterator<Item = &str> {
        self.listeners
            .iter()
            .flatten()
            .flatten()
            .map(|l| l.path.as_str())
    }
}

/// The access logs of a running daemon: the workers' queues, the names of
/// recent generations, the counters and the reopen requests.
#[derive(Debug)]
pub struct AccessLog {
    /// One queue per worker, made when a configuration first logs.
    queues: Vec<OnceLock<ArrayQueue<SessionRecord>>>,
    names: Mutex<VecDeque<std::sync::Arc<Names>>>,
    /// Lines written.
    pub records: AtomicU64,
    /// Records lost: a full queue, or the writer could not write them.
    pub dropped: AtomicU64,
    reopen_asked: AtomicU64,
    reopen_done: AtomicU64,
    /// No worker makes records any more.
    closed: AtomicBool,
    /// Wall-clock time at the pipeline clock's zero.
    epoch: SystemTime,
}

impl AccessLog {
    /// The logs of `workers` workers whose clock started at `started`.
    pub fn new(workers: usize, started: Instant) -> AccessLog {
        let epoch = SystemTime::now()
            .checked_sub(started.elapsed())
            .unwrap_or(UNIX_EPOCH);
        AccessLog {
            queues: (0..workers).map(|_| OnceLock::new()).collect(),
            names: Mutex::new(VecDeque::new()),
            records: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reopen_asked: AtomicU64::new(0),
            reopen_done: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            epoch,
        }
    }

    /// Makes `snap`'s names known before any worker runs it; the queues
    /// are made the first time a configuration logs.
    pub fn register(&self, snap: &Snapshot) {
        let names = Names::of(snap);
        if names.any() {
            for q in &self.queues {
                q.get_or_init(|| ArrayQueue::new(QUEUE_DEPTH));
            }
        }
        let mut kept = self.names.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|n| n.generation != names.generation);
        kept.push_back(std::sync::Arc::new(names));
        while kept.len() > GENERATIONS_KEPT {
            kept.pop_front();
        }
    }

    fn names(&self, generation: u32) -> Option<std::sync::Arc<Names>> {
        let kept = self.names.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter()
            .rev()
            .find(|n| n.generation == generation)
            .cloned()
    }

    /// Hands worker `worker`'s record to the writer; false (and counted)
    /// when its queue is full. Never blocks.
    pub fn pass(&self, worker: usize, r: SessionRecord) -> bool {
        let queued = self
            .queues
            .get(worker)
            .and_then(OnceLock::get)
            .is_some_and(|q| q.push(r).is_ok());
        if !queued {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        queued
    }

    /// Asks the writer to reopen every file (after logrotate moved them)
    /// and waits up to `wait` for it; returns whether it did.
    pub fn reopen(&self, wait: Duration) -> bool {
        let asked = self.reopen_asked.fetch_add(1, Ordering::SeqCst) + 1;
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if self.reopen_done.load(Ordering::SeqCst) >= asked {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    /// Says that the workers have stopped: the writer ends once their
    /// queues are empty.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Asks the writer to reopen every file, without waiting (SIGUSR1).
    pub fn request_reopen(&self) {
        self.reopen_asked.fetch_add(1, Ordering::SeqCst);
    }
}

/// An open log file.
struct Sink {
    out: Option<BufWriter<File>>,
    /// A failure to open it was reported (until it opens again).
    failed: bool,
}

fn open(path: &str) -> std::io::Result<BufWriter<File>> {
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)?;
    Ok(BufWriter::with_capacity(1 << 16, f))
}

impl Sink {
    fn opened(path: &str) -> Sink {
        let mut s = Sink {
            out: None,
            failed: false,
        };
        s.reopen(path);
        s
    }

    fn reopen(&mut self, path: &str) {
        if let Some(mut old) = self.out.take() {
            if let Err(e) = old.flush() {
                tracing::warn!(path, "access log: {e}");
            }
        }
        match open(path) {
            Ok(out) => {
                self.out = Some(out);
                self.failed = false;
            }
            Err(e) => {
                if !self.failed {
                    tracing::error!(path, "access log: opening: {e}; its lines are dropped");
                }
                self.failed = true;
            }
        }
    }
}

/// The writer: drains the workers' queues into the files until `stop()`
/// holds and the queues are empty.
pub fn run_writer(log: &AccessLog, stop: &dyn Fn() -> bool) {
    let mut sinks: HashMap<String, Sink> = HashMap::new();
    let mut line = String::with_capacity(512);
    let mut reopened = log.reopen_done.load(Ordering::SeqCst);
    let mut names: Option<std::sync::Arc<Names>> = None;
    loop {
        let asked = log.reopen_asked.load(Ordering::SeqCst);
        if asked != reopened {
            for (path, s) in &mut sinks {
                s.reopen(path);
            }
            tracing::info!(files = sinks.len(), "access logs reopened");
            reopened = asked;
            log.reopen_done.store(asked, Ordering::SeqCst);
        }
        let stopping = stop();
        let mut written = 0usize;
        for q in log.queues.iter().filter_map(OnceLock::get) {
            for _ in 0..DRAIN_STEP {
                let Some(r) = q.pop() else { break };
                written += 1;
                if names.as_ref().is_none_or(|n| n.generation != r.generation) {
                    names = log.names(r.generation);
                    if let Some(n) = &names {
                        prune(&mut sinks, log);
                        for p in n.paths() {
                            sinks
                                .entry(p.to_string())
                                .or_insert_with(|| Sink::opened(p));
                        }
                    }
                }
                let ok = names.as_ref().is_some_and(|n| {
                    line.clear();
                    format_line(&mut line, &r, n, log.epoch)
                        && n.listener(&r)
                            .and_then(|l| sinks.get_mut(&l.path))
                            .and_then(|s| s.out.as_mut())
                            .is_some_and(|out| out.write_all(line.as_bytes()).is_ok())
                });
                if ok {
                    log.records.fetch_add(1, Ordering::Relaxed);
                } else {
                    log.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if written == 0 {
            for (path, s) in &mut sinks {
                if let Some(Err(e)) = s.out.as_mut().map(BufWriter::flush) {
                    tracing::warn!(path, "access log: {e}");
                }
            }
            if stopping {
                return;
            }
            std::thread::sleep(IDLE_SLEEP);
        }
    }
}

/// Closes the files no kept generation writes to.
fn prune(sinks: &mut HashMap<String, Sink>, log: &AccessLog) {
    let kept = log.names.lock().unwrap_or_else(|p| p.into_inner());
    sinks.retain(|path, s| {
        let used = kept.iter().any(|n| n.paths().any(|p| p == path));
        if !used {
            if let Some(Err(e)) = s.out.as_mut().map(BufWriter::flush) {
                tracing::warn!(path, "access log: {e}");
            }
        }
        used
    });
}

fn tcp_state(s: TcpState) -> &'static str {
    match s {
        TcpState::SynSent => "syn_sent",
        TcpState::SynRecv => "syn_recv",
        TcpState::Established => "established",
        TcpState::FinWait => "fin_wait",
        TcpState::Closed => "closed",
    }
}

/// Writes `s` as a JSON string.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `t` (nanoseconds after `epoch`) as RFC 3339 UTC with microseconds.
fn rfc3339(out: &mut String, epoch: SystemTime, t: u64) {
    let at = epoch + Duration::from_nanos(t);
    let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "\"{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z\"",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    );
}

/// One record as its JSON line (with the newline) into `out`; false when
/// its listener does not log under `names`.
pub fn format_line(out: &mut String, r: &SessionRecord, names: &Names, epoch: SystemTime) -> bool {
    let Some(l) = names.listener(r) else {
        return false;
    };
    let event = match r.kind {
        RecordKind::Start => "start",
        RecordKind::End(_) => "end",
    };
    let _ = write!(out, "{{\"event\":\"{event}\",\"time\":");
    rfc3339(out, epoch, r.started);
    if let RecordKind::End(_) = r.kind {
        out.push_str(",\"end_time\":");
        rfc3339(out, epoch, r.ended);
    }
    let _ = write!(out, ",\"duration_s\":{:.6},\"listener\":", r.duration_s());
    json_str(out, &l.name);
    let _ = write!(
        out,
        ",\"protocol\":\"{}\",\"client\":\"{}\",\"client_port\":{},\"vip\":\"{}\",\"vip_port\":{}",
        l.protocol, r.orig.src, r.orig.sport, r.orig.dst, r.orig.dport
    );
    if r.local_port {
        let _ = write!(
            out,
            ",\"local\":\"{}\",\"local_port\":{}",
            r.reply.dst, r.reply.dport
        );
    } else {
        out.push_str(",\"local\":null,\"local_port\":null");
    }
    out.push_str(",\"backend\":");
    match r.server().and_then(|(g, s)| names.servers.get(g)?.get(s)) {
        Some(name) => json_str(out, name),
        None => out.push_str("null"),
    }
    let _ = write!(
        out,
        ",\"backend_address\":\"{}\",\"backend_port\":{},\"packets_from_client\":{},\"bytes_from_client\":{},\"packets_from_backend\":{},\"bytes_from_backend\":{},\"tcp_state\":",
        r.reply.src, r.reply.sport, r.packets[0], r.bytes[0], r.packets[1], r.bytes[1]
    );
    match r.tcp_state {
        Some(s) => {
            let _ = write!(out, "\"{}\"", tcp_state(s));
        }
        None => out.push_str("null"),
    }
    if let RecordKind::End(why) = r.kind {
        let _ = write!(out, ",\"reason\":\"{}\"", why.as_str());
    }
    out.push_str("}\n");
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::flow::FlowKey;
    use lb_core::pipeline::EndReason;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    /// The seed configuration, its first listener logging to `path`.
    fn snapshot(path: &str, generation: u64) -> Snapshot {
        let seed = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/alb-seed.toml");
        let mut cfg = lb_config::load(std::path::Path::new(seed)).expect("seed loads");
        cfg.load_balancers[0].listeners[0].access_log = Some(lb_core::model::AccessLog {
            path: path.into(),
            format: lb_core::model::AccessLogFormat::Json,
            on_start: false,
        });
        Snapshot::compile(cfg, generation)
    }

    fn record(generation: u32, client_port: u16) -> SessionRecord {
        let ip = |s: &str| s.parse().expect("address");
        SessionRecord {
            kind: RecordKind::End(EndReason::Fin),
            generation,
            lb: 0,
            listener: 0,
            group: 0,
            server: 1,
            orig: FlowKey {
                src: ip("198.18.0.2"),
                dst: ip("198.18.0.10"),
                proto: 6,
                sport: client_port,
                dport: 80,
            },
            reply: FlowKey {
                src: ip("198.19.1.12"),
                dst: ip("198.19.1.250"),
                proto: 6,
                sport: 80,
                dport: 1025,
            },
            local_port: true,
            started: 1_000_000_000,
            last_seen: 1_250_000_000,
            ended: 11_250_000_000,
            packets: [6, 5],
            bytes: [400, 1500],
            tcp_state: Some(TcpState::Closed),
        }
    }

    #[test]
    fn a_full_queue_counts_drops_without_blocking() {
        let log = AccessLog::new(1, Instant::now());
        log.register(&snapshot("/nonexistent/a.log", 1));
        let t = Instant::now();
        let refused = (0..QUEUE_DEPTH + 100)
            .filter(|&i| !log.pass(0, record(1, i as u16)))
            .count();
        assert_eq!(refused, 100);
        assert_eq!(log.dropped.load(Ordering::Relaxed), 100);
        // Nobody drains the queue: a blocking push would never return.
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        // A worker whose configuration never logged has no queue.
        let quiet = AccessLog::new(1, Instant::now());
        assert!(!quiet.pass(0, record(1, 1)));
    }

    fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    fn wait_written(log: &AccessLog, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while log.records.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "{n} records not written");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_writer_writes_reopens_and_follows_reloads() {
        let dir = std::env::temp_dir().join(format!("lbd-access-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (a, b) = (dir.join("a.log"), dir.join("b.log"));
        let log = Arc::new(AccessLog::new(2, Instant::now()));
        log.register(&snapshot(a.to_str().expect("utf-8"), 1));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || run_writer(&log, &|| stop.load(Ordering::Relaxed)))
        };
        for port in 40000..40003 {
            assert!(log.pass(usize::from(port % 2), record(1, port)));
        }
        wait_written(&log, 3);
        assert!(log.reopen(Duration::from_secs(5)), "flushed and reopened");
        let got = lines(&a);
        assert_eq!(got.len(), 3, "{got:?}");
        let l = &got[0];
        assert_eq!(l["event"], "end");
        assert_eq!(l["listener"], "alb-1:80");
        assert_eq!(l["protocol"], "tcp");
        assert_eq!(
            (&l["client"], &l["vip"]),
            (&"198.18.0.2".into(), &"198.18.0.10".into())
        );
        assert_eq!(
            (&l["local"], &l["local_port"]),
            (&"198.19.1.250".into(), &1025.into())
        );
        assert_eq!(l["backend"], "ecs02");
        assert_eq!(
            (&l["backend_address"], &l["backend_port"]),
            (&"198.19.1.12".into(), &80.into())
        );
        assert_eq!(
            (&l["packets_from_client"], &l["bytes_from_client"]),
            (&6.into(), &400.into())
        );
        assert_eq!(
            (&l["packets_from_backend"], &l["bytes_from_backend"]),
            (&5.into(), &1500.into())
        );
        assert_eq!(
            (&l["tcp_state"], &l["reason"]),
            (&"closed".into(), &"fin".into())
        );
        assert_eq!(l["duration_s"], 0.25);
        let ports: Vec<_> = got.iter().map(|l| l["client_port"].as_u64()).collect();
        assert!(
            ports.contains(&Some(40000)) && ports.contains(&Some(40002)),
            "{ports:?}"
        );

        // logrotate: the file moves, the writer reopens, new lines go to
        // a new file.
        let rotated = dir.join("a.log.1");
        std::fs::rename(&a, &rotated).expect("rename");
        assert!(log.reopen(Duration::from_secs(5)));
        log.pass(0, record(1, 40010));
        wait_written(&log, 4);
        assert!(log.reopen(Duration::from_secs(5)), "flushed");
        assert_eq!(lines(&rotated).len(), 3, "the old file is left alone");
        assert_eq!(lines(&a).len(), 1);

        // A reload moves the log: records of the old configuration still
        // go to the old file, the new one's to the new file.
        log.register(&snapshot(b.to_str().expect("utf-8"), 2));
        log.pass(0, record(2, 40020));
        log.pass(1, record(1, 40021));
        wait_written(&log, 6);
        stop.store(true, Ordering::Relaxed);
        writer.join().expect("writer");
        assert_eq!(lines(&a).len(), 2);
        let moved = lines(&b);
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0]["client_port"], 40020);
        assert_eq!(log.dropped.load(Ordering::Relaxed), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let mut s = String::new();
        rfc3339(&mut s, UNIX_EPOCH, 0);
        assert_eq!(s, "\"1970-01-01T00:00:00.000000Z\"");
        s.clear();
        // 2026-12-07T15:02:11.402117Z
        let t = 1_796_655_731_402_117_000u64;
        rfc3339(&mut s, UNIX_EPOCH, t);
        assert_eq!(s, "\"2026-12-07T15:02:11.402117Z\"");
        s.clear();
        // A leap day.
        rfc3339(&mut s, UNIX_EPOCH, 951_782_400 * 1_000_000_000);
        assert_eq!(s, "\"2000-02-29T00:00:00.000000Z\"");
    }

    #[test]
    fn strings_are_escaped() {
        let mut s = String::new();
        json_str(&mut s, "a\"b\\c\n");
        assert_eq!(s, r#""a\"b\\c\u000a""#);
        let v: serde_json::Value = serde_json::from_str(&s).expect("valid JSON");
        assert_eq!(v, "a\"b\\c\n");
    }
}
