//! Pacing: a token bucket on the monotonic clock.

use std::time::{Duration, Instant};

use super::BURST;

/// Tokens the bucket holds: after a late wake-up (a busy machine) up to
/// this many frames go out back to back, in bursts of at most [`BURST`],
/// so the average rate holds; a longer stall is not made up for.
const BUCKET: f64 = (4 * BURST) as f64;

/// A token bucket of depth [`BUCKET`] on the monotonic clock, handing out
/// at most [`BURST`] tokens at a time.
#[derive(Debug)]
pub(crate) struct Pacer {
    rate: Option<f64>,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    pub(crate) fn new(rate: Option<u64>, now: Instant) -> Pacer {
        Pacer {
            rate: rate.map(|r| r as f64),
            tokens: 1.0,
            last: now,
        }
    }

    /// How many frames may go now.
    pub(crate) fn grant(&mut self, now: Instant) -> usize {
        let Some(rate) = self.rate else {
            return BURST;
        };
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * rate).min(BUCKET);
        let n = self.tokens.floor().min(BURST as f64);
        self.tokens -= n;
        n as usize
    }

    /// Time until the next token.
    pub(super) fn until_next(&self) -> Duration {
        match self.rate {
            None => Duration::ZERO,
            Some(rate) => Duration::from_secs_f64(((1.0 - self.tokens).max(0.0)) / rate),
        }
    }
}

/// Waits for the next token by sleeping, never spinning: the load
/// balancer may share the cores. Oversleeping (timer slack, ~50 µs) costs
/// no rate: the bucket has kept the tokens, and the next burst is larger.
pub(super) fn pause(d: Duration) {
    std::thread::sleep(d.max(Duration::from_micros(1)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_keeps_the_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Some(1000), t0);
        let mut sent = 0;
        for ms in 1..=1000u64 {
            sent += p.grant(t0 + Duration::from_millis(ms));
        }
        assert!((999..=1001).contains(&sent), "{sent}");
        // A long stall does not turn into a flood: the bucket holds four
        // bursts, handed out one burst at a time.
        let t1 = t0 + Duration::from_secs(10);
        let caught_up: Vec<usize> = (0..6).map(|_| p.grant(t1)).collect();
        assert_eq!(caught_up, [BURST, BURST, BURST, BURST, 0, 0]);
    }
}
