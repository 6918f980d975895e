//! Session expiry: the time-paced sweep, and what ended sessions give
//! back (local ports, scheduler counts, access-log records).

use super::*;

impl Worker {
    /// Reaps expired sessions (a bounded amount of work). Call it between
    /// bursts, as often as you like: the expiry sweep's work follows the
    /// time that passes, not the number of calls. Lookups already ignore
    /// expired sessions; this frees them.
    pub fn housekeep(&mut self, now: Nanos, snap: &Snapshot) {
        self.adopt(snap, now);
        self.reap(now);
        self.expire_held(now, snap);
        self.publish_limits(snap);
    }

    /// The expiry sweep: each family's slab is walked once per
    /// [`REAP_SWEEP`] of time, [`REAP_STEP`] slots at most per call, so a
    /// data plane that calls between every burst walks the table at a
    /// steady pace (the slab streams through the cache once a second)
    /// instead of a few hundred slots per burst.
    fn reap(&mut self, now: Nanos) {
        // No more than a full sweep is ever owed, so the product fits a
        // u64 (a slab of at most 2^32 slots, a second in nanoseconds).
        let elapsed = now.saturating_sub(self.reaped_at).min(REAP_SWEEP);
        self.reaped_at = self.reaped_at.max(now);
        let slab = u64::try_from(self.sessions.slab_len()).unwrap_or(u64::MAX);
        // What a call earns is usually a fraction of a slot (a small table,
        // a worker calling every few microseconds): the fraction carries
        // over, in slot-nanoseconds, so small tables are swept too.
        let work = slab
            .saturating_mul(elapsed)
            .saturating_add(self.reap_fraction);
        let earned = work / REAP_SWEEP;
        self.reap_fraction = work % REAP_SWEEP;
        self.reap_credit = self.reap_credit.saturating_add(earned).min(slab);
        if self.reap_credit < REAP_MIN_STEP.min(slab).max(1) {
            return;
        }
        let scan = self.reap_credit.min(REAP_STEP);
        self.reap_credit -= scan;
        self.sessions.sweep(now, scan as usize);
        self.release_reaped();
    }

    /// Gives back what the reaped sessions held (local ports, scheduler
    /// counts).
    pub(in crate::pipeline) fn release_reaped(&mut self) {
        let (scheds, stats, ports) = (&mut self.scheds, &mut self.stats, &mut self.ports);
        let (log, generation) = (&mut self.log, self.generation);
        for s in self.sessions.drain_reaped() {
            let why = access_log::EndReason::of_closed(&s);
            log.end(generation, &s, why, s.expires_at());
            release_port(ports, &s.payload, s.reply());
            release(scheds, stats, &s.payload);
        }
    }

    /// Ends every listener session at once (a drained node's deadline):
    /// their local ports and scheduler counts are given back, and a later
    /// packet of such a flow meets no session (a TCP segment other than a
    /// SYN is answered with a RST under `reset_unknown`). Routed sessions
    /// stay. Returns how many ended.
    pub fn end_listener_sessions(&mut self) -> usize {
        let before = self.sessions.len();
        self.sessions.retain(|_, s| s.payload.listener().is_none());
        let ended = before - self.sessions.len();
        self.release_reaped();
        ended
    }

    pub(in crate::pipeline) fn remove(&mut self, id: crate::conntrack::SessionId) {
        let Some(reply) = self.sessions.key(id, Dir::Reply) else {
            return;
        };
        if let Some(f) = self.sessions.remove(id) {
            release_port(&mut self.ports, &f, &reply);
            release(&mut self.scheds, &mut self.stats, &f);
        }
    }
}
