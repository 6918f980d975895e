//! IP fragments without reassembly.
//!
//! The first fragment of a datagram holds its L4 header: it goes through
//! the pipeline like any packet (rules, session, translation). When it is
//! forwarded, its verdict and translation go into the worker's fragment
//! table, keyed by (source, destination, protocol, IP identification),
//! for a short time. The fragments after it carry no ports: they follow
//! that entry (same next hop, same address translation; their data is not
//! touched, since the first fragment's incremental checksum update covers
//! the whole datagram) or, without one, wait a little in a bounded queue
//! for their first fragment, and are dropped when it does not come.
//!
//! Nothing here can be used to pass the rules: a fragment without a
//! forwarded first fragment is never forwarded; a fragment whose offset
//! would overlap the L4 header its first fragment was judged by is
//! dropped (`fragment_overlap`, RFC 1858); the table and the queue are
//! bounded, entries only come from forwarded first fragments and are never
//! evicted before their time (a full table counts `table_full` and the
//! datagram's later fragments are dropped), and the session table is not
//! involved.
//!
//! With several workers, a data plane hands each frame to the worker that
//! owns its flow ([`frame_owner`](super::frame_owner)), which a fragment
//! without ports cannot name. So the first fragment's owner is recorded,
//! when the first fragment is handed out, in a table every worker reads
//! ([`FragSteer`], in the snapshot), and the later fragments go to the
//! same worker. A later fragment that arrives before its first stays with
//! the worker that received it; once its first fragment names an owner,
//! that worker gives it up ([`Worker::take_released`]).

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::model::Fragments;
use crate::packet::{Ipv4Packet, Ipv6Packet, Kind};

/// What identifies the fragments of one datagram (RFC 791, RFC 8200).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct FragKey {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    id: u32,
}

/// The key and offset (in bytes) of the fragment `p` in `frame`.
pub(super) fn frag_fields(frame: &[u8], p: &Parsed) -> Option<(FragKey, usize)> {
    let l3 = frame.get(p.l3_offset..p.l3_end())?;
    let (id, offset) = match p.kind {
        Kind::Ipv4 => {
            let ip = Ipv4Packet::new_checked(l3).ok()?;
            (u32::from(ip.ident()), usize::from(ip.frag_offset()))
        }
        Kind::Ipv6 => {
            let ip = Ipv6Packet::new_checked(l3).ok()?;
            let f = ip.walk_ext_headers().ok()?.fragment?;
            (f.ident, usize::from(f.offset))
        }
        _ => return None,
    };
    let key = FragKey {
        src: p.src,
        dst: p.dst,
        proto: p.proto,
        id,
    };
    Some((key, offset))
}

/// The fixed-seed hasher of fragment keys: every worker must agree.
fn frag_hash(key: &FragKey) -> u64 {
    ahash::RandomState::with_seeds(0x6672, 0x6167, 0x6d65, 0x6e74).hash_one(key)
}

/// The smallest L4 header of a protocol: a later fragment at a lower
/// offset would overwrite the ports, flags or type its first fragment was
/// judged by.
fn l4_header_min(proto: u8) -> usize {
    match proto {
        proto::TCP => 20,
        proto::UDP | proto::ICMP | proto::ICMPV6 | proto::GRE => 8,
        _ => 0,
    }
}

/// The L4 header length of the first fragment `p`: what a later fragment
/// must not overlap.
fn l4_header_len(frame: &[u8], p: &Parsed) -> usize {
    if p.proto == proto::TCP {
        if let Some(&b) = frame.get(p.l4_offset + 12) {
            return usize::from(b >> 4) * 4;
        }
    }
    l4_header_min(p.proto)
}

/// Slots of [`FragSteer`].
const STEER_SLOTS: usize = 1 << 13;

/// Which worker owns the fragments of a datagram: written when a first
/// fragment is handed to its owner, read for the fragments after it.
/// Lock-free (one atomic word a slot: a tag of the key's hash and the
/// owner); a collision or a stale slot sends a fragment to a worker
/// without its entry, which drops it (counted), never past the rules.
#[derive(Debug)]
pub struct FragSteer {
    slots: Box<[AtomicU64]>,
}

impl Default for FragSteer {
    fn default() -> Self {
        FragSteer {
            slots: (0..STEER_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

const OWNER_BITS: u64 = 0xffff;

impl FragSteer {
    fn slot(&self, h: u64) -> &AtomicU64 {
        // The low bits pick the slot; the high bits are the tag.
        #[allow(clippy::cast_possible_truncation)]
        let i = (h as usize) & (STEER_SLOTS - 1);
        &self.slots[i]
    }

    pub(super) fn record(&self, key: &FragKey, owner: u16) {
        let h = frag_hash(key);
        let v = (h & !OWNER_BITS) | (u64::from(owner) + 1).min(OWNER_BITS);
        self.slot(h).store(v, Ordering::Relaxed);
    }

    pub(super) fn find(&self, key: &FragKey) -> Option<u16> {
        let h = frag_hash(key);
        let v = self.slot(h).load(Ordering::Relaxed);
        if v & OWNER_BITS == 0 || v & !OWNER_BITS != h & !OWNER_BITS {
            return None;
        }
        u16::try_from((v & OWNER_BITS) - 1).ok()
    }
}

/// The owner of a fragment, for [`frame_owner`](super::frame_owner): a
/// first fragment's is `owner` (that of its 5-tuple), recorded for the
/// fragments after it; a later fragment's is the recorded one, `None`
/// (stay with the receiving worker) when none is.
pub(super) fn fragment_owner(
    snap: &Snapshot,
    frame: &[u8],
    p: &Parsed,
    owner: Option<u16>,
) -> Option<u16> {
    let (key, _) = frag_fields(frame, p)?;
    if p.is_first_fragment {
        if let Some(o) = owner {
            snap.frag_steer.record(&key, o);
        }
        return owner;
    }
    snap.frag_steer.find(&key)
}

/// What the fragments after a forwarded first fragment follow.
#[derive(Debug, Clone, Copy)]
struct Entry {
    key: FragKey,
    expires: Nanos,
    out_src: IpAddr,
    out_dst: IpAddr,
    hop: Hop,
    lb: Option<(u32, u32)>,
    backend: Option<(u32, u32)>,
    /// The port the first fragment arrived on.
    port: Option<u32>,
    generation: u64,
    /// The first fragment's L4 header length.
    l4_header: u16,
}

/// Slots one key may occupy in the table (open addressing).
const PROBES: usize = 8;

/// The room each held fragment has from the start (a larger one grows it
/// once).
const HELD_BYTES: usize = 2048;

/// A fragment waiting for its first fragment.
#[derive(Debug, Default)]
struct Held {
    key: Option<FragKey>,
    since: Nanos,
    rx: RxInfo,
    data: Vec<u8>,
}

/// A worker's fragment counters (`fragments` in `lbctl stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FragmentCounts {
    /// First fragments whose verdict went into the table.
    pub first: u64,
    /// Later fragments forwarded after their first fragment.
    pub forwarded: u64,
    /// Later fragments held for a first fragment not seen yet.
    pub held: u64,
    /// Held fragments forwarded (or handed to their owner) once their
    /// first fragment came.
    pub released: u64,
    /// First fragments whose verdict found no room in the table (their
    /// later fragments are then dropped).
    pub table_full: u64,
}

/// Where a held fragment goes now (see [`Worker::take_released`]).
#[derive(Debug, Clone, Copy)]
pub enum Released {
    /// Forward it (rewritten in place) as its first fragment was.
    Forward(Forward),
    /// Hand it to this worker, which holds its first fragment's entry.
    Owner(u16),
}

/// A worker's fragment table and queue of held fragments.
#[derive(Debug, Default)]
pub(super) struct FragState {
    table: Vec<Option<Entry>>,
    held: Vec<Held>,
    /// Live entries of `held`.
    holding: usize,
    /// Held fragments that may go: (index into `held`, where).
    ready: Vec<(usize, Released)>,
    cfg: Option<Fragments>,
}

impl FragState {
    /// Sizes the table and the queue for `cfg` (between bursts; a change
    /// forgets what they held).
    pub(super) fn adopt(&mut self, cfg: &Fragments) {
        if self.cfg.as_ref() == Some(cfg) {
            return;
        }
        let slots = cfg.table.max(PROBES).next_power_of_two();
        self.table.clear();
        self.table.resize(slots, None);
        self.held.clear();
        self.held.resize_with(cfg.hold, || Held {
            data: Vec::with_capacity(HELD_BYTES),
            ..Held::default()
        });
        self.holding = 0;
        self.ready = Vec::with_capacity(cfg.hold);
        self.cfg = Some(*cfg);
    }

    fn probes(&self, key: &FragKey) -> impl Iterator<Item = usize> {
        let mask = self.table.len().saturating_sub(1);
        #[allow(clippy::cast_possible_truncation)]
        let start = frag_hash(key) as usize;
        (0..PROBES.min(self.table.len())).map(move |i| start.wrapping_add(i) & mask)
    }

    fn find(&self, key: &FragKey, now: Nanos) -> Option<Entry> {
        self.probes(key)
            .filter_map(|i| self.table[i])
            .find(|e| e.key == *key && e.expires > now)
    }

    /// Puts `e` in the table: false when every slot it may take holds a
    /// live entry of another datagram (none is evicted). A live entry of
    /// the same datagram stays: the first of its first fragments decides.
    fn insert(&mut self, e: Entry, now: Nanos) -> bool {
        let mut free = None;
        for i in self.probes(&e.key) {
            match &self.table[i] {
                Some(old) if old.expires > now => {
                    if old.key == e.key {
                        return true;
                    }
                }
                _ => {
                    free.get_or_insert(i);
                }
            }
        }
        let Some(i) = free else { return false };
        self.table[i] = Some(e);
        true
    }
}

impl Worker {
    /// A non-first fragment: it follows its first fragment's entry, or
    /// waits for it.
    pub(super) fn later_fragment(
        &mut self,
        frame: &mut [u8],
        p: &Parsed,
        rx: RxInfo,
        now: Nanos,
        snap: &Snapshot,
    ) -> Verdict {
        let cfg = snap.cfg.dataplane.fragments;
        if !cfg.forward {
            return Verdict::Drop(Reason::Fragment);
        }
        let Some((key, offset)) = frag_fields(frame, p) else {
            return Verdict::Drop(Reason::Fragment);
        };
        if offset < l4_header_min(p.proto) {
            return Verdict::Drop(Reason::FragmentOverlap);
        }
        if let Some(e) = self.frags.find(&key, now) {
            return self.follow(frame, p, &e, offset, rx.port, snap);
        }
        self.hold(frame, key, rx, now)
    }

    /// Forwards a later fragment as its first fragment `e` was.
    fn follow(
        &mut self,
        frame: &mut [u8],
        p: &Parsed,
        e: &Entry,
        offset: usize,
        port: Option<u32>,
        snap: &Snapshot,
    ) -> Verdict {
        if offset < usize::from(e.l4_header) {
            return Verdict::Drop(Reason::FragmentOverlap);
        }
        // The rules changed, or the fragment comes from another link than
        // its first fragment: it has nothing to follow.
        if e.generation != snap.generation || e.port != port {
            return Verdict::Drop(Reason::Fragment);
        }
        let out = FlowKey {
            src: e.out_src,
            dst: e.out_dst,
            proto: p.proto,
            sport: 0,
            dport: 0,
        };
        if let Err(r) = self.egress_check(frame, p, || Some(e.hop.port)) {
            return Verdict::Drop(r);
        }
        if !packet::decrement_ttl(frame, p) {
            return Verdict::Drop(Reason::TtlExceeded);
        }
        // Addresses only: a fragment without the L4 header has no ports.
        if (out.src, out.dst) != (p.src, p.dst)
            && packet::rewrite(frame, p, &out, L4Csum::Full).is_err()
        {
            return Verdict::Drop(Reason::Rewrite);
        }
        self.stats.fragments.forwarded += 1;
        Verdict::Forward(Forward {
            hop: e.hop,
            reason: Reason::FragmentFollows { lb: e.lb },
            backend: e.backend,
            out,
        })
    }

    /// Keeps a copy of a later fragment until its first fragment comes.
    fn hold(&mut self, frame: &[u8], key: FragKey, rx: RxInfo, now: Nanos) -> Verdict {
        let Some(h) = self.frags.held.iter_mut().find(|h| h.key.is_none()) else {
            return Verdict::Drop(Reason::Fragment);
        };
        h.key = Some(key);
        h.since = now;
        h.rx = rx;
        h.data.clear();
        h.data.extend_from_slice(frame);
        self.frags.holding += 1;
        self.stats.fragments.held += 1;
        Verdict::Drop(Reason::FragmentHeld)
    }

    /// A first fragment was forwarded: its verdict goes into the table,
    /// and the fragments held for it may go.
    #[cold]
    #[inline(never)]
    pub(super) fn first_fragment(
        &mut self,
        frame: &[u8],
        p: &Parsed,
        fwd: &Forward,
        rx: RxInfo,
        now: Nanos,
        snap: &Snapshot,
    ) {
        let cfg = snap.cfg.dataplane.fragments;
        if !cfg.forward {
            return;
        }
        let Some((key, _)) = frag_fields(frame, p) else {
            return;
        };
        let lb = match fwd.reason {
            Reason::Listener { lb, listener } => Some((lb, listener)),
            Reason::Session { lb } => lb,
            _ => None,
        };
        let e = Entry {
            key,
            expires: now + Nanos::from(cfg.timeout_ms) * 1_000_000,
            out_src: fwd.out.src,
            out_dst: fwd.out.dst,
            hop: fwd.hop,
            lb,
            backend: fwd.backend,
            port: rx.port,
            generation: snap.generation,
            l4_header: u16::try_from(l4_header_len(frame, p)).unwrap_or(u16::MAX),
        };
        if !self.frags.insert(e, now) {
            self.stats.fragments.table_full += 1;
            return;
        }
        self.stats.fragments.first += 1;
        if self.frags.holding > 0 {
            self.release(&e, snap);
        }
    }

    /// Forwards the fragments held for the first fragment of `e`.
    fn release(&mut self, e: &Entry, snap: &Snapshot) {
        for i in 0..self.frags.held.len() {
            if self.frags.held[i].key != Some(e.key)
                || self.frags.ready.iter().any(|(j, _)| *j == i)
            {
                continue;
            }
            let mut data = std::mem::take(&mut self.frags.held[i].data);
            let rx = self.frags.held[i].rx;
            let v = match packet::parse(&data) {
                Ok(p) => match frag_fields(&data, &p) {
                    Some((_, offset)) => self.follow(&mut data, &p, e, offset, rx.port, snap),
                    None => Verdict::Drop(Reason::Fragment),
                },
                Err(err) => Verdict::Drop(Reason::Malformed(err)),
            };
            self.frags.held[i].data = data;
            match v {
                Verdict::Forward(f) => {
                    self.stats.fragments.released += 1;
                    self.frags.ready.push((i, Released::Forward(f)));
                }
                Verdict::Drop(r) => {
                    self.stats.drops[r.kind() as usize] += 1;
                    self.free_held(i);
                }
                _ => self.free_held(i),
            }
        }
    }

    fn free_held(&mut self, i: usize) {
        if self.frags.held[i].key.take().is_some() {
            self.frags.holding -= 1;
        }
    }

    /// Drops the held fragments whose first fragment did not come in
    /// time (`fragment_timeout`); with several workers, gives up those
    /// whose first fragment another worker owns. Part of
    /// [`Worker::housekeep`].
    pub(super) fn expire_held(&mut self, now: Nanos, snap: &Snapshot) {
        if self.frags.holding == 0 {
            return;
        }
        let hold = Nanos::from(snap.cfg.dataplane.fragments.hold_ms) * 1_000_000;
        for i in 0..self.frags.held.len() {
            let Some(key) = self.frags.held[i].key else {
                continue;
            };
            if self.frags.ready.iter().any(|(j, _)| *j == i) {
                continue;
            }
            if now.saturating_sub(self.frags.held[i].since) >= hold {
                self.stats.drops[DropKind::FragmentTimeout as usize] += 1;
                self.free_held(i);
                continue;
            }
            if self.workers > 1 {
                if let Some(o) = snap.frag_steer.find(&key).filter(|&o| o != self.id) {
                    self.stats.fragments.released += 1;
                    self.frags.ready.push((i, Released::Owner(o)));
                }
            }
        }
    }

    /// Held fragments that may go now, each with where it goes: the data
    /// plane sends (or hands over) each one `out` is called with, after a
    /// burst. A forwarded one is already rewritten. `RxInfo` is how it
    /// arrived.
    pub fn take_released(&mut self, mut out: impl FnMut(&mut [u8], RxInfo, Released)) {
        let mut ready = std::mem::take(&mut self.frags.ready);
        for (i, r) in ready.drain(..) {
            let h = &mut self.frags.held[i];
            out(&mut h.data, h.rx, r);
            self.free_held(i);
        }
        self.frags.ready = ready;
    }

    /// Entries in the fragment table and fragments held, now.
    pub fn fragment_state(&self, now: Nanos) -> (usize, usize) {
        let live = self
            .frags
            .table
            .iter()
            .flatten()
            .filter(|e| e.expires > now)
            .count();
        (live, self.frags.holding)
    }
}
