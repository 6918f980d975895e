//! Local address and port allocation for FULLNAT.
//!
//! A FULLNAT session owns one (local address, port) toward its backend; the
//! port names the worker that owns the session, so that a reply landing on
//! another worker can be handed over: worker `w` of `n` allocates only ports
//! `p` with `p % n == w`.
//!
//! In a cluster, node `i` of `n` takes the `i`-th of `n` contiguous slices
//! of the session ports ([`node_ports`]), so that two nodes never use the
//! same (local address, port); the workers share the node's slice as
//! above, which keeps `p % n` naming the owning worker.

pub mod icmp;
pub mod rss;

use std::net::IpAddr;
use std::ops::RangeInclusive;

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

/// How many candidates of its share a steered allocation looks at, per
/// pass, for [`MAX_PROBES`] that steering accepts (about one in `workers`
/// is).
pub const MAX_STEER_CANDIDATES: usize = MAX_PROBES * 16;

/// The session ports of node `node` (1-based) of a cluster of `nodes`:
/// the `node`-th of `nodes` contiguous, nearly equal slices of
/// [`FIRST_PORT`]`..=`[`LAST_PORT`]. A single node (`nodes <= 1`) has
/// them all; a `node` outside `1..=nodes` is clamped into it.
pub fn node_ports(node: u16, nodes: u16) -> RangeInclusive<u16> {
    let nodes = u32::from(nodes.max(1));
    let node = u32::from(node.clamp(1, nodes as u16));
    let total = u32::from(LAST_PORT - FIRST_PORT) + 1;
    let at = |k: u32| u32::from(FIRST_PORT) + total * k / nodes;
    let lo = u16::try_from(at(node - 1)).expect("within the port range");
    let hi = u16::try_from(at(node) - 1).expect("within the port range");
    lo..=hi
}

/// The worker that owns the FULLNAT session using local port `port`.
pub fn port_owner(port: u16, workers: u16) -> u16 {
    port % workers.max(1)
}

/// Per-worker port allocation, per local address in use.
///
/// A port goes to one session at a time where possible: each local address
/// counts the sessions of this worker that use each port, and an allocation
/// first looks for a port nobody uses, which needs no session-table lookup
/// (a miss in a big table costs a trip to memory). Only when the probed
/// ports are all taken does it share one: a port may serve sessions toward
/// different backends, as long as the reply tuple is free (`is_free`).
#[derive(Debug, Clone)]
pub struct PortAllocator {
    /// The first port of this worker's share; every `workers`-th port
    /// after it, up to `last`, is this worker's too.
    first: u16,
    /// The last port the share may reach (the end of the node's slice).
    last: u16,
    worker: u16,
    workers: u16,
    locals: ahash::AHashMap<IpAddr, LocalPorts>,
}

/// A port handed out by [`PortAllocator::allocate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalPort {
    pub port: u16,
    /// Other sessions of this worker use the port too (toward other
    /// backends); false when the session has it to itself, which makes
    /// its reply tuple unique without a look at the session table.
    pub shared: bool,
}

/// The cursor and per-port session counts of one local address.
#[derive(Debug, Clone)]
struct LocalPorts {
    /// The next port to try.
    next: u16,
    /// Sessions using each port; `u8::MAX` sticks (the count is no longer
    /// known, so the port is only shared from then on).
    users: Box<[u8]>,
}

impl PortAllocator {
    /// Worker `worker` of `workers`, with every session port
    /// ([`FIRST_PORT`]`..=`[`LAST_PORT`]) to share.
    pub fn new(worker: u16, workers: u16) -> PortAllocator {
        let mut a = PortAllocator {
            first: FIRST_PORT,
            last: LAST_PORT,
            worker,
            workers: workers.max(1),
            locals: ahash::AHashMap::new(),
        };
        a.set_ports(FIRST_PORT..=LAST_PORT);
        a
    }

    /// Limits this worker's share to `ports` (a cluster node's slice,
    /// [`node_ports`]), clamped to the session ports: ports handed out
    /// from now on lie in it. Sessions holding ports outside it keep them
    /// and give them back as usual.
    pub fn set_ports(&mut self, ports: RangeInclusive<u16>) {
        let lo = (*ports.start()).max(FIRST_PORT);
        let hi = (*ports.end()).min(LAST_PORT);
        let mut first = lo;
        while port_owner(first, self.workers) != self.worker % self.workers && first < hi {
            first += 1;
        }
        self.first = first;
        self.last = hi.max(first);
    }

    /// The ports this worker's share is taken from.
    pub fn ports(&self) -> RangeInclusive<u16> {
        self.first..=self.last
    }

    /// A port of this worker's share on `local`: one no session uses if
    /// one of the next [`MAX_PROBES`] candidates is, else one of them for
    /// which `is_free` holds (the caller checks that the reply tuple it
    /// makes is not in use). Give it back with [`PortAllocator::release`].
    pub fn allocate(
        &mut self,
        local: IpAddr,
        is_free: impl FnMut(u16) -> bool,
    ) -> Option<LocalPort> {
        self.allocate_where(local, |_| true, MAX_PROBES, is_free)
    }

    /// As [`PortAllocator::allocate`], among the ports of the share that
    /// `steer` accepts (those whose reply reaches this worker's RX queue):
    /// up to [`MAX_PROBES`] accepted candidates out of at most
    /// [`MAX_STEER_CANDIDATES`].
    pub fn allocate_steered(
        &mut self,
        local: IpAddr,
        steer: impl FnMut(u16) -> bool,
        is_free: impl FnMut(u16) -> bool,
    ) -> Option<LocalPort> {
        self.allocate_where(local, steer, MAX_STEER_CANDIDATES, is_free)
    }

    fn allocate_where(
        &mut self,
        local: IpAddr,
        mut accept: impl FnMut(u16) -> bool,
        max_candidates: usize,
        mut is_free: impl FnMut(u16) -> bool,
    ) -> Option<LocalPort> {
        let (first, last, step) = (self.first, self.last, self.workers);
        let ports = self.ports_of(local);
        let next = |p: u16| match p.checked_add(step) {
            Some(p) if p <= last => p,
            _ => first,
        };
        // A cursor left outside the share (its slice changed) starts over.
        let start = if (first..=last).contains(&ports.next) {
            ports.next
        } else {
            first
        };
        for exclusive in [true, false] {
            let mut port = start;
            let mut probes = 0;
            for _ in 0..max_candidates {
                let candidate = port;
                port = next(port);
                if !accept(candidate) {
                    continue;
                }
                let users = &mut ports.users[usize::from(candidate)];
                let take = if exclusive {
                    *users == 0
                } else {
                    is_free(candidate)
                };
                if take {
                    *users = users.saturating_add(1);
                    ports.next = port;
                    return Some(LocalPort {
                        port: candidate,
                        shared: !exclusive,
                    });
                }
                probes += 1;
                if probes == MAX_PROBES {
                    break;
                }
            }
            ports.next = port;
        }
        None
    }

    /// Sets up the port counts of `local` (64 KiB) now, so that its first
    /// session does not pay for them (e.g. for every local address when a
    /// configuration is adopted). Nothing changes if they exist.
    pub fn prepare(&mut self, local: IpAddr) {
        self.ports_of(local);
    }

    fn ports_of(&mut self, local: IpAddr) -> &mut LocalPorts {
        let first = self.first;
        self.locals.entry(local).or_insert_with(|| LocalPorts {
            next: first,
            users: vec![0u8; usize::from(u16::MAX) + 1].into_boxed_slice(),
        })
    }

    /// A session using `port` on `local` ended.
    pub fn release(&mut self, local: IpAddr, port: u16) {
        if let Some(ports) = self.locals.get_mut(&local) {
            let users = &mut ports.users[usize::from(port)];
            if *users != u8::MAX {
                *users = users.saturating_sub(1);
            }
        }
    }

    /// Sessions of this worker using `port` on `local` (`u8::MAX`: many).
    pub fn users(&self, local: IpAddr, port: u16) -> u8 {
        self.locals
            .get(&local)
            .map_or(0, |p| p.users[usize::from(port)])
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
            let pa = a.allocate(local, |_| true).expect("free").port;
            let pb = b.allocate(local, |_| true).expect("free").port;
            assert_eq!(port_owner(pa, 2), 0);
            assert_eq!(port_owner(pb, 2), 1);
        }
    }

    #[test]
    fn first_port_and_sequence() {
        let local = IpAddr::from([198, 19, 1, 250]);
        let mut a = PortAllocator::new(0, 1);
        // Preparing twice changes nothing.
        a.prepare(local);
        a.prepare(local);
        assert_eq!(a.locals.len(), 1);
        assert_eq!(a.users(local, 1025), 0);
        assert_eq!(
            a.allocate(local, |_| true),
            Some(LocalPort {
                port: 1025,
                shared: false
            })
        );
        assert_eq!(a.allocate(local, |_| true).map(|p| p.port), Some(1026));
        assert_eq!(a.users(local, 1026), 1);
        // A port nobody uses needs no check of the reply tuple.
        assert_eq!(
            a.allocate(local, |_| panic!("not asked")).map(|p| p.port),
            Some(1027)
        );
        a.release(local, 1026);
        assert_eq!(a.users(local, 1026), 0);
        assert_eq!(a.allocate(local, |_| true).map(|p| p.port), Some(1028));
    }

    #[test]
    fn shares_a_port_only_when_every_probed_one_is_taken() {
        let local = IpAddr::from([198, 19, 1, 250]);
        let mut a = PortAllocator::new(0, 1);
        let all = usize::from(LAST_PORT - FIRST_PORT) + 1;
        for _ in 0..all {
            a.allocate(local, |_| panic!("a free port exists"))
                .expect("free");
        }
        assert_eq!(a.users(local, FIRST_PORT), 1);
        assert_eq!(a.users(local, LAST_PORT), 1);
        // Every port has a session: share the first whose reply tuple is free.
        let shared = a.allocate(local, |p| p > FIRST_PORT + 1);
        assert_eq!(
            shared,
            Some(LocalPort {
                port: FIRST_PORT + 2,
                shared: true
            })
        );
        assert_eq!(a.users(local, FIRST_PORT + 2), 2);
        assert_eq!(a.allocate(local, |_| false).map(|p| p.port), None);
        // A port given back is used on its own again.
        a.release(local, 5000);
        a.locals.get_mut(&local).expect("in use").next = 4990;
        assert_eq!(
            a.allocate(local, |_| panic!("5000 is free"))
                .map(|p| p.port),
            Some(5000)
        );
    }

    #[test]
    fn a_saturated_count_sticks() {
        let local = IpAddr::from([198, 19, 1, 250]);
        let mut a = PortAllocator::new(0, 1);
        a.allocate(local, |_| true).expect("free");
        a.locals.get_mut(&local).expect("in use").users[usize::from(FIRST_PORT)] = u8::MAX;
        a.release(local, FIRST_PORT);
        assert_eq!(a.users(local, FIRST_PORT), u8::MAX);
    }

    #[test]
    fn wraps_around_and_gives_up_when_nothing_is_free() {
        let local = IpAddr::from([198, 19, 1, 250]);
        let mut a = PortAllocator::new(0, 1);
        a.allocate(local, |_| true).expect("free");
        a.locals.get_mut(&local).expect("in use").next = LAST_PORT;
        assert_eq!(a.allocate(local, |_| true).map(|p| p.port), Some(LAST_PORT));
        // FIRST_PORT is taken: the next free one.
        assert_eq!(
            a.allocate(local, |_| true).map(|p| p.port),
            Some(FIRST_PORT + 1)
        );
        let mut b = PortAllocator::new(0, 1);
        for _ in 0..MAX_PROBES {
            b.allocate(local, |_| true).expect("free");
        }
        b.locals.get_mut(&local).expect("in use").next = FIRST_PORT;
        assert_eq!(b.allocate(local, |_| false).map(|p| p.port), None);
    }

    #[test]
    fn steered_ports_are_in_the_share_and_accepted() {
        let local = IpAddr::from([198, 19, 1, 250]);
        let mut a = PortAllocator::new(1, 4);
        for _ in 0..1000 {
            let p = a
                .allocate_steered(local, |p| p % 7 == 3, |_| panic!("a free port exists"))
                .expect("free")
                .port;
            assert_eq!(port_owner(p, 4), 1);
            assert_eq!(p % 7, 3);
        }
        // Nothing accepted: no port (the caller then allocates unsteered),
        // after a bounded look.
        let mut looked = 0;
        assert_eq!(
            a.allocate_steered(
                local,
                |_| {
                    looked += 1;
                    false
                },
                |_| true
            ),
            None
        );
        assert_eq!(looked, 2 * MAX_STEER_CANDIDATES);
    }

    #[test]
    fn node_slices_partition_the_session_ports() {
        for nodes in [1u16, 2, 3, 7, 64] {
            let mut next = FIRST_PORT;
            for node in 1..=nodes {
                let slice = node_ports(node, nodes);
                assert_eq!(*slice.start(), next, "node {node} of {nodes}");
                assert!(slice.start() <= slice.end());
                let len = usize::from(slice.end() - slice.start()) + 1;
                let fair = (usize::from(LAST_PORT - FIRST_PORT) + 1) / usize::from(nodes);
                assert!(len == fair || len == fair + 1, "{len} vs {fair}");
                next = slice.end().wrapping_add(1);
            }
            assert_eq!(next, LAST_PORT + 1, "{nodes} nodes cover every port");
        }
        assert_eq!(node_ports(1, 1), FIRST_PORT..=LAST_PORT);
        assert_eq!(node_ports(0, 0), FIRST_PORT..=LAST_PORT);
        assert_eq!(node_ports(1, 3), 1025..=21015);
        assert_eq!(node_ports(3, 3), 41008..=LAST_PORT);
    }

    /// Every worker of every node allocates on one local address until
    /// its share is used up: no (local address, port) is handed out twice
    /// across the cluster, each port lies in its node's slice, and the
    /// port still names the worker that owns the session.
    #[test]
    fn nodes_never_share_a_local_port() {
        let local = IpAddr::from([198, 19, 2, 21]);
        for (nodes, workers) in [(2u16, 1u16), (3, 2), (3, 4), (5, 3)] {
            let mut owner_of: std::collections::HashMap<u16, (u16, u16)> = Default::default();
            for node in 1..=nodes {
                let slice = node_ports(node, nodes);
                for w in 0..workers {
                    let mut a = PortAllocator::new(w, workers);
                    a.set_ports(slice.clone());
                    assert!(slice.contains(a.ports().start()) && slice.contains(a.ports().end()));
                    let share = a.ports().filter(|q| port_owner(*q, workers) == w).count();
                    assert!(share > 0);
                    for _ in 0..share {
                        let p = a
                            .allocate(local, |_| panic!("a port nobody uses is left"))
                            .expect("free");
                        assert!(!p.shared && slice.contains(&p.port), "node {node}: {p:?}");
                        assert_eq!(port_owner(p.port, workers), w);
                        if let Some(prev) = owner_of.insert(p.port, (node, w)) {
                            panic!("port {} of node {node} worker {w} also {prev:?}", p.port);
                        }
                    }
                    // Full: sharing stays in the share.
                    let shared = a.allocate(local, |_| true).expect("a port to share");
                    assert!(shared.shared && slice.contains(&shared.port));
                    assert_eq!(port_owner(shared.port, workers), w);
                }
            }
            // Every session port went to exactly one (node, worker).
            assert_eq!(owner_of.len(), usize::from(LAST_PORT - FIRST_PORT) + 1);
        }
    }

    #[test]
    fn a_slice_set_after_use_moves_the_cursor_into_it() {
        let local = IpAddr::from([198, 19, 2, 21]);
        let mut a = PortAllocator::new(1, 2);
        assert_eq!(a.allocate(local, |_| true).map(|p| p.port), Some(1025));
        a.set_ports(node_ports(2, 2));
        let p = a.allocate(local, |_| true).expect("free").port;
        assert_eq!(p, 31013);
        assert!(node_ports(2, 2).contains(&p));
        assert_eq!(port_owner(p, 2), 1);
        // The old port is given back as usual.
        a.release(local, 1025);
        assert_eq!(a.users(local, 1025), 0);
    }

    /// Each worker's steered ports make replies the NIC's RSS puts on
    /// that worker's queue, for random backends and local addresses of
    /// both families.
    #[test]
    fn steered_replies_land_on_the_allocating_worker() {
        use rss::tests::{default_reta, input, Rng};
        use rss::{symmetric_key, toeplitz_hash, RssSteering};
        let key = symmetric_key(40);
        for workers in [2u16, 3, 4] {
            let reta = default_reta(128, workers);
            let queue_workers: Vec<u16> = (0..workers).collect();
            let steering = RssSteering::new(&key, &reta, &queue_workers).expect("valid");
            // Node 2 of 3: steering works inside the node's slice.
            let slice = node_ports(2, 3);
            let mut allocators: Vec<PortAllocator> = (0..workers)
                .map(|w| {
                    let mut a = PortAllocator::new(w, workers);
                    a.set_ports(slice.clone());
                    a
                })
                .collect();
            let mut rng = Rng(u64::from(workers));
            for i in 0..3000 {
                let v6 = i % 2 == 1;
                let (backend, local, bport) = (rng.addr(v6), rng.addr(v6), rng.port());
                let w = usize::from(rng.port() % workers);
                let reply = steering
                    .reply_hash(backend, bport, local)
                    .expect("one family");
                let lport = allocators[w]
                    .allocate_steered(local, |p| steering.lands_on(reply, p, w as u16), |_| true)
                    .expect("a steered port")
                    .port;
                assert_eq!(usize::from(port_owner(lport, workers)), w);
                assert!(slice.contains(&lport), "{lport}");
                let reply_key = crate::flow::FlowKey {
                    src: backend,
                    dst: local,
                    proto: crate::model::proto::TCP,
                    sport: bport,
                    dport: lport,
                };
                let hash = toeplitz_hash(&key, &input(&reply_key));
                assert_eq!(usize::from(reta[(hash & 127) as usize]), w, "{reply_key:?}");
            }
        }
    }
}
