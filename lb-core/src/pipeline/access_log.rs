//! Session records for listeners' access logs: what the pipeline knows
//! when a session starts and when it ends, in a fixed-size record
//! ([`SessionRecord`]) that the data plane formats and writes elsewhere.
//!
//! The worker files records in a bounded buffer allocated once (when a
//! configuration with an access log is adopted), never per record; the
//! data plane takes them between bursts ([`Worker::take_session_records`]).
//! A record that finds the buffer full is counted
//! ([`Worker::session_records_dropped`]) and lost.

use super::*;
use crate::conntrack::{Session, TcpState};

/// Records a worker holds until the data plane takes them: more than the
/// sessions one expiry step can reap ([`REAP_STEP`]) plus a burst.
pub const SESSION_LOG_CAPACITY: usize = 4096;

/// Why a session ended, as the session table and the pipeline know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// A TCP session closed by FINs in both directions: it left the table
    /// after the closed timeout, or a new connection reused its tuple.
    Fin,
    /// A TCP session closed by a RST (one at the exact sequence number; a
    /// RST that only falls inside the window leaves the state to the
    /// endpoint's answer, and silence after it ends the session as an
    /// idle timeout).
    Rst,
    /// No packet for the timeout of its state (UDP and other protocols
    /// always end so; TCP when neither side closed, or only one did).
    IdleTimeout,
    /// A reload removed its listener: the session ended with it.
    Reload,
    /// After a reload, its next packet was checked against the new rules
    /// and denied.
    Denied,
    /// A half-open session dropped to make room for a new one (a full
    /// session table, or no local port left).
    EarlyDrop,
    /// Its server was draining and the drain deadline passed.
    DrainDeadline,
}

impl EndReason {
    /// The word in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Fin => "fin",
            EndReason::Rst => "rst",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::Reload => "reload",
            EndReason::Denied => "denied",
            EndReason::EarlyDrop => "early_drop",
            EndReason::DrainDeadline => "drain_deadline",
        }
    }

    /// Why a session that expired (or whose closed tuple a new connection
    /// reuses) ended: from its TCP state and the flags it saw.
    pub fn of_closed<P>(s: &Session<P>) -> EndReason {
        match s.tcp_state() {
            Some(TcpState::Closed) if s.rst_seen() => EndReason::Rst,
            Some(TcpState::Closed) if s.fin_seen(Dir::Orig) && s.fin_seen(Dir::Reply) => {
                EndReason::Fin
            }
            Some(TcpState::Closed) => EndReason::Rst,
            _ => EndReason::IdleTimeout,
        }
    }
}

/// A start or an end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    Start,
    End(EndReason),
}

/// What the access log says about one session, at its start or its end:
/// fixed size, no heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRecord {
    pub kind: RecordKind,
    /// The low 32 bits of the configuration generation the indices below
    /// refer to (the worker's, when it made the record).
    pub generation: u32,
    /// Load balancer, listener, server group and server (indices;
    /// `u16::MAX` for a server that left its group in a reload).
    pub lb: u16,
    pub listener: u16,
    pub group: u16,
    pub server: u16,
    /// The client's packets as they arrive: client → VIP.
    pub orig: FlowKey,
    /// The backend's packets as they arrive: backend → local address
    /// (FULLNAT) or client (`transfer_client_ip`).
    pub reply: FlowKey,
    /// The session holds a local port (FULLNAT): `reply.dst`:`reply.dport`.
    pub local_port: bool,
    /// The pipeline's clock ([`Nanos`]) at the first packet, the last
    /// packet, and the end (for an expired session, the instant it
    /// expired; for a start record, the start).
    pub started: Nanos,
    pub last_seen: Nanos,
    pub ended: Nanos,
    /// Packets and IP bytes per direction ([`Dir::index`]: from the
    /// client, from the backend).
    pub packets: [u32; 2],
    pub bytes: [u64; 2],
    /// The TCP state at the time of the record; `None` for other
    /// protocols.
    pub tcp_state: Option<TcpState>,
}

impl SessionRecord {
    /// The record of listener session `s` (`None` for a routed session).
    pub fn of<P: std::borrow::Borrow<Flow>>(
        kind: RecordKind,
        generation: u64,
        s: &Session<P>,
        ended: Nanos,
    ) -> Option<SessionRecord> {
        let flow: &Flow = s.payload.borrow();
        let (lb, l, g, srv) = flow.listener()?;
        let small = |i: u32| u16::try_from(i).unwrap_or(u16::MAX);
        Some(SessionRecord {
            kind,
            generation: generation as u32,
            lb: small(lb),
            listener: small(l),
            group: small(g),
            server: small(srv),
            orig: *s.orig(),
            reply: *s.reply(),
            local_port: flow.local_port,
            started: s.started(),
            last_seen: s.last_seen(),
            ended,
            packets: [s.packets(Dir::Orig), s.packets(Dir::Reply)],
            bytes: [s.bytes(Dir::Orig), s.bytes(Dir::Reply)],
            tcp_state: s.tcp_state(),
        })
    }

    /// The server, if it is still in its group.
    pub fn server(&self) -> Option<(usize, usize)> {
        (self.server != u16::MAX).then_some((usize::from(self.group), usize::from(self.server)))
    }

    /// Seconds from the first packet to the last.
    pub fn duration_s(&self) -> f64 {
        self.last_seen.saturating_sub(self.started) as f64 / NANOS_PER_SEC as f64
    }
}

/// Bits of a listener's logging mode.
const LOG_END: u8 = 1;
const LOG_START: u8 = 2;

/// A worker's access-log state: which listeners log, and the records
/// waiting for the data plane.
#[derive(Debug, Default)]
pub(super) struct SessionLog {
    /// Per load balancer, per listener: `LOG_*` bits, for the generation
    /// the worker adopted.
    modes: Vec<Vec<u8>>,
    records: Vec<SessionRecord>,
    dropped: u64,
}

impl SessionLog {
    /// Takes the listeners' modes from `cfg`; the buffer is allocated the
    /// first time some listener logs.
    pub(super) fn adopt(&mut self, cfg: &Config) {
        self.modes = cfg
            .load_balancers
            .iter()
            .map(|lb| {
                lb.listeners
                    .iter()
                    .map(|l| match &l.access_log {
                        Some(a) if a.on_start => LOG_END | LOG_START,
                        Some(_) => LOG_END,
                        None => 0,
                    })
                    .collect()
            })
            .collect();
        if self.modes.iter().flatten().any(|&m| m != 0) {
            self.records
                .reserve_exact(SESSION_LOG_CAPACITY.saturating_sub(self.records.len()));
        }
    }

    fn mode(&self, flow: &Flow) -> u8 {
        let Some((lb, l, _, _)) = flow.listener() else {
            return 0;
        };
        self.modes
            .get(lb as usize)
            .and_then(|m| m.get(l as usize))
            .copied()
            .unwrap_or(0)
    }

    /// Whether the listener of `flow` logs session ends.
    #[inline]
    pub(super) fn logs_end(&self, flow: &Flow) -> bool {
        self.mode(flow) & LOG_END != 0
    }

    /// Whether the listener of `flow` logs session starts.
    #[inline]
    pub(super) fn logs_start(&self, flow: &Flow) -> bool {
        self.mode(flow) & LOG_START != 0
    }

    /// Files a record, or counts it lost when the buffer is full.
    pub(super) fn push(&mut self, r: Option<SessionRecord>) {
        let Some(r) = r else { return };
        if self.records.len() < SESSION_LOG_CAPACITY {
            self.records.push(r);
        } else {
            self.dropped += 1;
        }
    }

    /// The end of session `s` (reaped from the table, or removed),
    /// if its listener logs ends.
    pub(super) fn end<P: std::borrow::Borrow<Flow>>(
        &mut self,
        generation: u64,
        s: &Session<P>,
        why: EndReason,
        ended: Nanos,
    ) {
        if self.logs_end(s.payload.borrow()) {
            self.push(SessionRecord::of(
                RecordKind::End(why),
                generation,
                s,
                ended,
            ));
        }
    }
}

impl Worker {
    /// Hands the session records made since the last call to `f`, oldest
    /// first (the data plane calls it between bursts).
    pub fn take_session_records(&mut self, mut f: impl FnMut(SessionRecord)) {
        for r in self.log.records.drain(..) {
            f(r);
        }
    }

    /// Records lost because the worker's buffer was full.
    pub fn session_records_dropped(&self) -> u64 {
        self.log.dropped
    }

    /// A start record for session `id`, if its listener logs starts.
    pub(super) fn log_start(&mut self, id: crate::conntrack::SessionId, now: Nanos) {
        let Some(flow) = self.sessions.payload(id) else {
            return;
        };
        if !self.log.logs_start(flow) {
            return;
        }
        let Some(s) = self.sessions.get(id) else {
            return;
        };
        let r = SessionRecord::of(RecordKind::Start, self.generation, &s, now);
        self.log.push(r);
    }

    /// An end record for session `id`, which is about to go for `why`.
    pub(super) fn log_end(&mut self, id: crate::conntrack::SessionId, why: EndReason, now: Nanos) {
        if !self
            .sessions
            .payload(id)
            .is_some_and(|f| self.log.logs_end(f))
        {
            return;
        }
        if let Some(s) = self.sessions.get(id) {
            self.log.push(SessionRecord::of(
                RecordKind::End(why),
                self.generation,
                &s,
                now,
            ));
        }
    }

    /// A SYN from the client on a closed TCP session: the tuple carries a
    /// new connection. The old one ends (its record, if the listener logs
    /// it) and the counters start over; the caller accounts the SYN.
    #[cold]
    #[inline(never)]
    pub(super) fn tuple_reused(&mut self, id: crate::conntrack::SessionId, now: Nanos) {
        let why = match self.sessions.get(id) {
            Some(s) if s.tcp_state() == Some(TcpState::Closed) => EndReason::of_closed(&s),
            _ => return,
        };
        self.log_end(id, why, now);
        self.sessions.restart(id, now);
        self.log_start(id, now);
    }
}
