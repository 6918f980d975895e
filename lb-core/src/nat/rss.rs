//! RSS steering of FULLNAT replies.
//!
//! A NIC with receive-side scaling puts each frame on the RX queue that its
//! Toeplitz hash selects through the redirection table (RETA). A FULLNAT
//! reply (backend → local address) carries a different 4-tuple from its
//! request (client → VIP), so without care it lands on any queue, and the
//! worker polling that queue must hand it to the session's owner. The one
//! field of the reply the load balancer chooses is the local port: picking
//! it so that the reply's hash selects a queue of the owning worker makes
//! the NIC deliver every reply to the right worker, with no handoff.
//!
//! The Toeplitz hash is linear over GF(2): the hash of a tuple is the XOR of
//! the hashes of its nibbles at their positions. So [`RssSteering`] keeps
//! one 16-entry table (a cache line) per input nibble, 4.5 KiB in all, small
//! enough to stay in cache beside a big session table; the reply's hash
//! with the local port zeroed ([`ReplyHash`]) is computed once per new
//! session, and each candidate port costs four table reads and a RETA
//! read.

use std::net::IpAddr;

use crate::flow::FlowKey;
use crate::model::proto;

/// The longest hash input: two IPv6 addresses and two ports.
pub const MAX_INPUT: usize = 36;

/// The shortest key that covers [`MAX_INPUT`] (40 bytes, the common size).
pub const MIN_KEY: usize = MAX_INPUT + 4;

/// Entries of the redirection table of software RSS
/// ([`RssSteering::software`]), as many as common NICs have.
pub const SOFTWARE_RETA: usize = 128;

/// A redirection table of `len` entries spread evenly over `queues`
/// queues (entry `i` to queue `i % queues`), as most PMDs start.
pub fn even_reta(len: usize, queues: u16) -> Vec<u16> {
    let queues = usize::from(queues.max(1));
    (0..len)
        .map(|i| u16::try_from(i % queues).unwrap_or(0))
        .collect()
}

/// Errors of [`RssSteering::new`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RssError {
    #[error("the RSS key has {0} bytes; at least {MIN_KEY} are needed to hash IPv6 flows")]
    KeyTooShort(usize),
    #[error("the redirection table has {0} entries; a power of two up to 65536 is needed")]
    RetaSize(usize),
    #[error("the redirection table names queue {queue}, which no worker polls")]
    QueueWithoutWorker { queue: u16 },
}

/// The Toeplitz hash NICs compute for RSS over `input` (source address,
/// destination address, source port, destination port, all big-endian),
/// bit by bit: the reference the tables are checked against. `key` must
/// be at least `input.len() + 4` bytes.
pub fn toeplitz_hash(key: &[u8], input: &[u8]) -> u32 {
    assert!(
        key.len() >= input.len() + 4,
        "Toeplitz key too short for input"
    );
    let mut window = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    let mut hash = 0u32;
    for (i, byte) in input.iter().enumerate() {
        let next = key[i + 4];
        for bit in (0..8).rev() {
            if byte & (1 << bit) != 0 {
                hash ^= window;
            }
            window = (window << 1) | u32::from((next >> bit) & 1);
        }
    }
    hash
}

/// The symmetric RSS key of `len` bytes: `0x6d5a` repeated. Its 16-bit
/// period makes the hash invariant under swapping source and destination
/// (addresses and ports are both multiples of 16 bits), so both directions
/// of a flow land on the same queue.
pub fn symmetric_key(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| if i % 2 == 0 { 0x6d } else { 0x5a })
        .collect()
}

/// The bytes a NIC hashes for a TCP or UDP 4-tuple (source address,
/// destination address, source port, destination port, big-endian) and
/// how many there are (12 for IPv4, 36 for IPv6); `None` for mixed
/// families.
pub fn hash_input(key: &FlowKey) -> Option<([u8; MAX_INPUT], usize)> {
    let mut input = [0u8; MAX_INPUT];
    let at = match (key.src, key.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            input[..4].copy_from_slice(&s.octets());
            input[4..8].copy_from_slice(&d.octets());
            8
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            input[..16].copy_from_slice(&s.octets());
            input[16..32].copy_from_slice(&d.octets());
            32
        }
        _ => return None,
    };
    input[at..at + 2].copy_from_slice(&key.sport.to_be_bytes());
    input[at + 2..at + 4].copy_from_slice(&key.dport.to_be_bytes());
    Some((input, at + 4))
}

/// The hashes of the 16 values of one nibble: one cache line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C, align(64))]
struct NibbleTable([u32; 16]);

/// How one port spreads frames over workers: its RSS key and redirection
/// table, and which worker polls each queue.
#[derive(Clone, PartialEq, Eq)]
pub struct RssSteering {
    /// `tables[i][v]`: the hash of nibble value `v` at input nibble `i`
    /// (the high nibble of byte `i / 2` when `i` is even).
    tables: Box<[NibbleTable; 2 * MAX_INPUT]>,
    /// The worker polling the queue of each RETA entry.
    reta_workers: Box<[u16]>,
    /// RETA entries - 1: the entry is the hash's low bits.
    mask: u32,
}

impl std::fmt::Debug for RssSteering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RssSteering")
            .field("reta_workers", &self.reta_workers)
            .finish_non_exhaustive()
    }
}

/// The hash of a reply tuple with its destination (local) port zeroed:
/// what [`RssSteering::lands_on`] completes for each candidate port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyHash {
    base: u32,
    /// Input position of the destination port's first byte.
    port_at: u8,
}

impl RssSteering {
    /// The steering of a port hashing with `key`, whose redirection table
    /// sends entry `i` to queue `reta[i]`, queue `q` being polled by worker
    /// `queue_workers[q]`.
    pub fn new(key: &[u8], reta: &[u16], queue_workers: &[u16]) -> Result<RssSteering, RssError> {
        if key.len() < MIN_KEY {
            return Err(RssError::KeyTooShort(key.len()));
        }
        if !reta.len().is_power_of_two() || reta.len() > 1 << 16 {
            return Err(RssError::RetaSize(reta.len()));
        }
        let reta_workers = reta
            .iter()
            .map(|&queue| {
                queue_workers
                    .get(usize::from(queue))
                    .copied()
                    .ok_or(RssError::QueueWithoutWorker { queue })
            })
            .collect::<Result<Box<[u16]>, RssError>>()?;
        let mut tables = Box::new([NibbleTable::default(); 2 * MAX_INPUT]);
        for (i, table) in tables.iter_mut().enumerate() {
            // The hash of each single bit of this nibble; a nibble's hash
            // is the XOR of its bits' (linearity).
            let mut bit_hash = [0u32; 4];
            for (bit, h) in bit_hash.iter_mut().enumerate() {
                let mut input = [0u8; MAX_INPUT];
                let shift = if i % 2 == 0 { 4 } else { 0 };
                input[i / 2] = (0x8 >> bit) << shift;
                *h = toeplitz_hash(key, &input);
            }
            for (v, entry) in table.0.iter_mut().enumerate() {
                *entry = bit_hash
                    .iter()
                    .enumerate()
                    .filter(|(bit, _)| v & (0x8 >> bit) != 0)
                    .fold(0, |acc, (_, h)| acc ^ h);
            }
        }
        Ok(RssSteering {
            tables,
            reta_workers,
            mask: u32::try_from(reta.len() - 1).expect("at most 65536 entries"),
        })
    }

    /// Software RSS over `queues` queues, queue `q` polled by worker
    /// `queue_workers[q]`: the symmetric key of [`MIN_KEY`] bytes and an
    /// even table of [`SOFTWARE_RETA`] entries. Whoever feeds the queues
    /// (a software switch, a traffic generator) picks each frame's queue
    /// with the same steering and no workers
    /// (`RssSteering::software(q, &(0..q).collect::<Vec<_>>())`), then
    /// [`RssSteering::worker_of_hash`] of [`RssSteering::hash_input`].
    pub fn software(queues: u16, queue_workers: &[u16]) -> Result<RssSteering, RssError> {
        RssSteering::new(
            &symmetric_key(MIN_KEY),
            &even_reta(SOFTWARE_RETA, queues),
            queue_workers,
        )
    }

    /// The Toeplitz hash of a raw hash input (at most [`MAX_INPUT`]
    /// bytes, as [`hash_input`] lays it out). An untagged IPv4 frame
    /// without IP options holds it at bytes 26..38.
    pub fn hash_input(&self, input: &[u8]) -> u32 {
        self.hash_at(0, &input[..input.len().min(MAX_INPUT)])
    }

    /// The Toeplitz hash of `bytes` placed at input position `at`.
    #[inline]
    fn hash_at(&self, at: usize, bytes: &[u8]) -> u32 {
        bytes
            .iter()
            .zip(self.tables[2 * at..].chunks_exact(2))
            .fold(0, |h, (&b, t)| {
                h ^ t[0].0[usize::from(b >> 4)] ^ t[1].0[usize::from(b & 0xf)]
            })
    }

    /// The hash of an address pair at the start of the input; the ports
    /// follow at the returned position.
    #[inline]
    fn hash_addrs(&self, src: IpAddr, dst: IpAddr) -> Option<(u32, usize)> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Some((
                self.hash_at(0, &s.octets()) ^ self.hash_at(4, &d.octets()),
                8,
            )),
            (IpAddr::V6(s), IpAddr::V6(d)) => Some((
                self.hash_at(0, &s.octets()) ^ self.hash_at(16, &d.octets()),
                32,
            )),
            _ => None,
        }
    }

    /// The RSS hash of a TCP or UDP packet's 4-tuple, as the NIC computes
    /// it (`None` for mixed families).
    pub fn hash(&self, key: &FlowKey) -> Option<u32> {
        let (h, at) = self.hash_addrs(key.src, key.dst)?;
        let ports = ((u32::from(key.sport) << 16) | u32::from(key.dport)).to_be_bytes();
        Some(h ^ self.hash_at(at, &ports))
    }

    /// The worker whose queue a frame with RSS hash `hash` lands on.
    #[inline]
    pub fn worker_of_hash(&self, hash: u32) -> u16 {
        self.reta_workers[(hash & self.mask) as usize]
    }

    /// The worker whose queue a TCP or UDP packet with `key` lands on;
    /// `None` for other protocols (hashed without ports) and mixed
    /// families.
    pub fn worker(&self, key: &FlowKey) -> Option<u16> {
        if !matches!(key.proto, proto::TCP | proto::UDP) {
            return None;
        }
        self.hash(key).map(|h| self.worker_of_hash(h))
    }

    /// The reply a FULLNAT session's backend sends, `backend:backend_port →
    /// local:<port>`, hashed without its destination port. `None` when
    /// the families differ.
    pub fn reply_hash(
        &self,
        backend: IpAddr,
        backend_port: u16,
        local: IpAddr,
    ) -> Option<ReplyHash> {
        let (h, at) = self.hash_addrs(backend, local)?;
        Some(ReplyHash {
            base: h ^ self.hash_at(at, &backend_port.to_be_bytes()),
            port_at: u8::try_from(at + 2).expect("below 36"),
        })
    }

    /// The reply's full hash with local port `port`.
    #[inline]
    fn reply_hash_with(&self, reply: ReplyHash, port: u16) -> u32 {
        let t = &self.tables[2 * usize::from(reply.port_at)..];
        let p = usize::from(port);
        reply.base
            ^ t[0].0[p >> 12]
            ^ t[1].0[(p >> 8) & 0xf]
            ^ t[2].0[(p >> 4) & 0xf]
            ^ t[3].0[p & 0xf]
    }

    /// The worker the reply lands on with local port `port`.
    #[inline]
    pub fn reply_worker(&self, reply: ReplyHash, port: u16) -> u16 {
        self.worker_of_hash(self.reply_hash_with(reply, port))
    }

    /// Whether the reply lands on `worker` with local port `port`.
    #[inline]
    pub fn lands_on(&self, reply: ReplyHash, port: u16, worker: u16) -> bool {
        self.reply_worker(reply, port) == worker
    }

    /// RETA entries.
    pub fn reta_len(&self) -> usize {
        self.reta_workers.len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::nat::{port_owner, FIRST_PORT, LAST_PORT};
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Microsoft's RSS verification key.
    const MS_KEY: [u8; 40] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f,
        0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30,
        0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
    ];

    /// A small deterministic generator (splitmix64).
    pub(crate) struct Rng(pub u64);
    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        pub(crate) fn port(&mut self) -> u16 {
            u16::try_from(self.next() >> 48).expect("16 bits")
        }
        pub(crate) fn addr(&mut self, v6: bool) -> IpAddr {
            if v6 {
                let hi = u128::from(self.next()) << 64;
                IpAddr::V6(Ipv6Addr::from(hi | u128::from(self.next())))
            } else {
                IpAddr::V4(Ipv4Addr::from(
                    u32::try_from(self.next() >> 32).expect("32 bits"),
                ))
            }
        }
    }

    /// The hash input a NIC reads for a 4-tuple.
    pub(crate) fn input(key: &FlowKey) -> Vec<u8> {
        let (bytes, len) = hash_input(key).expect("one family");
        bytes[..len].to_vec()
    }

    /// DPDK's default redirection table: entry `i` to queue `i % queues`.
    pub(crate) use super::even_reta as default_reta;

    fn identity(n: u16) -> Vec<u16> {
        (0..n).collect()
    }

    fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> FlowKey {
        FlowKey {
            src,
            dst,
            proto: proto::TCP,
            sport,
            dport,
        }
    }

    #[test]
    fn the_reference_hash_matches_microsofts_vectors() {
        // 66.9.149.187:2794 -> 161.142.100.80:1766
        let t = [66, 9, 149, 187, 161, 142, 100, 80, 0x0a, 0xea, 0x06, 0xe6];
        assert_eq!(toeplitz_hash(&MS_KEY, &t[..8]), 0x323e_8fc2);
        assert_eq!(toeplitz_hash(&MS_KEY, &t), 0x51cc_c178);
        // 199.92.111.2:14230 -> 65.69.140.83:4739
        let t = [199, 92, 111, 2, 65, 69, 140, 83, 0x37, 0x96, 0x12, 0x83];
        assert_eq!(toeplitz_hash(&MS_KEY, &t[..8]), 0xd718_262a);
        assert_eq!(toeplitz_hash(&MS_KEY, &t), 0xc626_b0ea);
        // IPv6: 3ffe:2501:200:1fff::7 -> 3ffe:2501:200:3::1, 2794 -> 1766
        let s: Ipv6Addr = "3ffe:2501:200:1fff::7".parse().expect("literal");
        let d: Ipv6Addr = "3ffe:2501:200:3::1".parse().expect("literal");
        let key = tcp(s.into(), d.into(), 2794, 1766);
        assert_eq!(toeplitz_hash(&MS_KEY, &input(&key)), 0x4020_7d3d);
        let steering =
            RssSteering::new(&MS_KEY, &default_reta(128, 2), &identity(2)).expect("valid steering");
        assert_eq!(steering.hash(&key), Some(0x4020_7d3d));
    }

    #[test]
    fn tables_hash_as_the_reference_for_random_flows_of_both_families() {
        let mut rng = Rng(1);
        for key_bytes in [MS_KEY.to_vec(), symmetric_key(40), symmetric_key(52)] {
            let steering = RssSteering::new(&key_bytes, &default_reta(512, 3), &identity(3))
                .expect("valid steering");
            for i in 0..20_000 {
                let v6 = i % 2 == 1;
                let key = tcp(rng.addr(v6), rng.addr(v6), rng.port(), rng.port());
                let want = toeplitz_hash(&key_bytes, &input(&key));
                assert_eq!(steering.hash(&key), Some(want), "{key:?}");
                // The reply hash completed with the port is the full hash.
                let reply = steering
                    .reply_hash(key.src, key.sport, key.dst)
                    .expect("one family");
                assert_eq!(
                    steering.reply_worker(reply, key.dport),
                    steering.worker_of_hash(want)
                );
                assert_eq!(
                    steering.worker(&key),
                    Some(default_reta(512, 3)[(want & 511) as usize])
                );
            }
        }
    }

    /// A TCP 4-tuple of random addresses (IPv6 with `v6`) and ports.
    fn random_tcp(rng: &mut Rng, v6: bool) -> FlowKey {
        tcp(rng.addr(v6), rng.addr(v6), rng.port(), rng.port())
    }

    #[test]
    fn the_symmetric_key_gives_both_directions_one_worker() {
        let mut rng = Rng(2);
        let steering = RssSteering::new(&symmetric_key(40), &default_reta(128, 4), &identity(4))
            .expect("valid steering");
        for i in 0..10_000 {
            let key = random_tcp(&mut rng, i % 2 == 0);
            assert_eq!(steering.hash(&key), steering.hash(&key.reversed()));
        }
    }

    /// Software RSS is the symmetric key over an even table, and the raw
    /// input of an IPv4 frame (bytes 26..38) hashes as its flow key.
    #[test]
    fn software_rss_hashes_frames_as_a_nic_would() {
        let mut rng = Rng(3);
        let queues = identity(2);
        let soft = RssSteering::software(2, &queues).expect("valid steering");
        let nic = RssSteering::new(&symmetric_key(52), &default_reta(128, 2), &queues)
            .expect("valid steering");
        assert_eq!(soft.reta_len(), SOFTWARE_RETA);
        let mut seen = [0usize; 2];
        for i in 0..10_000 {
            let key = random_tcp(&mut rng, i % 2 == 0);
            let want = toeplitz_hash(&symmetric_key(MIN_KEY), &input(&key));
            assert_eq!(soft.hash(&key), Some(want));
            assert_eq!(soft.hash_input(&input(&key)), want);
            assert_eq!(soft.worker(&key), nic.worker(&key));
            seen[usize::from(soft.worker_of_hash(want))] += 1;
        }
        assert!(seen.iter().all(|&n| n > 4_000), "{seen:?}");
    }

    #[test]
    fn bad_parameters_are_refused() {
        let reta = default_reta(128, 2);
        assert_eq!(
            RssSteering::new(&symmetric_key(39), &reta, &identity(2)),
            Err(RssError::KeyTooShort(39))
        );
        assert_eq!(
            RssSteering::new(&symmetric_key(40), &reta[..100], &identity(2)),
            Err(RssError::RetaSize(100))
        );
        assert_eq!(
            RssSteering::new(&symmetric_key(40), &reta, &identity(1)),
            Err(RssError::QueueWithoutWorker { queue: 1 })
        );
        let udp = FlowKey {
            proto: proto::ICMP,
            ..tcp(
                IpAddr::from([198, 18, 0, 1]),
                IpAddr::from([198, 18, 0, 2]),
                1,
                2,
            )
        };
        let steering =
            RssSteering::new(&symmetric_key(40), &reta, &identity(2)).expect("valid steering");
        assert_eq!(steering.worker(&udp), None);
    }

    /// For every value of the reply's base hash that matters (its RETA
    /// bits), every worker finds ports in its own share whose reply lands
    /// on it, in a fair part of the share: the symmetric key does not tie
    /// the hash to the bits the share is chosen by. Exhaustive over ports
    /// and base hashes, by linearity: a port's reply lands on
    /// `reta[(base ^ hash(port)) & mask]`.
    #[test]
    fn every_worker_finds_steered_ports_in_its_share_for_every_base_hash() {
        for (workers, reta_len) in [(2u16, 128usize), (2, 512), (3, 128), (4, 512), (8, 128)] {
            let reta = default_reta(reta_len, workers);
            let steering = RssSteering::new(&symmetric_key(40), &reta, &identity(workers))
                .expect("valid steering");
            let mask = reta_len - 1;
            for v6 in [false, true] {
                let zero = ReplyHash {
                    base: 0,
                    port_at: if v6 { 34 } else { 10 },
                };
                // Ports of each worker's share by the RETA bits they add.
                let mut by_bits = vec![vec![0usize; reta_len]; usize::from(workers)];
                for port in FIRST_PORT..=LAST_PORT {
                    let bits = steering.reply_hash_with(zero, port) as usize & mask;
                    by_bits[usize::from(port_owner(port, workers))][bits] += 1;
                }
                for (w, counts) in by_bits.iter().enumerate() {
                    let share: usize = counts.iter().sum();
                    let expect = share / usize::from(workers);
                    for m in 0..reta_len {
                        let hits: usize = counts
                            .iter()
                            .enumerate()
                            .filter(|&(bits, _)| usize::from(reta[m ^ bits]) == w)
                            .map(|(_, c)| c)
                            .sum();
                        assert!(
                            hits * 10 > expect * 8 && hits * 10 < expect * 12,
                            "{workers} workers, RETA {reta_len}, v6 {v6}, base {m}: \
                             worker {w} steers {hits} of {share} ports"
                        );
                        // Spot check against the direct computation.
                        if m % 61 == 0 {
                            let reply = ReplyHash {
                                base: m as u32,
                                ..zero
                            };
                            let direct = (FIRST_PORT..=LAST_PORT)
                                .filter(|&p| port_owner(p, workers) as usize == w)
                                .filter(|&p| steering.lands_on(reply, p, w as u16))
                                .count();
                            assert_eq!(direct, hits);
                        }
                    }
                }
            }
        }
    }
}
