//! `bench gen`: a pktgen-style traffic generator for the load balancer.
//!
//! Frames are built in memory and sent through one port (AF_PACKET; any
//! [`PacketIo`] fits, so a DPDK port can stand in) for a bounded time,
//! flat out or paced by a token bucket on the monotonic clock (bursts of
//! up to 32). Three classes of TCP traffic go to the VIP:
//!
//! * **new**: a SYN of a flow never seen before (a fresh client address and
//!   port each time, from `--src-net`);
//! * **established**: packets (ACK|PSH) of a fixed set of `--flows` flows,
//!   each opened by a SYN during a warm-up before the measurement (SYNs the
//!   receiver did not see are sent again, so that established loss is not
//!   warm-up loss in disguise);
//! * **denied**: SYNs to `--deny-port`, which the load balancer must drop.
//!
//! Every frame carries a 10-byte stamp at the start of its TCP payload
//! (FULLNAT rewrites addresses and ports but leaves the payload alone):
//! a magic byte, a run nibble and the class, a 32-bit sequence number and
//! the low 32 bits of the send time in nanoseconds. A receiver on the
//! backend side (`--rx-iface`, e.g. the switch port facing the load
//! balancer) recognises its frames by the stamp and counts them per class,
//! with the send → receive latency in a histogram. Denied frames must not
//! arrive: any that do are reported as leaked.
//!
//! New flows start at a random point of the client tuple space (source
//! addresses x ports 1024-65535) in every run, so that a second run against
//! the same load balancer does not hit the first one's sessions.
//!
//! The generator answers ARP requests (and IPv6 neighbour solicitations)
//! for its source addresses on the TX interface, so that the load balancer
//! can resolve on-link clients when it sends replies back.
//!
//! Latency is measured in user space on both ends: it includes the TX
//! batching (a few µs) and the RX ring's block retire timeout (1 ms at
//! light load; the load balancer's own AF_PACKET ring adds the same).
//!
//! The parts: `args` (the command line and the checked [`Opts`]), `stamp`
//! (the stamp's wire form), `frames` (the frame templates and the
//! neighbour answers), `pacer` (the token bucket), `tx` (the warm-up and
//! the measured phase), `rx` (the receiver's counts and latency) and
//! `report` (the outcome and its summary). This file holds the traffic
//! classes, opens the ports and runs the two sides.

mod args;
mod frames;
mod pacer;
mod report;
mod rx;
mod stamp;
mod tx;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use lb_dataplane::io::afpacket::{AfPacket, AfPacketOpts};
use lb_dataplane::io::PacketIo;

pub use args::{parse_duration, parse_mac, parse_rate, GenArgs, Mix, Opts, Rate, SrcNet};
pub(crate) use frames::{answer_neighbor, Templates};
pub(crate) use pacer::Pacer;
pub use report::{Latency, Report};
use rx::rx_loop;
pub use rx::RxCounts;
pub use stamp::{Stamp, STAMP_LEN};
pub(crate) use tx::Rng;
use tx::{send_all, Sender};

/// Most frames per burst (and per `sendmmsg`).
pub const BURST: usize = 32;
/// Client ports of generated flows.
const PORT_BASE: u16 = 1024;
const PORTS: u64 = 65536 - PORT_BASE as u64;

/// The traffic classes; `Warmup` is the SYNs that open the established
/// flows before the measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    New = 0,
    Established = 1,
    Denied = 2,
    Warmup = 3,
}

/// Number of classes (the length of the per-class counters).
pub const CLASSES: usize = 4;
/// Every class, in counter order.
pub const ALL: [Class; CLASSES] = [Class::New, Class::Established, Class::Denied, Class::Warmup];

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::New => "new",
            Class::Established => "established",
            Class::Denied => "denied",
            Class::Warmup => "warm-up",
        }
    }

    fn from_index(i: u8) -> Option<Class> {
        ALL.get(usize::from(i)).copied()
    }
}

/// Enters network namespace `name` (a name under /run/netns, or a path)
/// on the calling thread.
pub fn enter_netns(name: &str) -> Result<()> {
    let path = if name.contains('/') {
        name.to_string()
    } else {
        format!("/run/netns/{name}")
    };
    let f = File::open(&path).with_context(|| format!("network namespace {path}"))?;
    // SAFETY: setns has no memory-safety preconditions; the descriptor is
    // valid while `f` lives.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering network namespace {path}"));
    }
    Ok(())
}

/// Opens an AF_PACKET port on `iface`, in namespace `netns` if given (from
/// a short-lived thread, so the caller stays where it is: the socket keeps
/// its namespace).
pub fn open_afpacket(
    iface: &str,
    netns: Option<&str>,
    opts: &AfPacketOpts,
) -> Result<Box<dyn PacketIo>> {
    let open = || -> Result<Box<dyn PacketIo>> {
        if let Some(ns) = netns {
            enter_netns(ns)?;
        }
        let port = AfPacket::open(iface, opts).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                " (needs CAP_NET_RAW: run as root)"
            } else {
                ""
            };
            anyhow!("AF_PACKET port on {iface}: {e}{hint}")
        })?;
        Ok(Box::new(port))
    };
    match netns {
        None => open(),
        Some(ns) => std::thread::scope(|s| {
            s.spawn(open)
                .join()
                .map_err(|_| anyhow!("opening {iface} in {ns}: the thread panicked"))?
        }),
    }
}

/// The ring of the receiving port: small blocks, so that a block fills and
/// is handed over quickly at high rates (at low rates the 1 ms retire
/// timeout bounds the wait).
pub fn rx_ring() -> AfPacketOpts {
    AfPacketOpts {
        block_size: 64 << 10,
        block_count: 128,
        ..AfPacketOpts::default()
    }
}

/// Opens the ports the options name and runs.
pub fn run(o: &Opts) -> Result<Report> {
    o.check()?;
    let tx = open_afpacket(&o.tx_iface, o.tx_netns.as_deref(), &AfPacketOpts::default())
        .context("TX port")?;
    let rx = match &o.rx_iface {
        Some(i) => Some(open_afpacket(i, o.rx_netns.as_deref(), &rx_ring()).context("RX port")?),
        None => None,
    };
    run_on(o, tx, rx)
}

/// Runs on ports the caller opened (any [`PacketIo`]).
pub fn run_on(o: &Opts, tx: Box<dyn PacketIo>, rx: Option<Box<dyn PacketIo>>) -> Result<Report> {
    o.check()?;
    let epoch = Instant::now();
    let mut rng = Rng::new(o.seed);
    // Each run its own stamp nibble and new-flow tuples: a second run
    // against the same load balancer must not hit the first one's sessions.
    let mut fresh = Rng::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    let run = (fresh.next() & 0x0f) as u8;
    let sources = o.src.addresses(&[o.vip]);
    let mac = tx.mac();
    let mut pattern: Vec<Class> = [
        (Class::New, o.mix.new),
        (Class::Established, o.mix.established),
        (Class::Denied, o.mix.denied),
    ]
    .iter()
    .flat_map(|&(c, w)| std::iter::repeat_n(c, w as usize))
    .collect();
    for i in (1..pattern.len()).rev() {
        pattern.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let flows = if o.mix.established > 0 { o.flows } else { 0 };
    let mut s = Sender {
        port: tx,
        tpl: Templates::new(o, mac),
        mac,
        own: sources.iter().copied().collect(),
        tuples: sources.len() as u64 * PORTS,
        new_base: fresh.below(sources.len() as u64 * PORTS - flows as u64),
        sources,
        flows: flows as u64,
        pattern,
        next: 0,
        rng,
        run,
        epoch,
        seq: 0,
        new_flows: 0,
        denied_flows: 0,
        sent: [0; CLASSES],
        tx_dropped: [0; CLASSES],
        tx_bytes: 0,
        neighbor_replies: 0,
        last_dropped: 0,
        buf: vec![0; 2048],
        burst: Vec::with_capacity(BURST),
        replies: Vec::new(),
    };
    s.last_dropped = s.port.stats().tx_dropped;

    let stop = Arc::new(AtomicBool::new(false));
    let opened: Arc<Vec<AtomicU64>> =
        Arc::new((0..flows.div_ceil(64)).map(|_| AtomicU64::new(0)).collect());
    let has_rx = rx.is_some();
    let receiver = rx.map(|port| {
        let (stop, opened) = (Arc::clone(&stop), Arc::clone(&opened));
        std::thread::Builder::new()
            .name("gen-rx".into())
            .spawn(move || rx_loop(port, run, epoch, &stop, &opened))
    });
    let receiver = match receiver {
        Some(r) => Some(r.context("starting the receiver thread")?),
        None => None,
    };
    let result = send_all(o, &mut s, has_rx.then_some(&opened[..]));
    // Let the last frames arrive, answering neighbours meanwhile.
    let drain_end = Instant::now() + o.drain;
    while Instant::now() < drain_end {
        if s.service().is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Release);
    let rx = match receiver {
        Some(h) => Some(
            h.join()
                .map_err(|_| anyhow!("the receiver thread panicked"))??,
        ),
        None => None,
    };
    let (tx_time, unopened) = result?;
    let sources = s.sources.len();
    Ok(Report {
        tx_iface: o.tx_iface.clone(),
        rx_iface: o.rx_iface.clone(),
        rate: o.rate,
        size: o.size,
        flows,
        sources,
        tuples_reused: s.new_flows > s.tuples - s.flows,
        sent: s.sent,
        tx_dropped: s.tx_dropped,
        tx_bytes: s.tx_bytes,
        tx_time,
        rx,
        neighbor_replies: s.neighbor_replies,
        flows_opened: unopened.map(|u| flows as u64 - u),
    })
}

/// `bench gen`: runs and prints the summary; on a setup error, prints
/// the error chain on one line and exits with status 1.
pub fn main(args: &GenArgs) -> Result<()> {
    match args.opts().and_then(|o| run(&o)) {
        Ok(report) => {
            println!("{report}");
            Ok(())
        }
        Err(e) => {
            eprintln!("bench gen: {e:#}");
            std::process::exit(1);
        }
    }
}
