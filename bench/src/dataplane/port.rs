//! The generator's ports: an ethdev (a `net_memif` link, or a NIC) with
//! `queues` queue pairs and no RSS. The generator picks the queue of every
//! frame itself, so it needs no RSS from the PMD (memif has none), and it
//! moves raw mbufs: no copy beyond writing each frame once.

use std::ptr;

use anyhow::{bail, Result};
use lb_dataplane::io::dpdk::{sys, Mempool};

/// Most mbufs one RX or TX call handles.
pub const BURST: usize = 64;

/// A raw mbuf pointer, as the PMD hands them out.
pub type RawMbuf = *mut sys::rte_mbuf;

/// One started port; stopped and closed on drop.
#[derive(Debug)]
pub struct Port {
    pub id: u16,
    pub queues: u16,
    pub mac: [u8; 6],
}

fn check(call: &str, ret: i32) -> Result<()> {
    if ret < 0 {
        bail!("{call} failed (error {})", -ret);
    }
    Ok(())
}

impl Port {
    /// Configures and starts port `id` with `queues` RX/TX queue pairs of
    /// 1024 descriptors, RX buffers from `pool`, promiscuous.
    pub fn open(id: u16, queues: u16, pool: &Mempool) -> Result<Port> {
        // SAFETY: plain query on any port id.
        if unsafe { sys::rte_eth_dev_is_valid_port(id) } == 0 {
            bail!("DPDK port {id} does not exist (check the --vdev / -a arguments)");
        }
        let mut conf = sys::rte_eth_conf::default();
        conf.rxmode.mq_mode = sys::RTE_ETH_MQ_RX_NONE;
        // SAFETY: valid, stopped port; `conf` lives across the call.
        check("rte_eth_dev_configure", unsafe {
            sys::rte_eth_dev_configure(id, queues, queues, &conf)
        })?;
        let (mut rx_desc, mut tx_desc) = (1024u16, 1024u16);
        // SAFETY: valid, configured port; both pointers are writable u16s.
        check("rte_eth_dev_adjust_nb_rx_tx_desc", unsafe {
            sys::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut rx_desc, &mut tx_desc)
        })?;
        // SAFETY: plain query on a valid port.
        let socket = unsafe { sys::rte_eth_dev_socket_id(id) } as u32;
        for q in 0..queues {
            // SAFETY: valid, configured port, q < queues; NULL conf means
            // the PMD's defaults; the pool outlives the port (the caller
            // drops the port first).
            check("rte_eth_rx_queue_setup", unsafe {
                sys::rte_eth_rx_queue_setup(id, q, rx_desc, socket, ptr::null(), pool.as_ptr())
            })?;
            // SAFETY: as above, for the TX side.
            check("rte_eth_tx_queue_setup", unsafe {
                sys::rte_eth_tx_queue_setup(id, q, tx_desc, socket, ptr::null())
            })?;
        }
        // SAFETY: valid, configured port. Failure is harmless (memif
        // passes every frame anyway).
        unsafe { sys::rte_eth_promiscuous_enable(id) };
        let mut mac = sys::rte_ether_addr::default();
        // SAFETY: valid port; `mac` is a writable rte_ether_addr.
        check("rte_eth_macaddr_get", unsafe {
            sys::rte_eth_macaddr_get(id, &mut mac)
        })?;
        // SAFETY: valid port with all its queues set up.
        check("rte_eth_dev_start", unsafe { sys::rte_eth_dev_start(id) })?;
        Ok(Port {
            id,
            queues,
            mac: mac.addr_bytes,
        })
    }

    /// Whether the link is up (a memif peer has connected).
    pub fn link_up(&self) -> bool {
        let mut link = sys::rte_eth_link::default();
        // SAFETY: valid port; `link` is a writable rte_eth_link.
        let ret = unsafe { sys::rte_eth_link_get_nowait(self.id, &mut link) };
        ret == 0 && u32::from(link.link_status()) == sys::RTE_ETH_LINK_UP
    }

    /// Receives up to [`BURST`] mbufs of queue `q` into `bufs`; the caller
    /// owns the first `n` returned.
    pub fn rx(&self, q: u16, bufs: &mut [RawMbuf; BURST]) -> usize {
        // SAFETY: the port is started, q < queues, `bufs` holds BURST
        // writable pointers; one thread uses the port.
        usize::from(unsafe {
            sys::lb_rte_eth_rx_burst(self.id, q, bufs.as_mut_ptr(), BURST as u16)
        })
    }

    /// Sends `bufs` (owned mbufs) on queue `q`; frees those the ring did not
    /// take. Returns how many went.
    pub fn tx(&self, q: u16, bufs: &mut [RawMbuf]) -> usize {
        if bufs.is_empty() {
            return 0;
        }
        let len = u16::try_from(bufs.len()).unwrap_or(u16::MAX);
        // SAFETY: as in `rx`; the PMD takes ownership of the first `sent`.
        let sent =
            usize::from(unsafe { sys::lb_rte_eth_tx_burst(self.id, q, bufs.as_mut_ptr(), len) });
        free(&mut bufs[sent..]);
        sent
    }

    /// `(ipackets, opackets, imissed, rx_nombuf)` of the port.
    pub fn counters(&self) -> (u64, u64, u64, u64) {
        let mut s = sys::rte_eth_stats::default();
        // SAFETY: valid port; `s` is a writable rte_eth_stats.
        unsafe { sys::rte_eth_stats_get(self.id, &mut s) };
        (s.ipackets, s.opackets, s.imissed, s.rx_nombuf)
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // SAFETY: no burst call is in flight (one thread owns the port).
        unsafe {
            sys::rte_eth_dev_stop(self.id);
            sys::rte_eth_dev_close(self.id);
        }
    }
}

/// Returns `bufs` (owned mbufs) to their pool.
pub fn free(bufs: &mut [RawMbuf]) {
    if bufs.is_empty() {
        return;
    }
    // SAFETY: every pointer is an mbuf we own; none is used afterwards.
    unsafe { sys::rte_pktmbuf_free_bulk(bufs.as_mut_ptr(), bufs.len() as u32) };
}

/// Takes `bufs.len()` empty mbufs from `pool`, all or none.
pub fn alloc(pool: &Mempool, bufs: &mut [RawMbuf]) -> bool {
    // SAFETY: the pool is live; on success every slot holds a fresh mbuf
    // we own, on failure none was taken.
    unsafe {
        sys::lb_rte_pktmbuf_alloc_bulk(pool.as_ptr(), bufs.as_mut_ptr(), bufs.len() as u32) == 0
    }
}

/// The frame of `m`.
///
/// # Safety
/// `m` is a live, single-segment mbuf the caller owns, and the slice is
/// not used after the mbuf is freed or sent.
pub unsafe fn data<'a>(m: RawMbuf) -> &'a mut [u8] {
    // SAFETY: per the contract, the data area holds data_len bytes.
    unsafe {
        let p = sys::lb_rte_pktmbuf_mtod(m).cast::<u8>();
        std::slice::from_raw_parts_mut(p, usize::from(sys::lb_rte_pktmbuf_data_len(m)))
    }
}

/// Appends `len` bytes to the empty mbuf `m` and returns them.
///
/// # Safety
/// As [`data`].
pub unsafe fn append<'a>(m: RawMbuf, len: usize) -> Option<&'a mut [u8]> {
    let len = u16::try_from(len).ok()?;
    // SAFETY: per the contract; append returns NULL or `len` writable bytes.
    unsafe {
        let p = sys::lb_rte_pktmbuf_append(m, len).cast::<u8>();
        (!p.is_null()).then(|| std::slice::from_raw_parts_mut(p, usize::from(len)))
    }
}
