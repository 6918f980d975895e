//! One address family's sessions: the slab of stored sessions (keys,
//! state, times, payload, TCP window), the index from key hash to slot,
//! expiry, early drop and the reaped queue.

use super::*;

/// An address of one family, as the family's table stores it.
pub(super) trait Addr: Copy + Eq + fmt::Debug {
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
pub(super) struct Key<A> {
    pub(super) src: A,
    pub(super) dst: A,
    pub(super) sport: u16,
    pub(super) dport: u16,
}

impl<A: Addr> Key<A> {
    pub(super) fn to_flow(self, proto: u8) -> FlowKey {
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
pub(super) struct Stored<A, T> {
    orig: Key<A>,
    reply: Key<A>,
    pub(super) proto: u8,
    tcp_state: Option<TcpState>,
    seen: u8,
    /// A packet came in the reply direction.
    replied: bool,
    gen: u32,
    expires_at: Nanos,
    last_seen: Nanos,
    pub(super) payload: T,
    /// TCP sequence tracking (after the payload: it takes an IPv4 session
    /// into a second cache line, an IPv6 one into a third).
    window: TcpWindow,
    /// Packets and IP bytes per direction ([`Dir::index`]), as
    /// [`SessionTable::count`] adds them: in the window's cache line,
    /// filling the room the slot had left (an IPv4 slot stays 128 bytes).
    packets: [u32; 2],
    bytes: [u64; 2],
    /// When the session was created (or its tuple reused by a new
    /// connection, see [`SessionTable::restart`]).
    started: Nanos,
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

    pub(super) fn key(&self, dir: Dir) -> &Key<A> {
        match dir {
            Dir::Orig => &self.orig,
            Dir::Reply => &self.reply,
        }
    }

    /// The session decoded, its payload left out (see [`Session::with`]).
    pub(super) fn report(&self) -> Session<()> {
        Session {
            orig: self.orig.to_flow(self.proto),
            reply: self.reply.to_flow(self.proto),
            payload: (),
            expires_at: self.expires_at,
            last_seen: self.last_seen,
            tcp_state: self.tcp_state,
            seen: self.seen,
            started: self.started,
            packets: self.packets,
            bytes: self.bytes,
        }
    }

    pub(super) fn into_report(self) -> Session<T> {
        self.report().with(self.payload)
    }
}

impl Session<()> {
    /// The same session with `payload`.
    pub(super) fn with<P>(self, payload: P) -> Session<P> {
        Session {
            orig: self.orig,
            reply: self.reply,
            payload,
            expires_at: self.expires_at,
            last_seen: self.last_seen,
            tcp_state: self.tcp_state,
            seen: self.seen,
            started: self.started,
            packets: self.packets,
            bytes: self.bytes,
        }
    }
}

/// No next free slot.
pub(super) const NO_SLOT: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub(super) enum Slot<A, T> {
    /// A free slot: the generation its next session gets, and the next
    /// free slot.
    Vacant {
        gen: u32,
        next: u32,
    },
    Occupied(Stored<A, T>),
}

/// The sessions of one address family.
pub(super) struct Table<A, T> {
    slots: Vec<Slot<A, T>>,
    /// Head of the free list threaded through the vacant slots.
    free: u32,
    pub(super) index: Index,
    hasher: ahash::RandomState,
    pub(super) len: usize,
    pub(super) capacity: usize,
    hand: usize,
    pub(super) reaped: Vec<Stored<A, T>>,
    /// Index entries of reply keys waiting for [`Table::flush`]: (hash,
    /// value).
    pub(super) pending: Vec<(u64, u32)>,
    /// Set on the slots of this table's [`SessionId`]s.
    family_bit: u32,
    /// Half-open TCP sessions, oldest first, for [`Table::early_drop`].
    pub(super) half_open: HalfOpen,
}

impl<A: Addr, T> Table<A, T> {
    pub(super) fn new(capacity: usize, hasher: ahash::RandomState, family_bit: u32) -> Self {
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

    pub(super) fn prefault(&mut self) {
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

    pub(super) fn bytes_per_session(&self) -> usize {
        let slot = std::mem::size_of::<Slot<A, T>>() + HalfOpen::BYTES_PER_SESSION;
        slot + (self.index.buckets() * std::mem::size_of::<u64>()).div_ceil(self.capacity.max(1))
    }

    /// The key's hash, with [`V6_HASH`] set in the IPv6 table.
    #[inline]
    pub(super) fn hash(&self, k: &Key<A>, proto: u8) -> u64 {
        let h = A::hash(&self.hasher, k, proto) & !V6_HASH;
        if self.family_bit != 0 {
            h | V6_HASH
        } else {
            h
        }
    }

    #[inline]
    pub(super) fn warm_session(&self, bucket: u64) -> u64 {
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
    pub(super) fn find(&self, k: &Key<A>, proto: u8) -> Option<(u32, Dir)> {
        self.find_hashed(k, proto, self.hash(k, proto))
    }

    #[inline]
    pub(super) fn lookup_hashed(
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

    pub(super) fn flush(&mut self) {
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
    pub(super) fn insert(
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
            packets: [0; 2],
            bytes: [0; 2],
            started: now,
        });
        self.len += 1;
        Ok(self.id(slot, gen))
    }

    #[inline]
    pub(super) fn get(&self, id: SessionId) -> Option<&Stored<A, T>> {
        match self.slots.get(id.slot())? {
            Slot::Occupied(s) if s.gen == id.gen => Some(s),
            _ => None,
        }
    }

    #[inline]
    pub(super) fn get_mut(&mut self, id: SessionId) -> Option<&mut Stored<A, T>> {
        match self.slots.get_mut(id.slot())? {
            Slot::Occupied(s) if s.gen == id.gen => Some(s),
            _ => None,
        }
    }

    #[inline]
    pub(super) fn update(
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
    pub(super) fn update_tcp(
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

    /// Counts a packet of `bytes` in direction `dir`.
    #[inline]
    pub(super) fn count(&mut self, id: SessionId, dir: Dir, bytes: usize) {
        if let Some(s) = self.get_mut(id) {
            let d = dir.index() & 1;
            s.packets[d] = s.packets[d].saturating_add(1);
            s.bytes[d] = s.bytes[d].saturating_add(bytes as u64);
        }
    }

    /// Starts the counters and the start time over, for a tuple reused by
    /// a new connection.
    pub(super) fn restart(&mut self, id: SessionId, now: Nanos) {
        if let Some(s) = self.get_mut(id) {
            s.packets = [0; 2];
            s.bytes = [0; 2];
            s.started = now;
        }
    }

    pub(super) fn remove(&mut self, id: SessionId) -> Option<T> {
        self.get(id)?;
        self.take_slot(slot32(id.slot())).map(|s| s.payload)
    }

    pub(super) fn expire(&mut self, now: Nanos, budget: usize) -> usize {
        self.walk(now, budget.saturating_mul(EXPIRE_SCAN_PER_BUDGET), budget)
    }

    /// Slots in the slab, occupied or free.
    pub(super) fn slab_len(&self) -> usize {
        self.slots.len()
    }

    /// Examines the next `scan` slots (at most the whole slab) from where
    /// the previous walk stopped, reaping expired sessions until `budget`
    /// of them are reaped.
    pub(super) fn walk(&mut self, now: Nanos, scan: usize, budget: usize) -> usize {
        let n = self.slots.len();
        if n == 0 || budget == 0 {
            return 0;
        }
        let mut scan = scan.min(n);
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

    pub(super) fn retain(&mut self, keep: &mut impl FnMut(SessionId, Session<&mut T>) -> bool) {
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

    pub(super) fn iter(&self) -> impl Iterator<Item = (SessionId, Session<&T>)> + '_ {
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
    pub(super) fn early_drop(
        &mut self,
        want: &mut impl FnMut(&Session<&T>) -> bool,
    ) -> Option<Stored<A, T>> {
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
    pub(super) fn check_invariants(&self) {
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
