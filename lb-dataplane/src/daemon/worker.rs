//! The poll-mode worker: reads bursts from its queues of every port, runs
//! them through the pipeline and sends, answers or parks each frame.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_core::model::IdlePolicy;
use lb_core::pipeline::{
    frame_owner_on, Frame, Reason, Released, RxInfo, Snapshot, Verdict, Worker,
};

use super::{Handoff, Runtime, Shared, WorkerReport, BURST};
use crate::io::{PacketIo, RxMeta};
use crate::l2::port_vlan;
use crate::neigh::REFRESH;

/// Frames waiting for a neighbour to answer, per worker.
const PENDING_MAX: usize = 256;

/// How long a frame waits for its next hop to be resolved.
const PENDING_WAIT: Duration = Duration::from_secs(1);

/// ICMP errors (time exceeded, fragmentation needed, packet too big) one
/// worker sends per second at most, after a burst of [`ICMP_ERROR_BURST`]
/// (Linux: 1000 a second for the host, bursts of 50).
const ICMP_ERRORS_PER_SEC: u64 = 200;
const ICMP_ERROR_BURST: u64 = 50;

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
pub(super) struct WorkerLoop {
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
    pub(super) fn new(
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

    /// Maps the session table before traffic, not page by page under it.
    pub(super) fn prefault(&mut self) {
        self.core.prefault();
    }

    /// Takes the ports' MTUs as the MTU watcher last read them.
    fn sync_mtus(&mut self) {
        for (pi, mtu) in self.shared.port_mtu.iter().enumerate() {
            self.core.set_port_mtu(pi, mtu.load(Ordering::Relaxed));
        }
    }

    pub(super) fn run(mut self) {
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
        // IP fragments that waited for their first fragment go now.
        let (shared, macs) = (&self.shared, &self.macs);
        self.core.take_released(|frame, rx, r| {
            let port = rx.port.unwrap_or(0);
            match r {
                Released::Forward(f) => deliver(
                    Verdict::Forward(f),
                    shared,
                    rt,
                    frame,
                    port,
                    macs,
                    now,
                    &mut tx,
                    &mut to_self,
                    &mut wait,
                ),
                Released::Owner(o) => {
                    let meta = RxMeta {
                        csum_partial: rx.csum_partial,
                        ..RxMeta::default()
                    };
                    let h = Handoff {
                        frame: frame.to_vec(),
                        meta,
                        port,
                    };
                    if let Some(w) = shared.workers.get(usize::from(o)) {
                        let _ = w.handoff.push(h);
                    }
                }
            }
        });
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
