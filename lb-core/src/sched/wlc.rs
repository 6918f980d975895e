//! Weighted least-connections.

use super::{eligible, scaled, Scheduler};

/// Weighted least-connections: picks the eligible server with the smallest
/// `active / weight`, compared exactly as `active_i * weight_j <
/// active_j * weight_i`.
///
/// Ties rotate fairly: the scan starts after the previously picked server,
/// so equally loaded servers take turns even when the caller picks several
/// times before reporting connections (an idle group does not pile onto
/// server 0).
///
/// Active counts change only through [`Scheduler::connected`] and
/// [`Scheduler::disconnected`] (saturating; unknown servers ignored).
#[derive(Debug, Clone)]
pub struct Wlc {
    weights: Vec<u32>,
    active: Vec<u32>,
    next: usize,
}

impl Wlc {
    pub fn new(weights: &[u8]) -> Self {
        Wlc {
            weights: scaled(weights),
            active: vec![0; weights.len()],
            next: 0,
        }
    }

    /// The active connection count of `server` (0 if out of range).
    pub fn active(&self, server: usize) -> u32 {
        self.active.get(server).copied().unwrap_or(0)
    }
}

impl Scheduler for Wlc {
    fn uses_hash(&self) -> bool {
        false
    }

    fn pick(&mut self, up: &[bool], _hash: u64) -> Option<usize> {
        let n = self.weights.len();
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (self.next + k) % n;
            if !eligible(up, &self.weights, i) {
                continue;
            }
            best = match best {
                Some(b)
                    if u64::from(self.active[b]) * u64::from(self.weights[i])
                        <= u64::from(self.active[i]) * u64::from(self.weights[b]) =>
                {
                    Some(b)
                }
                _ => Some(i),
            };
        }
        let b = best?;
        self.next = (b + 1) % n;
        Some(b)
    }

    fn connected(&mut self, server: usize) {
        if let Some(a) = self.active.get_mut(server) {
            *a = a.saturating_add(1);
        }
    }

    fn disconnected(&mut self, server: usize) {
        if let Some(a) = self.active.get_mut(server) {
            *a = a.saturating_sub(1);
        }
    }

    fn set_weight(&mut self, server: usize, weight: u32) {
        if let Some(w) = self.weights.get_mut(server) {
            *w = weight;
        }
    }

    fn weight(&self, server: usize) -> u32 {
        self.weights.get(server).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_least_loaded() {
        let mut s = Wlc::new(&[1, 1, 1]);
        for _ in 0..5 {
            s.connected(0);
        }
        s.connected(1);
        s.connected(1);
        s.connected(2);
        let up = [true; 3];
        assert_eq!(s.pick(&up, 0), Some(2));
        s.connected(2);
        // 5, 2, 2: ties between 1 and 2 rotate.
        let a = s.pick(&up, 0);
        let b = s.pick(&up, 0);
        assert!(
            matches!((a, b), (Some(1), Some(2)) | (Some(2), Some(1))),
            "{a:?} {b:?}"
        );
        // Server 1 down: 2 is the least loaded left.
        assert_eq!(s.pick(&[true, false, true], 0), Some(2));
        for _ in 0..5 {
            s.disconnected(0);
        }
        s.disconnected(0); // saturates
        assert_eq!(s.active(0), 0);
        assert_eq!(s.pick(&up, 0), Some(0));
        assert_eq!(s.pick(&[false; 3], 0), None);
    }

    #[test]
    fn weighted_ratio() {
        // Weight 3 vs 1: a steady state of 3:1 active connections.
        let mut s = Wlc::new(&[3, 1]);
        let up = [true; 2];
        for _ in 0..400 {
            let i = s.pick(&up, 0).expect("eligible");
            s.connected(i);
        }
        assert_eq!((s.active(0), s.active(1)), (300, 100));
        // 1 connection on a weight-3 server beats 1 on a weight-1 one.
        let mut s = Wlc::new(&[3, 1]);
        s.connected(0);
        s.connected(1);
        assert_eq!(s.pick(&up, 0), Some(0));
    }

    #[test]
    fn idle_ties_rotate() {
        let mut s = Wlc::new(&[1, 5, 1, 0]);
        let up = [true; 4];
        let p: Vec<_> = (0..6).map(|_| s.pick(&up, 0).expect("eligible")).collect();
        assert_eq!(p, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weight_zero_and_out_of_range() {
        let mut s = Wlc::new(&[0, 2]);
        s.connected(7);
        s.disconnected(7);
        for _ in 0..10 {
            let i = s.pick(&[true, true], 0).expect("eligible");
            assert_eq!(i, 1);
            s.connected(i);
        }
    }
}
