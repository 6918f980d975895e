//! A global allocator that backs big allocations with transparent huge
//! pages.
//!
//! The session table and its index are a few large arrays read at random:
//! on 4 KiB pages nearly every lookup in a table of a million sessions also
//! misses the TLB. Allocations of 2 MiB and more are aligned to 2 MiB and
//! marked `MADV_HUGEPAGE`, which is what THP's default `madvise` mode waits
//! for; everything else goes to the system allocator unchanged.
//!
//! ```
//! #[global_allocator]
//! static ALLOC: lb_dataplane::alloc::HugePageAlloc = lb_dataplane::alloc::HugePageAlloc;
//!
//! // A session-table-sized block: 2 MiB aligned, on huge pages where THP allows.
//! let table = vec![0u64; 1 << 20];
//! assert_eq!(table.as_ptr() as usize % lb_dataplane::alloc::HUGE, 0);
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::marker::PhantomData;

/// Allocations from this size on get huge pages.
pub const HUGE: usize = 2 << 20;

/// See the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct HugePageAlloc;

impl HugePageAlloc {
    fn huge(layout: Layout) -> Option<Layout> {
        if layout.size() < HUGE {
            return None;
        }
        Layout::from_size_align(layout.size(), layout.align().max(HUGE)).ok()
    }

    fn advise(ptr: *mut u8, size: usize) {
        if !ptr.is_null() {
            // SAFETY: `ptr` starts an allocation of `size` bytes we own, aligned
            // to 2 MiB; madvise only changes how the kernel backs it. Failure
            // (THP disabled) leaves ordinary pages, which is fine.
            unsafe {
                libc::madvise(ptr.cast(), size, libc::MADV_HUGEPAGE);
            }
        }
    }
}

// SAFETY: every method forwards to `System` with a layout that is valid for
// it (the same size, a larger power-of-two alignment for big blocks), and
// `dealloc`/`realloc` recompute the same adjusted layout that `alloc` used.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Self::huge(layout) {
            Some(big) => {
                // SAFETY: `big` has a non-zero size (at least HUGE).
                let p = unsafe { System.alloc(big) };
                Self::advise(p, big.size());
                p
            }
            // SAFETY: forwarded unchanged; the caller upholds alloc's contract.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match Self::huge(layout) {
            Some(big) => {
                // Advise first, then zero: zeroing faults the pages in, and
                // only pages faulted after the advice come as huge pages
                // (`System.alloc_zeroed` of an over-aligned block zeroes
                // before we could advise).
                // SAFETY: `big` has a non-zero size.
                let p = unsafe { System.alloc(big) };
                Self::advise(p, big.size());
                if !p.is_null() {
                    // SAFETY: `p` starts a fresh block of `big.size()` bytes.
                    unsafe { std::ptr::write_bytes(p, 0, big.size()) };
                }
                p
            }
            // SAFETY: forwarded unchanged.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let l = Self::huge(layout).unwrap_or(layout);
        // SAFETY: `ptr` was allocated by `System` with exactly `l` (see alloc).
        unsafe { System.dealloc(ptr, l) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_huge = Self::huge(layout).is_some();
        let new_layout = match Layout::from_size_align(new_size, layout.align()) {
            Ok(l) => l,
            Err(_) => return std::ptr::null_mut(),
        };
        if !old_huge && Self::huge(new_layout).is_none() {
            // SAFETY: both layouts are the plain ones System saw.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // Crossing into or within the huge class: allocate, copy, free.
        // SAFETY: `new_layout` is valid and non-zero (new_size >= the old
        // size's class or a valid shrink); the copy stays within both blocks.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

/// Keeps freed memory in the process (glibc's malloc): blocks up to 32 MiB
/// come from the heap instead of their own mappings, and the heap is not
/// given back to the kernel until 256 MiB of it are free. A configuration
/// reload builds classifier tables of a few hundred KiB each (port and
/// trie tables, cross products); returned to the kernel at each free, they
/// would be page-faulted back in at the next build, which was more than
/// half of a 1000-rule build's time. The session tables, larger, keep their
/// own mappings.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets two of malloc's tuning parameters; it is
    // called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

thread_local! {
    static FORWARDING: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as on the forwarding path (a worker's round
/// from its RX bursts to its TX flushes) until the guard drops, where
/// nothing may be allocated per packet. A counting allocator can check it
/// with [`on_forwarding_path`].
pub fn forwarding_path() -> ForwardingPath {
    let outer = FORWARDING.with(|f| f.replace(true));
    ForwardingPath {
        outer,
        _not_send: PhantomData,
    }
}

/// Whether the calling thread is on the forwarding path (see
/// [`forwarding_path`]). Allocation-free, for use inside an allocator.
pub fn on_forwarding_path() -> bool {
    FORWARDING.with(Cell::get)
}

/// See [`forwarding_path`].
#[derive(Debug)]
pub struct ForwardingPath {
    outer: bool,
    /// The mark belongs to one thread.
    _not_send: PhantomData<*const ()>,
}

impl Drop for ForwardingPath {
    fn drop(&mut self) {
        let outer = self.outer;
        FORWARDING.with(|f| f.set(outer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_blocks_are_aligned_and_usable() {
        let a = HugePageAlloc;
        for size in [16, 4096, HUGE, 3 * HUGE + 5] {
            let l = Layout::from_size_align(size, 8).expect("layout");
            // SAFETY: a valid non-zero layout; freed with the same layout below.
            unsafe {
                let p = a.alloc_zeroed(l);
                assert!(!p.is_null());
                if size >= HUGE {
                    assert_eq!(p as usize % HUGE, 0);
                }
                *p.add(size - 1) = 7;
                assert_eq!(*p, 0);
                let q = a.realloc(p, l, size * 2);
                assert!(!q.is_null());
                assert_eq!(*q.add(size - 1), 7);
                a.dealloc(q, Layout::from_size_align(size * 2, 8).expect("layout"));
            }
        }
    }
}
