//! Port I/O behind one trait, so that backends (AF_PACKET by default, DPDK
//! with the `dpdk` feature) plug into the same worker loop.
//!
//! [`PacketIo`] is a whole queue pair that hands each received frame to a
//! callback and copies frames to send: simple, for tools and tests. The
//! workers use the queue pair split in two, [`RxQueue`] and [`TxQueue`],
//! around bursts of buffers the port owns: a burst of [`Slot`]s is
//! rewritten in place and each frame goes to its egress port as it is,
//! a DPDK mbuf moved to the TX queue without a copy, an AF_PACKET frame
//! copied once from the RX ring into the kernel's send path.

pub mod afpacket;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod pool;
pub mod raw;

use std::io;
use std::sync::Arc;

use pool::{BufPool, PoolBuf};

/// Facts the port knows about a received frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxMeta {
    /// The kernel deferred the L4 checksum (CHECKSUM_PARTIAL, as veth does):
    /// the checksum field holds only the pseudo-header sum.
    pub csum_partial: bool,
    /// The frame was cut short by the ring's frame size.
    pub truncated: bool,
}

/// Counters of one queue of one port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Frames the kernel (or NIC) dropped before we saw them.
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames we could not send (ring or queue full, send error).
    pub tx_dropped: u64,
}

/// One RX queue and one TX queue of a port, owned by one worker.
pub trait PacketIo: Send {
    /// Receives at most `max` frames, handing each to `f` as a mutable
    /// buffer (the frame may be rewritten in place and then passed to
    /// [`PacketIo::send`] of any port). Returns how many frames were seen.
    fn recv_burst(&mut self, max: usize, f: &mut dyn FnMut(&mut [u8], RxMeta)) -> usize;

    /// Queues one frame for transmission; returns false if it was dropped.
    fn send(&mut self, frame: &[u8]) -> bool;

    /// Pushes queued frames to the wire.
    fn flush(&mut self) -> io::Result<()>;

    /// The port's Ethernet address.
    fn mac(&self) -> [u8; 6];

    fn stats(&self) -> IoStats;

    /// A descriptor that polls readable when frames arrive, so an idle
    /// worker can sleep until traffic instead of spinning; `None` if the
    /// backend has none (DPDK polls only).
    fn poll_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// A frame that owns its buffer: it can wait, go to another worker, or
/// leave on a port that sends such buffers without a copy. Dropped, it is
/// freed.
#[derive(Debug)]
pub enum Buf {
    /// A copy in a buffer of the workers' pool (for frames that cannot stay
    /// in their RX ring).
    Pooled(PoolBuf),
    /// A DPDK packet buffer.
    #[cfg(feature = "dpdk")]
    Mbuf(dpdk::Mbuf),
}

impl Buf {
    pub fn data(&self) -> &[u8] {
        match self {
            Buf::Pooled(b) => b.data(),
            #[cfg(feature = "dpdk")]
            Buf::Mbuf(m) => m.data(),
        }
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        match self {
            Buf::Pooled(b) => b.data_mut(),
            #[cfg(feature = "dpdk")]
            Buf::Mbuf(m) => m.data_mut(),
        }
    }

    /// Rebuilds the Ethernet header in place as a port with VLAN `vlan`
    /// sends it (see [`crate::l2::for_port`]); false (nothing changed) if
    /// there is no room.
    pub fn retag(&mut self, vlan: Option<u16>) -> bool {
        match self {
            Buf::Pooled(b) => b.retag(vlan),
            #[cfg(feature = "dpdk")]
            Buf::Mbuf(m) => m.retag(vlan),
        }
    }
}

/// One frame of a received burst.
#[derive(Debug, Default)]
pub enum Slot<'a> {
    #[default]
    Empty,
    /// In place in the port's RX ring (AF_PACKET), for as long as the burst
    /// borrows the queue.
    Lent(&'a mut [u8]),
    /// In a buffer of its own (a DPDK mbuf, or a pooled copy another worker
    /// handed over).
    Owned(Buf),
}

impl Slot<'_> {
    pub fn data(&self) -> &[u8] {
        match self {
            Slot::Empty => &[],
            Slot::Lent(f) => f,
            Slot::Owned(b) => b.data(),
        }
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        match self {
            Slot::Empty => &mut [],
            Slot::Lent(f) => f,
            Slot::Owned(b) => b.data_mut(),
        }
    }

    /// The frame as a buffer of its own: the one it has, or a copy from
    /// `pool` of a frame lent by its ring; `None` if the slot is empty or
    /// the pool has no buffer free.
    pub fn into_buf(self, pool: &Arc<BufPool>) -> Option<Buf> {
        match self {
            Slot::Empty => None,
            Slot::Lent(f) => pool.copy(f).map(Buf::Pooled),
            Slot::Owned(b) => Some(b),
        }
    }
}

/// The receiving half of a queue pair, owned by one worker.
pub trait RxQueue: Send {
    /// Receives at most `slots.len()` frames into `slots[..n]` (which the
    /// caller passes empty) and what the port knows of each into
    /// `meta[..n]`; returns `n`. Frames lent by a ring stay there until
    /// [`RxQueue::rx_done`] or the next burst.
    fn rx_burst<'a>(&'a mut self, slots: &mut [Slot<'a>], meta: &mut [RxMeta]) -> usize;

    /// Gives back to the port what the last burst lent.
    fn rx_done(&mut self) {}

    /// The receive counters (`rx_*`).
    fn stats(&self) -> IoStats;

    /// See [`PacketIo::poll_fd`].
    fn poll_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// The sending half of a queue pair, owned by one worker.
pub trait TxQueue: Send {
    /// Queues a copy of `frame`; returns false if it was dropped.
    fn send(&mut self, frame: &[u8]) -> bool;

    /// Queues `buf` itself where the port sends such buffers (DPDK's
    /// mbufs), a copy of it otherwise (then `buf` is freed at once).
    fn send_buf(&mut self, buf: Buf) -> bool {
        self.send(buf.data())
    }

    /// Pushes queued frames to the wire.
    fn flush(&mut self) -> io::Result<()>;

    /// The port's Ethernet address.
    fn mac(&self) -> [u8; 6];

    /// The send counters (`tx_*`).
    fn stats(&self) -> IoStats;
}

impl IoStats {
    /// The receive counters of `rx` with the send counters of `tx`.
    pub fn merged(rx: IoStats, tx: IoStats) -> IoStats {
        IoStats {
            tx_packets: tx.tx_packets,
            tx_bytes: tx.tx_bytes,
            tx_dropped: tx.tx_dropped,
            ..rx
        }
    }
}
