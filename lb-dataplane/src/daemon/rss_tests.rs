//! Two real worker loops behind a NIC that spreads frames over their RX
//! queues with symmetric Toeplitz RSS (an in-memory port per queue; no
//! virtual device here hashes with RSS): FULLNAT connections in both
//! directions, and the handoffs the workers count.

use std::collections::VecDeque;

use lb_core::flow::FlowKey;
use lb_core::model::{proto, IdlePolicy};
use lb_core::nat::rss::{symmetric_key, RssSteering};
use lb_core::packet::{build_frame, FrameSpec, MacAddr};

use super::*;
use crate::io::{RxQueue, Slot, TxQueue};

const CONFIG: &str = r#"
[dataplane]
workers = 2

[[port]]
name = "ext"
interface = "lb-ext"
addresses = ["198.18.0.1/24", "2001:db8:18::1/64"]

[[port]]
name = "int"
interface = "lb-int"
addresses = ["198.19.1.1/24", "2001:db8:19:1::1/64"]

[[route]]
destination = "0.0.0.0/0"
via = "198.18.0.254"
port = "ext"

[[route]]
destination = "::/0"
via = "2001:db8:18::fe"
port = "ext"

[[security_group]]
id = "sg-web"
type = "basic"
internal_access = "accept"

[[subnet]]
id = "vsw-be"
cidr = "198.19.1.0/24"
ipv6_cidr = "2001:db8:19:1::/64"

[[instance]]
id = "ecs01"
subnet = "vsw-be"
addresses = ["198.19.1.11", "2001:db8:19:1::11"]
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

[[load_balancer]]
id = "alb-1"
vips = ["198.18.0.10", "2001:db8:18::10"]
local_addresses = ["198.19.1.250", "2001:db8:19:1::250"]
[[load_balancer.listener]]
protocol = "tcp"
port = 80
server_group = "sgp-web"
transfer_client_ip = false
syn_proxy = "off"
"#;

const MAC: [[u8; 6]; 2] = [[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]];
const PEER: [u8; 6] = [2, 0, 0, 0, 0, 9];

/// Frames waiting on one RX queue.
pub(super) type Ring = Arc<Mutex<VecDeque<Vec<u8>>>>;

/// One RX queue of a port (fed by the test, as the NIC's RSS picks): a
/// burst lends the frames it took off the queue.
pub(super) struct QueueRx {
    pub(super) rx: Ring,
    pub(super) burst: Vec<Vec<u8>>,
}

impl RxQueue for QueueRx {
    fn rx_burst<'a>(&'a mut self, slots: &mut [Slot<'a>], meta: &mut [RxMeta]) -> usize {
        self.burst.clear();
        let max = slots.len().min(meta.len());
        while self.burst.len() < max {
            let Some(frame) = self.rx.lock().expect("not poisoned").pop_front() else {
                break;
            };
            self.burst.push(frame);
        }
        let n = self.burst.len();
        for (slot, frame) in slots.iter_mut().zip(self.burst.iter_mut()) {
            *slot = Slot::Lent(&mut frame[..]);
        }
        n
    }
    fn stats(&self) -> IoStats {
        IoStats::default()
    }
}

/// The port's transmitted frames.
pub(super) struct QueueTx {
    pub(super) tx: Arc<Mutex<Vec<Vec<u8>>>>,
    pub(super) mac: [u8; 6],
}

impl TxQueue for QueueTx {
    fn send(&mut self, frame: &[u8]) -> bool {
        self.tx.lock().expect("not poisoned").push(frame.to_vec());
        true
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn mac(&self) -> [u8; 6] {
        self.mac
    }
    fn stats(&self) -> IoStats {
        IoStats::default()
    }
}

fn frame(key: &FlowKey, port: usize, tcp_flags: u8) -> Vec<u8> {
    build_frame(&FrameSpec {
        src_mac: MacAddr(PEER),
        dst_mac: MacAddr(MAC[port]),
        src: key.src,
        dst: key.dst,
        proto: proto::TCP,
        sport: key.sport,
        dport: key.dport,
        tcp_flags,
        ttl: 64,
        ..FrameSpec::default()
    })
}

/// Waits (at most 10 s) until `tx` holds `n` TCP frames, answering the
/// workers' neighbour solicitations meanwhile; returns the TCP frames.
fn sent(tx: &Mutex<Vec<Vec<u8>>>, n: usize, neigh: &Neighbors) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for (port, addr) in NEIGHBOURS {
            let addr = addr.parse().expect("address literal");
            neigh.learn(port, addr, PEER, Instant::now());
        }
        let tcp: Vec<Vec<u8>> = tx
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|f| {
                lb_core::packet::parse(f)
                    .ok()
                    .and_then(|p| p.flow_key())
                    .is_some_and(|k| k.proto == proto::TCP)
            })
            .cloned()
            .collect();
        if tcp.len() >= n || Instant::now() > deadline {
            return tcp;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The next hops: the clients' router, the backend.
const NEIGHBOURS: [(u32, &str); 4] = [
    (0, "198.18.0.254"),
    (0, "2001:db8:18::fe"),
    (1, "198.19.1.11"),
    (1, "2001:db8:19:1::11"),
];

/// Opens `n` FULLNAT connections (client SYN, backend SYN-ACK) through two
/// worker loops; with `steer`, lbd knows the ports' RSS. Returns the
/// handoffs the workers counted (and exported in the metrics).
fn run(n: u16, steer: bool) -> u64 {
    let cfg = lb_config::parse_str(CONFIG, "rss.toml").expect("a valid configuration");
    let nic = Arc::new(RssSteering::new(&symmetric_key(40), &[0, 1], &[0, 1]).expect("valid"));
    let rx: Vec<Vec<Ring>> = (0..2)
        .map(|_| (0..2).map(|_| Arc::default()).collect())
        .collect();
    let tx: Vec<Arc<Mutex<Vec<Vec<u8>>>>> = (0..2).map(|_| Arc::default()).collect();
    let (health_tx, _health_rx) = bounded(4096);
    let mut shared = Shared::assemble(
        Path::new("rss.toml"),
        Arc::new(Snapshot::compile(cfg, 1)),
        2,
        vec!["ext".into(), "int".into()],
        health_tx,
        vec![u32::MAX; 2],
    );
    shared.port_rss = vec![steer.then(|| nic.clone()); 2];
    // As `Daemon::start` sizes it for ports whose frames stay in a ring.
    shared.buffers = crate::io::pool::BufPool::new(super::pool_buffers(2, true), 2048);
    let shared = Arc::new(shared);
    let threads: Vec<JoinHandle<()>> = (0..2)
        .map(|w| {
            let ios = super::ports::WorkerPorts {
                rx: (0..2)
                    .map(|p| {
                        Box::new(QueueRx {
                            rx: rx[p][w].clone(),
                            burst: Vec::new(),
                        }) as Box<dyn RxQueue>
                    })
                    .collect(),
                tx: (0..2)
                    .map(|p| {
                        Box::new(QueueTx {
                            tx: tx[p].clone(),
                            mac: MAC[p],
                        }) as Box<dyn TxQueue>
                    })
                    .collect(),
            };
            let shared = shared.clone();
            std::thread::spawn(move || {
                WorkerLoop::new(w, shared, ios, IdlePolicy::Adaptive, [4096, 4096]).run();
            })
        })
        .collect();
    // The NIC: each frame on the queue its RSS hash selects.
    let deliver = |port: usize, key: &FlowKey, flags: u8| {
        let q = usize::from(nic.worker(key).expect("a TCP flow"));
        rx[port][q]
            .lock()
            .expect("not poisoned")
            .push_back(frame(key, port, flags));
    };
    let mut requests = Vec::new();
    for i in 0..n {
        let (client, vip) = if i % 2 == 0 {
            (
                format!("198.18.{}.{}", 64 + i / 250, 2 + i % 250),
                "198.18.0.10",
            )
        } else {
            (format!("2001:db8:ff::{i:x}"), "2001:db8:18::10")
        };
        let key = FlowKey {
            src: client.parse().expect("address"),
            dst: vip.parse().expect("address"),
            proto: proto::TCP,
            sport: 1024 + i,
            dport: 80,
        };
        requests.push(key);
    }
    // In rounds of 32 connections, fewer than the frames a worker parks
    // while it resolves a next hop.
    let (mut to_backend, mut to_clients) = (Vec::new(), Vec::new());
    for (round, keys) in requests.chunks(32).enumerate() {
        for key in keys {
            deliver(0, key, 0x02);
        }
        let done = round * 32 + keys.len();
        to_backend = sent(&tx[1], done, &shared.neigh);
        assert_eq!(to_backend.len(), done, "every SYN reaches the backend");
        for f in &to_backend[round * 32..] {
            let p = lb_core::packet::parse(f).expect("a valid frame");
            let out = p.flow_key().expect("a TCP flow");
            deliver(1, &out.reversed(), 0x12);
        }
        to_clients = sent(&tx[0], done, &shared.neigh);
        assert_eq!(to_clients.len(), done, "every SYN-ACK reaches its client");
    }
    assert_eq!(to_backend.len(), usize::from(n));
    for f in &to_clients {
        let p = lb_core::packet::parse(f).expect("a valid frame");
        let back = p.flow_key().expect("a TCP flow");
        assert!(requests.contains(&back.reversed()), "{back:?}");
    }
    shared.stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a worker ends cleanly");
    }
    let handoffs: u64 = shared
        .workers
        .iter()
        .map(|w| w.report.lock().expect("not poisoned").handoff_out)
        .sum();
    // What an operator sees: /metrics, per worker.
    let exported: u64 = crate::metrics::prometheus(&shared)
        .lines()
        .filter(|l| l.starts_with("lbd_worker_handoffs_total{worker="))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .expect("a counter value")
        })
        .sum();
    assert_eq!(exported, handoffs);
    handoffs
}

#[test]
fn rss_steered_fullnat_needs_no_handoff_in_worker_loops() {
    assert_eq!(run(400, true), 0);
}

#[test]
fn without_steering_the_worker_loops_hand_frames_over() {
    let handoffs = run(400, false);
    // About half of each direction lands on the other worker's queue.
    assert!(handoffs > 200 && handoffs < 600, "{handoffs}");
}
