//! Errors of the DPDK backend, and the one place FFI return codes become them.

use std::ffi::{c_int, CStr};
use std::io;
use std::ptr::NonNull;

use super::*;

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
pub(super) enum Convention {
    /// A negative return value is `-errno` (ethdev, mbuf helpers).
    NegErrno,
    /// A negative return value (or NULL) means "see `rte_errno`" (EAL, mempool).
    RteErrno,
}

/// The one place FFI return codes become [`DpdkError`]: `Ok(ret)` for
/// `ret >= 0`, otherwise the error named by `conv`, with `rte_strerror`'s
/// message.
pub(super) fn check(call: &'static str, ret: c_int, conv: Convention) -> Result<c_int, DpdkError> {
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
pub(super) fn check_ptr<T>(call: &'static str, ptr: *mut T) -> Result<NonNull<T>, DpdkError> {
    match NonNull::new(ptr) {
        Some(p) => Ok(p),
        None => match check(call, -1, Convention::RteErrno) {
            Err(e) => Err(e),
            Ok(_) => unreachable!("check fails on negative values"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_sentences() {
        let e = check("rte_eth_dev_configure", -22, Convention::NegErrno).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("rte_eth_dev_configure failed: "), "{text}");
        assert!(text.ends_with("(error 22)"), "{text}");
    }
}
