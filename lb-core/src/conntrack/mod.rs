//! The per-worker session (connection tracking) table.
//!
//! ```
//! use std::net::IpAddr;
//! use lb_core::conntrack::{tcp_flags, Dir, SessionTable, Timeouts};
//! use lb_core::flow::FlowKey;
//! use lb_core::NANOS_PER_SEC;
//!
//! let ip = |s: &str| s.parse::<IpAddr>().unwrap();
//! // client → VIP, and the reply as it comes back after full NAT:
//! // backend → local address.
//! let orig = FlowKey { src: ip("198.51.100.7"), dst: ip("203.0.113.1"), proto: 6, sport: 40000, dport: 80 };
//! let reply = FlowKey { src: ip("10.0.0.5"), dst: ip("10.0.255.1"), proto: 6, sport: 8080, dport: 61000 };
//!
//! let timeouts = Timeouts::default(); // 910 s idle
//! let mut table: SessionTable<u16> = SessionTable::new(1024);
//! let now = 5 * NANOS_PER_SEC;
//! let id = table.insert(orig, reply, 61000, now, &timeouts).unwrap();
//! table.update(id, Dir::Orig, Some(tcp_flags::SYN), now, &timeouts);
//!
//! assert_eq!(table.lookup(&reply, now + 1), Some((id, Dir::Reply)));
//! table.update(id, Dir::Reply, Some(tcp_flags::SYN | tcp_flags::ACK), now + 1, &timeouts);
//! assert_eq!(table.payload(id), Some(&61000));
//!
//! // The handshake timeout (5 s) runs from the first packet (the SYN-ACK
//! // did not extend it): then the session is gone and its payload (here
//! // the NAT port) comes back through the reaped queue.
//! let later = now + 5 * NANOS_PER_SEC;
//! assert_eq!(table.lookup(&orig, later), None);
//! let reaped: Vec<u16> = table.drain_reaped().map(|s| s.payload).collect();
//! assert_eq!(reaped, [61000]);
//! assert!(table.is_empty());
//! ```
//!
//! # Design
//!
//! Each address family has a table of its own: an IPv4 session is stored in
//! two 64-byte cache lines (its two keys take 12 bytes each; keys, state,
//! times and payload fill the first, the TCP sequence window goes in the
//! second), an IPv6 session in three. The two tables are sized separately
//! ([`SessionTable::with_capacities`]); a [`SessionId`] says which one holds
//! its session, and a session's two keys are always of the same family.
//!
//! Sessions live in a slab (`Vec` of 64-byte-aligned slots, freed slots
//! reused through a free list threaded through the vacant slots); a
//! [`SessionId`] is a slot index plus a generation, so a stale id never
//! reaches a later occupant of the slot. A flat open-addressing index maps
//! both keys of every session to its slot: 8 bytes a key, sized to any
//! number of buckets (no rounding to a power of two) at a load of 1/2. An
//! IPv4 session thus costs 128 bytes of slot and 32 of index, and 16 more
//! for the ring of half-open sessions that early drop reads (see
//! [`SessionTable::early_drop`]). The slab
//! is reserved up front and the index is allocated zeroed (so untouched
//! pages cost nothing); lookups never allocate.
//!
//! Every session that goes away without the caller asking — expired on
//! [`SessionTable::lookup`], on [`SessionTable::insert`] (an expired holder
//! of a key), swept by [`SessionTable::expire`], or dropped by
//! [`SessionTable::retain`] — is moved whole to the reaped queue, which the
//! caller drains with [`SessionTable::drain_reaped`] to release NAT ports,
//! connection counts and the like. Each session is delivered exactly once.
//! [`SessionTable::remove`] hands the payload back directly instead.
//!
//! Expiry is exact on lookup (a session is alive while `now <
//! expires_at`); `expire` is a clock hand over each slab (a sequential,
//! prefetch-friendly scan), bounded per call.

mod index;
mod tcp;
mod window;

pub use tcp::{flags as tcp_flags, valid_flags as tcp_valid_flags, TcpState, Timeouts};
pub use window::{SegmentCheck, TcpSegment, TcpWindow};

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::flow::FlowKey;
use crate::Nanos;
use index::Index;
use tcp::{PROTO_TCP, SEEN_FIN_ORIG, SEEN_FIN_REPLY};

/// Which of a session's two keys a packet matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dir {
    /// As the session's first packet arrived (client → load balancer).
    Orig = 0,
    /// The way replies arrive (e.g. backend → local address after NAT).
    Reply = 1,
}

impl Dir {
    /// 0 for `Orig`, 1 for `Reply` (index into per-direction counters).
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn opposite(self) -> Dir {
        match self {
            Dir::Orig => Dir::Reply,
            Dir::Reply => Dir::Orig,
        }
    }
}

/// Bit of [`SessionId::slot`]'s raw value marking the IPv6 table.
const V6_SLOT: u32 = 1 << 31;

/// Bit of a key hash ([`SessionTable::hash_key`]) marking an IPv6 key; the
/// index uses only the low 32 bits.
const V6_HASH: u64 = 1 << 63;

/// A handle on a session: family, slot index and generation. Stale handles
/// (the session went away) are rejected by every method taking one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId {
    /// The slot, with [`V6_SLOT`] set for the IPv6 table.
    slot: u32,
    gen: u32,
}

impl SessionId {
    /// The slot within its family's slab (dense, below that family's
    /// capacity), e.g. to index a side table together with
    /// [`SessionId::is_ipv6`].
    pub fn slot(self) -> usize {
        (self.slot & !V6_SLOT) as usize
    }

    /// Whether the session is in the IPv6 table.
    pub fn is_ipv6(self) -> bool {
        self.slot & V6_SLOT != 0
    }
}

/// Why [`SessionTable::insert`] refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    #[error("session table full ({capacity} sessions of the family)")]
    Full { capacity: usize },
    #[error("a live session already holds the {0:?} key")]
    KeyExists(Dir),
    #[error("the original and reply keys are identical")]
    SameKeys,
    #[error("the keys mix address families or protocols")]
    Mismatch,
}

/// A session as the table reports it: its keys, state and times, and the
/// payload (`&T`, `&mut T` or `T`, depending on the method that returns it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session<P> {
    orig: FlowKey,
    reply: FlowKey,
    /// The caller's per-session data (backend, NAT port, ...).
    pub payload: P,
    expires_at: Nanos,
    last_seen: Nanos,
    tcp_state: Option<TcpState>,
    /// `tcp::SEEN_*` bits.
    seen: u8,
}

impl<P> Session<P> {
    /// The key of the first packet.
    pub fn orig(&self) -> &FlowKey {
        &self.orig
    }

    /// The key reply packets arrive with.
    pub fn reply(&self) -> &FlowKey {
        &self.reply
    }

    /// The key for direction `dir`.
    pub fn key(&self, dir: Dir) -> &FlowKey {
        match dir {
            Dir::Orig => &self.orig,
            Dir::Reply => &self.reply,
        }
    }

    /// The TCP state; `None` for other protocols.
    pub fn tcp_state(&self) -> Option<TcpState> {
        self.tcp_state
    }

    /// Whether a FIN was seen in direction `dir` (TCP).
    pub fn fin_seen(&self, dir: Dir) -> bool {
        let bit = match dir {
            Dir::Orig => SEEN_FIN_ORIG,
            Dir::Reply => SEEN_FIN_REPLY,
        };
        self.seen & bit != 0
    }

    /// When the last packet was accounted by [`SessionTable::update`] (the
    /// creation time before that).
    pub fn last_seen(&self) -> Nanos {
        self.last_seen
    }

    /// The session is gone at and after this instant unless refreshed.
    pub fn expires_at(&self) -> Nanos {
        self.expires_at
    }

    /// Whether the session is expired at `now`.
    pub fn is_expired(&self, now: Nanos) -> bool {
        now >= self.expires_at
    }
}

/// An address of one family, as the family's table stores it.
trait Addr: Copy + Eq + fmt::Debug {
    fn to_ip(self) -> IpAddr;
    /// The key hashed: the addresses and the ports and protocol.
    fn hash(h: &ahash::RandomState, k: &Key<Self>, proto: u8) -> u64;
}

impl Addr for Ipv4Addr {
    #[inline]
    fn to_ip(self) -> IpAddr {
        IpAddr::V4(self)
    }

    #[inline]
    fn hash(h: &ahash::RandomState, k: &Key<Self>, proto: u8) -> u64 {
        let addrs = (u64::from(u32::from(k.src)) << 32) | u64::from(u32::from(k.dst));
        h.hash_one((addrs, k.ports_proto(proto)))
    }
}

impl Addr for Ipv6Addr {
    #[inline]
    fn to_ip(self) -> IpAddr {
        IpAddr::V6(self)
    }

    #[inline]
    fn hash(h: &ahash::RandomState, k: &Key<Self>, proto: u8) -> u64 {
        h.hash_one((u128::from(k.src), u128::from(k.dst), k.ports_proto(proto)))
    }
}

/// A key without its protocol (a session stores that once): 12 bytes for
/// IPv4, 36 for IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
struct Key<A> {
    src: A,
    dst: A,
    sport: u16,
    dport: u16,
}

impl<A: Addr> Key<A> {
    fn to_flow(self, proto: u8) -> FlowKey {
        FlowKey {
            src: self.src.to_ip(),
            dst: self.dst.to_ip(),
            proto,
            sport: self.sport,
            dport: self.dport,
        }
    }
}

impl<A> Key<A> {
    #[inline]
    fn ports_proto(&self, proto: u8) -> u64 {
        (u64::from(self.sport) << 24) | (u64::from(self.dport) << 8) | u64::from(proto)
    }
}

/// One session as its family's slab stores it. The hot fields come first:
/// a lookup reads the first cache line; an update of a TCP session also
/// the line of the sequence window, the last (see
/// [`SessionTable::warm_session`], which reads both).
#[derive(Debug, Clone)]
#[repr(C, align(64))]
struct Stored<A, T> {
    orig: Key<A>,
    reply: Key<A>,
    proto: u8,
    tcp_state: Option<TcpState>,
    seen: u8,
    /// A packet came in the reply direction.
    replied: bool,
    gen: u32,
    expires_at: Nanos,
    last_seen: Nanos,
    payload: T,
    /// TCP sequence tracking (after the payload: it takes an IPv4 session
    /// into a second cache line, an IPv6 one into a third).
    window: TcpWindow,
}

impl<A: Addr, T> Stored<A, T> {
    /// Accounts a packet in direction `dir` at `now`: last seen, and the
    /// expiry for the current state.
    #[inline]
    fn refresh(&mut self, dir: Dir, now: Nanos, timeouts: &Timeouts) {
        self.replied |= dir == Dir::Reply;
        self.last_seen = self.last_seen.max(now);
        self.expires_at = self.last_seen.saturating_add(timeouts.for_session(
            self.proto,
            self.tcp_state,
            self.replied,
        ));
    }

    /// Moves the TCP state from `state` by a packet with `tcp_flags`. A
    /// closed tuple reused by a new connection has not been answered yet.
    #[inline]
    fn advance(&mut self, state: TcpState, dir: Dir, tcp_flags: u8) {
        use tcp::flags::{FIN, RST, SYN};
        if state == TcpState::Established && tcp_flags & (SYN | FIN | RST) == 0 {
            // The common segment moves nothing.
            return;
        }
        let (next, seen) = tcp::advance(state, self.seen, dir == Dir::Reply, tcp_flags);
        if state == TcpState::Closed && next == TcpState::SynSent {
            self.replied = false;
        }
        self.tcp_state = Some(next);
        self.seen = seen;
    }

    fn key(&self, dir: Dir) -> &Key<A> {
        match dir {
            Dir::Orig => &self.orig,
            Dir::Reply => &self.reply,
        }
    }

    /// The session decoded, its payload left out (see [`Session::with`]).
    fn report(&self) -> Session<()> {
        Session {
            orig: self.orig.to_flow(self.proto),
            reply: self.reply.to_flow(self.proto),
            payload: (),
            expires_at: self.expires_at,
            last_seen: self.last_seen,
            tcp_state: self.tcp_state,
            seen: self.seen,
        }
    }

    fn into_report(self) -> Session<T> {
        self.report().with(self.payload)
    }
}

impl Session<()> {
    /// The same session with `payload`.
    fn with<P>(self, payload: P) -> Session<P> {
        Session {
            orig: self.orig,
            reply: self.reply,
            payload,
            expires_at: self.expires_at,
            last_seen: self.last_seen,
            tcp_state: self.tcp_state,
            seen: self.seen,
        }
    }
}

/// No next free slot.
const NO_SLOT: u32 = u32::MAX;

#[derive(Debug, Clone)]
enum Slot<A, T> {
    /// A free slot: the generation its next session gets, and the next
    /// free slot.
    Vacant {
        gen: u32,
        next: u32,
    },
    Occupied(Stored<A, T>),
}

/// The largest capacity of each family's table (slots and directions are
/// packed in a `u32`, with a bit for the family).
pub const MAX_CAPACITY: usize = 1 << 30;

/// Index buckets per session: its two keys, at a load of at most 1/2
/// (`Table::new` sizes the index for `2 * capacity` entries).
const INDEX_BUCKETS_PER_SESSION: usize = 4;

/// How many slots [`SessionTable::expire`] examines per unit of budget.
pub const EXPIRE_SCAN_PER_BUDGET: usize = 32;

/// How many of the oldest half-open sessions [`SessionTable::early_drop`]
/// looks at, at most.
pub const EARLY_DROP_SCAN: usize = 64;

/// The half-open TCP sessions of a table in the order they became
/// half-open, so early drop finds the oldest in O(1): a ring of `(slot,
/// generation)` entries with room for twice the table's sessions. Entries
/// of sessions that completed their handshake or went away stay until
/// they reach the front, or until the ring fills up and is compacted
/// (which leaves at most as many entries as the table holds sessions, so
/// compactions cost O(1) per entry pushed); `count` is exact.
#[derive(Debug, Clone)]
struct HalfOpen {
    ring: Vec<u64>,
    head: usize,
    len: usize,
    /// Half-open sessions in the table.
    count: usize,
}

/// A ring entry that no longer names a session.
const FORGOTTEN: u64 = u64::MAX;

impl HalfOpen {
    const BYTES_PER_SESSION: usize = 2 * std::mem::size_of::<u64>();

    fn new(capacity: usize) -> HalfOpen {
        HalfOpen {
            // Zeroed, so untouched pages cost nothing.
            ring: vec![0; 2 * capacity.max(1)],
            head: 0,
            len: 0,
            count: 0,
        }
    }

    fn is_full(&self) -> bool {
        self.len == self.ring.len()
    }

    /// A session became half-open (`count` grows by one). The ring must
    /// not be full.
    fn push(&mut self, slot: u32, gen: u32) {
        debug_assert!(!self.is_full(), "compact the ring first");
        self.count += 1;
        let cap = self.ring.len();
        if self.len == cap {
            // Not reached: the oldest entry goes.
            self.pop_front();
        }
        let at = (self.head + self.len) % cap;
        self.ring[at] = (u64::from(slot) << 32) | u64::from(gen);
        self.len += 1;
    }

    /// The `i`-th oldest entry.
    fn get(&self, i: usize) -> (u32, u32) {
        let e = self.ring[(self.head + i) % self.ring.len()];
        if e == FORGOTTEN {
            return (NO_SLOT, 0);
        }
        ((e >> 32) as u32, e as u32)
    }

    fn forget(&mut self, i: usize) {
        let at = (self.head + i) % self.ring.len();
        self.ring[at] = FORGOTTEN;
    }

    fn pop_front(&mut self) {
        if self.len > 0 {
            self.head = (self.head + 1) % self.ring.len();
            self.len -= 1;
        }
    }

    /// Keeps only the entries for which `live` holds, in their order.
    fn compact(&mut self, mut live: impl FnMut(u32, u32) -> bool) {
        let cap = self.ring.len();
        let mut kept = 0;
        for i in 0..self.len {
            let (slot, gen) = self.get(i);
            if slot != NO_SLOT && live(slot, gen) {
                self.ring[(self.head + kept) % cap] = self.ring[(self.head + i) % cap];
                kept += 1;
            }
        }
        self.len = kept;
    }
}

/// The sessions of one address family.
struct Table<A, T> {
    slots: Vec<Slot<A, T>>,
    /// Head of the free list threaded through the vacant slots.
    free: u32,
    index: Index,
    hasher: ahash::RandomState,
    len: usize,
    capacity: usize,
    hand: usize,
    reaped: Vec<Stored<A, T>>,
    /// Index entries of reply keys waiting for [`Table::flush`]: (hash,
    /// value).
    pending: Vec<(u64, u32)>,
    /// Set on the slots of this table's [`SessionId`]s.
    family_bit: u32,
    /// Half-open TCP sessions, oldest first, for [`Table::early_drop`].
    half_open: HalfOpen,
}

impl<A: Addr, T> Table<A, T> {
    fn new(capacity: usize, hasher: ahash::RandomState, family_bit: u32) -> Self {
        assert!(
            capacity <= MAX_CAPACITY,
            "session table capacity {capacity} > {MAX_CAPACITY}"
        );
        Table {
            slots: Vec::with_capacity(capacity),
            free: NO_SLOT,
            index: Index::with_max_entries(2 * capacity),
            hasher,
            len: 0,
            capacity,
            hand: 0,
            reaped: Vec::with_capacity(capacity.min(4096)),
            pending: Vec::with_capacity(256),
            family_bit,
            half_open: HalfOpen::new(capacity),
        }
    }

    fn prefault(&mut self) {
        let start = self.slots.len();
        let cap = self.capacity;
        // Fresh slots are handed out lowest first, as without prefaulting,
        // then the slots freed before.
        let old_free = self.free;
        self.slots.extend((start..cap).map(|s| Slot::Vacant {
            gen: 0,
            next: if s + 1 < cap { slot32(s + 1) } else { old_free },
        }));
        if start < cap {
            self.free = slot32(start);
        }
        self.index.prefault();
        self.reaped.reserve(self.capacity.min(4096));
    }

    fn bytes_per_session(&self) -> usize {
        let slot = std::mem::size_of::<Slot<A, T>>() + HalfOpen::BYTES_PER_SESSION;
        slot + (self.index.buckets() * std::mem::size_of::<u64>()).div_ceil(self.capacity.max(1))
    }

    /// The key's hash, with [`V6_HASH`] set in the IPv6 table.
    #[inline]
    fn hash(&self, k: &Key<A>, proto: u8) -> u64 {
        let h = A::hash(&self.hasher, k, proto) & !V6_HASH;
        if self.family_bit != 0 {
            h | V6_HASH
        } else {
            h
        }
    }

    #[inline]
    fn warm_session(&self, bucket: u64) -> u64 {
        if bucket == 0 {
            return 0;
        }
        let value = ((bucket as u32).wrapping_sub(1) >> 1) as usize;
        match self.slots.get(value) {
            // The slot's first line (tag and keys), for IPv6 its second
            // (times and payload), and its last (the TCP window).
            Some(Slot::Occupied(s)) => {
                u64::from(s.orig.sport) ^ s.last_seen ^ bucket ^ u64::from(s.window.last_byte())
            }
            _ => bucket,
        }
    }

    #[inline]
    fn find_hashed(&self, k: &Key<A>, proto: u8, hash: u64) -> Option<(u32, Dir)> {
        let slots = &self.slots;
        let is_match = |v: u32| match &slots[(v >> 1) as usize] {
            Slot::Occupied(s) => s.key(dir_of(v)) == k && s.proto == proto,
            Slot::Vacant { .. } => false,
        };
        let v = match self.index.find(hash, is_match) {
            Some((_, v)) => v,
            // Reply keys not yet in the index (see `insert_deferred`).
            None => self
                .pending
                .iter()
                .find(|&&(h, v)| h == hash && is_match(v))
                .map(|&(_, v)| v)?,
        };
        Some((v >> 1, dir_of(v)))
    }

    #[inline]
    fn find(&self, k: &Key<A>, proto: u8) -> Option<(u32, Dir)> {
        self.find_hashed(k, proto, self.hash(k, proto))
    }

    #[inline]
    fn lookup_hashed(
        &mut self,
        k: &Key<A>,
        proto: u8,
        hash: u64,
        now: Nanos,
    ) -> Option<(SessionId, Dir)> {
        let (slot, dir) = self.find_hashed(k, proto, hash)?;
        match &self.slots[slot as usize] {
            Slot::Occupied(s) if s.expires_at > now => Some((self.id(slot, s.gen), dir)),
            _ => {
                self.reap_slot(slot);
                None
            }
        }
    }

    fn id(&self, slot: u32, gen: u32) -> SessionId {
        SessionId {
            slot: slot | self.family_bit,
            gen,
        }
    }

    /// Whether `slot` holds a session expired at `now`.
    #[inline]
    fn slot_expired(&self, slot: usize, now: Nanos) -> bool {
        match &self.slots[slot] {
            Slot::Occupied(s) => s.expires_at <= now,
            Slot::Vacant { .. } => false,
        }
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut warm = 0u64;
        for &(h, _) in &self.pending {
            warm ^= self.index.bucket_of(h);
        }
        std::hint::black_box(warm);
        for (h, v) in self.pending.drain(..) {
            self.index.insert(h, v);
        }
    }

    /// Adds a session; `orig_hash` is given when the caller just found no
    /// session holding `orig` (which is then not looked up again).
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        orig: Key<A>,
        orig_hash: Option<u64>,
        reply: Key<A>,
        proto: u8,
        payload: T,
        now: Nanos,
        timeouts: &Timeouts,
        defer_reply: bool,
    ) -> Result<SessionId, InsertError> {
        if orig == reply {
            return Err(InsertError::SameKeys);
        }
        debug_assert!(
            orig_hash
                .is_none_or(|h| h == self.hash(&orig, proto) && self.find(&orig, proto).is_none()),
            "orig key {orig:?} held, or its hash wrong"
        );
        let checked: &[(&Key<A>, Dir)] = match (orig_hash.is_some(), defer_reply) {
            (true, true) => &[],
            (true, false) => &[(&reply, Dir::Reply)],
            (false, true) => &[(&orig, Dir::Orig)],
            (false, false) => &[(&orig, Dir::Orig), (&reply, Dir::Reply)],
        };
        for &(key, dir) in checked {
            if let Some((slot, _)) = self.find(key, proto) {
                if !self.slot_expired(slot as usize, now) {
                    return Err(InsertError::KeyExists(dir));
                }
                self.reap_slot(slot);
            }
        }
        if self.len >= self.capacity {
            return Err(InsertError::Full {
                capacity: self.capacity,
            });
        }

        let tcp_state = (proto == PROTO_TCP).then_some(TcpState::SynSent);
        let expires_at = now.saturating_add(timeouts.for_session(proto, tcp_state, false));
        // The head of the free list, else a fresh slot at the end (the
        // free list is empty when its head, NO_SLOT, is beyond the slab).
        let (slot, gen) = match self.slots.get(self.free as usize) {
            Some(&Slot::Vacant { gen, next }) => (std::mem::replace(&mut self.free, next), gen),
            Some(Slot::Occupied(_)) => unreachable!("free list holds an occupied slot"),
            None => {
                self.slots.push(Slot::Vacant {
                    gen: 0,
                    next: NO_SLOT,
                });
                (slot32(self.slots.len() - 1), 0)
            }
        };
        let ho = orig_hash.unwrap_or_else(|| self.hash(&orig, proto));
        let hr = self.hash(&reply, proto);
        self.index.insert(ho, slot << 1);
        if defer_reply {
            self.pending.push((hr, (slot << 1) | 1));
        } else {
            self.index.insert(hr, (slot << 1) | 1);
        }
        if tcp::is_half_open(tcp_state) {
            self.push_half_open(slot, gen);
        }
        self.slots[slot as usize] = Slot::Occupied(Stored {
            orig,
            reply,
            proto,
            tcp_state,
            seen: 0,
            replied: false,
            gen,
            expires_at,
            last_seen: now,
            payload,
            window: TcpWindow::default(),
        });
        self.len += 1;
        Ok(self.id(slot, gen))
    }

    #[inline]
    fn get(&self, id: SessionId) -> Option<&Stored<A, T>> {
        match self.slots.get(id.slot())? {
            Slot::Occupied(s) if s.gen == id.gen => Some(s),
            _ => None,
        }
    }

    #[inline]
    fn get_mut(&mut self, id: SessionId) -> Option<&mut Stored<A, T>> {
        match self.slots.get_mut(id.slot())? {
            Slot::Occupied(s) if s.gen == id.gen => Some(s),
            _ => None,
        }
    }

    #[inline]
    fn update(
        &mut self,
        id: SessionId,
        dir: Dir,
        tcp_flags: Option<u8>,
        now: Nanos,
        timeouts: &Timeouts,
    ) -> bool {
        let Some(s) = self.get_mut(id) else {
            return false;
        };
        let was_half_open = tcp::is_half_open(s.tcp_state);
        if let (Some(state), Some(f)) = (s.tcp_state, tcp_flags) {
            s.advance(state, dir, f);
        }
        self.settle(id, was_half_open, dir, now, timeouts);
        true
    }

    /// Refreshes session `id` after a packet in `dir` that found it
    /// half-open or not (`was_half_open`), and keeps the ring of half-open
    /// sessions in step with its TCP state. A handshake's timer runs from
    /// its start: retransmitted SYNs and SYN-ACKs (a spoofed client never
    /// answers) do not extend it.
    #[inline]
    fn settle(
        &mut self,
        id: SessionId,
        was_half_open: bool,
        dir: Dir,
        now: Nanos,
        timeouts: &Timeouts,
    ) {
        let Some(s) = self.get_mut(id) else {
            return;
        };
        let half_open = tcp::is_half_open(s.tcp_state);
        if was_half_open && half_open {
            s.replied |= dir == Dir::Reply;
            s.last_seen = s.last_seen.max(now);
        } else {
            s.refresh(dir, now, timeouts);
        }
        let gen = s.gen;
        match (was_half_open, half_open) {
            (true, false) => self.half_open.count -= 1,
            (false, true) => self.push_half_open(slot32(id.slot()), gen),
            _ => {}
        }
    }

    #[inline]
    fn update_tcp(
        &mut self,
        id: SessionId,
        dir: Dir,
        seg: &TcpSegment,
        now: Nanos,
        timeouts: &Timeouts,
    ) -> Option<SegmentCheck> {
        let s = self.get_mut(id)?;
        let Some(state) = s.tcp_state else {
            s.refresh(dir, now, timeouts);
            return Some(SegmentCheck::Accepted);
        };
        let check = s.window.track(state, dir, seg);
        match check {
            SegmentCheck::Accepted | SegmentCheck::Reset => {
                let was_half_open = tcp::is_half_open(Some(state));
                s.advance(state, dir, seg.flags);
                self.settle(id, was_half_open, dir, now, timeouts);
            }
            SegmentCheck::ResetInWindow => {
                // The endpoint decides: its challenge ACK (or anything
                // else) restores the timeout of the state; silence ends
                // the session as a RST would.
                self.settle(id, tcp::is_half_open(Some(state)), dir, now, timeouts);
                if let Some(s) = self.get_mut(id) {
                    s.expires_at = s
                        .expires_at
                        .min(s.last_seen.saturating_add(timeouts.closed));
                }
            }
            SegmentCheck::OutOfWindow if seg.flags & tcp::flags::RST != 0 => {}
            // Passed on, not learned from; it keeps the session alive as
            // any packet of it does (a handshake's timer excepted).
            SegmentCheck::OutOfWindow => {
                self.settle(id, tcp::is_half_open(Some(state)), dir, now, timeouts);
            }
        }
        Some(check)
    }

    fn remove(&mut self, id: SessionId) -> Option<T> {
        self.get(id)?;
        self.take_slot(slot32(id.slot())).map(|s| s.payload)
    }

    fn expire(&mut self, now: Nanos, budget: usize) -> usize {
        let n = self.slots.len();
        if n == 0 || budget == 0 {
            return 0;
        }
        let mut scan = budget.saturating_mul(EXPIRE_SCAN_PER_BUDGET).min(n);
        let mut reaped = 0;
        let mut hand = self.hand % n;
        while scan > 0 && reaped < budget {
            if self.slot_expired(hand, now) {
                self.reap_slot(slot32(hand));
                reaped += 1;
            }
            hand += 1;
            if hand == n {
                hand = 0;
            }
            scan -= 1;
        }
        self.hand = hand;
        reaped
    }

    fn retain(&mut self, keep: &mut impl FnMut(SessionId, Session<&mut T>) -> bool) {
        for slot in 0..self.slots.len() {
            let id = match &self.slots[slot] {
                Slot::Occupied(s) => self.id(slot32(slot), s.gen),
                Slot::Vacant { .. } => continue,
            };
            if let Slot::Occupied(s) = &mut self.slots[slot] {
                if !keep(id, s.report().with(&mut s.payload)) {
                    self.reap_slot(slot32(slot));
                }
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (SessionId, Session<&T>)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(move |(slot, s)| match s {
                Slot::Occupied(s) => {
                    Some((self.id(slot32(slot), s.gen), s.report().with(&s.payload)))
                }
                Slot::Vacant { .. } => None,
            })
    }

    /// Files session (`slot`, `gen`) as the newest half-open one.
    fn push_half_open(&mut self, slot: u32, gen: u32) {
        if self.half_open.is_full() {
            let slots = &self.slots;
            self.half_open.compact(|slot, gen| {
                matches!(slots.get(slot as usize),
                    Some(Slot::Occupied(s)) if s.gen == gen && tcp::is_half_open(s.tcp_state))
            });
        }
        self.half_open.push(slot, gen);
    }

    /// Removes the oldest half-open session for which `want` holds,
    /// looking at no more than [`EARLY_DROP_SCAN`] of the oldest entries.
    fn early_drop(&mut self, want: &mut impl FnMut(&Session<&T>) -> bool) -> Option<Stored<A, T>> {
        let mut at = 0;
        // Stale entries at the front are dropped as they are met (each
        // once), but no more than this per call.
        let mut steps = 4 * EARLY_DROP_SCAN;
        while at < self.half_open.len && at < EARLY_DROP_SCAN && steps > 0 {
            steps -= 1;
            let (slot, gen) = self.half_open.get(at);
            let live = match self.slots.get(slot as usize) {
                Some(Slot::Occupied(s)) if s.gen == gen && tcp::is_half_open(s.tcp_state) => {
                    Some(want(&s.report().with(&s.payload)))
                }
                _ => None,
            };
            match live {
                // Gone, or no longer half-open: forget it (the oldest ones
                // for good, others marked).
                None if at == 0 => {
                    self.half_open.pop_front();
                    continue;
                }
                None => self.half_open.forget(at),
                Some(true) => {
                    if at == 0 {
                        self.half_open.pop_front();
                    } else {
                        self.half_open.forget(at);
                    }
                    return self.take_slot(slot);
                }
                Some(false) => {}
            }
            at += 1;
        }
        None
    }

    fn reap_slot(&mut self, slot: u32) {
        if let Some(s) = self.take_slot(slot) {
            self.reaped.push(s);
        }
    }

    /// Unlinks the session in `slot` from the index and the slab.
    fn take_slot(&mut self, slot: u32) -> Option<Stored<A, T>> {
        self.flush();
        let idx = slot as usize;
        let (gen, hashes) = match &self.slots[idx] {
            Slot::Occupied(s) => {
                if tcp::is_half_open(s.tcp_state) {
                    self.half_open.count -= 1;
                }
                (
                    s.gen,
                    [self.hash(&s.orig, s.proto), self.hash(&s.reply, s.proto)],
                )
            }
            Slot::Vacant { .. } => return None,
        };
        for (dir, hash) in hashes.into_iter().enumerate() {
            let want = (slot << 1) | dir as u32;
            let (pos, _) = self
                .index
                .find(hash, |v| v == want)
                .expect("session keys are indexed");
            self.index.remove_at(pos);
        }
        let old = std::mem::replace(
            &mut self.slots[idx],
            Slot::Vacant {
                gen: gen.wrapping_add(1),
                next: self.free,
            },
        );
        self.free = slot;
        self.len -= 1;
        match old {
            Slot::Occupied(s) => Some(s),
            Slot::Vacant { .. } => None,
        }
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        assert_eq!(self.index.len() + self.pending.len(), 2 * self.len);
        let half_open = self
            .iter()
            .filter(|(_, s)| tcp::is_half_open(s.tcp_state()))
            .count();
        assert_eq!(self.half_open.count, half_open);
        assert_eq!(self.iter().count(), self.len);
        let mut free = 0;
        let mut at = self.free;
        while at != NO_SLOT {
            match self.slots[at as usize] {
                Slot::Vacant { next, .. } => at = next,
                Slot::Occupied(_) => panic!("occupied slot {at} on the free list"),
            }
            free += 1;
            assert!(free <= self.slots.len(), "free list loops");
        }
        assert_eq!(self.slots.len() - self.len, free);
        for (slot, s) in self.slots.iter().enumerate() {
            if let Slot::Occupied(s) = s {
                let slot = slot32(slot);
                assert_eq!(self.find(&s.orig, s.proto), Some((slot, Dir::Orig)));
                assert_eq!(self.find(&s.reply, s.proto), Some((slot, Dir::Reply)));
            }
        }
    }
}

fn slot32(slot: usize) -> u32 {
    u32::try_from(slot).expect("slab length bounded by MAX_CAPACITY")
}

fn dir_of(value: u32) -> Dir {
    if value & 1 == 0 {
        Dir::Orig
    } else {
        Dir::Reply
    }
}

/// A key split by family.
enum Split {
    V4(Key<Ipv4Addr>),
    V6(Key<Ipv6Addr>),
    /// Source and destination of different families: never a session's.
    Mixed,
}

#[inline]
fn split(k: &FlowKey) -> Split {
    match (k.src, k.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => Split::V4(Key {
            src,
            dst,
            sport: k.sport,
            dport: k.dport,
        }),
        (IpAddr::V6(src), IpAddr::V6(dst)) => Split::V6(Key {
            src,
            dst,
            sport: k.sport,
            dport: k.dport,
        }),
        _ => Split::Mixed,
    }
}

/// A bounded per-worker session table, one slab per address family; see
/// the [module docs](self).
pub struct SessionTable<T> {
    v4: Table<Ipv4Addr, T>,
    v6: Table<Ipv6Addr, T>,
}

impl<T> fmt::Debug for SessionTable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionTable")
            .field("len", &[self.v4.len, self.v6.len])
            .field("capacity", &self.capacities())
            .field(
                "index_buckets",
                &[self.v4.index.buckets(), self.v6.index.buckets()],
            )
            .field("reaped", &self.reaped_len())
            .finish_non_exhaustive()
    }
}

/// Runs `$e` with `$t` bound to the table of the family `$v6` names.
macro_rules! family {
    ($self:expr, $v6:expr, |$t:ident| $e:expr) => {
        if $v6 {
            let $t = &$self.v6;
            $e
        } else {
            let $t = &$self.v4;
            $e
        }
    };
    (mut $self:expr, $v6:expr, |$t:ident| $e:expr) => {
        if $v6 {
            let $t = &mut $self.v6;
            $e
        } else {
            let $t = &mut $self.v4;
            $e
        }
    };
}

impl<T> SessionTable<T> {
    /// A table for at most `capacity` sessions of each family, hashing with
    /// a random seed (per process; defeats hash flooding).
    ///
    /// # Panics
    /// If `capacity > MAX_CAPACITY`.
    pub fn new(capacity: usize) -> Self {
        Self::with_capacities(capacity, capacity)
    }

    /// A table for at most `v4` IPv4 and `v6` IPv6 sessions, hashing with a
    /// random seed.
    ///
    /// # Panics
    /// If either capacity is above `MAX_CAPACITY`.
    pub fn with_capacities(v4: usize, v6: usize) -> Self {
        Self::with_hasher(v4, v6, ahash::RandomState::new())
    }

    /// A table for `capacity` sessions of each family, hashing with fixed
    /// seeds (reproducible layouts for tests and benchmarks).
    ///
    /// # Panics
    /// If `capacity > MAX_CAPACITY`.
    pub fn with_seed(capacity: usize, seed: u64) -> Self {
        Self::with_capacities_and_seed(capacity, capacity, seed)
    }

    /// [`SessionTable::with_capacities`] hashing with fixed seeds.
    pub fn with_capacities_and_seed(v4: usize, v6: usize, seed: u64) -> Self {
        Self::with_hasher(
            v4,
            v6,
            ahash::RandomState::with_seeds(
                seed,
                seed ^ 0x9e37_79b9_7f4a_7c15,
                0x2545_f491_4f6c_dd1d,
                0x5851_f42d_4c95_7f2d,
            ),
        )
    }

    fn with_hasher(v4: usize, v6: usize, hasher: ahash::RandomState) -> Self {
        SessionTable {
            v4: Table::new(v4, hasher.clone(), 0),
            v6: Table::new(v6, hasher, V6_SLOT),
        }
    }

    /// Touches all the memory the table will ever use, so that the kernel
    /// maps it now rather than one page fault at a time as sessions arrive
    /// (a data plane calls this at start-up; it commits roughly
    /// `capacity * bytes_per_session()` bytes per family). The table
    /// behaves exactly as before.
    pub fn prefault(&mut self) {
        self.v4.prefault();
        self.v6.prefault();
    }

    /// Sessions held, including expired ones not yet reaped.
    pub fn len(&self) -> usize {
        self.v4.len + self.v6.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The maximum number of sessions of each family (`[IPv4, IPv6]`).
    pub fn capacities(&self) -> [usize; 2] {
        [self.v4.capacity, self.v6.capacity]
    }

    /// Memory per session of a family's table at full capacity: slot and
    /// index buckets (excluding the reaped queue).
    pub fn bytes_per_session(&self, ipv6: bool) -> usize {
        family!(self, ipv6, |t| t.bytes_per_session())
    }

    /// Memory per session of a family's table, known without building one:
    /// the slot, its index buckets and its half-open ring entries. It equals
    /// [`SessionTable::bytes_per_session`] of any table of a few thousand
    /// sessions or more; a configuration's memory estimate is built on it.
    pub const fn session_bytes(ipv6: bool) -> usize {
        let slot = if ipv6 {
            std::mem::size_of::<Slot<Ipv6Addr, T>>()
        } else {
            std::mem::size_of::<Slot<Ipv4Addr, T>>()
        };
        slot + INDEX_BUCKETS_PER_SESSION * std::mem::size_of::<u64>() + HalfOpen::BYTES_PER_SESSION
    }

    /// The hash the table files `key` under, for
    /// [`SessionTable::warm_bucket`] and [`SessionTable::lookup_hashed`].
    #[inline]
    pub fn hash_key(&self, key: &FlowKey) -> u64 {
        match split(key) {
            Split::V4(k) => self.v4.hash(&k, key.proto),
            Split::V6(k) => self.v6.hash(&k, key.proto),
            Split::Mixed => V6_HASH,
        }
    }

    /// The index bucket a lookup of `hash` starts at (a read of it), for
    /// the first stage of a burst's lookups: reading the buckets of a whole
    /// burst one after another lets their cache misses overlap instead of
    /// being paid one lookup at a time. Pass the result to
    /// [`SessionTable::warm_session`].
    #[inline]
    pub fn warm_bucket(&self, hash: u64) -> u64 {
        family!(self, hash & V6_HASH != 0, |t| t.index.bucket_of(hash))
    }

    /// The second stage after [`SessionTable::warm_bucket`]: reads the
    /// session the bucket points to and returns a value derived from it,
    /// which the caller should keep (e.g. pass to `std::hint::black_box`)
    /// so the read happens.
    #[inline]
    pub fn warm_session(&self, hash: u64, bucket: u64) -> u64 {
        family!(self, hash & V6_HASH != 0, |t| t.warm_session(bucket))
    }

    /// [`SessionTable::lookup`] with the hash from
    /// [`SessionTable::hash_key`].
    #[inline]
    pub fn lookup_hashed(
        &mut self,
        key: &FlowKey,
        hash: u64,
        now: Nanos,
    ) -> Option<(SessionId, Dir)> {
        match split(key) {
            Split::V4(k) => self.v4.lookup_hashed(&k, key.proto, hash, now),
            Split::V6(k) => self.v6.lookup_hashed(&k, key.proto, hash, now),
            Split::Mixed => None,
        }
    }

    /// The live session holding `key` and the direction it matched. An
    /// expired session is removed (moved to the reaped queue) and not found.
    /// Does not refresh the session: see [`SessionTable::update`].
    #[inline]
    pub fn lookup(&mut self, key: &FlowKey, now: Nanos) -> Option<(SessionId, Dir)> {
        self.lookup_hashed(key, self.hash_key(key), now)
    }

    /// Whether a session (possibly expired but not yet reaped) holds `key`.
    pub fn contains_key(&self, key: &FlowKey) -> bool {
        match split(key) {
            Split::V4(k) => self.v4.find(&k, key.proto).is_some(),
            Split::V6(k) => self.v6.find(&k, key.proto).is_some(),
            Split::Mixed => false,
        }
    }

    /// Adds a session findable by `orig` (direction [`Dir::Orig`]) and
    /// `reply` ([`Dir::Reply`]), expiring after the handshake timeout for TCP
    /// and the protocol's timeout otherwise. No packet is accounted: call
    /// [`SessionTable::update`] for the first packet too.
    ///
    /// The two keys must have the same protocol and all four addresses the
    /// same family. A key held by an expired session is reclaimed (that
    /// session is reaped); a key held by a live one is an error, as is a
    /// full table (`insert` does not sweep: call [`SessionTable::expire`]
    /// regularly). On error `payload` is dropped: if it owns a resource (a
    /// NAT port), check [`SessionTable::contains_key`] and the room left
    /// first, or release it on error.
    pub fn insert(
        &mut self,
        orig: FlowKey,
        reply: FlowKey,
        payload: T,
        now: Nanos,
        timeouts: &Timeouts,
    ) -> Result<SessionId, InsertError> {
        self.insert_with(orig, None, reply, payload, now, timeouts, false)
    }

    /// [`SessionTable::insert`] for a session whose reply key the caller
    /// knows no session holds (it owns the local port in that key on its
    /// own): the reply key is not looked up, and its index entry is written
    /// by the next [`SessionTable::flush`], so that the index misses of a
    /// burst of new sessions overlap instead of being paid one after
    /// another. The session is found by both keys at once all the same.
    pub fn insert_deferred(
        &mut self,
        orig: FlowKey,
        reply: FlowKey,
        payload: T,
        now: Nanos,
        timeouts: &Timeouts,
    ) -> Result<SessionId, InsertError> {
        debug_assert!(!self.contains_key(&reply), "reply key {reply} in use");
        self.insert_with(orig, None, reply, payload, now, timeouts, true)
    }

    /// [`SessionTable::insert`], or with `defer_reply`
    /// [`SessionTable::insert_deferred`], for an `orig` key the caller has
    /// just looked up with [`SessionTable::lookup_hashed`] and `orig_hash`,
    /// finding no session: the key is neither looked up nor hashed again.
    #[allow(clippy::too_many_arguments)]
    pub fn insert_missed(
        &mut self,
        orig: FlowKey,
        orig_hash: u64,
        reply: FlowKey,
        payload: T,
        now: Nanos,
        timeouts: &Timeouts,
        defer_reply: bool,
    ) -> Result<SessionId, InsertError> {
        debug_assert!(
            !defer_reply || !self.contains_key(&reply),
            "reply key {reply} in use"
        );
        self.insert_with(
            orig,
            Some(orig_hash),
            reply,
            payload,
            now,
            timeouts,
            defer_reply,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_with(
        &mut self,
        orig: FlowKey,
        orig_hash: Option<u64>,
        reply: FlowKey,
        payload: T,
        now: Nanos,
        timeouts: &Timeouts,
        defer: bool,
    ) -> Result<SessionId, InsertError> {
        if orig.proto != reply.proto {
            return Err(InsertError::Mismatch);
        }
        let proto = orig.proto;
        match (split(&orig), split(&reply)) {
            (Split::V4(o), Split::V4(r)) => self
                .v4
                .insert(o, orig_hash, r, proto, payload, now, timeouts, defer),
            (Split::V6(o), Split::V6(r)) => self
                .v6
                .insert(o, orig_hash, r, proto, payload, now, timeouts, defer),
            _ => Err(InsertError::Mismatch),
        }
    }

    /// Writes the index entries [`SessionTable::insert_deferred`] left
    /// waiting: first a read of every bucket they go to, so the misses
    /// overlap, then the entries. Call it after each burst.
    pub fn flush(&mut self) {
        self.v4.flush();
        self.v6.flush();
    }

    /// The session `id`, decoded (its payload borrowed).
    pub fn get(&self, id: SessionId) -> Option<Session<&T>> {
        family!(self, id.is_ipv6(), |t| t
            .get(id)
            .map(|s| s.report().with(&s.payload)))
    }

    /// The payload of session `id`.
    #[inline]
    pub fn payload(&self, id: SessionId) -> Option<&T> {
        family!(self, id.is_ipv6(), |t| t.get(id).map(|s| &s.payload))
    }

    /// The payload of session `id`, to change it.
    #[inline]
    pub fn payload_mut(&mut self, id: SessionId) -> Option<&mut T> {
        family!(mut self, id.is_ipv6(), |t| t.get_mut(id).map(|s| &mut s.payload))
    }

    /// The key of session `id` for direction `dir`.
    #[inline]
    pub fn key(&self, id: SessionId, dir: Dir) -> Option<FlowKey> {
        family!(self, id.is_ipv6(), |t| t
            .get(id)
            .map(|s| s.key(dir).to_flow(s.proto)))
    }

    /// Accounts one packet of session `id` travelling in direction `dir`:
    /// refreshes `last_seen`, advances the TCP state with `tcp_flags` (if
    /// given) and sets the expiry from the new state. Returns false (and does
    /// nothing) if `id` is stale.
    ///
    /// Meant to follow a successful [`SessionTable::lookup`] at the same
    /// `now` (which is what guarantees the session has not expired); a `now`
    /// earlier than `last_seen` does not move it back.
    #[inline]
    pub fn update(
        &mut self,
        id: SessionId,
        dir: Dir,
        tcp_flags: Option<u8>,
        now: Nanos,
        timeouts: &Timeouts,
    ) -> bool {
        family!(mut self, id.is_ipv6(), |t| t.update(
            id, dir, tcp_flags, now, timeouts
        ))
    }

    /// [`SessionTable::update`] for a TCP segment, with sequence tracking
    /// (see [`TcpWindow`]): an in-window segment is accounted as `update`
    /// does; an out-of-window RST changes nothing (the caller drops it); an
    /// out-of-window segment of another kind refreshes the session but
    /// neither moves its state nor teaches the windows; a RST inside the
    /// window but not at an exact sequence number leaves the state and
    /// shortens the expiry to the closed timeout until the next packet.
    /// Returns how the segment fitted, `None` if `id` is stale. Sessions of
    /// other protocols are refreshed and report `Accepted`.
    #[inline]
    pub fn update_tcp(
        &mut self,
        id: SessionId,
        dir: Dir,
        seg: &TcpSegment,
        now: Nanos,
        timeouts: &Timeouts,
    ) -> Option<SegmentCheck> {
        family!(mut self, id.is_ipv6(), |t| t.update_tcp(
            id, dir, seg, now, timeouts
        ))
    }

    /// Removes session `id` and returns its payload (not queued as reaped).
    pub fn remove(&mut self, id: SessionId) -> Option<T> {
        family!(mut self, id.is_ipv6(), |t| t.remove(id))
    }

    /// Sweeps each family's slab for expired sessions from where the
    /// previous call stopped, reaping at most `budget` sessions and
    /// examining at most `EXPIRE_SCAN_PER_BUDGET * budget` slots per family.
    /// Returns how many were reaped (then available from
    /// [`SessionTable::drain_reaped`]).
    pub fn expire(&mut self, now: Nanos, budget: usize) -> usize {
        self.v4.expire(now, budget) + self.v6.expire(now, budget)
    }

    /// Keeps only the sessions for which `keep` returns true; the others are
    /// moved to the reaped queue (e.g. after a reload removed their backend).
    pub fn retain(&mut self, mut keep: impl FnMut(SessionId, Session<&mut T>) -> bool) {
        self.v4.retain(&mut keep);
        self.v6.retain(&mut keep);
    }

    /// Takes the sessions that went away on their own (expired, or dropped
    /// by `retain`) since the last call. Dropping the iterator early still
    /// empties the queue.
    pub fn drain_reaped(&mut self) -> impl Iterator<Item = Session<T>> + '_ {
        let v4 = self.v4.reaped.drain(..).map(Stored::into_report);
        v4.chain(self.v6.reaped.drain(..).map(Stored::into_report))
    }

    /// Sessions waiting in the reaped queue.
    pub fn reaped_len(&self) -> usize {
        self.v4.reaped.len() + self.v6.reaped.len()
    }

    /// Early drop, as Linux conntrack does when its table is full: removes
    /// the oldest half-open TCP session of the family (`ipv6`) for which
    /// `want` holds, among the [`EARLY_DROP_SCAN`] oldest, and returns it
    /// (not queued as reaped). `None` when there is none.
    pub fn early_drop(
        &mut self,
        ipv6: bool,
        mut want: impl FnMut(&Session<&T>) -> bool,
    ) -> Option<Session<T>> {
        family!(mut self, ipv6, |t| t
            .early_drop(&mut want)
            .map(Stored::into_report))
    }

    /// Half-open TCP sessions held (a SYN seen, the handshake not
    /// completed), both families.
    pub fn half_open(&self) -> usize {
        self.v4.half_open.count + self.v6.half_open.count
    }

    /// Every session held (including expired ones not yet reaped): the IPv4
    /// ones, then the IPv6 ones, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (SessionId, Session<&T>)> + '_ {
        self.v4.iter().chain(self.v6.iter())
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        self.v4.check_invariants();
        self.v6.check_invariants();
    }
}

#[cfg(test)]
mod tests;
