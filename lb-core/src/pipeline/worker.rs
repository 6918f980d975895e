//! The worker: one thread's sessions, schedulers and local ports, and
//! the per-packet path through them (parse, look up, admit or follow the
//! session, rewrite, route).

use super::*;

mod expiry;

/// The mutable state of one worker: its sessions, scheduler state and
/// local ports. Nothing in it is shared with another worker.
#[derive(Debug)]
pub struct Worker {
    pub id: u16,
    pub workers: u16,
    pub sessions: SessionTable<Flow>,
    /// The generation `scheds` were built for.
    pub(super) generation: u64,
    pub(super) scheds: Vec<Box<dyn Scheduler>>,
    pub(super) ports: PortAllocator,
    /// Scratch "eligible" flags for scheduling, reused across packets.
    pub(super) eligible: Vec<bool>,
    /// The parsed frames of a burst and their keys, reused across bursts.
    parsed: Vec<(Parsed, Result<(), ParseError>)>,
    keys: Vec<Option<FlowKey>>,
    pub stats: Stats,
    /// The ingress port of the frame being decided, as a new session's
    /// `Flow::ingress` records it.
    pub(super) ingress_pin: u8,
    /// The MTU of each egress port (`cfg.ports` order; 0 or missing:
    /// unknown, not checked), as the data plane last read it.
    port_mtu: Vec<u32>,
    /// The smallest known MTU: a packet no longer passes every port
    /// without a look at its own.
    min_mtu: u32,
    /// RSTs for segments without a session.
    resets: RateLimit,
    /// The SYN proxy's state (see `syn_proxy.rs`).
    pub(super) proxy: syn_proxy::ProxyState,
    /// The fragment table and held fragments (see `fragment.rs`).
    pub(super) frags: fragment::FragState,
    /// Per (load balancer, listener): the share of its new sessions per
    /// second this worker may open (see `limits.rs`).
    pub(super) limit_rates: Vec<Vec<RateLimit>>,
    /// Slots the expiry sweep may examine, earned as time passes (see
    /// [`Worker::housekeep`]), and when it last earned.
    reap_credit: u64,
    /// The part of a slot earned but not yet whole, in slot-nanoseconds.
    reap_fraction: u64,
    reaped_at: Nanos,
    /// How each port spreads frames over the workers' RX queues (`cfg.ports`
    /// order; `None` or missing: no RSS), see `steer.rs`.
    pub(super) port_rss: Vec<Option<std::sync::Arc<crate::nat::rss::RssSteering>>>,
    /// The (generation, servers epoch) the schedulers' weights follow (see
    /// `servers.rs`).
    pub(super) servers_seen: (u64, u64),
    /// The servers whose sessions this worker ended at their drain
    /// deadline (they take no new ones while they drain).
    pub(super) drain_closed_for: Vec<(u32, u32)>,
    /// Session records for the listeners' access logs (see
    /// `access_log.rs`).
    pub(super) log: access_log::SessionLog,
}

/// A token bucket holding one second's worth of tokens, refilled by the
/// time that passes (`now` is a parameter: no clock here).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RateLimit {
    /// Credit in nanoseconds, at most one second.
    credit: Nanos,
    last: Nanos,
}

impl RateLimit {
    /// Takes a token at `now` for a rate of `per_sec` (at least 1).
    pub(super) fn take(&mut self, now: Nanos, per_sec: u32) -> bool {
        let elapsed = now.saturating_sub(self.last);
        self.last = self.last.max(now);
        self.credit = self.credit.saturating_add(elapsed).min(NANOS_PER_SEC);
        let cost = NANOS_PER_SEC / Nanos::from(per_sec.max(1));
        if self.credit >= cost {
            self.credit -= cost;
            true
        } else {
            false
        }
    }
}

impl Worker {
    /// A worker of `workers` with room for `max_sessions` IPv4 and
    /// `max_sessions_v6` IPv6 sessions.
    pub fn new(id: u16, workers: u16, max_sessions: usize, max_sessions_v6: usize) -> Worker {
        Worker {
            id,
            workers,
            sessions: SessionTable::with_capacities(max_sessions, max_sessions_v6),
            generation: u64::MAX,
            scheds: Vec::new(),
            ports: PortAllocator::new(id, workers),
            eligible: Vec::new(),
            parsed: Vec::with_capacity(BURST_MAX),
            keys: Vec::with_capacity(BURST_MAX),
            stats: Stats::default(),
            ingress_pin: UNPINNED,
            port_mtu: Vec::new(),
            min_mtu: u32::MAX,
            resets: RateLimit::default(),
            proxy: syn_proxy::ProxyState::new(max_sessions, max_sessions_v6),
            frags: fragment::FragState::default(),
            limit_rates: Vec::new(),
            reap_credit: 0,
            reap_fraction: 0,
            reaped_at: 0,
            port_rss: Vec::new(),
            servers_seen: (u64::MAX, 0),
            drain_closed_for: Vec::new(),
            log: access_log::SessionLog::default(),
        }
    }

    /// The memory of a worker's session tables for `max_sessions` IPv4 and
    /// `max_sessions_v6` IPv6 sessions, in bytes: what a data plane commits
    /// per worker at start-up ([`Worker::prefault`]).
    pub const fn session_table_bytes(max_sessions: usize, max_sessions_v6: usize) -> u64 {
        // Each session also has its SYN proxy sequence offset.
        let proxy = syn_proxy::SEQ_BYTES_PER_SESSION as u64;
        let v4 = max_sessions as u64 * (SessionTable::<Flow>::session_bytes(false) as u64 + proxy);
        let v6 =
            max_sessions_v6 as u64 * (SessionTable::<Flow>::session_bytes(true) as u64 + proxy);
        v4.saturating_add(v6)
    }

    /// Sets the MTU (largest IP packet) of egress port `port` (index into
    /// `cfg.ports`); 0 means unknown. Packets larger than their egress
    /// port's MTU are dropped (`Reason::TooBig`). The data plane calls it
    /// when a link's MTU changes, between bursts.
    pub fn set_port_mtu(&mut self, port: usize, mtu: u32) {
        if self.port_mtu.get(port) == Some(&mtu) {
            return;
        }
        if port >= self.port_mtu.len() {
            self.port_mtu.resize(port + 1, 0);
        }
        self.port_mtu[port] = mtu;
        self.min_mtu = self
            .port_mtu
            .iter()
            .copied()
            .filter(|&m| m != 0)
            .min()
            .unwrap_or(u32::MAX);
    }

    /// Whether a packet may leave through a port: its TTL / hop limit
    /// does not run out here, and it fits the MTU of the port `port`
    /// names. `port` is called only for a packet larger than the smallest
    /// known MTU, so the route lookup it may make stays off the common
    /// path.
    pub(super) fn egress_check(
        &self,
        frame: &[u8],
        p: &Parsed,
        port: impl FnOnce() -> Option<u32>,
    ) -> Result<(), Reason> {
        if p.ttl <= 1 {
            return Err(Reason::TtlExceeded);
        }
        let len = u32::try_from(p.l3_len).unwrap_or(u32::MAX);
        if len <= self.min_mtu {
            return Ok(());
        }
        let Some(mtu) = port().and_then(|pi| self.port_mtu.get(pi as usize).copied()) else {
            return Ok(());
        };
        if mtu == 0 || len <= mtu {
            return Ok(());
        }
        let df = p.is_ipv6() || frame.get(p.l3_offset + 6).is_some_and(|b| b & 0x40 != 0);
        Err(Reason::TooBig {
            mtu: u16::try_from(mtu).unwrap_or(u16::MAX),
            df,
        })
    }

    /// Maps the session table's memory now (see
    /// [`SessionTable::prefault`]): a data plane's start-up.
    pub fn prefault(&mut self) {
        self.sessions.prefault();
    }

    /// Brings the schedulers and the sessions' configuration indices up to
    /// `snap` (between bursts, after a reload).
    pub(super) fn adopt(&mut self, snap: &Snapshot, now: Nanos) {
        if self.generation == snap.generation {
            return;
        }
        // Sessions that expired before the reload end as they would have.
        self.release_reaped();
        self.frags.adopt(&snap.cfg.dataplane.fragments);
        self.limit_rates.clear();
        self.scheds = snap
            .cfg
            .server_groups
            .iter()
            .map(|g| {
                let weights: Vec<u8> = g
                    .servers
                    .iter()
                    .map(|s| if s.draining { 0 } else { s.weight })
                    .collect();
                let names: Vec<&str> = g.servers.iter().map(|s| s.name.as_str()).collect();
                sched::build(g.scheduler, &weights, &names)
            })
            .collect();
        // A cluster node hands out its own slice of every local address's
        // ports (lbd refuses a reload that would move it).
        let (node, nodes) = snap
            .cfg
            .cluster
            .as_ref()
            .map_or((1, 1), |c| (c.node_id, c.nodes));
        self.ports.set_ports(crate::nat::node_ports(node, nodes));
        // Every local address's port counts, before its first session.
        for locals in snap.locals_by_family.iter().flatten().flatten() {
            self.ports.prepare(*locals);
        }
        // Listener sessions name their listener and server by index: find
        // them again in the new configuration. A session whose listener is
        // gone ends; one whose server left the group drains.
        let (log, old_generation) = (&mut self.log, self.generation);
        self.sessions.retain(|_, s| {
            if s.payload.listener().is_none() {
                return true;
            }
            let orig = *s.orig();
            let Some((lbi, li)) = snap.listener_at(orig.dst, orig.proto, orig.dport) else {
                log.end(old_generation, &s, access_log::EndReason::Reload, now);
                return false;
            };
            let gi = snap.cfg.load_balancers[lbi].listeners[li].server_group;
            let out = s.reply().reversed();
            let si = snap.cfg.server_groups[gi]
                .servers
                .iter()
                .position(|srv| srv.port == out.dport && srv.addresses.contains(&out.dst))
                .map_or(GONE, idx32);
            s.payload
                .set_listener((idx32(lbi), idx32(li), idx32(gi), si))
        });
        // Their counters belonged to the old configuration; their ports
        // are free again.
        for s in self.sessions.drain_reaped() {
            release_port(&mut self.ports, &s.payload, s.reply());
        }
        self.proxy.engaged.clear();
        self.stats.rule_hits.clear();
        self.stats.listener_sessions.clear();
        self.stats.listener_limited.clear();
        self.stats.server_sessions.clear();
        for (_, s) in self.sessions.iter() {
            if let Some((lb, l, g, srv)) = s.payload.listener() {
                self.stats.listener_sessions.at_mut((lb, l)).active += 1;
                if srv != GONE {
                    self.stats.server_sessions.at_mut((g, srv)).active += 1;
                    if let Some(sch) = self.scheds.get_mut(g as usize) {
                        sch.connected(srv as usize);
                    }
                }
            }
        }
        self.log.adopt(&snap.cfg);
        // A reload keeps the ports (lbd refuses to change them without a
        // restart), so their counts carry over.
        self.stats
            .port_drops
            .resize(snap.cfg.ports.len(), PortDrops::default());
        self.generation = snap.generation;
        self.stats.generation = snap.generation;
    }

    #[cold]
    fn count_port_drop(&mut self, port: u32, kind: DropKind) {
        if let Some(c) = self.stats.port_drops.get_mut(port as usize) {
            match kind {
                DropKind::SpoofedSource => c.spoofed_source += 1,
                _ => c.vlan_mismatch += 1,
            }
        }
    }

    /// The source check of a session's packet that does not arrive on the
    /// port its direction last passed the check on (under the current
    /// configuration; that case costs one comparison in `decide`): the
    /// port's full check, which then pins the direction to this port. A
    /// packet injected with a session's 5-tuple from another link thus
    /// meets that link's check.
    #[cold]
    #[inline(never)]
    fn session_source(
        &mut self,
        id: crate::conntrack::SessionId,
        dir: Dir,
        key: &FlowKey,
        port: u32,
        snap: &Snapshot,
    ) -> Result<(), Reason> {
        let Some((_, ingress)) = snap.ingress_of(Some(port)) else {
            return Ok(());
        };
        let Some(flow) = self.sessions.payload_mut(id) else {
            return Ok(());
        };
        let fresh = flow.admitted_in(snap.generation);
        source_admits(snap, port, ingress.check, key)?;
        if !fresh {
            // Routes may have changed with the configuration.
            flow.ingress = UNPINNED_BOTH;
        }
        flow.set_pin(dir, pin(Some(port)));
        Ok(())
    }

    /// Accounts a packet of session `id` in direction `dir`; TCP segments
    /// go through sequence tracking. `Err` for a RST outside the window:
    /// to drop, the session unchanged.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(super) fn account(
        &mut self,
        frame: &[u8],
        p: &Parsed,
        proto: u8,
        id: crate::conntrack::SessionId,
        dir: Dir,
        now: Nanos,
        snap: &Snapshot,
    ) -> Result<(), Reason> {
        let seg = (proto == proto::TCP)
            .then(|| packet::parse::l4_bytes(frame, p).and_then(TcpSegment::read))
            .flatten();
        let Some(seg) = seg else {
            let tcp_flags = (proto == proto::TCP).then_some(p.tcp_flags);
            self.sessions
                .update_counted(id, dir, tcp_flags, p.l3_len, now, &snap.timeouts);
            return Ok(());
        };
        if seg.flags & (TCP_SYN | TCP_ACK) == TCP_SYN
            && dir == Dir::Orig
            && self.sessions.tcp_state(id) == Some(crate::conntrack::TcpState::Closed)
        {
            self.tuple_reused(id, now);
        }
        let check = self
            .sessions
            .update_tcp_counted(id, dir, &seg, p.l3_len, now, &snap.timeouts);
        match check {
            Some(SegmentCheck::OutOfWindow) if seg.flags & TCP_RST != 0 => {
                Err(Reason::TcpOutOfWindow)
            }
            _ => Ok(()),
        }
    }

    /// Why a TCP segment to a listener without a session is dropped:
    /// [`Reason::NoSessionReset`] (the data plane answers it with a RST)
    /// while `reset_unknown` is on and the rate allows, never for a RST.
    pub(super) fn no_session(&mut self, p: &Parsed, now: Nanos, snap: &Snapshot) -> Reason {
        let dp = &snap.cfg.dataplane;
        let answer = dp.reset_unknown
            && p.tcp_flags & TCP_RST == 0
            && !p.is_fragment
            && self.resets.take(now, dp.reset_unknown_rate);
        if answer {
            Reason::NoSessionReset
        } else {
            Reason::NoSession
        }
    }

    pub(super) fn hit(&mut self, d: Decision) {
        *self.stats.rule_hits.entry(d.origin).or_default() += 1;
    }

    /// Runs one frame through the pipeline, rewriting it in place when it is
    /// forwarded.
    pub fn process(
        &mut self,
        frame: &mut [u8],
        rx: RxInfo,
        now: Nanos,
        snap: &Snapshot,
        health: &dyn Health,
    ) -> Verdict {
        let parsed = packet::parse(frame);
        self.process_parsed(frame, parsed, rx, now, snap, health)
    }

    /// [`Worker::process`] for a frame the caller has already parsed, so it
    /// is parsed once. (The data plane's workers run bursts through
    /// [`Worker::process_burst`].)
    pub fn process_parsed(
        &mut self,
        frame: &mut [u8],
        parsed: Result<Parsed, ParseError>,
        rx: RxInfo,
        now: Nanos,
        snap: &Snapshot,
        health: &dyn Health,
    ) -> Verdict {
        self.adopt(snap, now);
        self.follow_servers(snap, health, now);
        let key = parsed.as_ref().ok().and_then(Parsed::flow_key);
        let looked = key.as_ref().map(|k| (k, self.sessions.hash_key(k)));
        let p = parsed.as_ref().map_err(|e| *e);
        self.proxy.at = 0;
        let v = self.finish(frame, p, looked, rx, now, snap, health);
        self.sessions.flush();
        v
    }

    /// Runs a burst of frames through the pipeline: the same verdicts as
    /// [`Worker::process`] frame by frame, faster on big session tables
    /// because the session lookups of the whole burst touch memory first,
    /// so their cache misses overlap. `verdicts[i]` is the verdict of
    /// `frames[i]`; at most `min(frames.len(), verdicts.len(), 64)` frames
    /// are handled, and that count returned.
    pub fn process_burst(
        &mut self,
        frames: &mut [Frame<'_>],
        now: Nanos,
        snap: &Snapshot,
        health: &dyn Health,
        verdicts: &mut [Verdict],
    ) -> usize {
        let n = frames.len().min(verdicts.len()).min(BURST_MAX);
        let mut parsed = std::mem::take(&mut self.parsed);
        parsed.clear();
        parsed.resize(n, (Parsed::EMPTY, Ok(())));
        for ((p, r), f) in parsed.iter_mut().zip(frames.iter()) {
            *r = packet::parse_into(f.data, p);
        }
        let done = self.process_parsed_burst(frames, &parsed, now, snap, health, verdicts);
        self.parsed = parsed;
        done
    }

    /// [`Worker::process_burst`] for frames the caller has already parsed:
    /// `parsed[i]` is what [`packet::parse_into`] made of `frames[i]` (the
    /// data plane parses each frame to find the worker that owns it), so
    /// each frame is parsed once. At most `min(frames.len(),
    /// parsed.len(), verdicts.len(), 64)` frames are handled, and that
    /// count returned.
    pub fn process_parsed_burst(
        &mut self,
        frames: &mut [Frame<'_>],
        parsed: &[(Parsed, Result<(), ParseError>)],
        now: Nanos,
        snap: &Snapshot,
        health: &dyn Health,
        verdicts: &mut [Verdict],
    ) -> usize {
        self.adopt(snap, now);
        self.follow_servers(snap, health, now);
        let n = frames
            .len()
            .min(parsed.len())
            .min(verdicts.len())
            .min(BURST_MAX);
        let parsed = &parsed[..n];
        // The session lookups of the whole burst go in stages (every index
        // bucket, then every session those buckets point to) so that their
        // cache misses are in flight together rather than paid one packet
        // at a time.
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        keys.extend(parsed.iter().map(|(p, r)| match r {
            Ok(()) => p.flow_key(),
            Err(_) => None,
        }));
        let mut hashes = [0u64; BURST_MAX];
        for (h, key) in hashes.iter_mut().zip(&keys) {
            if let Some(k) = key {
                *h = self.sessions.hash_key(k);
            }
        }
        let mut buckets = [0u64; BURST_MAX];
        for (b, &h) in buckets.iter_mut().zip(&hashes).take(n) {
            *b = self.sessions.warm_bucket(h);
        }
        let mut warm = 0u64;
        for (&b, &h) in buckets[..n].iter().zip(&hashes) {
            warm ^= self.sessions.warm_session(h, b);
        }
        std::hint::black_box(warm);
        for (i, (f, (p, r))) in frames.iter_mut().zip(parsed).enumerate() {
            let looked = keys[i].as_ref().map(|k| (k, hashes[i]));
            let p = r.map(|()| p);
            self.proxy.at = i;
            verdicts[i] = self.finish(f.data, p, looked, f.rx, now, snap, health);
        }
        self.sessions.flush();
        self.keys = keys;
        n
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        frame: &mut [u8],
        parsed: Result<&Parsed, ParseError>,
        key: Option<(&FlowKey, u64)>,
        rx: RxInfo,
        now: Nanos,
        snap: &Snapshot,
        health: &dyn Health,
    ) -> Verdict {
        self.stats.rx += 1;
        let v = self.decide(frame, parsed, key, rx, now, snap, health);
        match &v {
            Verdict::Forward(f) => {
                self.stats.forwarded += 1;
                match parsed {
                    Ok(p) if p.is_first_fragment => self.first_fragment(frame, p, f, rx, now, snap),
                    _ => {}
                }
            }
            Verdict::Send(_) => self.stats.forwarded += 1,
            Verdict::Local(..) => self.stats.local += 1,
            // Counted when held; its verdict comes when it goes.
            Verdict::Drop(Reason::FragmentHeld) => {}
            Verdict::Drop(r) => {
                self.stats.drops[r.kind() as usize] += 1;
                match *r {
                    Reason::Policy(d) => self.hit(d),
                    Reason::SpoofedSource { port } | Reason::VlanMismatch { port } => {
                        self.count_port_drop(port, r.kind());
                    }
                    _ => {}
                }
            }
        }
        v
    }

    #[allow(clippy::too_many_arguments)]
    fn decide(
        &mut self,
        frame: &mut [u8],
        parsed: Result<&Parsed, ParseError>,
        key: Option<(&FlowKey, u64)>,
        rx: RxInfo,
        now: Nanos,
        snap: &Snapshot,
        health: &dyn Health,
    ) -> Verdict {
        let p = match parsed {
            Ok(p) => p,
            Err(e) => return Verdict::Drop(Reason::Malformed(e)),
        };
        if let Some((port, i)) = snap.ingress_of(rx.port) {
            if !i.admits_tagging(p) {
                return Verdict::Drop(Reason::VlanMismatch { port });
            }
        }
        let (key, hash) = match key {
            Some((k, h)) => (k, h),
            None => {
                return match p.kind {
                    packet::Kind::Arp => Verdict::Local(LocalKind::Arp),
                    _ => Verdict::Drop(Reason::UnsupportedEthertype),
                }
            }
        };
        if packet::is_source_routed(frame, p) {
            // Nobody on the client link chooses the path past us.
            return Verdict::Drop(Reason::SourceRoute);
        }
        if p.is_fragment && !p.is_first_fragment {
            // No ports to match: it follows its first fragment.
            return self.later_fragment(frame, p, rx, now, snap);
        }
        if let Some(local) = local_kind(p, key, snap) {
            // Neighbour discovery comes from link-local and unspecified
            // sources that route nowhere: the link is its scope.
            let ingress = snap.ingress_of(rx.port);
            if let Some((port, i)) = ingress.filter(|_| local != LocalKind::Neighbor) {
                if let Err(r) = source_admits(snap, port, i.check, key) {
                    return Verdict::Drop(r);
                }
            }
            return Verdict::Local(local);
        }

        let csum = if rx.csum_partial {
            L4Csum::Partial
        } else {
            L4Csum::Full
        };
        if key.proto == proto::TCP && !tcp_valid_flags(p.tcp_flags) {
            return Verdict::Drop(Reason::TcpInvalidFlags);
        }
        let found = self
            .sessions
            .lookup_hashed(key, hash, now)
            .filter(|&(id, dir)| !self.syn_leaves_closed_session(p, key, id, dir, now));
        if let Some((id, dir)) = found {
            return self.established(frame, p, csum, key, id, dir, now, snap, rx.port);
        }
        if let Some((port, i)) = snap.ingress_of(rx.port) {
            if let Err(r) = source_admits(snap, port, i.check, key) {
                return Verdict::Drop(r);
            }
        }
        self.ingress_pin = pin(rx.port);
        if p.is_icmp_error() {
            if let Some(v) = self.related_error(frame, p, *key, now, snap) {
                return v;
            }
        }
        if snap.is_own_address(key.src) {
            // Only we send from our addresses: this is a spoof, or our own
            // frame looped back. (No session ever has such a source.)
            return Verdict::Drop(Reason::OwnSource);
        }

        if snap.is_vip(key.dst) {
            return self.new_listener_session(frame, p, csum, *key, hash, now, snap, health);
        }
        if snap.is_own_address(key.dst) {
            // A reply to a local address without a session, or traffic to a
            // port address: for the data plane itself (health checks).
            return Verdict::Local(LocalKind::ToSelf);
        }
        self.new_routed_session(frame, p, csum, *key, hash, now, snap)
    }

    #[allow(clippy::too_many_arguments)]
    fn established(
        &mut self,
        frame: &mut [u8],
        p: &Parsed,
        csum: L4Csum,
        key: &FlowKey,
        id: crate::conntrack::SessionId,
        dir: Dir,
        now: Nanos,
        snap: &Snapshot,
        rx_port: Option<u32>,
    ) -> Verdict {
        let Some(&flow) = self.sessions.payload(id) else {
            return Verdict::Drop(Reason::NoSession);
        };
        if let Some(port) = rx_port.filter(|&p| !flow.pinned_to(dir, p, snap.generation)) {
            if let Err(r) = self.session_source(id, dir, key, port, snap) {
                return Verdict::Drop(r);
            }
        }
        if !flow.admitted_in(snap.generation) {
            // The rules changed since the session was admitted: its next
            // packet is checked against the new ones.
            let Some(s) = self.sessions.get(id) else {
                return Verdict::Drop(Reason::NoSession);
            };
            let (orig, reply) = (*s.orig(), *s.reply());
            match recheck(snap, &orig, &reply.reversed(), &flow) {
                Ok(()) => {
                    if let Some(f) = self.sessions.payload_mut(id) {
                        f.generation = snap.generation as u32;
                    }
                }
                Err(r) => {
                    self.log_end(id, access_log::EndReason::Denied, now);
                    self.remove(id);
                    return Verdict::Drop(r);
                }
            }
        }
        let Some(out) = self.sessions.key(id, dir.opposite()).map(|k| k.reversed()) else {
            return Verdict::Drop(Reason::NoSession);
        };
        // Network ACLs are stateless: every packet, both directions.
        if let Err(r) = nacl_check(snap, &flow, key, &out, dir) {
            return Verdict::Drop(r);
        }
        if flow.proxy != ProxyPhase::None {
            // Sequence tracking happens in there, on the backend's side of
            // the translation.
            if let Some(v) = self.proxied_packet(frame, p, csum, id, dir, &flow, now, snap) {
                return v;
            }
        } else if let Err(r) = self.account(frame, p, key.proto, id, dir, now, snap) {
            return Verdict::Drop(r);
        }
        let listener = flow.listener().map(|(lb, l, _, _)| (lb, l));
        let backend = flow
            .listener()
            .and_then(|(_, _, g, s)| (s != GONE).then_some((g, s)));
        self.emit(
            frame,
            p,
            csum,
            key,
            &out,
            Reason::Session { lb: listener },
            backend,
            snap,
        )
    }

    /// An ICMP error about a packet of a session (path-MTU, unreachable,
    /// time exceeded): it belongs to the session, whatever the rules say,
    /// and goes to the session's other end about the packet as that end
    /// sent it. `None` when it quotes no session of ours. An error whose
    /// outer addresses do not fit the quoted packet's path (see
    /// [`error_fits_path`]) is dropped: nobody may speak for a session it
    /// is not on the path of.
    fn related_error(
        &mut self,
        frame: &mut [u8],
        p: &Parsed,
        key: FlowKey,
        now: Nanos,
        snap: &Snapshot,
    ) -> Option<Verdict> {
        let quoted = packet::parse_icmp_inner(frame, p).ok()?;
        // The quoted packet is one we sent: the reverse of a session key.
        let (id, dir) = self.sessions.lookup(&quoted.reversed(), now)?;
        let s = self.sessions.get(id)?;
        let (orig, reply, listener) = (*s.orig(), *s.reply(), s.payload.listener());
        if !error_fits_path(snap, &key, &quoted) {
            return Some(Verdict::Drop(Reason::IcmpErrorMismatch));
        }
        if listener.is_none() {
            // Routed sessions are not translated: forward it as it is.
            return Some(self.emit(
                frame,
                p,
                L4Csum::Full,
                &key,
                &key,
                Reason::Related,
                None,
                snap,
            ));
        }
        // From the client side (about a reply we sent): to the backend,
        // quoting the reply as the backend sent it. From the backend side:
        // to the client, quoting the client's own packet.
        let inner = match dir {
            Dir::Orig => reply,
            Dir::Reply => orig,
        };
        let (src, dst) = (inner.dst, inner.src);
        let Some(hop) = snap.route(dst) else {
            return Some(Verdict::Drop(Reason::NoRoute));
        };
        if let Err(r) = self.egress_check(frame, p, || Some(hop.port)) {
            return Some(Verdict::Drop(r));
        }
        if !packet::decrement_ttl(frame, p) {
            return Some(Verdict::Drop(Reason::TtlExceeded));
        }
        if crate::nat::icmp::translate_error(frame, p, src, dst, &inner).is_err() {
            return Some(Verdict::Drop(Reason::Rewrite));
        }
        Some(Verdict::Forward(Forward {
            hop,
            reason: Reason::Related,
            backend: None,
            out: FlowKey { src, dst, ..key },
        }))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn emit(
        &mut self,
        frame: &mut [u8],
        p: &Parsed,
        csum: L4Csum,
        key: &FlowKey,
        out: &FlowKey,
        reason: Reason,
        backend: Option<(u32, u32)>,
        snap: &Snapshot,
    ) -> Verdict {
        let hop = match snap.route(out.dst) {
            Some(h) => h,
            None => return Verdict::Drop(Reason::NoRoute),
        };
        // Before any change, so that a drop leaves the frame as it came
        // (the data plane quotes it in its ICMP error).
        if let Err(r) = self.egress_check(frame, p, || Some(hop.port)) {
            return Verdict::Drop(r);
        }
        if !packet::decrement_ttl(frame, p) {
            return Verdict::Drop(Reason::TtlExceeded);
        }
        if out != key && packet::rewrite(frame, p, out, csum).is_err() {
            return Verdict::Drop(Reason::Rewrite);
        }
        if csum == L4Csum::Partial {
            // The kernel deferred the checksum to a device that will never
            // see this frame: finish it here.
            packet::complete_l4_checksum(frame, p, out.src, out.dst);
        }
        Verdict::Forward(Forward {
            hop,
            reason,
            backend,
            out: *out,
        })
    }
}

/// A session went away: its local port is free again.
pub(super) fn release_port(ports: &mut PortAllocator, flow: &Flow, reply: &FlowKey) {
    if flow.local_port {
        ports.release(reply.dst, reply.dport);
    }
}

/// A session went away: its server and listener count one less.
pub(super) fn release(scheds: &mut [Box<dyn Scheduler>], stats: &mut Stats, flow: &Flow) {
    if let Some((lb, l, g, srv)) = flow.listener() {
        if let Some(c) = stats.listener_sessions.get_mut((lb, l)) {
            c.active = c.active.saturating_sub(1);
        }
        if srv != GONE {
            if let Some(c) = stats.server_sessions.get_mut((g, srv)) {
                c.active = c.active.saturating_sub(1);
            }
            if let Some(s) = scheds.get_mut(g as usize) {
                s.disconnected(srv as usize);
            }
        }
    }
}

/// Packets for the data plane itself that no session or listener claims.
fn local_kind(p: &Parsed, key: &FlowKey, snap: &Snapshot) -> Option<LocalKind> {
    let (t, _) = p.icmp?;
    match key.proto {
        proto::ICMP if t == 8 && snap.is_own_address(key.dst) => Some(LocalKind::EchoRequest),
        proto::ICMPV6 if t == 128 && snap.is_own_address(key.dst) => Some(LocalKind::EchoRequest),
        // Router/neighbour solicitations and advertisements.
        proto::ICMPV6 if (133..=137).contains(&t) => Some(LocalKind::Neighbor),
        _ => None,
    }
}
