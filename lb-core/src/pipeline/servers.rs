//! Slow start and drain in a worker: the schedulers take the effective
//! weights the data plane publishes through [`Health`], and the sessions
//! of a server whose drain deadline passed are ended.
//!
//! Nothing here runs per packet: a worker reads [`Health::servers_epoch`]
//! once per burst and looks further only when it moved.

use super::*;

impl Worker {
    /// Brings the schedulers' weights up to what `health` publishes (a
    /// draining server weighs 0, a ramping one its step's weight), and ends
    /// the sessions of servers that [`Health::must_close`] (their drain
    /// deadline passed; counted in `Stats::drain_closed`). The session is
    /// dropped from the table: the next segment of its client is answered
    /// with a RST (`reset_unknown`), its server's is dropped.
    ///
    /// [`Worker::process_burst`] and [`Worker::process`] call it; a data
    /// plane also calls it between bursts when no traffic comes, so that
    /// deadlines apply on an idle worker too. Costs one `servers_epoch`
    /// read when nothing changed.
    pub fn follow_servers(&mut self, snap: &Snapshot, health: &dyn Health, now: Nanos) {
        if self.generation != snap.generation {
            // Not adopted yet: the next burst or housekeeping adopts it,
            // then calls again.
            return;
        }
        let seen = (snap.generation, health.servers_epoch());
        if seen == self.servers_seen {
            return;
        }
        if seen.0 != self.servers_seen.0 {
            // Indices of another configuration.
            self.drain_closed_for.clear();
        }
        self.servers_seen = seen;
        let mut close = false;
        for (gi, g) in snap.cfg.server_groups.iter().enumerate() {
            let Some(sched) = self.scheds.get_mut(gi) else {
                continue;
            };
            for (si, srv) in g.servers.iter().enumerate() {
                let configured = if srv.draining {
                    0
                } else {
                    u32::from(srv.weight) * sched::WEIGHT_SCALE
                };
                let w = health.weight(gi, si).unwrap_or(configured);
                if sched.weight(si) != w {
                    sched.set_weight(si, w);
                }
                close |= health.must_close(gi, si);
            }
        }
        if close {
            self.close_drained(snap, health, now);
        }
    }

    /// A client's SYN that reuses the tuple of a closed listener session
    /// (its client port came round again) is a new connection: the old
    /// session goes and the SYN is scheduled afresh, as IPVS does
    /// (`conn_reuse_mode = 1`). Otherwise clients that reuse ports quickly
    /// would keep their old server: a drained one would still get new
    /// connections, and a ramping one would get fewer than its weight says.
    /// Returns whether the session went.
    #[inline]
    pub(super) fn syn_leaves_closed_session(
        &mut self,
        p: &Parsed,
        key: &FlowKey,
        id: crate::conntrack::SessionId,
        dir: Dir,
        now: Nanos,
    ) -> bool {
        if key.proto != proto::TCP
            || dir != Dir::Orig
            || p.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN
        {
            return false;
        }
        self.leave_closed_session(id, now)
    }

    #[cold]
    fn leave_closed_session(&mut self, id: crate::conntrack::SessionId, now: Nanos) -> bool {
        let why = match self.sessions.get(id) {
            Some(s)
                if s.tcp_state() == Some(crate::conntrack::TcpState::Closed)
                    && s.payload.listener().is_some() =>
            {
                access_log::EndReason::of_closed(&s)
            }
            _ => return false,
        };
        self.log_end(id, why, now);
        self.remove(id);
        true
    }

    /// Ends the sessions of the servers that `health` says must close.
    /// A server's sessions are walked once per deadline: it takes no new
    /// session while it drains.
    #[cold]
    fn close_drained(&mut self, snap: &Snapshot, health: &dyn Health, now: Nanos) {
        let done = &mut self.drain_closed_for;
        done.retain(|&(g, s)| health.must_close(g as usize, s as usize));
        let fresh: Vec<(u32, u32)> = snap
            .cfg
            .server_groups
            .iter()
            .enumerate()
            .flat_map(|(g, grp)| (0..grp.servers.len()).map(move |s| (idx32(g), idx32(s))))
            .filter(|&(g, s)| health.must_close(g as usize, s as usize) && !done.contains(&(g, s)))
            .collect();
        if fresh.is_empty() {
            return;
        }
        let ids: Vec<crate::conntrack::SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.payload
                    .listener()
                    .is_some_and(|(_, _, g, srv)| fresh.contains(&(g, srv)))
            })
            .map(|(id, _)| id)
            .collect();
        for &id in &ids {
            self.log_end(id, access_log::EndReason::DrainDeadline, now);
            self.remove(id);
        }
        let closed = ids.len() as u64;
        self.drain_closed_for.extend(fresh);
        self.stats.drain_closed += closed;
    }
}
