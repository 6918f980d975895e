//! Opening the ports: each worker's queues and the senders of the health
//! checker, for AF_PACKET or DPDK.

#[cfg(feature = "dpdk")]
use std::sync::Arc;

#[cfg(feature = "dpdk")]
use crossbeam::queue::ArrayQueue;
#[cfg(feature = "dpdk")]
use lb_core::model::Config;
use std::path::Path;

#[cfg(feature = "dpdk")]
use super::affinity::{set_thread_affinity, thread_affinity};
use super::StartError;
#[cfg(feature = "dpdk")]
use super::BURST;
use crate::io::afpacket::{AfPacket, AfPacketOpts};
use crate::io::raw::RawSender;
#[cfg(feature = "dpdk")]
use crate::io::IoStats;
use crate::io::{RxQueue, TxQueue};

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

impl crate::health::ProbeSender for PortSender {
    /// The port's Ethernet address.
    fn mac(&self) -> [u8; 6] {
        match self {
            PortSender::Raw(s) => s.mac(),
            #[cfg(feature = "dpdk")]
            PortSender::Queued { mac, .. } => *mac,
        }
    }

    /// Sends (or queues for sending) one complete Ethernet frame.
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
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

/// One worker's queue pair of every port (in port order), split in its
/// receiving and sending halves.
#[derive(Default)]
pub(super) struct WorkerPorts {
    pub(super) rx: Vec<Box<dyn RxQueue>>,
    pub(super) tx: Vec<Box<dyn TxQueue>>,
}

/// The ports, opened: each worker's queues, the health checker's senders.
pub(super) struct OpenPorts {
    /// One entry per worker.
    pub(super) per_worker: Vec<WorkerPorts>,
    pub(super) senders: Vec<PortSender>,
    pub(super) port_names: Vec<String>,
    /// Per port, the largest MTU it can send at (`u32::MAX`: no limit).
    pub(super) mtu_cap: Vec<u32>,
    /// The largest frame a worker copies into a buffer of its own.
    pub(super) max_frame: usize,
    /// Received frames live in a ring (AF_PACKET), not in buffers of their
    /// own (DPDK's mbufs).
    pub(super) ring_frames: bool,
    /// The EAL, when the ports are DPDK's: workers register with it.
    #[cfg(feature = "dpdk")]
    pub(super) eal: Option<crate::io::dpdk::Eal>,
    #[cfg(feature = "dpdk")]
    pub(super) dpdk_ports: Vec<crate::io::dpdk::DpdkPort>,
}

/// AF_PACKET: one socket per worker and port (a fanout group per port when
/// there are several workers), and a send-only socket per port.
pub(super) fn open_af_packet(
    cfg: &lb_core::model::Config,
    workers: usize,
) -> Result<OpenPorts, StartError> {
    let port_names: Vec<String> = cfg
        .ports
        .iter()
        .map(|p| {
            p.interface.clone().ok_or_else(|| StartError::NoInterface {
                port: p.name.clone(),
            })
        })
        .collect::<Result<_, _>>()?;
    let fanout_base = u16::try_from(std::process::id() & 0x7fff).unwrap_or(0);
    let mut per_worker: Vec<WorkerPorts> = Vec::new();
    let mut mtu_cap = vec![u32::MAX; port_names.len()];
    let mut max_frame = 0;
    for _ in 0..workers {
        let mut ports = WorkerPorts::default();
        for (pi, name) in port_names.iter().enumerate() {
            let opts = AfPacketOpts {
                fanout: (workers > 1)
                    .then(|| fanout_base.wrapping_add(u16::try_from(pi).unwrap_or(0))),
                ..AfPacketOpts::default()
            };
            let io = AfPacket::open(name, &opts).map_err(|source| StartError::AfPacket {
                interface: name.clone(),
                source,
            })?;
            // Its send slots hold the MTU of the start, plus the Ethernet
            // header and one tag.
            let cap = io.max_tx_frame().saturating_sub(14 + 4);
            mtu_cap[pi] = mtu_cap[pi].min(u32::try_from(cap).unwrap_or(u32::MAX));
            max_frame = max_frame.max(io.max_tx_frame());
            let (rx, tx) = io.split();
            ports.rx.push(Box::new(rx));
            ports.tx.push(Box::new(tx));
        }
        per_worker.push(ports);
    }
    let senders: Vec<PortSender> = port_names
        .iter()
        .map(|n| {
            RawSender::open(n)
                .map(PortSender::Raw)
                .map_err(|source| StartError::SendSocket {
                    interface: n.clone(),
                    source,
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(OpenPorts {
        per_worker,
        senders,
        port_names,
        mtu_cap,
        max_frame,
        ring_frames: true,
        #[cfg(feature = "dpdk")]
        eal: None,
        #[cfg(feature = "dpdk")]
        dpdk_ports: Vec::new(),
    })
}

#[cfg(not(feature = "dpdk"))]
pub(super) fn open_dpdk(
    _cfg: &lb_core::model::Config,
    _workers: usize,
    config_path: &Path,
) -> Result<OpenPorts, StartError> {
    Err(StartError::DpdkNotBuilt {
        config: config_path.to_path_buf(),
    })
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
pub(super) fn open_dpdk(
    cfg: &Config,
    requested: usize,
    config_path: &Path,
) -> Result<OpenPorts, StartError> {
    use crate::io::dpdk::{DpdkPort, DpdkPortOpts, Eal, Mempool};

    let affinity = thread_affinity();
    let eal = Eal::init(&cfg.dataplane.eal_args).map_err(|source| StartError::Eal {
        config: config_path.to_path_buf(),
        source,
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
    .map_err(|source| StartError::Mempool {
        buffers: n_mbufs,
        source,
    })?;
    let mut ports: Vec<DpdkPort> = Vec::new();
    for p in &cfg.ports {
        let id = p.dpdk_port.ok_or_else(|| StartError::NoDpdkPort {
            port: p.name.clone(),
        })?;
        let opts = DpdkPortOpts {
            software_rss: p.dpdk_rss == lb_core::model::DpdkRss::Software,
            ..opts.clone()
        };
        let port =
            DpdkPort::open(id, want, &pool, &opts).map_err(|source| StartError::DpdkPort {
                id,
                port: p.name.clone(),
                found,
                source,
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
            software_rss = port.software_rss(),
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
        return Err(StartError::QueueMismatch {
            id: p.port_id(),
            device: p.name().to_string(),
            queues: p.queue_count(),
            workers,
        });
    }
    let inject: Vec<Arc<ArrayQueue<Vec<u8>>>> = ports
        .iter()
        .map(|_| Arc::new(ArrayQueue::new(INJECT_DEPTH)))
        .collect();
    let mut per_worker: Vec<WorkerPorts> = Vec::new();
    for w in 0..workers {
        let mut ios = WorkerPorts::default();
        for (port, frames) in ports.iter().zip(&inject) {
            let q = u16::try_from(w % usize::from(port.queue_count())).unwrap_or(0);
            let queue = port.queue(q).map_err(|source| StartError::DpdkQueue {
                queue: q,
                id: port.port_id(),
                source,
            })?;
            let (rx, tx) = queue.split();
            ios.rx.push(Box::new(rx));
            if w == 0 {
                ios.tx.push(Box::new(WithInjected {
                    io: tx,
                    frames: frames.clone(),
                }));
            } else {
                ios.tx.push(Box::new(tx));
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
        max_frame: pool.max_frame(),
        ring_frames: false,
        eal: Some(eal),
        dpdk_ports: ports,
    })
}

/// Buffers for every RX and TX descriptor of every queue, what the workers
/// hold in flight (bursts, TX batches, frames waiting for a neighbour and,
/// with several workers, full handoff queues: received mbufs are forwarded
/// as they are), the per-lcore caches and a margin; rounded up to a power
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
    let held = super::worker::PENDING_MAX + if workers > 1 { super::HANDOFF_DEPTH } else { 0 };
    let in_flight = workers
        * (POOL_CACHE as usize + held + ports * (crate::io::dpdk::MAX_BURST + opts.tx_batch));
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

/// Worker 0's queue of a DPDK port: also sends, at each flush, the frames
/// the health checker queued for the port.
#[cfg(feature = "dpdk")]
struct WithInjected {
    io: crate::io::dpdk::DpdkTx,
    frames: Arc<ArrayQueue<Vec<u8>>>,
}

#[cfg(feature = "dpdk")]
impl TxQueue for WithInjected {
    fn send(&mut self, frame: &[u8]) -> bool {
        self.io.send(frame)
    }

    fn send_buf(&mut self, buf: crate::io::Buf) -> bool {
        self.io.send_buf(buf)
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
}
