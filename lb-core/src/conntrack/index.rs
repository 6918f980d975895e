//! A fixed-size open-addressing index from a key hash to a `u32` value,
//! with linear probing and backward-shift deletion (no tombstones).
//!
//! Each bucket is one `u64`: the high 32 bits hold the low 32 bits of the
//! key's hash (the tag, which also gives the home bucket), the low 32 bits
//! the value plus one, so that an all-zero bucket is empty and the whole
//! table can be allocated zeroed. The index stores no keys: the caller
//! confirms a candidate by comparing the key it points to.
//!
//! The home bucket is the tag scaled to the number of buckets (`tag * n /
//! 2^32`), so the index can have any number of buckets: it is sized to its
//! load factor exactly instead of to the next power of two.

#[derive(Debug)]
pub(crate) struct Index {
    buckets: Vec<u64>,
}

/// The largest value an [`Index`] can hold.
pub(crate) const MAX_VALUE: u32 = u32::MAX - 1;

impl Index {
    /// An index for up to `max_entries` entries, keeping the load factor at
    /// or below 1/2 (short probe runs: a lookup of an absent key, which
    /// every new session makes, probes ~2.5 buckets at 1/2 but ~8 at 3/4).
    pub(crate) fn with_max_entries(max_entries: usize) -> Index {
        let want = max_entries.saturating_mul(2).max(8);
        assert!(
            u32::try_from(want).is_ok(),
            "index of {want} buckets: at most 2^32"
        );
        Index {
            buckets: vec![0; want],
        }
    }

    /// Writes every page of the bucket array (keeping its contents), so it
    /// is mapped now and not on first use.
    pub(crate) fn prefault(&mut self) {
        for b in self.buckets.iter_mut().step_by(512) {
            *b = std::hint::black_box(*b);
        }
    }

    /// Number of buckets.
    pub(crate) fn buckets(&self) -> usize {
        self.buckets.len()
    }

    fn tag(hash: u64) -> u64 {
        hash & 0xffff_ffff
    }

    /// The home bucket of a tag.
    #[inline]
    fn home_of(&self, tag: u64) -> usize {
        ((tag * self.buckets.len() as u64) >> 32) as usize
    }

    /// The bucket after `pos`, wrapping.
    #[inline]
    fn next(&self, pos: usize) -> usize {
        if pos + 1 == self.buckets.len() {
            0
        } else {
            pos + 1
        }
    }

    /// How many steps forward `to` is from `from`, wrapping.
    fn distance(&self, from: usize, to: usize) -> usize {
        if to >= from {
            to - from
        } else {
            to + self.buckets.len() - from
        }
    }

    /// The home bucket of `hash` (0 if empty): a first read to warm the cache.
    #[inline]
    pub(crate) fn bucket_of(&self, hash: u64) -> u64 {
        self.buckets[self.home_of(Self::tag(hash))]
    }

    /// Calls `is_match(value)` for every value stored under `hash` until it
    /// returns true; returns the matching bucket position and value.
    #[inline]
    pub(crate) fn find(
        &self,
        hash: u64,
        mut is_match: impl FnMut(u32) -> bool,
    ) -> Option<(usize, u32)> {
        let tag = Self::tag(hash);
        let mut pos = self.home_of(tag);
        loop {
            let b = self.buckets[pos];
            if b == 0 {
                return None;
            }
            if b >> 32 == tag {
                let value = (b as u32).wrapping_sub(1);
                if is_match(value) {
                    return Some((pos, value));
                }
            }
            pos = self.next(pos);
        }
    }

    /// Stores `value` under `hash` (the caller has checked the key is absent
    /// and that there is room).
    pub(crate) fn insert(&mut self, hash: u64, value: u32) {
        debug_assert!(value <= MAX_VALUE);
        let tag = Self::tag(hash);
        let mut pos = self.home_of(tag);
        while self.buckets[pos] != 0 {
            pos = self.next(pos);
        }
        self.buckets[pos] = (tag << 32) | u64::from(value + 1);
    }

    /// Empties the bucket at `pos` (as returned by [`Index::find`]), shifting
    /// later entries of the probe run back.
    pub(crate) fn remove_at(&mut self, mut pos: usize) {
        let mut next = pos;
        loop {
            next = self.next(next);
            let b = self.buckets[next];
            if b == 0 {
                break;
            }
            let home = self.home_of(b >> 32);
            // `b` may move to `pos` unless its home lies cyclically in
            // (pos, next].
            if self.distance(home, next) >= self.distance(pos, next) {
                self.buckets[pos] = b;
                pos = next;
            }
        }
        self.buckets[pos] = 0;
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets.iter().filter(|&&b| b != 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn colliding_hashes_insert_find_remove() {
        // 12 entries: 24 buckets; 10 entries: 20 (not powers of two).
        for (entries, buckets) in [(12u32, 24u64), (10, 20)] {
            let mut idx = Index::with_max_entries(entries as usize);
            assert_eq!(idx.buckets() as u64, buckets);
            // The smallest tag whose home is `home`.
            let tag = |home: u64| (home << 32).div_ceil(buckets);
            // Hashes that pile up on a few homes, the last ones wrapping
            // around the end; the high bits tell the values apart.
            let homes = [buckets - 1, buckets - 1, 0, 1, buckets - 1, 3];
            let hash = |v: u32| tag(homes[v as usize % 6]) | (u64::from(v) << 40);
            for v in 0..entries {
                assert_eq!(
                    idx.home_of(Index::tag(hash(v))) as u64,
                    homes[v as usize % 6]
                );
            }
            let mut model = BTreeMap::new();
            for v in 0..entries {
                idx.insert(hash(v), v);
                model.insert(v, ());
            }
            for order in [[3u32, 0, 7, 9, 5], [1, 2, 4, 6, 8]] {
                for v in order {
                    let (pos, got) = idx.find(hash(v), |x| x == v).expect("present");
                    assert_eq!(got, v);
                    idx.remove_at(pos);
                    model.remove(&v);
                    for w in 0..entries {
                        assert_eq!(
                            idx.find(hash(w), |x| x == w).is_some(),
                            model.contains_key(&w),
                            "{w}"
                        );
                    }
                    assert_eq!(idx.len(), model.len());
                }
            }
        }
    }
}
