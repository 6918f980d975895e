//! `lbd`: the running data plane. Owns the ports, runs the poll-mode
//! workers and the health checker, reloads the configuration atomically.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use crossbeam::channel::{bounded, Sender};
use crossbeam::queue::ArrayQueue;
use lb_core::model::{IdlePolicy, IoBackend};
use lb_core::pipeline::{frame_owner_on, Frame, Reason, RxInfo, Snapshot, Stats, Verdict, Worker};

use crate::health::HealthTable;
use crate::io::afpacket::{AfPacket, AfPacketOpts};
use crate::io::raw::RawSender;
use crate::io::{IoStats, PacketIo, RxMeta};
use crate::neigh::{Neighbors, REFRESH};
#[cfg(feature = "dpdk")]
use lb_core::model::Config;

/// Frames handled per port per poll.
pub const BURST: usize = 32;

/// Frames handed between two workers that can wait in one queue.
const HANDOFF_DEPTH: usize = 1024;

/// Frames waiting for a neighbour to answer, per worker.
const PENDING_MAX: usize = 256;

/// How long a frame waits for its next hop to be resolved.
const PENDING_WAIT: Duration = Duration::from_secs(1);

/// ICMP errors (time exceeded, fragmentation needed, packet too big) one
/// worker sends per second at most, after a burst of [`ICMP_ERROR_BURST`]
/// (Linux: 1000 a second for the host, bursts of 50).
const ICMP_ERRORS_PER_SEC: u64 = 200;
const ICMP_ERROR_BURST: u64 = 50;

/// How often the ports' MTUs are read again.
const MTU_POLL: Duration = Duration::from_secs(1);

/// The configuration the workers run and the health of its servers,
/// published together.
#[derive(Debug)]
pub struct Runtime {
    pub snap: Arc<Snapshot>,
    pub health: Arc<HealthTable>,
}

/// A frame passed to the worker that owns its session.
#[derive(Debug)]
pub struct Handoff {
    pub frame: Vec<u8>,
    pub meta: RxMeta,
    pub port: u32,
}

/// What a worker publishes for `lbctl stats`.
#[derive(Debug, Clone, Default)]
pub struct WorkerReport {
    pub ports: Vec<IoStats>,
    pub core: Option<Stats>,
    pub sessions: usize,
    pub handoff_out: u64,
    pub handoff_dropped: u64,
    pub neighbor_unresolved: u64,
    /// The configuration generation the counters refer to.
    pub generation: u64,
    /// ICMP errors sent back for dropped packets, and those the rate
    /// limit held back.
    pub icmp_errors_sent: u64,
    pub icmp_errors_rate_limited: u64,
    /// Half-open TCP sessions in the worker's table.
    pub half_open: usize,
    /// An "auto" SYN proxy is engaged on some listener.
    pub syn_proxy_engaged: bool,
}

#[derive(Debug)]
pub struct WorkerSlot {
    pub handoff: ArrayQueue<Handoff>,
    pub report: Mutex<WorkerReport>,
}

/// State shared by every thread of the daemon.
#[derive(Debug)]
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub stop: AtomicBool,
    pub neigh: Arc<Neighbors>,
    pub config_path: PathBuf,
    reload_lock: Mutex<()>,
    pub workers: Vec<WorkerSlot>,
    pub health_tx: Sender<Vec<u8>>,
    pub started: Instant,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Interface names of the ports, by index (DPDK: the device names,
    /// e.g. `0000:03:00.0` or `net_af_packet0`).
    pub port_names: Vec<String>,
    /// The DPDK ports, by index, for their link state; empty with AF_PACKET.
    #[cfg(feature = "dpdk")]
    pub dpdk_ports: Vec<crate::io::dpdk::DpdkPort>,
    /// Each port's MTU as last read from its link (0: unknown), which the
    /// workers hold forwarded packets to.
    pub port_mtu: Vec<AtomicU32>,
    /// The largest MTU each port can send at (AF_PACKET sizes its send
    /// buffers at start); `u32::MAX` where there is no such limit.
    port_mtu_cap: Vec<u32>,
    /// How each port's RSS spreads frames over the workers (`None`: no
    /// RSS, as with AF_PACKET): frame ownership and FULLNAT local ports
    /// follow it, so that no frame needs a handoff.
    pub port_rss: Vec<Option<Arc<lb_core::nat::rss::RssSteering>>>,
}

impl Shared {
    /// Re-reads the configuration file. A valid one replaces the running
    /// configuration in one step (sessions carry on and are checked against
    /// the new rules on their next packet); an invalid one changes nothing.
    pub fn reload(self: &Arc<Self>) -> std::result::Result<u64, String> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let cfg = match lb_config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!("reload rejected, the running configuration stays:\n{e}");
                return Err(e.to_string());
            }
        };
        let old = self.runtime.load_full();
        if let Err(e) = compatible(&old.snap.cfg, &cfg) {
            self.reload_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!("reload rejected, the running configuration stays: {e}");
            return Err(e);
        }
        let snap = Arc::new(Snapshot::compile(cfg, old.snap.generation + 1));
        let health = Arc::new(HealthTable::new(&snap, Some(&old.health)));
        let generation = snap.generation;
        self.runtime.store(Arc::new(Runtime { snap, health }));
        self.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(generation, "configuration reloaded");
        refine_in_background(self);
        Ok(generation)
    }

    /// The link state of port `pi` ("up 10000 Mb/s full-duplex", "down"),
    /// where the backend knows it (DPDK ports); `None` for AF_PACKET.
    #[cfg_attr(not(feature = "dpdk"), allow(unused_variables))]
    pub fn link_status(&self, pi: usize) -> Option<String> {
        #[cfg(feature = "dpdk")]
        if let Some(port) = self.dpdk_ports.get(pi) {
            return Some(match port.link_status() {
                Ok(link) => link.to_string(),
                Err(e) => format!("unknown ({e})"),
            });
        }
        None
    }

    /// The MTU of port `pi` as its link reports it now: the interface's
    /// (AF_PACKET, from sysfs) or the device's (DPDK), at most what the
    /// port can send. `None` if it cannot be read.
    fn read_port_mtu(&self, pi: usize) -> Option<u32> {
        #[cfg(feature = "dpdk")]
        if let Some(port) = self.dpdk_ports.get(pi) {
            return port.mtu().ok().map(u32::from);
        }
        let name = self.port_names.get(pi)?;
        let text = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu")).ok()?;
        let mtu: u32 = text.trim().parse().ok()?;
        let cap = self.port_mtu_cap.get(pi).copied().unwrap_or(u32::MAX);
        if mtu > cap {
            tracing::debug!(
                port = name,
                mtu,
                cap,
                "MTU above what the port was opened for"
            );
        }
        Some(mtu.min(cap))
    }

    /// Reads port `pi`'s MTU again and publishes it to the workers;
    /// logs a change.
    fn update_port_mtu(&self, pi: usize) {
        let Some(mtu) = self.read_port_mtu(pi) else {
            return;
        };
        let Some(slot) = self.port_mtu.get(pi) else {
            return;
        };
        let old = slot.swap(mtu, Ordering::Relaxed);
        if old != mtu {
            let port = self.port_names.get(pi).map_or("?", String::as_str);
            if old == 0 {
                tracing::debug!(port, mtu, "port MTU");
            } else {
                tracing::info!(port, mtu, was = old, "port MTU changed");
            }
        }
    }

    /// Nanoseconds since start: the pipeline's clock.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// What a reload cannot change without a restart: the ports and workers.
fn compatible(
    old: &lb_core::model::Config,
    new: &lb_core::model::Config,
) -> std::result::Result<(), String> {
    let ports = |c: &lb_core::model::Config| {
        c.ports
            .iter()
            .map(|p| (p.name.clone(), p.interface.clone(), p.dpdk_port))
            .collect::<Vec<_>>()
    };
    if ports(old) != ports(new) {
        return Err("ports changed: restart lbd to add, remove or rename ports".into());
    }
    if old.dataplane != new.dataplane {
        return Err("[dataplane] changed: restart lbd to apply it".into());
    }
    let limits =
        |c: &lb_core::model::Config| c.ports.iter().map(|p| p.max_neighbors).collect::<Vec<_>>();
    if limits(old) != limits(new) {
        return Err("[[port]] max_neighbors changed: restart lbd to apply it".into());
    }
    Ok(())
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    pub shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Daemon {
    /// Loads the configuration, opens the ports and starts the threads.
    pub fn start(config_path: &Path) -> Result<Daemon> {
        let cfg = lb_config::load(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let requested = usize::from(cfg.dataplane.workers.max(1));
        // Open every port before starting anything, so a bad interface
        // fails the start cleanly.
        let opened = match cfg.dataplane.io {
            IoBackend::AfPacket => open_af_packet(&cfg, requested)?,
            IoBackend::Dpdk => open_dpdk(&cfg, requested, config_path)?,
        };
        let OpenPorts {
            per_worker,
            senders,
            port_names,
            mtu_cap,
            #[cfg(feature = "dpdk")]
            eal,
            #[cfg(feature = "dpdk")]
            dpdk_ports,
        } = opened;
        let workers = per_worker.len();
        #[cfg(feature = "dpdk")]
        let port_rss = crate::io::dpdk::rss::steerings(&dpdk_ports, workers);
        #[cfg(not(feature = "dpdk"))]
        let port_rss = Vec::new();
        let snap = Arc::new(Snapshot::compile(cfg.clone(), 1));
        let health = Arc::new(HealthTable::new(&snap, None));
        let (health_tx, health_rx) = bounded(4096);
        let shared = Arc::new(Shared {
            runtime: ArcSwap::from_pointee(Runtime { snap, health }),
            stop: AtomicBool::new(false),
            neigh: Neighbors::new(
                &cfg.ports
                    .iter()
                    .map(|p| p.max_neighbors)
                    .collect::<Vec<_>>(),
            ),
            config_path: config_path.to_path_buf(),
            reload_lock: Mutex::new(()),
            workers: (0..workers)
                .map(|_| WorkerSlot {
                    handoff: ArrayQueue::new(HANDOFF_DEPTH),
                    report: Mutex::new(WorkerReport::default()),
                })
                .collect(),
            health_tx,
            started: Instant::now(),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            port_names: port_names.clone(),
            #[cfg(feature = "dpdk")]
            dpdk_ports,
            port_mtu: mtu_cap.iter().map(|_| AtomicU32::new(0)).collect(),
            port_mtu_cap: mtu_cap,
            port_rss,
        });
        for pi in 0..shared.port_mtu.len() {
            shared.update_port_mtu(pi);
        }

        let mut threads = Vec::new();
        let cores = cfg.dataplane.cores.clone();
        let idle = cfg.dataplane.idle;
        let max_sessions = [cfg.dataplane.max_sessions, cfg.dataplane.max_sessions_v6];
        // Each worker maps its session table on its own core; `start`
        // returns (and lbd reports ready) once all of them have.
        let ready = Arc::new(std::sync::Barrier::new(per_worker.len() + 1));
        for (id, ports) in per_worker.into_iter().enumerate() {
            let shared = shared.clone();
            let ready = ready.clone();
            let core = cores.get(id).copied();
            #[cfg(feature = "dpdk")]
            let eal = eal.clone();
            let h = std::thread::Builder::new()
                .name(format!("lbd-worker-{id}"))
                .spawn(move || {
                    if let Some(core) = core {
                        pin_to_core(core);
                    }
                    // A DPDK worker is an EAL thread: an lcore id, and the
                    // mempool's per-lcore cache. Unregistered when it ends,
                    // after its queues (dropped with the loop) are gone.
                    #[cfg(feature = "dpdk")]
                    let _registration = eal.as_ref().and_then(|eal| {
                        eal.register_thread()
                            .map_err(|e| {
                                tracing::warn!("worker {id}: registering with DPDK EAL: {e}");
                            })
                            .ok()
                    });
                    let mut worker = WorkerLoop::new(id, shared, ports, idle, max_sessions);
                    // Map the session table before traffic, not page by page under it.
                    worker.core.prefault();
                    ready.wait();
                    worker.run();
                })
                .context("starting a worker thread")?;
            threads.push(h);
        }
        // Probes go out once the workers are there to receive the answers.
        ready.wait();
        {
            let shared = shared.clone();
            let h = std::thread::Builder::new()
                .name("lbd-health".into())
                .spawn(move || crate::health::run(shared, health_rx, senders))
                .context("starting the health checker")?;
            threads.push(h);
        }
        {
            let shared = shared.clone();
            let h = std::thread::Builder::new()
                .name("lbd-mtu".into())
                .spawn(move || watch_mtus(&shared))
                .context("starting the MTU watcher")?;
            threads.push(h);
        }
        #[cfg(feature = "dpdk")]
        if !shared.dpdk_ports.is_empty() {
            let shared = shared.clone();
            let h = std::thread::Builder::new()
                .name("lbd-link".into())
                .spawn(move || watch_links(&shared))
                .context("starting the link watcher")?;
            threads.push(h);
        }
        tracing::info!(workers, ports = ?port_names, "lbd running");
        refine_in_background(&shared);
        Ok(Daemon { shared, threads })
    }

    /// Asks every thread to stop and waits for them.
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Refines the classifiers of the running snapshot on a thread of its own
/// (`Snapshot::refine`): the workers classify with the staged tables from
/// the start, and with the final tables as each rule set gets them. The
/// thread gives up when a newer configuration replaces this one, or at
/// stop; the snapshot stays valid either way.
fn refine_in_background(shared: &Arc<Shared>) {
    let snap = shared.runtime.load().snap.clone();
    if !snap.rule_sets().any(|r| r.needs_refinement()) {
        return;
    }
    let weak = Arc::downgrade(shared);
    let spawned = std::thread::Builder::new()
        .name("lbd-refine".into())
        .spawn(move || {
            keep_off_worker_cores(&snap.cfg.dataplane.cores);
            let t = Instant::now();
            let generation = snap.generation;
            let mut refined = 0usize;
            for set in snap.rule_sets() {
                let current = weak.upgrade().is_some_and(|s| {
                    !s.stop.load(Ordering::Relaxed)
                        && s.runtime.load().snap.generation == generation
                });
                if !current {
                    tracing::debug!(generation, refined, "classifier refinement given up");
                    return;
                }
                refined += usize::from(set.refine());
            }
            tracing::info!(
                generation,
                rule_sets = refined,
                ms = t.elapsed().as_secs_f64() * 1e3,
                "classifiers refined"
            );
        });
    if let Err(e) = spawned {
        tracing::warn!("classifier refinement not started ({e}): the staged tables stay");
    }
}

/// Background work (the classifier refinement) stays off the workers'
/// pinned cores where other CPUs are allowed, and runs at a lower
/// priority (nice 10), so that it does not take a poll-mode worker's time.
fn keep_off_worker_cores(cores: &[u16]) {
    if let Some(mut set) = thread_affinity() {
        let mut left = 0;
        for cpu in 0..libc::CPU_SETSIZE as usize {
            // SAFETY: `cpu` is below CPU_SETSIZE, within `set`.
            let on = unsafe { libc::CPU_ISSET(cpu, &set) };
            if on && !cores.iter().any(|&c| usize::from(c) == cpu) {
                left += 1;
            }
        }
        if left > 0 {
            for &c in cores {
                if usize::from(c) < libc::CPU_SETSIZE as usize {
                    // SAFETY: `c` is below CPU_SETSIZE, within `set`.
                    unsafe { libc::CPU_CLR(usize::from(c), &mut set) };
                }
            }
            // SAFETY: `set` is a valid cpu_set_t and we pass its exact
            // size; 0 = this thread.
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        }
    }
    // SAFETY: gettid has no preconditions; setpriority on this thread's id
    // changes only its nice value (a failure leaves it as it was).
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

fn pin_to_core(core: u16) {
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes inside `set` for any core below CPU_SETSIZE, which
    // lb-config's limit on core numbers guarantees.
    unsafe { libc::CPU_SET(usize::from(core), &mut set) };
    // SAFETY: `set` is a valid cpu_set_t and we pass its exact size; 0 = this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        tracing::warn!(
            core,
            "could not pin worker: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// How a thread other than the workers (the health checker) puts a frame
/// on a port.
#[derive(Debug)]
pub enum PortSender {
    /// A send-only AF_PACKET socket on the port's interface.
    Raw(RawSender),
    /// Handed to worker 0, which sends it on its own queue of the port at
    /// its next flush: a DPDK TX queue belongs to one thread.
    #[cfg(feature = "dpdk")]
    Queued {
        frames: Arc<ArrayQueue<Vec<u8>>>,
        mac: [u8; 6],
    },
}

impl PortSender {
    /// The port's Ethernet address.
    pub fn mac(&self) -> [u8; 6] {
        match self {
            PortSender::Raw(s) => s.mac(),
            #[cfg(feature = "dpdk")]
            PortSender::Queued { mac, .. } => *mac,
        }
    }

    /// Sends (or queues for sending) one complete Ethernet frame.
    pub fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        match self {
            PortSender::Raw(s) => s.send(frame),
            #[cfg(feature = "dpdk")]
            PortSender::Queued { frames, .. } => frames.push(frame.to_vec()).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    "the port's send queue is full",
                )
            }),
        }
    }
}

/// The ports, opened: each worker's queues, the health checker's senders.
struct OpenPorts {
    /// One entry per worker, each with one queue per port (in port order).
    per_worker: Vec<Vec<Box<dyn PacketIo>>>,
    senders: Vec<PortSender>,
    port_names: Vec<String>,
    /// Per port, the largest MTU it can send at (`u32::MAX`: no limit).
    mtu_cap: Vec<u32>,
    /// The EAL, when the ports are DPDK's: workers register with it.
    #[cfg(feature = "dpdk")]
    eal: Option<crate::io::dpdk::Eal>,
    #[cfg(feature = "dpdk")]
    dpdk_ports: Vec<crate::io::dpdk::DpdkPort>,
}

/// AF_PACKET: one socket per worker and port (a fanout group per port when
/// there are several workers), and a send-only socket per port.
fn open_af_packet(cfg: &lb_core::model::Config, workers: usize) -> Result<OpenPorts> {
    let port_names: Vec<String> = cfg
        .ports
        .iter()
        .map(|p| {
            p.interface
                .clone()
                .with_context(|| format!("port {} has no interface", p.name))
        })
        .collect::<Result<_>>()?;
    let fanout_base = u16::try_from(std::process::id() & 0x7fff).unwrap_or(0);
    let mut per_worker: Vec<Vec<Box<dyn PacketIo>>> = Vec::new();
    let mut mtu_cap = vec![u32::MAX; port_names.len()];
    for _ in 0..workers {
        let mut ports: Vec<Box<dyn PacketIo>> = Vec::new();
        for (pi, name) in port_names.iter().enumerate() {
            let opts = AfPacketOpts {
                fanout: (workers > 1)
                    .then(|| fanout_base.wrapping_add(u16::try_from(pi).unwrap_or(0))),
                ..AfPacketOpts::default()
            };
            let io = AfPacket::open(name, &opts)
                .with_context(|| format!("opening AF_PACKET on {name}"))?;
            // Its send slots hold the MTU of the start, plus the Ethernet
            // header and one tag.
            let cap = io.max_tx_frame().saturating_sub(14 + 4);
            mtu_cap[pi] = mtu_cap[pi].min(u32::try_from(cap).unwrap_or(u32::MAX));
            ports.push(Box::new(io));
        }
        per_worker.push(ports);
    }
    let senders: Vec<PortSender> = port_names
        .iter()
        .map(|n| {
            RawSender::open(n)
                .map(PortSender::Raw)
                .with_context(|| format!("opening a send socket on {n}"))
        })
        .collect::<Result<_>>()?;
    Ok(OpenPorts {
        per_worker,
        senders,
        port_names,
        mtu_cap,
        #[cfg(feature = "dpdk")]
        eal: None,
        #[cfg(feature = "dpdk")]
        dpdk_ports: Vec::new(),
    })
}

#[cfg(not(feature = "dpdk"))]
fn open_dpdk(
    _cfg: &lb_core::model::Config,
    _workers: usize,
    config_path: &Path,
) -> Result<OpenPorts> {
    bail!(
        "{}: io = \"dpdk\" needs lbd built with the dpdk feature \
         (cargo build --release -p lb-dataplane --features dpdk)",
        config_path.display()
    )
}

/// Frames the health checker can queue for worker 0, per DPDK port.
#[cfg(feature = "dpdk")]
const INJECT_DEPTH: usize = 1024;

/// Per-lcore cache of the DPDK mempool.
#[cfg(feature = "dpdk")]
const POOL_CACHE: u32 = 256;

/// DPDK: EAL once, one mempool, each port by its `dpdk_port` id with one
/// queue pair per worker. A port with fewer queues (no RSS, as with most
/// virtual devices) lowers the number of workers for all.
#[cfg(feature = "dpdk")]
fn open_dpdk(cfg: &Config, requested: usize, config_path: &Path) -> Result<OpenPorts> {
    use crate::io::dpdk::{DpdkPort, DpdkPortOpts, Eal, Mempool};

    let affinity = thread_affinity();
    let eal = Eal::init(&cfg.dataplane.eal_args).with_context(|| {
        format!(
            "{}: initialising DPDK (check [dataplane] eal_args, hugepages: scripts/dpdk-setup.sh --check)",
            config_path.display()
        )
    })?;
    // EAL pins the calling thread to its main lcore, and every thread
    // spawned later would inherit that: give this one its CPUs back.
    // Workers with `cores` pin themselves.
    if let Some(set) = affinity {
        set_thread_affinity(&set);
    }
    let found = DpdkPort::count();
    let opts = DpdkPortOpts::default();
    let mut want = u16::try_from(requested).unwrap_or(u16::MAX);
    let n_mbufs = pool_size(cfg.ports.len(), want, &opts, requested);
    let pool = Mempool::new(
        "lbd_pool",
        n_mbufs,
        POOL_CACHE,
        Mempool::DEFAULT_DATA_ROOM,
        None,
    )
    .with_context(|| format!("creating a DPDK mempool of {n_mbufs} buffers"))?;
    let mut ports: Vec<DpdkPort> = Vec::new();
    for p in &cfg.ports {
        let id = p
            .dpdk_port
            .with_context(|| format!("port {} has no dpdk_port", p.name))?;
        let port = DpdkPort::open(id, want, &pool, &opts).with_context(|| {
            format!(
                "opening DPDK port {id} (port {}): EAL found {found} port(s)",
                p.name
            )
        })?;
        let link = port
            .link_status()
            .map_or_else(|e| format!("unknown ({e})"), |l| l.to_string());
        tracing::info!(
            port = %p.name,
            dpdk_port = id,
            device = port.name(),
            driver = port.driver(),
            mac = %fmt_mac(port.mac()),
            link = %link,
            queues = port.queue_count(),
            rss = port.rss(),
            "DPDK port open"
        );
        if port.queue_count() < want {
            // Every port needs a queue per worker: ask the next ports for
            // no more than this one has.
            want = port.queue_count();
        }
        ports.push(port);
    }
    let workers = usize::from(want);
    if workers < requested {
        tracing::warn!(
            "a DPDK port has only {workers} queue(s) (no RSS, or fewer queues): \
             running {workers} worker(s) instead of {requested}"
        );
    }
    if let Some(p) = ports
        .iter()
        .find(|p| usize::from(p.queue_count()) > workers)
    {
        // RSS would spread its flows over queues no worker polls.
        bail!(
            "DPDK port {} ({}) has {} queues but another port only {workers}: \
             set [dataplane] workers = {workers}",
            p.port_id(),
            p.name(),
            p.queue_count()
        );
    }
    let inject: Vec<Arc<ArrayQueue<Vec<u8>>>> = ports
        .iter()
        .map(|_| Arc::new(ArrayQueue::new(INJECT_DEPTH)))
        .collect();
    let mut per_worker: Vec<Vec<Box<dyn PacketIo>>> = Vec::new();
    for w in 0..workers {
        let mut ios: Vec<Box<dyn PacketIo>> = Vec::new();
        for (port, frames) in ports.iter().zip(&inject) {
            let q = u16::try_from(w % usize::from(port.queue_count())).unwrap_or(0);
            let queue = port
                .queue(q)
                .with_context(|| format!("queue {q} of DPDK port {}", port.port_id()))?;
            if w == 0 {
                ios.push(Box::new(WithInjected {
                    io: queue,
                    frames: frames.clone(),
                }));
            } else {
                ios.push(Box::new(queue));
            }
        }
        per_worker.push(ios);
    }
    let senders = ports
        .iter()
        .zip(&inject)
        .map(|(p, frames)| PortSender::Queued {
            frames: frames.clone(),
            mac: p.mac(),
        })
        .collect();
    let port_names = ports.iter().map(|p| p.name().to_string()).collect();
    Ok(OpenPorts {
        per_worker,
        senders,
        port_names,
        mtu_cap: vec![u32::MAX; ports.len()],
        eal: Some(eal),
        dpdk_ports: ports,
    })
}

/// Reads the ports' MTUs every [`MTU_POLL`] and publishes changes to the
/// workers (an MTU lowered on a link applies within a second), until
/// `shared.stop`.
fn watch_mtus(shared: &Shared) {
    let mut since = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if since.elapsed() < MTU_POLL {
            continue;
        }
        since = Instant::now();
        for pi in 0..shared.port_mtu.len() {
            shared.update_port_mtu(pi);
        }
    }
}

/// Logs every change of a DPDK port's link (a NIC usually reports "down"
/// for a moment after start, while it negotiates), until `shared.stop`.
#[cfg(feature = "dpdk")]
fn watch_links(shared: &Shared) {
    let names: Vec<String> = shared
        .runtime
        .load()
        .snap
        .cfg
        .ports
        .iter()
        .map(|p| p.name.clone())
        .collect();
    let mut last: Vec<Option<String>> = (0..shared.dpdk_ports.len())
        .map(|pi| shared.link_status(pi))
        .collect();
    let mut since = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if since.elapsed() < Duration::from_secs(1) {
            continue;
        }
        since = Instant::now();
        for (pi, prev) in last.iter_mut().enumerate() {
            let now = shared.link_status(pi);
            if now != *prev {
                let port = names.get(pi).map_or("?", String::as_str);
                let link = now.as_deref().unwrap_or("unknown");
                if link.starts_with("up") {
                    tracing::info!(port, link, "DPDK link changed");
                } else {
                    tracing::warn!(port, link, "DPDK link changed");
                }
                *prev = now;
            }
        }
    }
}

/// Buffers for every RX and TX descriptor of every queue, what the workers
/// hold in flight, the per-lcore caches and a margin; rounded up to a power
/// of two minus one, as DPDK prefers.
#[cfg(feature = "dpdk")]
fn pool_size(
    ports: usize,
    queues: u16,
    opts: &crate::io::dpdk::DpdkPortOpts,
    workers: usize,
) -> u32 {
    let rings =
        ports * usize::from(queues) * (usize::from(opts.rx_desc) + usize::from(opts.tx_desc));
    let in_flight =
        workers * (POOL_CACHE as usize + ports * (crate::io::dpdk::MAX_BURST + opts.tx_batch));
    let n = (rings + in_flight + 1024).next_power_of_two() - 1;
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(feature = "dpdk")]
fn fmt_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The calling thread's CPU set, if it can be read.
fn thread_affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t and we pass its exact size; 0 = this thread.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    (rc == 0).then_some(set)
}

#[cfg(feature = "dpdk")]
fn set_thread_affinity(set: &libc::cpu_set_t) {
    // SAFETY: `set` is a valid cpu_set_t and we pass its exact size; 0 = this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if rc != 0 {
        tracing::warn!(
            "could not restore the CPU affinity after EAL init: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Worker 0's queue of a DPDK port: also sends, at each flush, the frames
/// the health checker queued for the port.
#[cfg(feature = "dpdk")]
struct WithInjected {
    io: crate::io::dpdk::DpdkQueue,
    frames: Arc<ArrayQueue<Vec<u8>>>,
}

#[cfg(feature = "dpdk")]
impl PacketIo for WithInjected {
    fn recv_burst(&mut self, max: usize, f: &mut dyn FnMut(&mut [u8], RxMeta)) -> usize {
        self.io.recv_burst(max, f)
    }

    fn send(&mut self, frame: &[u8]) -> bool {
        self.io.send(frame)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Bounded, so a flood of probes cannot hold up the worker.
        for _ in 0..BURST {
            let Some(frame) = self.frames.pop() else {
                break;
            };
            self.io.send(&frame);
        }
        self.io.flush()
    }

    fn mac(&self) -> [u8; 6] {
        self.io.mac()
    }

    fn stats(&self) -> IoStats {
        self.io.stats()
    }

    fn poll_fd(&self) -> Option<std::os::fd::RawFd> {
        self.io.poll_fd()
    }
}

/// One frame waiting for its next hop.
#[derive(Debug)]
struct Pending {
    port: u32,
    next_hop: std::net::IpAddr,
    frame: Vec<u8>,
    since: Instant,
}

/// The SYN cookies' secret: drawn from getrandom once per process, the
/// same for every worker (a flow's SYN and ACK reach the same worker
/// anyway).
fn cookie_secret() -> [u8; 16] {
    static SECRET: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
    *SECRET.get_or_init(|| {
        let mut b = [0u8; 16];
        let mut got = 0;
        while got < b.len() {
            // SAFETY: the pointer and length describe the unfilled tail
            // of `b`, which lives across the call; getrandom writes at
            // most that many bytes.
            let n = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), b.len() - got, 0) };
            if n > 0 {
                got += n as usize;
            } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                // No kernel entropy interface: a per-process value from
                // the standard library's randomly seeded hasher.
                use std::hash::BuildHasher;
                let r = std::collections::hash_map::RandomState::new();
                b[..8].copy_from_slice(&r.hash_one(std::process::id()).to_le_bytes());
                b[8..].copy_from_slice(&r.hash_one(std::time::SystemTime::now()).to_le_bytes());
                break;
            }
        }
        b
    })
}

/// A poll-mode worker: its ports, its sessions, nothing shared on the
/// per-packet path but read-only snapshots.
struct WorkerLoop {
    id: usize,
    shared: Arc<Shared>,
    /// `None` only while that port is being read.
    ports: Vec<Option<Box<dyn PacketIo>>>,
    macs: Vec<[u8; 6]>,
    core: Worker,
    idle: IdlePolicy,
    pending: std::collections::VecDeque<Pending>,
    solicited: std::collections::HashMap<(u32, std::net::IpAddr), Instant>,
    report: WorkerReport,
    last_publish: Instant,
    /// The frames of the burst being processed, copied out of the RX
    /// queue so the whole burst goes through the pipeline at once (its
    /// session lookups overlap); buffers are reused across bursts.
    staged: Vec<(Vec<u8>, RxMeta, u32)>,
    /// Where a frame is retagged for its egress port's VLAN (reused).
    tx_scratch: Vec<u8>,
    icmp: IcmpErrors,
}

/// The ICMP errors a worker answers drops with (time exceeded,
/// fragmentation needed, packet too big): rate-limited by a token bucket,
/// built in one buffer reused from error to error.
struct IcmpErrors {
    tokens: u64,
    /// When the bucket last gained a token.
    refilled: Instant,
    buf: Vec<u8>,
    sent: u64,
    rate_limited: u64,
}

impl IcmpErrors {
    fn new(now: Instant) -> IcmpErrors {
        IcmpErrors {
            tokens: ICMP_ERROR_BURST,
            refilled: now,
            buf: Vec::with_capacity(1500),
            sent: 0,
            rate_limited: 0,
        }
    }

    /// Takes a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled);
        let gained =
            u64::try_from(elapsed.as_nanos() * u128::from(ICMP_ERRORS_PER_SEC) / 1_000_000_000)
                .unwrap_or(u64::MAX);
        if gained > 0 {
            self.tokens = self.tokens.saturating_add(gained).min(ICMP_ERROR_BURST);
            self.refilled = now;
        }
        if self.tokens == 0 {
            self.rate_limited += 1;
            return false;
        }
        self.tokens -= 1;
        true
    }

    /// Answers a frame dropped for `reason` on ingress port `port`, if the
    /// reason calls for an ICMP error (see `Reason::icmp_answer`): from the
    /// port's address of the sender's family, back to the neighbour the
    /// frame came from. The frame is as it arrived (the pipeline drops
    /// before it rewrites).
    #[allow(clippy::too_many_arguments)]
    fn answer(
        &mut self,
        reason: &Reason,
        frame: &[u8],
        port: u32,
        port_mac: [u8; 6],
        snap: &Snapshot,
        now: Instant,
        tx: &mut Tx<'_>,
    ) {
        if !matches!(reason, Reason::TtlExceeded | Reason::TooBig { .. }) {
            return;
        }
        let Ok(p) = lb_core::packet::parse(frame) else {
            return;
        };
        let Some(a) = reason.icmp_answer(&p) else {
            return;
        };
        let Some(src) = crate::health::port_address(snap, port, p.src) else {
            return;
        };
        let Some(to_mac) = frame.get(6..12).map(lb_core::packet::MacAddr::from_bytes) else {
            return;
        };
        if !self.take(now) {
            return;
        }
        let built = lb_core::packet::build_icmp_error_into(
            &mut self.buf,
            frame,
            &p,
            src,
            a.icmp_type,
            a.code,
            a.rest,
            lb_core::packet::MacAddr(port_mac),
            to_mac,
        );
        if built.is_ok() {
            tx.send(port, &self.buf);
            self.sent += 1;
        }
    }
}

impl WorkerLoop {
    fn new(
        id: usize,
        shared: Arc<Shared>,
        ports: Vec<Box<dyn PacketIo>>,
        idle: IdlePolicy,
        [max_sessions, max_sessions_v6]: [usize; 2],
    ) -> WorkerLoop {
        let n = u16::try_from(shared.workers.len()).unwrap_or(1);
        let macs = ports.iter().map(|p| p.mac()).collect();
        let mut core = Worker::new(
            u16::try_from(id).unwrap_or(0),
            n,
            max_sessions,
            max_sessions_v6,
        );
        core.set_cookie_secret(lb_core::synproxy::CookieSecret::new(cookie_secret()));
        for (pi, rss) in shared.port_rss.iter().enumerate() {
            core.set_port_rss(pi, rss.clone());
        }
        WorkerLoop {
            id,
            core,
            shared,
            ports: ports.into_iter().map(Some).collect(),
            macs,
            idle,
            pending: std::collections::VecDeque::new(),
            solicited: std::collections::HashMap::new(),
            report: WorkerReport::default(),
            last_publish: Instant::now(),
            staged: Vec::new(),
            tx_scratch: Vec::with_capacity(2048),
            icmp: IcmpErrors::new(Instant::now()),
        }
    }

    /// Takes the ports' MTUs as the MTU watcher last read them.
    fn sync_mtus(&mut self) {
        for (pi, mtu) in self.shared.port_mtu.iter().enumerate() {
            self.core.set_port_mtu(pi, mtu.load(Ordering::Relaxed));
        }
    }

    fn run(mut self) {
        let mut idle_polls: u32 = 0;
        // Listed in the stats from the start, not only after the first
        // 100 ms of polling.
        let generation = self.shared.runtime.load().snap.generation;
        self.publish(Instant::now(), generation);
        while !self.shared.stop.load(Ordering::Relaxed) {
            // The snapshot is taken once per burst: a reload lands between bursts.
            let rt = self.shared.runtime.load_full();
            self.sync_mtus();
            let mut seen = 0;
            for pi in 0..self.ports.len() {
                seen += self.poll_port(pi, &rt);
            }
            seen += self.drain_handoff(&rt);
            if !self.pending.is_empty() {
                self.retry_pending();
            }
            for p in self.ports.iter_mut().flatten() {
                if let Err(e) = p.flush() {
                    tracing::debug!("flush: {e}");
                }
            }
            self.core.housekeep(self.shared.now_ns(), &rt.snap);
            let now = Instant::now();
            if now.duration_since(self.last_publish) >= Duration::from_millis(100) {
                self.publish(now, rt.snap.generation);
            }
            if seen == 0 {
                idle_polls = idle_polls.saturating_add(1);
                if self.idle == IdlePolicy::Adaptive {
                    self.backoff(idle_polls);
                } else {
                    std::hint::spin_loop();
                }
            } else {
                idle_polls = 0;
            }
        }
        self.publish(Instant::now(), 0);
    }

    fn poll_port(&mut self, pi: usize, rt: &Runtime) -> usize {
        let n_workers = u16::try_from(self.shared.workers.len()).unwrap_or(1);
        let me = u16::try_from(self.id).unwrap_or(0);
        let port = u32::try_from(pi).unwrap_or(0);
        let Some(mut io) = self.ports[pi].take() else {
            return 0;
        };
        let shared = &self.shared;
        let mut staged = std::mem::take(&mut self.staged);
        let mut count = 0usize;
        let mut handoff_out = 0u64;
        let mut handoff_dropped = 0u64;
        let rss = shared.port_rss.get(pi).and_then(Option::as_deref);
        let n = io.recv_burst(BURST, &mut |frame: &mut [u8], meta: RxMeta| {
            if n_workers > 1 {
                let o = lb_core::packet::parse(frame)
                    .ok()
                    .and_then(|p| frame_owner_on(&rt.snap, frame, &p, n_workers, rss));
                if let Some(o) = o {
                    if o != me {
                        let h = Handoff {
                            frame: frame.to_vec(),
                            meta,
                            port,
                        };
                        handoff_out += 1;
                        if shared.workers[usize::from(o)].handoff.push(h).is_err() {
                            handoff_dropped += 1;
                        }
                        return;
                    }
                }
            }
            if staged.len() == count {
                staged.push((Vec::with_capacity(2048), meta, port));
            }
            let (buf, m, p) = &mut staged[count];
            buf.clear();
            buf.extend_from_slice(frame);
            *m = meta;
            *p = port;
            count += 1;
        });
        self.ports[pi] = Some(io);
        self.report.handoff_out += handoff_out;
        self.report.handoff_dropped += handoff_dropped;
        self.process_staged(&mut staged[..count], rt);
        self.staged = staged;
        n
    }

    /// Runs a burst of received frames through the pipeline together and
    /// sends, answers or parks each as its verdict says.
    fn process_staged(&mut self, staged: &mut [(Vec<u8>, RxMeta, u32)], rt: &Runtime) {
        if staged.is_empty() {
            return;
        }
        let now_ns = self.shared.now_ns();
        let now = Instant::now();
        let mut verdicts = [Verdict::Drop(Reason::NoSession); BURST];
        let mut ports = [0u32; BURST];
        for (p, (_, _, port)) in ports.iter_mut().zip(staged.iter()) {
            *p = *port;
        }
        let mut frames: Vec<Frame<'_>> = staged
            .iter_mut()
            .map(|(buf, meta, port)| Frame {
                data: &mut buf[..],
                rx: RxInfo {
                    csum_partial: meta.csum_partial,
                    port: Some(*port),
                },
            })
            .collect();
        let done = self.core.process_burst(
            &mut frames,
            now_ns,
            &rt.snap,
            rt.health.as_ref(),
            &mut verdicts,
        );
        debug_assert_eq!(done, frames.len(), "bursts are at most BURST frames");
        let mut to_self: Vec<Vec<u8>> = Vec::new();
        let mut wait: Vec<Pending> = Vec::new();
        let mut tx = Tx {
            ports: &mut self.ports,
            config: &rt.snap.cfg.ports,
            scratch: &mut self.tx_scratch,
        };
        for (i, ((f, v), port)) in frames
            .iter_mut()
            .zip(verdicts)
            .zip(ports)
            .take(done)
            .enumerate()
        {
            if let Verdict::Drop(r) = &v {
                let mac = self.macs.get(port as usize).copied().unwrap_or_default();
                self.icmp
                    .answer(r, f.data, port, mac, &rt.snap, now, &mut tx);
            }
            // An answer the pipeline built (the SYN proxy's) goes out
            // instead of the received frame.
            let (v, frame): (Verdict, &mut [u8]) = match v {
                Verdict::Send(fwd) => (Verdict::Forward(fwd), self.core.built_mut(i)),
                v => (v, &mut *f.data),
            };
            deliver(
                v,
                &self.shared,
                rt,
                frame,
                port,
                &self.macs,
                now,
                &mut tx,
                &mut to_self,
                &mut wait,
            );
        }
        self.dispatch(to_self, wait);
    }

    /// Frames other workers handed over (this worker owns their flows),
    /// a burst at a time.
    fn drain_handoff(&mut self, rt: &Runtime) -> usize {
        let mut staged = std::mem::take(&mut self.staged);
        let mut n = 0;
        while n < BURST {
            let Some(h) = self.shared.workers[self.id].handoff.pop() else {
                break;
            };
            if staged.len() == n {
                staged.push((h.frame, h.meta, h.port));
            } else {
                staged[n] = (h.frame, h.meta, h.port);
            }
            n += 1;
        }
        self.process_staged(&mut staged[..n], rt);
        self.staged = staged;
        n
    }

    fn dispatch(&mut self, to_self: Vec<Vec<u8>>, wait: Vec<Pending>) {
        for f in to_self {
            let _ = self.shared.health_tx.try_send(f);
        }
        for p in wait {
            self.solicit(p.port, p.next_hop);
            if p.frame.is_empty() {
                // Only a refresh of an entry still in use.
                continue;
            }
            if self.pending.len() >= PENDING_MAX {
                self.report.neighbor_unresolved += 1;
                self.pending.pop_front();
            }
            self.pending.push_back(p);
        }
    }

    fn solicit(&mut self, port: u32, next_hop: std::net::IpAddr) {
        let now = Instant::now();
        if let Some(t) = self.solicited.get(&(port, next_hop)) {
            if now.duration_since(*t) < Duration::from_millis(500) {
                return;
            }
        }
        self.solicited.insert((port, next_hop), now);
        if self.solicited.len() > 4096 {
            self.solicited
                .retain(|_, t| now.duration_since(*t) < Duration::from_secs(5));
        }
        let rt = self.shared.runtime.load();
        let Some(src) = crate::health::port_address(&rt.snap, port, next_hop) else {
            return;
        };
        if !self.shared.neigh.resolving(port, next_hop, now) {
            // No room for the answer (counted): asking would be in vain.
            return;
        }
        let Some(mac) = self.macs.get(port as usize).copied() else {
            return;
        };
        let mut frame = crate::l2::solicit(mac, src, next_hop);
        crate::l2::set_vlan(&mut frame, port_vlan(&rt.snap, port));
        if let Some(Some(io)) = self.ports.get_mut(port as usize) {
            io.send(&frame);
        }
    }

    fn retry_pending(&mut self) {
        let now = Instant::now();
        let rt = self.shared.runtime.load();
        let mut still = std::collections::VecDeque::new();
        while let Some(mut p) = self.pending.pop_front() {
            if let Some(e) = self.shared.neigh.lookup(p.port, p.next_hop, now) {
                let src = self.macs.get(p.port as usize).copied().unwrap_or_default();
                crate::l2::set_macs(&mut p.frame, e.mac, src);
                crate::l2::set_vlan(&mut p.frame, port_vlan(&rt.snap, p.port));
                if let Some(Some(io)) = self.ports.get_mut(p.port as usize) {
                    io.send(&p.frame);
                }
            } else if now.duration_since(p.since) > PENDING_WAIT {
                self.report.neighbor_unresolved += 1;
            } else {
                still.push_back(p);
            }
        }
        self.pending = still;
    }

    /// Adaptive idle: spin briefly, yield, then sleep in poll(2) on the
    /// ports until traffic comes (at most 1 ms, so handed-over frames and
    /// housekeeping wait no longer).
    fn backoff(&self, idle_polls: u32) {
        match idle_polls {
            0..=64 => std::hint::spin_loop(),
            65..=128 => std::thread::yield_now(),
            _ => {
                let mut fds: Vec<libc::pollfd> = self
                    .ports
                    .iter()
                    .flatten()
                    .filter_map(|p| p.poll_fd())
                    .map(|fd| libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    })
                    .collect();
                if fds.is_empty() {
                    std::thread::sleep(Duration::from_millis(1));
                    return;
                }
                // SAFETY: `fds` is a valid, exclusively borrowed array of
                // `fds.len()` pollfds for the duration of the call.
                unsafe {
                    libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1);
                }
            }
        }
    }

    fn publish(&mut self, now: Instant, generation: u64) {
        self.last_publish = now;
        self.report.ports = self.ports.iter().flatten().map(|p| p.stats()).collect();
        self.report.core = Some(self.core.stats.clone());
        self.report.sessions = self.core.sessions.len();
        self.report.icmp_errors_sent = self.icmp.sent;
        self.report.icmp_errors_rate_limited = self.icmp.rate_limited;
        self.report.half_open = self.core.sessions.half_open();
        self.report.syn_proxy_engaged = self.core.syn_proxy_engaged_anywhere();
        if generation != 0 {
            self.report.generation = generation;
        }
        if let Ok(mut r) = self.shared.workers[self.id].report.try_lock() {
            *r = self.report.clone();
        }
    }
}

/// Where a worker sends frames: straight into the TX batch of the port
/// (a burst is processed after its RX queue is put back, so every port is
/// in place).
struct Tx<'a> {
    ports: &'a mut [Option<Box<dyn PacketIo>>],
    /// The ports' configuration: their VLANs.
    config: &'a [lb_core::model::Port],
    scratch: &'a mut Vec<u8>,
}

impl Tx<'_> {
    /// Sends `frame` on `port` tagged as the port is (see
    /// [`crate::l2::for_port`]): no tag it arrived with leaves.
    fn send(&mut self, port: u32, frame: &[u8]) {
        if let Some(Some(io)) = self.ports.get_mut(port as usize) {
            let vlan = self.config.get(port as usize).and_then(|p| p.vlan);
            io.send(crate::l2::for_port(frame, vlan, self.scratch));
        }
    }
}

/// The VLAN of port `port`, if it has one.
pub fn port_vlan(snap: &Snapshot, port: u32) -> Option<u16> {
    snap.cfg.ports.get(port as usize).and_then(|p| p.vlan)
}

/// Acts on a frame's verdict: frames to send (`tx`), frames for the health
/// checker (`to_self`), frames waiting for a neighbour (`wait`).
#[allow(clippy::too_many_arguments)]
fn deliver(
    v: Verdict,
    shared: &Shared,
    rt: &Runtime,
    frame: &mut [u8],
    port: u32,
    macs: &[[u8; 6]],
    now: Instant,
    tx: &mut Tx<'_>,
    to_self: &mut Vec<Vec<u8>>,
    wait: &mut Vec<Pending>,
) {
    match v {
        Verdict::Forward(f) => {
            let src = macs.get(f.hop.port as usize).copied().unwrap_or_default();
            match shared.neigh.lookup(f.hop.port, f.hop.next_hop, now) {
                Some(e) => {
                    crate::l2::set_macs(frame, e.mac, src);
                    tx.send(f.hop.port, frame);
                    if now.saturating_duration_since(e.learned) > REFRESH {
                        // Ask again while the entry still works.
                        wait.push(Pending {
                            port: f.hop.port,
                            next_hop: f.hop.next_hop,
                            frame: Vec::new(),
                            since: now,
                        });
                    }
                }
                None => wait.push(Pending {
                    port: f.hop.port,
                    next_hop: f.hop.next_hop,
                    frame: frame.to_vec(),
                    since: now,
                }),
            }
        }
        Verdict::Local(kind) => {
            if kind == lb_core::pipeline::LocalKind::ToSelf {
                to_self.push(frame.to_vec());
                return;
            }
            let Ok(p) = lb_core::packet::parse(frame) else {
                return;
            };
            let mac = macs.get(port as usize).copied().unwrap_or_default();
            if let Some(reply) =
                crate::l2::answer(frame, kind, &p, port, mac, &rt.snap, &shared.neigh, now)
            {
                tx.send(port, &reply);
            }
        }
        Verdict::Drop(Reason::NoSessionReset) => {
            // Back where it came from, to the sender's MAC address.
            let Ok(p) = lb_core::packet::parse(frame) else {
                return;
            };
            let mac = macs.get(port as usize).copied().unwrap_or_default();
            if let Some(rst) =
                lb_core::packet::build_tcp_reset(frame, &p, lb_core::packet::MacAddr(mac))
            {
                tx.send(port, &rst);
            }
        }
        Verdict::Drop(_) | Verdict::Send(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_errors_are_rate_limited_by_a_token_bucket() {
        let t0 = Instant::now();
        let mut b = IcmpErrors::new(t0);
        let sent = (0..200).filter(|_| b.take(t0)).count();
        assert_eq!(sent as u64, ICMP_ERROR_BURST, "a burst, then nothing");
        assert_eq!(b.rate_limited, 200 - ICMP_ERROR_BURST);
        // Tokens come back at ICMP_ERRORS_PER_SEC, never above the burst.
        let later = t0 + Duration::from_millis(100);
        let sent = (0..200).filter(|_| b.take(later)).count();
        assert_eq!(sent as u64, ICMP_ERRORS_PER_SEC / 10);
        let much_later = later + Duration::from_secs(60);
        let sent = (0..200).filter(|_| b.take(much_later)).count();
        assert_eq!(sent as u64, ICMP_ERROR_BURST);
    }
}
