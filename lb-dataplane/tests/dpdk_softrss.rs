//! The RSS steering of FULLNAT local ports (`lb_core::nat::rss`) against
//! DPDK's own software Toeplitz hash, `rte_softrss`: the hash of random
//! flows of both families, and the queue each steered reply lands on; and
//! the steering read back from a port (`net_null`, the one test here that
//! initialises EAL).

// Built only with the `dpdk` feature (`cargo test --features dpdk`).
#![cfg(feature = "dpdk")]

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_core::flow::FlowKey;
use lb_core::model::proto;
use lb_core::nat::rss::{hash_input, toeplitz_hash, RssSteering};
use lb_core::nat::{port_owner, PortAllocator};
use lb_dataplane::io::dpdk::{symmetric_rss_key, sys, DpdkPort, DpdkPortOpts, Mempool};

mod dpdk_common;

/// Microsoft's RSS verification key.
const MS_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/// Random-looking values, the same on every run: SipHash (zero keys) of
/// a counter.
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 += 1;
        let mut h = DefaultHasher::new();
        self.0.hash(&mut h);
        h.finish()
    }
    fn port(&mut self) -> u16 {
        u16::try_from(self.next() >> 48).expect("16 bits")
    }
    fn addr(&mut self, v6: bool) -> IpAddr {
        if v6 {
            let bits = (u128::from(self.next()) << 64) | u128::from(self.next());
            IpAddr::V6(Ipv6Addr::from(bits))
        } else {
            IpAddr::V4(Ipv4Addr::from(
                u32::try_from(self.next() >> 32).expect("32 bits"),
            ))
        }
    }
    /// A TCP flow between random ends of one family.
    fn tcp_flow(&mut self, v6: bool) -> FlowKey {
        FlowKey {
            src: self.addr(v6),
            dst: self.addr(v6),
            proto: proto::TCP,
            sport: self.port(),
            dport: self.port(),
        }
    }
}

/// `rte_softrss` over the tuple: DPDK takes 32-bit words in CPU order
/// (`rte_ipv4_tuple` / `rte_ipv6_tuple` after `rte_be_to_cpu_32`).
fn softrss(rss_key: &[u8], key: &FlowKey) -> u32 {
    let (bytes, len) = hash_input(key).expect("one family");
    let words: Vec<u32> = bytes[..len]
        .chunks(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let len = u32::try_from(words.len()).expect("at most 9 words");
    // SAFETY: `words` holds `len` initialised u32s and `rss_key` at least
    // 4 * len + 4 bytes (40 or more), all that rte_softrss reads; it keeps
    // no pointer.
    unsafe { sys::lb_rte_softrss(words.as_ptr(), len, rss_key.as_ptr()) }
}

/// DPDK's default redirection table: entry `i` to queue `i % queues`.
fn default_reta(len: usize, queues: u16) -> Vec<u16> {
    (0..len)
        .map(|i| u16::try_from(i % usize::from(queues)).expect("below queues"))
        .collect()
}

#[test]
fn hashes_agree_with_rte_softrss_for_random_flows_of_both_families() {
    let mut rng = Draws(7);
    for rss_key in [
        MS_KEY.to_vec(),
        symmetric_rss_key(40),
        symmetric_rss_key(52),
    ] {
        let reta = default_reta(512, 4);
        let queue_workers: Vec<u16> = (0..4).collect();
        let steering = RssSteering::new(&rss_key, &reta, &queue_workers).expect("valid");
        for i in 0..50_000 {
            let v6 = i % 2 == 1;
            let key = rng.tcp_flow(v6);
            let want = softrss(&rss_key, &key);
            let (bytes, len) = hash_input(&key).expect("one family");
            assert_eq!(toeplitz_hash(&rss_key, &bytes[..len]), want, "{key:?}");
            assert_eq!(steering.hash(&key), Some(want), "{key:?}");
            assert_eq!(
                steering.worker(&key),
                Some(reta[(want % 512) as usize]),
                "{key:?}"
            );
        }
    }
}

/// The port choice: every worker's steered local port makes a reply that
/// `rte_softrss` and the RETA put on that worker's queue, for random
/// backends and local addresses of both families, with 2, 3 and 4
/// workers and RETAs of 64, 128 and 512 entries.
#[test]
fn steered_local_ports_put_replies_on_the_owners_queue_by_rte_softrss() {
    let rss_key = symmetric_rss_key(40);
    let mut rng = Draws(11);
    let mut checked = 0;
    for (workers, reta_len) in [(2u16, 128usize), (3, 512), (4, 64), (2, 512)] {
        let reta = default_reta(reta_len, workers);
        let queue_workers: Vec<u16> = (0..workers).collect();
        let steering = RssSteering::new(&rss_key, &reta, &queue_workers).expect("valid");
        let mut allocators: Vec<PortAllocator> = (0..workers)
            .map(|w| PortAllocator::new(w, workers))
            .collect();
        for i in 0..20_000 {
            let v6 = i % 2 == 1;
            let FlowKey {
                src: backend,
                dst: local,
                sport: backend_port,
                dport: draw,
                ..
            } = rng.tcp_flow(v6);
            let w = draw % workers;
            let reply = steering
                .reply_hash(backend, backend_port, local)
                .expect("one family");
            let lport = allocators[usize::from(w)]
                .allocate_steered(local, |p| steering.lands_on(reply, p, w), |_| true)
                .expect("a steered port")
                .port;
            assert_eq!(port_owner(lport, workers), w);
            let reply_key = FlowKey {
                src: backend,
                dst: local,
                proto: proto::TCP,
                sport: backend_port,
                dport: lport,
            };
            let queue = reta[softrss(&rss_key, &reply_key) as usize % reta_len];
            assert_eq!(queue, w, "{workers} workers: {reply_key:?}");
            // The symmetric key: the request the load balancer sends to
            // the backend lands there too.
            let out = reta[softrss(&rss_key, &reply_key.reversed()) as usize % reta_len];
            assert_eq!(out, w);
            checked += 1;
        }
    }
    assert_eq!(checked, 80_000);
}

/// A port with RSS (net_null keeps the key, hash types and table it is
/// given, and starts with every table entry on queue 0): the steering read
/// back spreads the table over both queues and hashes as `rte_softrss`
/// with the symmetric key the port was opened with.
#[test]
fn a_ports_steering_is_read_back_from_the_pmd() {
    let _cleanup = dpdk_common::RuntimeDirGuard;
    let _eal = dpdk_common::init(&["net_null0".to_string(), "net_null1".to_string()]);
    let pool =
        Mempool::new("rss_pool", 2047, 32, Mempool::DEFAULT_DATA_ROOM, None).expect("mempool");
    let port = DpdkPort::open(0, 2, &pool, &DpdkPortOpts::default()).expect("open net_null0");
    assert!(port.rss(), "net_null spreads over queues");
    let steering = port
        .rss_steering(&[0, 1])
        .expect("RSS queried")
        .expect("TCP/UDP hashed with ports");
    assert_eq!(steering.reta_len(), 128);
    let rss_key = symmetric_rss_key(40);
    let mut rng = Draws(3);
    let mut on = [0usize; 2];
    for i in 0..10_000 {
        let key = rng.tcp_flow(i % 2 == 1);
        let w = steering.worker(&key).expect("a TCP flow");
        // Entry i on queue i % 2, worker q polling queue q.
        assert_eq!(u32::from(w), softrss(&rss_key, &key) % 128 % 2, "{key:?}");
        on[usize::from(w)] += 1;
    }
    assert!(on[0] > 4000 && on[1] > 4000, "{on:?}");
    // A single queue: no RSS, no steering.
    let single = DpdkPort::open(1, 1, &pool, &DpdkPortOpts::default()).expect("open net_null1");
    assert_eq!(single.rss_steering(&[0]).expect("no query needed"), None);
    // Workers that poll only queue 0: refused.
    assert!(port.rss_steering(&[0]).is_err());
}
