//! What a session remembers ([`Flow`], 16 bytes): its listener and
//! server, the configuration generation that admitted it, its local port,
//! the ports its directions arrived on, and the SYN proxy's part.

use super::*;

/// What a session remembers, in 16 bytes (an IPv4 session with its keys
/// fills one cache line).
///
/// What the packets leave as follows from the session's two keys: an
/// original-direction packet leaves as the reply key reversed, a reply as
/// the original key reversed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// For listener sessions: load balancer, listener, server group and
    /// server indices (a configuration has at most
    /// `lb_config::MAX_PER_KIND` of each); `NO_LISTENER` in the first for
    /// routed sessions, `u16::MAX` in the last for a server gone.
    listener: [u16; 4],
    /// The low 32 bits of the configuration generation whose rules
    /// admitted the session.
    pub(super) generation: u32,
    /// The session holds a local port (FULLNAT): its reply key's
    /// destination address and port, given back when the session ends.
    pub local_port: bool,
    /// Per direction, a nibble each (the original direction's low), the
    /// port its packets last arrived on and passed that port's source
    /// check ([`UNPINNED`]: none yet). Packets arriving there skip the
    /// check; elsewhere they take it.
    pub(super) ingress: u8,
    /// Where a session the SYN proxy opened is (see `syn_proxy.rs`).
    pub(super) proxy: ProxyPhase,
    /// The window shifts of a proxied session ([`synproxy::Translation`]),
    /// a nibble each: the backend's (signed) low, the client's high (see
    /// [`Flow::shifts`]). Before the backend answered, the client's holds
    /// the client's window scale plus one (0: none).
    shifts: u8,
}

/// The SYN proxy's part in a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ProxyPhase {
    /// Not proxied.
    None,
    /// The client completed its handshake with the proxy; the proxy's SYN
    /// to the backend waits for its SYN-ACK.
    AwaitBackend,
    /// Both handshakes are done: packets are translated.
    Translated,
}

/// `Flow::listener[0]` of a routed session.
const NO_LISTENER: u16 = u16::MAX;

/// `Flow::ingress` of a direction not seen yet (or of a port whose index
/// does not fit in a nibble, from the 16th port on: such packets take the
/// full check each time).
pub(super) const UNPINNED: u8 = 0xf;

/// Both directions unpinned.
pub(super) const UNPINNED_BOTH: u8 = UNPINNED << 4 | UNPINNED;

/// A port index as `Flow::ingress` holds it.
pub(super) fn pin(port: Option<u32>) -> u8 {
    port.and_then(|p| u8::try_from(p).ok())
        .filter(|&p| p < UNPINNED)
        .unwrap_or(UNPINNED)
}

impl Flow {
    /// A listener session's flow: (load balancer, listener, server group,
    /// server), the server [`GONE`] if it left its group. `None` when an
    /// index does not fit in 16 bits (a configuration `lb_config` refuses).
    pub(super) fn listener_session(
        at: (u32, u32, u32, u32),
        generation: u64,
        local_port: bool,
    ) -> Option<Flow> {
        let mut flow = Flow {
            listener: [NO_LISTENER; 4],
            generation: generation as u32,
            local_port,
            ingress: UNPINNED_BOTH,
            proxy: ProxyPhase::None,
            shifts: 0,
        };
        flow.set_listener(at).then_some(flow)
    }

    pub(super) fn routed(generation: u64) -> Flow {
        Flow {
            listener: [NO_LISTENER; 4],
            generation: generation as u32,
            local_port: false,
            ingress: UNPINNED_BOTH,
            proxy: ProxyPhase::None,
            shifts: 0,
        }
    }

    /// For listener sessions: (load balancer, listener, server group,
    /// server), the server `u32::MAX` if it left its group in a reload.
    pub fn listener(&self) -> Option<(u32, u32, u32, u32)> {
        let [lb, l, g, s] = self.listener;
        if lb == NO_LISTENER {
            return None;
        }
        let server = if s == u16::MAX { GONE } else { u32::from(s) };
        Some((lb.into(), l.into(), g.into(), server))
    }

    /// Sets the listener session's indices; false (and nothing changes)
    /// when one does not fit in 16 bits.
    #[must_use]
    pub(super) fn set_listener(&mut self, (lb, l, g, s): (u32, u32, u32, u32)) -> bool {
        let idx = |i: u32| u16::try_from(i).ok().filter(|&i| i != u16::MAX);
        let server = if s == GONE { Some(u16::MAX) } else { idx(s) };
        match (idx(lb), idx(l), idx(g), server) {
            (Some(lb), Some(l), Some(g), Some(s)) => {
                self.listener = [lb, l, g, s];
                true
            }
            _ => false,
        }
    }

    /// Whether direction `dir` last passed its source check on `port`, under
    /// the configuration `generation`.
    #[inline]
    pub(super) fn pinned_to(&self, dir: Dir, port: u32, generation: u64) -> bool {
        let p = self.ingress >> (4 * dir.index()) & 0xf;
        p != UNPINNED && u32::from(p) == port && self.admitted_in(generation)
    }

    /// Pins direction `dir` to port `pin` (see [`pin`]).
    pub(super) fn set_pin(&mut self, dir: Dir, pin: u8) {
        let at = 4 * dir.index();
        self.ingress = self.ingress & !(0xf << at) | (pin & 0xf) << at;
    }

    /// The flow with its original direction pinned to port `pin`.
    pub(super) fn arrived_on(mut self, pin: u8) -> Flow {
        self.set_pin(Dir::Orig, pin);
        self
    }

    /// The window shifts of a proxied session: (backend's, client's).
    pub(super) fn shifts(&self) -> (i8, i8) {
        // The low nibble sign-extended.
        let backend = ((self.shifts << 4) as i8) >> 4;
        (backend, (self.shifts >> 4) as i8)
    }

    /// Sets the window shifts (backend's -8..=7, client's 0..=15; window
    /// scales are at most 14, so these hold every pair the proxy makes).
    pub(super) fn set_shifts(&mut self, backend: i8, client: i8) {
        let b = backend.clamp(-8, 7) as u8 & 0xf;
        let c = client.clamp(0, 15) as u8;
        self.shifts = c << 4 | b;
    }

    /// Whether the rules of configuration `generation` admitted the session
    /// (compared on the low 32 bits: a session would have to outlive 2^32
    /// reloads to be mistaken).
    pub fn admitted_in(&self, generation: u64) -> bool {
        self.generation == generation as u32
    }
}

/// Marks a session whose server left its group in a reload: it keeps
/// flowing (draining) but counts toward no server.
pub(super) const GONE: u32 = u32::MAX;
