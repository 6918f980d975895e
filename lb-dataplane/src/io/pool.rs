//! Packet buffers for frames that must outlive their RX ring: a frame
//! handed to the worker that owns its flow, or one waiting for its next hop
//! to be resolved. AF_PACKET frames live in a ring the kernel refills, so
//! such a frame is copied once into a buffer of this pool; DPDK frames keep
//! their mbuf instead. Every buffer is made with the pool and goes back to
//! it when dropped: nothing is allocated per packet.

use std::fmt;
use std::sync::Arc;

use crossbeam::queue::ArrayQueue;

/// Free bytes kept in front of a frame, so that a VLAN tag can be added
/// in place.
pub const HEADROOM: usize = 8;

/// A fixed set of equal buffers, shared by the workers.
pub struct BufPool {
    free: ArrayQueue<Box<[u8]>>,
    size: usize,
}

impl fmt::Debug for BufPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufPool")
            .field("free", &self.free.len())
            .field("capacity", &self.free.capacity())
            .field("frame_size", &self.size)
            .finish()
    }
}

impl BufPool {
    /// A pool of `count` buffers holding frames of up to `frame_size` bytes.
    pub fn new(count: usize, frame_size: usize) -> Arc<BufPool> {
        let free = ArrayQueue::new(count.max(1));
        for _ in 0..count {
            // Cannot fail: the queue holds `count`.
            let _ = free.push(vec![0u8; HEADROOM + frame_size].into_boxed_slice());
        }
        Arc::new(BufPool {
            free,
            size: frame_size,
        })
    }

    /// A copy of `frame` in a free buffer; `None` when every buffer is in
    /// use or the frame is larger than a buffer.
    pub fn copy(self: &Arc<Self>, frame: &[u8]) -> Option<PoolBuf> {
        if frame.len() > self.size {
            return None;
        }
        let mut data = self.free.pop()?;
        data[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        Some(PoolBuf {
            data,
            start: HEADROOM,
            len: frame.len(),
            pool: Arc::clone(self),
        })
    }

    /// Buffers free now.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// The largest frame a buffer holds.
    pub fn frame_size(&self) -> usize {
        self.size
    }
}

/// A frame in a buffer of a [`BufPool`], returned to it on drop.
pub struct PoolBuf {
    data: Box<[u8]>,
    start: usize,
    len: usize,
    pool: Arc<BufPool>,
}

impl fmt::Debug for PoolBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuf").field("len", &self.len).finish()
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        // An empty boxed slice does not allocate.
        let data = std::mem::take(&mut self.data);
        let _ = self.pool.free.push(data);
    }
}

impl PoolBuf {
    pub fn data(&self) -> &[u8] {
        &self.data[self.start..self.start + self.len]
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.start..self.start + self.len]
    }

    /// Rebuilds the Ethernet header in place as a port with VLAN `vlan`
    /// sends it (see [`crate::l2::for_port`]); false (nothing changed) if
    /// there is no room.
    pub fn retag(&mut self, vlan: Option<u16>) -> bool {
        let Some((old, new)) = crate::l2::retag_plan(self.data(), vlan) else {
            return true;
        };
        let Some(start) = (self.start + old).checked_sub(new) else {
            return false;
        };
        let addrs = crate::l2::addresses(self.data());
        crate::l2::write_header(&mut self.data[start..start + new], addrs, vlan);
        self.len = self.len + new - old;
        self.start = start;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_and_are_never_made_again() {
        let pool = BufPool::new(2, 64);
        let a = pool.copy(&[1; 60]).expect("free");
        let b = pool.copy(&[2; 64]).expect("free");
        assert!(pool.copy(&[3; 10]).is_none(), "all in use");
        assert_eq!((a.data(), b.data().len()), (&[1u8; 60][..], 64));
        drop(a);
        assert_eq!(pool.available(), 1);
        assert!(pool.copy(&[4; 65]).is_none(), "too large");
        let c = pool.copy(&[5; 14]).expect("back in the pool");
        assert_eq!(c.data(), &[5u8; 14]);
    }

    #[test]
    fn a_tag_is_added_and_removed_in_place() {
        let pool = BufPool::new(1, 64);
        let mut frame = vec![0xaa; 6];
        frame.extend_from_slice(&[0xbb; 6]);
        frame.extend_from_slice(&[0x08, 0x00, 0x45, 0x00]);
        let mut b = pool.copy(&frame).expect("free");
        assert!(b.retag(Some(7)));
        let mut tagged = frame[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x07, 0x08, 0x00, 0x45, 0x00]);
        assert_eq!(b.data(), &tagged[..]);
        assert!(b.retag(Some(7)), "already tagged so");
        assert_eq!(b.data(), &tagged[..]);
        assert!(b.retag(None));
        assert_eq!(b.data(), &frame[..]);
    }
}
