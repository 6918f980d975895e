//! The neighbour table: next-hop address → Ethernet address, per port,
//! learned from ARP and neighbour discovery.
//!
//! Each port has a table of fixed size, bounded by its `max_neighbors`
//! (Linux's `gc_thresh3`). An entry is created only when the data plane
//! asks for an address ([`Neighbors::resolving`]); answers and
//! advertisements update entries that exist and nothing else (Linux's
//! `arp_accept = 0`), so a flood of ARP cannot fill the table.
//!
//! Workers read it on every forwarded packet without a lock: the table is
//! a set-associative array of slots (a keyed hash picks a bucket of
//! [`WAYS`] slots), each slot a sequence lock over atomics. Writers (ARP
//! and ND handling, never the forwarding path) take the port's mutex and
//! change one slot: every update is O(1), nothing is copied.

use std::net::IpAddr;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ahash::RandomState;

/// How long a learned entry is used without being refreshed.
pub const REACHABLE: Duration = Duration::from_secs(60);

/// After this age a worker using the entry asks again (the entry keeps
/// working until [`REACHABLE`]).
pub const REFRESH: Duration = Duration::from_secs(30);

/// An entry being resolved that was last asked for longer ago than this
/// has failed: it is the first to go when room is needed.
pub const INCOMPLETE: Duration = Duration::from_secs(1);

/// A resolved entry not confirmed for this long is not in use (one in use
/// is asked for again after [`REFRESH`]): it may be replaced when the
/// table is full.
const IDLE: Duration = Duration::from_secs(35);

/// Slots per bucket.
pub const WAYS: usize = 8;

/// Slots per entry of the limit: the table is at most a quarter full, so
/// a bucket overflows very rarely.
const SLOTS_PER_ENTRY: usize = 4;

/// Buckets the eviction hand looks at when the table is full.
const HAND_BUCKETS: usize = 4;

/// A refresh of an unchanged entry younger than this is skipped, so that
/// repeated answers do not take the write lock.
const REFRESH_MIN: Duration = Duration::from_secs(1);

/// How often a refused claim for one of our addresses is logged.
const CLAIM_LOG_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub mac: [u8; 6],
    pub learned: Instant,
}

/// What [`Neighbors::learn`] did with an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learn {
    /// The entry now maps to the given address.
    Updated,
    /// Nothing asked for this address and it has no entry: ignored and
    /// counted (`neighbor_unsolicited`).
    Unsolicited,
    /// A multicast, zero or unspecified address: ignored.
    Invalid,
}

/// Counters of what the neighbour code refused, for `lbctl stats`.
#[derive(Debug, Default)]
pub struct NeighCounters {
    /// ARP / ND claims for one of our own addresses.
    pub own_address_claims: AtomicU64,
    /// ARP / ND from senders outside the port's links.
    pub off_link: AtomicU64,
    /// Answers and advertisements for addresses nobody asked for.
    pub unsolicited: AtomicU64,
    /// New entries refused because the port's table was full.
    pub table_full: AtomicU64,
}

/// `meta` bits: the MAC in the low 48, then these flags.
const OCCUPIED: u64 = 1 << 48;
const V6: u64 = 1 << 49;
const RESOLVED: u64 = 1 << 50;
const MAC_MASK: u64 = (1 << 48) - 1;

/// An address as table key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    bits: u128,
    v6: bool,
}

impl Key {
    fn of(addr: IpAddr) -> Key {
        match addr {
            IpAddr::V4(a) => Key {
                bits: u128::from(u32::from(a)),
                v6: false,
            },
            IpAddr::V6(a) => Key {
                bits: u128::from(a),
                v6: true,
            },
        }
    }

    fn addr(self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(self.bits.into())
        } else {
            // A v4 key holds 32 bits.
            IpAddr::V4(u32::try_from(self.bits).unwrap_or(0).into())
        }
    }
}

/// One slot's contents, as read consistently.
#[derive(Debug, Clone, Copy, Default)]
struct View {
    bits: u128,
    meta: u64,
    /// Nanoseconds since the table's epoch: last confirmation.
    learned: u64,
    /// Nanoseconds since the table's epoch: last time we asked.
    asked: u64,
}

impl View {
    fn occupied(&self) -> bool {
        self.meta & OCCUPIED != 0
    }

    fn resolved(&self) -> bool {
        self.meta & RESOLVED != 0
    }

    fn holds(&self, k: Key) -> bool {
        self.occupied() && self.bits == k.bits && (self.meta & V6 != 0) == k.v6
    }

    fn mac(&self) -> [u8; 6] {
        let b = (self.meta & MAC_MASK).to_be_bytes();
        [b[2], b[3], b[4], b[5], b[6], b[7]]
    }

    /// How willing we are to give this slot to another address (lower:
    /// more), `None` when it must stay: 0 for a failed resolution or an
    /// expired entry, 1 for an idle one, 2 for a resolution under way.
    fn eviction_rank(&self, now: u64) -> Option<(u8, u64)> {
        let age = |t: u64| Duration::from_nanos(now.saturating_sub(t));
        if !self.occupied() {
            return None;
        }
        let last = self.learned.max(self.asked);
        let rank = if self.resolved() {
            let idle = age(self.learned);
            if idle >= REACHABLE && age(self.asked) >= INCOMPLETE {
                0
            } else if idle >= IDLE {
                1
            } else {
                return None;
            }
        } else if age(self.asked) >= INCOMPLETE {
            0
        } else {
            2
        };
        Some((rank, last))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn mac_bits(mac: [u8; 6]) -> u64 {
    u64::from_be_bytes([0, 0, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]])
}

/// A slot: a sequence lock over its fields. The sequence is odd while the
/// (single, mutex-holding) writer changes the slot; a reader retries when
/// it saw an odd sequence or a different one after reading.
#[derive(Debug, Default)]
struct Slot {
    seq: AtomicU32,
    hi: AtomicU64,
    lo: AtomicU64,
    meta: AtomicU64,
    learned: AtomicU64,
    asked: AtomicU64,
}

impl Slot {
    fn load(&self) -> View {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let hi = self.hi.load(Ordering::Relaxed);
                let lo = self.lo.load(Ordering::Relaxed);
                let v = View {
                    bits: (u128::from(hi) << 64) | u128::from(lo),
                    meta: self.meta.load(Ordering::Relaxed),
                    learned: self.learned.load(Ordering::Relaxed),
                    asked: self.asked.load(Ordering::Relaxed),
                };
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == s1 {
                    return v;
                }
            }
            // A writer changes a slot in a few stores, under its mutex.
            std::hint::spin_loop();
        }
    }

    /// Only with the port's write mutex held.
    fn store(&self, v: View) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        // The two halves of the address (truncation intended).
        self.hi.store((v.bits >> 64) as u64, Ordering::Relaxed);
        self.lo.store(v.bits as u64, Ordering::Relaxed);
        self.meta.store(v.meta, Ordering::Relaxed);
        self.learned.store(v.learned, Ordering::Relaxed);
        self.asked.store(v.asked, Ordering::Relaxed);
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }
}

/// The writer's state of one port's table.
#[derive(Debug, Default)]
struct Writer {
    /// The next bucket the eviction hand looks at.
    hand: usize,
}

#[derive(Debug)]
struct PortTable {
    slots: Box<[Slot]>,
    /// Buckets - 1 (a power of two minus one).
    mask: usize,
    limit: usize,
    /// Entries in use (resolved or being resolved); changed under `write`.
    len: AtomicUsize,
    write: Mutex<Writer>,
}

impl PortTable {
    fn new(limit: usize) -> PortTable {
        let slots = (limit.max(1) * SLOTS_PER_ENTRY)
            .next_power_of_two()
            .max(WAYS);
        PortTable {
            slots: (0..slots).map(|_| Slot::default()).collect(),
            mask: slots / WAYS - 1,
            limit: limit.max(1),
            len: AtomicUsize::new(0),
            write: Mutex::new(Writer::default()),
        }
    }

    fn bucket(&self, hash: u64) -> std::ops::Range<usize> {
        // The low bits of the hash pick the bucket.
        let b = (hash as usize) & self.mask;
        b * WAYS..(b + 1) * WAYS
    }

    fn find(&self, hash: u64, k: Key) -> Option<(usize, View)> {
        // The low half of the address first, without the sequence lock:
        // most slots differ there. (A slot being rewritten may be skipped
        // for a moment; one that matches is then read consistently.)
        let lo = k.bits as u64;
        self.bucket(hash)
            .filter(|&i| self.slots[i].lo.load(Ordering::Relaxed) == lo)
            .map(|i| (i, self.slots[i].load()))
            .find(|(_, v)| v.holds(k))
    }

    /// A slot for a new entry of hash `hash` (write mutex held): a free one
    /// of its bucket while the table is below its limit, else the most
    /// evictable of its bucket and of the next [`HAND_BUCKETS`] buckets of
    /// the hand.
    fn make_room(&self, w: &mut Writer, hash: u64, now: u64) -> Option<usize> {
        let mut free = None;
        let mut best: Option<(usize, (u8, u64))> = None;
        let consider = |i: usize, v: &View, best: &mut Option<(usize, (u8, u64))>| {
            if let Some(r) = v.eviction_rank(now) {
                if best.is_none_or(|(_, b)| r < b) {
                    *best = Some((i, r));
                }
            }
        };
        let home = self.bucket(hash);
        for i in home.clone() {
            let v = self.slots[i].load();
            if !v.occupied() {
                free = free.or(Some(i));
            } else {
                consider(i, &v, &mut best);
            }
        }
        let len = self.len.load(Ordering::Relaxed);
        if len < self.limit {
            if free.is_some() {
                return free;
            }
        } else {
            for _ in 0..HAND_BUCKETS {
                let b = w.hand & self.mask;
                w.hand = w.hand.wrapping_add(1);
                for i in b * WAYS..(b + 1) * WAYS {
                    if !home.contains(&i) {
                        consider(i, &self.slots[i].load(), &mut best);
                    }
                }
            }
        }
        let (victim, _) = best?;
        self.slots[victim].store(View::default());
        self.len.fetch_sub(1, Ordering::Relaxed);
        if home.contains(&victim) {
            Some(victim)
        } else if self.len.load(Ordering::Relaxed) < self.limit {
            free
        } else {
            None
        }
    }
}

/// The neighbour tables of all ports.
#[derive(Debug)]
pub struct Neighbors {
    ports: Vec<PortTable>,
    epoch: Instant,
    /// Keyed per process (an on-link sender chooses some of the keys), and
    /// a few times faster than SipHash on the per-packet lookup.
    hasher: RandomState,
    pub counters: NeighCounters,
    /// When a refused claim was last logged (ns since `epoch`), and how
    /// many were not logged since.
    claim_logged: AtomicU64,
    claims_unlogged: AtomicU64,
}

impl Neighbors {
    /// Tables for ports with these limits (`max_neighbors`), in port order.
    pub fn new(limits: &[u32]) -> Arc<Neighbors> {
        Arc::new(Neighbors {
            ports: limits
                .iter()
                .map(|&l| PortTable::new(usize::try_from(l).unwrap_or(usize::MAX)))
                .collect(),
            epoch: Instant::now(),
            hasher: RandomState::new(),
            counters: NeighCounters::default(),
            claim_logged: AtomicU64::new(u64::MAX),
            claims_unlogged: AtomicU64::new(0),
        })
    }

    fn ns(&self, t: Instant) -> u64 {
        nanos(t.saturating_duration_since(self.epoch))
    }

    fn at(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }

    fn table(&self, port: u32) -> Option<&PortTable> {
        self.ports.get(usize::try_from(port).ok()?)
    }

    /// The entry for `addr` on `port`, if it is resolved and still
    /// reachable.
    pub fn lookup(&self, port: u32, addr: IpAddr, now: Instant) -> Option<Entry> {
        let t = self.table(port)?;
        let k = Key::of(addr);
        let (_, v) = t.find(self.hasher.hash_one(k), k)?;
        if !v.resolved() {
            return None;
        }
        let e = Entry {
            mac: v.mac(),
            learned: self.at(v.learned),
        };
        (now.saturating_duration_since(e.learned) < REACHABLE).then_some(e)
    }

    /// Notes that we are asking for `addr` on `port`: creates an entry
    /// being resolved, so that its answer is accepted. Returns false when
    /// the address cannot be an entry or the table has no room (counted).
    pub fn resolving(&self, port: u32, addr: IpAddr, now: Instant) -> bool {
        if !unicast(addr) {
            return false;
        }
        let Some(t) = self.table(port) else {
            return false;
        };
        let k = Key::of(addr);
        let hash = self.hasher.hash_one(k);
        let now_ns = self.ns(now);
        if let Some((_, v)) = t.find(hash, k) {
            // A fresh entry, or one asked for just now: nothing to note.
            // (A stale one being asked for again is marked so, so that it
            // is not taken for a failed one.)
            let fresh = v.resolved() && now_ns.saturating_sub(v.learned) < nanos(REFRESH);
            if fresh || now_ns.saturating_sub(v.asked) < nanos(INCOMPLETE) / 2 {
                return true;
            }
        }
        let mut w = t.write.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((i, mut v)) = t.find(hash, k) {
            v.asked = now_ns;
            t.slots[i].store(v);
            return true;
        }
        let Some(i) = t.make_room(&mut w, hash, now_ns) else {
            self.counters.table_full.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        t.slots[i].store(View {
            bits: k.bits,
            meta: OCCUPIED | if k.v6 { V6 } else { 0 },
            learned: 0,
            asked: now_ns,
        });
        t.len.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Records `addr` → `mac` on `port` if `addr` has an entry (resolved or
    /// being resolved); anything else is refused and counted.
    pub fn learn(&self, port: u32, addr: IpAddr, mac: [u8; 6], now: Instant) -> Learn {
        if !unicast(addr) || mac == [0; 6] || mac[0] & 1 == 1 {
            return Learn::Invalid;
        }
        let Some(t) = self.table(port) else {
            return Learn::Invalid;
        };
        let k = Key::of(addr);
        let hash = self.hasher.hash_one(k);
        let now_ns = self.ns(now);
        match t.find(hash, k) {
            None => {
                self.counters.unsolicited.fetch_add(1, Ordering::Relaxed);
                return Learn::Unsolicited;
            }
            Some((_, v))
                if v.resolved()
                    && v.mac() == mac
                    && now_ns.saturating_sub(v.learned) < nanos(REFRESH_MIN) =>
            {
                return Learn::Updated;
            }
            Some(_) => {}
        }
        let _w = t.write.lock().unwrap_or_else(|p| p.into_inner());
        let Some((i, v)) = t.find(hash, k) else {
            self.counters.unsolicited.fetch_add(1, Ordering::Relaxed);
            return Learn::Unsolicited;
        };
        t.slots[i].store(View {
            meta: (v.meta & !MAC_MASK) | RESOLVED | mac_bits(mac),
            learned: now_ns,
            ..v
        });
        Learn::Updated
    }

    /// The resolved entry for `addr` on `port` whatever its age.
    pub fn resolved(&self, port: u32, addr: IpAddr) -> Option<[u8; 6]> {
        let t = self.table(port)?;
        let k = Key::of(addr);
        let (_, v) = t.find(self.hasher.hash_one(k), k)?;
        v.resolved().then(|| v.mac())
    }

    /// Counts a refused claim for `addr`, one of our own addresses, made
    /// by `mac` on `port`, and logs it at most once a second.
    pub fn refuse_claim(&self, port: u32, addr: IpAddr, mac: [u8; 6], now: Instant) {
        self.counters
            .own_address_claims
            .fetch_add(1, Ordering::Relaxed);
        let now_ns = self.ns(now);
        let last = self.claim_logged.load(Ordering::Relaxed);
        let due = last == u64::MAX || now_ns.saturating_sub(last) >= nanos(CLAIM_LOG_EVERY);
        if due
            && self
                .claim_logged
                .compare_exchange(last, now_ns, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let unlogged = self.claims_unlogged.swap(0, Ordering::Relaxed);
            let mac = mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":");
            tracing::warn!(
                port,
                %addr,
                %mac,
                not_logged_since = unlogged,
                "refused a neighbour claim for one of our own addresses"
            );
        } else {
            self.claims_unlogged.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Resolved entries, for `lbctl stats`.
    pub fn entries(&self) -> Vec<((u32, IpAddr), Entry)> {
        let mut v = Vec::new();
        for (pi, t) in self.ports.iter().enumerate() {
            let port = u32::try_from(pi).unwrap_or(u32::MAX);
            for s in t.slots.iter() {
                let s = s.load();
                if s.occupied() && s.resolved() {
                    let k = Key {
                        bits: s.bits,
                        v6: s.meta & V6 != 0,
                    };
                    let e = Entry {
                        mac: s.mac(),
                        learned: self.at(s.learned),
                    };
                    v.push(((port, k.addr()), e));
                }
            }
        }
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// Per port: the entries in use (resolved or being resolved) and the
    /// limit.
    pub fn sizes(&self) -> Vec<(usize, usize)> {
        self.ports
            .iter()
            .map(|t| (t.len.load(Ordering::Relaxed), t.limit))
            .collect()
    }
}

/// Whether `addr` can be a neighbour: not unspecified, multicast,
/// broadcast or loopback.
fn unicast(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            !(a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback())
        }
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast() || a.is_loopback()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn learns_only_what_was_asked_and_ages() {
        let n = Neighbors::new(&[16, 16]);
        let t0 = Instant::now();
        let a = ip("198.19.1.11");
        assert!(n.lookup(1, a, t0).is_none());
        // An answer nobody asked for is not learned.
        assert_eq!(n.learn(1, a, [2, 0, 0, 0, 0, 1], t0), Learn::Unsolicited);
        assert!(n.lookup(1, a, t0).is_none());
        assert_eq!(n.counters.unsolicited.load(Ordering::Relaxed), 1);
        // Asked for: an entry being resolved, not usable yet.
        assert!(n.resolving(1, a, t0));
        assert!(n.lookup(1, a, t0).is_none());
        assert_eq!(n.learn(1, a, [2, 0, 0, 0, 0, 1], t0), Learn::Updated);
        assert_eq!(n.lookup(1, a, t0).map(|e| e.mac), Some([2, 0, 0, 0, 0, 1]));
        // Per port.
        assert!(n.lookup(0, a, t0).is_none());
        assert_eq!(n.learn(0, a, [2, 0, 0, 0, 0, 1], t0), Learn::Unsolicited);
        // Aged out, but still present: a later answer updates it.
        assert!(n.lookup(1, a, t0 + REACHABLE).is_none());
        let t1 = t0 + REACHABLE + Duration::from_secs(1);
        assert_eq!(n.learn(1, a, [2, 0, 0, 0, 0, 3], t1), Learn::Updated);
        assert_eq!(n.lookup(1, a, t1).map(|e| e.mac), Some([2, 0, 0, 0, 0, 3]));
        // Multicast and zero MACs, multicast and unspecified addresses are
        // never learned.
        let b = ip("198.19.1.12");
        assert!(n.resolving(1, b, t0));
        assert_eq!(n.learn(1, b, [1, 0, 0x5e, 0, 0, 1], t0), Learn::Invalid);
        assert_eq!(n.learn(1, b, [0; 6], t0), Learn::Invalid);
        assert!(n.lookup(1, b, t0).is_none());
        assert!(!n.resolving(1, ip("224.0.0.1"), t0));
        assert!(!n.resolving(1, ip("0.0.0.0"), t0));
        assert!(!n.resolving(1, ip("ff02::1"), t0));
        // A changed MAC replaces the old one at once.
        assert_eq!(n.learn(1, a, [2, 0, 0, 0, 0, 2], t1), Learn::Updated);
        assert_eq!(n.lookup(1, a, t1).map(|e| e.mac), Some([2, 0, 0, 0, 0, 2]));
        // Unknown ports hold nothing.
        assert!(!n.resolving(7, a, t0));
        assert_eq!(n.learn(7, a, [2, 0, 0, 0, 0, 1], t0), Learn::Invalid);
        // IPv4 and IPv6 keys do not mix.
        let v6 = ip("::c613:10b");
        assert_eq!(n.learn(1, v6, [2, 0, 0, 0, 0, 1], t1), Learn::Unsolicited);
    }

    #[test]
    fn bounded_per_port() {
        let n = Neighbors::new(&[16, 64]);
        let t0 = Instant::now();
        let mut admitted = 0;
        for i in 0..10_000u32 {
            let a = IpAddr::V4((0xc612_0000 | i).into());
            admitted += usize::from(n.resolving(0, a, t0));
            assert!(n.sizes()[0].0 <= 16);
        }
        assert_eq!(n.sizes()[0], (16, 16));
        assert_eq!(n.sizes()[1], (0, 64));
        // Entries being resolved give way to newer ones: every address got
        // its turn.
        assert!(admitted > 9_900, "{admitted}");
        // A resolved, fresh entry is never pushed out by new resolutions.
        let n = Neighbors::new(&[16]);
        let keep = ip("198.18.0.2");
        assert!(n.resolving(0, keep, t0));
        assert_eq!(n.learn(0, keep, [2, 0, 0, 0, 0, 9], t0), Learn::Updated);
        for i in 0..10_000u32 {
            let a = IpAddr::V4((0xc612_1000 | i).into());
            n.resolving(0, a, t0);
        }
        assert_eq!(
            n.lookup(0, keep, t0).map(|e| e.mac),
            Some([2, 0, 0, 0, 0, 9])
        );
        // When every entry is resolved and in use, new ones are refused
        // and counted.
        for i in 0..10_000u32 {
            let a = IpAddr::V4((0xc612_2000 | i).into());
            if n.resolving(0, a, t0) {
                n.learn(0, a, [2, 0, 0, 0, 1, 1], t0);
            }
        }
        assert_eq!(n.sizes()[0], (16, 16));
        assert!(n.counters.table_full.load(Ordering::Relaxed) > 0);
        assert!(n.lookup(0, keep, t0).is_some());
        // Once they are idle, room is made again.
        let later = t0 + IDLE + Duration::from_secs(1);
        assert!(n.resolving(0, ip("198.18.200.1"), later));
        assert_eq!(n.sizes()[0], (16, 16));
    }

    #[test]
    fn updates_take_constant_time() {
        // A table that copies its whole map on each update takes seconds
        // for 20 000 updates. Here an update touches
        // one bucket whatever the table holds.
        let n = Neighbors::new(&[65536]);
        let t0 = Instant::now();
        let addrs: Vec<IpAddr> = (0..20_000u32)
            .map(|i| IpAddr::V4((0xc612_0000 | i).into()))
            .collect();
        let time = |from: usize, to: usize| {
            let s = Instant::now();
            for a in &addrs[from..to] {
                assert!(n.resolving(0, *a, t0));
                assert_eq!(n.learn(0, *a, [2, 0, 0, 0, 0, 1], t0), Learn::Updated);
            }
            s.elapsed()
        };
        let first = time(0, 1000);
        time(1000, 19_000);
        let last = time(19_000, 20_000);
        assert_eq!(n.sizes()[0].0, 20_000);
        // Generous: a loaded machine, but far from the linear growth a
        // copy gives (19 000 entries against 1 000).
        assert!(
            last < first * 8 + Duration::from_millis(20),
            "first 1000: {first:?}, last 1000: {last:?}"
        );
        assert!(
            first + last < Duration::from_millis(500),
            "{first:?} {last:?}"
        );
    }

    #[test]
    fn readers_never_see_a_torn_entry() {
        let n = Neighbors::new(&[16]);
        let a = ip("198.18.0.2");
        let t0 = Instant::now();
        assert!(n.resolving(0, a, t0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let n = n.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(e) = n.lookup(0, a, Instant::now()) {
                        // Every MAC written has all six bytes equal.
                        assert!(e.mac.iter().all(|b| *b == e.mac[0]), "{:?}", e.mac);
                        seen += 1;
                    }
                }
                seen
            })
        };
        for i in 0..200_000u32 {
            let b = u8::try_from(i % 100).expect("small") * 2 + 2;
            n.learn(
                0,
                a,
                [b; 6],
                Instant::now() + Duration::from_secs(u64::from(i)),
            );
        }
        stop.store(true, Ordering::Relaxed);
        assert!(reader.join().expect("reader") > 0);
    }

    #[test]
    fn claims_are_counted() {
        let n = Neighbors::new(&[16]);
        let t0 = Instant::now();
        for i in 0..5u64 {
            n.refuse_claim(
                0,
                ip("198.18.0.10"),
                [2, 0, 0, 0, 0, 0x66],
                t0 + Duration::from_millis(i),
            );
        }
        assert_eq!(n.counters.own_address_claims.load(Ordering::Relaxed), 5);
        assert_eq!(n.claims_unlogged.load(Ordering::Relaxed), 4);
    }
}
