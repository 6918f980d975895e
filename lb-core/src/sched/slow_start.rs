//! Slow start and drain: a server's effective weight as a function of its
//! state and of time (given, never read: lb-core has no clock).
//!
//! ```
//! use lb_core::model::SchedulerKind;
//! use lb_core::sched::slow_start::{effective, ramp_weight, ServerStatus};
//! use lb_core::sched::{ServerState, WEIGHT_SCALE};
//! use lb_core::NANOS_PER_SEC as S;
//!
//! // Weight 100, a 10 s slow start: 20 steps for WRR, from 2.5 to 97.5.
//! let w = |t| ramp_weight(SchedulerKind::Wrr, 100, t, 10 * S);
//! assert_eq!(w(0), Some(250));
//! assert_eq!(w(5 * S), Some(5250));
//! assert_eq!(w(10 * S), None); // over: the configured weight
//!
//! // Draining: no new sessions, whatever else holds.
//! let st = ServerStatus { up: true, draining: true, ..Default::default() };
//! assert_eq!(effective(SchedulerKind::Wrr, 100, 0, &st, 0), (ServerState::Draining, 0));
//! assert_eq!(WEIGHT_SCALE, 100);
//! ```
//!
//! A ramp is a staircase, not a line: step `k` of `K` covers
//! `[k·T/K, (k+1)·T/K)` and carries the line's value at its middle,
//! `w·(2k+1)/(2K)`, so the first new connections go to the server at
//! `w/(2K)` and the steps' mean over the ramp is the line's. Steps keep
//! the work bounded (a scheduler changes at most `K` times per ramp) and,
//! for Maglev, make the table at each step a function of the configured
//! weights and the step alone: every node of a cluster that sees the server
//! at the same step builds the same table.

use crate::model::SchedulerKind;
use crate::Nanos;

/// Effective weights are in units of 1/`WEIGHT_SCALE` of a configured
/// weight: a configured weight `w` is `w * WEIGHT_SCALE`.
pub const WEIGHT_SCALE: u32 = 100;

/// Steps of a slow start for the schedulers whose weight change costs
/// nothing (WRR, WLC).
pub const RAMP_STEPS: u32 = 20;

/// Steps of a slow start for Maglev, whose table is rebuilt at each one
/// (about a millisecond per worker).
pub const MAGLEV_RAMP_STEPS: u32 = 5;

/// What a server is doing, as `lbctl stats` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerState {
    /// Healthy, at its configured weight.
    Up,
    /// The health check fails: no new sessions.
    Down,
    /// No new sessions; the open ones go on (until the drain deadline).
    Draining,
    /// Healthy, in its slow start: the weight grows toward the configured one.
    Ramping,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Up => "up",
            ServerState::Down => "down",
            ServerState::Draining => "draining",
            ServerState::Ramping => "ramping",
        }
    }

    /// A small number for metrics and atomics (the order of the variants).
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The state of [`ServerState::code`].
    pub fn from_code(c: u8) -> ServerState {
        match c {
            1 => ServerState::Down,
            2 => ServerState::Draining,
            3 => ServerState::Ramping,
            _ => ServerState::Up,
        }
    }
}

/// The steps of a slow start under scheduler `kind`.
pub fn ramp_steps(kind: SchedulerKind) -> u32 {
    match kind {
        SchedulerKind::Maglev => MAGLEV_RAMP_STEPS,
        SchedulerKind::Wrr | SchedulerKind::Wlc => RAMP_STEPS,
    }
}

/// The step of a slow start of `duration` reached `elapsed` into it;
/// `None` once it is over (or for a zero duration).
pub fn ramp_step(kind: SchedulerKind, elapsed: Nanos, duration: Nanos) -> Option<u32> {
    if elapsed >= duration {
        return None;
    }
    let steps = u128::from(ramp_steps(kind));
    // < steps, since elapsed < duration.
    Some((u128::from(elapsed) * steps / u128::from(duration)) as u32)
}

/// The effective weight of a server of configured `weight`, `elapsed`
/// into a slow start of `duration`, in 1/[`WEIGHT_SCALE`] units: step `k`
/// of `K` weighs `weight·(2k+1)/(2K)`, at least one unit for a weight
/// above 0. `None` once the ramp is over: the configured weight.
pub fn ramp_weight(
    kind: SchedulerKind,
    weight: u8,
    elapsed: Nanos,
    duration: Nanos,
) -> Option<u32> {
    let k = ramp_step(kind, elapsed, duration)?;
    Some(step_weight(kind, weight, k))
}

/// The weight of step `k` of a slow start under `kind` (see
/// [`ramp_weight`]): a function of the configured weight and the step
/// only.
pub fn step_weight(kind: SchedulerKind, weight: u8, k: u32) -> u32 {
    let steps = ramp_steps(kind);
    let full = u32::from(weight) * WEIGHT_SCALE;
    if k >= steps {
        return full;
    }
    let w = full * (2 * k + 1) / (2 * steps);
    if weight > 0 {
        w.max(1)
    } else {
        0
    }
}

/// What the data plane knows of a server at some moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStatus {
    /// Its health check passes (or none runs).
    pub up: bool,
    /// Draining (by configuration or by command).
    pub draining: bool,
    /// When its sessions are to end, if it is draining with a deadline.
    pub drain_deadline: Option<Nanos>,
    /// When it last came up (health check passed again, drain ended, added
    /// by a reload): the start of its slow start.
    pub ramp_since: Option<Nanos>,
}

impl ServerStatus {
    /// Whether its open sessions are to end at `now` (draining, and the
    /// deadline passed).
    pub fn must_close(&self, now: Nanos) -> bool {
        self.draining && self.drain_deadline.is_some_and(|d| now >= d)
    }
}

/// The state and effective weight (1/[`WEIGHT_SCALE`] units) at `now` of a
/// server of configured `weight` in a group with a slow start of
/// `slow_start` (0: none). Draining wins over down, down over ramping.
pub fn effective(
    kind: SchedulerKind,
    weight: u8,
    slow_start: Nanos,
    status: &ServerStatus,
    now: Nanos,
) -> (ServerState, u32) {
    if status.draining {
        return (ServerState::Draining, 0);
    }
    if !status.up {
        return (ServerState::Down, 0);
    }
    let ramp = status
        .ramp_since
        .filter(|_| weight > 0)
        .and_then(|since| ramp_weight(kind, weight, now.saturating_sub(since), slow_start));
    match ramp {
        Some(w) => (ServerState::Ramping, w),
        None => (ServerState::Up, u32::from(weight) * WEIGHT_SCALE),
    }
}

/// When the effective weight of a ramping server next changes: the start
/// of its next step, or the end of the ramp. `None` if it is not ramping.
pub fn next_change(
    kind: SchedulerKind,
    slow_start: Nanos,
    status: &ServerStatus,
    now: Nanos,
) -> Option<Nanos> {
    let since = status.ramp_since?;
    let k = ramp_step(kind, now.saturating_sub(since), slow_start)?;
    let steps = u128::from(ramp_steps(kind));
    let at = u128::from(slow_start) * (u128::from(k) + 1) / steps;
    // Rounded down: the step may start a nanosecond later; one more.
    Some(since.saturating_add(u64::try_from(at).unwrap_or(u64::MAX)) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NANOS_PER_SEC as S;

    const KINDS: [SchedulerKind; 3] = [
        SchedulerKind::Wrr,
        SchedulerKind::Wlc,
        SchedulerKind::Maglev,
    ];

    #[test]
    fn ramp_start_middle_end() {
        for kind in KINDS {
            let k = ramp_steps(kind);
            let t = 30 * S;
            // t = 0: the first step, w/(2K).
            assert_eq!(
                ramp_weight(kind, 100, 0, t),
                Some(100 * 100 / (2 * k)),
                "{kind:?}"
            );
            // The middle: step K/2 (K even) or the middle step (K odd),
            // half the weight within one step.
            let mid = ramp_weight(kind, 100, t / 2, t).expect("ramping");
            assert!(
                mid.abs_diff(5000) <= 10_000 / k,
                "{kind:?}: {mid} at the middle"
            );
            // The end: the configured weight.
            assert_eq!(ramp_weight(kind, 100, t, t), None);
            assert_eq!(
                ramp_weight(kind, 100, t - 1, t),
                Some(10_000 * (2 * k - 1) / (2 * k))
            );
            // Never above the configured weight, never decreasing.
            let mut last = 0;
            for i in 0..=300u64 {
                let w = ramp_weight(kind, 37, t * i / 300, t).unwrap_or(3700);
                assert!(w >= last && w <= 3700 && w > 0, "{kind:?} {i}: {w}");
                last = w;
            }
        }
        // A zero duration is no ramp; weight 1 still starts above 0.
        assert_eq!(ramp_weight(SchedulerKind::Wrr, 100, 0, 0), None);
        assert_eq!(ramp_weight(SchedulerKind::Wrr, 1, 0, S), Some(2));
        assert_eq!(step_weight(SchedulerKind::Maglev, 1, 0), 10);
        assert_eq!(step_weight(SchedulerKind::Maglev, 0, 0), 0);
    }

    #[test]
    fn steps_average_the_line() {
        // The mean of the steps over the ramp is the line's mean, w/2.
        for kind in KINDS {
            let k = ramp_steps(kind);
            let sum: u32 = (0..k).map(|i| step_weight(kind, 100, i)).sum();
            assert_eq!(sum / k, 5000, "{kind:?}");
        }
    }

    #[test]
    fn states() {
        let kind = SchedulerKind::Wlc;
        let up = ServerStatus {
            up: true,
            ..Default::default()
        };
        assert_eq!(effective(kind, 50, 10 * S, &up, 0), (ServerState::Up, 5000));
        let down = ServerStatus { up: false, ..up };
        assert_eq!(
            effective(kind, 50, 10 * S, &down, 0),
            (ServerState::Down, 0)
        );
        let ramping = ServerStatus {
            ramp_since: Some(100 * S),
            ..up
        };
        assert_eq!(
            effective(kind, 50, 10 * S, &ramping, 100 * S),
            (ServerState::Ramping, 125)
        );
        assert_eq!(
            effective(kind, 50, 10 * S, &ramping, 110 * S),
            (ServerState::Up, 5000)
        );
        // Without a slow start, coming up is being up.
        assert_eq!(
            effective(kind, 50, 0, &ramping, 100 * S),
            (ServerState::Up, 5000)
        );
        // Weight 0 does not ramp.
        assert_eq!(
            effective(kind, 0, 10 * S, &ramping, 100 * S),
            (ServerState::Up, 0)
        );
        let draining = ServerStatus {
            draining: true,
            drain_deadline: Some(5 * S),
            ..ramping
        };
        assert_eq!(
            effective(kind, 50, 10 * S, &draining, 100 * S),
            (ServerState::Draining, 0)
        );
        assert!(!draining.must_close(4 * S));
        assert!(draining.must_close(5 * S));
        assert!(!ServerStatus {
            drain_deadline: None,
            ..draining
        }
        .must_close(u64::MAX));
        for s in [
            ServerState::Up,
            ServerState::Down,
            ServerState::Draining,
            ServerState::Ramping,
        ] {
            assert_eq!(ServerState::from_code(s.code()), s);
        }
    }

    #[test]
    fn next_change_is_the_next_step() {
        let kind = SchedulerKind::Maglev;
        let st = ServerStatus {
            up: true,
            ramp_since: Some(10 * S),
            ..Default::default()
        };
        let t = 10 * S;
        let mut now = 10 * S;
        let mut weights = vec![effective(kind, 100, t, &st, now).1];
        while let Some(next) = next_change(kind, t, &st, now) {
            assert!(next > now);
            now = next;
            weights.push(effective(kind, 100, t, &st, now).1);
        }
        assert_eq!(weights, [1000, 3000, 5000, 7000, 9000, 10_000]);
        assert_eq!(now, 20 * S + 1);
    }

    /// Shares of new connections per server over `n` picks, with
    /// connections that stay open (WLC counts them).
    fn shares(s: &mut dyn crate::sched::Scheduler, servers: usize, n: usize) -> Vec<f64> {
        let up = vec![true; servers];
        let mut c = vec![0usize; servers];
        let mut h: u64 = 7;
        for _ in 0..n {
            h = h
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let i = s.pick(&up, h >> 11).expect("eligible");
            s.connected(i);
            c[i] += 1;
        }
        c.iter().map(|&x| x as f64 / n as f64).collect()
    }

    #[test]
    fn ramping_server_share_at_start_middle_end_for_each_scheduler() {
        // Three servers of weight 100; server 2 comes up with a 60 s slow
        // start. Its share of new connections is its step's weight over the
        // total, for every scheduler (WLC: of the connections it holds).
        let t = 60 * S;
        for kind in KINDS {
            let names = ["ecs01", "ecs02", "ecs03"];
            for (at, label) in [
                (0, "start"),
                (t / 2, "middle"),
                (t - 1, "end of ramp"),
                (t, "after"),
            ] {
                let w = ramp_weight(kind, 100, at, t).unwrap_or(100 * WEIGHT_SCALE);
                let mut s = crate::sched::build(kind, &[100, 100, 100], &names);
                s.set_weight(2, w);
                assert_eq!(s.weight(2), w);
                let got = shares(s.as_mut(), 3, 60_000)[2];
                let want = f64::from(w) / f64::from(w + 2 * 100 * WEIGHT_SCALE);
                assert!(
                    (got - want).abs() <= want * 0.05 + 0.002,
                    "{kind:?} {label}: share {got:.4}, want {want:.4} (weight {w})"
                );
            }
        }
    }

    #[test]
    fn maglev_tables_follow_the_step_not_the_path() {
        use crate::sched::{Maglev, Scheduler};
        let names = [
            "i-backend000",
            "i-backend001",
            "i-backend002",
            "i-backend003",
        ];
        let up = [true; 4];
        let kind = SchedulerKind::Maglev;
        // Node A ramps server 3 through every step, picking in between (so
        // it rebuilds at each); node B jumps straight to each step from a
        // fresh table; node C reaches it after the server went down and
        // came back. Same inputs, same table.
        let mut a = Maglev::new(&[100, 100, 100, 100], &names, 1009);
        let mut c = Maglev::new(&[100, 100, 100, 100], &names, 1009);
        let _ = c.pick(&[true, true, true, false], 1);
        let mut before: Option<Vec<Option<usize>>> = None;
        for k in 0..=ramp_steps(kind) {
            let w = step_weight(kind, 100, k);
            a.set_weight(3, w);
            let _ = a.pick(&up, 42);
            let ta: Vec<_> = a.table(&up).collect();
            let mut b = Maglev::new(&[100, 100, 100, 100], &names, 1009);
            b.set_weight(3, w);
            assert_eq!(ta, b.table(&up).collect::<Vec<_>>(), "step {k}");
            c.set_weight(3, w);
            assert_eq!(ta, c.table(&up).collect::<Vec<_>>(), "step {k}");
            // Each step only hands entries to the ramping server: the
            // others keep the rest of their flows (few move among them).
            if let Some(prev) = &before {
                let moved_elsewhere = prev
                    .iter()
                    .zip(&ta)
                    .filter(|(p, n)| p != n && **n != Some(3))
                    .count();
                assert!(
                    moved_elsewhere * 50 < ta.len(),
                    "step {k}: {moved_elsewhere} moved"
                );
            }
            before = Some(ta);
        }
        // The end of the ramp is the table of the configured weights.
        let mut full = Maglev::new(&[100, 100, 100, 100], &names, 1009);
        assert_eq!(before, Some(full.table(&up).collect::<Vec<_>>()));
        // The first step's table, pinned: a change here changes what every
        // deployed node builds.
        let mut first = Maglev::new(&[100, 100, 100, 100], &names, 1009);
        first.set_weight(3, step_weight(kind, 100, 0));
        let mut counts = [0usize; 4];
        for e in first.table(&up) {
            counts[e.expect("full")] += 1;
        }
        assert_eq!(counts.iter().sum::<usize>(), 1009);
        assert!(counts[3] > 0 && counts[3] * 10 < 1009 / 3, "{counts:?}");
    }
}
