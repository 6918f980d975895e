//! Timeouts and the per-session TCP state machine.

use crate::{Nanos, NANOS_PER_SEC};

/// IANA protocol numbers the table treats specially.
pub(crate) const PROTO_TCP: u8 = 6;
pub(crate) const PROTO_UDP: u8 = 17;

/// TCP header flag bits (as in the 13th byte of the TCP header).
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
}

/// Whether a TCP flag combination is one a TCP sends: conntrack's
/// `tcp_valid_flags` table, PSH, ECE and CWR ignored. SYN+FIN, SYN+RST,
/// FIN without ACK, no flags at all and the like are not.
pub fn valid_flags(tcp_flags: u8) -> bool {
    use flags::{ACK, FIN, RST, SYN, URG};
    const SYN_URG: u8 = SYN | URG;
    const SYN_ACK: u8 = SYN | ACK;
    const RST_ACK: u8 = RST | ACK;
    const FIN_ACK: u8 = FIN | ACK;
    const FIN_ACK_URG: u8 = FIN | ACK | URG;
    const ACK_URG: u8 = ACK | URG;
    matches!(
        tcp_flags & (FIN | SYN | RST | ACK | URG),
        SYN | SYN_URG | SYN_ACK | RST | RST_ACK | FIN_ACK | FIN_ACK_URG | ACK | ACK_URG
    )
}

/// Idle timeouts by session state. A session expires when no packet
/// refreshed it for the timeout of its current state: a session last seen at
/// `t` with timeout `d` is alive at `t + d - 1` and gone at `t + d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Established TCP sessions (the platform's session timeout, 910 s).
    pub established: Nanos,
    /// TCP handshake not completed (5 s), counted from the handshake's
    /// first packet: retransmissions do not extend it.
    pub syn: Nanos,
    /// TCP, a FIN seen in one direction only (60 s).
    pub closing: Nanos,
    /// TCP, FINs seen in both directions or a RST (10 s).
    pub closed: Nanos,
    /// UDP sessions.
    pub udp: Nanos,
    /// Every other protocol (ICMP echo, ...).
    pub other: Nanos,
    /// The most any session lives idle while no packet came back in the
    /// reply direction (conntrack's unreplied timeout, 30 s).
    pub unreplied: Nanos,
}

/// The handshake timeout, seconds. Short, because a half-open session
/// costs a slot and a local port, and a spoofed SYN never completes: a
/// client's SYN retransmitted after it (Linux waits 1, 2, 4 s between
/// tries) makes a new session. Linux conntrack's 120 s (SYN_SENT) is meant
/// for a firewall, not for a proxy under a flood.
pub const SYN_TIMEOUT_S: u64 = 5;

impl Timeouts {
    /// Timeouts for a platform session timeout of `secs` seconds: it applies
    /// to established TCP, UDP and other protocols; the TCP handshake,
    /// closing and closed timeouts keep their defaults (5 s, 60 s, 10 s)
    /// but are capped at the session timeout.
    pub fn from_session_timeout(secs: u32) -> Timeouts {
        let established = Nanos::from(secs) * NANOS_PER_SEC;
        Timeouts {
            established,
            syn: (SYN_TIMEOUT_S * NANOS_PER_SEC).min(established),
            closing: (60 * NANOS_PER_SEC).min(established),
            closed: (10 * NANOS_PER_SEC).min(established),
            udp: established,
            other: established,
            unreplied: (30 * NANOS_PER_SEC).min(established),
        }
    }

    /// The same timeouts with an unreplied timeout of `secs` seconds (capped
    /// at the session timeout).
    pub fn with_unreplied(self, secs: u32) -> Timeouts {
        Timeouts {
            unreplied: (Nanos::from(secs) * NANOS_PER_SEC).min(self.established),
            ..self
        }
    }

    /// The idle timeout of a session of protocol `proto` in `state`
    /// (`state` is `None` for protocols other than TCP).
    pub fn for_state(&self, proto: u8, state: Option<TcpState>) -> Nanos {
        match state {
            Some(TcpState::SynSent | TcpState::SynRecv) => self.syn,
            Some(TcpState::Established) => self.established,
            Some(TcpState::FinWait) => self.closing.min(self.established),
            Some(TcpState::Closed) => self.closed,
            None if proto == PROTO_UDP => self.udp,
            None => self.other,
        }
    }

    /// [`Timeouts::for_state`] for a session that has (`replied`) or has
    /// not yet seen a packet in the reply direction.
    #[inline]
    pub fn for_session(&self, proto: u8, state: Option<TcpState>, replied: bool) -> Nanos {
        let t = self.for_state(proto, state);
        if replied {
            t
        } else {
            t.min(self.unreplied)
        }
    }
}

impl Default for Timeouts {
    /// The platform default: a 910 s session timeout.
    fn default() -> Self {
        Timeouts::from_session_timeout(910)
    }
}

/// The connection state of a TCP session, as far as a middlebox that sees
/// flags but checks no sequence numbers can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpState {
    /// Created, or a SYN seen from the originator; no SYN-ACK yet.
    SynSent,
    /// SYN-ACK seen from the replier; waiting for the originator's ACK.
    SynRecv,
    /// Handshake completed, or picked up mid-stream (an ACK without a seen
    /// SYN).
    Established,
    /// A FIN seen in one direction.
    FinWait,
    /// FINs seen in both directions, or a RST.
    Closed,
}

/// Whether a session in `state` is half-open: a TCP handshake begun and
/// not completed.
pub(crate) fn is_half_open(state: Option<TcpState>) -> bool {
    matches!(state, Some(TcpState::SynSent | TcpState::SynRecv))
}

/// Per-direction flags remembered by a TCP session (bit set in
/// `Session::seen`).
pub(crate) const SEEN_SYN_ORIG: u8 = 0x01;
pub(crate) const SEEN_SYN_REPLY: u8 = 0x02;
pub(crate) const SEEN_FIN_ORIG: u8 = 0x04;
pub(crate) const SEEN_FIN_REPLY: u8 = 0x08;
/// A RST closed the session.
pub(crate) const SEEN_RST: u8 = 0x10;

/// Advances the state of a TCP session by one packet with `tcp_flags`
/// travelling in direction `reply` (false = originator → replier).
/// Returns the new state and the new `seen` bits.
///
/// Lenient by design: the caller decides when sessions are created, so an
/// ACK without a seen SYN is taken as a connection picked up mid-stream.
/// Once a SYN was seen, the originator's ACK only establishes the session
/// after the replier's SYN-ACK (a SYN/ACK pair from one side alone does not
/// earn the long timeout).
pub(crate) fn advance(state: TcpState, seen: u8, reply: bool, tcp_flags: u8) -> (TcpState, u8) {
    use flags::{ACK, FIN, RST, SYN};

    if tcp_flags & RST != 0 {
        return (TcpState::Closed, seen | SEEN_RST);
    }
    let syn = tcp_flags & SYN != 0;
    let ack = tcp_flags & ACK != 0;

    if state == TcpState::Closed {
        // A fresh SYN from the originator reuses the tuple: a new connection.
        if syn && !ack && !reply {
            return (TcpState::SynSent, SEEN_SYN_ORIG);
        }
        return (TcpState::Closed, seen);
    }

    let mut seen = seen;
    let mut state = state;
    if syn {
        if reply {
            seen |= SEEN_SYN_REPLY;
            if state == TcpState::SynSent {
                state = TcpState::SynRecv;
            }
        } else {
            seen |= SEEN_SYN_ORIG;
        }
    } else if ack {
        match state {
            // Mid-stream pickup: no SYN seen at all.
            TcpState::SynSent if seen & (SEEN_SYN_ORIG | SEEN_SYN_REPLY) == 0 => {
                state = TcpState::Established;
            }
            TcpState::SynRecv if !reply => state = TcpState::Established,
            _ => {}
        }
    }

    if tcp_flags & FIN != 0 {
        seen |= if reply { SEEN_FIN_REPLY } else { SEEN_FIN_ORIG };
        state = if seen & (SEEN_FIN_ORIG | SEEN_FIN_REPLY) == SEEN_FIN_ORIG | SEEN_FIN_REPLY {
            TcpState::Closed
        } else {
            TcpState::FinWait
        };
    }
    (state, seen)
}

#[cfg(test)]
mod tests {
    use super::flags::*;
    use super::*;

    fn run(steps: &[(bool, u8)]) -> TcpState {
        let mut st = (TcpState::SynSent, 0);
        for &(reply, f) in steps {
            st = advance(st.0, st.1, reply, f);
        }
        st.0
    }

    #[test]
    fn handshake() {
        assert_eq!(run(&[(false, SYN)]), TcpState::SynSent);
        assert_eq!(run(&[(false, SYN), (true, SYN | ACK)]), TcpState::SynRecv);
        assert_eq!(
            run(&[(false, SYN), (true, SYN | ACK), (false, ACK)]),
            TcpState::Established
        );
    }

    #[test]
    fn syn_then_own_ack_is_not_established() {
        assert_eq!(run(&[(false, SYN), (false, ACK)]), TcpState::SynSent);
    }

    #[test]
    fn midstream_pickup() {
        assert_eq!(run(&[(false, ACK)]), TcpState::Established);
        assert_eq!(run(&[(true, ACK | PSH)]), TcpState::Established);
    }

    #[test]
    fn close_sequences() {
        let est = [(false, SYN), (true, SYN | ACK), (false, ACK)];
        let mut s = est.to_vec();
        s.push((false, FIN | ACK));
        assert_eq!(run(&s), TcpState::FinWait);
        s.push((true, ACK));
        assert_eq!(run(&s), TcpState::FinWait);
        s.push((true, FIN | ACK));
        assert_eq!(run(&s), TcpState::Closed);
        s.push((false, ACK));
        assert_eq!(run(&s), TcpState::Closed);
        // Two FINs from the same side do not close.
        assert_eq!(
            run(&[(false, ACK), (false, FIN), (false, FIN)]),
            TcpState::FinWait
        );
    }

    #[test]
    fn rst_and_reuse() {
        assert_eq!(run(&[(false, ACK), (true, RST)]), TcpState::Closed);
        assert_eq!(run(&[(false, SYN), (true, RST | ACK)]), TcpState::Closed);
        // After close, only a fresh SYN from the originator reopens.
        assert_eq!(
            run(&[(false, ACK), (true, RST), (false, ACK)]),
            TcpState::Closed
        );
        assert_eq!(
            run(&[(false, ACK), (true, RST), (true, SYN)]),
            TcpState::Closed
        );
        assert_eq!(
            run(&[(false, ACK), (true, RST), (false, SYN)]),
            TcpState::SynSent
        );
    }

    #[test]
    fn timeouts() {
        let t = Timeouts::default();
        assert_eq!(t.established, 910 * NANOS_PER_SEC);
        assert_eq!(t.syn, 5 * NANOS_PER_SEC);
        assert_eq!(t.closing, 60 * NANOS_PER_SEC);
        assert_eq!(t.closed, 10 * NANOS_PER_SEC);
        assert_eq!(t.udp, t.established);
        assert_eq!(t.other, t.established);
        let short = Timeouts::from_session_timeout(20);
        assert_eq!(short.syn, 5 * NANOS_PER_SEC);
        assert_eq!(Timeouts::from_session_timeout(3).syn, 3 * NANOS_PER_SEC);
        assert_eq!(short.closing, 20 * NANOS_PER_SEC);
        assert_eq!(short.closed, 10 * NANOS_PER_SEC);
        assert_eq!(t.for_state(17, None), t.udp);
        assert_eq!(t.for_state(1, None), t.other);
        assert_eq!(t.for_state(6, Some(TcpState::FinWait)), t.closing);
    }
}
