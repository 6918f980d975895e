//! A worker's RX and TX queue of a port.

use std::fmt;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::port::PortInner;
use super::*;
use crate::io::{Buf, IoStats, PacketIo, RxMeta, RxQueue, Slot, TxQueue};

/// Queue `queue` of a port, taken by one handle; free again when both
/// halves are gone.
struct Claim {
    port: Arc<PortInner>,
    queue: u16,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.port.taken[usize::from(self.queue)].store(false, Ordering::Release);
    }
}

/// One RX and one TX queue of a [`DpdkPort`], owned by one worker.
///
/// [`PacketIo::send`] copies the frame into a fresh mbuf and batches it;
/// [`PacketIo::flush`] (or a full batch) hands the batch to the PMD. For
/// zero-copy forwarding, [`DpdkQueue::recv_burst_mbufs`] hands out the
/// received mbufs themselves and [`DpdkQueue::send_mbuf`] batches one (of
/// any port) for TX; [`DpdkQueue::split`] gives the halves the workers
/// use ([`RxQueue`], [`TxQueue`]).
pub struct DpdkQueue {
    rx: DpdkRx,
    tx: DpdkTx,
}

/// The receiving half of a [`DpdkQueue`]: bursts of the received mbufs
/// themselves.
pub struct DpdkRx {
    claim: Arc<Claim>,
    stats: IoStats,
}

/// The sending half of a [`DpdkQueue`]: mbufs of any port are sent as
/// they are; frames given as bytes are copied into a fresh mbuf.
pub struct DpdkTx {
    claim: Arc<Claim>,
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
            .field("rx", &self.rx)
            .field("tx", &self.tx)
            .finish()
    }
}

impl fmt::Debug for DpdkRx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpdkRx")
            .field("port_id", &self.claim.port.port_id)
            .field("queue", &self.claim.queue)
            .field("stats", &self.stats)
            .finish()
    }
}

impl fmt::Debug for DpdkTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpdkTx")
            .field("port_id", &self.claim.port.port_id)
            .field("queue", &self.claim.queue)
            .field("pending_tx", &self.tx.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl DpdkQueue {
    /// The handle of `queue`, which the caller has marked taken.
    pub(super) fn new(port: Arc<PortInner>, queue: u16) -> DpdkQueue {
        let pool = port.pool.clone();
        let (tx_batch, tx_retries) = (port.tx_batch, port.tx_retries);
        let claim = Arc::new(Claim { port, queue });
        DpdkQueue {
            rx: DpdkRx {
                claim: Arc::clone(&claim),
                stats: IoStats::default(),
            },
            tx: DpdkTx {
                claim,
                pool,
                tx: Vec::with_capacity(MAX_BURST),
                tx_batch,
                tx_retries,
                stats: IoStats::default(),
            },
        }
    }

    /// The receiving and the sending half, for a worker that moves mbufs
    /// from one port's RX to any port's TX.
    pub fn split(self) -> (DpdkRx, DpdkTx) {
        (self.rx, self.tx)
    }

    pub fn port_id(&self) -> u16 {
        self.rx.claim.port.port_id
    }

    pub fn queue_id(&self) -> u16 {
        self.rx.claim.queue
    }

    /// The pool this queue's TX copies come from.
    pub fn mempool(&self) -> &Mempool {
        &self.tx.pool
    }

    /// Like [`PacketIo::recv_burst`], but hands over each received mbuf
    /// itself, for zero-copy forwarding with [`DpdkQueue::send_mbuf`] (on
    /// any queue of any port). Mbufs `f` drops are freed.
    pub fn recv_burst_mbufs(&mut self, max: usize, f: &mut dyn FnMut(Mbuf, RxMeta)) -> usize {
        let mut burst: [Option<Mbuf>; MAX_BURST] = [const { None }; MAX_BURST];
        let n = self.rx.rx_into(max, &mut burst);
        for m in burst[..n].iter_mut().filter_map(Option::take) {
            let meta = m.rx_meta();
            f(m, meta);
        }
        n
    }

    /// Batches `m` for TX (flushing first when the batch is full); the PMD
    /// frees it once sent. Returns false if it was dropped.
    pub fn send_mbuf(&mut self, m: Mbuf) -> bool {
        self.tx.send_mbuf(m)
    }
}

impl DpdkRx {
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
        // only (one handle per queue id, `&mut self`), and the port is
        // started (PortInner, held, stops it only on drop).
        let n = unsafe {
            sys::lb_rte_eth_rx_burst(
                self.claim.port.port_id,
                self.claim.queue,
                burst.as_mut_ptr().cast::<*mut sys::rte_mbuf>(),
                max,
            )
        };
        let n = usize::from(n);
        self.stats.rx_packets += n as u64;
        for m in burst[..n].iter().flatten() {
            self.stats.rx_bytes += m.pkt_len() as u64;
        }
        n
    }
}

impl RxQueue for DpdkRx {
    fn rx_burst<'a>(&'a mut self, slots: &mut [Slot<'a>], meta: &mut [RxMeta]) -> usize {
        let mut burst: [Option<Mbuf>; MAX_BURST] = [const { None }; MAX_BURST];
        let n = self.rx_into(slots.len().min(meta.len()), &mut burst);
        for ((slot, m), mbuf) in slots.iter_mut().zip(meta.iter_mut()).zip(&mut burst[..n]) {
            if let Some(mbuf) = mbuf.take() {
                *m = mbuf.rx_meta();
                *slot = Slot::Owned(Buf::Mbuf(mbuf));
            }
        }
        n
    }

    /// This queue's counters. `rx_dropped` is port-wide (`imissed` plus
    /// `rx_nombuf`: the hardware does not say which queue missed) and is
    /// reported by queue 0 only, so summing the queues counts it once.
    fn stats(&self) -> IoStats {
        let mut stats = self.stats;
        if self.claim.queue == 0 {
            match self.claim.port.eth_stats() {
                Ok(eth) => stats.rx_dropped = eth.imissed + eth.rx_nombuf,
                Err(e) => tracing::debug!("port {}: {e}", self.claim.port.port_id),
            }
        }
        stats
    }
}

impl DpdkTx {
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
                    self.claim.port.port_id,
                    self.claim.queue,
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

impl TxQueue for DpdkTx {
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

    fn send_buf(&mut self, buf: Buf) -> bool {
        match buf {
            Buf::Mbuf(m) => self.send_mbuf(m),
            other => self.send(other.data()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_batch();
        Ok(())
    }

    fn mac(&self) -> [u8; 6] {
        self.claim.port.mac
    }

    fn stats(&self) -> IoStats {
        self.stats
    }
}

impl PacketIo for DpdkQueue {
    fn recv_burst(&mut self, max: usize, f: &mut dyn FnMut(&mut [u8], RxMeta)) -> usize {
        let mut burst: [Option<Mbuf>; MAX_BURST] = [const { None }; MAX_BURST];
        let n = self.rx.rx_into(max, &mut burst);
        for slot in &mut burst[..n] {
            if let Some(m) = slot.as_mut() {
                let meta = m.rx_meta();
                f(m.data_mut(), meta);
            }
            // Freed as soon as it has been seen, keeping the pool warm.
            *slot = None;
        }
        n
    }

    fn send(&mut self, frame: &[u8]) -> bool {
        self.tx.send(frame)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tx.flush()
    }

    fn mac(&self) -> [u8; 6] {
        self.tx.mac()
    }

    /// This queue's counters; see [`DpdkRx`]'s for `rx_dropped`.
    fn stats(&self) -> IoStats {
        IoStats::merged(self.rx.stats(), self.tx.stats())
    }
}
