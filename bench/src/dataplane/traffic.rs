//! `bench dataplane-traffic`: the client side and the backends of the
//! data-path benchmark, in one DPDK process on one core.
//!
//! Port 0 faces the device's client-side port: TCP frames to the VIP go
//! out there, and what comes back (the backends' answers, translated back
//! by the device) is counted there. Port 1 faces the device's backend-side
//! port and plays every backend: each stamped frame that arrives is
//! counted and sent back with its 5-tuple, MACs, sequence numbers swapped
//! the way the backend's TCP would answer (a SYN gets a SYN-ACK), so the
//! device forwards both directions. Both ports answer ARP for the client
//! and backend addresses. Frames carry the stamp of `bench gen` (class,
//! sequence number, send time), which the device's FULLNAT leaves alone.
//!
//! Phases, each for `--duration`: `est` (established flows, flat out),
//! `new` (SYNs of new flows, flat out), `deny` (SYNs to the denied port,
//! flat out), `lat` (established flows at half the rate `est` delivered:
//! loss and latency). Before them a warm-up opens the established flows
//! (their SYNs, resent until each SYN-ACK came back). One line per phase
//! goes to stdout (see [`super::PhaseResult`]).
//!
//! With several queues per port, both sides do what a NIC's RSS would
//! (memif has none): each frame goes out on the queue that the symmetric
//! Toeplitz hash of its 4-tuple selects through an even table
//! (`RssSteering::software`, as lbd's `dpdk_rss = "software"` expects),
//! the clients' frames as well as the backends' answers.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use lb_core::nat::rss::RssSteering;
use lb_core::packet::checksum;
use lb_dataplane::io::dpdk::{Eal, Mempool};

use super::port::{self, Port, RawMbuf, BURST};
use super::{PhaseResult, TrafficArgs};
use crate::gen::{self, answer_neighbor, Class, Mix, Opts, Pacer, Rng, Stamp, Templates};

/// Frame length: the shortest Ethernet frame, IPv4 and TCP headers and
/// the stamp.
const FRAME: usize = 64;
/// Frames per TX burst and queue.
const TX_BURST: usize = 32;
/// Most queue pairs per port.
pub const MAX_QUEUES: usize = 8;
/// Warm-up rounds (resending SYNs whose SYN-ACK did not come back).
const WARMUP_ROUNDS: usize = 8;
/// How long the receivers keep counting after a phase's last frame.
const DRAIN: Duration = Duration::from_millis(100);

const TCP_SYN: u8 = 0x02;
const TCP_FIN: u8 = 0x01;
const TCP_ACK: u8 = 0x10;

/// An untagged IPv4 TCP frame without IP or TCP options, of at least 60
/// bytes: what [`reflect`] answers.
fn is_plain_tcp4(f: &[u8]) -> bool {
    f.len() >= 60 && f[12..14] == [8, 0] && f[14] == 0x45 && f[23] == 6 && f[46] >> 4 == 5
}

/// The stamp of an IPv4 TCP frame without options (what the generator
/// sends), read at fixed offsets; anything else is not ours.
fn fast_stamp(f: &[u8]) -> Option<Stamp> {
    if f.len() < 64 || !is_plain_tcp4(f) {
        return None;
    }
    Stamp::read(&f[54..])
}

fn swap<const N: usize>(f: &mut [u8], a: usize, b: usize) {
    let mut t = [0u8; N];
    t.copy_from_slice(&f[a..a + N]);
    f.copy_within(b..b + N, a);
    f[b..b + N].copy_from_slice(&t);
}

fn be32(f: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]])
}

/// Turns an IPv4 TCP frame (no options, checked by [`fast_stamp`]) into
/// the answer of its destination: MACs, addresses and ports swapped; a SYN
/// answered by a SYN-ACK (initial sequence number 0), any other segment by
/// one that acknowledges it. The checksums are updated, not recomputed.
fn reflect(f: &mut [u8]) {
    swap::<6>(f, 0, 6);
    swap::<4>(f, 26, 30);
    swap::<2>(f, 34, 36);
    let (seq, ack) = (be32(f, 38), be32(f, 42));
    let flags = f[47];
    let ip_len = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let payload = ip_len.saturating_sub(40) as u32;
    let (nseq, nack, nflags) = if flags & TCP_SYN != 0 && flags & TCP_ACK == 0 {
        (0, seq.wrapping_add(1), TCP_SYN | TCP_ACK)
    } else {
        let fin = u32::from(flags & (TCP_SYN | TCP_FIN) != 0);
        (ack, seq.wrapping_add(payload + fin), flags)
    };
    let mut c = u16::from_be_bytes([f[50], f[51]]);
    c = checksum::update32(c, seq, nseq);
    c = checksum::update32(c, ack, nack);
    c = checksum::update16(c, u16::from(flags), u16::from(nflags));
    f[38..42].copy_from_slice(&nseq.to_be_bytes());
    f[42..46].copy_from_slice(&nack.to_be_bytes());
    f[47] = nflags;
    f[50..52].copy_from_slice(&c.to_be_bytes());
}

/// Counters of one phase.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    sent: [u64; gen::CLASSES],
    tx_full: [u64; gen::CLASSES],
    /// Arrived at the backends (port 1).
    fwd: [u64; gen::CLASSES],
    /// Came back to the clients (port 0).
    rev: [u64; gen::CLASSES],
    /// Answers the backends could not send (port 1's TX ring full).
    reflect_full: u64,
}

/// How frames are spread over the queues of a port: by software RSS
/// with several queues, all on queue 0 with one.
struct Spread {
    rss: Option<RssSteering>,
}

impl Spread {
    fn new(queues: u16) -> Result<Spread> {
        if usize::from(queues) > MAX_QUEUES {
            bail!("at most {MAX_QUEUES} queues per port");
        }
        let identity: Vec<u16> = (0..queues).collect();
        let rss = (queues > 1)
            .then(|| RssSteering::software(queues, &identity))
            .transpose()
            .map_err(|e| anyhow::anyhow!("software RSS: {e}"))?;
        Ok(Spread { rss })
    }

    /// The queue of an IPv4 TCP frame without options (what
    /// [`is_plain_tcp4`] accepts): its 4-tuple is bytes 26..38.
    #[inline]
    fn queue(&self, f: &[u8]) -> u16 {
        match &self.rss {
            Some(r) if f.len() >= 38 => r.worker_of_hash(r.hash_input(&f[26..38])),
            _ => 0,
        }
    }
}

/// Mbufs staged per queue, sent a queue at a time.
struct Staged {
    bufs: [[RawMbuf; BURST]; MAX_QUEUES],
    len: [usize; MAX_QUEUES],
}

impl Staged {
    fn new() -> Staged {
        Staged {
            bufs: [[std::ptr::null_mut(); BURST]; MAX_QUEUES],
            len: [0; MAX_QUEUES],
        }
    }

    fn push(&mut self, q: u16, m: RawMbuf) {
        let q = usize::from(q);
        self.bufs[q][self.len[q]] = m;
        self.len[q] += 1;
    }

    /// Sends every queue's mbufs on `port`; returns how many the TX rings
    /// did not take (freed).
    fn send(&mut self, port: &Port) -> usize {
        let mut full = 0;
        for q in 0..usize::from(port.queues) {
            let n = std::mem::take(&mut self.len[q]);
            let sent = port.tx(q as u16, &mut self.bufs[q][..n]);
            full += n - sent;
        }
        full
    }
}

/// Answers an ARP request (or neighbour solicitation) for one of `own`
/// on queue 0 of `port`.
fn answer(pool: &Mempool, port: &Port, frame: &[u8], own: &HashSet<IpAddr>) -> bool {
    let Some(reply) = answer_neighbor(frame, own, port.mac) else {
        return false;
    };
    let mut m: [RawMbuf; 1] = [std::ptr::null_mut()];
    if port::alloc(pool, &mut m) {
        // SAFETY: a fresh mbuf we own, used only here before it is sent.
        if let Some(buf) = unsafe { port::append(m[0], reply.len()) } {
            buf.copy_from_slice(&reply);
        }
        port.tx(0, &mut m);
    }
    true
}

struct Traffic {
    pool: Mempool,
    ext: Port,
    int: Port,
    tpl: Templates,
    sources: Vec<IpAddr>,
    clients: HashSet<IpAddr>,
    backends: HashSet<IpAddr>,
    run: u8,
    epoch: Instant,
    flows: u64,
    tuples: u64,
    new_next: u64,
    deny_next: u64,
    seq: u32,
    rng: Rng,
    spread: Spread,
    /// Queue of each established flow's frames.
    flow_q: Vec<u8>,
    c: Counts,
    /// Round trip client -> device -> backend -> device -> client, ns.
    rtt: Histogram<u64>,
    /// One way, client -> device -> backend, ns.
    one_way: Histogram<u64>,
    opened: Vec<u64>,
    neighbor_replies: u64,
    other: u64,
}

/// Client ports of generated flows start here (as in `bench gen`).
const PORT_BASE: u64 = 1024;
const PORTS: u64 = 65536 - PORT_BASE;

impl Traffic {
    /// Client address and port of flow `i`.
    fn tuple(&self, i: u64) -> (IpAddr, u16) {
        let n = self.sources.len() as u64;
        let i = i % self.tuples;
        (self.sources[(i % n) as usize], (PORT_BASE + i / n) as u16)
    }

    /// Builds up to `n` frames of `class` (the warm-up: the SYNs of
    /// `todo[*cursor..]`) and sends each on its queue of port 0.
    fn send(&mut self, class: Class, n: usize, warm: Option<(&[u64], &mut usize)>) {
        let mut bufs: [RawMbuf; TX_BURST] = [std::ptr::null_mut(); TX_BURST];
        let mut staged = Staged::new();
        let n = match &warm {
            Some((todo, cursor)) => n.min(todo.len() - **cursor),
            None => n,
        }
        .min(TX_BURST);
        if n == 0 || !port::alloc(&self.pool, &mut bufs[..n]) {
            return;
        }
        let tx_ns = self.epoch.elapsed().as_nanos() as u32;
        let mut warm = warm;
        for &m in &bufs[..n] {
            let (flow, seq) = match class {
                Class::Warmup => {
                    let (todo, cursor) = warm.as_mut().expect("warm-up flows");
                    let f = todo[**cursor];
                    **cursor += 1;
                    (f, f as u32)
                }
                Class::Established => (self.rng.below(self.flows), self.seq),
                Class::New => {
                    self.new_next += 1;
                    (self.flows + self.new_next, self.seq)
                }
                Class::Denied => {
                    self.deny_next += 1;
                    (self.deny_next, self.seq)
                }
            };
            if class != Class::Warmup {
                self.seq = self.seq.wrapping_add(1);
            }
            let (src, sport) = self.tuple(flow);
            let stamp = Stamp {
                run: self.run,
                class,
                seq,
                tx_ns,
            };
            // SAFETY: a fresh mbuf we own, used only here before it is sent.
            let q = match unsafe { port::append(m, FRAME) } {
                Some(buf) => {
                    self.tpl.fill(buf, src, sport, &stamp);
                    match (class, self.flow_q.get(flow as usize)) {
                        (Class::Warmup | Class::Established, Some(&q)) => u16::from(q),
                        _ => self.spread.queue(buf),
                    }
                }
                None => 0,
            };
            staged.push(q, m);
        }
        let full = staged.send(&self.ext);
        self.c.sent[class as usize] += (n - full) as u64;
        self.c.tx_full[class as usize] += full as u64;
    }

    /// Reflects what reached the backends and counts what came back to the
    /// clients; latencies are recorded for frames of class `measure`.
    /// Returns frames seen.
    fn poll(&mut self, measure: Option<Class>) -> usize {
        let mut seen = 0;
        let mut bufs: [RawMbuf; BURST] = [std::ptr::null_mut(); BURST];
        let mut staged = Staged::new();
        for q in 0..self.int.queues {
            let n = self.int.rx(q, &mut bufs);
            seen += n;
            let now_ns = self.epoch.elapsed().as_nanos() as u32;
            for &m in &bufs[..n] {
                // SAFETY: a received mbuf we own until freed or sent below.
                let f = unsafe { port::data(m) };
                match fast_stamp(f) {
                    Some(s) if s.run == self.run => {
                        self.c.fwd[s.class as usize] += 1;
                        if measure == Some(s.class) {
                            self.one_way
                                .saturating_record(u64::from(now_ns.wrapping_sub(s.tx_ns)).max(1));
                        }
                        reflect(f);
                        staged.push(self.spread.queue(f), m);
                    }
                    _ => {
                        if !answer(&self.pool, &self.int, f, &self.backends) {
                            self.other += 1;
                        } else {
                            self.neighbor_replies += 1;
                        }
                        port::free(&mut [m]);
                    }
                }
            }
            self.c.reflect_full += staged.send(&self.int) as u64;
        }
        for q in 0..self.ext.queues {
            let n = self.ext.rx(q, &mut bufs);
            seen += n;
            let now_ns = self.epoch.elapsed().as_nanos() as u32;
            for &m in &bufs[..n] {
                // SAFETY: a received mbuf we own until freed below.
                let f = unsafe { port::data(m) };
                match fast_stamp(f) {
                    Some(s) if s.run == self.run => {
                        self.c.rev[s.class as usize] += 1;
                        if s.class == Class::Warmup {
                            let i = s.seq as usize;
                            if let Some(w) = self.opened.get_mut(i / 64) {
                                *w |= 1 << (i % 64);
                            }
                        } else if measure == Some(s.class) {
                            self.rtt
                                .saturating_record(u64::from(now_ns.wrapping_sub(s.tx_ns)).max(1));
                        }
                    }
                    _ => {
                        if answer(&self.pool, &self.ext, f, &self.clients) {
                            self.neighbor_replies += 1;
                        } else {
                            self.other += 1;
                        }
                    }
                }
            }
            port::free(&mut bufs[..n]);
        }
        seen
    }

    /// Polls for `d` without sending.
    fn idle(&mut self, d: Duration, measure: Option<Class>) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if self.poll(measure) == 0 {
                std::hint::spin_loop();
            }
        }
    }

    /// The queue of established flow `f`'s frames.
    fn flow_queue(&self, f: u64) -> u8 {
        let (src, sport) = self.tuple(f);
        let mut frame = [0u8; FRAME];
        let stamp = Stamp {
            run: self.run,
            class: Class::Established,
            seq: 0,
            tx_ns: 0,
        };
        self.tpl.fill(&mut frame, src, sport, &stamp);
        u8::try_from(self.spread.queue(&frame)).unwrap_or(0)
    }

    fn is_open(&self, f: u64) -> bool {
        self.opened[(f / 64) as usize] & (1 << (f % 64)) != 0
    }

    /// Opens the established flows: their SYNs, resent until the SYN-ACK
    /// came back. Returns how many are open.
    fn warm_up(&mut self, deadline: Instant) -> u64 {
        let mut todo: Vec<u64> = (0..self.flows).collect();
        for _ in 0..WARMUP_ROUNDS {
            let mut cursor = 0;
            // About a million SYNs a second at most: a warm-up, not a flood.
            let mut pacer = Pacer::new(Some(1_000_000), Instant::now());
            while cursor < todo.len() && Instant::now() < deadline {
                let n = pacer.grant(Instant::now());
                if n > 0 {
                    let t = std::mem::take(&mut todo);
                    self.send(Class::Warmup, n, Some((&t, &mut cursor)));
                    todo = t;
                }
                self.poll(None);
            }
            self.idle(Duration::from_millis(200), None);
            todo.retain(|&f| !self.is_open(f));
            if todo.is_empty() || Instant::now() >= deadline {
                break;
            }
        }
        self.flows - todo.len() as u64
    }

    /// One measured phase of `class` for `d`, flat out or at `rate` pps.
    fn phase(&mut self, name: &str, class: Class, rate: Option<u64>, d: Duration) -> PhaseResult {
        self.c = Counts::default();
        self.rtt.reset();
        self.one_way.reset();
        let start = Instant::now();
        let end = start + d;
        let mut pacer = Pacer::new(rate, start);
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            let n = pacer.grant(now);
            if n > 0 {
                self.send(class, n, None);
            }
            self.poll(Some(class));
        }
        let secs = start.elapsed().as_secs_f64();
        self.idle(DRAIN, Some(class));
        let i = class as usize;
        let q = |h: &Histogram<u64>, p: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(p) as f64 / 1e3
            }
        };
        PhaseResult {
            name: name.to_string(),
            secs,
            rate: rate.unwrap_or(0),
            sent: self.c.sent[i],
            tx_full: self.c.tx_full[i],
            fwd: self.c.fwd[i],
            rev: self.c.rev[i],
            reflect_full: self.c.reflect_full,
            rtt_us: [q(&self.rtt, 0.5), q(&self.rtt, 0.99), q(&self.rtt, 0.999)],
            one_way_us: [
                q(&self.one_way, 0.5),
                q(&self.one_way, 0.99),
                q(&self.one_way, 0.999),
            ],
        }
    }
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Only the backends, on port 0, until `--max-time`: every IPv4 TCP
/// frame (stamped or not, as another generator sends them) is answered
/// as a backend would, ARP for the backends' addresses too.
fn backends_only(a: &TrafficArgs) -> Result<()> {
    let eal_args: Vec<String> = a.eal.split_whitespace().map(str::to_string).collect();
    let _eal = Eal::init(&eal_args).context("initialising DPDK (see --eal)")?;
    let pool = Mempool::new("gen_pool", 16383, 256, Mempool::DEFAULT_DATA_ROOM, None)
        .context("creating the mempool")?;
    let port = Port::open(0, a.queues, &pool).context("port 0 (backend side)")?;
    let backends: HashSet<IpAddr> = a.backends.iter().copied().collect();
    let end = Instant::now() + a.max_time;
    let (mut reflected, mut answered, mut other) = (0u64, 0u64, 0u64);
    let mut bufs: [RawMbuf; BURST] = [std::ptr::null_mut(); BURST];
    let mut last = Instant::now();
    while Instant::now() < end {
        let mut seen = 0;
        for q in 0..port.queues {
            let n = port.rx(q, &mut bufs);
            seen += n;
            let mut keep = 0;
            for i in 0..n {
                let m = bufs[i];
                // SAFETY: a received mbuf we own until freed or sent below.
                let f = unsafe { port::data(m) };
                if is_plain_tcp4(f) {
                    reflect(f);
                    bufs[keep] = m;
                    keep += 1;
                    continue;
                }
                if answer(&pool, &port, f, &backends) {
                    answered += 1;
                } else {
                    other += 1;
                }
                port::free(&mut [m]);
            }
            reflected += port.tx(q, &mut bufs[..keep]) as u64;
        }
        if seen == 0 {
            // Idle: do not hold the core while nothing comes.
            std::thread::sleep(Duration::from_micros(50));
        }
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            println!(
                "backends: {reflected} answered, {answered} ARP replies, {other} other frames"
            );
        }
    }
    println!("backends: {reflected} answered, {answered} ARP replies, {other} other frames");
    drop(port);
    Ok(())
}

/// Runs the phases and prints one line each.
pub fn run(a: &TrafficArgs) -> Result<()> {
    if a.backends_only {
        return backends_only(a);
    }
    let deadline = Instant::now() + a.max_time;
    let eal_args: Vec<String> = a.eal.split_whitespace().map(str::to_string).collect();
    let _eal = Eal::init(&eal_args).context("initialising DPDK (see --eal)")?;
    let pool = Mempool::new("gen_pool", 32767, 256, Mempool::DEFAULT_DATA_ROOM, None)
        .context("creating the generator's mempool")?;
    let ext = Port::open(0, a.queues, &pool).context("port 0 (client side)")?;
    let int = Port::open(1, a.queues, &pool).context("port 1 (backend side)")?;
    let up_by = Instant::now() + Duration::from_secs(10).min(a.max_time);
    while !(ext.link_up() && int.link_up()) {
        if Instant::now() > up_by {
            bail!("the links did not come up within 10 s (is the device under test running?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let vip: IpAddr = a.vip;
    let opts = Opts {
        tx_iface: "dpdk0".into(),
        tx_netns: None,
        rx_iface: None,
        rx_netns: None,
        dst_mac: a.dst_mac,
        vip,
        port: a.port,
        deny_port: a.deny_port,
        mix: Mix::default(),
        flows: a.flows,
        rate: None,
        duration: a.duration,
        size: FRAME,
        src: a.src.clone(),
        drain: DRAIN,
        seed: 1,
    };
    opts.check()?;
    let sources = a.src.addresses(&[vip]);
    let mut fresh = Rng::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    let tuples = sources.len() as u64 * PORTS;
    let hist = || Histogram::<u64>::new_with_bounds(1, 60 * 1_000_000_000, 3);
    let mut t = Traffic {
        tpl: Templates::new(&opts, ext.mac),
        clients: sources.iter().copied().collect(),
        backends: a.backends.iter().copied().collect(),
        sources,
        run: (fresh.next() & 0x0f) as u8,
        epoch: Instant::now(),
        flows: a.flows as u64,
        tuples,
        new_next: fresh.below(tuples),
        deny_next: 0,
        seq: 0,
        rng: Rng::new(1),
        spread: Spread::new(a.queues)?,
        flow_q: Vec::new(),
        c: Counts::default(),
        rtt: hist()?,
        one_way: hist()?,
        opened: vec![0; a.flows.div_ceil(64)],
        neighbor_replies: 0,
        other: 0,
        pool,
        ext,
        int,
    };
    t.flow_q = (0..t.flows).map(|f| t.flow_queue(f)).collect();
    println!(
        "links up: client side {} ({} queue(s)), backend side {}",
        mac_str(t.ext.mac),
        t.ext.queues,
        mac_str(t.int.mac)
    );
    let warm_by = (Instant::now() + Duration::from_secs(10)).min(deadline);
    let opened = t.warm_up(warm_by);
    println!("warm-up: {opened} of {} established flows open", t.flows);
    let mut est_rate = None;
    for name in &a.phases {
        if Instant::now() + a.duration > deadline {
            bail!("out of time (--max-time {:?})", a.max_time);
        }
        let r = match name.as_str() {
            "est" => {
                let r = t.phase("est", Class::Established, None, a.duration);
                est_rate = Some(r.rev as f64 / r.secs);
                r
            }
            "new" => t.phase("new", Class::New, None, a.duration),
            "deny" => t.phase("deny", Class::Denied, None, a.duration),
            "lat" => {
                let Some(max) = est_rate else {
                    bail!("phase lat needs phase est before it");
                };
                let rate = ((max * a.lat_share) as u64).max(1000);
                t.phase("lat", Class::Established, Some(rate), a.duration)
            }
            other => bail!("unknown phase {other:?} (est, new, deny, lat)"),
        };
        println!("{}", r.to_line());
    }
    let (ei, eo, em, en) = t.ext.counters();
    let (ii, io, im, inb) = t.int.counters();
    println!(
        "generator ports: client side rx {ei} tx {eo} missed {em} nombuf {en}; backend side rx {ii} tx {io} missed {im} nombuf {inb}; neighbour replies {}; other frames {}",
        t.neighbor_replies, t.other
    );
    // Ports before the pool, the pool before the EAL.
    drop(t);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::packet;

    #[test]
    fn reflect_answers_like_a_backend() {
        let o = Opts {
            tx_iface: "x".into(),
            tx_netns: None,
            rx_iface: None,
            rx_netns: None,
            dst_mac: [2, 0, 0, 0, 0, 2],
            vip: "198.19.1.11".parse().expect("ip"),
            port: 80,
            deny_port: 81,
            mix: Mix::default(),
            flows: 10,
            rate: None,
            duration: Duration::from_secs(1),
            size: 64,
            src: "198.19.1.250/32".parse::<gen::SrcNet>().expect("net"),
            drain: DRAIN,
            seed: 1,
        };
        let t = Templates::new(&o, [2, 0, 0, 0, 0, 1]);
        let src: IpAddr = "198.19.1.250".parse().expect("ip");
        for class in [Class::Warmup, Class::Established] {
            let stamp = Stamp {
                run: 3,
                class,
                seq: 7,
                tx_ns: 99,
            };
            let mut f = vec![0u8; 64];
            t.fill(&mut f, src, 40000, &stamp);
            let before = packet::parse(&f).expect("parses");
            let (seq, ack) = (be32(&f, 38), be32(&f, 42));
            reflect(&mut f);
            let p = packet::parse(&f).expect("parses");
            assert_eq!((p.src, p.sport), (before.dst, before.dport));
            assert_eq!((p.dst, p.dport), (before.src, before.sport));
            assert_eq!(f[0..6], [2, 0, 0, 0, 0, 1]);
            assert!(packet::verify_l4_checksum(&f, &p), "{class:?}");
            assert_eq!(checksum::checksum(&f[14..34]), 0);
            assert_eq!(fast_stamp(&f), Some(stamp));
            if class == Class::Warmup {
                assert_eq!(f[47], TCP_SYN | TCP_ACK);
                assert_eq!((be32(&f, 38), be32(&f, 42)), (0, seq + 1));
            } else {
                assert_eq!((be32(&f, 38), be32(&f, 42)), (ack, seq + 10));
            }
        }
    }
}
