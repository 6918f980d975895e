//! The poll-mode worker: reads bursts from its queues of every port, runs
//! them through the pipeline and sends, answers or parks each frame.
//!
//! A burst stays where the port put it: AF_PACKET frames in the RX ring,
//! DPDK frames in their mbufs. Each frame is parsed once (the parse that
//! finds the worker owning its flow feeds the pipeline), rewritten in
//! place, and leaves as it is: an mbuf goes to the egress port's TX queue
//! itself, a ring frame is copied once into the kernel's send path. A frame
//! for another worker moves its buffer there (an mbuf, or a copy in a
//! pooled buffer for a ring frame). Nothing is allocated per packet.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_core::model::IdlePolicy;
use lb_core::packet::{ParseError, Parsed};
use lb_core::pipeline::{
    frame_owner_on, Forward, Frame, LocalKind, Reason, Released, RxInfo, Snapshot, Verdict, Worker,
};

use super::{Handoff, Runtime, Shared, WorkerReport, BURST};
use crate::exception::{Exceptions, PortFacts, PortPlan, Up};
use crate::io::pool::BufPool;
use crate::io::{Buf, IoStats, RxMeta, RxQueue, Slot, TxQueue};
use crate::l2::port_vlan;
use crate::neigh::REFRESH;

/// Frames waiting for a neighbour to answer, per worker.
pub(super) const PENDING_MAX: usize = 256;

/// How long a frame waits for its next hop to be resolved.
const PENDING_WAIT: Duration = Duration::from_secs(1);

/// ICMP errors (time exceeded, fragmentation needed, packet too big) one
/// worker sends per second at most, after a burst of [`ICMP_ERROR_BURST`]
/// (Linux: 1000 a second for the host, bursts of 50).
const ICMP_ERRORS_PER_SEC: u64 = 200;
const ICMP_ERROR_BURST: u64 = 50;

/// A frame's parse, as the pipeline takes it.
pub(super) type ParsedFrame = (Parsed, Result<(), ParseError>);

/// One frame waiting for its next hop.
#[derive(Debug)]
struct Pending {
    port: u32,
    next_hop: IpAddr,
    frame: Buf,
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
pub(super) struct WorkerLoop {
    /// The receiving half of each port's queue pair, apart from the rest
    /// so that a burst can borrow its queue while the frames are sent.
    rx: Vec<Box<dyn RxQueue>>,
    fwd: Forwarder,
    idle: IdlePolicy,
    last_publish: Instant,
    /// The drain's session ending this worker has done
    /// ([`crate::cluster::ClusterState::end_sessions`]).
    sessions_ended: u64,
    /// The ports' descriptors an idle worker sleeps on.
    pollfds: Vec<libc::pollfd>,
}

/// Everything of a worker but its RX queues.
struct Forwarder {
    id: usize,
    shared: Arc<Shared>,
    core: Worker,
    out: Egress,
    solicited: HashMap<(u32, IpAddr), Instant>,
    report: WorkerReport,
    icmp: IcmpErrors,
    /// The parse of each frame of the burst.
    parsed: [ParsedFrame; BURST],
    exc: ExceptionState,
}

/// A worker's side of the exception path (see [`crate::exception`]).
struct ExceptionState {
    paths: Arc<Exceptions>,
    /// What each port classifies with, for configuration `generation`.
    plan: Vec<PortPlan>,
    generation: u64,
    /// Frames went up in this round: wake the exception thread after it.
    queued: bool,
}

/// Where frames leave: the sending half of each port's queue pair, and the
/// frames waiting for a neighbour.
struct Egress {
    tx: Vec<Box<dyn TxQueue>>,
    macs: Vec<[u8; 6]>,
    /// Where a frame to copy is retagged for its egress port's VLAN.
    scratch: Vec<u8>,
    /// Buffers for ring frames that must wait or move to another worker.
    pool: Arc<BufPool>,
    pending: VecDeque<Pending>,
    /// Next hops to ask for after the burst.
    solicit: Vec<(u32, IpAddr)>,
    neighbor_unresolved: u64,
}

impl Egress {
    /// Sends a copy of `frame` on `port`, tagged as the port is (see
    /// [`crate::l2::for_port`]): no tag it arrived with leaves.
    fn send(&mut self, port: u32, frame: &[u8], snap: &Snapshot) {
        if let Some(io) = self.tx.get_mut(port as usize) {
            io.send(crate::l2::for_port(
                frame,
                port_vlan(snap, port),
                &mut self.scratch,
            ));
        }
    }

    /// Sends `frame` on `port` as it is: an owned buffer retagged in place
    /// and handed over (an mbuf without a copy), a ring frame copied.
    fn send_slot(&mut self, port: u32, frame: Slot<'_>, snap: &Snapshot) {
        match frame {
            Slot::Owned(mut buf) => {
                let Some(io) = self.tx.get_mut(port as usize) else {
                    return;
                };
                if buf.retag(port_vlan(snap, port)) {
                    io.send_buf(buf);
                } else {
                    // No headroom for the tag: the copy path has room.
                    let vlan = port_vlan(snap, port);
                    io.send(crate::l2::for_port(buf.data(), vlan, &mut self.scratch));
                }
            }
            Slot::Lent(f) => self.send(port, f, snap),
            Slot::Empty => {}
        }
    }

    /// Parks a frame until its next hop is resolved; the oldest goes when
    /// the queue is full (counted).
    fn park(&mut self, port: u32, next_hop: IpAddr, frame: Option<Buf>, now: Instant) {
        self.ask(port, next_hop);
        let Some(frame) = frame else {
            // No buffer free: as good as unresolved.
            self.neighbor_unresolved += 1;
            return;
        };
        if self.pending.len() >= PENDING_MAX {
            self.neighbor_unresolved += 1;
            self.pending.pop_front();
        }
        self.pending.push_back(Pending {
            port,
            next_hop,
            frame,
            since: now,
        });
    }

    /// Asks for `next_hop` after the burst (at most once per burst).
    fn ask(&mut self, port: u32, next_hop: IpAddr) {
        if !self.solicit.contains(&(port, next_hop)) && self.solicit.len() < BURST {
            self.solicit.push((port, next_hop));
        }
    }

    /// Forwards `frame` to `f`'s next hop: sent with the neighbour's
    /// address, or parked until it is known. `copy` is a frame the
    /// pipeline built in its own buffer, which `frame` then stands for.
    fn forward(
        &mut self,
        f: &Forward,
        mut frame: Slot<'_>,
        neigh: &crate::neigh::Neighbors,
        snap: &Snapshot,
        now: Instant,
    ) {
        let src = self
            .macs
            .get(f.hop.port as usize)
            .copied()
            .unwrap_or_default();
        match neigh.lookup(f.hop.port, f.hop.next_hop, now) {
            Some(e) => {
                crate::l2::set_macs(frame.data_mut(), e.mac, src);
                self.send_slot(f.hop.port, frame, snap);
                if now.saturating_duration_since(e.learned) > REFRESH {
                    // Ask again while the entry still works.
                    self.ask(f.hop.port, f.hop.next_hop);
                }
            }
            None => {
                let buf = frame.into_buf(&self.pool);
                self.park(f.hop.port, f.hop.next_hop, buf, now);
            }
        }
    }
}

impl WorkerLoop {
    pub(super) fn new(
        id: usize,
        shared: Arc<Shared>,
        ports: super::ports::WorkerPorts,
        idle: IdlePolicy,
        [max_sessions, max_sessions_v6]: [usize; 2],
    ) -> WorkerLoop {
        let n = u16::try_from(shared.workers.len()).unwrap_or(1);
        let macs = ports.tx.iter().map(|p| p.mac()).collect();
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
        let pollfds = ports
            .rx
            .iter()
            .filter_map(|p| p.poll_fd())
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let pool = shared.buffers.clone();
        let exc = shared.exception.clone();
        WorkerLoop {
            rx: ports.rx,
            fwd: Forwarder {
                id,
                core,
                out: Egress {
                    tx: ports.tx,
                    macs,
                    scratch: Vec::with_capacity(2048),
                    pool,
                    pending: VecDeque::with_capacity(PENDING_MAX + 1),
                    solicit: Vec::with_capacity(BURST),
                    neighbor_unresolved: 0,
                },
                shared,
                solicited: HashMap::new(),
                report: WorkerReport::default(),
                icmp: IcmpErrors::new(Instant::now()),
                parsed: [(Parsed::EMPTY, Ok(())); BURST],
                exc: ExceptionState {
                    paths: exc,
                    plan: Vec::new(),
                    generation: 0,
                    queued: false,
                },
            },
            idle,
            last_publish: Instant::now(),
            sessions_ended: 0,
            pollfds,
        }
    }

    /// Maps the session table before traffic, not page by page under it.
    pub(super) fn prefault(&mut self) {
        self.fwd.core.prefault();
    }

    /// Takes the ports' MTUs as the MTU watcher last read them.
    fn sync_mtus(&mut self) {
        for (pi, mtu) in self.fwd.shared.port_mtu.iter().enumerate() {
            self.fwd.core.set_port_mtu(pi, mtu.load(Ordering::Relaxed));
        }
    }

    pub(super) fn run(mut self) {
        let mut idle_polls: u32 = 0;
        // Listed in the stats from the start, not only after the first
        // 100 ms of polling.
        let generation = self.fwd.shared.runtime.load().snap.generation;
        self.publish(Instant::now(), generation);
        while !self.fwd.shared.stop.load(Ordering::Relaxed) {
            // The snapshot is taken once per burst: a reload lands between bursts.
            let rt = self.fwd.shared.runtime.load_full();
            let seen = self.forward_once(&rt);
            self.fwd.core.housekeep(self.fwd.shared.now_ns(), &rt.snap);
            // Drain deadlines apply on an idle worker too.
            self.fwd
                .core
                .follow_servers(&rt.snap, rt.health.as_ref(), self.fwd.shared.now_ns());
            self.end_sessions_if_due();
            self.fwd.pass_session_records();
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
        self.fwd.pass_session_records();
        self.publish(Instant::now(), 0);
    }

    /// A drain's deadline passed: the worker ends its listener sessions
    /// (once per deadline). Their clients' next segments meet no session
    /// and are answered with a RST.
    fn end_sessions_if_due(&mut self) {
        let due = self.fwd.shared.cluster.end_sessions.load(Ordering::Relaxed);
        if due != self.sessions_ended {
            self.sessions_ended = due;
            let ended = self.fwd.core.end_listener_sessions();
            tracing::info!(
                worker = self.fwd.id,
                ended,
                "drain deadline: sessions ended"
            );
        }
    }

    /// One round of the forwarding path: a burst from every port, the
    /// frames other workers handed over, the frames whose next hop is now
    /// known, and every port's TX flushed. Returns the frames received.
    pub(super) fn forward_once(&mut self, rt: &Runtime) -> usize {
        self.fwd.exception_plan(&rt.snap);
        let _path = crate::alloc::forwarding_path();
        self.sync_mtus();
        // The kernel's frames first: a full round of forwarded frames
        // cannot crowd them out of the ports' send queues.
        self.fwd.send_from_kernel(&rt.snap);
        let mut seen = 0;
        for pi in 0..self.rx.len() {
            seen += self.poll_port(pi, rt);
        }
        seen += self.drain_handoff(rt);
        self.fwd.retry_pending(&rt.snap);
        for p in &mut self.fwd.out.tx {
            if let Err(e) = p.flush() {
                tracing::debug!("flush: {e}");
            }
        }
        if std::mem::take(&mut self.fwd.exc.queued) {
            self.fwd.exc.paths.wake();
        }
        seen
    }

    fn poll_port(&mut self, pi: usize, rt: &Runtime) -> usize {
        let port = u32::try_from(pi).unwrap_or(0);
        let Some(rx) = self.rx.get_mut(pi) else {
            return 0;
        };
        let n = {
            let mut slots: [Slot<'_>; BURST] = std::array::from_fn(|_| Slot::Empty);
            let mut meta = [RxMeta::default(); BURST];
            let n = rx.rx_burst(&mut slots, &mut meta);
            let ports = [port; BURST];
            self.fwd.parse(&slots[..n]);
            self.fwd
                .burst(&mut slots[..n], &meta[..n], &ports[..n], rt, true);
            n
        };
        rx.rx_done();
        n
    }

    /// Frames other workers handed over (this worker owns their flows),
    /// a burst at a time, with the parse they were handed over with.
    fn drain_handoff(&mut self, rt: &Runtime) -> usize {
        let mut slots: [Slot<'_>; BURST] = std::array::from_fn(|_| Slot::Empty);
        let mut meta = [RxMeta::default(); BURST];
        let mut ports = [0u32; BURST];
        let mut n = 0;
        while n < BURST {
            let Some(h) = self.fwd.shared.workers[self.fwd.id].handoff.pop() else {
                break;
            };
            slots[n] = Slot::Owned(h.buf);
            meta[n] = h.meta;
            ports[n] = h.port;
            self.fwd.parsed[n] = h.parsed;
            n += 1;
        }
        self.fwd
            .burst(&mut slots[..n], &meta[..n], &ports[..n], rt, false);
        n
    }

    /// Adaptive idle: spin briefly, yield, then sleep in poll(2) on the
    /// ports until traffic comes (at most 1 ms, so handed-over frames and
    /// housekeeping wait no longer).
    fn backoff(&mut self, idle_polls: u32) {
        match idle_polls {
            0..=64 => std::hint::spin_loop(),
            65..=128 => std::thread::yield_now(),
            _ => {
                if self.pollfds.is_empty() {
                    std::thread::sleep(Duration::from_millis(1));
                    return;
                }
                // SAFETY: `pollfds` is a valid, exclusively borrowed array
                // of `pollfds.len()` pollfds for the duration of the call.
                unsafe {
                    libc::poll(
                        self.pollfds.as_mut_ptr(),
                        self.pollfds.len() as libc::nfds_t,
                        1,
                    );
                }
            }
        }
    }

    fn publish(&mut self, now: Instant, generation: u64) {
        self.last_publish = now;
        let f = &mut self.fwd;
        f.report.ports.clear();
        f.report.ports.extend(
            self.rx
                .iter()
                .zip(&f.out.tx)
                .map(|(rx, tx)| IoStats::merged(rx.stats(), tx.stats())),
        );
        f.report.core = Some(f.core.stats.clone());
        f.report.sessions = f.core.sessions.len();
        f.report.icmp_errors_sent = f.icmp.sent;
        f.report.icmp_errors_rate_limited = f.icmp.rate_limited;
        f.report.half_open = f.core.sessions.half_open();
        f.report.syn_proxy_engaged = f.core.syn_proxy_engaged_anywhere();
        f.report.neighbor_unresolved = f.out.neighbor_unresolved;
        f.report.access_log_dropped = f.core.session_records_dropped();
        if generation != 0 {
            f.report.generation = generation;
        }
        if let Ok(mut r) = f.shared.workers[f.id].report.try_lock() {
            r.clone_from(&f.report);
        }
    }
}

impl Forwarder {
    /// Moves the pipeline's session records to the access-log writer's
    /// queue (full: dropped and counted there), between bursts.
    fn pass_session_records(&mut self) {
        let (log, id) = (&self.shared.access_log, self.id);
        self.core.take_session_records(|r| {
            log.pass(id, r);
        });
    }

    /// Parses each frame of a received burst.
    fn parse(&mut self, slots: &[Slot<'_>]) {
        for ((p, r), s) in self.parsed.iter_mut().zip(slots) {
            *r = lb_core::packet::parse_into(s.data(), p);
        }
    }

    /// Runs a burst (parsed into `self.parsed`) through the pipeline
    /// together and sends, answers or parks each frame as its verdict
    /// says. With several workers, frames read from a port (`from_port`)
    /// whose flow another worker owns go to that worker first.
    fn burst(
        &mut self,
        slots: &mut [Slot<'_>],
        meta: &[RxMeta],
        ports: &[u32],
        rt: &Runtime,
        from_port: bool,
    ) {
        let n = slots.len();
        if n == 0 {
            return;
        }
        let mut meta_k = [RxMeta::default(); BURST];
        let mut ports_k = [0u32; BURST];
        let k = if from_port && self.shared.workers.len() > 1 {
            self.hand_off(slots, meta, ports, rt, &mut meta_k, &mut ports_k)
        } else {
            meta_k[..n].copy_from_slice(meta);
            ports_k[..n].copy_from_slice(ports);
            n
        };
        let slots = &mut slots[..k];
        let now_ns = self.shared.now_ns();
        let now = Instant::now();
        let mut verdicts = [Verdict::Drop(Reason::NoSession); BURST];
        {
            let mut frames: [Frame<'_>; BURST] = std::array::from_fn(|_| Frame {
                data: &mut [],
                rx: RxInfo::default(),
            });
            for (i, (f, s)) in frames.iter_mut().zip(slots.iter_mut()).enumerate() {
                f.data = s.data_mut();
                f.rx = RxInfo {
                    csum_partial: meta_k[i].csum_partial,
                    port: Some(ports_k[i]),
                };
            }
            let done = self.core.process_parsed_burst(
                &mut frames[..k],
                &self.parsed[..k],
                now_ns,
                &rt.snap,
                rt.health.as_ref(),
                &mut verdicts,
            );
            debug_assert_eq!(done, k, "bursts are at most BURST frames");
        }
        for (i, slot) in slots.iter_mut().enumerate() {
            let frame = std::mem::take(slot);
            let csum_partial = meta_k[i].csum_partial;
            self.deliver(i, verdicts[i], frame, ports_k[i], csum_partial, rt, now);
        }
        self.release_fragments(rt, now);
        let asks = std::mem::take(&mut self.out.solicit);
        for &(port, hop) in &asks {
            self.solicit(port, hop);
        }
        self.out.solicit = asks;
        self.out.solicit.clear();
    }

    /// IP fragments that waited for their first fragment go now: forwarded
    /// as it was, or handed to the worker that holds its entry (a copy in a
    /// pooled buffer: the pipeline keeps its own).
    fn release_fragments(&mut self, rt: &Runtime, now: Instant) {
        let (shared, out) = (&self.shared, &mut self.out);
        self.core.take_released(|frame, rx, r| {
            let port = rx.port.unwrap_or(0);
            match r {
                Released::Forward(f) => {
                    out.forward(&f, Slot::Lent(frame), &shared.neigh, &rt.snap, now);
                }
                Released::Owner(o) => {
                    let Some(buf) = out.pool.copy(frame) else {
                        return;
                    };
                    let mut parsed = (Parsed::EMPTY, Ok(()));
                    parsed.1 = lb_core::packet::parse_into(buf.data(), &mut parsed.0);
                    let h = Handoff {
                        buf: Buf::Pooled(buf),
                        meta: RxMeta {
                            csum_partial: rx.csum_partial,
                            ..RxMeta::default()
                        },
                        port,
                        parsed,
                    };
                    if let Some(w) = shared.workers.get(usize::from(o)) {
                        let _ = w.handoff.push(h);
                    }
                }
            }
        });
    }

    /// Hands each frame whose flow another worker owns over to it, with its
    /// parse; the frames left are moved to the front of `slots` (and of
    /// `self.parsed`), their facts into `meta_k` and `ports_k`. Returns how
    /// many are left.
    fn hand_off(
        &mut self,
        slots: &mut [Slot<'_>],
        meta: &[RxMeta],
        ports: &[u32],
        rt: &Runtime,
        meta_k: &mut [RxMeta; BURST],
        ports_k: &mut [u32; BURST],
    ) -> usize {
        let workers = u16::try_from(self.shared.workers.len()).unwrap_or(1);
        let me = u16::try_from(self.id).unwrap_or(0);
        let mut k = 0;
        for i in 0..slots.len() {
            let (p, r) = &self.parsed[i];
            let rss = self
                .shared
                .port_rss
                .get(ports[i] as usize)
                .and_then(Option::as_deref);
            let owner = r
                .is_ok()
                .then(|| frame_owner_on(&rt.snap, slots[i].data(), p, workers, rss))
                .flatten();
            match owner {
                Some(o) if o != me => {
                    self.report.handoff_out += 1;
                    let parsed = self.parsed[i];
                    let handed =
                        std::mem::take(&mut slots[i])
                            .into_buf(&self.out.pool)
                            .map(|buf| Handoff {
                                buf,
                                meta: meta[i],
                                port: ports[i],
                                parsed,
                            });
                    let queued = handed.is_some_and(|h| {
                        self.shared.workers[usize::from(o)].handoff.push(h).is_ok()
                    });
                    if !queued {
                        self.report.handoff_dropped += 1;
                    }
                }
                _ => {
                    slots.swap(k, i);
                    self.parsed.swap(k, i);
                    meta_k[k] = meta[i];
                    ports_k[k] = ports[i];
                    k += 1;
                }
            }
        }
        k
    }

    /// Acts on frame `i`'s verdict.
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        i: usize,
        v: Verdict,
        mut frame: Slot<'_>,
        port: u32,
        csum_partial: bool,
        rt: &Runtime,
        now: Instant,
    ) {
        if let Verdict::Local(kind) = v {
            if self.exception_up(i, kind, frame.data(), port, csum_partial) == Up::Kernel {
                return;
            }
        }
        let snap = &rt.snap;
        let mac = self
            .out
            .macs
            .get(port as usize)
            .copied()
            .unwrap_or_default();
        match v {
            Verdict::Forward(f) => {
                self.out.forward(&f, frame, &self.shared.neigh, snap, now);
            }
            Verdict::Send(f) => {
                // An answer the pipeline built (the SYN proxy's) goes out
                // instead of the received frame, which is freed.
                drop(frame);
                let built = Slot::Lent(self.core.built_mut(i));
                self.out.forward(&f, built, &self.shared.neigh, snap, now);
            }
            Verdict::Local(LocalKind::ToSelf) => {
                let _ = self.shared.health_tx.try_send(frame.data().to_vec());
            }
            Verdict::Local(kind) => {
                let data = frame.data_mut();
                let Ok(p) = lb_core::packet::parse(data) else {
                    return;
                };
                if let Some(reply) =
                    crate::l2::answer(data, kind, &p, port, mac, snap, &self.shared.neigh, now)
                {
                    self.out.send(port, &reply, snap);
                }
            }
            Verdict::Drop(Reason::NoSessionReset) => {
                // Back where it came from, to the sender's MAC address.
                let data = frame.data();
                let Ok(p) = lb_core::packet::parse(data) else {
                    return;
                };
                if let Some(rst) =
                    lb_core::packet::build_tcp_reset(data, &p, lb_core::packet::MacAddr(mac))
                {
                    self.out.send(port, &rst, snap);
                }
            }
            Verdict::Drop(r) => {
                self.icmp
                    .answer(&r, frame.data(), port, mac, snap, now, &mut self.out);
            }
        }
    }

    /// Puts a copy of frame `i` (`data`, left to the data plane as `kind`)
    /// on the queue to the kernel of `port`'s exception path if it goes up
    /// ([`crate::exception::classify`]); says whether it did, and whether
    /// the data plane is to handle the frame as well.
    fn exception_up(
        &mut self,
        i: usize,
        kind: LocalKind,
        data: &[u8],
        port: u32,
        csum_partial: bool,
    ) -> Up {
        let exc = &mut self.exc;
        let Some(ep) = exc.paths.port(port as usize) else {
            return Up::No;
        };
        let Some((p, Ok(()))) = self.parsed.get(i) else {
            return Up::No;
        };
        let Some(plan) = exc.plan.get(port as usize) else {
            return Up::No;
        };
        let facts = PortFacts {
            addresses: &plan.addresses,
            link_local: ep.link_local,
            probed: &plan.probed,
        };
        let up = crate::exception::classify(data, p, kind, &facts);
        if up != Up::No {
            ep.push_up(data, p, csum_partial);
            exc.queued = true;
        }
        up
    }

    /// Takes the exception path's view of `snap` when it is new (outside
    /// the forwarding path: it allocates, once per configuration).
    fn exception_plan(&mut self, snap: &Snapshot) {
        if self.exc.generation != snap.generation {
            self.exc.generation = snap.generation;
            if self.exc.paths.any() {
                self.exc.plan = crate::exception::plan(snap, &self.exc.paths);
            }
        }
    }

    /// Sends what the kernel wrote to the TAPs of the ports whose
    /// exception path this worker serves (port index modulo the number of
    /// workers: one worker per port keeps the kernel's frames in order),
    /// at most a burst per port.
    fn send_from_kernel(&mut self, snap: &Snapshot) {
        let workers = self.shared.workers.len().max(1);
        for (pi, ep) in self.exc.paths.ports.iter().enumerate() {
            let Some(ep) = ep else { continue };
            if pi % workers != self.id {
                continue;
            }
            let Some(tx) = self.out.tx.get_mut(pi) else {
                continue;
            };
            let vlan = port_vlan(snap, u32::try_from(pi).unwrap_or(u32::MAX));
            for _ in 0..BURST {
                let Some(mut buf) = ep.pop_down() else { break };
                let sent = if buf.retag(vlan) {
                    tx.send(buf.data())
                } else {
                    tx.send(crate::l2::for_port(buf.data(), vlan, &mut self.out.scratch))
                };
                let counter = if sent {
                    &ep.counters.from_kernel
                } else {
                    &ep.counters.drops
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn solicit(&mut self, port: u32, next_hop: IpAddr) {
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
        let Some(mac) = self.out.macs.get(port as usize).copied() else {
            return;
        };
        let frame = crate::l2::solicit(mac, src, next_hop);
        self.out.send(port, &frame, &rt.snap);
    }

    /// Sends the parked frames whose next hop is now known; drops those
    /// that waited too long (counted).
    fn retry_pending(&mut self, snap: &Snapshot) {
        if self.out.pending.is_empty() {
            return;
        }
        let now = Instant::now();
        for _ in 0..self.out.pending.len() {
            let Some(mut p) = self.out.pending.pop_front() else {
                break;
            };
            if let Some(e) = self.shared.neigh.lookup(p.port, p.next_hop, now) {
                let src = self
                    .out
                    .macs
                    .get(p.port as usize)
                    .copied()
                    .unwrap_or_default();
                crate::l2::set_macs(p.frame.data_mut(), e.mac, src);
                self.out.send_slot(p.port, Slot::Owned(p.frame), snap);
            } else if now.duration_since(p.since) > PENDING_WAIT {
                self.out.neighbor_unresolved += 1;
            } else {
                self.out.pending.push_back(p);
            }
        }
    }
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
        out: &mut Egress,
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
            out.send(port, &self.buf, snap);
            self.sent += 1;
        }
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
