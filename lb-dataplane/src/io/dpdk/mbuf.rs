//! [`Mbuf`]: the one door into DPDK packet memory.

use std::fmt;
use std::ptr::NonNull;

use super::*;
use crate::io::RxMeta;

/// An owned packet buffer, returned to its pool on drop.
///
/// Only the first segment is exposed: ports are configured without
/// scattered RX, so received frames are single-segment unless larger than
/// the buffer (then [`RxMeta::truncated`] is set).
#[repr(transparent)]
pub struct Mbuf {
    raw: NonNull<sys::rte_mbuf>,
}

// SAFETY: an Mbuf is the only owner of its buffer; DPDK lets any thread
// read, write and free an mbuf it owns (the pool is thread-safe).
unsafe impl Send for Mbuf {}

impl fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mbuf")
            .field("len", &self.len())
            .field("segments", &self.segments())
            .field("ol_flags", &format_args!("{:#x}", self.ol_flags()))
            .finish()
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf (invariant of from_raw) and give it up
        // here; rte_pktmbuf_free also frees any chained segments.
        unsafe { sys::lb_rte_pktmbuf_free(self.raw.as_ptr()) }
    }
}

impl Mbuf {
    /// Takes ownership of a raw mbuf; `None` for NULL. The one door into
    /// DPDK packet memory: every view after it is safe.
    ///
    /// # Safety
    /// `raw` is NULL or a valid packet mbuf (from a pktmbuf pool) that the
    /// caller owns and hands over: nothing else reads, writes or frees it
    /// afterwards, and its pool outlives it.
    pub unsafe fn from_raw(raw: *mut sys::rte_mbuf) -> Option<Mbuf> {
        NonNull::new(raw).map(|raw| Mbuf { raw })
    }

    /// Gives up ownership (e.g. to a TX burst); the caller must free it.
    pub fn into_raw(self) -> *mut sys::rte_mbuf {
        let raw = self.raw.as_ptr();
        std::mem::forget(self);
        raw
    }

    /// The raw mbuf, still owned by `self`.
    pub fn as_ptr(&self) -> *mut sys::rte_mbuf {
        self.raw.as_ptr()
    }

    /// Bytes in the first segment.
    pub fn len(&self) -> usize {
        // SAFETY: raw is a valid mbuf we own.
        usize::from(unsafe { sys::lb_rte_pktmbuf_data_len(self.raw.as_ptr()) })
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes in the whole packet (all segments).
    pub fn pkt_len(&self) -> usize {
        // SAFETY: raw is a valid mbuf we own.
        unsafe { sys::lb_rte_pktmbuf_pkt_len(self.raw.as_ptr()) as usize }
    }

    /// Number of chained segments (1 for every frame we build or receive
    /// whole).
    pub fn segments(&self) -> u16 {
        // SAFETY: raw is a valid mbuf we own.
        unsafe { sys::lb_rte_pktmbuf_nb_segs(self.raw.as_ptr()) }
    }

    /// Free bytes before the data, for [`Mbuf::prepend`].
    pub fn headroom(&self) -> usize {
        // SAFETY: raw is a valid mbuf we own.
        usize::from(unsafe { sys::lb_rte_pktmbuf_headroom(self.raw.as_ptr()) })
    }

    /// Free bytes after the data, for [`Mbuf::append`].
    pub fn tailroom(&self) -> usize {
        // SAFETY: raw is a valid mbuf we own.
        usize::from(unsafe { sys::lb_rte_pktmbuf_tailroom(self.raw.as_ptr()) })
    }

    /// Offload flags set by the PMD on RX (`RTE_MBUF_F_RX_*`).
    pub fn ol_flags(&self) -> u64 {
        // SAFETY: raw is a valid mbuf we own.
        unsafe { sys::lb_rte_pktmbuf_ol_flags(self.raw.as_ptr()) }
    }

    /// What the PMD told about a received frame, as [`RxMeta`].
    pub fn rx_meta(&self) -> RxMeta {
        let l4 = self.ol_flags() & u64::from(sys::RTE_MBUF_F_RX_L4_CKSUM_MASK);
        RxMeta {
            // "L4 checksum not correct in the data, but the L4 data is
            // verified": the virtio/CHECKSUM_PARTIAL case.
            csum_partial: l4 == u64::from(sys::RTE_MBUF_F_RX_L4_CKSUM_NONE),
            truncated: self.segments() > 1,
        }
    }

    /// The frame (first segment).
    pub fn data(&self) -> &[u8] {
        let (ptr, len) = self.segment();
        // SAFETY: ptr..ptr+len is the first segment's data, inside the
        // buffer we own (from_raw invariant); nothing else touches it
        // while `self` is borrowed.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }

    /// The frame (first segment), writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        let (ptr, len) = self.segment();
        // SAFETY: as in `data`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }

    fn segment(&self) -> (*mut u8, usize) {
        // SAFETY: raw is a valid mbuf we own; mtod is buf_addr + data_off.
        let ptr = unsafe { sys::lb_rte_pktmbuf_mtod(self.raw.as_ptr()) };
        (ptr.cast::<u8>(), self.len())
    }

    /// Grows the frame by `len` bytes at the end and returns them; `None`
    /// (nothing changed) if the tailroom is too small.
    pub fn append(&mut self, len: usize) -> Option<&mut [u8]> {
        let n = u16::try_from(len).ok()?;
        // SAFETY: raw is a valid mbuf we own; append checks the tailroom
        // and returns NULL without change when it is short.
        let p = unsafe { sys::lb_rte_pktmbuf_append(self.raw.as_ptr(), n) };
        if p.is_null() {
            return None;
        }
        let start = self.len() - len;
        Some(&mut self.data_mut()[start..])
    }

    /// Grows the frame by `len` bytes at the front and returns them; `None`
    /// (nothing changed) if the headroom is too small.
    pub fn prepend(&mut self, len: usize) -> Option<&mut [u8]> {
        let n = u16::try_from(len).ok()?;
        // SAFETY: raw is a valid mbuf we own; prepend checks the headroom
        // and returns NULL without change when it is short.
        let p = unsafe { sys::lb_rte_pktmbuf_prepend(self.raw.as_ptr(), n) };
        if p.is_null() {
            return None;
        }
        Some(&mut self.data_mut()[..len])
    }

    /// Removes `len` bytes from the front; false (nothing changed) if the
    /// first segment is shorter.
    pub fn adj(&mut self, len: usize) -> bool {
        let Ok(n) = u16::try_from(len) else {
            return false;
        };
        // SAFETY: raw is a valid mbuf we own; adj checks the length.
        !unsafe { sys::lb_rte_pktmbuf_adj(self.raw.as_ptr(), n) }.is_null()
    }

    /// Removes `len` bytes from the end; false (nothing changed) if the
    /// last segment is shorter.
    pub fn trim(&mut self, len: usize) -> bool {
        let Ok(n) = u16::try_from(len) else {
            return false;
        };
        // SAFETY: raw is a valid mbuf we own; trim checks the length.
        unsafe { sys::lb_rte_pktmbuf_trim(self.raw.as_ptr(), n) == 0 }
    }

    /// Sets the frame length (single-segment mbufs only); false (nothing
    /// changed) if it does not fit the buffer or the mbuf is chained.
    pub fn set_len(&mut self, len: usize) -> bool {
        let Ok(n) = u16::try_from(len) else {
            return false;
        };
        if self.segments() != 1 || len > self.len() + self.tailroom() {
            return false;
        }
        // SAFETY: raw is a valid single-segment mbuf we own and the new
        // length stays within its buffer (checked above).
        unsafe {
            sys::lb_rte_pktmbuf_set_data_len(self.raw.as_ptr(), n);
            sys::lb_rte_pktmbuf_set_pkt_len(self.raw.as_ptr(), u32::from(n));
        }
        true
    }
}
