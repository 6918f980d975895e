//! The sending half: frames copied into a batch sent with one `sendmmsg`.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use super::ring::ETH_HLEN;
use crate::io::{IoStats, TxQueue};

/// The `sendmmsg` message and iovec arrays. Their pointers are scratch:
/// rebuilt before every call from the current batch buffer.
pub(super) struct TxMsgs {
    pub(super) msgs: Box<[libc::mmsghdr]>,
    pub(super) iovs: Box<[libc::iovec]>,
}

// SAFETY: the raw pointers inside are rewritten before each use and point
// only into buffers owned by the same `AfPacket`; nothing is thread-bound.
unsafe impl Send for TxMsgs {}

impl TxMsgs {
    pub(super) fn new(n: usize) -> TxMsgs {
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

/// The sending half of an [`AfPacket`]: frames are copied into a batch
/// sent with one `sendmmsg`.
pub struct AfPacketTx {
    pub(super) fd: Arc<OwnedFd>,
    pub(super) mac: [u8; 6],
    pub(super) tx_buf: Box<[u8]>,
    pub(super) tx_lens: Box<[usize]>,
    pub(super) tx_msgs: TxMsgs,
    pub(super) tx_slot: usize,
    pub(super) tx_count: usize,
    /// A send error met by a flush that send() started, for flush() to report.
    pub(super) tx_error: Option<io::Error>,
    pub(super) stats: IoStats,
}

impl fmt::Debug for AfPacketTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AfPacketTx")
            .field("fd", &self.fd.as_raw_fd())
            .field("tx_batch", &self.tx_lens.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl AfPacketTx {
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

impl TxQueue for AfPacketTx {
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
        self.stats
    }
}
