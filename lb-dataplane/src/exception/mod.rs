//! The exception path: control traffic for a port's own addresses (BGP,
//! BFD, SSH, …) that the data plane does not serve goes up to the kernel
//! through a TAP interface per port (`[[port]] tap`), and what the kernel
//! sends through the TAP leaves by the port. On DPDK ports it is the only
//! way the kernel sees anything; on AF_PACKET ports it works the same.
//!
//! Both directions go through bounded queues of buffers made at start
//! (`[dataplane] exception_queue` frames each): a worker never waits for
//! the kernel and never makes a system call per frame for it (at most one
//! wake-up per burst, and only while the exception thread sleeps). A full
//! queue drops and counts (`exception_drops`). The workers put the
//! kernel's frames on their port first in each round, before the round's
//! forwarded frames: a data flood does not crowd them out.
//!
//! What goes up is decided in [`classify`].

pub mod classify;
pub mod tap;

use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam::queue::ArrayQueue;
use ipnet::IpNet;
use lb_core::packet::Parsed;
use lb_core::pipeline::Snapshot;

use crate::io::pool::{BufPool, PoolBuf};
pub use classify::{classify, link_local, PortFacts, Up};
pub use tap::Tap;

/// Frames the exception thread moves per port and direction before it
/// looks at the other ports and directions.
const THREAD_BATCH: usize = 256;

/// How long the exception thread sleeps at most when nothing moves.
const THREAD_SLEEP: Duration = Duration::from_millis(100);

/// Buffers beyond the two full queues: the frames the exception thread
/// and the workers hold between the queues and the TAP or the port.
const POOL_MARGIN: usize = 64;

/// The counters of one port's exception path.
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames handed to the kernel (written to the TAP).
    pub to_kernel: AtomicU64,
    /// Frames the kernel sent that left by the port.
    pub from_kernel: AtomicU64,
    /// Frames lost either way: a full queue, no free buffer, a frame too
    /// large, a failed write or send.
    pub drops: AtomicU64,
}

impl Counters {
    fn drop_one(&self) {
        self.drops.fetch_add(1, Ordering::Relaxed);
    }
}

/// One port's exception path: its TAP's name, queues and counters.
#[derive(Debug)]
pub struct ExceptionPort {
    pub tap: String,
    /// The TAP's IPv6 link-local address (when the port has IPv6).
    pub link_local: Option<Ipv6Addr>,
    to_kernel: ArrayQueue<PoolBuf>,
    from_kernel: ArrayQueue<PoolBuf>,
    pool: Arc<BufPool>,
    pub counters: Counters,
}

impl ExceptionPort {
    /// A port's exception path holding `queue` frames of up to
    /// `frame_size` bytes each way.
    pub fn new(
        tap: &str,
        link_local: Option<Ipv6Addr>,
        queue: usize,
        frame_size: usize,
    ) -> ExceptionPort {
        let queue = queue.max(1);
        ExceptionPort {
            tap: tap.to_string(),
            link_local,
            to_kernel: ArrayQueue::new(queue),
            from_kernel: ArrayQueue::new(queue),
            pool: BufPool::new(2 * queue + POOL_MARGIN, frame_size),
            counters: Counters::default(),
        }
    }

    /// Queues a copy of `frame` (parsed as `p`) for the kernel, its L4
    /// checksum completed if the kernel that sent it left it partial, any
    /// VLAN tag removed (the TAP is untagged). Returns false (counted) if
    /// it was dropped.
    pub fn push_up(&self, frame: &[u8], p: &Parsed, csum_partial: bool) -> bool {
        if self.to_kernel.is_full() {
            // Checked first: a flood costs no copy.
            self.counters.drop_one();
            return false;
        }
        let Some(mut buf) = self.pool.copy(frame) else {
            self.counters.drop_one();
            return false;
        };
        if csum_partial {
            lb_core::packet::complete_l4_checksum(buf.data_mut(), p, p.src, p.dst);
        }
        if !buf.retag(None) || self.to_kernel.push(buf).is_err() {
            self.counters.drop_one();
            return false;
        }
        true
    }

    /// The next frame the kernel sent, to put on the port.
    pub fn pop_down(&self) -> Option<PoolBuf> {
        self.from_kernel.pop()
    }

    /// The next frame for the kernel.
    pub fn pop_up(&self) -> Option<PoolBuf> {
        self.to_kernel.pop()
    }

    /// Queues a copy of `frame`, which the kernel sent, for the port;
    /// returns false (counted) if it was dropped.
    pub fn push_down(&self, frame: &[u8]) -> bool {
        let queued = self
            .pool
            .copy(frame)
            .is_some_and(|b| self.from_kernel.push(b).is_ok());
        if !queued {
            self.counters.drop_one();
        }
        queued
    }
}

/// The exception paths of all ports, and how the workers wake the thread
/// that serves them.
#[derive(Debug)]
pub struct Exceptions {
    /// By port index; `None` for a port without a tap.
    pub ports: Vec<Option<Arc<ExceptionPort>>>,
    /// The exception thread sleeps (or is about to): a worker that queued
    /// a frame for the kernel writes to `wake`.
    asleep: AtomicBool,
    wake: Option<OwnedFd>,
}

impl Exceptions {
    /// No exception path on any of `ports` ports.
    pub fn none(ports: usize) -> Exceptions {
        Exceptions {
            ports: vec![None; ports],
            asleep: AtomicBool::new(false),
            wake: None,
        }
    }

    /// The exception paths of `ports` (each `Some` with a tap).
    pub fn new(ports: Vec<Option<Arc<ExceptionPort>>>) -> io::Result<Exceptions> {
        // SAFETY: plain eventfd(2) call with constant arguments.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Exceptions {
            ports,
            asleep: AtomicBool::new(false),
            // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
            wake: Some(unsafe { OwnedFd::from_raw_fd(raw) }),
        })
    }

    pub fn port(&self, pi: usize) -> Option<&Arc<ExceptionPort>> {
        self.ports.get(pi).and_then(Option::as_ref)
    }

    pub fn any(&self) -> bool {
        self.ports.iter().any(Option::is_some)
    }

    /// Wakes the exception thread if it sleeps; called by a worker after a
    /// burst in which it queued frames for the kernel.
    pub fn wake(&self) {
        // Pairs with the fence in `sleep`: either the thread sees the
        // frame queued before it sleeps, or this sees it asleep.
        fence(Ordering::SeqCst);
        if self.asleep.load(Ordering::Relaxed) && self.asleep.swap(false, Ordering::Relaxed) {
            if let Some(fd) = &self.wake {
                let one: u64 = 1;
                // SAFETY: writes the 8 bytes of `one`, as eventfd expects.
                unsafe {
                    libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8);
                }
            }
        }
    }

    /// What the exception thread sleeps on: the TAPs and the wake-up.
    fn pollfds(&self, taps: &[OpenTap]) -> Vec<libc::pollfd> {
        taps.iter()
            .map(|(_, t)| t.fd())
            .chain(self.wake.as_ref().map(AsRawFd::as_raw_fd))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect()
    }

    /// Sleeps on `fds` ([`Exceptions::pollfds`]) until a TAP has a frame,
    /// a worker wakes the thread, or [`THREAD_SLEEP`] passes; at once if a
    /// frame for the kernel waits.
    fn sleep(&self, taps: &[OpenTap], fds: &mut [libc::pollfd]) {
        self.asleep.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if taps.iter().all(|(ep, _)| ep.to_kernel.is_empty()) {
            let ms = libc::c_int::try_from(THREAD_SLEEP.as_millis()).unwrap_or(100);
            // SAFETY: `fds` is a valid, exclusively borrowed array of
            // `fds.len()` pollfds for the duration of the call.
            unsafe {
                libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms);
            }
        }
        self.asleep.store(false, Ordering::Relaxed);
        if let Some(fd) = &self.wake {
            let mut v: u64 = 0;
            // SAFETY: reads at most the 8 bytes of `v`; non-blocking.
            unsafe {
                libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8);
            }
        }
    }
}

/// What a worker classifies with on one port: the port's addresses and
/// the servers probed from them, for one configuration generation.
#[derive(Debug, Default, Clone)]
pub struct PortPlan {
    pub addresses: Vec<IpNet>,
    pub probed: Vec<IpAddr>,
}

/// The [`PortPlan`] of every port of `snap` (empty for ports without a
/// tap).
pub fn plan(snap: &Snapshot, ex: &Exceptions) -> Vec<PortPlan> {
    let probes = crate::health::probe_sources(snap);
    snap.cfg
        .ports
        .iter()
        .enumerate()
        .map(|(pi, port)| {
            if ex.port(pi).is_none() {
                return PortPlan::default();
            }
            let mine = |a: &IpAddr| port.addresses.iter().any(|n| n.addr() == *a);
            let mut probed: Vec<IpAddr> = probes
                .iter()
                .filter(|(src, _)| mine(src))
                .map(|(_, dst)| *dst)
                .collect();
            probed.sort_unstable();
            probed.dedup();
            PortPlan {
                addresses: port.addresses.clone(),
                probed,
            }
        })
        .collect()
}

/// A port's exception path and its TAP, for the exception thread.
pub type OpenTap = (Arc<ExceptionPort>, Tap);

/// Creates and configures the TAP of every port with a `tap`: `macs` and
/// `mtus` by port index.
pub fn open(
    snap: &Snapshot,
    macs: &[[u8; 6]],
    mtus: &[u32],
    frame_size: usize,
) -> io::Result<(Exceptions, Vec<OpenTap>)> {
    let cfg = &snap.cfg;
    if cfg.ports.iter().all(|p| p.tap.is_none()) {
        return Ok((Exceptions::none(cfg.ports.len()), Vec::new()));
    }
    let mut ports = Vec::new();
    let mut taps = Vec::new();
    for (pi, p) in cfg.ports.iter().enumerate() {
        let Some(name) = &p.tap else {
            ports.push(None);
            continue;
        };
        let mac = macs.get(pi).copied().unwrap_or_default();
        let mtu = mtus.get(pi).copied().filter(|&m| m >= 68).unwrap_or(1500);
        let v6 = p.addresses.iter().any(|a| a.addr().is_ipv6());
        let ll = v6.then(|| link_local(mac));
        let tap =
            Tap::create(name).map_err(|e| io::Error::new(e.kind(), format!("tap {name}: {e}")))?;
        tap.configure(mac, mtu, &p.addresses, ll)
            .map_err(|e| io::Error::new(e.kind(), format!("tap {name}: {e}")))?;
        // Room for the MTU and an Ethernet header either way.
        let size = frame_size.max(mtu as usize + 18);
        let ep = Arc::new(ExceptionPort::new(
            name,
            ll,
            cfg.dataplane.exception_queue,
            size,
        ));
        tracing::info!(port = %p.name, tap = %name, mtu, "exception path open");
        ports.push(Some(ep.clone()));
        taps.push((ep, tap));
    }
    Ok((Exceptions::new(ports)?, taps))
}

/// The exception thread: moves frames between the queues and the TAPs
/// until `stop`; the TAPs go with it.
pub fn run(ex: &Exceptions, taps: Vec<OpenTap>, stop: &AtomicBool) {
    let size = taps
        .iter()
        .map(|(ep, _)| ep.pool.frame_size())
        .max()
        .unwrap_or(2048);
    let mut scratch = vec![0u8; size + 1];
    let mut fds = ex.pollfds(&taps);
    let mut write_errors = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut moved = 0;
        for (ep, tap) in &taps {
            for _ in 0..THREAD_BATCH {
                let Some(buf) = ep.pop_up() else { break };
                moved += 1;
                match tap.write(buf.data()) {
                    Ok(_) => {
                        ep.counters.to_kernel.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        ep.counters.drop_one();
                        write_errors += 1;
                        if write_errors.is_power_of_two() {
                            tracing::warn!(tap = %ep.tap, "writing to the TAP: {e} ({write_errors} so far)");
                        }
                    }
                }
            }
            for _ in 0..THREAD_BATCH {
                let n = match tap.read(&mut scratch) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::debug!(tap = %ep.tap, "reading from the TAP: {e}");
                        break;
                    }
                };
                moved += 1;
                // Longer than a buffer (the read filled all of scratch):
                // more than the MTU; dropped.
                if n < scratch.len() {
                    ep.push_down(&scratch[..n]);
                } else {
                    ep.counters.drop_one();
                }
            }
        }
        if moved == 0 {
            ex.sleep(&taps, &mut fds);
        }
    }
}

#[cfg(test)]
mod tests {
    use lb_core::packet::{self, FrameSpec, IpProtocol};

    use super::*;

    fn tagged_udp() -> Vec<u8> {
        packet::build_frame(&FrameSpec {
            vlan: Some(100),
            src: "198.18.10.1".parse().expect("v4"),
            dst: "198.18.10.11".parse().expect("v4"),
            proto: IpProtocol::UDP,
            sport: 49152,
            dport: 3784,
            payload: vec![7; 24],
            ..FrameSpec::default()
        })
    }

    #[test]
    fn frames_go_up_untagged_and_a_full_queue_drops_and_counts() {
        let ep = ExceptionPort::new("lbd-t", None, 16, 2048);
        let f = tagged_udp();
        let p = packet::parse(&f).expect("parses");
        for _ in 0..16 {
            assert!(ep.push_up(&f, &p, false));
        }
        assert!(!ep.push_up(&f, &p, false), "the 17th does not fit");
        assert_eq!(ep.counters.drops.load(Ordering::Relaxed), 1);
        let up = ep.pop_up().expect("queued");
        assert_eq!(up.data().len(), f.len() - 4, "the tag is gone");
        assert_eq!(&up.data()[12..14], &[0x08, 0x00]);
        assert_eq!(&up.data()[14..], &f[18..]);
    }

    #[test]
    fn a_partial_checksum_is_completed_on_the_way_up() {
        let ep = ExceptionPort::new("lbd-t", None, 16, 2048);
        let mut f = packet::build_frame(&FrameSpec {
            src: "198.18.10.1".parse().expect("v4"),
            dst: "198.18.10.11".parse().expect("v4"),
            proto: IpProtocol::TCP,
            sport: 40000,
            dport: 179,
            payload: b"OPEN".to_vec(),
            ..FrameSpec::default()
        });
        let p = packet::parse(&f).expect("parses");
        assert!(packet::verify_l4_checksum(&f, &p));
        let good = f.clone();
        // What veth hands over under CHECKSUM_PARTIAL: the pseudo-header sum.
        let at = p.l4_offset + 16;
        f[at..at + 2].copy_from_slice(&[0x12, 0x34]);
        assert!(ep.push_up(&f, &p, true));
        let up = ep.pop_up().expect("queued");
        assert_eq!(up.data(), &good[..]);
    }

    #[test]
    fn the_wake_up_is_written_only_while_the_thread_sleeps() {
        let ex = Exceptions::new(vec![None]).expect("eventfd");
        let fd = ex.wake.as_ref().expect("eventfd").as_raw_fd();
        let pending = || {
            let mut v: u64 = 0;
            // SAFETY: reads at most the 8 bytes of `v`; non-blocking.
            let n = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
            if n == 8 {
                v
            } else {
                0
            }
        };
        ex.wake();
        assert_eq!(pending(), 0, "awake: no system call");
        ex.asleep.store(true, Ordering::Relaxed);
        ex.wake();
        ex.wake();
        assert_eq!(pending(), 1, "one wake-up for a sleeping thread");
    }
}
