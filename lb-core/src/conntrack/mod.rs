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
//!
//! Here: the public types and [`SessionTable`], which splits keys by
//! family. The parts: `table.rs` (one family's slab, index, expiry and
//! early drop), `index.rs` (the key-hash index), `half_open.rs` (the ring
//! early drop reads), `tcp.rs` (timeouts and TCP states), `window.rs`
//! (TCP sequence windows).

mod half_open;
mod index;
mod table;
mod tcp;
mod window;

pub use tcp::{flags as tcp_flags, valid_flags as tcp_valid_flags, TcpState, Timeouts};
pub use window::{SegmentCheck, TcpSegment, TcpWindow};

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::flow::FlowKey;
use crate::Nanos;
use half_open::HalfOpen;
use index::Index;
use table::*;
use tcp::{PROTO_TCP, SEEN_FIN_ORIG, SEEN_FIN_REPLY, SEEN_RST};

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
    started: Nanos,
    packets: [u32; 2],
    bytes: [u64; 2],
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

    /// Whether a RST ended the TCP session (an exact one: a RST that only
    /// fell inside the window leaves the state to the endpoint's answer).
    pub fn rst_seen(&self) -> bool {
        self.seen & SEEN_RST != 0
    }

    /// When the session was created (or its tuple last reused by a new
    /// connection).
    pub fn started(&self) -> Nanos {
        self.started
    }

    /// Packets counted in direction `dir` ([`SessionTable::count`];
    /// saturates at `u32::MAX`).
    pub fn packets(&self, dir: Dir) -> u32 {
        self.packets[dir.index()]
    }

    /// IP bytes counted in direction `dir`.
    pub fn bytes(&self, dir: Dir) -> u64 {
        self.bytes[dir.index()]
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

    /// Counts a packet of `bytes` (its IP length) in direction `dir` of
    /// session `id` (see [`Session::packets`], [`Session::bytes`]).
    /// Nothing for a stale `id`.
    #[inline]
    pub fn count(&mut self, id: SessionId, dir: Dir, bytes: usize) {
        family!(mut self, id.is_ipv6(), |t| t.count(id, dir, bytes))
    }

    /// Sets session `id`'s counters to zero and its start to `now`: its
    /// tuple now carries a new connection.
    pub fn restart(&mut self, id: SessionId, now: Nanos) {
        family!(mut self, id.is_ipv6(), |t| t.restart(id, now))
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

    /// Examines the next `scan` slots of each family's slab (at most the
    /// whole slab) from where the previous sweep stopped, and reaps every
    /// expired session among them. Returns how many were reaped.
    pub fn sweep(&mut self, now: Nanos, scan: usize) -> usize {
        self.v4.walk(now, scan, usize::MAX) + self.v6.walk(now, scan, usize::MAX)
    }

    /// The slots of the larger family's slab (occupied or free): what one
    /// full [`SessionTable::sweep`] examines.
    pub fn slab_len(&self) -> usize {
        self.v4.slab_len().max(self.v6.slab_len())
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
