//! CPU placement: workers pinned to their cores, background threads kept
//! off them.

/// Background work (the classifier refinement) stays off the workers'
/// pinned cores where other CPUs are allowed, and runs at a lower
/// priority (nice 10), so that it does not take a poll-mode worker's time.
pub(super) fn keep_off_worker_cores(cores: &[u16]) {
    if let Some(mut set) = thread_affinity() {
        let mut left = 0;
        for cpu in 0..libc::CPU_SETSIZE as usize {
            // SAFETY: `cpu` is below CPU_SETSIZE, within `set`.
            let on = unsafe { libc::CPU_ISSET(cpu, &set) };
            if on && !cores.iter().any(|&c| usize::from(c) == cpu) {
                left += 1;
            }
        }
        if left > 0 {
            for &c in cores {
                if usize::from(c) < libc::CPU_SETSIZE as usize {
                    // SAFETY: `c` is below CPU_SETSIZE, within `set`.
                    unsafe { libc::CPU_CLR(usize::from(c), &mut set) };
                }
            }
            // SAFETY: `set` is a valid cpu_set_t and we pass its exact
            // size; 0 = this thread.
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        }
    }
    // SAFETY: gettid has no preconditions; setpriority on this thread's id
    // changes only its nice value (a failure leaves it as it was).
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

pub(super) fn pin_to_core(core: u16) {
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes inside `set` for any core below CPU_SETSIZE, which
    // lb-config's limit on core numbers guarantees.
    unsafe { libc::CPU_SET(usize::from(core), &mut set) };
    // SAFETY: `set` is a valid cpu_set_t and we pass its exact size; 0 = this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        tracing::warn!(
            core,
            "could not pin worker: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The calling thread's CPU set, if it can be read.
pub(super) fn thread_affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t and we pass its exact size; 0 = this thread.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    (rc == 0).then_some(set)
}

#[cfg(feature = "dpdk")]
pub(super) fn set_thread_affinity(set: &libc::cpu_set_t) {
    // SAFETY: `set` is a valid cpu_set_t and we pass its exact size; 0 = this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if rc != 0 {
        tracing::warn!(
            "could not restore the CPU affinity after EAL init: {}",
            std::io::Error::last_os_error()
        );
    }
}
