//! nginx's smooth weighted round-robin.

use super::{eligible, scaled, Scheduler};

/// Smooth weighted round-robin, as in nginx (`ngx_http_upstream_get_peer`):
/// on each pick every eligible server's `current` grows by its weight, the
/// largest `current` wins (ties to the lowest index) and loses the total
/// eligible weight. Over any `total weight` consecutive picks with a stable
/// eligible set each server is chosen exactly `weight` times, spread out
/// (5, 1, 1 gives a a b a c a a).
///
/// A server that is down keeps its `current` (as in nginx) and resumes
/// from it when it comes back.
#[derive(Debug, Clone)]
pub struct SmoothWrr {
    weights: Vec<u32>,
    current: Vec<i64>,
}

impl SmoothWrr {
    pub fn new(weights: &[u8]) -> Self {
        SmoothWrr {
            weights: scaled(weights),
            current: vec![0; weights.len()],
        }
    }
}

impl Scheduler for SmoothWrr {
    fn uses_hash(&self) -> bool {
        false
    }

    fn pick(&mut self, up: &[bool], _hash: u64) -> Option<usize> {
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for i in 0..self.weights.len() {
            if !eligible(up, &self.weights, i) {
                continue;
            }
            let w = i64::from(self.weights[i]);
            self.current[i] += w;
            total += w;
            match best {
                Some(b) if self.current[b] >= self.current[i] => {}
                _ => best = Some(i),
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
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

    fn picks(s: &mut SmoothWrr, up: &[bool], n: usize) -> Vec<usize> {
        (0..n).map(|_| s.pick(up, 0).expect("eligible")).collect()
    }

    fn counts(p: &[usize], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in p {
            c[i] += 1;
        }
        c
    }

    #[test]
    fn nginx_sequence() {
        let mut s = SmoothWrr::new(&[5, 1, 1]);
        let up = [true; 3];
        // a a b a c a a, twice.
        assert_eq!(
            picks(&mut s, &up, 14),
            [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]
        );
    }

    #[test]
    fn equal_weights_alternate() {
        let mut s = SmoothWrr::new(&[2, 2, 2]);
        assert_eq!(picks(&mut s, &[true; 3], 7), [0, 1, 2, 0, 1, 2, 0]);
        let mut s = SmoothWrr::new(&[1, 1]);
        assert_eq!(picks(&mut s, &[true; 2], 4), [0, 1, 0, 1]);
    }

    #[test]
    fn exact_proportions() {
        let mut s = SmoothWrr::new(&[3, 1]);
        for rounds in 1..50 {
            let p = picks(&mut s, &[true; 2], 4);
            assert_eq!(counts(&p, 2), [3, 1], "round {rounds}");
        }
        let mut s = SmoothWrr::new(&[100, 37, 1, 0, 12]);
        let p = picks(&mut s, &[true; 5], 150 * 40);
        assert_eq!(counts(&p, 5), [4000, 1480, 40, 0, 480]);
    }

    #[test]
    fn down_servers_skipped_rest_keep_proportions() {
        let mut s = SmoothWrr::new(&[3, 5, 1]);
        let up = [true, false, true];
        let p = picks(&mut s, &up, 400);
        assert_eq!(counts(&p, 3), [300, 0, 100]);
        // Flapping: after server 1 comes back, the long-run shares hold
        // within one pick per window.
        let p = picks(&mut s, &[true; 3], 9 * 100);
        let c = counts(&p, 3);
        assert!(
            c[0].abs_diff(300) <= 1 && c[1].abs_diff(500) <= 1 && c[2].abs_diff(100) <= 1,
            "{c:?}"
        );
        assert_eq!(s.pick(&[false; 3], 0), None);
        assert_eq!(s.pick(&[], 0), None);
    }

    proptest::proptest! {
        #[test]
        fn exact_shares_per_cycle(
            weights in proptest::collection::vec(0u8..=100, 1..8),
            up in proptest::collection::vec(proptest::bool::ANY, 8),
            cycles in 1usize..4,
        ) {
            let mut s = SmoothWrr::new(&weights);
            let sw = scaled(&weights);
            let total: usize = (0..weights.len())
                .filter(|&i| eligible(&up, &sw, i))
                .map(|i| usize::from(weights[i]))
                .sum();
            let p: Vec<usize> = (0..total * cycles).filter_map(|_| s.pick(&up, 0)).collect();
            proptest::prop_assert_eq!(p.len(), total * cycles);
            let c = counts(&p, weights.len());
            for (i, &w) in weights.iter().enumerate() {
                let want = if eligible(&up, &sw, i) { usize::from(w) * cycles } else { 0 };
                proptest::prop_assert_eq!(c[i], want);
            }
        }
    }

    #[test]
    fn weight_zero_never_picked() {
        let mut s = SmoothWrr::new(&[0, 1, 0]);
        assert!(picks(&mut s, &[true; 3], 50).iter().all(|&i| i == 1));
        let mut s = SmoothWrr::new(&[0, 0]);
        assert_eq!(s.pick(&[true; 2], 0), None);
    }
}
