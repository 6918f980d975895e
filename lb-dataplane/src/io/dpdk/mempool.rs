//! Packet buffer pools.

use std::ffi::{c_int, CString};
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::eal::LEAKED_POOLS;
use super::error::check_ptr;
use super::*;

struct PoolInner {
    raw: NonNull<sys::rte_mempool>,
    name: String,
    data_room: u16,
    _eal: Eal,
}

// SAFETY: a packet mempool is built for concurrent use from any thread
// (multi-producer/multi-consumer ring, per-lcore caches keyed by the
// caller's lcore id); the pointer is never used to reach Rust data.
unsafe impl Send for PoolInner {}
// SAFETY: as above; every operation through `&PoolInner` is thread-safe.
unsafe impl Sync for PoolInner {}

impl Drop for PoolInner {
    fn drop(&mut self) {
        // SAFETY: raw is a live mempool created by rte_pktmbuf_pool_create.
        let in_use = unsafe { sys::rte_mempool_in_use_count(self.raw.as_ptr()) };
        if in_use == 0 {
            // SAFETY: no mbuf of this pool is held anywhere (every Mbuf
            // and port queue holds one, ports hold a pool handle), so
            // nothing will touch its memory again.
            unsafe { sys::rte_mempool_free(self.raw.as_ptr()) };
        } else {
            // An Mbuf outlived the pool: freeing would let its Drop write
            // into freed memory. Leak instead.
            LEAKED_POOLS.fetch_add(1, Ordering::AcqRel);
            tracing::warn!(
                "mempool {} dropped with {in_use} mbufs in use: leaked",
                self.name
            );
        }
    }
}

/// A pool of packet buffers (`rte_pktmbuf_pool_create`); a cheap,
/// cloneable handle. Create one per NUMA socket the ports sit on.
#[derive(Clone)]
pub struct Mempool {
    inner: Arc<PoolInner>,
}

impl fmt::Debug for Mempool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mempool")
            .field("name", &self.inner.name)
            .field("data_room", &self.inner.data_room)
            .field("available", &self.available())
            .finish()
    }
}

impl Mempool {
    /// DPDK's default buffer: 2048 bytes of data after 128 of headroom.
    pub const DEFAULT_DATA_ROOM: u16 = sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16;

    /// Bytes reserved in front of each frame for headers to be prepended.
    pub const HEADROOM: u16 = sys::RTE_PKTMBUF_HEADROOM as u16;

    /// Creates a pool of `n_mbufs` buffers (best a power of two minus one)
    /// with a per-lcore cache of `cache` (at most 512, and at most
    /// `n_mbufs / 1.5`), each of `data_room` bytes including
    /// [`Mempool::HEADROOM`], on `socket` (`None`: any).
    pub fn new(
        name: &str,
        n_mbufs: u32,
        cache: u32,
        data_room: u16,
        socket: Option<u32>,
    ) -> Result<Mempool, DpdkError> {
        let eal = Eal::current().ok_or(DpdkError::EalNotInitialized)?;
        if u32::from(data_room) <= sys::RTE_PKTMBUF_HEADROOM {
            return Err(DpdkError::InvalidArgument(format!(
                "mempool {name}: data_room {data_room} must exceed the {} bytes of headroom",
                sys::RTE_PKTMBUF_HEADROOM
            )));
        }
        let c_name = CString::new(name).map_err(|_| {
            DpdkError::InvalidArgument(format!("mempool name {name:?} contains a NUL byte"))
        })?;
        let socket = match socket {
            None => sys::SOCKET_ID_ANY,
            Some(s) => c_int::try_from(s).map_err(|_| {
                DpdkError::InvalidArgument(format!("mempool {name}: socket {s} is out of range"))
            })?,
        };
        // SAFETY: EAL is initialised (eal is live); c_name is a valid C
        // string that DPDK copies.
        let raw = unsafe {
            sys::rte_pktmbuf_pool_create(c_name.as_ptr(), n_mbufs, cache, 0, data_room, socket)
        };
        let raw = check_ptr("rte_pktmbuf_pool_create", raw)?;
        Ok(Mempool {
            inner: Arc::new(PoolInner {
                raw,
                name: name.to_owned(),
                data_room,
                _eal: eal,
            }),
        })
    }

    /// Buffers free in the pool (including per-lcore caches).
    pub fn available(&self) -> u32 {
        // SAFETY: raw is a live mempool; the count is a racy snapshot.
        unsafe { sys::rte_mempool_avail_count(self.inner.raw.as_ptr()) }
    }

    /// Buffers currently handed out.
    pub fn in_use(&self) -> u32 {
        // SAFETY: raw is a live mempool; the count is a racy snapshot.
        unsafe { sys::rte_mempool_in_use_count(self.inner.raw.as_ptr()) }
    }

    /// The largest frame one buffer holds after the headroom.
    pub fn max_frame(&self) -> usize {
        usize::from(self.inner.data_room - Self::HEADROOM)
    }

    /// The raw pool, for DPDK calls this module does not wrap.
    pub fn as_ptr(&self) -> *mut sys::rte_mempool {
        self.inner.raw.as_ptr()
    }

    /// Takes one empty buffer; `None` when the pool is exhausted.
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: raw is a live packet mempool; the result is NULL or a
        // fresh mbuf (refcnt 1, one segment, length 0) we now own.
        unsafe { Mbuf::from_raw(sys::lb_rte_pktmbuf_alloc(self.inner.raw.as_ptr())) }
    }
}
