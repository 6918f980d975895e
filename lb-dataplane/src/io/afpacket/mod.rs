//! AF_PACKET backend: a TPACKET_V3 memory-mapped RX ring and `sendmmsg` TX.
//!
//! RX: the kernel fills fixed-size blocks of variable-size frames and hands a
//! whole block to user space at once (when it is full or after
//! [`AfPacketOpts::block_timeout_ms`]); we hand its frames out one by one and
//! give the block back after its last frame. TX: frames are copied into a
//! preallocated batch and sent with one `sendmmsg` per batch, bypassing the
//! qdisc layer (the fastest path measured on veth, see DPDK-NOTES).
//!
//! Frames are handed out as the wire carried them: a VLAN tag the kernel
//! took off into metadata is put back (in the ring's free bytes before the
//! frame, so without a copy). Frames leaving the interface are not read back
//! (`PACKET_IGNORE_OUTGOING`, or filtering on `sll_pkttype` on kernels
//! without it). Kernel drops (`PACKET_STATISTICS`) are read once per ring turn
//! and by [`PacketIo::stats`].
//!
//! Ring memory is touched through `Ring` (`ring.rs`) only: it is the one
//! place that makes Rust references over the mapping, and everything after
//! it is safe, bounds-checked slice code. `rx.rs` and `tx.rs` hold the two
//! halves of a queue, `sys.rs` the socket and interface calls.
//!
//! ```no_run
//! use lb_dataplane::io::afpacket::{AfPacket, AfPacketOpts};
//! use lb_dataplane::io::PacketIo;
//!
//! let mut port = AfPacket::open("eth0", &AfPacketOpts::default())?;
//! let mut out = Vec::new();
//! loop {
//!     if port.recv_burst(32, &mut |frame, _meta| out.push(frame.len())) == 0 {
//!         port.flush()?;
//!         port.wait(10)?;
//!     }
//! #   break;
//! }
//! # Ok::<(), std::io::Error>(())
//! ```

use std::cell::Cell;
use std::ffi::CString;
use std::fmt;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use super::{IoStats, PacketIo, RxMeta, RxQueue, Slot, TxQueue};

mod ring;
mod rx;
mod sys;
#[cfg(test)]
mod tests;
mod tx;

pub use rx::AfPacketRx;
pub(crate) use sys::interface_mac;
pub use tx::AfPacketTx;

use ring::{ring_request, Ring, ETH_HLEN, VLAN_HLEN};
use sys::{cvt, ifreq, ioctl_ifreq, setsockopt};
use tx::TxMsgs;

/// Ring and batch sizes of one [`AfPacket`] queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfPacketOpts {
    /// Bytes per RX block; a multiple of the page size. A block holds many
    /// frames and is also the largest frame that can be received whole.
    pub block_size: usize,
    /// Blocks in the RX ring (`block_size * block_count` bytes are mapped).
    pub block_count: usize,
    /// Nominal frame slot size the kernel checks the request against; a
    /// multiple of 16. TPACKET_V3 packs frames by their real size.
    pub frame_size: usize,
    /// The kernel hands over a partly filled block after this many
    /// milliseconds: the worst-case RX latency under light load.
    pub block_timeout_ms: u32,
    /// Joins `PACKET_FANOUT` group with this id, hashing flows
    /// (`PACKET_FANOUT_HASH`, symmetric). IP fragments are not reassembled
    /// (no `PACKET_FANOUT_FLAG_DEFRAG`): the data plane forwards them as
    /// they are, and their hash (addresses only) keeps a datagram's
    /// fragments on one socket, whose worker hands them to their owner.
    pub fanout: Option<u16>,
    /// Sends straight to the driver (`PACKET_QDISC_BYPASS`): faster, but no
    /// traffic control applies and packet taps (tcpdump) do not see our TX.
    pub qdisc_bypass: bool,
    /// Frames per `sendmmsg`; [`PacketIo::send`] flushes when it is full.
    pub tx_batch: usize,
}

impl Default for AfPacketOpts {
    fn default() -> Self {
        // A block goes back to user space when full or after the retire
        // timeout, so under light traffic the ring holds `block_count`
        // timeouts' worth of frames: many small blocks ride out a stall of
        // the worker (64 ms here) that 16 big ones (16 ms) would not.
        AfPacketOpts {
            block_size: 256 << 10,
            block_count: 64,
            frame_size: 2048,
            block_timeout_ms: 1,
            fanout: None,
            qdisc_bypass: true,
            tx_batch: 32,
        }
    }
}

/// One RX and TX queue of an interface over an AF_PACKET socket.
pub struct AfPacket {
    rx: AfPacketRx,
    tx: AfPacketTx,
    ifname: String,
    ifindex: i32,
}

const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<AfPacket>();
    assert_send::<AfPacketRx>();
    assert_send::<AfPacketTx>();
};

impl fmt::Debug for AfPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AfPacket")
            .field("ifname", &self.ifname)
            .field("ifindex", &self.ifindex)
            .field("rx", &self.rx)
            .field("tx", &self.tx)
            .finish()
    }
}

impl AfPacket {
    /// Opens one queue on interface `ifname`: an RX ring, bound to the
    /// interface, in the fanout group if asked.
    pub fn open(ifname: &str, opts: &AfPacketOpts) -> io::Result<AfPacket> {
        let req = ring_request(opts)?;
        let cname = CString::new(ifname).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "interface name contains NUL")
        })?;
        // SAFETY: `cname` is a valid NUL-terminated string for the call.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            let err = io::Error::last_os_error();
            return Err(io::Error::new(
                err.kind(),
                format!("interface {ifname}: {err}"),
            ));
        }
        let ifindex =
            i32::try_from(ifindex).map_err(|_| io::Error::other("interface index out of range"))?;

        // Protocol 0: the socket receives nothing until bind() names both
        // the interface and ETH_P_ALL, so frames of other interfaces never
        // reach the ring in between.
        // SAFETY: socket() has no memory-safety preconditions.
        let raw = cvt(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        })?;
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let raw = fd.as_raw_fd();

        let version = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
        setsockopt(raw, libc::SOL_PACKET, libc::PACKET_VERSION, &version)?;
        let filter_outgoing = match setsockopt(
            raw,
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            &1 as &libc::c_int,
        ) {
            Ok(()) => false,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOPROTOOPT | libc::EINVAL)) => true,
            Err(e) => return Err(e),
        };
        if opts.qdisc_bypass {
            match setsockopt(
                raw,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                &1 as &libc::c_int,
            ) {
                // Older kernels: the qdisc path is slower but correct.
                Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {}
                other => other?,
            }
        }
        setsockopt(raw, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)?;
        let ring = Ring::map(raw, &req)?;

        // SAFETY: sockaddr_ll is plain integers; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex;
        // SAFETY: `sll` is a valid sockaddr_ll of the length passed.
        cvt(unsafe {
            libc::bind(
                raw,
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;

        if let Some(group) = opts.fanout {
            // Fanout needs a bound socket; the mode and flags go in the high
            // 16 bits, the group id in the low 16.
            let mode = libc::PACKET_FANOUT_HASH;
            let arg = (u32::from(group) | (mode << 16)) as libc::c_int;
            setsockopt(raw, libc::SOL_PACKET, libc::PACKET_FANOUT, &arg)?;
        }

        let mac = interface_mac(raw, ifname)?;
        let mut mtu_req = ifreq(ifname)?;
        ioctl_ifreq(raw, libc::SIOCGIFMTU, &mut mtu_req)?;
        // SAFETY: SIOCGIFMTU succeeded, so `ifru_mtu` is the member written.
        let mtu = usize::try_from(unsafe { mtu_req.ifr_ifru.ifru_mtu }).unwrap_or(1500);

        // Largest frame we send: MTU plus Ethernet header and one VLAN tag.
        let tx_slot = mtu + ETH_HLEN + VLAN_HLEN;
        let batch = opts.tx_batch;
        let fd = Arc::new(fd);
        Ok(AfPacket {
            rx: AfPacketRx {
                ring,
                fd: Arc::clone(&fd),
                filter_outgoing,
                rx_block: 0,
                rx_left: 0,
                rx_offset: 0,
                held: None,
                stats: IoStats::default(),
                rx_dropped: Cell::new(0),
            },
            tx: AfPacketTx {
                fd,
                mac,
                tx_buf: vec![0; tx_slot * batch].into_boxed_slice(),
                tx_lens: vec![0; batch].into_boxed_slice(),
                tx_msgs: TxMsgs::new(batch),
                tx_slot,
                tx_count: 0,
                tx_error: None,
                stats: IoStats::default(),
            },
            ifname: ifname.to_string(),
            ifindex,
        })
    }

    /// The interface this queue is bound to.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The largest frame [`PacketIo::send`] accepts (MTU + 14 + one tag).
    pub fn max_tx_frame(&self) -> usize {
        self.tx.tx_slot
    }

    /// Whether a received frame is ready without blocking.
    pub fn rx_ready(&self) -> bool {
        self.rx.rx_ready()
    }

    /// Sleeps until frames arrive or `timeout_ms` passes (-1: forever);
    /// returns whether frames are ready. Flush pending TX before sleeping.
    pub fn wait(&self, timeout_ms: i32) -> io::Result<bool> {
        if self.rx_ready() {
            return Ok(true);
        }
        let mut pfd = libc::pollfd {
            fd: self.rx.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd, exclusively borrowed for the call.
        match cvt(unsafe { libc::poll(&mut pfd, 1, timeout_ms) }) {
            Ok(_) => Ok(self.rx_ready() || pfd.revents & libc::POLLIN != 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The receiving and the sending half, for a worker that processes
    /// frames in place in the ring and sends them on any port.
    pub fn split(self) -> (AfPacketRx, AfPacketTx) {
        (self.rx, self.tx)
    }
}

impl PacketIo for AfPacket {
    fn poll_fd(&self) -> Option<RawFd> {
        self.rx.poll_fd()
    }

    fn recv_burst(&mut self, max: usize, f: &mut dyn FnMut(&mut [u8], RxMeta)) -> usize {
        const CHUNK: usize = 64;
        let mut seen = 0;
        while seen < max {
            let mut slots: [Slot<'_>; CHUNK] = std::array::from_fn(|_| Slot::Empty);
            let mut meta = [RxMeta::default(); CHUNK];
            let want = (max - seen).min(CHUNK);
            let n = self.rx.rx_burst(&mut slots[..want], &mut meta[..want]);
            for (slot, m) in slots[..n].iter_mut().zip(meta) {
                f(slot.data_mut(), m);
            }
            seen += n;
            if n == 0 {
                break;
            }
        }
        self.rx.rx_done();
        seen
    }

    fn send(&mut self, frame: &[u8]) -> bool {
        self.tx.send(frame)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tx.flush()
    }

    fn mac(&self) -> [u8; 6] {
        self.tx.mac
    }

    fn stats(&self) -> IoStats {
        IoStats::merged(RxQueue::stats(&self.rx), self.tx.stats)
    }
}
