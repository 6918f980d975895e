//! The Environment Abstraction Layer: initialised once per process, shut
//! down with its last handle.

use std::ffi::{c_char, c_int, CStr, CString};
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::error::{check, Convention};
use super::*;

/// Pools that were still lent out when dropped, and so were leaked: their
/// memory must outlive the EAL, so the EAL is not cleaned up.
pub(super) static LEAKED_POOLS: AtomicUsize = AtomicUsize::new(0);

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
