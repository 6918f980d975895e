//! The TPACKET_V3 RX ring: its geometry, the mapping, and the frame headers
//! read out of user-owned blocks.

use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::AfPacketOpts;

/// Ethernet header length (destination, source, EtherType).
pub(super) const ETH_HLEN: usize = 14;
/// Length of one 802.1Q / 802.1ad tag.
pub(super) const VLAN_HLEN: usize = 4;
/// Offset of the EtherType (or of the first tag) in an Ethernet frame.
pub(super) const ETH_ADDRS_LEN: usize = 12;
/// `sendmmsg` refuses more messages than this (`UIO_MAXIOV`).
pub(super) const MAX_TX_BATCH: usize = 1024;

// Block descriptor layout (`struct tpacket_block_desc`, `tpacket_hdr_v1`).
pub(super) const BLOCK_HDR: usize = offset_of!(libc::tpacket_block_desc, hdr);
pub(super) const BLOCK_STATUS: usize = BLOCK_HDR + offset_of!(libc::tpacket_hdr_v1, block_status);
pub(super) const BLOCK_NUM_PKTS: usize = BLOCK_HDR + offset_of!(libc::tpacket_hdr_v1, num_pkts);
pub(super) const BLOCK_FIRST_PKT: usize =
    BLOCK_HDR + offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt);
/// User slices over a block start right after its status word: the kernel
/// may read that word at any time (to see whether the block is free), so it
/// is only ever accessed as an atomic, never through a slice.
pub(super) const BODY_START: usize = BLOCK_STATUS + size_of::<u32>();

// Frame header layout (`struct tpacket3_hdr`, followed by a `sockaddr_ll`).
pub(super) const TP_NEXT_OFFSET: usize = offset_of!(libc::tpacket3_hdr, tp_next_offset);
pub(super) const TP_SNAPLEN: usize = offset_of!(libc::tpacket3_hdr, tp_snaplen);
pub(super) const TP_LEN: usize = offset_of!(libc::tpacket3_hdr, tp_len);
pub(super) const TP_STATUS: usize = offset_of!(libc::tpacket3_hdr, tp_status);
pub(super) const TP_MAC: usize = offset_of!(libc::tpacket3_hdr, tp_mac);
pub(super) const TP_VLAN_TCI: usize =
    offset_of!(libc::tpacket3_hdr, hv1) + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tci);
pub(super) const TP_VLAN_TPID: usize =
    offset_of!(libc::tpacket3_hdr, hv1) + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tpid);
/// `TPACKET_ALIGN(sizeof(struct tpacket3_hdr))`: where the kernel puts the
/// frame's `sockaddr_ll`.
pub(super) const TP_SLL: usize = align16(size_of::<libc::tpacket3_hdr>());
pub(super) const TP_PKTTYPE: usize = TP_SLL + offset_of!(libc::sockaddr_ll, sll_pkttype);
/// End of the per-frame metadata; bytes between it and `tp_mac` are free.
pub(super) const TP_META_END: usize = TP_SLL + size_of::<libc::sockaddr_ll>();

pub(super) const fn align16(x: usize) -> usize {
    (x + libc::TPACKET_ALIGNMENT - 1) & !(libc::TPACKET_ALIGNMENT - 1)
}

/// The ring geometry and retire timeout, checked and converted for the kernel.
pub(super) fn ring_request(opts: &AfPacketOpts) -> io::Result<libc::tpacket_req3> {
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_string());
    let page = page_size();
    if opts.block_size == 0 || opts.block_size & (page - 1) != 0 {
        return Err(invalid(
            "AF_PACKET block_size must be a non-zero multiple of the page size",
        ));
    }
    if opts.frame_size & (libc::TPACKET_ALIGNMENT - 1) != 0
        || opts.frame_size < libc::TPACKET3_HDRLEN
        || opts.frame_size > opts.block_size
    {
        return Err(invalid(
            "AF_PACKET frame_size must be a multiple of 16, hold a frame header and fit a block",
        ));
    }
    if opts.block_count == 0 {
        return Err(invalid("AF_PACKET block_count must be at least 1"));
    }
    if opts.tx_batch == 0 || opts.tx_batch > MAX_TX_BATCH {
        return Err(invalid("AF_PACKET tx_batch must be between 1 and 1024"));
    }
    let too_big = || invalid("AF_PACKET ring is too large");
    let frames = (opts.block_size / opts.frame_size)
        .checked_mul(opts.block_count)
        .ok_or_else(too_big)?;
    opts.block_size
        .checked_mul(opts.block_count)
        .ok_or_else(too_big)?;
    Ok(libc::tpacket_req3 {
        tp_block_size: u32::try_from(opts.block_size).map_err(|_| too_big())?,
        tp_block_nr: u32::try_from(opts.block_count).map_err(|_| too_big())?,
        tp_frame_size: u32::try_from(opts.frame_size).map_err(|_| too_big())?,
        tp_frame_nr: u32::try_from(frames).map_err(|_| too_big())?,
        tp_retire_blk_tov: opts.block_timeout_ms,
        tp_sizeof_priv: 0,
        tp_feature_req_word: 0,
    })
}

pub(super) fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    // Always a power of two; the masks in ring_request rely on it.
    usize::try_from(page)
        .ok()
        .filter(|p| p.is_power_of_two())
        .unwrap_or(4096)
}

/// The memory-mapped RX ring: the one door into kernel-shared memory.
///
/// Invariants: `base` is the start of a live `MAP_SHARED` mapping of
/// `block_size * block_count` bytes owned by this value (unmapped on drop);
/// `block_size` is a multiple of the page size, so every block and its
/// status word are suitably aligned.
pub(super) struct Ring {
    pub(super) base: NonNull<u8>,
    pub(super) block_size: usize,
    pub(super) block_count: usize,
}

// SAFETY: the mapping is owned exclusively by this value and is not tied to
// the thread that created it; all access goes through `&self`/`&mut self`.
unsafe impl Send for Ring {}

impl Ring {
    /// Maps the RX ring configured on `fd` by `PACKET_RX_RING`.
    pub(super) fn map(fd: RawFd, req: &libc::tpacket_req3) -> io::Result<Ring> {
        let block_size = req.tp_block_size as usize;
        let block_count = req.tp_block_nr as usize;
        let len = block_size * block_count;
        // SAFETY: a fresh shared mapping chosen by the kernel (null hint)
        // aliases no Rust object; `fd` is a packet socket with an RX ring of
        // exactly `len` bytes (checked by ring_request, set by the caller).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Ring {
            base,
            block_size,
            block_count,
        })
    }

    /// The status word of `block`, shared with the kernel.
    pub(super) fn status(&self, block: usize) -> &AtomicU32 {
        assert!(block < self.block_count, "block index out of range");
        let offset = block * self.block_size + BLOCK_STATUS;
        // SAFETY: `offset + 4 <= len` since block < block_count and
        // BLOCK_STATUS + 4 <= block_size; the address is 4-aligned (page
        // aligned block + 8); the mapping lives as long as `&self`. The
        // kernel reads and writes this word with aligned 32-bit accesses, and
        // we never cover it with a slice, so atomics are its only Rust view.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(offset).cast::<u32>()) }
    }

    /// The bytes of `block` after its status word, if the kernel has handed
    /// the block to user space. Offsets into the slice are block offsets
    /// minus [`BODY_START`].
    pub(super) fn user_block(&mut self, block: usize) -> Option<&mut [u8]> {
        // Acquire pairs with the kernel's write barrier before it sets
        // TP_STATUS_USER: the block's contents are visible once we see it.
        if self.status(block).load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
            return None;
        }
        let offset = block * self.block_size + BODY_START;
        // SAFETY: the range [offset, offset + block_size - BODY_START) is
        // inside the mapping (block < block_count, checked by status()).
        // The block is user-owned: the kernel does not touch it until
        // release() stores TP_STATUS_KERNEL, except for the status word,
        // which the slice excludes. `&mut self` ties the slice's lifetime to
        // an exclusive borrow, so no other slice over it exists and release()
        // cannot run while it is alive.
        Some(unsafe {
            std::slice::from_raw_parts_mut(
                self.base.as_ptr().add(offset),
                self.block_size - BODY_START,
            )
        })
    }

    /// Gives `block` back to the kernel.
    pub(super) fn release(&mut self, block: usize) {
        // Release: our reads and writes of the block happen before the
        // kernel can see it free and refill it.
        self.status(block)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: `base` and the length are those of the mapping made in
        // map(), owned by this value; no reference into it outlives `self`.
        unsafe {
            libc::munmap(
                self.base.as_ptr().cast(),
                self.block_size * self.block_count,
            );
        }
    }
}

/// A frame header read from a user-owned block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FrameHdr {
    pub(super) next_offset: usize,
    pub(super) snaplen: usize,
    pub(super) len: usize,
    pub(super) status: u32,
    pub(super) mac: usize,
    pub(super) vlan_tci: u16,
    pub(super) vlan_tpid: u16,
    pub(super) pkttype: u8,
}

pub(super) fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

pub(super) fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    let bytes = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes(bytes.try_into().ok()?))
}

/// Reads the frame header at block offset `off` from a block body (see
/// [`Ring::user_block`]); None if it or its data fall outside the block.
#[cfg(test)]
pub(super) fn frame_hdr(body: &[u8], off: usize) -> Option<FrameHdr> {
    parse_hdr(body, off.checked_sub(BODY_START)?)
}

/// Reads the frame header at offset `at` of `body` (a block body, or what
/// is left of one); None if it or its data fall outside `body`.
pub(super) fn parse_hdr(body: &[u8], at: usize) -> Option<FrameHdr> {
    let hdr = FrameHdr {
        next_offset: read_u32(body, at + TP_NEXT_OFFSET)? as usize,
        snaplen: read_u32(body, at + TP_SNAPLEN)? as usize,
        len: read_u32(body, at + TP_LEN)? as usize,
        status: read_u32(body, at + TP_STATUS)?,
        mac: usize::from(read_u16(body, at + TP_MAC)?),
        // The kernel stores the TCI in a 32-bit field; only 16 bits are used.
        vlan_tci: (read_u32(body, at + TP_VLAN_TCI)? & 0xffff) as u16,
        vlan_tpid: read_u16(body, at + TP_VLAN_TPID)?,
        pkttype: *body.get(at + TP_PKTTYPE)?,
    };
    if hdr.mac < TP_META_END || at + hdr.mac + hdr.snaplen > body.len() {
        return None;
    }
    Some(hdr)
}

/// The VLAN tag the kernel took off the frame, as (TPID, TCI).
pub(super) fn stripped_tag(hdr: &FrameHdr) -> Option<(u16, u16)> {
    if hdr.status & libc::TP_STATUS_VLAN_VALID == 0 {
        return None;
    }
    let tpid = if hdr.status & libc::TP_STATUS_VLAN_TPID_VALID != 0 && hdr.vlan_tpid != 0 {
        hdr.vlan_tpid
    } else {
        libc::ETH_P_8021Q as u16
    };
    Some((tpid, hdr.vlan_tci))
}

/// The range of `body` holding the frame whose header is at body offset
/// `at`, with the stripped VLAN tag `tag` put back in front of the
/// EtherType. The tag goes into the free bytes before `tp_mac` (the kernel
/// leaves at least 14 there), so the frame stays in the ring; None if there
/// is no room.
pub(super) fn reinsert_tag_in_place(
    body: &mut [u8],
    at: usize,
    hdr: &FrameHdr,
    tag: (u16, u16),
) -> Option<(usize, usize)> {
    if hdr.snaplen < ETH_ADDRS_LEN || hdr.mac < TP_META_END + VLAN_HLEN {
        return None;
    }
    let mac = at + hdr.mac;
    let start = mac - VLAN_HLEN;
    body.copy_within(mac..mac + ETH_ADDRS_LEN, start);
    let tag_at = start + ETH_ADDRS_LEN;
    body[tag_at..tag_at + 2].copy_from_slice(&tag.0.to_be_bytes());
    body[tag_at + 2..tag_at + 4].copy_from_slice(&tag.1.to_be_bytes());
    Some((start, mac + hdr.snaplen))
}
