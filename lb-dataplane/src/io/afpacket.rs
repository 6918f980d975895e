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
//! Ring memory is touched through `Ring` only: it is the one place that makes
//! Rust references over the mapping, and everything after it is safe,
//! bounds-checked slice code.
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
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{IoStats, PacketIo, RxMeta};

/// Ethernet header length (destination, source, EtherType).
const ETH_HLEN: usize = 14;
/// Length of one 802.1Q / 802.1ad tag.
const VLAN_HLEN: usize = 4;
/// Offset of the EtherType (or of the first tag) in an Ethernet frame.
const ETH_ADDRS_LEN: usize = 12;
/// `sendmmsg` refuses more messages than this (`UIO_MAXIOV`).
const MAX_TX_BATCH: usize = 1024;

// Block descriptor layout (`struct tpacket_block_desc`, `tpacket_hdr_v1`).
const BLOCK_HDR: usize = offset_of!(libc::tpacket_block_desc, hdr);
const BLOCK_STATUS: usize = BLOCK_HDR + offset_of!(libc::tpacket_hdr_v1, block_status);
const BLOCK_NUM_PKTS: usize = BLOCK_HDR + offset_of!(libc::tpacket_hdr_v1, num_pkts);
const BLOCK_FIRST_PKT: usize = BLOCK_HDR + offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt);
/// User slices over a block start right after its status word: the kernel
/// may read that word at any time (to see whether the block is free), so it
/// is only ever accessed as an atomic, never through a slice.
const BODY_START: usize = BLOCK_STATUS + size_of::<u32>();

// Frame header layout (`struct tpacket3_hdr`, followed by a `sockaddr_ll`).
const TP_NEXT_OFFSET: usize = offset_of!(libc::tpacket3_hdr, tp_next_offset);
const TP_SNAPLEN: usize = offset_of!(libc::tpacket3_hdr, tp_snaplen);
const TP_LEN: usize = offset_of!(libc::tpacket3_hdr, tp_len);
const TP_STATUS: usize = offset_of!(libc::tpacket3_hdr, tp_status);
const TP_MAC: usize = offset_of!(libc::tpacket3_hdr, tp_mac);
const TP_VLAN_TCI: usize =
    offset_of!(libc::tpacket3_hdr, hv1) + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tci);
const TP_VLAN_TPID: usize =
    offset_of!(libc::tpacket3_hdr, hv1) + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tpid);
/// `TPACKET_ALIGN(sizeof(struct tpacket3_hdr))`: where the kernel puts the
/// frame's `sockaddr_ll`.
const TP_SLL: usize = align16(size_of::<libc::tpacket3_hdr>());
const TP_PKTTYPE: usize = TP_SLL + offset_of!(libc::sockaddr_ll, sll_pkttype);
/// End of the per-frame metadata; bytes between it and `tp_mac` are free.
const TP_META_END: usize = TP_SLL + size_of::<libc::sockaddr_ll>();

const fn align16(x: usize) -> usize {
    (x + libc::TPACKET_ALIGNMENT - 1) & !(libc::TPACKET_ALIGNMENT - 1)
}

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

/// The ring geometry and retire timeout, checked and converted for the kernel.
fn ring_request(opts: &AfPacketOpts) -> io::Result<libc::tpacket_req3> {
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

fn page_size() -> usize {
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
struct Ring {
    base: NonNull<u8>,
    block_size: usize,
    block_count: usize,
}

// SAFETY: the mapping is owned exclusively by this value and is not tied to
// the thread that created it; all access goes through `&self`/`&mut self`.
unsafe impl Send for Ring {}

impl Ring {
    /// Maps the RX ring configured on `fd` by `PACKET_RX_RING`.
    fn map(fd: RawFd, req: &libc::tpacket_req3) -> io::Result<Ring> {
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
    fn status(&self, block: usize) -> &AtomicU32 {
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
    fn user_block(&mut self, block: usize) -> Option<&mut [u8]> {
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
    fn release(&mut self, block: usize) {
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

/// The `sendmmsg` message and iovec arrays. Their pointers are scratch:
/// rebuilt before every call from the current batch buffer.
struct TxMsgs {
    msgs: Box<[libc::mmsghdr]>,
    iovs: Box<[libc::iovec]>,
}

// SAFETY: the raw pointers inside are rewritten before each use and point
// only into buffers owned by the same `AfPacket`; nothing is thread-bound.
unsafe impl Send for TxMsgs {}

impl TxMsgs {
    fn new(n: usize) -> TxMsgs {
        // SAFETY: mmsghdr and iovec are plain C structs of integers and raw
        // pointers, for which all-zero bytes are a valid value.
        let (msg, iov) = unsafe {
            (
                std::mem::zeroed::<libc::mmsghdr>(),
                std::mem::zeroed::<libc::iovec>(),
            )
        };
        TxMsgs {
            msgs: vec![msg; n].into_boxed_slice(),
            iovs: vec![iov; n].into_boxed_slice(),
        }
    }
}

/// A frame header read from a user-owned block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameHdr {
    next_offset: usize,
    snaplen: usize,
    len: usize,
    status: u32,
    mac: usize,
    vlan_tci: u16,
    vlan_tpid: u16,
    pkttype: u8,
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    let bytes = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes(bytes.try_into().ok()?))
}

/// Reads the frame header at block offset `off` from a block body (see
/// [`Ring::user_block`]); None if it or its data fall outside the block.
fn frame_hdr(body: &[u8], off: usize) -> Option<FrameHdr> {
    let at = off.checked_sub(BODY_START)?;
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
fn stripped_tag(hdr: &FrameHdr) -> Option<(u16, u16)> {
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
/// is no room (the caller then copies).
fn reinsert_tag_in_place(
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

/// Writes `frame` with `tag` inserted after the addresses into `scratch`;
/// returns the new length, or None if `scratch` is too small.
fn reinsert_tag_copy(frame: &[u8], tag: (u16, u16), scratch: &mut [u8]) -> Option<usize> {
    let (addrs, rest) = frame.split_at_checked(ETH_ADDRS_LEN)?;
    let out = scratch.get_mut(..frame.len() + VLAN_HLEN)?;
    out[..ETH_ADDRS_LEN].copy_from_slice(addrs);
    out[ETH_ADDRS_LEN..ETH_ADDRS_LEN + 2].copy_from_slice(&tag.0.to_be_bytes());
    out[ETH_ADDRS_LEN + 2..ETH_ADDRS_LEN + 4].copy_from_slice(&tag.1.to_be_bytes());
    out[ETH_ADDRS_LEN + VLAN_HLEN..].copy_from_slice(rest);
    Some(out.len())
}

/// One RX and TX queue of an interface over an AF_PACKET socket.
pub struct AfPacket {
    ring: Ring,
    /// Declared after `ring`: the mapping is removed before the socket closes.
    fd: OwnedFd,
    ifname: String,
    ifindex: i32,
    mac: [u8; 6],
    /// Set when the kernel lacks PACKET_IGNORE_OUTGOING: our own TX is then
    /// read back and filtered by `sll_pkttype`.
    filter_outgoing: bool,

    /// Block being read, frames of it not yet handed out, offset of the next.
    rx_block: usize,
    rx_left: u32,
    rx_offset: usize,
    /// For VLAN frames that cannot be rebuilt in the ring.
    rx_scratch: Box<[u8]>,

    tx_buf: Box<[u8]>,
    tx_lens: Box<[usize]>,
    tx_msgs: TxMsgs,
    tx_slot: usize,
    tx_count: usize,
    /// A send error met by a flush that send() started, for flush() to report.
    tx_error: Option<io::Error>,

    stats: IoStats,
    /// Kernel drops read so far (PACKET_STATISTICS resets on each read).
    rx_dropped: Cell<u64>,
}

const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<AfPacket>();
};

impl fmt::Debug for AfPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AfPacket")
            .field("ifname", &self.ifname)
            .field("ifindex", &self.ifindex)
            .field("fd", &self.fd.as_raw_fd())
            .field("block_size", &self.ring.block_size)
            .field("block_count", &self.ring.block_count)
            .field("tx_batch", &self.tx_lens.len())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn setsockopt<T: Copy>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(size_of::<T>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `value` points to `len` readable bytes for the whole call; the
    // kernel only reads them.
    cvt(unsafe { libc::setsockopt(fd, level, name, (value as *const T).cast(), len) }).map(drop)
}

/// An `ifreq` for interface `name`, or InvalidInput if it cannot be one.
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is a C struct of byte arrays and a union of integers,
    // sockaddrs and a raw pointer: all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() || name.bytes().any(|b| b == 0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// The Ethernet address of `ifname`, asked through socket `fd`.
pub(crate) fn interface_mac(fd: RawFd, ifname: &str) -> io::Result<[u8; 6]> {
    let mut hw = ifreq(ifname)?;
    ioctl_ifreq(fd, libc::SIOCGIFHWADDR, &mut hw)?;
    // SAFETY: SIOCGIFHWADDR succeeded, so `ifru_hwaddr` is the member the
    // kernel wrote.
    let sa_data = unsafe { hw.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(sa_data.iter()) {
        *dst = *src as u8;
    }
    Ok(mac)
}

fn ioctl_ifreq(fd: RawFd, request: libc::Ioctl, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: SIOCGIF* requests read the name from and write one union
    // member of the `ifreq` we pass, which is valid and exclusively borrowed.
    cvt(unsafe { libc::ioctl(fd, request, req as *mut libc::ifreq) }).map(drop)
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
        Ok(AfPacket {
            rx_scratch: vec![0; ring.block_size + VLAN_HLEN].into_boxed_slice(),
            ring,
            fd,
            ifname: ifname.to_string(),
            ifindex,
            mac,
            filter_outgoing,
            rx_block: 0,
            rx_left: 0,
            rx_offset: 0,
            tx_buf: vec![0; tx_slot * batch].into_boxed_slice(),
            tx_lens: vec![0; batch].into_boxed_slice(),
            tx_msgs: TxMsgs::new(batch),
            tx_slot,
            tx_count: 0,
            tx_error: None,
            stats: IoStats::default(),
            rx_dropped: Cell::new(0),
        })
    }

    /// The interface this queue is bound to.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The largest frame [`PacketIo::send`] accepts (MTU + 14 + one tag).
    pub fn max_tx_frame(&self) -> usize {
        self.tx_slot
    }

    /// Whether a received frame is ready without blocking.
    pub fn rx_ready(&self) -> bool {
        self.ring.status(self.rx_block).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0
    }

    /// Sleeps until frames arrive or `timeout_ms` passes (-1: forever);
    /// returns whether frames are ready. Flush pending TX before sleeping.
    pub fn wait(&self, timeout_ms: i32) -> io::Result<bool> {
        if self.rx_ready() {
            return Ok(true);
        }
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
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

    /// Adds the kernel's drop count since the last read to `rx_dropped`.
    fn read_kernel_drops(&self) {
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
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats_v3).cast(),
                &mut len,
            )
        };
        if ret == 0 {
            self.rx_dropped
                .set(self.rx_dropped.get() + u64::from(st.tp_drops));
        }
    }

    /// Gives the current block back and moves to the next one.
    fn next_block(&mut self) {
        self.ring.release(self.rx_block);
        self.rx_left = 0;
        self.rx_block += 1;
        if self.rx_block == self.ring.block_count {
            self.rx_block = 0;
            // Once per ring turn: cheap, and keeps the kernel's u32 from wrapping.
            self.read_kernel_drops();
        }
    }

    /// Sends the queued batch; returns whether its last frame went out and
    /// the first hard error. EAGAIN/ENOBUFS drop the rest of the batch.
    fn flush_batch(&mut self) -> (bool, Option<io::Error>) {
        let n = self.tx_count;
        self.tx_count = 0;
        if n == 0 {
            return (true, None);
        }
        let TxMsgs { msgs, iovs } = &mut self.tx_msgs;
        for (i, ((msg, iov), chunk)) in msgs
            .iter_mut()
            .zip(iovs.iter_mut())
            .zip(self.tx_buf.chunks_exact_mut(self.tx_slot))
            .take(n)
            .enumerate()
        {
            iov.iov_base = chunk.as_mut_ptr().cast();
            iov.iov_len = self.tx_lens[i];
            // The socket is bound: no destination address needed.
            msg.msg_hdr.msg_iov = iov;
            msg.msg_hdr.msg_iovlen = 1;
            msg.msg_len = 0;
        }
        let mut sent = 0;
        let mut last_ok = false;
        let mut first_err = None;
        while sent < n {
            let rest = &mut msgs[sent..n];
            // SAFETY: `rest` holds `n - sent` (<= 1024) initialized mmsghdrs,
            // each with one iovec pointing at a tx_buf slot of its length;
            // the buffers are exclusively borrowed and outlive the call.
            let ret = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    rest.as_mut_ptr(),
                    rest.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if ret > 0 {
                let done = ret as usize;
                for len in &self.tx_lens[sent..sent + done] {
                    self.stats.tx_packets += 1;
                    self.stats.tx_bytes += *len as u64;
                }
                sent += done;
                last_ok = sent == n;
                continue;
            }
            let err = if ret == 0 {
                // Nothing taken and no error: treat as a full queue.
                io::Error::from(io::ErrorKind::WouldBlock)
            } else {
                io::Error::last_os_error()
            };
            match err.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN | libc::ENOBUFS) | None => {
                    self.stats.tx_dropped += (n - sent) as u64;
                    break;
                }
                // This frame is refused (e.g. too big for the device): drop
                // it alone and go on with the rest.
                Some(_) => {
                    self.stats.tx_dropped += 1;
                    sent += 1;
                    first_err.get_or_insert(err);
                }
            }
        }
        (last_ok, first_err)
    }
}

impl PacketIo for AfPacket {
    fn poll_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }

    fn recv_burst(&mut self, max: usize, f: &mut dyn FnMut(&mut [u8], RxMeta)) -> usize {
        let mut seen = 0;
        let mut examined = 0;
        // Empty or malformed blocks cost a step too: bounded by the ring.
        let mut empty_blocks = 0;
        while examined < max && empty_blocks <= self.ring.block_count {
            let Some(body) = self.ring.user_block(self.rx_block) else {
                break;
            };
            if self.rx_left == 0 {
                let num = read_u32(body, BLOCK_NUM_PKTS - BODY_START).unwrap_or(0);
                let first = read_u32(body, BLOCK_FIRST_PKT - BODY_START).unwrap_or(0) as usize;
                if num == 0 {
                    empty_blocks += 1;
                    self.next_block();
                    continue;
                }
                self.rx_left = num;
                self.rx_offset = first;
            }
            let Some(hdr) = frame_hdr(body, self.rx_offset) else {
                // The kernel never writes this; skip the block rather than
                // trust its remaining offsets, and count what is lost.
                let lost = u64::from(self.rx_left);
                self.rx_dropped.set(self.rx_dropped.get() + lost);
                empty_blocks += 1;
                self.next_block();
                continue;
            };
            examined += 1;
            let at = self.rx_offset - BODY_START;
            let own_tx = self.filter_outgoing && hdr.pkttype == libc::PACKET_OUTGOING;
            if !own_tx {
                let meta = RxMeta {
                    csum_partial: hdr.status & libc::TP_STATUS_CSUMNOTREADY != 0,
                    truncated: hdr.snaplen < hdr.len,
                };
                let mut wire_len = hdr.len;
                match stripped_tag(&hdr) {
                    None => f(&mut body[at + hdr.mac..at + hdr.mac + hdr.snaplen], meta),
                    Some(tag) => {
                        wire_len += VLAN_HLEN;
                        if let Some((start, end)) = reinsert_tag_in_place(body, at, &hdr, tag) {
                            f(&mut body[start..end], meta);
                        } else {
                            let frame = &body[at + hdr.mac..at + hdr.mac + hdr.snaplen];
                            match reinsert_tag_copy(frame, tag, &mut self.rx_scratch) {
                                Some(len) => f(&mut self.rx_scratch[..len], meta),
                                // Shorter than two addresses: hand it as is.
                                None => {
                                    f(&mut body[at + hdr.mac..at + hdr.mac + hdr.snaplen], meta)
                                }
                            }
                        }
                    }
                }
                seen += 1;
                self.stats.rx_packets += 1;
                self.stats.rx_bytes += wire_len as u64;
            }
            self.rx_left -= 1;
            self.rx_offset += hdr.next_offset;
            if self.rx_left == 0 {
                self.next_block();
            }
        }
        seen
    }

    fn send(&mut self, frame: &[u8]) -> bool {
        if frame.len() < ETH_HLEN || frame.len() > self.tx_slot {
            self.stats.tx_dropped += 1;
            return false;
        }
        let i = self.tx_count;
        let start = i * self.tx_slot;
        self.tx_buf[start..start + frame.len()].copy_from_slice(frame);
        self.tx_lens[i] = frame.len();
        self.tx_count += 1;
        if self.tx_count == self.tx_lens.len() {
            let (last_ok, err) = self.flush_batch();
            if let Some(e) = err {
                // Counted in tx_dropped already; the next flush() reports it.
                self.tx_error.get_or_insert(e);
            }
            return last_ok;
        }
        true
    }

    fn flush(&mut self) -> io::Result<()> {
        let err = self.flush_batch().1;
        match self.tx_error.take().or(err) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn stats(&self) -> IoStats {
        self.read_kernel_drops();
        IoStats {
            rx_dropped: self.rx_dropped.get(),
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake block body with one frame at block offset `off`.
    fn fake_frame(
        off: usize,
        mac: usize,
        data: &[u8],
        status: u32,
        tci: u16,
        tpid: u16,
    ) -> Vec<u8> {
        let mut body = vec![0u8; 4096 - BODY_START];
        let at = off - BODY_START;
        let put32 =
            |b: &mut Vec<u8>, o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_ne_bytes());
        put32(&mut body, at + TP_NEXT_OFFSET, 0);
        put32(&mut body, at + TP_SNAPLEN, data.len() as u32);
        put32(&mut body, at + TP_LEN, data.len() as u32);
        put32(&mut body, at + TP_STATUS, status);
        body[at + TP_MAC..at + TP_MAC + 2].copy_from_slice(&(mac as u16).to_ne_bytes());
        put32(&mut body, at + TP_VLAN_TCI, u32::from(tci));
        body[at + TP_VLAN_TPID..at + TP_VLAN_TPID + 2].copy_from_slice(&tpid.to_ne_bytes());
        body[at + mac..at + mac + data.len()].copy_from_slice(data);
        body
    }

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn layout_matches_the_kernel_headers() {
        // linux/if_packet.h, x86_64 and aarch64 alike.
        assert_eq!(BLOCK_STATUS, 8);
        assert_eq!(BLOCK_NUM_PKTS, 12);
        assert_eq!(BLOCK_FIRST_PKT, 16);
        assert_eq!(TP_MAC, 24);
        assert_eq!(TP_VLAN_TCI, 32);
        assert_eq!(TP_VLAN_TPID, 36);
        assert_eq!(TP_SLL, 48);
        assert_eq!(TP_META_END, libc::TPACKET3_HDRLEN);
    }

    #[test]
    fn frame_header_is_bounds_checked() {
        let data = eth(0x0800, &[0xab; 50]);
        let body = fake_frame(48, 82, &data, libc::TP_STATUS_USER, 0, 0);
        let hdr = frame_hdr(&body, 48).expect("valid frame");
        assert_eq!((hdr.snaplen, hdr.mac), (data.len(), 82));
        assert!(frame_hdr(&body, 4).is_none(), "inside the block header");
        assert!(frame_hdr(&body, body.len()).is_none(), "past the end");
        let mut bad = body.clone();
        bad[48 - BODY_START + TP_SNAPLEN..][..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(frame_hdr(&bad, 48).is_none(), "data past the end");
    }

    #[test]
    fn vlan_tag_is_put_back_in_place_and_by_copy() {
        let inner = eth(0x0800, &[0x45; 46]);
        let data = inner.clone();
        let status =
            libc::TP_STATUS_USER | libc::TP_STATUS_VLAN_VALID | libc::TP_STATUS_VLAN_TPID_VALID;
        let mut body = fake_frame(48, 82, &data, status, 0x2064, 0x88a8);
        let hdr = frame_hdr(&body, 48).expect("valid frame");
        let tag = stripped_tag(&hdr).expect("tag");
        assert_eq!(tag, (0x88a8, 0x2064));
        let mut want = inner[..12].to_vec();
        want.extend_from_slice(&[0x88, 0xa8, 0x20, 0x64]);
        want.extend_from_slice(&inner[12..]);

        let (s, e) = reinsert_tag_in_place(&mut body, 48 - BODY_START, &hdr, tag).expect("room");
        assert_eq!(&body[s..e], &want[..]);

        let mut scratch = vec![0u8; 256];
        let n = reinsert_tag_copy(&data, tag, &mut scratch).expect("fits");
        assert_eq!(&scratch[..n], &want[..]);
        assert!(reinsert_tag_copy(&data, tag, &mut scratch[..20]).is_none());

        // Without TP_STATUS_VLAN_TPID_VALID the tag is 802.1Q.
        let hdr = FrameHdr {
            status: libc::TP_STATUS_VLAN_VALID,
            ..hdr
        };
        assert_eq!(stripped_tag(&hdr), Some((0x8100, 0x2064)));
    }

    #[test]
    fn options_are_checked() {
        assert!(ring_request(&AfPacketOpts::default()).is_ok());
        let bad = [
            AfPacketOpts {
                block_size: 1000,
                ..Default::default()
            },
            AfPacketOpts {
                block_count: 0,
                ..Default::default()
            },
            AfPacketOpts {
                frame_size: 100,
                ..Default::default()
            },
            AfPacketOpts {
                tx_batch: 0,
                ..Default::default()
            },
            AfPacketOpts {
                tx_batch: 5000,
                ..Default::default()
            },
        ];
        for opts in bad {
            assert_eq!(
                ring_request(&opts).map_err(|e| e.kind()).err(),
                Some(io::ErrorKind::InvalidInput),
                "{opts:?}"
            );
        }
    }

    #[test]
    fn open_of_a_missing_interface_fails() {
        let err = AfPacket::open("lb-no-such-if0", &AfPacketOpts::default())
            .expect_err("no such interface");
        assert!(err.to_string().contains("lb-no-such-if0"), "{err}");
    }
}
