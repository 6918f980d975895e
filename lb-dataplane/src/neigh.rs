//! The neighbour table: next-hop address → Ethernet address, per port,
//! learned from ARP and neighbour discovery.
//!
//! Workers read it on every forwarded packet without a lock (one atomic
//! load of the current map); the rare writes copy the map and publish the
//! copy.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

/// How long a learned entry is used without being refreshed.
pub const REACHABLE: Duration = Duration::from_secs(60);

/// After this age a worker using the entry asks again (the entry keeps
/// working until [`REACHABLE`]).
pub const REFRESH: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub mac: [u8; 6],
    pub learned: Instant,
}

type Map = HashMap<(u32, IpAddr), Entry>;

#[derive(Debug, Default)]
pub struct Neighbors {
    map: ArcSwap<Map>,
    write: Mutex<()>,
}

impl Neighbors {
    pub fn new() -> Arc<Neighbors> {
        Arc::new(Neighbors::default())
    }

    /// The entry for `addr` on `port`, if it is still reachable.
    pub fn lookup(&self, port: u32, addr: IpAddr, now: Instant) -> Option<Entry> {
        self.map
            .load()
            .get(&(port, addr))
            .copied()
            .filter(|e| now.saturating_duration_since(e.learned) < REACHABLE)
    }

    /// Records `addr` → `mac` on `port`. Refreshing an unchanged entry less
    /// than a second old is skipped, so a flood of ARP does not turn into a
    /// flood of copies.
    pub fn learn(&self, port: u32, addr: IpAddr, mac: [u8; 6], now: Instant) {
        if addr.is_unspecified() || mac == [0; 6] || mac[0] & 1 == 1 {
            return;
        }
        if let Some(e) = self.map.load().get(&(port, addr)) {
            if e.mac == mac && now.saturating_duration_since(e.learned) < Duration::from_secs(1) {
                return;
            }
        }
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut next: Map = (**self.map.load()).clone();
        next.retain(|_, e| now.saturating_duration_since(e.learned) < REACHABLE);
        next.insert((port, addr), Entry { mac, learned: now });
        self.map.store(Arc::new(next));
    }

    /// Every entry, for `lbctl stats`.
    pub fn entries(&self) -> Vec<((u32, IpAddr), Entry)> {
        let mut v: Vec<_> = self.map.load().iter().map(|(k, e)| (*k, *e)).collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_ages_and_ignores_bogus_addresses() {
        let n = Neighbors::new();
        let t0 = Instant::now();
        let a: IpAddr = "198.19.1.11".parse().expect("addr");
        assert!(n.lookup(1, a, t0).is_none());
        n.learn(1, a, [2, 0, 0, 0, 0, 1], t0);
        assert_eq!(n.lookup(1, a, t0).map(|e| e.mac), Some([2, 0, 0, 0, 0, 1]));
        // Per port.
        assert!(n.lookup(0, a, t0).is_none());
        // Aged out.
        assert!(n.lookup(1, a, t0 + REACHABLE).is_none());
        // Multicast and zero MACs are never learned.
        let b: IpAddr = "198.19.1.12".parse().expect("addr");
        n.learn(1, b, [1, 0, 0x5e, 0, 0, 1], t0);
        n.learn(1, b, [0; 6], t0);
        assert!(n.lookup(1, b, t0).is_none());
        // A changed MAC replaces the old one at once.
        n.learn(1, a, [2, 0, 0, 0, 0, 2], t0);
        assert_eq!(n.lookup(1, a, t0).map(|e| e.mac), Some([2, 0, 0, 0, 0, 2]));
    }
}
