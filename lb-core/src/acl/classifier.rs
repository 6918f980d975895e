//! The compiled classifier: per-field decomposition into equivalence classes
//! with rule bitmaps (Lakshman–Stiliadis bit vectors, RFC-style class ids).
//!
//! ```
//! use lb_core::acl::{AddrMatch, Classifier, FlowKey, MatchRule, PortRange};
//!
//! let mut web = MatchRule::any();
//! web.proto = Some(6);
//! web.dst = AddrMatch::Prefixes(vec!["10.0.0.0/24".parse().unwrap()]);
//! web.dport = vec![PortRange::single(80), PortRange::single(443)];
//! let rules = vec![web, MatchRule::any()];
//! let classifier = Classifier::build(&rules);
//!
//! let key = FlowKey {
//!     src: "192.0.2.7".parse().unwrap(),
//!     dst: "10.0.0.9".parse().unwrap(),
//!     proto: 6,
//!     sport: 40000,
//!     dport: 443,
//! };
//! assert_eq!(classifier.classify(&key), Some(0));
//! assert_eq!(classifier.classify(&FlowKey { dport: 22, ..key }), Some(1));
//!
//! let mut out = [None; 2];
//! classifier.classify_burst(&[key, FlowKey { dport: 22, ..key }], &mut out);
//! assert_eq!(out, [Some(0), Some(1)]);
//! ```
//!
//! # How it works
//!
//! Rules are split by address family: a rule goes into the IPv4 (IPv6) tables
//! when both of its address fields can match an IPv4 (IPv6) address
//! (`AddrMatch::Any` goes into both). Within a family, rules get a dense local
//! bit number in precedence order.
//!
//! For each of the five fields, the boundaries of every rule's values (each
//! prefix of a prefix list, each range of a port list) cut the field's domain
//! into elementary intervals. A sweep over the sorted boundaries keeps, per
//! rule, how many of its entries cover the current point, so a rule with many
//! prefixes or port ranges stays one bit. Intervals whose rule sets are equal
//! share an equivalence class, which stores the set as a bitmap.
//!
//! A lookup maps each field to its class (protocol: 256-entry table, ports:
//! 65536-entry tables, addresses: a direct index on the top bits followed by
//! a short binary search over the interval starts; for IPv6, whose prefixes
//! cluster under a few top bits, a fat index slot gets nested,
//! path-compressed sub-indexes on the bits where its starts differ), then
//! ANDs the class
//! bitmaps word by word and stops at the first non-zero word: its lowest bit
//! is the first matching rule. Since rules are in precedence order, most
//! packets stop in the first words. A field with a single class over its
//! whole domain (e.g. source ports that are "any" in every rule) is folded
//! into the protocol bitmaps and costs nothing at lookup time. When the
//! product stays small, the port classes are cross-producted with the
//! protocol classes (RFC phase 1: two small tables), so that a packet ANDs
//! three bitmaps instead of five. Each class bitmap begins with summary words
//! (one bit per non-zero word: an aggregated bit vector), so a packet whose
//! first matching rule is deep in the list skips the empty words.
//!
//! A key whose source and destination are of different families (no IP
//! header yields one) is answered by a linear scan of the few rules that can
//! match such a key.

use std::net::IpAddr;

use ahash::AHashMap;
use ipnet::IpNet;

use super::{AddrMatch, FlowKey, MatchRule, PortRange};

/// A compiled rule set answering "first matching rule" for a [`FlowKey`].
#[derive(Debug, Clone)]
pub struct Classifier {
    v4: Family<u32>,
    v6: Family<u128>,
    /// Rules that can match a key with mixed address families, with their
    /// index.
    mixed: Vec<(u32, MatchRule)>,
    rules: usize,
}

/// Keys handled per inner batch of [`Classifier::classify_burst`]: all the
/// table lookups of a batch are issued before the bitmap scans, so that their
/// cache misses overlap.
const BATCH: usize = 16;

#[derive(Debug, Clone, Copy)]
enum Looked {
    V4([u32; 5]),
    V6([u32; 5]),
    Mixed,
}

impl Classifier {
    /// Compiles `rules`; index order is precedence (0 first).
    pub fn build(rules: &[MatchRule]) -> Classifier {
        Classifier::build_with(rules, CROSS_BUDGET)
    }

    /// [`Classifier::build`] with a cross-product budget (0: never cross).
    fn build_with(rules: &[MatchRule], cross_budget: usize) -> Classifier {
        let mixed = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                (admits::<u32>(&r.src) && admits::<u128>(&r.dst))
                    || (admits::<u128>(&r.src) && admits::<u32>(&r.dst))
            })
            .filter_map(|(i, r)| Some((u32::try_from(i).ok()?, r.clone())))
            .collect();
        Classifier {
            v4: Family::build(rules, cross_budget),
            v6: Family::build(rules, cross_budget),
            mixed,
            rules: rules.len(),
        }
    }

    /// The number of rules the classifier was built from.
    pub fn len(&self) -> usize {
        self.rules
    }

    /// Whether the classifier was built from no rules.
    pub fn is_empty(&self) -> bool {
        self.rules == 0
    }

    /// The index of the first rule matching `key` (as
    /// [`linear_classify`](super::linear_classify)).
    #[inline]
    pub fn classify(&self, key: &FlowKey) -> Option<u32> {
        let looked = self.lookup(key);
        self.finish(key, &looked)
    }

    /// Classifies `keys[i]` into `out[i]` for every `i` below
    /// `min(keys.len(), out.len())`.
    pub fn classify_burst(&self, keys: &[FlowKey], out: &mut [Option<u32>]) {
        for (kc, oc) in keys.chunks(BATCH).zip(out.chunks_mut(BATCH)) {
            let mut looked = [Looked::Mixed; BATCH];
            for (k, l) in kc.iter().zip(looked.iter_mut()) {
                *l = self.lookup(k);
            }
            for ((k, l), o) in kc.iter().zip(looked.iter()).zip(oc.iter_mut()) {
                *o = self.finish(k, l);
            }
        }
    }

    /// Heap and inline bytes used by the compiled tables.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.v4.memory_bytes()
            + self.v6.memory_bytes()
            + self.mixed.capacity() * std::mem::size_of::<(u32, MatchRule)>()
            + self
                .mixed
                .iter()
                .map(|(_, r)| rule_heap_bytes(r))
                .sum::<usize>()
    }

    #[inline]
    fn lookup(&self, key: &FlowKey) -> Looked {
        match (key.src, key.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Looked::V4(self.v4.lookup(key, s.into(), d.into())),
            (IpAddr::V6(s), IpAddr::V6(d)) => Looked::V6(self.v6.lookup(key, s.into(), d.into())),
            _ => Looked::Mixed,
        }
    }

    #[inline]
    fn finish(&self, key: &FlowKey, looked: &Looked) -> Option<u32> {
        match looked {
            Looked::V4(c) => self.v4.scan(c),
            Looked::V6(c) => self.v6.scan(c),
            Looked::Mixed => self
                .mixed
                .iter()
                .find(|(_, r)| r.matches(key))
                .map(|(i, _)| *i),
        }
    }
}

fn rule_heap_bytes(r: &MatchRule) -> usize {
    let addr = |a: &AddrMatch| match a {
        AddrMatch::Any => 0,
        AddrMatch::Prefixes(v) => v.capacity() * std::mem::size_of::<IpNet>(),
    };
    addr(&r.src)
        + addr(&r.dst)
        + (r.sport.capacity() + r.dport.capacity()) * std::mem::size_of::<PortRange>()
}

/// An address family's integer form.
trait Addr: Copy + Ord + Default + std::fmt::Debug {
    const BITS: u32;
    const MAX: u128;
    /// Whether fat index slots get a [`SubIndex`] (they pay for IPv6, whose
    /// prefixes cluster under a few top bits and compare slowly; for IPv4 the
    /// plain binary search measured faster).
    const SUB_INDEX: bool;
    fn from_u128(v: u128) -> Self;
    fn to_u128(self) -> u128;
    /// The `bits` most significant bits.
    fn top(self, bits: u32) -> usize;
    /// The inclusive range of `net` if it is of this family.
    fn range(net: &IpNet) -> Option<(u128, u128)>;
}

impl Addr for u32 {
    const BITS: u32 = 32;
    const MAX: u128 = u32::MAX as u128;
    const SUB_INDEX: bool = false;
    #[inline]
    fn from_u128(v: u128) -> Self {
        v as u32
    }
    #[inline]
    fn to_u128(self) -> u128 {
        self.into()
    }
    #[inline]
    fn top(self, bits: u32) -> usize {
        self.checked_shr(32 - bits).unwrap_or(0) as usize
    }
    fn range(net: &IpNet) -> Option<(u128, u128)> {
        match net {
            IpNet::V4(n) => Some((
                u32::from(n.network()).into(),
                u32::from(n.broadcast()).into(),
            )),
            IpNet::V6(_) => None,
        }
    }
}

impl Addr for u128 {
    const BITS: u32 = 128;
    const MAX: u128 = u128::MAX;
    const SUB_INDEX: bool = true;
    #[inline]
    fn from_u128(v: u128) -> Self {
        v
    }
    #[inline]
    fn to_u128(self) -> u128 {
        self
    }
    #[inline]
    fn top(self, bits: u32) -> usize {
        self.checked_shr(128 - bits).unwrap_or(0) as usize
    }
    fn range(net: &IpNet) -> Option<(u128, u128)> {
        match net {
            IpNet::V6(n) => Some((n.network().into(), n.broadcast().into())),
            IpNet::V4(_) => None,
        }
    }
}

/// Whether `m` can match some address of family `A`.
fn admits<A: Addr>(m: &AddrMatch) -> bool {
    match m {
        AddrMatch::Any => true,
        AddrMatch::Prefixes(nets) => nets.iter().any(|n| A::range(n).is_some()),
    }
}

/// Pushes the start/end events of the inclusive range `lo..=hi` over a domain
/// ending at `max`.
fn push_range(events: &mut Vec<Event>, rule: u32, lo: u128, hi: u128, max: u128) {
    if lo > hi {
        return;
    }
    events.push(Event {
        pos: lo,
        rule,
        start: true,
    });
    if hi < max {
        events.push(Event {
            pos: hi + 1,
            rule,
            start: false,
        });
    }
}

#[derive(Debug, Clone, Copy)]
struct Event {
    pos: u128,
    rule: u32,
    start: bool,
}

/// A field's domain cut into intervals, each with a class, and the classes'
/// rule bitmaps.
#[derive(Debug, Clone, Default)]
struct Partition {
    /// Sorted interval starts; the first is 0.
    starts: Vec<u128>,
    /// The class of each interval.
    class_of: Vec<u32>,
    /// `classes * words` bitmap words.
    bits: Vec<u64>,
    classes: usize,
}

fn zobrist(rule: u32) -> u64 {
    // splitmix64
    let mut z = u64::from(rule)
        .wrapping_add(1)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Sweeps `events` (any order) for `rules` rules with `words`-word bitmaps.
fn partition(rules: usize, words: usize, events: &mut [Event]) -> Partition {
    events.sort_unstable_by_key(|e| e.pos);
    let mut count = vec![0u32; rules];
    let mut cur = vec![0u64; words];
    let mut hash = 0u64;
    // Class 0: no rule.
    let mut p = Partition {
        starts: vec![0],
        class_of: vec![0],
        bits: vec![0; words],
        classes: 1,
    };
    let mut known: AHashMap<u64, u32> = AHashMap::new();
    known.insert(0, 0);
    let mut i = 0;
    while let Some(&Event { pos, .. }) = events.get(i) {
        while let Some(e) = events.get(i).filter(|e| e.pos == pos) {
            let r = e.rule as usize;
            if let Some(c) = count.get_mut(r) {
                let was = *c > 0;
                if e.start {
                    *c += 1;
                } else {
                    *c = c.saturating_sub(1);
                }
                if was != (*c > 0) {
                    if let Some(w) = cur.get_mut(r / 64) {
                        *w ^= 1 << (r % 64);
                    }
                    hash ^= zobrist(e.rule);
                }
            }
            i += 1;
        }
        let class = match known.get(&hash) {
            Some(&c) if class_bits(&p.bits, c, words) == cur.as_slice() => c,
            found => {
                let c = p.classes as u32;
                p.bits.extend_from_slice(&cur);
                p.classes += 1;
                if found.is_none() {
                    known.insert(hash, c);
                }
                c
            }
        };
        if p.starts.last() == Some(&pos) {
            // Only at position 0.
            if let Some(last) = p.class_of.last_mut() {
                *last = class;
            }
        } else if p.class_of.last() != Some(&class) {
            p.starts.push(pos);
            p.class_of.push(class);
        }
    }
    p
}

#[inline]
fn class_bits(bits: &[u64], class: u32, words: usize) -> &[u64] {
    let start = class as usize * words;
    bits.get(start..start + words).unwrap_or(&[])
}

/// Lays out `words`-word class bitmaps as `summary(words)` summary words
/// (bit `i` set when word `i` is non-zero) followed by the words.
fn with_summary(bits: &[u64], words: usize) -> Vec<u64> {
    let s = summary(words);
    let classes = bits.len() / words.max(1);
    let mut out = Vec::with_capacity(classes * (s + words));
    for class in bits.chunks(words.max(1)) {
        let start = out.len();
        out.resize(start + s, 0);
        for (i, &w) in class.iter().enumerate() {
            if w != 0 {
                if let Some(sw) = out.get_mut(start + i / 64) {
                    *sw |= 1 << (i % 64);
                }
            }
        }
        out.extend_from_slice(class);
    }
    out
}

/// Summary words of a `words`-word bitmap.
fn summary(words: usize) -> usize {
    words.div_ceil(64)
}

/// The lowest bit set in all five bitmaps (each `s` summary words then the
/// words, as laid out by [`with_summary`]).
#[inline]
fn first_common(f: [&[u64]; 5], s: usize) -> Option<usize> {
    let [a, b, c, d, e] = f.map(|x| x.split_at_checked(s).unwrap_or((&[], &[])));
    let n =
        a.0.len()
            .min(b.0.len())
            .min(c.0.len())
            .min(d.0.len())
            .min(e.0.len());
    for i in 0..n {
        let mut m = a.0[i] & b.0[i] & c.0[i] & d.0[i] & e.0[i];
        while m != 0 {
            let w = i * 64 + m.trailing_zeros() as usize;
            let word = |x: &[u64]| x.get(w).copied().unwrap_or(0);
            let x = word(a.1) & word(b.1) & word(c.1) & word(d.1) & word(e.1);
            if x != 0 {
                return Some(w * 64 + x.trailing_zeros() as usize);
            }
            m &= m - 1;
        }
    }
    None
}

/// A cross-product table: transport class × port class → transport class.
#[derive(Debug, Clone)]
struct Combo {
    right: usize,
    table: Vec<u32>,
}

impl Combo {
    #[inline]
    fn get(&self, left: u32, right: u32) -> u32 {
        self.table
            .get(left as usize * self.right + right as usize)
            .copied()
            .unwrap_or(0)
    }
}

/// Most bitmap words a [`cross`] may compute (keeps builds fast).
const CROSS_BUDGET: usize = 1 << 21;

/// The cross product of two class sets (`words`-word bitmaps): the table of
/// `(i, j)` ↦ class of `a_i & b_j` (row-major) and the deduplicated class
/// bitmaps; `None` when it would compute more than `budget` words.
fn cross(a: &[u64], b: &[u64], words: usize, budget: usize) -> Option<(Vec<u32>, Vec<u64>)> {
    let words = words.max(1);
    let pairs = (a.len() / words).checked_mul(b.len() / words)?;
    if pairs.checked_mul(words)? > budget || u32::try_from(pairs).is_err() {
        return None;
    }
    let mut table = Vec::with_capacity(pairs);
    let mut bits: Vec<u64> = Vec::new();
    let mut known: AHashMap<u64, u32> = AHashMap::new();
    let mut cur = vec![0u64; words];
    let mut classes = 0u32;
    for ai in a.chunks(words) {
        for bj in b.chunks(words) {
            let mut h = 0u64;
            for ((c, x), y) in cur.iter_mut().zip(ai).zip(bj) {
                *c = x & y;
                h = (h.rotate_left(23) ^ *c).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            }
            let class = match known.get(&h) {
                Some(&c) if class_bits(&bits, c, words) == cur.as_slice() => c,
                found => {
                    let c = classes;
                    classes += 1;
                    bits.extend_from_slice(&cur);
                    if found.is_none() {
                        known.insert(h, c);
                    }
                    c
                }
            };
            table.push(class);
        }
    }
    Some((table, bits))
}

/// A port field: class per port.
#[derive(Debug, Clone)]
struct PortField {
    table: Box<[u16; 65536]>,
    bits: Vec<u64>,
}

/// An address field: interval starts, searched through a direct index on the
/// top bits; a slot holding many interval starts gets a second-level index
/// on the bits where those starts differ (path-compressed), recursively.
#[derive(Debug, Clone)]
struct AddrField<A> {
    starts: Vec<A>,
    class_of: Vec<u32>,
    /// Per slot of the top `index_bits` bits (one extra at the end): the low
    /// 32 bits are the interval holding the slot's first address; the high
    /// 32 bits are 1 + the index of the slot's [`SubIndex`], or 0.
    index: Vec<u64>,
    index_bits: u32,
    subs: Vec<SubIndex>,
    /// The entries of every [`SubIndex`], encoded as `index`'s.
    sub_entries: Vec<u64>,
    bits: Vec<u64>,
}

/// A lower-level index: the region `base .. base + 2^(shift + bits)`
/// holding all the inner interval starts of a slot, cut into `2^bits`
/// sub-slots.
#[derive(Debug, Clone, Copy)]
struct SubIndex {
    base: u128,
    shift: u32,
    bits: u32,
    /// Offset of the `2^bits + 1` entries in `sub_entries`.
    offset: u32,
}

/// Slots with more inner interval starts than this get a [`SubIndex`].
const SUB_INDEX_MIN: usize = 48;

/// The index of the interval holding `addr` (starts sorted, first is 0).
fn interval_of(starts: &[u128], addr: u128) -> usize {
    starts.partition_point(|&s| s <= addr).saturating_sub(1)
}

/// Builds the [`SubIndex`] of a slot (an aligned region of `2^slot_bits`
/// addresses) whose inner starts are within `starts[lo + 1..=hi]`, and those
/// of its fat sub-slots; returns its id + 1 (0 if none is needed).
fn build_sub(
    starts: &[u128],
    (lo, hi): (usize, usize),
    slot_bits: u32,
    subs: &mut Vec<SubIndex>,
    entries: &mut Vec<u64>,
) -> u64 {
    if hi.saturating_sub(lo) <= SUB_INDEX_MIN {
        return 0;
    }
    let (Some(&first), Some(&last)) = (starts.get(lo + 1), starts.get(hi)) else {
        return 0;
    };
    if first == last {
        return 0;
    }
    // Highest bit where the inner starts differ, within the slot (`hi` may
    // be the start of the next slot).
    let h = (127 - (first ^ last).leading_zeros()).min(slot_bits.saturating_sub(1));
    let count = (hi - lo) as u32;
    let want = (u32::BITS - count.leading_zeros() + 2).clamp(2, 12);
    let shift = (h + 1).saturating_sub(want);
    let bits = h + 1 - shift;
    let base = first
        .checked_shr(h + 1)
        .unwrap_or(0)
        .checked_shl(h + 1)
        .unwrap_or(0);
    let (Ok(offset), Ok(id)) = (u32::try_from(entries.len()), u64::try_from(subs.len() + 1)) else {
        return 0;
    };
    subs.push(SubIndex {
        base,
        shift,
        bits,
        offset,
    });
    let slots = 1usize << bits;
    for k in 0..slots {
        entries.push(interval_of(starts, base + ((k as u128) << shift)) as u64);
    }
    let end = base.saturating_add(((slots as u128) << shift).wrapping_sub(1));
    entries.push(interval_of(starts, end) as u64);
    for k in 0..slots {
        let at = offset as usize + k;
        let slo = entries.get(at).map_or(0, |&e| e as u32 as usize);
        let shi = entries.get(at + 1).map_or(0, |&e| e as u32 as usize);
        let child = build_sub(starts, (slo, shi), shift, subs, entries);
        if let Some(e) = entries.get_mut(at) {
            *e |= child << 32;
        }
    }
    id
}

impl<A: Addr> AddrField<A> {
    fn new(p: Partition, words: usize) -> AddrField<A> {
        let n = p.starts.len();
        // About 2-4 index entries per interval, at most 2^16.
        let index_bits = (usize::BITS - n.leading_zeros() + 1)
            .clamp(4, 16)
            .min(A::BITS);
        let slots = 1usize << index_bits;
        let shift = A::BITS - index_bits;
        let mut index: Vec<u64> = Vec::with_capacity(slots + 1);
        let mut j = 0usize;
        for t in 0..slots {
            let first = (t as u128) << shift;
            while p.starts.get(j + 1).is_some_and(|&s| s <= first) {
                j += 1;
            }
            index.push(j as u64);
        }
        index.push(n.saturating_sub(1) as u64);

        let mut subs = Vec::new();
        let mut sub_entries = Vec::new();
        for t in (0..slots).filter(|_| A::SUB_INDEX) {
            let lo = index.get(t).map_or(0, |&e| e as u32 as usize);
            let hi = index.get(t + 1).map_or(0, |&e| e as u32 as usize);
            let child = build_sub(&p.starts, (lo, hi), shift, &mut subs, &mut sub_entries);
            if let Some(e) = index.get_mut(t) {
                *e |= child << 32;
            }
        }
        AddrField {
            starts: p.starts.into_iter().map(A::from_u128).collect(),
            class_of: p.class_of,
            index,
            index_bits,
            subs,
            sub_entries,
            bits: with_summary(&p.bits, words),
        }
    }

    #[inline]
    fn class(&self, addr: A) -> u32 {
        let t = addr.top(self.index_bits);
        let mut e = self.index.get(t).copied().unwrap_or(0);
        let mut lo = e as u32 as usize;
        let mut hi = self.index.get(t + 1).map_or(0, |&e| e as u32 as usize);
        while e >> 32 != 0 {
            let Some(s) = self.subs.get((e >> 32) as usize - 1) else {
                break;
            };
            let a = addr.to_u128();
            if a < s.base {
                hi = lo;
                break;
            }
            let k = ((a - s.base) >> s.shift) as usize;
            if k >> s.bits != 0 {
                lo = hi;
                break;
            }
            let at = s.offset as usize + k;
            e = self.sub_entries.get(at).copied().unwrap_or(0);
            lo = e as u32 as usize;
            hi = self
                .sub_entries
                .get(at + 1)
                .map_or(lo, |&x| x as u32 as usize);
        }
        let mut i = lo;
        if hi > lo {
            if let Some(range) = self.starts.get(lo + 1..=hi) {
                i += range.partition_point(|&s| s <= addr);
            }
        }
        self.class_of.get(i).copied().unwrap_or(0)
    }

    fn memory_bytes(&self) -> usize {
        self.starts.capacity() * std::mem::size_of::<A>()
            + self.class_of.capacity() * 4
            + (self.index.capacity() + self.sub_entries.capacity()) * 8
            + self.subs.capacity() * std::mem::size_of::<SubIndex>()
            + self.bits.capacity() * 8
    }
}

/// The tables of one address family.
#[derive(Debug, Clone)]
struct Family<A> {
    /// Local bit number → rule index.
    rule_ids: Vec<u32>,
    /// Words per class bitmap, summary included.
    stride: usize,
    /// Summary words at the start of each class bitmap.
    summary: usize,
    proto: Box<[u16; 256]>,
    /// Transport class bitmaps: the protocol classes, crossed with the
    /// destination and source port classes when those have a [`Combo`], and
    /// ANDed with the single class of every field that has only one.
    proto_bits: Vec<u64>,
    /// Port fields with more than one class (their `bits` are empty when
    /// crossed into the transport classes).
    sport: Option<PortField>,
    dport: Option<PortField>,
    dport_combo: Option<Combo>,
    sport_combo: Option<Combo>,
    src: Option<AddrField<A>>,
    dst: Option<AddrField<A>>,
}

impl<A: Addr> Family<A> {
    fn build(rules: &[MatchRule], cross_budget: usize) -> Family<A> {
        let rule_ids: Vec<u32> = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| admits::<A>(&r.src) && admits::<A>(&r.dst))
            .filter(|(_, r)| !r.sport.iter().all(|p| p.lo > p.hi))
            .filter(|(_, r)| !r.dport.iter().all(|p| p.lo > p.hi))
            .filter_map(|(i, _)| u32::try_from(i).ok())
            .collect();
        let n = rule_ids.len();
        let words = n.div_ceil(64).max(1);
        let local = || {
            rule_ids
                .iter()
                .enumerate()
                .filter_map(|(l, &g)| Some((l as u32, rules.get(g as usize)?)))
        };

        let mut events = Vec::with_capacity(2 * n);
        for (l, r) in local() {
            match r.proto {
                None => push_range(&mut events, l, 0, 255, 255),
                Some(p) => push_range(&mut events, l, p.into(), p.into(), 255),
            }
        }
        let proto = partition(n, words, &mut events);

        let ports = |get: fn(&MatchRule) -> &[PortRange], events: &mut Vec<Event>| {
            events.clear();
            for (l, r) in local() {
                for pr in get(r) {
                    push_range(events, l, pr.lo.into(), pr.hi.into(), 65535);
                }
            }
            partition(n, words, events)
        };
        let sport = ports(|r| &r.sport, &mut events);
        let dport = ports(|r| &r.dport, &mut events);

        let addrs = |get: fn(&MatchRule) -> &AddrMatch, events: &mut Vec<Event>| {
            events.clear();
            for (l, r) in local() {
                match get(r) {
                    AddrMatch::Any => push_range(events, l, 0, A::MAX, A::MAX),
                    AddrMatch::Prefixes(nets) => {
                        for (lo, hi) in nets.iter().filter_map(A::range) {
                            push_range(events, l, lo, hi, A::MAX);
                        }
                    }
                }
            }
            partition(n, words, events)
        };
        let src = addrs(|r| &r.src, &mut events);
        let dst = addrs(|r| &r.dst, &mut events);

        // Fold single-class fields into the protocol bitmaps.
        let mut proto_bits = proto.bits;
        let mut fold = |p: &Partition| {
            if p.class_of.len() == 1 {
                let only = class_bits(&p.bits, p.class_of.first().copied().unwrap_or(0), words);
                for chunk in proto_bits.chunks_mut(words) {
                    for (w, m) in chunk.iter_mut().zip(only) {
                        *w &= m;
                    }
                }
                true
            } else {
                false
            }
        };
        let sport_trivial = fold(&sport);
        let dport_trivial = fold(&dport);
        let src_trivial = fold(&src);
        let dst_trivial = fold(&dst);

        // Cross-product the port classes into the protocol classes (RFC
        // phase 1) when the result stays small.
        let mut l4_bits = proto_bits;
        let mut combine = |p: &Partition, trivial: bool| {
            if trivial {
                return None;
            }
            let (table, bits) = cross(&l4_bits, &p.bits, words, cross_budget)?;
            l4_bits = bits;
            Some(Combo {
                right: p.classes,
                table,
            })
        };
        let dport_combo = combine(&dport, dport_trivial);
        let sport_combo = combine(&sport, sport_trivial);

        let mut proto_table = Box::new([0u16; 256]);
        fill_table(&mut proto_table[..], &proto.starts, &proto.class_of);
        let port_field = |p: Partition, trivial: bool, combined: bool| {
            if trivial {
                return None;
            }
            let mut table: Box<[u16; 65536]> =
                vec![0u16; 65536].into_boxed_slice().try_into().ok()?;
            fill_table(&mut table[..], &p.starts, &p.class_of);
            Some(PortField {
                table,
                bits: if combined {
                    Vec::new()
                } else {
                    with_summary(&p.bits, words)
                },
            })
        };
        Family {
            stride: summary(words) + words,
            summary: summary(words),
            proto: proto_table,
            proto_bits: with_summary(&l4_bits, words),
            sport: port_field(sport, sport_trivial, sport_combo.is_some()),
            dport: port_field(dport, dport_trivial, dport_combo.is_some()),
            sport_combo,
            dport_combo,
            src: (!src_trivial).then(|| AddrField::new(src, words)),
            dst: (!dst_trivial).then(|| AddrField::new(dst, words)),
            rule_ids,
        }
    }

    #[inline]
    fn lookup(&self, key: &FlowKey, src: A, dst: A) -> [u32; 5] {
        let sc = self
            .sport
            .as_ref()
            .map_or(0, |f| f.table[usize::from(key.sport)].into());
        let dc = self
            .dport
            .as_ref()
            .map_or(0, |f| f.table[usize::from(key.dport)].into());
        let mut l4 = self.proto[usize::from(key.proto)].into();
        if let Some(c) = &self.dport_combo {
            l4 = c.get(l4, dc);
        }
        if let Some(c) = &self.sport_combo {
            l4 = c.get(l4, sc);
        }
        [
            l4,
            sc,
            dc,
            self.src.as_ref().map_or(0, |f| f.class(src)),
            self.dst.as_ref().map_or(0, |f| f.class(dst)),
        ]
    }

    #[inline]
    fn scan<'a>(&'a self, c: &[u32; 5]) -> Option<u32> {
        let w = self.stride;
        let p = class_bits(&self.proto_bits, c[0], w);
        let port = |f: &'a Option<PortField>, class| match f {
            Some(f) if !f.bits.is_empty() => class_bits(&f.bits, class, w),
            _ => p,
        };
        let sp = port(&self.sport, c[1]);
        let dp = port(&self.dport, c[2]);
        let s = self
            .src
            .as_ref()
            .map_or(p, |f| class_bits(&f.bits, c[3], w));
        let d = self
            .dst
            .as_ref()
            .map_or(p, |f| class_bits(&f.bits, c[4], w));
        let local = first_common([p, sp, dp, s, d], self.summary)?;
        self.rule_ids.get(local).copied()
    }

    fn memory_bytes(&self) -> usize {
        let combo = |c: &Option<Combo>| c.as_ref().map_or(0, |c| c.table.capacity() * 4);
        let port = |f: &Option<PortField>| {
            f.as_ref().map_or(0, |f| {
                std::mem::size_of::<[u16; 65536]>() + f.bits.capacity() * 8
            })
        };
        let addr = |f: &Option<AddrField<A>>| f.as_ref().map_or(0, AddrField::memory_bytes);
        self.rule_ids.capacity() * 4
            + std::mem::size_of::<[u16; 256]>()
            + self.proto_bits.capacity() * 8
            + port(&self.sport)
            + port(&self.dport)
            + addr(&self.src)
            + addr(&self.dst)
            + combo(&self.sport_combo)
            + combo(&self.dport_combo)
    }
}

/// Writes the class of every value of a small domain.
fn fill_table(table: &mut [u16], starts: &[u128], class_of: &[u32]) {
    for (i, (&start, &class)) in starts.iter().zip(class_of).enumerate() {
        let end = starts
            .get(i + 1)
            .map_or(table.len(), |&s| usize::try_from(s).unwrap_or(table.len()));
        let start = usize::try_from(start).unwrap_or(table.len());
        if let Some(slots) = table.get_mut(start..end.min(table.len())) {
            slots.fill(u16::try_from(class).unwrap_or(u16::MAX));
        }
    }
}

#[cfg(test)]
mod tests;
