//! Listener limits: `max_connections` and `max_new_connections_per_s`,
//! enforced across the workers without a lock.
//!
//! Concurrent sessions: each worker knows its own count of a listener's
//! open sessions exactly, and publishes it in the snapshot's
//! [`LimitBoard`] (one atomic word per listener and worker) at every
//! housekeeping pass, that is between bursts. A new session is refused
//! when its worker's own count plus the others' last published counts
//! reach the limit. The board is how the shares rebalance: a worker whose
//! flows end frees room for the others within one pass; two workers that
//! take the last room in the same instant overshoot by at most one
//! session each.
//!
//! New sessions per second: each worker has a token bucket of its share
//! of the rate (the rate divided among the workers, the remainder to the
//! first ones), holding one second's worth. Flow ownership spreads
//! clients evenly, so the shares add up to the rate.
//!
//! Only a packet that would open a session (a TCP SYN, a UDP datagram
//! without a session) is counted and refused, after the security group
//! and the listener ACL admitted it: a denied client takes no room. A
//! refused one is dropped as `listener_limit`; open sessions are never
//! touched.

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// Workers a [`LimitBoard`] has room for (the configuration's bound).
const BOARD_WORKERS: usize = 64;

/// Each limited listener's open sessions per worker, as the workers last
/// published them.
#[derive(Debug, Default)]
pub struct LimitBoard {
    /// (load balancer, listener) → row.
    rows: HashMap<(u32, u32), usize>,
    counts: Box<[AtomicU64]>,
}

impl LimitBoard {
    pub(super) fn new(cfg: &Config) -> LimitBoard {
        let mut rows = HashMap::new();
        for (lb, lbc) in cfg.load_balancers.iter().enumerate() {
            for (l, lc) in lbc.listeners.iter().enumerate() {
                if lc.limits.max_connections.is_some() {
                    let row = rows.len();
                    rows.insert((idx32(lb), idx32(l)), row);
                }
            }
        }
        let counts = (0..rows.len() * BOARD_WORKERS)
            .map(|_| AtomicU64::new(0))
            .collect();
        LimitBoard { rows, counts }
    }

    fn others(&self, row: usize, me: u16, workers: u16) -> u64 {
        let base = row * BOARD_WORKERS;
        (0..usize::from(workers).min(BOARD_WORKERS))
            .filter(|&w| w != usize::from(me))
            .map(|w| self.counts[base + w].load(Ordering::Relaxed))
            .sum()
    }
}

/// Which limit refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    MaxConnections,
    MaxNewConnectionsPerS,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::MaxConnections => "max_connections",
            LimitKind::MaxNewConnectionsPerS => "max_new_connections_per_s",
        }
    }
}

/// A worker's share of a rate of `rate` among `workers`.
fn share(rate: u32, id: u16, workers: u16) -> u32 {
    let n = u32::from(workers.max(1));
    (rate / n + u32::from(u32::from(id) < rate % n)).max(1)
}

impl Worker {
    /// Whether a packet `p` to listener `(lbi, li)` that would open a
    /// session may: `Err(Reason::ListenerLimit)` when the listener is at
    /// one of its limits.
    pub(super) fn listener_limit(
        &mut self,
        p: &Parsed,
        (lbi, li): (usize, usize),
        now: Nanos,
        snap: &Snapshot,
    ) -> Result<(), Reason> {
        let limits = snap.cfg.load_balancers[lbi].listeners[li].limits;
        if !limits.is_limited() {
            return Ok(());
        }
        let opens = match p.proto {
            proto::TCP => p.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN,
            _ => true,
        };
        if !opens {
            return Ok(());
        }
        let (lb, l) = (idx32(lbi), idx32(li));
        let refuse = |kind| {
            Err(Reason::ListenerLimit {
                lb,
                listener: l,
                kind,
            })
        };
        if let (Some(max), Some(&row)) =
            (limits.max_connections, snap.limit_board.rows.get(&(lb, l)))
        {
            let mine = self
                .stats
                .listener_sessions
                .get_mut((lb, l))
                .map_or(0, |c| c.active);
            if mine + snap.limit_board.others(row, self.id, self.workers) >= u64::from(max) {
                return refuse(LimitKind::MaxConnections);
            }
        }
        if let Some(rate) = limits.max_new_connections_per_s {
            if self.limit_rates.len() <= lbi {
                self.limit_rates.resize_with(lbi + 1, Vec::new);
            }
            let row = &mut self.limit_rates[lbi];
            if row.len() <= li {
                row.resize(li + 1, RateLimit::default());
            }
            if !row[li].take(now, share(rate, self.id, self.workers)) {
                return refuse(LimitKind::MaxNewConnectionsPerS);
            }
        }
        Ok(())
    }

    /// Publishes this worker's open sessions of each limited listener on
    /// the board. Part of [`Worker::housekeep`].
    pub(super) fn publish_limits(&mut self, snap: &Snapshot) {
        let me = usize::from(self.id);
        if me >= BOARD_WORKERS {
            return;
        }
        for (&(lb, l), &row) in &snap.limit_board.rows {
            let active = self
                .stats
                .listener_sessions
                .get_mut((lb, l))
                .map_or(0, |c| c.active);
            snap.limit_board.counts[row * BOARD_WORKERS + me].store(active, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_add_up_to_the_rate() {
        for (rate, workers) in [(100, 3), (1, 4), (7, 2), (1000, 64)] {
            let sum: u32 = (0..workers).map(|id| share(rate, id, workers)).sum();
            assert!(
                sum >= rate && sum <= rate.max(u32::from(workers)),
                "{rate} {workers}: {sum}"
            );
        }
    }
}
