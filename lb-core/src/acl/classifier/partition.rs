//! A field's domain cut into elementary intervals by the rules' boundaries
//! (a sweep over start/end events), the intervals grouped into equivalence
//! classes with rule bitmaps, and the bitmaps laid out for the scans.

use ahash::AHashMap;

use super::addr_tree::Addr;
use super::AddrMatch;

/// Whether `m` can match some address of family `A`.
pub(super) fn admits<A: Addr>(m: &AddrMatch) -> bool {
    match m {
        AddrMatch::Any => true,
        AddrMatch::Prefixes(nets) => nets.iter().any(|n| A::range(n).is_some()),
    }
}

/// Pushes the start/end events of the inclusive range `lo..=hi` over a domain
/// ending at `max`.
pub(super) fn push_range(events: &mut Vec<Event>, rule: u32, lo: u128, hi: u128, max: u128) {
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
pub(super) struct Event {
    pub(super) pos: u128,
    pub(super) rule: u32,
    pub(super) start: bool,
}

/// A field's domain cut into intervals, each with a class, and the classes'
/// rule bitmaps.
#[derive(Debug, Clone, Default)]
pub(super) struct Partition {
    /// Sorted interval starts; the first is 0.
    pub(super) starts: Vec<u128>,
    /// The class of each interval.
    pub(super) class_of: Vec<u32>,
    /// `classes * words` bitmap words.
    pub(super) bits: Vec<u64>,
    pub(super) classes: usize,
}

pub(super) fn zobrist(rule: u32) -> u64 {
    // splitmix64
    let mut z = u64::from(rule)
        .wrapping_add(1)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Sweeps `events` (any order) for `rules` rules with `words`-word bitmaps.
pub(super) fn partition(rules: usize, words: usize, events: &mut [Event]) -> Partition {
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
pub(super) fn class_bits(bits: &[u64], class: u32, words: usize) -> &[u64] {
    let start = class as usize * words;
    bits.get(start..start + words).unwrap_or(&[])
}

/// Class bitmaps laid out for the scans: per class, `summary(words)`
/// summary words (bit `i` set when word `i` is non-zero), the words, then
/// zero words up to [`stride`]`(words)`, a multiple of 8; the first row
/// starts at `off`, chosen so that every row's words start on a 64-byte
/// boundary (a 16-word bitmap is two cache lines, not three). A copy may
/// lose the alignment (the allocation moves), not the layout.
#[derive(Debug, Clone, Default)]
pub(super) struct Rows {
    pub(super) bits: Vec<u64>,
    pub(super) off: usize,
}

impl Rows {
    /// The rows, the first at 0.
    #[inline(always)]
    pub(super) fn rows(&self) -> &[u64] {
        self.bits.get(self.off..).unwrap_or(&[])
    }

    pub(super) fn memory_bytes(&self) -> usize {
        self.bits.capacity() * 8
    }
}

/// Words per class in [`Rows`].
pub(super) fn stride(words: usize) -> usize {
    (summary(words) + words).next_multiple_of(8)
}

/// Lays out `words`-word class bitmaps as [`Rows`].
pub(super) fn with_summary(bits: &[u64], words: usize) -> Rows {
    let s = summary(words);
    let stride = stride(words);
    let classes = bits.len() / words.max(1);
    let mut out: Vec<u64> = Vec::with_capacity(classes * stride + 8);
    // The allocation does not move while it is filled.
    let at = out.as_ptr() as usize / 8;
    let off = (8 - (at + s) % 8) % 8;
    out.resize(off, 0);
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
        out.resize(start + stride, 0);
    }
    Rows { bits: out, off }
}

/// Summary words of a `words`-word bitmap.
pub(super) fn summary(words: usize) -> usize {
    words.div_ceil(64)
}
