//! The ring of half-open TCP sessions that early drop reads.

use super::*;

/// The half-open TCP sessions of a table in the order they became
/// half-open, so early drop finds the oldest in O(1): a ring of `(slot,
/// generation)` entries with room for twice the table's sessions. Entries
/// of sessions that completed their handshake or went away stay until
/// they reach the front, or until the ring fills up and is compacted
/// (which leaves at most as many entries as the table holds sessions, so
/// compactions cost O(1) per entry pushed); `count` is exact.
#[derive(Debug, Clone)]
pub(super) struct HalfOpen {
    ring: Vec<u64>,
    head: usize,
    pub(super) len: usize,
    /// Half-open sessions in the table.
    pub(super) count: usize,
}

/// A ring entry that no longer names a session.
const FORGOTTEN: u64 = u64::MAX;

impl HalfOpen {
    pub(super) const BYTES_PER_SESSION: usize = 2 * std::mem::size_of::<u64>();

    pub(super) fn new(capacity: usize) -> HalfOpen {
        HalfOpen {
            // Zeroed, so untouched pages cost nothing.
            ring: vec![0; 2 * capacity.max(1)],
            head: 0,
            len: 0,
            count: 0,
        }
    }

    pub(super) fn is_full(&self) -> bool {
        self.len == self.ring.len()
    }

    /// A session became half-open (`count` grows by one). The ring must
    /// not be full.
    pub(super) fn push(&mut self, slot: u32, gen: u32) {
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
    pub(super) fn get(&self, i: usize) -> (u32, u32) {
        let e = self.ring[(self.head + i) % self.ring.len()];
        if e == FORGOTTEN {
            return (NO_SLOT, 0);
        }
        ((e >> 32) as u32, e as u32)
    }

    pub(super) fn forget(&mut self, i: usize) {
        let at = (self.head + i) % self.ring.len();
        self.ring[at] = FORGOTTEN;
    }

    pub(super) fn pop_front(&mut self) {
        if self.len > 0 {
            self.head = (self.head + 1) % self.ring.len();
            self.len -= 1;
        }
    }

    /// Keeps only the entries for which `live` holds, in their order.
    pub(super) fn compact(&mut self, mut live: impl FnMut(u32, u32) -> bool) {
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
