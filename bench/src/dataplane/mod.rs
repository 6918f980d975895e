//! `bench dataplane`: the whole data path at DPDK speed, against
//! `dpdk-testpmd` on the same links in the same run.
//!
//! ```text
//!   bench dataplane-traffic                 device under test
//!   port 0 (clients)   <== net_memif ==>  port 0 "ext"   lbd, io = "dpdk"
//!   port 1 (backends)  <== net_memif ==>  port 1 "int"   (or dpdk-testpmd)
//! ```
//!
//! For 1 and 2 workers, `bench dataplane` starts the device (`lbd` with
//! `io = "dpdk"`, `--no-huge`, memif server ports; then `dpdk-testpmd`
//! in io forwarding mode on the same sockets), then the traffic process
//! (this binary, `bench dataplane-traffic`, memif client ports: see
//! [`traffic`]), reads the traffic process's phase lines and `lbd`'s
//! counters (`lbctl stats --json`), stops everything and prints the
//! figures, ending with `ratio lbd/testpmd: w1=… w2=…`. Every process runs
//! for a bounded time; sockets, EAL runtime directories and processes are
//! removed on every way out.

#[cfg(feature = "dpdk")]
pub mod port;
#[cfg(feature = "dpdk")]
pub mod traffic;

use std::fmt::Write as _;
use std::io::Read as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::gen::{parse_duration, parse_mac, SrcNet};

/// Ethernet addresses of the memif ports (set with the `mac` devarg).
pub const LBD_EXT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x10, 0x01];
pub const LBD_INT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x10, 0x02];
pub const GEN_EXT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x20, 0x01];
pub const GEN_INT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x20, 0x02];

/// Arguments of `bench dataplane`.
#[derive(Debug, Clone, Args)]
pub struct DataplaneArgs {
    /// Worker counts to measure (lbd workers, testpmd forwarding cores).
    #[arg(long, value_delimiter = ',', default_values_t = [1u16, 2])]
    pub workers: Vec<u16>,
    /// Length of each phase.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Established flows.
    #[arg(long, default_value_t = 4096)]
    pub flows: usize,
    /// Phases measured through lbd (est, new, deny, lat; lat after est).
    #[arg(long, value_delimiter = ',', default_values_t = ["est".to_string(), "new".into(), "deny".into(), "lat".into()])]
    pub phases: Vec<String>,
    /// The lbd binary, built with the dpdk feature (default: next to this
    /// binary).
    #[arg(long)]
    pub lbd: Option<PathBuf>,
    /// The lbctl binary (default: next to this binary).
    #[arg(long)]
    pub lbctl: Option<PathBuf>,
    /// The reference forwarder.
    #[arg(long, default_value = "dpdk-testpmd")]
    pub testpmd: PathBuf,
    /// Skip the testpmd reference.
    #[arg(long)]
    pub no_reference: bool,
    /// CPU of the traffic process (lbd's single worker and testpmd's single
    /// forwarding core take another).
    #[arg(long, default_value_t = 0)]
    pub gen_cpu: u16,
    /// Upper bound of each device run (start, warm-up, phases, stop).
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    pub max_time: Duration,
    /// lbd's IPv4 sessions per worker (`max_sessions`): the new-connection
    /// phase needs room for all it opens (millions a second, for
    /// `--duration`).
    #[arg(long, default_value_t = 4 << 20)]
    pub max_sessions: usize,
    /// Keep the working directory (configuration, logs) for inspection.
    #[arg(long)]
    pub keep: bool,
    /// Print lbd's configuration for memif server sockets `DIR/ext.sock`
    /// and `DIR/int.sock` (EAL file prefix `lbdpb-<DIR's name>`, the first
    /// of `--workers`, no pinned cores) and exit: for other generators,
    /// such as pktgen (scripts/pktgen/memif.sh).
    #[arg(long, value_name = "DIR")]
    pub print_config: Option<PathBuf>,
}

/// Arguments of `bench dataplane-traffic`.
#[derive(Debug, Clone, Args)]
pub struct TrafficArgs {
    /// EAL arguments (one string): port 0 faces the device's client side,
    /// port 1 its backend side.
    #[arg(long, allow_hyphen_values = true)]
    pub eal: String,
    /// Queue pairs per port (frames spread over them round robin).
    #[arg(long, default_value_t = 1)]
    pub queues: u16,
    /// Destination MAC of the frames: the device's client-side port.
    #[arg(long, value_parser = parse_mac, default_value = "02:00:00:00:10:01")]
    pub dst_mac: [u8; 6],
    #[arg(long, default_value = "198.18.0.10")]
    pub vip: IpAddr,
    /// The allowed listener port.
    #[arg(long, default_value_t = 80)]
    pub port: u16,
    /// A port the load balancer's security group denies.
    #[arg(long, default_value_t = 81)]
    pub deny_port: u16,
    /// Client addresses (on the device's client-side link).
    #[arg(long, default_value = "198.18.0.100-198.18.0.200")]
    pub src: SrcNet,
    /// The backends' addresses (answered for on port 1).
    #[arg(long, value_delimiter = ',', default_values_t = ["198.19.1.11".parse::<IpAddr>().expect("ip"), "198.19.1.12".parse().expect("ip")])]
    pub backends: Vec<IpAddr>,
    /// Established flows.
    #[arg(long, default_value_t = 4096)]
    pub flows: usize,
    /// Length of each phase.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Phases, in order: est, new, deny, lat.
    #[arg(long, value_delimiter = ',', default_values_t = ["est".to_string(), "new".into(), "deny".into(), "lat".into()])]
    pub phases: Vec<String>,
    /// The lat phase's rate as a share of what est delivered.
    #[arg(long, default_value_t = 0.5)]
    pub lat_share: f64,
    /// Upper bound of the whole run.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub max_time: Duration,
    /// Play only the backends, on port 0, for `--max-time`: answer every
    /// IPv4 TCP frame (another generator's too) and ARP for `--backends`.
    #[arg(long)]
    pub backends_only: bool,
}

/// What one phase of the traffic process measured (one stdout line).
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseResult {
    pub name: String,
    pub secs: f64,
    /// Offered rate (pps), 0 for flat out.
    pub rate: u64,
    /// Frames that left port 0.
    pub sent: u64,
    /// Frames port 0's TX ring did not take (not sent, not loss).
    pub tx_full: u64,
    /// Frames that reached the backends.
    pub fwd: u64,
    /// Answers that came back to the clients.
    pub rev: u64,
    /// Answers port 1's TX ring did not take.
    pub reflect_full: u64,
    /// Round trip p50, p99, p99.9 (µs).
    pub rtt_us: [f64; 3],
    /// Client to backend p50, p99, p99.9 (µs).
    pub one_way_us: [f64; 3],
}

impl PhaseResult {
    pub fn to_line(&self) -> String {
        format!(
            "phase {} secs={:.4} rate={} sent={} tx_full={} fwd={} rev={} reflect_full={} rtt_us={:.1}/{:.1}/{:.1} one_way_us={:.1}/{:.1}/{:.1}",
            self.name, self.secs, self.rate, self.sent, self.tx_full, self.fwd, self.rev, self.reflect_full,
            self.rtt_us[0], self.rtt_us[1], self.rtt_us[2],
            self.one_way_us[0], self.one_way_us[1], self.one_way_us[2]
        )
    }

    pub fn from_line(line: &str) -> Option<PhaseResult> {
        let mut it = line.strip_prefix("phase ")?.split_whitespace();
        let name = it.next()?.to_string();
        let mut r = PhaseResult {
            name,
            secs: 0.0,
            rate: 0,
            sent: 0,
            tx_full: 0,
            fwd: 0,
            rev: 0,
            reflect_full: 0,
            rtt_us: [0.0; 3],
            one_way_us: [0.0; 3],
        };
        let triple = |v: &str| -> Option<[f64; 3]> {
            let mut p = v.split('/').map(str::parse::<f64>);
            Some([p.next()?.ok()?, p.next()?.ok()?, p.next()?.ok()?])
        };
        for kv in it {
            let (k, v) = kv.split_once('=')?;
            match k {
                "secs" => r.secs = v.parse().ok()?,
                "rate" => r.rate = v.parse().ok()?,
                "sent" => r.sent = v.parse().ok()?,
                "tx_full" => r.tx_full = v.parse().ok()?,
                "fwd" => r.fwd = v.parse().ok()?,
                "rev" => r.rev = v.parse().ok()?,
                "reflect_full" => r.reflect_full = v.parse().ok()?,
                "rtt_us" => r.rtt_us = triple(v)?,
                "one_way_us" => r.one_way_us = triple(v)?,
                _ => {}
            }
        }
        Some(r)
    }

    /// Frames through the device per second, both directions.
    pub fn both_pps(&self) -> f64 {
        (self.fwd + self.rev) as f64 / self.secs.max(1e-9)
    }

    /// Established loss over the round trip (0..1).
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        self.sent.saturating_sub(self.rev) as f64 / self.sent as f64
    }
}

/// The device under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dut {
    Lbd,
    Testpmd,
}

impl Dut {
    fn name(self) -> &'static str {
        match self {
            Dut::Lbd => "lbd",
            Dut::Testpmd => "testpmd",
        }
    }
}

/// lbd's counters after a run (`lbctl stats --json`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbdCounters {
    pub workers: usize,
    pub rx: u64,
    pub forwarded: u64,
    pub sessions_created: u64,
    pub handoff_out: u64,
    pub denied: u64,
    pub drops: Vec<(String, u64)>,
}

impl LbdCounters {
    fn from_json(v: &serde_json::Value) -> LbdCounters {
        let mut c = LbdCounters::default();
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        if let Some(ws) = v["workers"].as_array() {
            c.workers = ws.len();
            for w in ws {
                c.rx += n(&w["rx"]);
                c.forwarded += n(&w["forwarded"]);
                c.sessions_created += n(&w["sessions_created"]);
                c.handoff_out += n(&w["handoff_out"]);
            }
        }
        if let Some(d) = v["drops"].as_object() {
            for (k, v) in d {
                let v = n(v);
                if v > 0 {
                    c.drops.push((k.clone(), v));
                }
            }
        }
        c.denied = n(&v["drops"]["security_group"]);
        c
    }

    /// One line, `key=value`, for logs and tests.
    pub fn to_line(&self) -> String {
        let mut s = format!(
            "workers={} rx={} forwarded={} sessions_created={} handoff_out={} security_group={}",
            self.workers,
            self.rx,
            self.forwarded,
            self.sessions_created,
            self.handoff_out,
            self.denied
        );
        for (k, v) in &self.drops {
            if k != "security_group" {
                let _ = write!(s, " drop.{k}={v}");
            }
        }
        s
    }
}

/// One run of a device with a worker count.
#[derive(Debug, Clone)]
pub struct DutRun {
    pub dut: Dut,
    pub workers: u16,
    pub phases: Vec<PhaseResult>,
    pub warmup: String,
    pub lbd: Option<LbdCounters>,
}

impl DutRun {
    pub fn phase(&self, name: &str) -> Option<&PhaseResult> {
        self.phases.iter().find(|p| p.name == name)
    }

    /// Established Mpps per worker, both directions.
    pub fn est_mpps_per_worker(&self) -> Option<f64> {
        self.phase("est")
            .map(|p| p.both_pps() / 1e6 / f64::from(self.workers.max(1)))
    }
}

/// A child process killed (its whole process group) and reaped on drop.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> Result<Proc> {
        use std::os::unix::process::CommandExt as _;
        let child = cmd
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Proc {
            name: name.to_string(),
            child,
        })
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).unwrap_or(0);
        if pid > 0 {
            // SAFETY: kill has no memory-safety preconditions; the group
            // is the child's own (process_group(0)), not yet reaped.
            unsafe { libc::kill(-pid, sig) };
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    fn stop(&mut self, grace: Duration) {
        if !self.alive() {
            return;
        }
        self.signal(libc::SIGTERM);
        let by = Instant::now() + grace;
        while Instant::now() < by {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// Waits for exit until `by`; kills it then. Returns its stdout.
    fn output_by(mut self, by: Instant) -> Result<String> {
        let mut out = self.child.stdout.take();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(o) = out.as_mut() {
                let _ = o.read_to_string(&mut s);
            }
            s
        });
        let mut status = None;
        while Instant::now() < by {
            if let Ok(Some(s)) = self.child.try_wait() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if status.is_none() {
            self.stop(Duration::from_millis(500));
        }
        let text = reader.join().unwrap_or_default();
        match status {
            Some(s) if s.success() => Ok(text),
            Some(s) => bail!("{} failed ({s}):\n{text}", self.name),
            None => bail!("{} did not finish in time; killed:\n{text}", self.name),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// The working directory (sockets, configuration, logs) and the EAL
/// runtime directories of the run's processes, removed on drop.
struct Scratch {
    dir: PathBuf,
    prefixes: Vec<String>,
    keep: bool,
}

impl Scratch {
    fn new(keep: bool) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("lb-dpbench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch {
            dir,
            prefixes: Vec::new(),
            keep,
        })
    }

    /// A fresh EAL file prefix, removed with the scratch.
    fn prefix(&mut self, what: &str) -> String {
        let p = format!("lbdpb{}{what}{}", std::process::id(), self.prefixes.len());
        self.prefixes.push(p.clone());
        p
    }

    fn clean_run(&self) {
        for p in &self.prefixes {
            let _ = std::fs::remove_dir_all(Path::new("/var/run/dpdk").join(p));
        }
        for s in ["ext.sock", "int.sock", "lbd.sock"] {
            let _ = std::fs::remove_file(self.dir.join(s));
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.clean_run();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn memif(n: u16, role: &str, socket: &Path, mac: [u8; 6]) -> String {
    format!(
        "--vdev=net_memif{n},role={role},id=0,socket={},socket-abstract=no,mac={}",
        socket.display(),
        mac_str(mac)
    )
}

/// The configuration of `lbd` for the benchmark: the seed scenario's
/// load balancer (VIP 198.18.0.10, port 80 allowed, port 81 denied by its
/// security group, two backends, FULLNAT from 198.19.1.190-253) on two memif
/// ports, `idle = "busy"`, health checks off (the backends are played by
/// the traffic process), SYN proxy off (it measures forwarding). memif has
/// no RSS: with several workers, the traffic process spreads the frames
/// over the queues as a NIC would (`dpdk_rss = "software"`).
pub fn lbd_config(
    workers: u16,
    eal: &[String],
    cores: Option<&[u16]>,
    max_sessions: usize,
) -> String {
    let eal = eal
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let cores = cores.map_or(String::new(), |c| {
        format!(
            "cores = [{}]\n",
            c.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
        )
    });
    // 64 local addresses: FULLNAT takes a local port per session and
    // backend, and 2 s of new connections at millions a second need more
    // than one address's 64 K ports.
    let locals = (190..254)
        .map(|i| format!("\"198.19.1.{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"[platform]
backend_sg_policy = "bypass"

[dataplane]
io = "dpdk"
workers = {workers}
{cores}idle = "busy"
max_sessions = {max_sessions}
eal_args = [{eal}]

[[port]]
name = "ext"
dpdk_port = 0
dpdk_rss = "software"
addresses = ["198.18.0.1/24"]

[[port]]
name = "int"
dpdk_port = 1
dpdk_rss = "software"
addresses = ["198.19.1.1/24"]

[[security_group]]
id = "sg-web"
type = "basic"
internal_access = "accept"

[[security_group]]
id = "sg-alb"
type = "basic"

[[security_group.rule]]
direction = "ingress"
action = "allow"
priority = 1
protocol = "tcp"
port_range = "80/80"
source = "0.0.0.0/0"

[[security_group.rule]]
direction = "ingress"
action = "deny"
priority = 1
protocol = "tcp"
port_range = "81/81"
source = "0.0.0.0/0"

[[subnet]]
id = "vsw-be"
cidr = "198.19.1.0/24"

[[instance]]
id = "ecs01"
subnet = "vsw-be"
addresses = ["198.19.1.11"]
security_groups = ["sg-web"]

[[instance]]
id = "ecs02"
subnet = "vsw-be"
addresses = ["198.19.1.12"]
security_groups = ["sg-web"]

[[server_group]]
id = "sgp-web"
scheduler = "wrr"

[server_group.health_check]
enabled = false

[[server_group.server]]
instance = "ecs01"
port = 80
weight = 100

[[server_group.server]]
instance = "ecs02"
port = 80
weight = 100

[[load_balancer]]
id = "alb-1"
vips = ["198.18.0.10"]
security_groups = ["sg-alb"]
local_addresses = [{locals}]

[[load_balancer.listener]]
protocol = "http"
port = 80
server_group = "sgp-web"
syn_proxy = "off"

[[load_balancer.listener]]
protocol = "http"
port = 81
server_group = "sgp-web"
syn_proxy = "off"
"#
    )
}

fn exe_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this binary")?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// Whether `prog` can be run (a path, or a name on PATH).
fn runnable(prog: &Path) -> bool {
    if prog.components().count() > 1 {
        return prog.is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(prog).is_file()))
}

/// What `bench dataplane` needs and does not find, if anything.
pub fn missing(a: &DataplaneArgs) -> Option<String> {
    if !cfg!(feature = "dpdk") {
        return Some(
            "bench was built without DPDK: cargo build --release -p lb-bench --features dpdk"
                .into(),
        );
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (DPDK's runtime directory under /var/run/dpdk)".into());
    }
    let (lbd, lbctl) = binaries(a).ok()?;
    for (p, hint) in [
        (
            &lbd,
            "cargo build --release -p lb-dataplane --features dpdk --bins",
        ),
        (
            &lbctl,
            "cargo build --release -p lb-dataplane --features dpdk --bins",
        ),
    ] {
        if !p.is_file() {
            return Some(format!("{} is missing: {hint}", p.display()));
        }
    }
    if !a.no_reference && !runnable(&a.testpmd) {
        return Some(format!(
            "{} is missing: apt-get install dpdk-dev (or --no-reference)",
            a.testpmd.display()
        ));
    }
    None
}

fn binaries(a: &DataplaneArgs) -> Result<(PathBuf, PathBuf)> {
    let dir = exe_dir()?;
    Ok((
        a.lbd.clone().unwrap_or_else(|| dir.join("lbd")),
        a.lbctl.clone().unwrap_or_else(|| dir.join("lbctl")),
    ))
}

/// Waits until `paths` exist, while `p` lives, until `by`.
fn wait_for(paths: &[PathBuf], p: &mut Proc, by: Instant, log: &Path) -> Result<()> {
    while !paths.iter().all(|s| s.exists()) {
        if !p.alive() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            bail!(
                "{} exited before creating its memif sockets:\n{log}",
                p.name
            );
        }
        if Instant::now() > by {
            bail!("{} did not create its memif sockets in time", p.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `lbctl stats --json` of the lbd behind `sock`.
fn lbd_counters(a: &DataplaneArgs, sock: &Path) -> Result<LbdCounters> {
    let (_, lbctl) = binaries(a)?;
    let o = Command::new(lbctl)
        .args(["stats", "--json", "--control"])
        .arg(sock)
        .output()
        .context("running lbctl stats")?;
    if !o.status.success() {
        bail!("lbctl stats failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).context("parsing lbctl stats --json")?;
    Ok(LbdCounters::from_json(&v))
}

/// Runs `dut` with `workers` and the traffic process against it.
fn run_dut(
    a: &DataplaneArgs,
    scratch: &mut Scratch,
    dut: Dut,
    workers: u16,
    raw: &mut Vec<String>,
) -> Result<DutRun> {
    let deadline = Instant::now() + a.max_time;
    scratch.clean_run();
    let dir = scratch.dir.clone();
    let (ext, int) = (dir.join("ext.sock"), dir.join("int.sock"));
    let log = dir.join(format!("{}-w{workers}.log", dut.name()));
    let logf = std::fs::File::create(&log).context("creating the device's log")?;
    let dut_prefix = scratch.prefix(&dut.name()[..1]);
    let other_cpu = if a.gen_cpu == 0 { 1 } else { 0 };
    let mut queues = workers;
    let mut proc = match dut {
        Dut::Lbd => {
            let (lbd, _) = binaries(a)?;
            let eal = lbd_eal(&dir, &dut_prefix);
            let cores = (workers == 1).then_some([other_cpu]);
            let conf = dir.join(format!("lbd-w{workers}.toml"));
            std::fs::write(
                &conf,
                lbd_config(
                    workers,
                    &eal,
                    cores.as_ref().map(|c| &c[..]),
                    a.max_sessions,
                ),
            )
            .context("writing lbd's configuration")?;
            Proc::spawn(
                "lbd",
                Command::new(lbd)
                    .arg("--config")
                    .arg(&conf)
                    .arg("--control")
                    .arg(dir.join("lbd.sock"))
                    .stdin(Stdio::null())
                    .stdout(logf.try_clone()?)
                    .stderr(logf),
            )?
        }
        Dut::Testpmd => {
            // Main lcore on the traffic process's CPU (it sleeps), the
            // forwarding lcores on the other CPU first.
            let lcores = match workers {
                1 => format!("0@{},1@{other_cpu}", a.gen_cpu),
                n => {
                    let mut l = format!("0@{}", a.gen_cpu);
                    for i in 1..=n {
                        let cpu = if i % 2 == 1 { other_cpu } else { a.gen_cpu };
                        let _ = write!(l, ",{i}@{cpu}");
                    }
                    l
                }
            };
            let n = workers.to_string();
            Proc::spawn(
                "dpdk-testpmd",
                Command::new(&a.testpmd)
                    .args(["--lcores", &lcores, "--main-lcore", "0"])
                    .args(["--no-huge", "-m", "1024", "--no-pci", "--no-telemetry"])
                    .args(["--file-prefix", &dut_prefix])
                    .arg(memif(0, "server", &ext, LBD_EXT_MAC))
                    .arg(memif(1, "server", &int, LBD_INT_MAC))
                    .args(["--", "--forward-mode=io", "--no-mlockall"])
                    .args(["--nb-cores", &n, "--rxq", &n, "--txq", &n])
                    .args(["--total-num-mbufs=32768", "--stats-period", "1"])
                    .stdin(Stdio::null())
                    .stdout(logf.try_clone()?)
                    .stderr(logf),
            )?
        }
    };
    wait_for(
        &[ext.clone(), int.clone()],
        &mut proc,
        Instant::now() + Duration::from_secs(20),
        &log,
    )?;
    if dut == Dut::Lbd {
        // A port with fewer queues gives lbd fewer workers:
        // ask lbd how many run once its control socket is up.
        let sock = dir.join("lbd.sock");
        wait_for(
            std::slice::from_ref(&sock),
            &mut proc,
            Instant::now() + Duration::from_secs(20),
            &log,
        )?;
        // The socket file comes a moment before lbd answers on it.
        let by = Instant::now() + Duration::from_secs(10);
        let c = loop {
            match lbd_counters(a, &sock) {
                Ok(c) => break c,
                Err(e) if Instant::now() > by || !proc.alive() => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        queues = u16::try_from(c.workers).unwrap_or(1).clamp(1, workers);
    }
    let gen_prefix = scratch.prefix("g");
    let eal = format!(
        "--no-huge --no-pci --no-shconf --no-telemetry -m 1024 -l {} --file-prefix {gen_prefix} {} {}",
        a.gen_cpu,
        memif(0, "client", &ext, GEN_EXT_MAC),
        memif(1, "client", &int, GEN_INT_MAC)
    );
    let phases: Vec<String> = match dut {
        Dut::Lbd => a.phases.clone(),
        Dut::Testpmd => a
            .phases
            .iter()
            .filter(|p| matches!(p.as_str(), "est" | "lat"))
            .cloned()
            .collect(),
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    let traffic = Proc::spawn(
        "bench dataplane-traffic",
        Command::new(std::env::current_exe()?)
            .arg("dataplane-traffic")
            .arg("--eal")
            .arg(&eal)
            .arg("--queues")
            .arg(queues.to_string())
            .arg("--flows")
            .arg(a.flows.to_string())
            .arg("--duration")
            .arg(format!("{}ms", a.duration.as_millis()))
            .arg("--phases")
            .arg(phases.join(","))
            .arg("--max-time")
            .arg(format!(
                "{}ms",
                remaining
                    .saturating_sub(Duration::from_secs(5))
                    .as_millis()
                    .max(1)
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )?;
    let out = traffic.output_by(deadline)?;
    let lbd = if dut == Dut::Lbd {
        Some(lbd_counters(a, &dir.join("lbd.sock"))?)
    } else {
        None
    };
    proc.stop(Duration::from_secs(5));
    drop(proc);
    scratch.clean_run();
    let phases: Vec<PhaseResult> = out.lines().filter_map(PhaseResult::from_line).collect();
    let warmup = out
        .lines()
        .find(|l| l.starts_with("warm-up"))
        .unwrap_or("warm-up: ?")
        .to_string();
    for l in out.lines().filter(|l| l.starts_with("generator ports")) {
        eprintln!("  {} w{workers}: {l}", dut.name());
    }
    for l in out.lines().filter(|l| l.starts_with("phase ")) {
        raw.push(format!("raw {} w{workers} {l}", dut.name()));
    }
    Ok(DutRun {
        dut,
        workers: queues.max(1),
        phases,
        warmup,
        lbd,
    })
}

fn mpps(x: f64) -> String {
    format!("{:.3}", x / 1e6)
}

/// Prints the figures of one worker count.
fn print_workers(w: u16, reference: Option<&DutRun>, lbd: &DutRun) {
    println!("== {w} worker(s)");
    if lbd.workers != w {
        println!(
            "  lbd ran {} worker(s): its ports gave it {} queue(s)",
            lbd.workers, lbd.workers
        );
    }
    let per = |r: &DutRun| r.est_mpps_per_worker();
    for r in reference.into_iter().chain(std::iter::once(lbd)) {
        if let Some(p) = r.phase("est") {
            println!(
                "  {:<8} established, both directions: {} Mpps per worker ({} Mpps total; {} to the backends, {} back; offered {}, loss {:.3} %)   [{}]",
                r.dut.name(),
                per(r).map_or("-".into(), |x| format!("{x:.3}")),
                mpps(p.both_pps()),
                mpps(p.fwd as f64 / p.secs),
                mpps(p.rev as f64 / p.secs),
                mpps(p.sent as f64 / p.secs),
                p.loss() * 100.0,
                r.warmup
            );
        }
    }
    let lw = f64::from(lbd.workers.max(1));
    if let Some(p) = lbd.phase("new") {
        println!(
            "  lbd      new connections: {} M/s per worker (SYNs to a backend; {} M/s SYN-ACKs back; offered {} M/s)",
            mpps(p.fwd as f64 / p.secs / lw),
            mpps(p.rev as f64 / p.secs / lw),
            mpps(p.sent as f64 / p.secs)
        );
    }
    if let Some(p) = lbd.phase("deny") {
        println!(
            "  lbd      denied traffic dropped: {} Mpps per worker ({} of {} sent leaked)",
            mpps(p.sent.saturating_sub(p.fwd) as f64 / p.secs / lw),
            p.fwd,
            p.sent
        );
    }
    for r in reference.into_iter().chain(std::iter::once(lbd)) {
        if let Some(p) = r.phase("lat") {
            println!(
                "  {:<8} at {} Mpps (half of est): loss {:.4} %, round trip p50 {:.1} µs p99 {:.1} µs p99.9 {:.1} µs; one way p50 {:.1} p99 {:.1} p99.9 {:.1} µs",
                r.dut.name(),
                mpps(p.rate as f64),
                p.loss() * 100.0,
                p.rtt_us[0],
                p.rtt_us[1],
                p.rtt_us[2],
                p.one_way_us[0],
                p.one_way_us[1],
                p.one_way_us[2]
            );
        }
    }
    if let Some(c) = &lbd.lbd {
        println!("  lbd counters: {}", c.to_line());
    }
    // The targets, as figures (not assertions).
    if lbd.workers != w {
        return;
    }
    if let (Some(l), Some(t)) = (per(lbd), reference.and_then(per)) {
        println!(
            "  target established >= 0.8 of testpmd: {:.2} ({})",
            l / t,
            if l / t >= 0.8 { "met" } else { "not met" }
        );
    }
    if let Some(p) = lbd.phase("new") {
        let x = p.fwd as f64 / p.secs / lw;
        println!(
            "  target >= 1 M new connections/s per worker: {} ({})",
            mpps(x),
            if x >= 1e6 { "met" } else { "not met" }
        );
    }
    if let Some(p) = lbd.phase("lat") {
        let ok = p.sent == p.rev && p.rtt_us[1] < 50.0;
        println!(
            "  target zero loss and p99 < 50 µs at half rate: lost {}, p99 {:.1} µs round trip ({})",
            p.sent.saturating_sub(p.rev),
            p.rtt_us[1],
            if ok { "met" } else { "not met" }
        );
    }
}

/// The `ratio lbd/testpmd` line.
pub fn ratio_line(pairs: &[(u16, Option<f64>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .map(|(w, r)| format!("w{w}={}", r.map_or("n/a".into(), |r| format!("{r:.2}"))))
        .collect();
    format!("ratio lbd/testpmd: {}", parts.join(" "))
}

/// The EAL arguments of lbd on memif server ports in `dir`.
fn lbd_eal(dir: &Path, prefix: &str) -> Vec<String> {
    [
        "--no-huge",
        "--no-pci",
        "--no-shconf",
        "--no-telemetry",
        "-m",
        "512",
        "-l",
        "0",
        "--file-prefix",
        prefix,
        &memif(0, "server", &dir.join("ext.sock"), LBD_EXT_MAC),
        &memif(1, "server", &dir.join("int.sock"), LBD_INT_MAC),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// [`run_dut`], once more if nothing went through the device (a memif
/// link that connected but never passed a frame has been seen).
fn run_dut_twice(
    a: &DataplaneArgs,
    scratch: &mut Scratch,
    dut: Dut,
    workers: u16,
    raw: &mut Vec<String>,
) -> Result<DutRun> {
    let mut first = Vec::new();
    let r = run_dut(a, scratch, dut, workers, &mut first)?;
    if r.phases.iter().any(|p| p.rev > 0) {
        raw.extend(first);
        return Ok(r);
    }
    eprintln!(
        "  {} w{workers}: nothing came back through the device ({}); once more",
        dut.name(),
        r.warmup
    );
    run_dut(a, scratch, dut, workers, raw)
}

/// `bench dataplane`.
pub fn main(a: &DataplaneArgs) -> Result<()> {
    if let Some(dir) = &a.print_config {
        let name = dir
            .file_name()
            .map_or_else(|| "x".into(), |n| n.to_string_lossy().into_owned());
        let w = a.workers.first().copied().unwrap_or(1);
        print!(
            "{}",
            lbd_config(
                w,
                &lbd_eal(dir, &format!("lbdpb-{name}")),
                None,
                a.max_sessions,
            )
        );
        return Ok(());
    }
    if let Some(why) = missing(a) {
        bail!("bench dataplane: {why}");
    }
    if a.workers.is_empty() || a.workers.iter().any(|&w| w == 0 || w > 8) {
        bail!("--workers takes counts between 1 and 8");
    }
    let mut scratch = Scratch::new(a.keep)?;
    println!(
        "bench dataplane: 64-byte IPv4 TCP frames over net_memif (--no-huge), {} established flows, {} s per phase, traffic process on CPU {}",
        a.flows,
        a.duration.as_secs_f64(),
        a.gen_cpu
    );
    let mut ratios = Vec::new();
    let mut raw = Vec::new();
    for &w in &a.workers {
        let reference = if a.no_reference {
            None
        } else {
            Some(run_dut_twice(a, &mut scratch, Dut::Testpmd, w, &mut raw).context("testpmd run")?)
        };
        let lbd = run_dut_twice(a, &mut scratch, Dut::Lbd, w, &mut raw).context("lbd run")?;
        print_workers(w, reference.as_ref(), &lbd);
        let ratio = match (
            lbd.est_mpps_per_worker(),
            reference.as_ref().and_then(DutRun::est_mpps_per_worker),
        ) {
            // Per worker of what ran: lbd with fewer workers than asked
            // is not the w-worker figure.
            (Some(l), Some(t)) if t > 0.0 && lbd.workers == w => Some(l / t),
            _ => None,
        };
        ratios.push((w, ratio));
    }
    for l in &raw {
        println!("{l}");
    }
    if a.keep {
        println!("work directory kept: {}", scratch.dir.display());
    }
    println!("{}", ratio_line(&ratios));
    Ok(())
}

/// `bench dataplane-traffic`.
pub fn traffic_main(a: &TrafficArgs) -> Result<()> {
    #[cfg(feature = "dpdk")]
    {
        traffic::run(a)
    }
    #[cfg(not(feature = "dpdk"))]
    {
        let _ = a;
        bail!("bench was built without DPDK: cargo build --release -p lb-bench --features dpdk")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_lines_round_trip() {
        let r = PhaseResult {
            name: "est".into(),
            secs: 2.0,
            rate: 0,
            sent: 10,
            tx_full: 1,
            fwd: 9,
            rev: 8,
            reflect_full: 0,
            rtt_us: [1.5, 2.5, 3.5],
            one_way_us: [0.5, 1.0, 2.0],
        };
        assert_eq!(PhaseResult::from_line(&r.to_line()), Some(r.clone()));
        assert!((r.both_pps() - 8.5).abs() < 1e-9);
        assert!((r.loss() - 0.2).abs() < 1e-9);
        assert_eq!(PhaseResult::from_line("warm-up: 1 of 2"), None);
    }

    #[test]
    fn ratio_line_has_both_counts() {
        assert_eq!(
            ratio_line(&[(1, Some(0.456)), (2, None)]),
            "ratio lbd/testpmd: w1=0.46 w2=n/a"
        );
    }

    #[test]
    fn lbd_config_compiles() {
        let eal = vec![
            "--no-huge".to_string(),
            "--vdev=net_memif0,role=server".into(),
        ];
        let text = lbd_config(2, &eal, Some(&[1]), 4 << 20);
        // One core for two workers is refused; none is accepted.
        assert!(lb_config::parse_str(&text, "bench.toml").is_err());
        let cfg =
            lb_config::parse_str(&lbd_config(2, &eal, None, 4 << 20), "bench.toml").expect("valid");
        assert_eq!(cfg.dataplane.workers, 2);
        assert_eq!(cfg.dataplane.eal_args, eal);
    }
}
