//! Local address and port allocation for FULLNAT.
//!
//! A FULLNAT session owns one (local address, port) toward its backend; the
//! port names the worker that owns the session, so that a reply landing on
//! another worker can be handed over: worker `w` of `n` allocates only ports
//! `p` with `p % n == w`.

pub mod icmp;

use std::net::IpAddr;

/// The lowest port handed out; below are the well-known and registered
/// ranges a host may use for itself.
pub const FIRST_PORT: u16 = 1025;

/// Ports from here up are the health checker's probe ports: no session
/// ever uses them, so a probe's reply is never mistaken for session traffic.
pub const PROBE_FIRST_PORT: u16 = 61000;

/// The highest port handed out to sessions.
pub const LAST_PORT: u16 = PROBE_FIRST_PORT - 1;

/// How many candidate ports one allocation tries before giving up, so that
/// a nearly exhausted range costs a bounded amount of work per packet.
pub const MAX_PROBES: usize = 64;

/// The worker that owns the FULLNAT session using local port `port`.
pub fn port_owner(port: u16, workers: u16) -> u16 {
    port % workers.max(1)
}

/// Per-worker port cursors, one per local address in use.
#[derive(Debug, Clone)]
pub struct PortAllocator {
    worker: u16,
    workers: u16,
    cursors: Vec<(IpAddr, u16)>,
}

impl PortAllocator {
    pub fn new(worker: u16, workers: u16) -> PortAllocator {
        let workers = workers.max(1);
        PortAllocator {
            worker: worker % workers,
            workers,
            cursors: Vec::new(),
        }
    }

    /// The first port of this worker's share.
    fn first(&self) -> u16 {
        let mut p = FIRST_PORT;
        while port_owner(p, self.workers) != self.worker {
            p += 1;
        }
        p
    }

    /// A port of this worker's share on `local` for which `is_free` holds
    /// (the caller checks that the reply tuple it makes is not in use).
    pub fn allocate(&mut self, local: IpAddr, mut is_free: impl FnMut(u16) -> bool) -> Option<u16> {
        let first = self.first();
        let step = self.workers;
        let pos = match self.cursors.iter().position(|(a, _)| *a == local) {
            Some(pos) => pos,
            None => {
                self.cursors.push((local, first));
                self.cursors.len() - 1
            }
        };
        let mut port = self.cursors[pos].1;
        for _ in 0..MAX_PROBES {
            let candidate = port;
            port = match port.checked_add(step) {
                Some(p) if p <= LAST_PORT => p,
                _ => first,
            };
            if is_free(candidate) {
                self.cursors[pos].1 = port;
                return Some(candidate);
            }
        }
        self.cursors[pos].1 = port;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_partitioned_between_workers() {
        let local = IpAddr::from([198, 19, 1, 250]);
        let mut a = PortAllocator::new(0, 2);
        let mut b = PortAllocator::new(1, 2);
        for _ in 0..100 {
            let pa = a.allocate(local, |_| true).expect("free");
            let pb = b.allocate(local, |_| true).expect("free");
            assert_eq!(port_owner(pa, 2), 0);
            assert_eq!(port_owner(pb, 2), 1);
        }
    }

    #[test]
    fn first_port_and_sequence() {
        let local = IpAddr::from([198, 19, 1, 250]);
        let mut a = PortAllocator::new(0, 1);
        assert_eq!(a.allocate(local, |_| true), Some(1025));
        assert_eq!(a.allocate(local, |_| true), Some(1026));
        // Taken ports are skipped.
        assert_eq!(a.allocate(local, |p| p != 1027), Some(1028));
    }

    #[test]
    fn wraps_around_and_gives_up_when_nothing_is_free() {
        let local = IpAddr::from([198, 19, 1, 250]);
        let mut a = PortAllocator::new(0, 1);
        a.cursors.push((local, LAST_PORT));
        assert_eq!(a.allocate(local, |_| true), Some(LAST_PORT));
        assert_eq!(a.allocate(local, |_| true), Some(FIRST_PORT));
        assert_eq!(a.allocate(local, |_| false), None);
    }
}
