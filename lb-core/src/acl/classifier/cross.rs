//! Cross products (RFC phase 1 and on): two class sets into the classes of
//! their pairs, with a table from pair to class, within a budget.

use ahash::AHashMap;

use super::partition::class_bits;

/// A cross-product table: transport class × port class → transport class.
#[derive(Debug, Clone)]
pub(super) struct Combo {
    pub(super) right: usize,
    pub(super) table: Vec<u32>,
}

impl Combo {
    pub(super) fn new(right: usize, table: Vec<u32>) -> Combo {
        Combo { right, table }
    }

    #[inline(always)]
    pub(super) fn get(&self, left: u32, right: u32) -> u32 {
        self.table
            .get(left as usize * self.right + right as usize)
            .copied()
            .unwrap_or(0)
    }

    /// `left[i] = self.get(left[i], right[i])` for every `i`.
    #[inline(always)]
    pub(super) fn apply(&self, left: &mut [u32], right: &[u32]) {
        for (l, &r) in left.iter_mut().zip(right) {
            *l = self.get(*l, r);
        }
    }
}

/// Most bitmap words a [`cross`] may compute (keeps builds fast).
pub(super) const CROSS_BUDGET: usize = 1 << 18;

/// The budget of the further cross products that leave a single field for
/// the final table, in [`CROSS_BUDGET`]s.
pub(super) const EXTRA_CROSS: usize = 64;

/// The cross-product budget of a staged build: a quarter of the full one.
/// Its tables serve only until the refinement, which rebuilds with the
/// full budget whenever a field was left out; a cross product costs its
/// size to compute (1000 rules: 0.3 instead of 0.9 ms).
pub(super) const STAGED_CROSS_BUDGET: usize = CROSS_BUDGET / 4;

/// The cross product of two class sets (`words`-word bitmaps): the table of
/// `(i, j)` ↦ class of `a_i & b_j` (row-major) and the deduplicated class
/// bitmaps; `None` when it would compute more than `budget` words or find
/// more than `most` classes.
pub(super) fn cross(
    a: &[u64],
    b: &[u64],
    words: usize,
    budget: usize,
    most: usize,
) -> Option<(Vec<u32>, Vec<u64>)> {
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
    // The class of the empty set, the most common pair: no hashing.
    let mut empty: Option<u32> = None;
    for ai in a.chunks(words) {
        for bj in b.chunks(words) {
            let mut h = 0u64;
            let mut any = 0u64;
            for ((c, x), y) in cur.iter_mut().zip(ai).zip(bj) {
                *c = x & y;
                any |= *c;
                h = (h.rotate_left(23) ^ *c).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            }
            if any == 0 {
                if let Some(c) = empty {
                    table.push(c);
                    continue;
                }
            }
            let class = match known.get(&h) {
                Some(&c) if class_bits(&bits, c, words) == cur.as_slice() => c,
                found => {
                    let c = classes;
                    classes += 1;
                    if classes as usize > most {
                        return None;
                    }
                    bits.extend_from_slice(&cur);
                    if found.is_none() {
                        known.insert(h, c);
                    }
                    c
                }
            };
            if any == 0 {
                empty = Some(class);
            }
            table.push(class);
        }
    }
    Some((table, bits))
}
