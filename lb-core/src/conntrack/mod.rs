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
//! assert_eq!(table.get(id).unwrap().payload, 61000);
//!
//! // Nothing more for the handshake timeout (30 s): the session is gone and
//! // its payload (here the NAT port) comes back through the reaped queue.
//! let later = now + 1 + 30 * NANOS_PER_SEC;
//! assert_eq!(table.lookup(&orig, later), None);
//! let reaped: Vec<u16> = table.drain_reaped().map(|s| s.payload).collect();
//! assert_eq!(reaped, [61000]);
//! assert!(table.is_empty());
//! ```
//!
//! # Design
//!
//! Sessions live in a slab (`Vec` of slots, freed slots reused through a
//! free list); a [`SessionId`] is a slot index plus a generation, so a stale
//! id never reaches a later occupant of the slot. A flat open-addressing
//! index maps both keys of every session to its slot. The slab, the free
//! list and the reaped queue are reserved up front, the index is allocated
//! zeroed (so untouched pages cost nothing); lookups never allocate.
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
//! expires_at`); `expire` is a clock hand over the slab (a sequential,
//! prefetch-friendly scan), bounded per call.

mod index;
mod tcp;

pub use tcp::{flags as tcp_flags, TcpState, Timeouts};

use std::fmt;

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

/// A handle on a session: slot index and generation. Stale handles (the
/// session went away) are rejected by every method taking one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId {
    slot: u32,
    gen: u32,
}

impl SessionId {
    /// The slab slot (dense, `< capacity`), e.g. to index a side table.
    pub fn slot(self) -> usize {
        self.slot as usize
    }
}

/// Why [`SessionTable::insert`] refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    #[error("session table full ({capacity} sessions)")]
    Full { capacity: usize },
    #[error("a live session already holds the {0:?} key")]
    KeyExists(Dir),
    #[error("the original and reply keys are identical")]
    SameKeys,
}

/// One tracked session. Keys, state and times are read through methods (the
/// table indexes the keys and owns the expiry); the payload is the caller's.
///
/// The fields are laid out in this order (`repr(C)`) so that reading a few
/// of them, no more than 64 bytes apart, brings every cache line of the
/// session in (see [`SessionTable::warm_session`]).
#[derive(Debug, Clone)]
#[repr(C)]
pub struct Session<T> {
    orig: FlowKey,
    reply: FlowKey,
    /// The caller's per-session data (backend, NAT port, ...).
    pub payload: T,
    expires_at: Nanos,
    last_seen: Nanos,
    packets: [u64; 2],
    created: Nanos,
    gen: u32,
    tcp_state: Option<TcpState>,
    /// `tcp::SEEN_*` bits.
    seen: u8,
}

impl<T> Session<T> {
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

    pub fn created(&self) -> Nanos {
        self.created
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

    /// Packets accounted per direction (`[orig, reply]`).
    pub fn packets(&self) -> [u64; 2] {
        self.packets
    }
}

#[derive(Debug, Clone)]
enum Slot<T> {
    Vacant { gen: u32 },
    Occupied(Session<T>),
}

/// The largest capacity a table accepts (slots and directions are packed in
/// a `u32`).
pub const MAX_CAPACITY: usize = 1 << 30;

/// How many slots [`SessionTable::expire`] examines per unit of budget.
pub const EXPIRE_SCAN_PER_BUDGET: usize = 32;

/// A bounded per-worker session table; see the [module docs](self).
pub struct SessionTable<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    index: Index,
    hasher: ahash::RandomState,
    len: usize,
    capacity: usize,
    hand: usize,
    reaped: Vec<Session<T>>,
    /// Index entries of reply keys waiting for [`SessionTable::flush`]:
    /// (hash, value).
    pending: Vec<(u64, u32)>,
}

impl<T> fmt::Debug for SessionTable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionTable")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .field("index_buckets", &self.index.buckets())
            .field("reaped", &self.reaped.len())
            .finish_non_exhaustive()
    }
}

impl<T> SessionTable<T> {
    /// A table for at most `capacity` sessions, hashing with a random seed
    /// (per process; defeats hash flooding).
    ///
    /// # Panics
    /// If `capacity > MAX_CAPACITY`.
    pub fn new(capacity: usize) -> Self {
        Self::with_hasher(capacity, ahash::RandomState::new())
    }

    /// A table hashing with fixed seeds (reproducible layouts for tests and
    /// benchmarks).
    ///
    /// # Panics
    /// If `capacity > MAX_CAPACITY`.
    pub fn with_seed(capacity: usize, seed: u64) -> Self {
        Self::with_hasher(
            capacity,
            ahash::RandomState::with_seeds(
                seed,
                seed ^ 0x9e37_79b9_7f4a_7c15,
                0x2545_f491_4f6c_dd1d,
                0x5851_f42d_4c95_7f2d,
            ),
        )
    }

    fn with_hasher(capacity: usize, hasher: ahash::RandomState) -> Self {
        assert!(
            capacity <= MAX_CAPACITY,
            "session table capacity {capacity} > {MAX_CAPACITY}"
        );
        SessionTable {
            slots: Vec::with_capacity(capacity),
            free: Vec::with_capacity(capacity),
            index: Index::with_max_entries(2 * capacity),
            hasher,
            len: 0,
            capacity,
            hand: 0,
            reaped: Vec::with_capacity(capacity.min(4096)),
            pending: Vec::with_capacity(256),
        }
    }

    /// Touches all the memory the table will ever use, so that the kernel
    /// maps it now rather than one page fault at a time as sessions arrive
    /// (a data plane calls this at start-up; it commits roughly
    /// `capacity * bytes_per_session()` bytes). The table behaves exactly
    /// as before.
    pub fn prefault(&mut self) {
        let start = self.slots.len();
        self.slots
            .resize_with(self.capacity, || Slot::Vacant { gen: 0 });
        // Fresh slots are handed out lowest first, as without prefaulting.
        let fresh = (start..self.capacity)
            .rev()
            .map(|s| u32::try_from(s).expect("slab length bounded by MAX_CAPACITY"));
        let mut free: Vec<u32> = fresh.collect();
        free.append(&mut self.free);
        self.free = free;
        self.index.prefault();
        self.reaped.reserve(self.capacity.min(4096));
    }

    /// Sessions held, including expired ones not yet reaped.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The maximum number of sessions.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Approximate memory per session at full capacity: slot, free list and
    /// index buckets (excluding the reaped queue).
    pub fn bytes_per_session(&self) -> usize {
        let fixed = std::mem::size_of::<Slot<T>>() + std::mem::size_of::<u32>();
        fixed + (self.index.buckets() * std::mem::size_of::<u64>()).div_ceil(self.capacity.max(1))
    }

    fn hash(&self, key: &FlowKey) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The hash the table files `key` under, for [`SessionTable::warm_bucket`] and
    /// [`SessionTable::lookup_hashed`].
    #[inline]
    pub fn hash_key(&self, key: &FlowKey) -> u64 {
        self.hash(key)
    }

    /// The index bucket a lookup of `hash` starts at (a read of it), for
    /// the first stage of a burst's lookups: reading the buckets of a whole
    /// burst one after another lets their cache misses overlap instead of
    /// being paid one lookup at a time. Pass the result to
    /// [`SessionTable::warm_session`].
    #[inline]
    pub fn warm_bucket(&self, hash: u64) -> u64 {
        self.index.bucket_of(hash)
    }

    /// The second stage after [`SessionTable::warm_bucket`]: reads the
    /// session the bucket points to and returns a value derived from it,
    /// which the caller should keep (e.g. pass to `std::hint::black_box`)
    /// so the read happens.
    #[inline]
    pub fn warm_session(&self, bucket: u64) -> u64 {
        if bucket == 0 {
            return 0;
        }
        let value = ((bucket as u32).wrapping_sub(1) >> 1) as usize;
        match self.slots.get(value) {
            // Every cache line of the session (the slot's tag, then fields
            // less than 64 bytes apart in the `repr(C)` layout, the payload
            // between the keys and the times): a packet uses all of them.
            Some(Slot::Occupied(s)) => {
                u64::from(s.orig.src.is_ipv6())
                    ^ u64::from(s.orig.sport)
                    ^ u64::from(s.reply.dport)
                    ^ s.expires_at
                    ^ s.packets[1]
                    ^ u64::from(s.gen)
                    ^ bucket
            }
            _ => bucket,
        }
    }

    /// [`SessionTable::lookup`] with the hash already computed.
    #[inline]
    pub fn lookup_hashed(
        &mut self,
        key: &FlowKey,
        hash: u64,
        now: Nanos,
    ) -> Option<(SessionId, Dir)> {
        let (slot, dir) = self.find_hashed(key, hash)?;
        if self.slot_expired(slot as usize, now) {
            self.reap_slot(slot);
            return None;
        }
        Some((self.id_of(slot), dir))
    }

    /// Finds the slot and direction holding `key`.
    #[inline]
    fn find(&self, key: &FlowKey) -> Option<(u32, Dir)> {
        self.find_hashed(key, self.hash(key))
    }

    #[inline]
    fn find_hashed(&self, key: &FlowKey, hash: u64) -> Option<(u32, Dir)> {
        let slots = &self.slots;
        let is_match = |v: u32| match &slots[(v >> 1) as usize] {
            Slot::Occupied(s) => s.key(dir_of(v)) == key,
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

    /// Whether `slot` holds a session expired at `now`.
    #[inline]
    fn slot_expired(&self, slot: usize, now: Nanos) -> bool {
        match &self.slots[slot] {
            Slot::Occupied(s) => s.expires_at <= now,
            Slot::Vacant { .. } => false,
        }
    }

    fn id_of(&self, slot: u32) -> SessionId {
        let gen = match &self.slots[slot as usize] {
            Slot::Occupied(s) => s.gen,
            Slot::Vacant { gen } => *gen,
        };
        SessionId { slot, gen }
    }

    /// Whether a session (possibly expired but not yet reaped) holds `key`.
    pub fn contains_key(&self, key: &FlowKey) -> bool {
        self.find(key).is_some()
    }

    /// Adds a session findable by `orig` (direction [`Dir::Orig`]) and
    /// `reply` ([`Dir::Reply`]), expiring after the handshake timeout for TCP
    /// and the protocol's timeout otherwise. No packet is accounted: call
    /// [`SessionTable::update`] for the first packet too.
    ///
    /// A key held by an expired session is reclaimed (that session is
    /// reaped); a key held by a live one is an error, as is a full table
    /// (`insert` does not sweep: call [`SessionTable::expire`] regularly).
    /// On error `payload` is dropped: if it owns a resource (a NAT port),
    /// check [`SessionTable::contains_key`] and the room left first, or
    /// release it on error.
    pub fn insert(
        &mut self,
        orig: FlowKey,
        reply: FlowKey,
        payload: T,
        now: Nanos,
        timeouts: &Timeouts,
    ) -> Result<SessionId, InsertError> {
        self.insert_with(orig, reply, payload, now, timeouts, false)
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
        self.insert_with(orig, reply, payload, now, timeouts, true)
    }

    /// Writes the index entries [`SessionTable::insert_deferred`] left
    /// waiting: first a read of every bucket they go to, so the misses
    /// overlap, then the entries. Call it after each burst.
    pub fn flush(&mut self) {
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

    fn insert_with(
        &mut self,
        orig: FlowKey,
        reply: FlowKey,
        payload: T,
        now: Nanos,
        timeouts: &Timeouts,
        defer_reply: bool,
    ) -> Result<SessionId, InsertError> {
        if orig == reply {
            return Err(InsertError::SameKeys);
        }
        let checked: &[(&FlowKey, Dir)] = if defer_reply {
            &[(&orig, Dir::Orig)]
        } else {
            &[(&orig, Dir::Orig), (&reply, Dir::Reply)]
        };
        for &(key, dir) in checked {
            if let Some((slot, _)) = self.find(key) {
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

        let tcp_state = (orig.proto == PROTO_TCP).then_some(TcpState::SynSent);
        let expires_at = now.saturating_add(timeouts.for_state(orig.proto, tcp_state));
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot =
                    u32::try_from(self.slots.len()).expect("slab length bounded by MAX_CAPACITY");
                self.slots.push(Slot::Vacant { gen: 0 });
                slot
            }
        };
        let gen = match self.slots[slot as usize] {
            Slot::Vacant { gen } => gen,
            Slot::Occupied(_) => unreachable!("free list holds an occupied slot"),
        };
        let (ho, hr) = (self.hash(&orig), self.hash(&reply));
        self.index.insert(ho, slot << 1);
        if defer_reply {
            self.pending.push((hr, (slot << 1) | 1));
        } else {
            self.index.insert(hr, (slot << 1) | 1);
        }
        self.slots[slot as usize] = Slot::Occupied(Session {
            orig,
            reply,
            created: now,
            last_seen: now,
            expires_at,
            packets: [0; 2],
            gen,
            tcp_state,
            seen: 0,
            payload,
        });
        self.len += 1;
        Ok(SessionId { slot, gen })
    }

    /// The live session holding `key` and the direction it matched. An
    /// expired session is removed (moved to the reaped queue) and not found.
    /// Does not refresh the session: see [`SessionTable::update`].
    #[inline]
    pub fn lookup(&mut self, key: &FlowKey, now: Nanos) -> Option<(SessionId, Dir)> {
        self.lookup_hashed(key, self.hash(key), now)
    }

    pub fn get(&self, id: SessionId) -> Option<&Session<T>> {
        match self.slots.get(id.slot as usize)? {
            Slot::Occupied(s) if s.gen == id.gen => Some(s),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, id: SessionId) -> Option<&mut Session<T>> {
        match self.slots.get_mut(id.slot as usize)? {
            Slot::Occupied(s) if s.gen == id.gen => Some(s),
            _ => None,
        }
    }

    /// Accounts one packet of session `id` travelling in direction `dir`:
    /// refreshes `last_seen`, advances the TCP state with `tcp_flags` (if
    /// given) and sets the expiry from the new state. Returns false (and does
    /// nothing) if `id` is stale.
    ///
    /// Meant to follow a successful [`SessionTable::lookup`] at the same
    /// `now` (which is what guarantees the session has not expired); a `now`
    /// earlier than `last_seen` does not move it back.
    pub fn update(
        &mut self,
        id: SessionId,
        dir: Dir,
        tcp_flags: Option<u8>,
        now: Nanos,
        timeouts: &Timeouts,
    ) -> bool {
        let Some(Slot::Occupied(s)) = self.slots.get_mut(id.slot as usize) else {
            return false;
        };
        if s.gen != id.gen {
            return false;
        }
        if let (Some(state), Some(f)) = (s.tcp_state, tcp_flags) {
            let (state, seen) = tcp::advance(state, s.seen, dir == Dir::Reply, f);
            s.tcp_state = Some(state);
            s.seen = seen;
        }
        s.last_seen = s.last_seen.max(now);
        s.expires_at = s
            .last_seen
            .saturating_add(timeouts.for_state(s.orig.proto, s.tcp_state));
        s.packets[dir.index()] = s.packets[dir.index()].saturating_add(1);
        true
    }

    /// Removes session `id` and returns its payload (not queued as reaped).
    pub fn remove(&mut self, id: SessionId) -> Option<T> {
        self.get(id)?;
        self.take_slot(id.slot).map(|s| s.payload)
    }

    /// Sweeps for expired sessions from where the previous call stopped,
    /// reaping at most `budget` of them and examining at most
    /// `EXPIRE_SCAN_PER_BUDGET * budget` slots. Returns how many were reaped
    /// (then available from [`SessionTable::drain_reaped`]).
    pub fn expire(&mut self, now: Nanos, budget: usize) -> usize {
        let n = self.slots.len();
        if n == 0 || budget == 0 {
            return 0;
        }
        let mut scan = budget.saturating_mul(EXPIRE_SCAN_PER_BUDGET).min(n);
        let mut reaped = 0;
        let mut hand = self.hand % n;
        while scan > 0 && reaped < budget {
            if self.slot_expired(hand, now) {
                self.reap_slot(hand as u32);
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

    /// Keeps only the sessions for which `keep` returns true; the others are
    /// moved to the reaped queue (e.g. after a reload removed their backend).
    pub fn retain(&mut self, mut keep: impl FnMut(SessionId, &mut Session<T>) -> bool) {
        for slot in 0..self.slots.len() {
            if let Slot::Occupied(s) = &mut self.slots[slot] {
                let id = SessionId {
                    slot: slot as u32,
                    gen: s.gen,
                };
                if !keep(id, s) {
                    self.reap_slot(slot as u32);
                }
            }
        }
    }

    /// Takes the sessions that went away on their own (expired, or dropped
    /// by `retain`) since the last call. Dropping the iterator early still
    /// empties the queue.
    pub fn drain_reaped(&mut self) -> std::vec::Drain<'_, Session<T>> {
        self.reaped.drain(..)
    }

    /// Sessions waiting in the reaped queue.
    pub fn reaped_len(&self) -> usize {
        self.reaped.len()
    }

    /// Every session held (including expired ones not yet reaped), in slot
    /// order.
    pub fn iter(&self) -> impl Iterator<Item = (SessionId, &Session<T>)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| match s {
                Slot::Occupied(s) => Some((
                    SessionId {
                        slot: slot as u32,
                        gen: s.gen,
                    },
                    s,
                )),
                Slot::Vacant { .. } => None,
            })
    }

    fn reap_slot(&mut self, slot: u32) {
        if let Some(s) = self.take_slot(slot) {
            self.reaped.push(s);
        }
    }

    /// Unlinks the session in `slot` from the index and the slab.
    fn take_slot(&mut self, slot: u32) -> Option<Session<T>> {
        self.flush();
        let idx = slot as usize;
        let (gen, hashes) = match &self.slots[idx] {
            Slot::Occupied(s) => (s.gen, [self.hash(&s.orig), self.hash(&s.reply)]),
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
            },
        );
        self.free.push(slot);
        self.len -= 1;
        match old {
            Slot::Occupied(s) => Some(s),
            Slot::Vacant { .. } => None,
        }
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        assert_eq!(self.index.len() + self.pending.len(), 2 * self.len);
        assert_eq!(self.iter().count(), self.len);
        assert_eq!(self.slots.len() - self.len, self.free.len());
        for (id, s) in self.iter() {
            assert_eq!(self.find(&s.orig), Some((id.slot, Dir::Orig)));
            assert_eq!(self.find(&s.reply), Some((id.slot, Dir::Reply)));
        }
    }
}

fn dir_of(value: u32) -> Dir {
    if value & 1 == 0 {
        Dir::Orig
    } else {
        Dir::Reply
    }
}

#[cfg(test)]
mod tests;
