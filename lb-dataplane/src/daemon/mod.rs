//! `lbd`: the running data plane. Owns the ports, runs the poll-mode
//! workers and the health checker, reloads the configuration atomically.
//!
//! This module holds the daemon's lifecycle and reload; `ports` opens the
//! ports, `worker` is the poll-mode loop, `affinity` pins threads to CPUs.

mod affinity;
mod error;
#[cfg(test)]
mod exception_tests;
mod ports;
#[cfg(test)]
mod rss_tests;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::channel::{bounded, Sender};
use crossbeam::queue::ArrayQueue;
use lb_core::model::IoBackend;
use lb_core::pipeline::{Snapshot, Stats};

use crate::health::HealthTable;
use crate::io::{IoStats, RxMeta};
use crate::neigh::Neighbors;
use affinity::{keep_off_worker_cores, pin_to_core};
pub use ports::PortSender;
use ports::{open_af_packet, open_dpdk, OpenPorts};
use worker::WorkerLoop;

pub use error::{ReloadError, StartError};

/// Frames handled per port per poll.
pub const BURST: usize = 32;

/// Frames handed between two workers that can wait in one queue.
const HANDOFF_DEPTH: usize = 1024;

/// How long a clean stop waits for BIRD to withdraw the node's routes.
pub const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a clean stop keeps forwarding once BIRD has taken the
/// withdrawal: its BGP updates leave through the TAP, and the routers
/// move the flows, before the workers and the TAP go.
pub const WITHDRAW_GRACE: Duration = Duration::from_secs(1);

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
    /// The frame in a buffer of its own: moved, never copied again.
    pub buf: crate::io::Buf,
    pub meta: RxMeta,
    pub port: u32,
    /// The frame's parse, which the receiving worker uses as it is.
    pub parsed: (
        lb_core::packet::Parsed,
        Result<(), lb_core::packet::ParseError>,
    ),
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
    /// Access-log records lost in the worker's own buffer.
    pub access_log_dropped: u64,
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
    /// Buffers for frames that leave their RX ring before they are sent
    /// (handed to another worker, or waiting for a neighbour).
    pub buffers: Arc<crate::io::pool::BufPool>,
    /// How each port's RSS spreads frames over the workers (`None`: no
    /// RSS, as with AF_PACKET): frame ownership and FULLNAT local ports
    /// follow it, so that no frame needs a handoff.
    pub port_rss: Vec<Option<Arc<lb_core::nat::rss::RssSteering>>>,
    /// Drain, and what the routing daemon announces for this node.
    pub cluster: crate::cluster::ClusterState,
    /// Each port's exception path to the kernel (`[[port]] tap`).
    pub exception: Arc<crate::exception::Exceptions>,
    /// The listeners' access logs: the workers' queues to the writer.
    pub access_log: Arc<crate::access_log::AccessLog>,
}

impl Shared {
    /// Re-reads the configuration file. A valid one replaces the running
    /// configuration in one step (sessions carry on and are checked against
    /// the new rules on their next packet); an invalid one changes nothing.
    pub fn reload(self: &Arc<Self>) -> Result<u64, ReloadError> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let cfg = match lb_config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!("reload rejected, the running configuration stays:\n{e}");
                return Err(e.into());
            }
        };
        let old = self.runtime.load_full();
        if let Err(e) = compatible(&old.snap.cfg, &cfg) {
            self.reload_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!("reload rejected, the running configuration stays: {e}");
            return Err(e);
        }
        for w in crate::cluster::warnings(&cfg) {
            tracing::warn!("{w}");
        }
        let snap = Arc::new(Snapshot::compile(cfg, old.snap.generation + 1));
        let health = Arc::new(HealthTable::new(&snap, Some(&old.health)));
        // The servers' weights (drain, slow start) before any worker sees
        // the new configuration: a server the reload adds starts its ramp.
        health.servers.tick(&snap, health.as_ref(), self.now_ns());
        let generation = snap.generation;
        // Its names before any worker makes a record under it.
        self.access_log.register(&snap);
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
                if let Some(ep) = self.exception.port(pi) {
                    if let Err(e) = crate::exception::tap::set_mtu(&ep.tap, mtu) {
                        tracing::warn!(port, tap = %ep.tap, mtu, "setting the TAP's MTU: {e}");
                    }
                }
            }
        }
    }

    /// Nanoseconds since start: the pipeline's clock.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Shared {
    /// The state of a daemon that has loaded `config_path` but opened no
    /// port and started no thread: what the control protocol answers from,
    /// for tests and fuzzing without a running `lbd`.
    pub fn offline(config_path: &Path) -> Result<Arc<Shared>, StartError> {
        let cfg = lb_config::load(config_path)?;
        let workers = usize::from(cfg.dataplane.workers.max(1));
        let port_names = cfg
            .ports
            .iter()
            .map(|p| p.interface.clone().unwrap_or_else(|| p.name.clone()))
            .collect();
        let mtu_cap = vec![u32::MAX; cfg.ports.len()];
        let snap = Arc::new(Snapshot::compile(cfg, 1));
        let (health_tx, _) = bounded(1);
        Ok(Arc::new(Shared::assemble(
            config_path,
            snap,
            workers,
            port_names,
            health_tx,
            mtu_cap,
        )))
    }

    /// The state of a daemon running `snap` (loaded from `config_path`)
    /// with `workers` workers, before any packet (no DPDK port, no port
    /// MTU read yet; `mtu_cap`: the largest MTU each port can send at).
    fn assemble(
        config_path: &Path,
        snap: Arc<Snapshot>,
        workers: usize,
        port_names: Vec<String>,
        health_tx: Sender<Vec<u8>>,
        mtu_cap: Vec<u32>,
    ) -> Shared {
        let neigh = Neighbors::new(
            &snap
                .cfg
                .ports
                .iter()
                .map(|p| p.max_neighbors)
                .collect::<Vec<_>>(),
        );
        let health = Arc::new(HealthTable::new(&snap, None));
        let mtu_cap_len = mtu_cap.len();
        let started = Instant::now();
        let access_log = Arc::new(crate::access_log::AccessLog::new(workers, started));
        access_log.register(&snap);
        Shared {
            runtime: ArcSwap::from_pointee(Runtime { snap, health }),
            stop: AtomicBool::new(false),
            neigh,
            config_path: config_path.to_path_buf(),
            reload_lock: Mutex::new(()),
            workers: (0..workers)
                .map(|_| WorkerSlot {
                    handoff: ArrayQueue::new(HANDOFF_DEPTH),
                    report: Mutex::new(WorkerReport::default()),
                })
                .collect(),
            health_tx,
            started,
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            port_names,
            #[cfg(feature = "dpdk")]
            dpdk_ports: Vec::new(),
            port_mtu: mtu_cap.iter().map(|_| AtomicU32::new(0)).collect(),
            port_mtu_cap: mtu_cap,
            buffers: crate::io::pool::BufPool::new(0, 0),
            port_rss: Vec::new(),
            cluster: crate::cluster::ClusterState::default(),
            exception: Arc::new(crate::exception::Exceptions::none(mtu_cap_len)),
            access_log,
        }
    }
}

/// Buffers the workers may hold at once outside their RX rings: full
/// neighbour queues and, where a frame handed to another worker is copied
/// out of its ring (`ring_frames`: AF_PACKET), full handoff queues. DPDK
/// frames have buffers of their own; the pool then only holds frames the
/// pipeline built (the SYN proxy's) while their next hop is resolved.
fn pool_buffers(workers: usize, ring_frames: bool) -> usize {
    let handoff = if ring_frames && workers > 1 {
        HANDOFF_DEPTH
    } else {
        0
    };
    workers * (handoff + worker::PENDING_MAX + BURST)
}

/// What a reload cannot change without a restart: the ports and workers.
fn compatible(
    old: &lb_core::model::Config,
    new: &lb_core::model::Config,
) -> Result<(), ReloadError> {
    let ports = |c: &lb_core::model::Config| {
        c.ports
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    p.interface.clone(),
                    p.dpdk_port,
                    p.tap.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    if ports(old) != ports(new) {
        return Err(ReloadError::PortsChanged);
    }
    if old.dataplane != new.dataplane {
        return Err(ReloadError::DataplaneChanged);
    }
    let limits =
        |c: &lb_core::model::Config| c.ports.iter().map(|p| p.max_neighbors).collect::<Vec<_>>();
    if limits(old) != limits(new) {
        return Err(ReloadError::MaxNeighborsChanged);
    }
    // Sessions hold ports of the node's slice.
    let node = |c: &lb_core::model::Config| c.cluster.as_ref().map(|c| (c.node_id, c.nodes));
    if node(old) != node(new) {
        return Err(ReloadError::ClusterNodeChanged);
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
    pub fn start(config_path: &Path) -> Result<Daemon, StartError> {
        let cfg = lb_config::load(config_path)?;
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
            max_frame,
            ring_frames,
            #[cfg(feature = "dpdk")]
            eal,
            #[cfg(feature = "dpdk")]
            dpdk_ports,
        } = opened;
        let workers = per_worker.len();
        for w in crate::cluster::warnings(&cfg) {
            tracing::warn!("{w}");
        }
        // The routing daemon's include file exists before anything is
        // served (BIRD refuses a configuration whose include is missing).
        if let Err(e) = crate::cluster::driver::write_initial(&cfg) {
            tracing::warn!(
                "{e}: {}",
                std::error::Error::source(&e)
                    .map(ToString::to_string)
                    .unwrap_or_default()
            );
        }
        let (health_tx, health_rx) = bounded(4096);
        let snap = Arc::new(Snapshot::compile(cfg.clone(), 1));
        let mut shared = Shared::assemble(
            config_path,
            snap,
            workers,
            port_names.clone(),
            health_tx,
            mtu_cap,
        );
        #[cfg(feature = "dpdk")]
        {
            shared.port_rss = crate::io::dpdk::steering::steerings(&dpdk_ports, workers);
            shared.dpdk_ports = dpdk_ports;
        }
        shared.buffers =
            crate::io::pool::BufPool::new(pool_buffers(workers, ring_frames), max_frame);
        // The TAPs take the ports' MAC addresses and MTUs as they are now.
        let macs: Vec<[u8; 6]> = per_worker
            .first()
            .map(|w| w.tx.iter().map(|t| t.mac()).collect())
            .unwrap_or_default();
        let mtus: Vec<u32> = (0..shared.port_mtu.len())
            .map(|pi| shared.read_port_mtu(pi).unwrap_or(0))
            .collect();
        let snap0 = shared.runtime.load().snap.clone();
        let (exceptions, taps) = crate::exception::open(&snap0, &macs, &mtus, max_frame)
            .map_err(|source| StartError::Tap { source })?;
        shared.exception = Arc::new(exceptions);
        let shared = Arc::new(shared);
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
                    worker.prefault();
                    ready.wait();
                    worker.run();
                })
                .map_err(|source| StartError::Thread {
                    thread: "a worker thread",
                    source,
                })?;
            threads.push(h);
        }
        // Probes go out once the workers are there to receive the answers.
        ready.wait();
        {
            let shared = shared.clone();
            let h = std::thread::Builder::new()
                .name("lbd-health".into())
                .spawn(move || crate::health::run(shared, health_rx, senders))
                .map_err(|source| StartError::Thread {
                    thread: "the health checker",
                    source,
                })?;
            threads.push(h);
        }
        if !taps.is_empty() {
            let shared = shared.clone();
            let h = std::thread::Builder::new()
                .name("lbd-exception".into())
                .spawn(move || {
                    keep_off_worker_cores(&shared.runtime.load().snap.cfg.dataplane.cores);
                    crate::exception::run(&shared.exception, taps, &shared.stop);
                })
                .map_err(|source| StartError::Thread {
                    thread: "the exception path",
                    source,
                })?;
            threads.push(h);
        }
        threads.push(spawn_access_log_writer(&shared)?);
        {
            let shared = shared.clone();
            let h = std::thread::Builder::new()
                .name("lbd-servers".into())
                .spawn(move || publish_servers(&shared))
                .map_err(|source| StartError::Thread {
                    thread: "the server state thread",
                    source,
                })?;
            threads.push(h);
        }
        {
            let shared = shared.clone();
            let h = std::thread::Builder::new()
                .name("lbd-mtu".into())
                .spawn(move || watch_mtus(&shared))
                .map_err(|source| StartError::Thread {
                    thread: "the MTU watcher",
                    source,
                })?;
            threads.push(h);
        }
        // Also on a single node: it times drain deadlines.
        {
            let shared = shared.clone();
            let h = std::thread::Builder::new()
                .name("lbd-cluster".into())
                .spawn(move || crate::cluster::driver::run(&*shared))
                .map_err(|source| StartError::Thread {
                    thread: "the routing daemon's driver",
                    source,
                })?;
            threads.push(h);
        }
        #[cfg(feature = "dpdk")]
        if !shared.dpdk_ports.is_empty() {
            let shared = shared.clone();
            let h = std::thread::Builder::new()
                .name("lbd-link".into())
                .spawn(move || watch_links(&shared))
                .map_err(|source| StartError::Thread {
                    thread: "the link watcher",
                    source,
                })?;
            threads.push(h);
        }
        tracing::info!(workers, ports = ?port_names, "lbd running");
        refine_in_background(&shared);
        Ok(Daemon { shared, threads })
    }

    /// Asks every thread to stop and waits for them. A cluster node first
    /// withdraws what it announces (the workers forward until BIRD has
    /// taken the withdrawal, or [`WITHDRAW_TIMEOUT`] passed).
    pub fn stop(self) {
        if self.shared.runtime.load().snap.cfg.cluster.is_some() {
            if self.shared.cluster.withdraw_all(WITHDRAW_TIMEOUT) {
                tracing::info!("routes withdrawn");
                // BIRD sends the withdrawal on its own time, through the
                // TAP: keep forwarding while it leaves and the routers
                // move the flows.
                std::thread::sleep(WITHDRAW_GRACE);
            } else {
                tracing::warn!(
                    "routes not withdrawn within {} s (BIRD does when the interfaces go)",
                    WITHDRAW_TIMEOUT.as_secs()
                );
            }
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        // The workers come first: once they are gone, the access log's
        // writer takes their last records and ends.
        let workers = self.shared.workers.len();
        for (i, t) in self.threads.into_iter().enumerate() {
            if i == workers {
                self.shared.access_log.close();
            }
            let _ = t.join();
        }
    }
}

/// The access logs' writer thread; it ends after `shared.stop`, once the
/// workers' last records are written.
fn spawn_access_log_writer(shared: &Arc<Shared>) -> Result<JoinHandle<()>, StartError> {
    let shared = shared.clone();
    std::thread::Builder::new()
        .name("lbd-access-log".into())
        .spawn(move || {
            keep_off_worker_cores(&shared.runtime.load().snap.cfg.dataplane.cores);
            let stop = || shared.stop.load(Ordering::Relaxed) && shared.access_log.is_closed();
            crate::access_log::run_writer(&shared.access_log, &stop);
        })
        .map_err(|source| StartError::Thread {
            thread: "the access log writer",
            source,
        })
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

/// Runs [`crate::servers::ServerTable::tick`] every
/// [`crate::servers::TICK`] on the running configuration (drain and slow
/// start: the weights the workers follow) until `shared.stop`.
fn publish_servers(shared: &Shared) {
    while !shared.stop.load(Ordering::Relaxed) {
        let rt = shared.runtime.load_full();
        rt.health
            .servers
            .tick(&rt.snap, rt.health.as_ref(), shared.now_ns());
        std::thread::sleep(crate::servers::TICK);
    }
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

impl crate::cluster::Host for Shared {
    fn now_ns(&self) -> u64 {
        Shared::now_ns(self)
    }

    fn cluster(&self) -> &crate::cluster::ClusterState {
        &self.cluster
    }
}

impl crate::health::Host for Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn current(&self) -> (Arc<Snapshot>, Arc<HealthTable>) {
        let rt = self.runtime.load();
        (rt.snap.clone(), rt.health.clone())
    }

    fn neighbors(&self) -> &Neighbors {
        &self.neigh
    }
}

#[cfg(test)]
mod reload_tests {
    use super::*;

    fn cfg(port: &str, dataplane: &str) -> lb_core::model::Config {
        let text = format!(
            "[dataplane]\n{dataplane}\n[[port]]\nname = \"ext\"\ninterface = \"lb-ext\"\naddresses = [\"198.18.0.1/24\"]\n{port}"
        );
        lb_config::parse_str(&text, "t.toml").expect("valid")
    }

    #[test]
    fn the_exception_path_changes_only_with_a_restart() {
        let tap = cfg("tap = \"lbd-ext\"\n", "");
        assert!(compatible(&tap, &cfg("tap = \"lbd-ext\"\n", "")).is_ok());
        for other in [cfg("", ""), cfg("tap = \"lbd-x\"\n", "")] {
            assert!(matches!(
                compatible(&tap, &other),
                Err(ReloadError::PortsChanged)
            ));
        }
        assert!(matches!(
            compatible(&tap, &cfg("tap = \"lbd-ext\"\n", "exception_queue = 64")),
            Err(ReloadError::DataplaneChanged)
        ));
    }
}
