//! `bench pipeline`: the per-core fast path without I/O. Pre-built frames
//! run through the real worker code (`lb_core::pipeline::Worker::process`:
//! parse, session lookup, classifier on a miss, scheduling, NAT rewrite with
//! checksum update), and each forwarded frame is copied into a 32-frame TX
//! batch as a port would. One thread, one core.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Instant;

use lb_core::conntrack::SessionTable;
use lb_core::model::*;
use lb_core::nat::rss::{symmetric_key, RssSteering};
use lb_core::nat::PortAllocator;
use lb_core::packet::{build_frame, FrameSpec, MacAddr};
use lb_core::pipeline::{
    frame_owner_on, AllUp, Flow, Frame, Reason, RxInfo, Snapshot, Verdict, Worker,
};
use lb_core::NANOS_PER_SEC;

/// Local (FULLNAT source) addresses: each gives ~60 000 ports, so 200 of
/// them carry the 10 M sessions of `--big`.
const LOCALS: u32 = 200;

/// How the benchmark is run.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Session counts of the established scenarios.
    pub sessions: Vec<usize>,
    /// Packets per timed scenario.
    pub packets: usize,
    /// Also measure a table of this many sessions (0: skip).
    pub big: usize,
    /// Run the new-connection scenarios.
    pub new_connections: bool,
}

/// A load balancer with an allowed listener (80) and a denied one (81),
/// two backends, and enough local addresses for millions of sessions.
fn config(v6: bool) -> Config {
    let a = |s: &str| -> IpAddr { s.parse().expect("address") };
    let mut cfg = Config::default();
    cfg.ports.push(Port {
        name: "ext".into(),
        interface: Some("ext".into()),
        dpdk_port: None,
        addresses: vec![
            "198.18.0.1/15".parse().expect("net"),
            "2001:db8::1/32".parse().expect("net"),
        ],
        source_check: SourceCheck::Strict,
        vlan: None,
        max_neighbors: Port::DEFAULT_MAX_NEIGHBORS,
        tap: None,
    });
    cfg.security_groups.push(SecurityGroup {
        id: "sg-alb".into(),
        kind: GroupKind::Basic {
            internal_access: true,
        },
        rules: [(Action::Allow, 80), (Action::Deny, 81)]
            .into_iter()
            .flat_map(|(action, port)| {
                ["0.0.0.0/0", "::/0"].into_iter().map(move |src| Rule {
                    direction: Direction::Ingress,
                    action,
                    priority: 1,
                    protocol: Some(proto::TCP),
                    ports: vec![PortRange::single(port)],
                    port_list: None,
                    peer: Peer::Cidr(src.parse().expect("net")),
                    local: None,
                    source_ports: PortRange::ANY,
                    description: String::new(),
                    line: 0,
                })
            })
            .collect(),
    });
    cfg.subnets.push(Subnet {
        id: "vsw".into(),
        cidrs: vec![
            "198.19.0.0/16".parse().expect("net"),
            "2001:db8:19::/48".parse().expect("net"),
        ],
        network_acl: None,
    });
    let servers = (1..=2)
        .map(|i| Server {
            name: format!("ecs0{i}"),
            instance: None,
            addresses: vec![
                a(&format!("198.19.1.1{i}")),
                a(&format!("2001:db8:19:1::1{i}")),
            ],
            port: 80,
            weight: 100,
            draining: false,
        })
        .collect();
    cfg.server_groups.push(ServerGroup {
        id: "sgp".into(),
        scheduler: SchedulerKind::Wrr,
        health_check: HealthCheck::default(),
        servers,
        slow_start_ms: 0,
        drain_timeout_ms: None,
    });
    let locals = (0..LOCALS)
        .map(|i| {
            if v6 {
                a(&format!("2001:db8:19:2::{:x}", i + 1))
            } else {
                a(&format!("198.19.{}.{}", 2 + i / 250, i % 250 + 1))
            }
        })
        .collect();
    cfg.load_balancers.push(LoadBalancer {
        id: "alb-1".into(),
        vips: vec![a("198.18.0.10"), a("2001:db8:18::10")],
        security_groups: vec![0],
        local_addresses: locals,
        listeners: [80, 81]
            .into_iter()
            .map(|port| Listener {
                protocol: ListenerProtocol::Http,
                port,
                server_group: 0,
                transfer_client_ip: false,
                acl: None,
                // Measures the session path: a run of SYNs that never
                // complete would engage the SYN proxy under "auto".
                syn_proxy: lb_core::model::SynProxyMode::Off,
                syn_proxy_threshold: lb_core::model::DEFAULT_SYN_PROXY_THRESHOLD,
                limits: lb_core::model::ListenerLimits::default(),
                access_log: None,
            })
            .collect(),
    });
    cfg
}

/// The client of flow `i`: addresses over 198.18.128.0/17 (or an IPv6 /64),
/// 16 000 ports each.
fn client(i: usize, v6: bool) -> (IpAddr, u16) {
    let host = u32::try_from(i / 16_000).expect("fewer than 2^32 flows");
    let port = 40_000 + u16::try_from(i % 16_000).expect("below 16000");
    let addr = if v6 {
        IpAddr::from(std::net::Ipv6Addr::from(
            (0x2001_0db8_0018_0001_u128 << 64) | u128::from(host + 2),
        ))
    } else {
        IpAddr::from(std::net::Ipv4Addr::from(
            u32::from_be_bytes([198, 18, 128, 0]) + host + 2,
        ))
    };
    (addr, port)
}

fn frame(i: usize, v6: bool, dport: u16, flags: u8) -> Vec<u8> {
    let (src, sport) = client(i, v6);
    let dst: IpAddr = if v6 {
        "2001:db8:18::10".parse().expect("v6")
    } else {
        "198.18.0.10".parse().expect("v4")
    };
    build_frame(&FrameSpec {
        src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
        src,
        dst,
        proto: proto::TCP,
        sport,
        dport,
        tcp_flags: flags,
        tcp_seq: 1,
        tcp_ack: 1,
        ttl: 64,
        ..FrameSpec::default()
    })
}

/// Every frame arrives on the one port, which checks its sources.
const RX: RxInfo = RxInfo {
    csum_partial: false,
    port: Some(0),
};

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// A tiny deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n).expect("fits")).expect("below n")
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Flow indices drawn with a Zipf distribution (s = 1.0) over `n` flows.
fn zipf_trace(n: usize, len: usize, rng: &mut Rng) -> Vec<u32> {
    let mut cdf = Vec::with_capacity(n);
    let mut acc = 0.0f64;
    for k in 1..=n {
        acc += 1.0 / k as f64;
        cdf.push(acc);
    }
    (0..len)
        .map(|_| {
            let x = rng.unit() * acc;
            let i = cdf.partition_point(|&c| c < x).min(n - 1);
            u32::try_from(i).expect("flows fit in u32")
        })
        .collect()
}

/// A port's TX batch: forwarded frames are copied in, and the batch is
/// "sent" (reset) when full.
struct TxBatch {
    slots: Vec<[u8; 128]>,
    lens: Vec<usize>,
    sent: u64,
}

impl TxBatch {
    fn new() -> TxBatch {
        TxBatch {
            slots: vec![[0u8; 128]; 32],
            lens: Vec::with_capacity(32),
            sent: 0,
        }
    }

    fn push(&mut self, frame: &[u8]) {
        let i = self.lens.len();
        let n = frame.len().min(128);
        self.slots[i][..n].copy_from_slice(&frame[..n]);
        self.lens.push(n);
        if self.lens.len() == 32 {
            black_box(&self.slots);
            self.sent += 32;
            self.lens.clear();
        }
    }
}

/// Runs `trace` (indices into `frames`) through `worker`, `burst` frames
/// at a time; returns ns/packet and how many were forwarded. The frames of
/// each chunk of the trace are first laid out one after another, as a NIC
/// leaves them in its RX ring (not timed), so the timing covers the
/// pipeline, not the gathering of random templates.
fn run_trace(
    worker: &mut Worker,
    snap: &Snapshot,
    frames: &[Vec<u8>],
    trace: &[u32],
    start_ns: u64,
    burst: usize,
) -> (f64, u64) {
    const CHUNK: usize = 16_384;
    const SLOT: usize = 128;
    let mut ring = vec![0u8; CHUNK * SLOT];
    let mut lens = vec![0usize; CHUNK];
    let mut tx = TxBatch::new();
    let mut forwarded = 0u64;
    let mut verdicts = [Verdict::Drop(Reason::NoSession); 64];
    let mut elapsed = std::time::Duration::ZERO;
    let mut n = 0u64;
    for chunk in trace.chunks(CHUNK) {
        for (j, &i) in chunk.iter().enumerate() {
            let f = &frames[i as usize];
            ring[j * SLOT..j * SLOT + f.len()].copy_from_slice(f);
            lens[j] = f.len();
        }
        let t0 = Instant::now();
        let mut slots = ring.chunks_mut(SLOT);
        let mut j = 0;
        while j < chunk.len() {
            let k = burst.min(chunk.len() - j);
            let now = start_ns + n;
            n += k as u64;
            if burst == 1 {
                let slot = slots.next().expect("one slot per frame");
                let frame = &mut slot[..lens[j]];
                if let Verdict::Forward(_) = worker.process(frame, RX, now, snap, &AllUp) {
                    forwarded += 1;
                    tx.push(frame);
                }
            } else {
                let mut batch: Vec<Frame<'_>> = slots
                    .by_ref()
                    .take(k)
                    .zip(&lens[j..j + k])
                    .map(|(slot, &len)| Frame {
                        data: &mut slot[..len],
                        rx: RX,
                    })
                    .collect();
                let done = worker.process_burst(&mut batch, now, snap, &AllUp, &mut verdicts);
                for (f, v) in batch.iter().zip(&verdicts[..done]) {
                    if let Verdict::Forward(_) = v {
                        forwarded += 1;
                        tx.push(f.data);
                    }
                }
            }
            j += k;
        }
        elapsed += t0.elapsed();
    }
    black_box(tx.sent);
    (elapsed.as_nanos() as f64 / trace.len() as f64, forwarded)
}

fn report(name: &str, ns: f64, forwarded: u64, packets: usize, extra: &str) {
    println!(
        "{name:<44} {ns:>8.1} ns/pkt {:>7.2} Mpps  forwarded {:>5.1} %{extra}",
        1e3 / ns,
        100.0 * forwarded as f64 / packets as f64
    );
}

/// A prefaulted worker with room for `n` sessions of the family (and a
/// little of the other).
fn worker_for(n: usize, v6: bool) -> Worker {
    let (v4, v6) = if v6 {
        (1024, n + 1024)
    } else {
        (n + 1024, 1024)
    };
    let mut w = Worker::new(0, 1, v4, v6);
    w.prefault();
    w
}

/// Opens `n` sessions with SYNs; returns the worker and how long it took.
fn open_sessions(snap: &Snapshot, n: usize, v6: bool) -> (Worker, f64) {
    let mut w = worker_for(n, v6);
    let mut buf = [0u8; 128];
    let t0 = Instant::now();
    for i in 0..n {
        let f = frame(i, v6, 80, SYN);
        buf[..f.len()].copy_from_slice(&f);
        let v = w.process(&mut buf[..f.len()], RX, 0, snap, &AllUp);
        assert!(
            matches!(v, Verdict::Forward(_)),
            "session {i} not admitted: {v:?}"
        );
    }
    (w, t0.elapsed().as_nanos() as f64 / n as f64)
}

/// New connections on worker 0 of 2, with local ports taken plainly from
/// its share and then steered by RSS (a 128-entry table, the symmetric
/// key): what steering adds to each new connection.
fn new_connections_steered(snap: &Snapshot, frames: &[Vec<u8>], trace: &[u32], v6: bool) {
    let fam = if v6 { "IPv6" } else { "IPv4" };
    let reta: Vec<u16> = (0..128).map(|i| i % 2).collect();
    let rss = std::sync::Arc::new(
        RssSteering::new(&symmetric_key(40), &reta, &[0, 1]).expect("a valid steering"),
    );
    let mut plain_ns = 0.0;
    for steered in [false, true] {
        let (v4_room, v6_room) = if v6 {
            (1024, frames.len() + 1024)
        } else {
            (frames.len() + 1024, 1024)
        };
        let mut w = Worker::new(0, 2, v4_room, v6_room);
        w.prefault();
        if steered {
            for pi in 0..snap.cfg.ports.len() {
                w.set_port_rss(pi, Some(rss.clone()));
            }
        }
        let (ns, fw) = run_trace(&mut w, snap, frames, trace, NANOS_PER_SEC, 32);
        let extra = if steered {
            format!("  (+{:.1} ns per connection for steering)", ns - plain_ns)
        } else {
            plain_ns = ns;
            String::new()
        };
        report(
            &format!(
                "{fam} new connections, worker 0 of 2, {} local ports",
                if steered { "RSS-steered" } else { "plain" }
            ),
            ns,
            fw,
            frames.len(),
            &extra,
        );
    }
    let (plain, steered) = port_choice_alone(&rss, v6);
    println!(
        "{fam} local port choice alone: plain {plain:.1} ns, RSS-steered {steered:.1} ns (+{:.1} ns per connection)",
        steered - plain
    );
    // What a worker pays per received frame to find its owner (a client
    // frame to the FULLNAT listener), without and with the port's RSS.
    let parsed: Vec<_> = frames
        .iter()
        .take(4096)
        .map(|f| lb_core::packet::parse(f).expect("a valid frame"))
        .collect();
    let mut best = [f64::MAX; 2];
    for _ in 0..5 {
        for (with_rss, best) in best.iter_mut().enumerate() {
            let rss = (with_rss == 1).then_some(rss.as_ref());
            let t0 = Instant::now();
            for _ in 0..100 {
                for (f, p) in frames.iter().zip(&parsed) {
                    black_box(frame_owner_on(snap, f, p, 2, rss));
                }
            }
            *best = best.min(t0.elapsed().as_nanos() as f64 / (100.0 * parsed.len() as f64));
        }
    }
    println!(
        "{fam} frame owner per received frame: {:.1} ns, with RSS {:.1} ns",
        best[0], best[1]
    );
}

/// The local port choice alone, plain and RSS-steered (worker 0 of 2,
/// random backends), each the best of 5 rounds of 1 M: the steering's own
/// cost, apart from the rest of a new connection.
fn port_choice_alone(rss: &RssSteering, v6: bool) -> (f64, f64) {
    const N: u32 = 1_000_000;
    let local: IpAddr = if v6 {
        "2001:db8:19::250".parse().expect("literal")
    } else {
        "198.19.0.250".parse().expect("literal")
    };
    let backend = |i: u32| -> IpAddr {
        if v6 {
            std::net::Ipv6Addr::from(0x2001_0db8_0019_0000_0000_0000_0000_0000u128 | u128::from(i))
                .into()
        } else {
            std::net::Ipv4Addr::from(0xc613_0000 | (i & 0xffff)).into()
        }
    };
    let mut best = [f64::MAX; 2];
    for _ in 0..5 {
        for (steered, best) in best.iter_mut().enumerate() {
            let mut ports = PortAllocator::new(0, 2);
            ports.prepare(local);
            let t0 = Instant::now();
            for i in 0..N {
                let lport = if steered == 1 {
                    let reply = rss.reply_hash(backend(i), 80, local).expect("one family");
                    ports.allocate_steered(local, |p| rss.lands_on(reply, p, 0), |_| true)
                } else {
                    black_box(backend(i));
                    ports.allocate(local, |_| true)
                };
                ports.release(local, black_box(lport).expect("a free port").port);
            }
            *best = best.min(t0.elapsed().as_nanos() as f64 / f64::from(N));
        }
    }
    (best[0], best[1])
}

/// The latency of one dependent random read in an array of `bytes`
/// (a pointer chase through a random cycle): the floor under a session
/// lookup whose index bucket and session are not in cache. With `chains`
/// independent chases interleaved, the time per read shows how many
/// misses the core keeps in flight (what a burst's staged lookups get).
fn memory_latency(bytes: usize) -> f64 {
    memory_read_time(bytes, 1)
}

fn memory_read_time(bytes: usize, chains: usize) -> f64 {
    let n = (bytes / 64).max(2);
    // A random cycle over cache lines (Sattolo's algorithm).
    let mut next: Vec<u64> = (0..n as u64).collect();
    let mut rng = Rng(0x2545_f491);
    for i in (1..n).rev() {
        let j = rng.below(i);
        next.swap(i, j);
    }
    let mut lines = vec![[0u64; 8]; n];
    for (i, l) in lines.iter_mut().enumerate() {
        l[0] = next[i];
    }
    drop(next);
    let steps = 2_000_000usize / chains;
    // Chains start far apart on the cycle.
    let mut at: Vec<usize> = (0..chains).map(|c| c * n / chains).collect();
    let t0 = Instant::now();
    for _ in 0..steps {
        for a in at.iter_mut() {
            *a = lines[*a][0] as usize;
        }
    }
    black_box(&at);
    t0.elapsed().as_nanos() as f64 / (steps * chains) as f64
}

pub fn run(opts: &Opts) {
    let biggest = opts
        .sessions
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(opts.big);
    if biggest > 0 {
        // The largest IPv4 table here: slots and index.
        let per_session =
            SessionTable::<Flow>::with_capacities(1024, 1024).bytes_per_session(false);
        let bytes = biggest * per_session;
        println!(
            "memory: one dependent random read costs {:.1} ns in 1 MiB, {:.1} ns in {} MiB (the size of the largest session table here); with 32 reads in flight, {:.1} ns per read",
            memory_latency(1 << 20),
            memory_latency(bytes),
            bytes >> 20,
            memory_read_time(bytes, 32),
        );
    }
    println!("bench pipeline: one core, no I/O; bursts of 32 frames from an RX ring in memory, forwarded frames copied to a 32-frame TX batch");
    for v6 in [false, true] {
        let fam = if v6 { "IPv6" } else { "IPv4" };
        let snap = Snapshot::compile(config(v6), 1);
        // The classifiers' final tables, as lbd computes them after a load.
        snap.refine();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

        for &n in &opts.sessions {
            let (mut w, insert_ns) = open_sessions(&snap, n, v6);
            let per_session = w.sessions.bytes_per_session(v6);
            let frames: Vec<Vec<u8>> = (0..n).map(|i| frame(i, v6, 80, ACK)).collect();
            let uniform: Vec<u32> = (0..opts.packets)
                .map(|_| u32::try_from(rng.below(n)).expect("fits"))
                .collect();
            let zipf = zipf_trace(n, opts.packets, &mut rng);
            // Warm up, then measure.
            run_trace(
                &mut w,
                &snap,
                &frames,
                &uniform[..opts.packets / 10],
                NANOS_PER_SEC,
                32,
            );
            let (ns1, _) = run_trace(&mut w, &snap, &frames, &uniform, 2 * NANOS_PER_SEC, 1);
            let (ns, fw) = run_trace(&mut w, &snap, &frames, &uniform, 2 * NANOS_PER_SEC, 32);
            report(
                &format!("{fam} established, {n} sessions, uniform"),
                ns,
                fw,
                opts.packets,
                &format!("  (one by one: {ns1:.1} ns/pkt; {per_session} B/session; open: {insert_ns:.0} ns/session)"),
            );
            let (ns, fw) = run_trace(&mut w, &snap, &frames, &zipf, 3 * NANOS_PER_SEC, 32);
            report(
                &format!("{fam} established, {n} sessions, Zipf"),
                ns,
                fw,
                opts.packets,
                "",
            );

            // 20 % of the packets are new connections to the denied port.
            let denied: Vec<Vec<u8>> = (0..4096).map(|i| frame(n + i, v6, 81, SYN)).collect();
            let mut all = frames;
            let base = u32::try_from(all.len()).expect("fits");
            all.extend(denied);
            let mix: Vec<u32> = uniform
                .iter()
                .map(|&i| {
                    if rng.below(5) == 0 {
                        base + u32::try_from(rng.below(4096)).expect("fits")
                    } else {
                        i
                    }
                })
                .collect();
            let (ns, fw) = run_trace(&mut w, &snap, &all, &mix, 4 * NANOS_PER_SEC, 32);
            report(
                &format!("{fam} mix: 80 % established, 20 % denied"),
                ns,
                fw,
                opts.packets,
                "",
            );
        }

        if !opts.new_connections {
            continue;
        }
        // New connections: every packet a SYN of a new flow.
        let n = opts.packets.min(2_000_000);
        let frames: Vec<Vec<u8>> = (0..n).map(|i| frame(i, v6, 80, SYN)).collect();
        let trace: Vec<u32> = (0..u32::try_from(n).expect("fits")).collect();
        let mut w = worker_for(n, v6);
        let (ns, fw) = run_trace(&mut w, &snap, &frames, &trace, NANOS_PER_SEC, 32);
        report(
            &format!("{fam} new connections (classify+schedule+insert)"),
            ns,
            fw,
            n,
            "",
        );
        new_connections_steered(&snap, &frames, &trace, v6);
    }

    if opts.big > 0 {
        let snap = Snapshot::compile(config(false), 1);
        snap.refine();
        let n = opts.big;
        let (mut w, insert_ns) = open_sessions(&snap, n, false);
        let frames: Vec<Vec<u8>> = (0..n).map(|i| frame(i, false, 80, ACK)).collect();
        let mut rng = Rng(7);
        let trace: Vec<u32> = (0..opts.packets)
            .map(|_| u32::try_from(rng.below(n)).expect("fits"))
            .collect();
        let (ns, fw) = run_trace(&mut w, &snap, &frames, &trace, NANOS_PER_SEC, 32);
        report(
            &format!("IPv4 established, {n} sessions, uniform"),
            ns,
            fw,
            opts.packets,
            &format!(
                "  ({} B/session; open: {insert_ns:.0} ns/session)",
                w.sessions.bytes_per_session(false)
            ),
        );
    }
}
