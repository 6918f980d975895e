//! The cache of the bitmap AND's answers per class tuple, for a family
//! left without a final table.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bits to hold a class below `classes`.
pub(super) fn class_bits_width(classes: usize) -> u32 {
    usize::BITS - classes.saturating_sub(1).leading_zeros()
}

/// Entries of a [`TupleCache`], log2: 64K (512 KiB).
pub(super) const CACHE_LOG2: u32 = 16;

/// Entries of a staged build's [`TupleCache`], log2: 4K (32 KiB). A staged
/// table serves until its refinement, and a smaller cache is quicker to
/// set up (a fresh 512 KiB block costs its page faults).
pub(super) const STAGED_CACHE_LOG2: u32 = 12;

/// The answers of the class tuples seen, for a family whose last step is
/// the bitmap AND: a direct-mapped table of `(tuple + 1) << 16 | local
/// rule` (`u16::MAX`: none; 0: empty), the tuple being the transport class
/// and the classes of the fields left out, packed in 47 bits. Relaxed
/// atomics: an entry is read and written whole, and it says which tuple it
/// answers, so concurrent lookups at worst miss.
pub(super) struct TupleCache {
    pub(super) entries: Box<[AtomicU64]>,
    pub(super) log2_entries: u32,
    /// The fields packed after the transport class and their shifts.
    pub(super) fields: [(usize, u32); 4],
    pub(super) nfields: usize,
}

impl TupleCache {
    /// `None` when the tuple does not fit 47 bits.
    pub(super) fn new(
        l4_width: u32,
        fields: &[(usize, u32)],
        log2_entries: u32,
    ) -> Option<TupleCache> {
        let mut shift = l4_width;
        let mut packed = [(0, 0); 4];
        for (p, &(f, w)) in packed.iter_mut().zip(fields) {
            *p = (f, shift);
            shift += w;
        }
        if shift > 47 || fields.len() > 4 {
            return None;
        }
        Some(TupleCache {
            entries: (0..1usize << log2_entries)
                .map(|_| AtomicU64::new(0))
                .collect(),
            log2_entries,
            fields: packed,
            nfields: fields.len(),
        })
    }

    /// The packed tuple of the classes `c` (transport class first).
    #[inline(always)]
    pub(super) fn key(&self, c: &[u32; 5]) -> u64 {
        let mut key = u64::from(c[0]);
        for &(f, shift) in self.fields.iter().take(self.nfields) {
            key |= u64::from(c.get(f).copied().unwrap_or(0)) << shift;
        }
        key
    }

    #[inline(always)]
    pub(super) fn slot(&self, key: u64) -> Option<&AtomicU64> {
        let h = key.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            >> (u64::BITS - self.log2_entries);
        self.entries.get(h as usize)
    }

    /// The cached first rule of `key`: `Some(None)` for no rule, `None`
    /// when not cached.
    #[inline(always)]
    pub(super) fn get(&self, key: u64) -> Option<Option<usize>> {
        let e = self.slot(key)?.load(Ordering::Relaxed);
        if e >> 16 != key + 1 {
            return None;
        }
        let local = e & 0xffff;
        Some((local != 0xffff).then_some(local as usize))
    }

    #[inline(always)]
    pub(super) fn put(&self, key: u64, local: Option<usize>) {
        let local = local
            .and_then(|l| u16::try_from(l).ok())
            .unwrap_or(u16::MAX);
        if let Some(slot) = self.slot(key) {
            slot.store(((key + 1) << 16) | u64::from(local), Ordering::Relaxed);
        }
    }

    pub(super) fn memory_bytes(&self) -> usize {
        self.entries.len() * 8
    }
}

/// A copy starts empty.
impl Clone for TupleCache {
    fn clone(&self) -> TupleCache {
        TupleCache {
            entries: (0..self.entries.len()).map(|_| AtomicU64::new(0)).collect(),
            log2_entries: self.log2_entries,
            fields: self.fields,
            nfields: self.nfields,
        }
    }
}

impl std::fmt::Debug for TupleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TupleCache")
            .field("entries", &self.entries.len())
            .field("fields", &&self.fields[..self.nfields])
            .finish()
    }
}
