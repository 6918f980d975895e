//! The SYN proxy in the pipeline: when a listener answers SYNs with
//! cookies, how a valid cookie opens a session, and how a proxied
//! session's packets are handled (see [`crate::synproxy`] for the cookies
//! and the translation).
//!
//! Data the client sends before the backend answered the proxy's SYN:
//! the first such segment is held (one per session, in a per-worker pool
//! of [`HELD_SLOTS`] frames of up to [`HELD_MAX`] bytes) and goes to the
//! backend, translated, as the ACK that completes the backend's
//! handshake; the rest, and data on the ACK that carries the cookie, is
//! dropped and counted (`syn_proxy_pending`): the client sends it again
//! after its retransmission timeout (200 ms or more on Linux). A client
//! that sends its request right after the handshake (as HTTP clients do)
//! thus waits for no retransmission.

use super::*;
use crate::conntrack::SessionId;
use crate::model::SynProxyMode;
use crate::packet::TcpPacket;
use crate::synproxy::{
    build_segment, cookie_count, decode_cookie, encode_cookie, parse_syn_options, CookieSecret,
    Segment, SynOptions, Translation, PROXY_MSS, PROXY_WSCALE, SEGMENT_MAX,
};

/// A worker's SYN proxy state.
#[derive(Debug)]
pub(super) struct ProxyState {
    secret: CookieSecret,
    /// Per family (`[IPv4, IPv6]`) and session slot: the proxy's ISN (the
    /// cookie) while a session awaits its backend, then the sequence
    /// offset ([`Translation::offset`]). Read only for proxied sessions.
    seq: [Vec<u32>; 2],
    /// Per (load balancer, listener): whether an "auto" proxy is engaged.
    pub(super) engaged: Vec<Vec<bool>>,
    /// Frames built in answer, one per frame of a burst.
    built: Vec<[u8; HELD_MAX]>,
    built_len: [usize; BURST_MAX],
    /// Held client segments: by session slot modulo [`HELD_SLOTS`], the
    /// session, whether its checksum is partial, and the frame.
    held: Vec<(Option<SessionId>, bool, usize)>,
    held_frames: Vec<[u8; HELD_MAX]>,
    /// The burst index of the frame being processed.
    pub(super) at: usize,
    /// The session [`Worker::open_proxied`] just opened.
    opened: Option<SessionId>,
}

/// Bytes per session of the proxy's sequence table.
pub const SEQ_BYTES_PER_SESSION: usize = std::mem::size_of::<u32>();

/// Client segments held while their sessions await the backend.
pub const HELD_SLOTS: usize = 256;

/// The longest frame held (and built).
pub const HELD_MAX: usize = 2048;

impl ProxyState {
    pub(super) fn new(max_sessions: usize, max_sessions_v6: usize) -> ProxyState {
        ProxyState {
            secret: CookieSecret::default(),
            // Zeroed: untouched pages cost nothing.
            seq: [vec![0; max_sessions], vec![0; max_sessions_v6]],
            engaged: Vec::new(),
            built: vec![[0; HELD_MAX]; BURST_MAX],
            built_len: [0; BURST_MAX],
            held: vec![(None, false, 0); HELD_SLOTS],
            held_frames: vec![[0; HELD_MAX]; HELD_SLOTS],
            at: 0,
            opened: None,
        }
    }

    fn seq_mut(&mut self, id: SessionId) -> Option<&mut u32> {
        self.seq[usize::from(id.is_ipv6())].get_mut(id.slot())
    }

    /// Holds `frame` for session `id`; false when its slot is taken or
    /// the frame too long.
    fn hold(&mut self, id: SessionId, frame: &[u8], partial: bool) -> bool {
        let i = id.slot() % HELD_SLOTS;
        if frame.len() > HELD_MAX || self.held[i].0.is_some_and(|h| h != id) {
            return false;
        }
        self.held[i] = (Some(id), partial, frame.len());
        self.held_frames[i][..frame.len()].copy_from_slice(frame);
        true
    }

    /// Takes the frame held for session `id` (whether its checksum is
    /// partial, its length in `held_frames[slot]`).
    fn take_held(&mut self, id: SessionId) -> Option<(usize, bool, usize)> {
        let i = id.slot() % HELD_SLOTS;
        match self.held[i] {
            (Some(h), partial, len) if h == id => {
                self.held[i] = (None, false, 0);
                Some((i, partial, len))
            }
            _ => None,
        }
    }

    fn seq(&self, id: SessionId) -> u32 {
        self.seq[usize::from(id.is_ipv6())]
            .get(id.slot())
            .copied()
            .unwrap_or(0)
    }
}

impl Worker {
    /// Keys the SYN cookies (a data plane draws the secret at start; the
    /// default is a fixed one, for `lbctl eval` and tests).
    pub fn set_cookie_secret(&mut self, secret: CookieSecret) {
        self.proxy.secret = secret;
    }

    /// Whether an "auto" SYN proxy is engaged on some listener.
    pub fn syn_proxy_engaged_anywhere(&self) -> bool {
        self.proxy.engaged.iter().flatten().any(|&e| e)
    }

    /// The frame built in answer to frame `i` of the last burst (0 for
    /// [`Worker::process`]), which a [`Verdict::Send`] says to send.
    pub fn built(&self, i: usize) -> &[u8] {
        match self.proxy.built.get(i) {
            Some(f) => &f[..self.proxy.built_len[i]],
            None => &[],
        }
    }

    /// [`Worker::built`], to change (e.g. its MAC addresses).
    pub fn built_mut(&mut self, i: usize) -> &mut [u8] {
        match self.proxy.built.get_mut(i) {
            Some(f) => &mut f[..self.proxy.built_len[i]],
            None => &mut [],
        }
    }

    /// Builds `seg` as the answer to the current frame and returns the
    /// verdict sending it.
    fn send_segment(&mut self, seg: &Segment, fwd: Forward) -> Verdict {
        let at = self.proxy.at.min(BURST_MAX - 1);
        let out: &mut [u8; SEGMENT_MAX] = (&mut self.proxy.built[at][..SEGMENT_MAX])
            .try_into()
            .expect("built frames hold a segment");
        let n = build_segment(seg, out);
        self.proxy.built_len[at] = n;
        if n == 0 {
            return Verdict::Drop(Reason::Rewrite);
        }
        Verdict::Send(fwd)
    }

    /// Whether the listener's proxy answers SYNs now: always for "on";
    /// for "auto" once the worker holds `syn_proxy_threshold` half-open
    /// sessions, until they are fewer than half as many.
    fn syn_proxy_engaged(&mut self, (lbi, li): (usize, usize), snap: &Snapshot) -> bool {
        let l = &snap.cfg.load_balancers[lbi].listeners[li];
        match l.syn_proxy {
            SynProxyMode::Off => false,
            SynProxyMode::On => true,
            SynProxyMode::Auto => {
                let half_open = self.sessions.half_open();
                let threshold = l.syn_proxy_threshold as usize;
                let e = &mut self.proxy.engaged;
                if lbi >= e.len() {
                    e.resize_with(lbi + 1, Vec::new);
                }
                if li >= e[lbi].len() {
                    e[lbi].resize(li + 1, false);
                }
                let on = &mut e[lbi][li];
                *on = if *on {
                    half_open >= threshold / 2
                } else {
                    half_open >= threshold
                };
                *on
            }
        }
    }

    /// A TCP packet to listener (`lbi`, `li`) without a session, admitted
    /// by its rules: a SYN the proxy answers with a cookie, or an ACK with
    /// a valid cookie, which opens the session. `None`: the usual path.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn syn_proxy_first(
        &mut self,
        frame: &[u8],
        p: &Parsed,
        csum: L4Csum,
        key: &FlowKey,
        key_hash: u64,
        (lbi, li): (usize, usize),
        now: Nanos,
        snap: &Snapshot,
        health: &dyn Health,
    ) -> Option<Verdict> {
        let listener = &snap.cfg.load_balancers[lbi].listeners[li];
        if listener.syn_proxy == SynProxyMode::Off {
            return None;
        }
        let tcp = TcpPacket::new_checked(frame.get(p.l4_offset..p.l3_end())?).ok()?;
        match p.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) {
            TCP_SYN if self.syn_proxy_engaged((lbi, li), snap) => {
                Some(self.syn_cookie(&tcp, key, (lbi, li), now, snap))
            }
            TCP_ACK => {
                let (isn, cookie) = (
                    tcp.seq_number().wrapping_sub(1),
                    tcp.ack_number().wrapping_sub(1),
                );
                let secret = &self.proxy.secret;
                let Some(opts) = decode_cookie(secret, key, isn, cookie, cookie_count(now)) else {
                    self.stats.syn_cookies_invalid += 1;
                    return None;
                };
                self.stats.syn_cookies_valid += 1;
                let has_data = tcp.header_len() < tcp.into_inner().len();
                let v = self.open_proxied(
                    frame,
                    p,
                    key,
                    key_hash,
                    (lbi, li),
                    isn,
                    cookie,
                    opts,
                    now,
                    snap,
                    health,
                );
                if let (Verdict::Send(_), Some(id)) = (&v, self.proxy.opened.take()) {
                    if has_data {
                        let end = p.l3_end().min(frame.len());
                        self.proxy.hold(id, &frame[..end], csum == L4Csum::Partial);
                    }
                }
                Some(v)
            }
            _ => None,
        }
    }

    /// Answers a SYN with a SYN-ACK whose sequence number is a cookie.
    fn syn_cookie(
        &mut self,
        syn: &TcpPacket<&[u8]>,
        key: &FlowKey,
        (lbi, li): (usize, usize),
        now: Nanos,
        snap: &Snapshot,
    ) -> Verdict {
        let Some(hop) = snap.route(key.src) else {
            return Verdict::Drop(Reason::NoRoute);
        };
        let client = parse_syn_options(syn.options());
        let isn = syn.seq_number();
        let cookie = encode_cookie(&self.proxy.secret, key, isn, cookie_count(now), client);
        let out = key.reversed();
        let seg = Segment {
            src: out.src,
            dst: out.dst,
            sport: out.sport,
            dport: out.dport,
            seq: cookie,
            ack: isn.wrapping_add(1),
            flags: TCP_SYN | TCP_ACK,
            window: u16::MAX,
            syn_options: Some((
                PROXY_MSS[usize::from(key.is_ipv6())],
                client.wscale.map(|_| PROXY_WSCALE),
                client.sack,
            )),
        };
        self.stats.syn_cookies_sent += 1;
        let reason = Reason::SynCookie {
            lb: idx32(lbi),
            listener: idx32(li),
        };
        self.send_segment(
            &seg,
            Forward {
                hop,
                reason,
                backend: None,
                out,
            },
        )
    }

    /// A valid cookie: opens the session and sends the proxy's own SYN to
    /// the backend, with the client's ISN and options. Data on the ACK is
    /// dropped (the client sends it again).
    #[allow(clippy::too_many_arguments)]
    fn open_proxied(
        &mut self,
        frame: &[u8],
        p: &Parsed,
        key: &FlowKey,
        key_hash: u64,
        (lbi, li): (usize, usize),
        isn: u32,
        cookie: u32,
        opts: SynOptions,
        now: Nanos,
        snap: &Snapshot,
        health: &dyn Health,
    ) -> Verdict {
        let (id, mut flow, out, (gi, si)) =
            match self.open_listener_session(frame, p, key, key_hash, (lbi, li), now, snap, health)
            {
                Ok(opened) => opened,
                Err(r) => return Verdict::Drop(r),
            };
        let Some(hop) = snap.route(out.dst) else {
            self.remove(id);
            return Verdict::Drop(Reason::NoRoute);
        };
        flow.proxy = ProxyPhase::AwaitBackend;
        flow.set_shifts(0, opts.wscale.map_or(0, |w| w.min(14) as i8 + 1));
        if let Some(f) = self.sessions.payload_mut(id) {
            *f = flow;
        }
        if let Some(s) = self.proxy.seq_mut(id) {
            *s = cookie;
        }
        self.proxy.opened = Some(id);
        // The session's first packet is the SYN the proxy sends: sequence
        // tracking follows the backend's side of the translation, where
        // the client's ISN is the proxy's.
        let syn = TcpSegment {
            flags: TCP_SYN,
            seq: isn,
            window: u16::MAX,
            wscale: opts.wscale,
            ..TcpSegment::default()
        };
        self.sessions
            .update_tcp(id, Dir::Orig, &syn, now, &snap.timeouts);
        self.count_new(&flow);
        self.log_start(id, now);
        let seg = Segment {
            src: out.src,
            dst: out.dst,
            sport: out.sport,
            dport: out.dport,
            seq: isn,
            ack: 0,
            flags: TCP_SYN,
            window: u16::MAX,
            syn_options: Some((opts.mss, opts.wscale, opts.sack)),
        };
        let reason = Reason::Listener {
            lb: idx32(lbi),
            listener: idx32(li),
        };
        self.send_segment(
            &seg,
            Forward {
                hop,
                reason,
                backend: Some((idx32(gi), idx32(si))),
                out,
            },
        )
    }

    /// A packet of a proxied session. Before the backend answered: its
    /// SYN-ACK is answered with the ACK that completes its handshake, and
    /// the client's packets are dropped. Afterwards the packet is
    /// translated in place and `None` returned (the usual path sends it).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn proxied_packet(
        &mut self,
        frame: &mut [u8],
        p: &Parsed,
        csum: L4Csum,
        id: SessionId,
        dir: Dir,
        flow: &Flow,
        now: Nanos,
        snap: &Snapshot,
    ) -> Option<Verdict> {
        let end = p.l3_end().min(frame.len());
        if p.l4_offset + 20 > end {
            return Some(Verdict::Drop(Reason::Malformed(ParseError::TruncatedTcp)));
        }
        if flow.proxy == ProxyPhase::Translated {
            let t = Translation {
                offset: self.proxy.seq(id),
                backend_shift: flow.shifts().0,
                client_shift: flow.shifts().1,
            };
            // Sequence tracking sees the backend's side: a backend's
            // segment before its translation, a client's after.
            if dir == Dir::Reply {
                if let Err(r) = self.account(frame, p, proto::TCP, id, dir, now, snap) {
                    return Some(Verdict::Drop(r));
                }
            }
            synproxy::translate(
                &mut frame[p.l4_offset..end],
                dir == Dir::Orig,
                t,
                csum == L4Csum::Full,
            );
            if dir == Dir::Orig {
                if let Err(r) = self.account(frame, p, proto::TCP, id, dir, now, snap) {
                    return Some(Verdict::Drop(r));
                }
            }
            return None;
        }
        let flags = p.tcp_flags;
        let backend_syn_ack =
            dir == Dir::Reply && flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN | TCP_ACK;
        if !backend_syn_ack {
            if flags & TCP_RST != 0 {
                // Only a RST inside the window ends the handshake.
                if let Err(r) = self.account(frame, p, proto::TCP, id, dir, now, snap) {
                    return Some(Verdict::Drop(r));
                }
            } else if dir == Dir::Orig && p.l4_offset + 20 < end && flags & TCP_SYN == 0 {
                let hl = usize::from(frame[p.l4_offset + 12] >> 4) * 4;
                if p.l4_offset + hl < end {
                    self.proxy.hold(id, &frame[..end], csum == L4Csum::Partial);
                }
            }
            return Some(Verdict::Drop(Reason::SynProxyPending));
        }
        let syn_ack = TcpSegment::read(&frame[p.l4_offset..end])?;
        let tcp = TcpPacket::new_checked(&frame[p.l4_offset..end]).ok()?;
        let backend_isn = tcp.seq_number();
        let client_next = tcp.ack_number();
        let backend_ws = parse_syn_options(tcp.options()).wscale;
        let cookie = self.proxy.seq(id);
        let client_ws = (flow.shifts().1 > 0).then(|| flow.shifts().1 - 1);
        let (backend_shift, client_shift) = match (client_ws, backend_ws) {
            (Some(_), Some(b)) => (b as i8 - PROXY_WSCALE as i8, 0),
            // The backend declined scaling: its windows are unscaled, and
            // the client's must be scaled for it.
            (Some(c), None) => (-(PROXY_WSCALE as i8), c),
            (None, _) => (0, 0),
        };
        let timeouts = &snap.timeouts;
        if self
            .sessions
            .update_tcp(id, Dir::Reply, &syn_ack, now, timeouts)
            != Some(SegmentCheck::Accepted)
        {
            // Not an answer to the proxy's SYN: the handshake goes on.
            return Some(Verdict::Drop(Reason::TcpOutOfWindow));
        }
        let mut f = *flow;
        f.proxy = ProxyPhase::Translated;
        f.set_shifts(backend_shift, client_shift);
        if let Some(slot) = self.sessions.payload_mut(id) {
            *slot = f;
        }
        if let Some(s) = self.proxy.seq_mut(id) {
            *s = backend_isn.wrapping_sub(cookie);
        }
        let out = self.sessions.key(id, Dir::Reply)?.reversed();
        let Some(hop) = snap.route(out.dst) else {
            return Some(Verdict::Drop(Reason::NoRoute));
        };
        // The client's window is not known yet: 64 KiB until its next
        // packet says.
        let window = match (client_ws, backend_ws) {
            (Some(c), Some(_)) => (u16::MAX >> c).max(1),
            _ => u16::MAX,
        };
        let seg = Segment {
            src: out.src,
            dst: out.dst,
            sport: out.sport,
            dport: out.dport,
            seq: client_next,
            ack: backend_isn.wrapping_add(1),
            flags: TCP_ACK,
            window,
            syn_options: None,
        };
        let ack = TcpSegment {
            flags: TCP_ACK,
            seq: seg.seq,
            ack: seg.ack,
            window: seg.window,
            ..TcpSegment::default()
        };
        self.sessions.update_tcp(id, Dir::Orig, &ack, now, timeouts);
        let listener = f.listener().map(|(lb, l, _, _)| (lb, l));
        let backend = f
            .listener()
            .and_then(|(_, _, g, s)| (s != GONE).then_some((g, s)));
        let fwd = Forward {
            hop,
            reason: Reason::Session { lb: listener },
            backend,
            out,
        };
        if let Some(v) = self.send_held(id, &f, &out, fwd) {
            return Some(v);
        }
        Some(self.send_segment(&seg, fwd))
    }

    /// The client segment held for session `id` (now translated), as the
    /// ACK that completes the backend's handshake: `None` when none is
    /// held (or it no longer parses).
    fn send_held(
        &mut self,
        id: SessionId,
        f: &Flow,
        out: &FlowKey,
        fwd: Forward,
    ) -> Option<Verdict> {
        let (slot, partial, len) = self.proxy.take_held(id)?;
        let at = self.proxy.at.min(BURST_MAX - 1);
        let t = Translation {
            offset: self.proxy.seq(id),
            backend_shift: f.shifts().0,
            client_shift: f.shifts().1,
        };
        let ProxyState {
            built,
            built_len,
            held_frames,
            ..
        } = &mut self.proxy;
        let frame = &mut built[at][..len];
        frame.copy_from_slice(&held_frames[slot][..len]);
        let p = packet::parse(frame).ok()?;
        let csum = if partial {
            L4Csum::Partial
        } else {
            L4Csum::Full
        };
        packet::rewrite(frame, &p, out, csum).ok()?;
        let end = p.l3_end().min(len);
        synproxy::translate(&mut frame[p.l4_offset..end], true, t, !partial);
        if partial {
            packet::complete_l4_checksum(frame, &p, out.src, out.dst);
        }
        built_len[at] = len;
        Some(Verdict::Send(fwd))
    }
}
