//! Port I/O behind one trait, so that backends (AF_PACKET by default, DPDK
//! with the `dpdk` feature) plug into the same worker loop.

pub mod afpacket;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod raw;

use std::io;

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
