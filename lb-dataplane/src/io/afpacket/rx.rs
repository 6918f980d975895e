//! The receiving half: frames lent in place from the RX ring, a burst at a
//! time.

use std::cell::Cell;
use std::fmt;
use std::mem::size_of;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::ring::{
    parse_hdr, read_u32, reinsert_tag_in_place, stripped_tag, Ring, BLOCK_FIRST_PKT,
    BLOCK_NUM_PKTS, BODY_START, VLAN_HLEN,
};
use crate::io::{IoStats, RxMeta, RxQueue, Slot};

/// The receiving half of an [`AfPacket`]: its RX ring, whose frames are
/// lent in place, a burst at a time.
pub struct AfPacketRx {
    pub(super) ring: Ring,
    /// Declared after `ring`: the mapping is removed before the socket closes.
    pub(super) fd: Arc<OwnedFd>,
    /// Set when the kernel lacks PACKET_IGNORE_OUTGOING: our own TX is then
    /// read back and filtered by `sll_pkttype`.
    pub(super) filter_outgoing: bool,
    /// Block being read, frames of it not yet handed out, offset of the next.
    pub(super) rx_block: usize,
    pub(super) rx_left: u32,
    pub(super) rx_offset: usize,
    /// A block whose frames the last burst lent: given back to the kernel
    /// once the burst is over.
    pub(super) held: Option<usize>,
    pub(super) stats: IoStats,
    /// Kernel drops read so far (PACKET_STATISTICS resets on each read).
    pub(super) rx_dropped: Cell<u64>,
}

impl fmt::Debug for AfPacketRx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AfPacketRx")
            .field("fd", &self.fd.as_raw_fd())
            .field("block_size", &self.ring.block_size)
            .field("block_count", &self.ring.block_count)
            .field("stats", &RxQueue::stats(self))
            .finish_non_exhaustive()
    }
}

/// The kernel's drop count since the last read (PACKET_STATISTICS); 0 if
/// it cannot be read.
pub(super) fn kernel_drops(fd: &OwnedFd) -> u64 {
    let mut st = libc::tpacket_stats_v3 {
        tp_packets: 0,
        tp_drops: 0,
        tp_freeze_q_cnt: 0,
    };
    let mut len = size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
    // SAFETY: `st` is writable for `len` bytes and `len` is a valid
    // in/out length, both exclusively borrowed for the call.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats_v3).cast(),
            &mut len,
        )
    };
    if ret == 0 {
        u64::from(st.tp_drops)
    } else {
        0
    }
}

impl AfPacketRx {
    /// Whether a received frame is ready without blocking.
    pub fn rx_ready(&self) -> bool {
        self.ring.status(self.rx_block).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0
    }

    /// Moves on to the next block (the current one is given back by the
    /// caller, or held while its frames are lent).
    fn advance(&mut self) {
        self.rx_left = 0;
        self.rx_block += 1;
        if self.rx_block == self.ring.block_count {
            self.rx_block = 0;
            // Once per ring turn: cheap, and keeps the kernel's u32 from wrapping.
            self.rx_dropped
                .set(self.rx_dropped.get() + kernel_drops(&self.fd));
        }
    }

    /// Gives the block the last burst lent back to the kernel.
    fn release_held(&mut self) {
        if let Some(block) = self.held.take() {
            self.ring.release(block);
        }
    }

    /// Finds the next frame to read: in the current block, or in the next
    /// block the kernel has filled (empty ones are given back on the way).
    /// False if none is ready.
    fn next_frames(&mut self) -> bool {
        let mut empty_blocks = 0;
        while self.rx_left == 0 {
            // Empty or malformed blocks cost a step too: bounded by the ring.
            if empty_blocks > self.ring.block_count {
                return false;
            }
            let Some(body) = self.ring.user_block(self.rx_block) else {
                return false;
            };
            let num = read_u32(body, BLOCK_NUM_PKTS - BODY_START).unwrap_or(0);
            let first = read_u32(body, BLOCK_FIRST_PKT - BODY_START).unwrap_or(0) as usize;
            if num == 0 {
                empty_blocks += 1;
                self.ring.release(self.rx_block);
                self.advance();
                continue;
            }
            self.rx_left = num;
            self.rx_offset = first;
        }
        true
    }
}

impl RxQueue for AfPacketRx {
    /// Lends frames of one block at a time, in place in the ring; the
    /// block goes back to the kernel at [`RxQueue::rx_done`] or the next
    /// burst, once its last frame has been lent.
    fn rx_burst<'a>(&'a mut self, slots: &mut [Slot<'a>], meta: &mut [RxMeta]) -> usize {
        self.release_held();
        let max = slots.len().min(meta.len());
        if max == 0 || !self.next_frames() {
            return 0;
        }
        let block = self.rx_block;
        let block_count = self.ring.block_count;
        let Some(body) = self.ring.user_block(block) else {
            return 0;
        };
        // Frames follow each other in the block: each is carved off the
        // rest of it, so that every slot holds a disjoint piece.
        let mut rest: &'a mut [u8] = body;
        let mut rest_at = 0;
        let mut n = 0;
        while n < max && self.rx_left > 0 {
            let carved = self.rx_offset.checked_sub(BODY_START).and_then(|at| {
                let rel = at.checked_sub(rest_at)?;
                let hdr = parse_hdr(rest, rel)?;
                let len = if self.rx_left > 1 && hdr.next_offset > 0 {
                    hdr.next_offset
                } else {
                    rest.len() - rel
                };
                (len >= hdr.mac + hdr.snaplen && rel + len <= rest.len())
                    .then_some((at, rel, len, hdr))
            });
            let Some((at, rel, len, hdr)) = carved else {
                // The kernel never writes this; skip the block rather than
                // trust its remaining offsets, and count what is lost.
                let lost = u64::from(self.rx_left);
                self.rx_dropped.set(self.rx_dropped.get() + lost);
                self.rx_left = 0;
                break;
            };
            let (region, tail) = std::mem::take(&mut rest)[rel..].split_at_mut(len);
            rest = tail;
            rest_at = at + len;
            self.rx_left -= 1;
            self.rx_offset += hdr.next_offset;
            if self.filter_outgoing && hdr.pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let (range, wire_len) = match stripped_tag(&hdr) {
                None => (Some((hdr.mac, hdr.mac + hdr.snaplen)), hdr.len),
                Some(tag) => (
                    reinsert_tag_in_place(region, 0, &hdr, tag),
                    hdr.len + VLAN_HLEN,
                ),
            };
            let Some((start, end)) = range else {
                // No room to put the tag back (the kernel leaves some): as
                // good as lost.
                self.rx_dropped.set(self.rx_dropped.get() + 1);
                continue;
            };
            slots[n] = Slot::Lent(&mut region[start..end]);
            meta[n] = RxMeta {
                csum_partial: hdr.status & libc::TP_STATUS_CSUMNOTREADY != 0,
                truncated: hdr.snaplen < hdr.len,
            };
            n += 1;
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += wire_len as u64;
        }
        if self.rx_left == 0 {
            // The lent frames keep the ring borrowed: the fields are
            // updated one by one (`advance` would borrow all of it).
            self.held = Some(block);
            self.rx_block = (block + 1) % block_count;
            if self.rx_block == 0 {
                self.rx_dropped
                    .set(self.rx_dropped.get() + kernel_drops(&self.fd));
            }
        }
        n
    }

    fn rx_done(&mut self) {
        self.release_held();
    }

    fn stats(&self) -> IoStats {
        self.rx_dropped
            .set(self.rx_dropped.get() + kernel_drops(&self.fd));
        IoStats {
            rx_dropped: self.rx_dropped.get(),
            ..self.stats
        }
    }

    fn poll_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }
}
