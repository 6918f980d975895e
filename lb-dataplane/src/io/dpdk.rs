//! DPDK backend (feature `dpdk`): poll-mode ports behind [`PacketIo`].
//!
//! Lifecycle: [`Eal::init`] once per process, one [`Mempool`] per NUMA
//! socket, [`DpdkPort::open`] per port (one RX and one TX queue per worker,
//! RSS with a symmetric key so both directions of a flow reach the same
//! queue), then [`DpdkPort::queue`] hands each worker its [`DpdkQueue`].
//! Handles keep what they need alive: a queue keeps its port (stopped and
//! closed when the port and all its queues are gone), a port its mempool,
//! everything the EAL (cleaned up, and its runtime directory removed, when
//! the last handle goes).
//!
//! Foreign memory is touched through [`Mbuf`] only: [`Mbuf::from_raw`] is
//! the one unsafe constructor, and every view after it ([`Mbuf::data`],
//! [`Mbuf::data_mut`]) is a plain, bounds-checked slice.
//!
//! ```no_run
//! use lb_dataplane::io::dpdk::{DpdkPort, DpdkPortOpts, Eal, Mempool};
//! use lb_dataplane::io::PacketIo;
//!
//! let args: Vec<String> = ["--no-huge", "--no-pci", "-m", "128", "--vdev=net_ring0"]
//!     .iter()
//!     .map(|s| s.to_string())
//!     .collect();
//! let _eal = Eal::init(&args)?;
//! let pool = Mempool::new("pool0", 8191, 256, Mempool::DEFAULT_DATA_ROOM, None)?;
//! let port = DpdkPort::open(0, 1, &pool, &DpdkPortOpts::default())?;
//! let mut queue = port.queue(0)?;
//! queue.send(&[0u8; 60]);
//! queue.flush()?;
//! queue.recv_burst(32, &mut |frame, _meta| frame[0] ^= 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ffi::{c_char, c_int, CStr, CString};
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

pub use lb_dpdk_sys as sys;

pub mod rss;

use super::{IoStats, PacketIo, RxMeta};

/// Most frames one [`DpdkQueue::recv_burst`] takes from the PMD.
pub const MAX_BURST: usize = 64;

/// Errors of the DPDK backend.
#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    #[error("{call} failed: {message} (error {code})")]
    Call {
        call: &'static str,
        code: i32,
        message: String,
    },
    #[error("the DPDK EAL is not initialised: call Eal::init first")]
    EalNotInitialized,
    #[error(
        "the DPDK EAL is already initialised in this process with other arguments ({first:?}); \
         it initialises once per process"
    )]
    EalAlreadyInitialized { first: Vec<String> },
    #[error("the DPDK EAL was initialised and shut down in this process; it cannot start again")]
    EalFinished,
    #[error("DPDK port {0} does not exist (check the --vdev / PCI allow-list arguments)")]
    NoSuchPort(u16),
    #[error("DPDK port {port} has {queues} queue(s); queue {queue} does not exist")]
    NoSuchQueue { port: u16, queue: u16, queues: u16 },
    #[error("queue {queue} of DPDK port {port} is already in use by another handle")]
    QueueTaken { port: u16, queue: u16 },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl From<DpdkError> for io::Error {
    fn from(e: DpdkError) -> io::Error {
        let kind = match &e {
            DpdkError::InvalidArgument(_) => io::ErrorKind::InvalidInput,
            DpdkError::NoSuchPort(_) | DpdkError::NoSuchQueue { .. } => io::ErrorKind::NotFound,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// How a DPDK call reports failure.
#[derive(Clone, Copy)]
enum Convention {
    /// A negative return value is `-errno` (ethdev, mbuf helpers).
    NegErrno,
    /// A negative return value (or NULL) means "see `rte_errno`" (EAL, mempool).
    RteErrno,
}

/// The one place FFI return codes become [`DpdkError`]: `Ok(ret)` for
/// `ret >= 0`, otherwise the error named by `conv`, with `rte_strerror`'s
/// message.
fn check(call: &'static str, ret: c_int, conv: Convention) -> Result<c_int, DpdkError> {
    if ret >= 0 {
        return Ok(ret);
    }
    let code = match conv {
        Convention::NegErrno => -ret,
        // SAFETY: lb_rte_errno reads this thread's rte_errno; no preconditions.
        Convention::RteErrno => unsafe { sys::lb_rte_errno() },
    };
    // SAFETY: rte_strerror accepts any value and returns a NUL-terminated
    // string (static, or in a thread-local buffer), copied out at once.
    let message = unsafe { CStr::from_ptr(sys::rte_strerror(code)) }
        .to_string_lossy()
        .into_owned();
    Err(DpdkError::Call {
        call,
        code,
        message,
    })
}

/// [`check`] for calls that return a pointer, NULL on failure with `rte_errno` set.
fn check_ptr<T>(call: &'static str, ptr: *mut T) -> Result<NonNull<T>, DpdkError> {
    match NonNull::new(ptr) {
        Some(p) => Ok(p),
        None => match check(call, -1, Convention::RteErrno) {
            Err(e) => Err(e),
            Ok(_) => unreachable!("check fails on negative values"),
        },
    }
}

// ---------------------------------------------------------------- EAL

/// Pools that were still lent out when dropped, and so were leaked: their
/// memory must outlive the EAL, so the EAL is not cleaned up.
static LEAKED_POOLS: AtomicUsize = AtomicUsize::new(0);

enum EalState {
    Uninit,
    Live(Weak<EalInner>),
    Finished,
}

static EAL: Mutex<EalState> = Mutex::new(EalState::Uninit);

fn eal_state() -> MutexGuard<'static, EalState> {
    EAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct EalInner {
    args: Vec<String>,
    /// Removed on drop when this process is the primary.
    runtime_dir: Option<PathBuf>,
}

impl Drop for EalInner {
    fn drop(&mut self) {
        *eal_state() = EalState::Finished;
        if LEAKED_POOLS.load(Ordering::Acquire) == 0 {
            // SAFETY: this is the last handle: every port and pool (each
            // holding one) is gone and no pool was leaked, so no DPDK
            // memory is referenced any more.
            let ret = unsafe { sys::rte_eal_cleanup() };
            if let Err(e) = check("rte_eal_cleanup", ret, Convention::NegErrno) {
                tracing::warn!("{e}");
            }
        } else {
            tracing::warn!("DPDK mempools were still in use at exit: EAL left as is");
        }
        if let Some(dir) = &self.runtime_dir {
            match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    tracing::warn!("removing DPDK runtime directory {}: {e}", dir.display());
                }
                _ => {}
            }
        }
    }
}

/// The initialised DPDK Environment Abstraction Layer; a cheap, cloneable
/// handle. The EAL is shut down (`rte_eal_cleanup`) and its runtime
/// directory (`/var/run/dpdk/<file-prefix>/`) removed when the last handle,
/// including those held by pools and ports, is dropped.
#[derive(Clone)]
pub struct Eal {
    inner: Arc<EalInner>,
}

impl fmt::Debug for Eal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Eal")
            .field("args", &self.inner.args)
            .field("runtime_dir", &self.inner.runtime_dir)
            .finish()
    }
}

impl Eal {
    /// Initialises the EAL with `args` (EAL arguments without the program
    /// name, e.g. `["-l", "0", "--no-huge", "--vdev=net_null0"]`).
    ///
    /// DPDK initialises once per process: a second call with the same
    /// arguments returns the live handle, with other arguments
    /// [`DpdkError::EalAlreadyInitialized`], and after the EAL was shut down
    /// [`DpdkError::EalFinished`].
    ///
    /// EAL pins the calling thread to its main lcore's CPU set; threads
    /// spawned afterwards inherit that affinity unless they set their own.
    pub fn init(args: &[String]) -> Result<Eal, DpdkError> {
        let mut state = eal_state();
        match &*state {
            EalState::Live(weak) => {
                let live = weak.upgrade();
                // Unlock first: if ours becomes the last handle, its drop
                // takes the lock.
                drop(state);
                let inner = live.ok_or(DpdkError::EalFinished)?;
                return if inner.args == args {
                    Ok(Eal { inner })
                } else {
                    Err(DpdkError::EalAlreadyInitialized {
                        first: inner.args.clone(),
                    })
                };
            }
            EalState::Finished => return Err(DpdkError::EalFinished),
            EalState::Uninit => {}
        }
        let mut argv: Vec<*mut c_char> = Vec::with_capacity(args.len() + 1);
        for arg in std::iter::once("lb-dataplane").chain(args.iter().map(String::as_str)) {
            let c = CString::new(arg).map_err(|_| {
                DpdkError::InvalidArgument(format!("EAL argument {arg:?} contains a NUL byte"))
            })?;
            // Leaked on purpose: EAL may keep pointers into argv for the
            // life of the process, and it runs once.
            argv.push(c.into_raw());
        }
        let argc = c_int::try_from(argv.len())
            .map_err(|_| DpdkError::InvalidArgument("too many EAL arguments".into()))?;
        let argv = argv.leak();
        // SAFETY: argv holds argc valid, NUL-terminated strings that live
        // for the rest of the process (leaked above); EAL may permute the
        // array, which nothing else reads. The EAL lock is held, so no
        // other thread initialises concurrently.
        let ret = unsafe { sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        check("rte_eal_init", ret, Convention::RteErrno)?;

        // SAFETY: both are plain queries, valid after a successful init;
        // the returned string is static within EAL and copied at once.
        let (primary, dir) = unsafe {
            (
                sys::rte_eal_process_type() == sys::RTE_PROC_PRIMARY,
                sys::rte_eal_get_runtime_dir(),
            )
        };
        let runtime_dir = (primary && !dir.is_null()).then(|| {
            // SAFETY: non-NULL, NUL-terminated, owned by EAL (static).
            PathBuf::from(
                unsafe { CStr::from_ptr(dir) }
                    .to_string_lossy()
                    .into_owned(),
            )
        });
        let inner = Arc::new(EalInner {
            args: args.to_vec(),
            runtime_dir,
        });
        *state = EalState::Live(Arc::downgrade(&inner));
        Ok(Eal { inner })
    }

    /// The live EAL, if [`Eal::init`] succeeded and it is still running.
    pub fn current() -> Option<Eal> {
        match &*eal_state() {
            EalState::Live(weak) => weak.upgrade().map(|inner| Eal { inner }),
            _ => None,
        }
    }

    /// The arguments EAL was initialised with.
    pub fn args(&self) -> &[String] {
        &self.inner.args
    }

    /// Registers the calling thread with EAL (`rte_thread_register`) so that
    /// it gets an lcore id and the mempools' per-lcore caches. Without it
    /// everything still works, only slower (each alloc/free goes to the
    /// shared ring). Unregistered when the guard drops; a thread that is
    /// already an EAL thread gets a guard that does nothing.
    pub fn register_thread(&self) -> Result<ThreadRegistration, DpdkError> {
        // SAFETY: reads this thread's lcore id; no preconditions.
        if unsafe { sys::lb_rte_lcore_id() } != sys::LCORE_ID_ANY {
            return Ok(ThreadRegistration {
                registered: false,
                _not_send: PhantomData,
            });
        }
        // SAFETY: the EAL is initialised (self exists); registers the
        // calling thread only.
        let ret = unsafe { sys::rte_thread_register() };
        check("rte_thread_register", ret, Convention::RteErrno)?;
        Ok(ThreadRegistration {
            registered: true,
            _not_send: PhantomData,
        })
    }

    /// The calling thread's lcore id, `None` for unregistered threads.
    pub fn lcore_id() -> Option<u32> {
        // SAFETY: reads this thread's lcore id; no preconditions.
        let id = unsafe { sys::lb_rte_lcore_id() };
        (id != sys::LCORE_ID_ANY).then_some(id)
    }
}

/// The calling thread's EAL registration; see [`Eal::register_thread`].
#[derive(Debug)]
pub struct ThreadRegistration {
    registered: bool,
    /// Registration belongs to a thread.
    _not_send: PhantomData<*const ()>,
}

impl Drop for ThreadRegistration {
    fn drop(&mut self) {
        if self.registered {
            // SAFETY: this thread registered itself (the guard is !Send, so
            // it is dropped on the same thread) and the EAL is alive for
            // as long as any pool or port is.
            unsafe { sys::rte_thread_unregister() };
        }
    }
}

// ---------------------------------------------------------------- Mempool

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

// ---------------------------------------------------------------- Mbuf

/// An owned packet buffer, returned to its pool on drop.
///
/// Only the first segment is exposed: ports are configured without
/// scattered RX, so received frames are single-segment unless larger than
/// the buffer (then [`RxMeta::truncated`] is set).
#[repr(transparent)]
pub struct Mbuf {
    raw: NonNull<sys::rte_mbuf>,
}

// SAFETY: an Mbuf is the only owner of its buffer; DPDK lets any thread
// read, write and free an mbuf it owns (the pool is thread-safe).
unsafe impl Send for Mbuf {}

impl fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mbuf")
            .field("len", &self.len())
            .field("segments", &self.segments())
            .field("ol_flags", &format_args!("{:#x}", self.ol_flags()))
            .finish()
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf (invariant of from_raw) and give it up
        // here; rte_pktmbuf_free also frees any chained segments.
        unsafe { sys::lb_rte_pktmbuf_free(self.raw.as_ptr()) }
    }
}

impl Mbuf {
    /// Takes ownership of a raw mbuf; `None` for NULL. The one door into
    /// DPDK packet memory: every view after it is safe.
    ///
    /// # Safety
    /// `raw` is NULL or a valid packet mbuf (from a pktmbuf pool) that the
    /// caller owns and hands over: nothing else reads, writes or frees it
    /// afterwards, and its pool outlives it.
    pub unsafe fn from_raw(raw: *mut sys::rte_mbuf) -> Option<Mbuf> {
        NonNull::new(raw).map(|raw| Mbuf { raw })
    }

    /// Gives up ownership (e.g. to a TX burst); the caller must free it.
    pub fn into_raw(self) -> *mut sys::rte_mbuf {
        let raw = self.raw.as_ptr();
        std::mem::forget(self);
        raw
    }

    /// The raw mbuf, still owned by `self`.
    pub fn as_ptr(&self) -> *mut sys::rte_mbuf {
        self.raw.as_ptr()
    }

    /// Bytes in the first segment.
    pub fn len(&self) -> usize {
        // SAFETY: raw is a valid mbuf we own.
        usize::from(unsafe { sys::lb_rte_pktmbuf_data_len(self.raw.as_ptr()) })
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes in the whole packet (all segments).
    pub fn pkt_len(&self) -> usize {
        // SAFETY: raw is a valid mbuf we own.
        unsafe { sys::lb_rte_pktmbuf_pkt_len(self.raw.as_ptr()) as usize }
    }

    /// Number of chained segments (1 for every frame we build or receive
    /// whole).
    pub fn segments(&self) -> u16 {
        // SAFETY: raw is a valid mbuf we own.
        unsafe { sys::lb_rte_pktmbuf_nb_segs(self.raw.as_ptr()) }
    }

    /// Free bytes before the data, for [`Mbuf::prepend`].
    pub fn headroom(&self) -> usize {
        // SAFETY: raw is a valid mbuf we own.
        usize::from(unsafe { sys::lb_rte_pktmbuf_headroom(self.raw.as_ptr()) })
    }

    /// Free bytes after the data, for [`Mbuf::append`].
    pub fn tailroom(&self) -> usize {
        // SAFETY: raw is a valid mbuf we own.
        usize::from(unsafe { sys::lb_rte_pktmbuf_tailroom(self.raw.as_ptr()) })
    }

    /// Offload flags set by the PMD on RX (`RTE_MBUF_F_RX_*`).
    pub fn ol_flags(&self) -> u64 {
        // SAFETY: raw is a valid mbuf we own.
        unsafe { sys::lb_rte_pktmbuf_ol_flags(self.raw.as_ptr()) }
    }

    /// What the PMD told about a received frame, as [`RxMeta`].
    pub fn rx_meta(&self) -> RxMeta {
        let l4 = self.ol_flags() & u64::from(sys::RTE_MBUF_F_RX_L4_CKSUM_MASK);
        RxMeta {
            // "L4 checksum not correct in the data, but the L4 data is
            // verified": the virtio/CHECKSUM_PARTIAL case.
            csum_partial: l4 == u64::from(sys::RTE_MBUF_F_RX_L4_CKSUM_NONE),
            truncated: self.segments() > 1,
        }
    }

    /// The frame (first segment).
    pub fn data(&self) -> &[u8] {
        let (ptr, len) = self.segment();
        // SAFETY: ptr..ptr+len is the first segment's data, inside the
        // buffer we own (from_raw invariant); nothing else touches it
        // while `self` is borrowed.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }

    /// The frame (first segment), writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        let (ptr, len) = self.segment();
        // SAFETY: as in `data`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }

    fn segment(&self) -> (*mut u8, usize) {
        // SAFETY: raw is a valid mbuf we own; mtod is buf_addr + data_off.
        let ptr = unsafe { sys::lb_rte_pktmbuf_mtod(self.raw.as_ptr()) };
        (ptr.cast::<u8>(), self.len())
    }

    /// Grows the frame by `len` bytes at the end and returns them; `None`
    /// (nothing changed) if the tailroom is too small.
    pub fn append(&mut self, len: usize) -> Option<&mut [u8]> {
        let n = u16::try_from(len).ok()?;
        // SAFETY: raw is a valid mbuf we own; append checks the tailroom
        // and returns NULL without change when it is short.
        let p = unsafe { sys::lb_rte_pktmbuf_append(self.raw.as_ptr(), n) };
        if p.is_null() {
            return None;
        }
        let start = self.len() - len;
        Some(&mut self.data_mut()[start..])
    }

    /// Grows the frame by `len` bytes at the front and returns them; `None`
    /// (nothing changed) if the headroom is too small.
    pub fn prepend(&mut self, len: usize) -> Option<&mut [u8]> {
        let n = u16::try_from(len).ok()?;
        // SAFETY: raw is a valid mbuf we own; prepend checks the headroom
        // and returns NULL without change when it is short.
        let p = unsafe { sys::lb_rte_pktmbuf_prepend(self.raw.as_ptr(), n) };
        if p.is_null() {
            return None;
        }
        Some(&mut self.data_mut()[..len])
    }

    /// Removes `len` bytes from the front; false (nothing changed) if the
    /// first segment is shorter.
    pub fn adj(&mut self, len: usize) -> bool {
        let Ok(n) = u16::try_from(len) else {
            return false;
        };
        // SAFETY: raw is a valid mbuf we own; adj checks the length.
        !unsafe { sys::lb_rte_pktmbuf_adj(self.raw.as_ptr(), n) }.is_null()
    }

    /// Removes `len` bytes from the end; false (nothing changed) if the
    /// last segment is shorter.
    pub fn trim(&mut self, len: usize) -> bool {
        let Ok(n) = u16::try_from(len) else {
            return false;
        };
        // SAFETY: raw is a valid mbuf we own; trim checks the length.
        unsafe { sys::lb_rte_pktmbuf_trim(self.raw.as_ptr(), n) == 0 }
    }

    /// Sets the frame length (single-segment mbufs only); false (nothing
    /// changed) if it does not fit the buffer or the mbuf is chained.
    pub fn set_len(&mut self, len: usize) -> bool {
        let Ok(n) = u16::try_from(len) else {
            return false;
        };
        if self.segments() != 1 || len > self.len() + self.tailroom() {
            return false;
        }
        // SAFETY: raw is a valid single-segment mbuf we own and the new
        // length stays within its buffer (checked above).
        unsafe {
            sys::lb_rte_pktmbuf_set_data_len(self.raw.as_ptr(), n);
            sys::lb_rte_pktmbuf_set_pkt_len(self.raw.as_ptr(), u32::from(n));
        }
        true
    }
}

// ---------------------------------------------------------------- RSS

/// The symmetric Toeplitz key: `0x6d5a` repeated. Its 16-bit period makes
/// the hash invariant under swapping source and destination (addresses and
/// ports are both multiples of 16 bits), so both directions of a flow land
/// on the same queue.
pub const SYMMETRIC_RSS_KEY: [u8; 40] = {
    let mut key = [0u8; 40];
    let mut i = 0;
    while i < 40 {
        key[i] = if i % 2 == 0 { 0x6d } else { 0x5a };
        i += 1;
    }
    key
};

/// The symmetric key at `len` bytes (NICs differ: 40 and 52 are common).
pub use lb_core::nat::rss::symmetric_key as symmetric_rss_key;

pub use lb_core::nat::rss::toeplitz_hash;

/// The hash types we ask for, when the PMD supports them.
const RSS_HF: u64 = sys::LB_RTE_ETH_RSS_IPV4
    | sys::LB_RTE_ETH_RSS_NONFRAG_IPV4_TCP
    | sys::LB_RTE_ETH_RSS_NONFRAG_IPV4_UDP
    | sys::LB_RTE_ETH_RSS_IPV6
    | sys::LB_RTE_ETH_RSS_NONFRAG_IPV6_TCP
    | sys::LB_RTE_ETH_RSS_NONFRAG_IPV6_UDP;

// ---------------------------------------------------------------- Port

/// Settings of [`DpdkPort::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpdkPortOpts {
    /// RX descriptors per queue (adjusted to the PMD's limits).
    pub rx_desc: u16,
    /// TX descriptors per queue (adjusted to the PMD's limits).
    pub tx_desc: u16,
    /// Frames [`PacketIo::send`] batches before it flushes by itself
    /// (1..=[`MAX_BURST`]).
    pub tx_batch: usize,
    /// Further `rte_eth_tx_burst` calls [`PacketIo::flush`] makes while the
    /// TX ring is full, before it drops the rest.
    pub tx_retries: u32,
    /// Receive every frame, whatever its destination MAC.
    pub promiscuous: bool,
    /// MTU to set; `None` keeps the PMD's (usually 1500).
    pub mtu: Option<u16>,
}

impl Default for DpdkPortOpts {
    fn default() -> Self {
        DpdkPortOpts {
            rx_desc: 1024,
            tx_desc: 1024,
            tx_batch: 32,
            tx_retries: 4,
            promiscuous: true,
            mtu: None,
        }
    }
}

/// Link state, for logs and stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStatus {
    pub up: bool,
    /// Mb/s; `None` when the PMD does not know (virtual devices).
    pub speed_mbps: Option<u32>,
    pub full_duplex: bool,
    pub autoneg: bool,
}

impl fmt::Display for LinkStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.up {
            return f.write_str("down");
        }
        match self.speed_mbps {
            Some(s) => write!(f, "up {s} Mb/s")?,
            None => f.write_str("up, speed unknown")?,
        }
        f.write_str(if self.full_duplex {
            " full-duplex"
        } else {
            " half-duplex"
        })
    }
}

/// Port-wide counters (`rte_eth_stats_get`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EthStats {
    pub ipackets: u64,
    pub opackets: u64,
    pub ibytes: u64,
    pub obytes: u64,
    /// RX frames the hardware dropped (queue full).
    pub imissed: u64,
    pub ierrors: u64,
    pub oerrors: u64,
    /// RX mbuf allocation failures.
    pub rx_nombuf: u64,
}

struct PortInner {
    port_id: u16,
    name: String,
    driver: String,
    mac: [u8; 6],
    rss: bool,
    tx_batch: usize,
    tx_retries: u32,
    /// One flag per queue: handed out to a [`DpdkQueue`].
    taken: Vec<AtomicBool>,
    /// Control-path calls (stats, link) are not thread-safe in DPDK.
    control: Mutex<()>,
    pool: Mempool,
    _eal: Eal,
}

impl PortInner {
    fn control(&self) -> MutexGuard<'_, ()> {
        self.control
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn eth_stats(&self) -> Result<EthStats, DpdkError> {
        let _guard = self.control();
        let mut s = sys::rte_eth_stats::default();
        // SAFETY: the port is valid and started; `s` is a writable
        // rte_eth_stats; control calls are serialised by the lock.
        let ret = unsafe { sys::rte_eth_stats_get(self.port_id, &mut s) };
        check("rte_eth_stats_get", ret, Convention::NegErrno)?;
        Ok(EthStats {
            ipackets: s.ipackets,
            opackets: s.opackets,
            ibytes: s.ibytes,
            obytes: s.obytes,
            imissed: s.imissed,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        })
    }
}

impl Drop for PortInner {
    fn drop(&mut self) {
        let _guard = self.control();
        // SAFETY: no queue handle is left (each holds this value), so no
        // thread is in a burst call on the port; the EAL is alive (held).
        let ret = unsafe { sys::rte_eth_dev_stop(self.port_id) };
        if let Err(e) = check("rte_eth_dev_stop", ret, Convention::NegErrno) {
            tracing::warn!("port {} ({}): {e}", self.port_id, self.name);
        }
        // SAFETY: as above; close releases the queues and their mbufs
        // back to the pool, which is still alive (held).
        let ret = unsafe { sys::rte_eth_dev_close(self.port_id) };
        if let Err(e) = check("rte_eth_dev_close", ret, Convention::NegErrno) {
            tracing::warn!("port {} ({}): {e}", self.port_id, self.name);
        }
    }
}

/// A started DPDK Ethernet port; a cheap, cloneable handle. Stopped and
/// closed when it and all its queues are dropped.
#[derive(Clone)]
pub struct DpdkPort {
    inner: Arc<PortInner>,
}

impl fmt::Debug for DpdkPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpdkPort")
            .field("port_id", &self.inner.port_id)
            .field("name", &self.inner.name)
            .field("driver", &self.inner.driver)
            .field("queues", &self.inner.taken.len())
            .field("rss", &self.inner.rss)
            .finish()
    }
}

fn c_str_or_empty(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-NULL, NUL-terminated string owned by DPDK, copied at once.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

impl DpdkPort {
    /// Ports EAL found (PCI devices it may drive, and `--vdev`s in
    /// command-line order), numbered from 0.
    pub fn count() -> u16 {
        // SAFETY: plain query; returns 0 before EAL init.
        unsafe { sys::rte_eth_dev_count_avail() }
    }

    /// The id of the port named `name` (a PCI address such as
    /// `0000:03:00.0`, or a vdev name such as `net_ring0`).
    pub fn id_by_name(name: &str) -> Result<u16, DpdkError> {
        Eal::current().ok_or(DpdkError::EalNotInitialized)?;
        let c_name = CString::new(name)
            .map_err(|_| DpdkError::InvalidArgument(format!("port name {name:?}")))?;
        let mut id = 0u16;
        // SAFETY: EAL is initialised; c_name is a valid C string and `id`
        // a writable u16.
        let ret = unsafe { sys::rte_eth_dev_get_port_by_name(c_name.as_ptr(), &mut id) };
        check("rte_eth_dev_get_port_by_name", ret, Convention::NegErrno)?;
        Ok(id)
    }

    /// Configures and starts port `port_id` with `queues` RX and TX queue
    /// pairs (one per worker), RX buffers from `mempool`.
    ///
    /// With more than one queue, RSS spreads IPv4/IPv6 TCP/UDP flows with
    /// [`SYMMETRIC_RSS_KEY`]. A PMD without RSS, or with fewer queues,
    /// gets fewer queues (logged): check [`DpdkPort::queue_count`].
    pub fn open(
        port_id: u16,
        queues: u16,
        mempool: &Mempool,
        opts: &DpdkPortOpts,
    ) -> Result<DpdkPort, DpdkError> {
        let eal = Eal::current().ok_or(DpdkError::EalNotInitialized)?;
        if queues == 0 {
            return Err(DpdkError::InvalidArgument(
                "a port needs at least one queue".into(),
            ));
        }
        if opts.tx_batch == 0 || opts.tx_batch > MAX_BURST {
            return Err(DpdkError::InvalidArgument(format!(
                "tx_batch must be between 1 and {MAX_BURST}"
            )));
        }
        // SAFETY: plain query on any port id.
        if unsafe { sys::rte_eth_dev_is_valid_port(port_id) } == 0 {
            return Err(DpdkError::NoSuchPort(port_id));
        }
        let mut info = sys::rte_eth_dev_info::default();
        // SAFETY: valid port; `info` is a writable rte_eth_dev_info.
        let ret = unsafe { sys::rte_eth_dev_info_get(port_id, &mut info) };
        check("rte_eth_dev_info_get", ret, Convention::NegErrno)?;
        let driver = c_str_or_empty(info.driver_name);
        let mut name_buf = [0 as c_char; sys::RTE_ETH_NAME_MAX_LEN as usize];
        // SAFETY: valid port; the buffer holds RTE_ETH_NAME_MAX_LEN bytes,
        // the most DPDK writes (NUL included).
        let ret = unsafe { sys::rte_eth_dev_get_name_by_port(port_id, name_buf.as_mut_ptr()) };
        let name = if ret == 0 {
            c_str_or_empty(name_buf.as_ptr())
        } else {
            format!("port{port_id}")
        };

        let hf = RSS_HF & info.flow_type_rss_offloads;
        let max_queues = info.max_rx_queues.min(info.max_tx_queues).max(1);
        let mut n = queues;
        if n > 1 && hf == 0 {
            tracing::warn!(
                "port {port_id} ({name}, {driver}) does not support RSS on IP TCP/UDP: \
                 using 1 queue instead of {queues}"
            );
            n = 1;
        } else if n > max_queues {
            tracing::warn!(
                "port {port_id} ({name}, {driver}) supports {max_queues} queue(s): \
                 using {max_queues} instead of {queues}"
            );
            n = max_queues;
        }
        let rss = n > 1;

        let key_len = match info.hash_key_size {
            0 => SYMMETRIC_RSS_KEY.len(),
            k => usize::from(k),
        };
        let mut key = symmetric_rss_key(key_len);
        let mut conf = sys::rte_eth_conf::default();
        if rss {
            conf.rxmode.mq_mode = sys::RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_key = key.as_mut_ptr();
            conf.rx_adv_conf.rss_conf.rss_key_len =
                u8::try_from(key.len()).expect("key_len comes from a u8 or is 40");
            conf.rx_adv_conf.rss_conf.rss_hf = hf;
        } else {
            conf.rxmode.mq_mode = sys::RTE_ETH_MQ_RX_NONE;
        }
        // SAFETY: valid, stopped port; `conf` (and the key it points to,
        // which the PMD copies) is valid for the call.
        let ret = unsafe { sys::rte_eth_dev_configure(port_id, n, n, &conf) };
        check("rte_eth_dev_configure", ret, Convention::NegErrno)?;

        let (mut rx_desc, mut tx_desc) = (opts.rx_desc, opts.tx_desc);
        // SAFETY: valid, configured port; both pointers are writable u16s.
        let ret =
            unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(port_id, &mut rx_desc, &mut tx_desc) };
        check(
            "rte_eth_dev_adjust_nb_rx_tx_desc",
            ret,
            Convention::NegErrno,
        )?;

        // SAFETY: plain query on a valid port.
        let socket = unsafe { sys::rte_eth_dev_socket_id(port_id) };
        // SOCKET_ID_ANY (-1) travels as an unsigned int, as DPDK does it.
        let socket = socket as u32;
        for q in 0..n {
            // SAFETY: valid, configured port; q < n queues configured; NULL
            // rx_conf means the PMD's defaults; the pool outlives the port
            // (PortInner holds it).
            let ret = unsafe {
                sys::rte_eth_rx_queue_setup(
                    port_id,
                    q,
                    rx_desc,
                    socket,
                    ptr::null(),
                    mempool.as_ptr(),
                )
            };
            check("rte_eth_rx_queue_setup", ret, Convention::NegErrno)?;
            // SAFETY: as above, for the TX side.
            let ret =
                unsafe { sys::rte_eth_tx_queue_setup(port_id, q, tx_desc, socket, ptr::null()) };
            check("rte_eth_tx_queue_setup", ret, Convention::NegErrno)?;
        }
        if let Some(mtu) = opts.mtu {
            // SAFETY: valid, configured port.
            let ret = unsafe { sys::rte_eth_dev_set_mtu(port_id, mtu) };
            check("rte_eth_dev_set_mtu", ret, Convention::NegErrno)?;
        }
        if opts.promiscuous {
            // SAFETY: valid, configured port.
            let ret = unsafe { sys::rte_eth_promiscuous_enable(port_id) };
            if let Err(e) = check("rte_eth_promiscuous_enable", ret, Convention::NegErrno) {
                tracing::warn!("port {port_id} ({name}): {e}");
            }
        }
        let mut mac = sys::rte_ether_addr::default();
        // SAFETY: valid port; `mac` is a writable rte_ether_addr.
        let ret = unsafe { sys::rte_eth_macaddr_get(port_id, &mut mac) };
        check("rte_eth_macaddr_get", ret, Convention::NegErrno)?;

        // SAFETY: valid port with all its queues set up.
        let ret = unsafe { sys::rte_eth_dev_start(port_id) };
        check("rte_eth_dev_start", ret, Convention::NegErrno)?;
        tracing::info!(
            "DPDK port {port_id} ({name}, {driver}) started: {n} queue(s), RSS {}, {rx_desc}/{tx_desc} descriptors",
            if rss { "symmetric" } else { "off" }
        );
        Ok(DpdkPort {
            inner: Arc::new(PortInner {
                port_id,
                name,
                driver,
                mac: mac.addr_bytes,
                rss,
                tx_batch: opts.tx_batch,
                tx_retries: opts.tx_retries,
                taken: (0..n).map(|_| AtomicBool::new(false)).collect(),
                control: Mutex::new(()),
                pool: mempool.clone(),
                _eal: eal,
            }),
        })
    }

    /// The handle of queue `queue` (one per worker; a queue has one handle
    /// at a time, free again when it drops). TX buffers come from the
    /// port's mempool.
    pub fn queue(&self, queue: u16) -> Result<DpdkQueue, DpdkError> {
        let inner = &self.inner;
        let queues = self.queue_count();
        let flag = inner
            .taken
            .get(usize::from(queue))
            .ok_or(DpdkError::NoSuchQueue {
                port: inner.port_id,
                queue,
                queues,
            })?;
        if flag.swap(true, Ordering::AcqRel) {
            return Err(DpdkError::QueueTaken {
                port: inner.port_id,
                queue,
            });
        }
        Ok(DpdkQueue {
            port: Arc::clone(inner),
            queue,
            pool: inner.pool.clone(),
            tx: Vec::with_capacity(MAX_BURST),
            tx_batch: inner.tx_batch,
            tx_retries: inner.tx_retries,
            stats: IoStats::default(),
        })
    }

    pub fn port_id(&self) -> u16 {
        self.inner.port_id
    }

    /// The device name (`net_ring0`, `0000:03:00.0`…).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The PMD's name (`net_ring`, `net_ixgbe`…).
    pub fn driver(&self) -> &str {
        &self.inner.driver
    }

    /// RX/TX queue pairs actually configured (may be fewer than asked).
    pub fn queue_count(&self) -> u16 {
        u16::try_from(self.inner.taken.len()).expect("configured from a u16")
    }

    /// Whether RSS (symmetric key) spreads flows over the queues.
    pub fn rss(&self) -> bool {
        self.inner.rss
    }

    pub fn mac(&self) -> [u8; 6] {
        self.inner.mac
    }

    /// The link as the PMD reports it now (does not wait).
    pub fn link_status(&self) -> Result<LinkStatus, DpdkError> {
        let _guard = self.inner.control();
        let mut link = sys::rte_eth_link::default();
        // SAFETY: valid port; `link` is a writable rte_eth_link.
        let ret = unsafe { sys::rte_eth_link_get_nowait(self.inner.port_id, &mut link) };
        check("rte_eth_link_get_nowait", ret, Convention::NegErrno)?;
        let speed = link.link_speed;
        Ok(LinkStatus {
            up: u32::from(link.link_status()) == sys::RTE_ETH_LINK_UP,
            speed_mbps: (speed != 0 && speed != sys::RTE_ETH_SPEED_NUM_UNKNOWN).then_some(speed),
            full_duplex: u32::from(link.link_duplex()) == sys::RTE_ETH_LINK_FULL_DUPLEX,
            autoneg: link.link_autoneg() != 0,
        })
    }

    /// The port's MTU now (the largest IP packet it sends).
    pub fn mtu(&self) -> Result<u16, DpdkError> {
        let _guard = self.inner.control();
        let mut mtu = 0u16;
        // SAFETY: valid port; `mtu` is a writable u16.
        let ret = unsafe { sys::rte_eth_dev_get_mtu(self.inner.port_id, &mut mtu) };
        check("rte_eth_dev_get_mtu", ret, Convention::NegErrno)?;
        Ok(mtu)
    }

    /// The port-wide hardware counters.
    pub fn eth_stats(&self) -> Result<EthStats, DpdkError> {
        self.inner.eth_stats()
    }

    /// The pool RX buffers (and [`DpdkQueue`] TX copies) come from.
    pub fn mempool(&self) -> &Mempool {
        &self.inner.pool
    }
}

// ---------------------------------------------------------------- Queue

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Microsoft's RSS verification key.
    const MS_KEY: [u8; 40] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f,
        0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30,
        0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
    ];

    fn tuple4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&src);
        v.extend_from_slice(&dst);
        v.extend_from_slice(&sport.to_be_bytes());
        v.extend_from_slice(&dport.to_be_bytes());
        v
    }

    #[test]
    fn toeplitz_matches_microsoft_vectors() {
        // 66.9.149.187:2794 -> 161.142.100.80:1766
        let t = tuple4([66, 9, 149, 187], [161, 142, 100, 80], 2794, 1766);
        assert_eq!(toeplitz_hash(&MS_KEY, &t[..8]), 0x323e_8fc2);
        assert_eq!(toeplitz_hash(&MS_KEY, &t), 0x51cc_c178);
        // 199.92.111.2:14230 -> 65.69.140.83:4739
        let t = tuple4([199, 92, 111, 2], [65, 69, 140, 83], 14230, 4739);
        assert_eq!(toeplitz_hash(&MS_KEY, &t[..8]), 0xd718_262a);
        assert_eq!(toeplitz_hash(&MS_KEY, &t), 0xc626_b0ea);
    }

    #[test]
    fn symmetric_key_hashes_both_directions_alike() {
        assert_eq!(SYMMETRIC_RSS_KEY.to_vec(), symmetric_rss_key(40));
        let mut x = 0x1234_5678u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for _ in 0..1000 {
            let (a, b) = (next().to_be_bytes(), next().to_be_bytes());
            let (p, q) = (next() as u16, (next() >> 16) as u16);
            let fwd = toeplitz_hash(&SYMMETRIC_RSS_KEY, &tuple4(a, b, p, q));
            let rev = toeplitz_hash(&SYMMETRIC_RSS_KEY, &tuple4(b, a, q, p));
            assert_eq!(fwd, rev);
            // IPv6: 16-byte addresses, and a 52-byte key as some NICs use.
            let (a6, b6): (Vec<u8>, Vec<u8>) = (
                (0..4).flat_map(|_| next().to_be_bytes()).collect(),
                (0..4).flat_map(|_| next().to_be_bytes()).collect(),
            );
            let key52 = symmetric_rss_key(52);
            let t6 = |s: &[u8], d: &[u8], sp: u16, dp: u16| {
                let mut v = s.to_vec();
                v.extend_from_slice(d);
                v.extend_from_slice(&sp.to_be_bytes());
                v.extend_from_slice(&dp.to_be_bytes());
                v
            };
            assert_eq!(
                toeplitz_hash(&key52, &t6(&a6, &b6, p, q)),
                toeplitz_hash(&key52, &t6(&b6, &a6, q, p))
            );
        }
        // The default key is not symmetric: the reason for ours.
        let t = tuple4([66, 9, 149, 187], [161, 142, 100, 80], 2794, 1766);
        let r = tuple4([161, 142, 100, 80], [66, 9, 149, 187], 1766, 2794);
        assert_ne!(toeplitz_hash(&MS_KEY, &t), toeplitz_hash(&MS_KEY, &r));
    }

    #[test]
    fn errors_read_as_sentences() {
        let e = check("rte_eth_dev_configure", -22, Convention::NegErrno).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("rte_eth_dev_configure failed: "), "{text}");
        assert!(text.ends_with("(error 22)"), "{text}");
    }
}
