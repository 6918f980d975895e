//! Opening sessions: a new listener session (server, local port, the
//! backend's rules) or routed session, and room made by early drop when
//! the session table or the local ports run out.

use super::*;

impl Worker {
    /// [`SessionTable::insert_missed`]; when the family's table is full,
    /// the oldest half-open session makes room (early drop) and the insert
    /// is tried once more.
    #[allow(clippy::too_many_arguments)]
    fn insert_or_early_drop(
        &mut self,
        key: FlowKey,
        key_hash: u64,
        reply: FlowKey,
        flow: Flow,
        now: Nanos,
        snap: &Snapshot,
        own_port: bool,
    ) -> Result<crate::conntrack::SessionId, crate::conntrack::InsertError> {
        let timeouts = &snap.timeouts;
        match self
            .sessions
            .insert_missed(key, key_hash, reply, flow, now, timeouts, own_port)
        {
            Err(crate::conntrack::InsertError::Full { .. }) => {
                // Expired sessions the sweep has not reached yet go first.
                if self.sessions.expire(now, REAP_ON_FULL) > 0 {
                    self.release_reaped();
                    if let Ok(id) = self
                        .sessions
                        .insert_missed(key, key_hash, reply, flow, now, timeouts, own_port)
                    {
                        return Ok(id);
                    }
                }
                let old = self
                    .sessions
                    .early_drop(key.is_ipv6(), |_| true)
                    .ok_or(crate::conntrack::InsertError::Full { capacity: 0 })?;
                self.stats.early_drops += 1;
                self.log
                    .end(self.generation, &old, EndReason::EarlyDrop, now);
                release_port(&mut self.ports, &old.payload, old.reply());
                release(&mut self.scheds, &mut self.stats, &old.payload);
                self.sessions
                    .insert_missed(key, key_hash, reply, flow, now, timeouts, own_port)
            }
            r => r,
        }
    }

    /// No local port of this worker's share on `local` is free: the oldest
    /// half-open session holding one gives it up (early drop), for a new
    /// session toward `backend`:`backend_port`.
    fn port_by_early_drop(
        &mut self,
        local: IpAddr,
        backend: IpAddr,
        backend_port: u16,
        ip_proto: u8,
        now: Nanos,
    ) -> Option<crate::nat::LocalPort> {
        // A session whose port can pass to the new one: it has the port to
        // itself, or goes to the same server (its reply tuple is the one
        // the new session needs).
        let ports = &self.ports;
        let old = self.sessions.early_drop(local.is_ipv6(), |s| {
            let r = s.reply();
            s.payload.local_port
                && r.dst == local
                && ((r.src == backend && r.sport == backend_port)
                    || ports.users(local, r.dport) == 1)
        })?;
        self.stats.early_drops += 1;
        self.log
            .end(self.generation, &old, EndReason::EarlyDrop, now);
        release(&mut self.scheds, &mut self.stats, &old.payload);
        // The port passes from the old session to the new one.
        let port = old.reply().dport;
        if self.ports.users(local, port) == 1 {
            return Some(crate::nat::LocalPort {
                port,
                shared: false,
            });
        }
        let reply = FlowKey {
            src: backend,
            dst: local,
            proto: ip_proto,
            sport: backend_port,
            dport: port,
        };
        if self.sessions.contains_key(&reply) {
            self.ports.release(local, port);
            return None;
        }
        Some(crate::nat::LocalPort { port, shared: true })
    }

    pub(super) fn count_new(&mut self, flow: &Flow) {
        self.stats.sessions_created += 1;
        if let Some((lb, l, g, srv)) = flow.listener() {
            let c = self.stats.listener_sessions.at_mut((lb, l));
            c.active += 1;
            c.total += 1;
            let c = self.stats.server_sessions.at_mut((g, srv));
            c.active += 1;
            c.total += 1;
            if let Some(s) = self.scheds.get_mut(g as usize) {
                s.connected(srv as usize);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    /// A new session to a listener: `key` (filed under `key_hash`) was
    /// just looked up and no session holds it.
    pub(super) fn new_listener_session(
        &mut self,
        frame: &mut [u8],
        p: &Parsed,
        csum: L4Csum,
        key: FlowKey,
        key_hash: u64,
        now: Nanos,
        snap: &Snapshot,
        health: &dyn Health,
    ) -> Verdict {
        let Some((lbi, li)) = snap.listener_at(key.dst, key.proto, key.dport) else {
            return Verdict::Drop(Reason::NoListener);
        };
        match listener_admits(snap, lbi, li, &key) {
            Ok(Some(d)) => self.hit(d),
            Ok(None) => {}
            Err(r) => return Verdict::Drop(r),
        }
        if let Err(r) = self.listener_limit(p, (lbi, li), now, snap) {
            self.stats
                .listener_limited
                .at_mut((idx32(lbi), idx32(li)))
                .total += 1;
            return Verdict::Drop(r);
        }
        if key.proto == proto::TCP {
            if let Some(v) =
                self.syn_proxy_first(frame, p, csum, &key, key_hash, (lbi, li), now, snap, health)
            {
                return v;
            }
        }
        // A TCP session starts with a SYN; anything else without a session
        // (a segment of a connection from before a restart) is dropped, and
        // answered with a RST so the client learns the connection is gone.
        if key.proto == proto::TCP && p.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN {
            return Verdict::Drop(self.no_session(p, now, snap));
        }
        // Before a server is picked: a packet that dies here takes no turn.
        if p.ttl <= 1 {
            return Verdict::Drop(Reason::TtlExceeded);
        }
        let (id, flow, orig_out, (gi, si)) = match self.open_listener_session(
            frame,
            p,
            &key,
            key_hash,
            (lbi, li),
            now,
            snap,
            health,
        ) {
            Ok(opened) => opened,
            Err(r) => return Verdict::Drop(r),
        };
        // A new session's first segment fits any window.
        let _ = self.account(frame, p, key.proto, id, Dir::Orig, now, snap);
        self.count_new(&flow);
        let reason = Reason::Listener {
            lb: idx32(lbi),
            listener: idx32(li),
        };
        let v = self.emit(
            frame,
            p,
            csum,
            &key,
            &orig_out,
            reason,
            Some((idx32(gi), idx32(si))),
            snap,
        );
        if v.is_drop() {
            self.remove(id);
        } else {
            self.log_start(id, now);
        }
        v
    }

    /// A new listener session for `key` (filed under `key_hash`, which no
    /// session holds): picks the server and the local port, checks the
    /// backend's rules and inserts the session (no packet accounted yet).
    /// Returns the session, its flow, the key its packets leave with
    /// toward the server, and the server (group, index).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open_listener_session(
        &mut self,
        frame: &[u8],
        p: &Parsed,
        key: &FlowKey,
        key_hash: u64,
        (lbi, li): (usize, usize),
        now: Nanos,
        snap: &Snapshot,
        health: &dyn Health,
    ) -> Result<(crate::conntrack::SessionId, Flow, FlowKey, (usize, usize)), Reason> {
        let key = *key;
        let lb = &snap.cfg.load_balancers[lbi];
        let listener = &lb.listeners[li];
        let gi = listener.server_group;
        let group = &snap.cfg.server_groups[gi];
        let family_v6 = key.is_ipv6();
        self.eligible.clear();
        self.eligible
            .extend(group.servers.iter().enumerate().map(|(si, s)| {
                health.is_up(gi, si) && s.addresses.iter().any(|a| a.is_ipv6() == family_v6)
            }));
        let Some(si) = self.scheds.get_mut(gi).and_then(|s| {
            let hash = if s.uses_hash() {
                crate::sched::flow_hash(&key)
            } else {
                0
            };
            s.pick(&self.eligible, hash)
        }) else {
            return Err(Reason::NoHealthyServer {
                lb: idx32(lbi),
                listener: idx32(li),
            });
        };
        let server = &group.servers[si];
        let Some(flow) = Flow::listener_session(
            (idx32(lbi), idx32(li), idx32(gi), idx32(si)),
            snap.generation,
            !listener.transfer_client_ip,
        )
        .map(|f| f.arrived_on(self.ingress_pin)) else {
            // Beyond the 16-bit indices a session holds (lb_config refuses
            // such a configuration): no session can be made for it.
            return Err(Reason::NoListener);
        };
        let backend_addr = server
            .addresses
            .iter()
            .copied()
            .find(|a| a.is_ipv6() == family_v6)
            .expect("eligible servers have an address of the flow's family");
        // What could not leave makes no session.
        self.egress_check(frame, p, || snap.route(backend_addr).map(|h| h.port))?;

        // `own_port`: the session has its local port to itself, which makes
        // its reply key unique, so the key's index entry can wait for the
        // end of the burst.
        let (orig_out, reply, own_port) = if listener.transfer_client_ip {
            let out = FlowKey {
                dst: backend_addr,
                dport: server.port,
                ..key
            };
            (out, out.reversed(), false)
        } else {
            let locals = &snap.locals_by_family[lbi][usize::from(family_v6)];
            if locals.is_empty() {
                return Err(Reason::NatPortsExhausted);
            }
            // Spread over the local addresses by the key's own hash (the
            // session table's, already at hand).
            let local = locals[(key_hash as usize) % locals.len()];
            let lport = self.allocate_local_port(local, backend_addr, server.port, key.proto, snap);
            let lport = match lport {
                Some(p) => Some(p),
                None => self.port_by_early_drop(local, backend_addr, server.port, key.proto, now),
            };
            let Some(lport) = lport else {
                return Err(Reason::NatPortsExhausted);
            };
            let out = FlowKey {
                src: local,
                dst: backend_addr,
                proto: key.proto,
                sport: lport.port,
                dport: server.port,
            };
            (out, out.reversed(), !lport.shared)
        };
        let admitted = match server.instance {
            Some(inst) => snap.backend_admits(inst, &orig_out, listener.transfer_client_ip),
            None => Ok(()),
        };
        let inserted = admitted.and_then(|()| {
            self.insert_or_early_drop(key, key_hash, reply, flow, now, snap, own_port)
                .map_err(|_| Reason::SessionTableFull)
        });
        let id = match inserted {
            Ok(id) => id,
            Err(r) => {
                release_port(&mut self.ports, &flow, &reply);
                return Err(r);
            }
        };
        Ok((id, flow, orig_out, (gi, si)))
    }

    #[allow(clippy::too_many_arguments)]
    /// A new routed session: `key` (filed under `key_hash`) was just looked
    /// up and no session holds it.
    pub(super) fn new_routed_session(
        &mut self,
        frame: &mut [u8],
        p: &Parsed,
        csum: L4Csum,
        key: FlowKey,
        key_hash: u64,
        now: Nanos,
        snap: &Snapshot,
    ) -> Verdict {
        let reason = match routed_admits(snap, p.icmp, &key) {
            Ok(r) => r,
            Err(r) => return Verdict::Drop(r),
        };
        if let Reason::Policy(d) = reason {
            self.hit(d);
        }
        // What could not leave makes no session.
        if let Err(r) = self.egress_check(frame, p, || snap.route(key.dst).map(|h| h.port)) {
            return Verdict::Drop(r);
        }
        // ICMP errors are not sessions of their own.
        let is_icmp_error = matches!(reason, Reason::PathMtu);
        let id = if is_icmp_error {
            None
        } else {
            let flow = Flow::routed(snap.generation).arrived_on(self.ingress_pin);
            match self.insert_or_early_drop(key, key_hash, key.reversed(), flow, now, snap, false) {
                Ok(id) => {
                    // A new session's first segment fits any window.
                    let _ = self.account(frame, p, key.proto, id, Dir::Orig, now, snap);
                    self.count_new(&flow);
                    Some(id)
                }
                Err(_) => return Verdict::Drop(Reason::SessionTableFull),
            }
        };
        let v = self.emit(frame, p, csum, &key, &key, reason, None, snap);
        if v.is_drop() {
            if let Some(id) = id {
                self.remove(id);
            }
        }
        v
    }
}
