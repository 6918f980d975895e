//! A worker's RX and TX queue of a port.

use std::fmt;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::port::PortInner;
use super::*;
use crate::io::{IoStats, PacketIo, RxMeta};

/// One RX and one TX queue of a [`DpdkPort`], owned by one worker.
///
/// [`PacketIo::send`] copies the frame into a fresh mbuf and batches it;
/// [`PacketIo::flush`] (or a full batch) hands the batch to the PMD. For
/// zero-copy forwarding, [`DpdkQueue::recv_burst_mbufs`] hands out the
/// received mbufs themselves and [`DpdkQueue::send_mbuf`] batches one (of
/// any port) for TX.
pub struct DpdkQueue {
    port: Arc<PortInner>,
    queue: u16,
    pool: Mempool,
    /// Owned mbufs waiting for `flush`.
    tx: Vec<Mbuf>,
    tx_batch: usize,
    tx_retries: u32,
    stats: IoStats,
}

impl fmt::Debug for DpdkQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpdkQueue")
            .field("port_id", &self.port.port_id)
            .field("queue", &self.queue)
            .field("pending_tx", &self.tx.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Drop for DpdkQueue {
    fn drop(&mut self) {
        // Pending frames are freed with `tx` (each Mbuf frees itself).
        self.port.taken[usize::from(self.queue)].store(false, Ordering::Release);
    }
}

impl DpdkQueue {
    /// The handle of `queue`, which the caller has marked taken.
    pub(super) fn new(port: Arc<PortInner>, queue: u16) -> DpdkQueue {
        DpdkQueue {
            pool: port.pool.clone(),
            tx: Vec::with_capacity(MAX_BURST),
            tx_batch: port.tx_batch,
            tx_retries: port.tx_retries,
            stats: IoStats::default(),
            port,
            queue,
        }
    }

    pub fn port_id(&self) -> u16 {
        self.port.port_id
    }

    pub fn queue_id(&self) -> u16 {
        self.queue
    }

    /// The pool this queue's TX copies come from.
    pub fn mempool(&self) -> &Mempool {
        &self.pool
    }

    /// Receives up to `max` (at most [`MAX_BURST`]) frames into `burst`,
    /// which must be all `None`; returns how many arrived.
    fn rx_into(&mut self, max: usize, burst: &mut [Option<Mbuf>; MAX_BURST]) -> usize {
        let max = max.min(MAX_BURST);
        let max = u16::try_from(max).expect("MAX_BURST fits u16");
        // SAFETY: `Option<Mbuf>` has the layout of `*mut rte_mbuf` (Mbuf is
        // a repr(transparent) NonNull, and None is NULL), so `burst` is an
        // array of MAX_BURST >= max writable mbuf pointers. The PMD writes
        // the first `n` with mbufs whose ownership it hands to us, so each
        // becomes an owning Some(Mbuf). This queue is used by one thread
        // only (one DpdkQueue per queue id, `&mut self`), and the port is
        // started (PortInner, held, stops it only on drop).
        let n = unsafe {
            sys::lb_rte_eth_rx_burst(
                self.port.port_id,
                self.queue,
                burst.as_mut_ptr().cast::<*mut sys::rte_mbuf>(),
                max,
            )
        };
        let n = usize::from(n);
        self.stats.rx_packets += n as u64;
        n
    }

    /// Like [`PacketIo::recv_burst`], but hands over each received mbuf
    /// itself, for zero-copy forwarding with [`DpdkQueue::send_mbuf`] (on
    /// any queue of any port). Mbufs `f` drops are freed.
    pub fn recv_burst_mbufs(&mut self, max: usize, f: &mut dyn FnMut(Mbuf, RxMeta)) -> usize {
        let mut burst: [Option<Mbuf>; MAX_BURST] = [const { None }; MAX_BURST];
        let n = self.rx_into(max, &mut burst);
        for m in burst[..n].iter_mut().filter_map(Option::take) {
            self.stats.rx_bytes += m.pkt_len() as u64;
            let meta = m.rx_meta();
            f(m, meta);
        }
        n
    }

    /// Batches `m` for TX (flushing first when the batch is full); the PMD
    /// frees it once sent. Returns false if it was dropped.
    pub fn send_mbuf(&mut self, m: Mbuf) -> bool {
        if self.tx.len() >= self.tx_batch {
            self.flush_batch();
        }
        if self.tx.len() >= self.tx_batch {
            // Still full: the TX ring is stuck; m is freed here.
            self.stats.tx_dropped += 1;
            return false;
        }
        self.tx.push(m);
        true
    }

    /// Hands the batch to the PMD, retrying a bounded number of times while
    /// its ring is full; what still did not go is freed and counted as
    /// dropped.
    fn flush_batch(&mut self) {
        let mut tries = 0;
        while !self.tx.is_empty() {
            let len = u16::try_from(self.tx.len()).expect("batch is at most MAX_BURST");
            // SAFETY: `tx` holds `len` owned mbufs laid out as `*mut
            // rte_mbuf` (Mbuf is a repr(transparent) NonNull). The PMD
            // takes ownership of the first `n` it returns and only reads
            // the array. One thread uses this queue (`&mut self`), and
            // the port is started (held PortInner).
            let n = unsafe {
                sys::lb_rte_eth_tx_burst(
                    self.port.port_id,
                    self.queue,
                    self.tx.as_mut_ptr().cast::<*mut sys::rte_mbuf>(),
                    len,
                )
            };
            let n = usize::from(n);
            for m in self.tx.drain(..n) {
                self.stats.tx_packets += 1;
                self.stats.tx_bytes += m.pkt_len() as u64;
                // Now the PMD's: forget without freeing.
                let _ = m.into_raw();
            }
            if n == 0 {
                tries += 1;
                if tries > self.tx_retries {
                    break;
                }
            }
        }
        self.stats.tx_dropped += self.tx.len() as u64;
        self.tx.clear();
    }
}

impl PacketIo for DpdkQueue {
    fn recv_burst(&mut self, max: usize, f: &mut dyn FnMut(&mut [u8], RxMeta)) -> usize {
        let mut burst: [Option<Mbuf>; MAX_BURST] = [const { None }; MAX_BURST];
        let n = self.rx_into(max, &mut burst);
        for slot in &mut burst[..n] {
            if let Some(m) = slot.as_mut() {
                self.stats.rx_bytes += m.pkt_len() as u64;
                let meta = m.rx_meta();
                f(m.data_mut(), meta);
            }
            // Freed as soon as it has been seen, keeping the pool warm.
            *slot = None;
        }
        n
    }

    fn send(&mut self, frame: &[u8]) -> bool {
        let Some(mut m) = self.pool.alloc() else {
            self.stats.tx_dropped += 1;
            return false;
        };
        match m.append(frame.len()) {
            Some(buf) => buf.copy_from_slice(frame),
            None => {
                // Larger than one buffer: we do not build chained mbufs.
                self.stats.tx_dropped += 1;
                return false;
            }
        }
        self.send_mbuf(m)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_batch();
        Ok(())
    }

    fn mac(&self) -> [u8; 6] {
        self.port.mac
    }

    /// This queue's counters. `rx_dropped` is port-wide (`imissed` plus
    /// `rx_nombuf`: the hardware does not say which queue missed) and is
    /// reported by queue 0 only, so summing the queues counts it once.
    fn stats(&self) -> IoStats {
        let mut stats = self.stats;
        if self.queue == 0 {
            match self.port.eth_stats() {
                Ok(eth) => stats.rx_dropped = eth.imissed + eth.rx_nombuf,
                Err(e) => tracing::debug!("port {}: {e}", self.port.port_id),
            }
        }
        stats
    }
}
