//! TCP sequence tracking per direction, to tell a connection's own
//! segments from blind ones (RFC 5961; modelled on Linux conntrack's
//! `tcp_in_window`).
//!
//! ```
//! use lb_core::conntrack::{Dir, SegmentCheck, TcpSegment, TcpState, TcpWindow};
//! use lb_core::conntrack::tcp_flags::{ACK, RST, SYN};
//!
//! let mut w = TcpWindow::default();
//! let seg = |flags, seq, ack| TcpSegment { flags, seq, ack, window: 65535, ..TcpSegment::default() };
//! w.learn(TcpState::SynSent, Dir::Orig, &seg(SYN, 1000, 0));
//! w.learn(TcpState::SynSent, Dir::Reply, &seg(SYN | ACK, 5000, 1001));
//! w.learn(TcpState::SynRecv, Dir::Orig, &seg(ACK, 1001, 5001));
//! // A reset at the next sequence number ends the connection; a guessed one
//! // does nothing.
//! assert_eq!(w.check(TcpState::Established, Dir::Orig, &seg(RST, 1001, 0)), SegmentCheck::Reset);
//! assert_eq!(w.check(TcpState::Established, Dir::Orig, &seg(RST, 0x1234_5678, 0)), SegmentCheck::OutOfWindow);
//! ```
//!
//! For each direction (as sender) the session keeps the highest sequence
//! number sent (`end`, conntrack's `td_end`), the highest it may send (the
//! other side's acknowledgement plus its scaled window, `td_maxend`) and
//! the highest acknowledgement it sent (`td_maxack`), with the window scale
//! from the SYN options. A segment beyond the window, or acknowledging data
//! never sent, teaches nothing and moves no state.
//!
//! A RST is accepted as RFC 5961 §3 says a receiver does: it ends the
//! connection only at an exact sequence number (the receiver's
//! acknowledgement, or the sender's next sequence number); elsewhere in the
//! window it is passed on without ending the session (the endpoint answers
//! with a challenge ACK, whose passage keeps the session, or accepts it and
//! goes quiet, and the session ends after the closed timeout); outside the
//! window it is dropped. The data plane sends no challenge ACK of its own.
//! In SYN-SENT a RST must acknowledge the SYN (RFC 9293 §3.10.7.3).
//!
//! Sequence numbers are compared as the endpoints see them. A translation
//! that shifts one side's sequence numbers (a SYN proxy) applies its
//! offset to the segment before [`TcpWindow::check`] and
//! [`TcpWindow::learn`].

use super::tcp::{flags, TcpState};
use super::Dir;

/// What the tracking reads from a TCP segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpSegment {
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// The window field as sent (unscaled).
    pub window: u16,
    /// Payload bytes.
    pub len: u32,
    /// The window-scale option of a SYN, if it has one.
    pub wscale: Option<u8>,
}

/// TCP option kinds.
const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_WSCALE: u8 = 3;

/// The largest window-scale shift (RFC 7323 §2.3).
const MAX_WSCALE: u8 = 14;

impl TcpSegment {
    /// Reads the segment `l4` (TCP header and payload, as the parser
    /// checked it: the data offset within `l4`). `None` when too short.
    #[inline]
    pub fn read(l4: &[u8]) -> Option<TcpSegment> {
        let h: &[u8; 20] = l4.get(..20)?.try_into().ok()?;
        let hl = usize::from(h[12] >> 4) * 4;
        let flags = h[13];
        let wscale = if flags & flags::SYN != 0 {
            wscale_option(l4.get(20..hl)?)
        } else {
            None
        };
        Some(TcpSegment {
            flags,
            seq: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            ack: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
            window: u16::from_be_bytes([h[14], h[15]]),
            len: u32::try_from(l4.len().checked_sub(hl)?).ok()?,
            wscale,
        })
    }

    /// The sequence number after the segment (SYN and FIN count one each).
    fn end(&self) -> u32 {
        let syn = u32::from(self.flags & flags::SYN != 0);
        let fin = u32::from(self.flags & flags::FIN != 0);
        self.seq.wrapping_add(self.len).wrapping_add(syn + fin)
    }
}

/// The window-scale shift among SYN options (malformed options: none).
fn wscale_option(mut opts: &[u8]) -> Option<u8> {
    while let Some(&kind) = opts.first() {
        match kind {
            OPT_END => return None,
            OPT_NOP => opts = &opts[1..],
            _ => {
                let len = usize::from(*opts.get(1)?);
                if len < 2 || len > opts.len() {
                    return None;
                }
                if kind == OPT_WSCALE && len == 3 {
                    return Some(opts[2].min(MAX_WSCALE));
                }
                opts = &opts[len..];
            }
        }
    }
    None
}

/// How a segment fits the tracked windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentCheck {
    /// In the window (or nothing known to check it against).
    Accepted,
    /// A RST at an exact sequence number: the connection ends.
    Reset,
    /// A RST inside the window but not at an exact sequence number: passed
    /// to the endpoint, the connection stays.
    ResetInWindow,
    /// Outside the window: a RST is dropped; another segment is passed on
    /// but teaches nothing and moves no state.
    OutOfWindow,
}

/// Bits of [`TcpWindow::known`], per direction (index = `Dir::index()`).
const END: [u8; 2] = [0x01, 0x02];
const ACK: [u8; 2] = [0x04, 0x08];
const MAXEND: [u8; 2] = [0x10, 0x20];
const WSCALE: [u8; 2] = [0x40, 0x80];

/// The sequence state of one TCP session, both directions (28 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct TcpWindow {
    /// Per sending direction: the sequence number after the highest one
    /// sent (`td_end`).
    end: [u32; 2],
    /// The highest sequence number the direction may send: the other
    /// side's acknowledgement plus its window (`td_maxend`).
    maxend: [u32; 2],
    /// The highest acknowledgement the direction sent (`td_maxack`).
    ack: [u32; 2],
    /// The window-scale shift the direction's SYN announced.
    scale: [u8; 2],
    /// Which fields hold a value (`END`, `ACK`, `MAXEND`, `WSCALE` bits).
    known: u8,
}

/// `a` is after `b` in sequence space.
#[inline]
fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl TcpWindow {
    /// A read of the struct's last byte (to warm its cache line).
    #[inline]
    pub(crate) fn last_byte(&self) -> u8 {
        self.known
    }

    #[inline]
    fn has(&self, bit: u8) -> bool {
        self.known & bit != 0
    }

    /// [`TcpWindow::check`], then [`TcpWindow::learn`] if the segment is
    /// accepted and not a RST: in one pass for the common segment (no SYN,
    /// FIN or RST).
    #[inline(always)]
    pub fn track(&mut self, state: TcpState, dir: Dir, seg: &TcpSegment) -> SegmentCheck {
        if seg.flags & (flags::SYN | flags::FIN | flags::RST) != 0 {
            let c = self.check(state, dir, seg);
            if c == SegmentCheck::Accepted && seg.flags & flags::RST == 0 {
                self.learn(state, dir, seg);
            }
            return c;
        }
        let (s, r) = match dir {
            Dir::Orig => (0, 1),
            Dir::Reply => (1, 0),
        };
        let known = self.known;
        let end = seg.seq.wrapping_add(seg.len);
        if known & MAXEND[s] != 0 {
            let maxend = self.maxend[s];
            if after(seg.seq, maxend) {
                return SegmentCheck::OutOfWindow;
            }
            if known & ACK[r] != 0 {
                let acked = self.ack[r];
                let win = maxend.wrapping_sub(acked);
                if (win as i32) > 0 && after(acked.wrapping_sub(win), end) {
                    return SegmentCheck::OutOfWindow;
                }
            }
        }
        let ack = seg.flags & flags::ACK != 0;
        if ack && known & END[r] != 0 && after(seg.ack, self.end[r]) {
            return SegmentCheck::OutOfWindow;
        }
        if known & END[s] == 0 || after(end, self.end[s]) {
            self.end[s] = end;
        }
        let mut k = known | END[s];
        if ack {
            if known & ACK[s] == 0 || after(seg.ack, self.ack[s]) {
                self.ack[s] = seg.ack;
            }
            let both = WSCALE[0] | WSCALE[1];
            let shift = if known & both == both {
                self.scale[s]
            } else {
                0
            };
            let edge = seg
                .ack
                .wrapping_add((u32::from(seg.window) << shift).max(1));
            if known & MAXEND[r] == 0 || after(edge, self.maxend[r]) {
                self.maxend[r] = edge;
            }
            k |= ACK[s] | MAXEND[r];
        }
        self.known = k;
        SegmentCheck::Accepted
    }

    /// How segment `seg`, travelling in direction `dir` of a session in
    /// `state`, fits the windows. Changes nothing.
    pub fn check(&self, state: TcpState, dir: Dir, seg: &TcpSegment) -> SegmentCheck {
        let (s, r) = (dir.index(), dir.opposite().index());
        if seg.flags & flags::RST != 0 {
            return self.check_rst(state, dir, seg);
        }
        if seg.flags & flags::SYN != 0 {
            // A SYN opens a connection (or reuses a closed tuple), a SYN-ACK
            // answers one; anywhere else it is a stray that teaches nothing.
            let fits = match (dir, seg.flags & flags::ACK != 0) {
                (Dir::Orig, false) => matches!(state, TcpState::SynSent | TcpState::Closed),
                (Dir::Reply, true) => matches!(state, TcpState::SynSent | TcpState::SynRecv),
                _ => false,
            };
            if !fits {
                return SegmentCheck::OutOfWindow;
            }
        } else if self.has(MAXEND[s]) {
            // Beyond what the receiver's window allows, or more than a
            // window behind what it acknowledged.
            if after(seg.seq, self.maxend[s]) {
                return SegmentCheck::OutOfWindow;
            }
            if self.has(ACK[r]) {
                let acked = self.ack[r];
                let win = self.maxend[s].wrapping_sub(acked);
                if (win as i32) > 0 && after(acked.wrapping_sub(win), seg.end()) {
                    return SegmentCheck::OutOfWindow;
                }
            }
        }
        if seg.flags & flags::ACK != 0 && self.has(END[r]) && after(seg.ack, self.end[r]) {
            // Acknowledges data the other side never sent.
            return SegmentCheck::OutOfWindow;
        }
        SegmentCheck::Accepted
    }

    fn check_rst(&self, state: TcpState, dir: Dir, seg: &TcpSegment) -> SegmentCheck {
        let (s, r) = (dir.index(), dir.opposite().index());
        let seq = seg.seq;
        if state == TcpState::SynSent && dir == Dir::Reply && !self.has(END[s]) {
            // The answer to a SYN: acceptable if it acknowledges the SYN.
            if !self.has(END[r]) {
                return SegmentCheck::Reset;
            }
            return if seg.flags & flags::ACK != 0 && seg.ack == self.end[r] {
                SegmentCheck::Reset
            } else {
                SegmentCheck::OutOfWindow
            };
        }
        let exact = |v: u32| {
            if seq == v {
                SegmentCheck::Reset
            } else {
                SegmentCheck::OutOfWindow
            }
        };
        match (self.has(END[s]), self.has(ACK[r])) {
            (true, true) => {
                // The receiver expects at least its own acknowledgement, at
                // most the sender's next sequence number (or, for the
                // challenge, the end of the receiver's window).
                let (acked, next) = (self.ack[r], self.end[s]);
                if seq == acked || seq == next {
                    return SegmentCheck::Reset;
                }
                let (lo, mut hi) = if after(acked, next) {
                    (next, acked)
                } else {
                    (acked, next)
                };
                if self.has(MAXEND[s]) && after(self.maxend[s], hi) {
                    hi = self.maxend[s];
                }
                if after(seq, lo) && after(hi, seq) {
                    SegmentCheck::ResetInWindow
                } else {
                    SegmentCheck::OutOfWindow
                }
            }
            (true, false) => exact(self.end[s]),
            (false, true) => exact(self.ack[r]),
            // Nothing seen to check it against (a flow picked up with
            // neither side's numbers).
            (false, false) => SegmentCheck::Reset,
        }
    }

    /// Takes in an accepted segment (not a RST): the sender's highest
    /// sequence number and acknowledgement, the receiver's window edge.
    pub fn learn(&mut self, state: TcpState, dir: Dir, seg: &TcpSegment) {
        let (s, r) = (dir.index(), dir.opposite().index());
        let syn = seg.flags & flags::SYN != 0;
        let ack = seg.flags & flags::ACK != 0;
        if syn && !ack && dir == Dir::Orig && state != TcpState::SynRecv {
            // A new connection: nothing of an older one on the tuple holds.
            *self = TcpWindow::default();
        }
        if syn {
            if let Some(ws) = seg.wscale {
                self.scale[s] = ws;
                self.known |= WSCALE[s];
            }
        }
        let end = seg.end();
        if !self.has(END[s]) || after(end, self.end[s]) {
            self.end[s] = end;
            self.known |= END[s];
        }
        if ack {
            if !self.has(ACK[s]) || after(seg.ack, self.ack[s]) {
                self.ack[s] = seg.ack;
                self.known |= ACK[s];
            }
            // Windows are scaled once both sides announced a scale, never
            // in a SYN.
            let scaled = self.known & (WSCALE[0] | WSCALE[1]) == WSCALE[0] | WSCALE[1];
            let shift = if scaled && !syn { self.scale[s] } else { 0 };
            let win = (u32::from(seg.window) << shift).max(1);
            let edge = seg.ack.wrapping_add(win);
            if !self.has(MAXEND[r]) || after(edge, self.maxend[r]) {
                self.maxend[r] = edge;
                self.known |= MAXEND[r];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::flags::{ACK, FIN, RST, SYN};
    use super::*;

    fn seg(flags: u8, seq: u32, ack: u32) -> TcpSegment {
        TcpSegment {
            flags,
            seq,
            ack,
            window: 1000,
            ..TcpSegment::default()
        }
    }

    /// Client ISN 100, server ISN 900, handshake done.
    fn established() -> TcpWindow {
        let mut w = TcpWindow::default();
        w.learn(TcpState::SynSent, Dir::Orig, &seg(SYN, 100, 0));
        w.learn(TcpState::SynSent, Dir::Reply, &seg(SYN | ACK, 900, 101));
        w.learn(TcpState::SynRecv, Dir::Orig, &seg(ACK, 101, 901));
        w
    }

    #[test]
    fn reset_only_at_the_exact_sequence_number() {
        let mut w = established();
        let e = TcpState::Established;
        // Client sends 50 bytes the server has not acknowledged yet.
        let data = TcpSegment {
            len: 50,
            ..seg(ACK, 101, 901)
        };
        assert_eq!(w.check(e, Dir::Orig, &data), SegmentCheck::Accepted);
        w.learn(e, Dir::Orig, &data);
        // From the client: the server's ack (101) or the client's next (151).
        assert_eq!(
            w.check(e, Dir::Orig, &seg(RST, 101, 0)),
            SegmentCheck::Reset
        );
        assert_eq!(
            w.check(e, Dir::Orig, &seg(RST, 151, 0)),
            SegmentCheck::Reset
        );
        assert_eq!(
            w.check(e, Dir::Orig, &seg(RST, 120, 0)),
            SegmentCheck::ResetInWindow
        );
        // Up to the server's window edge (901 acked + 1000).
        assert_eq!(
            w.check(e, Dir::Orig, &seg(RST, 1000, 0)),
            SegmentCheck::ResetInWindow
        );
        for blind in [100, 99, 1101, 0x8000_0000, 0xdead_beef, 5_000_000] {
            assert_eq!(
                w.check(e, Dir::Orig, &seg(RST, blind, 0)),
                SegmentCheck::OutOfWindow,
                "seq {blind}"
            );
        }
        // From the server: the client's ack 901 is exact.
        assert_eq!(
            w.check(e, Dir::Reply, &seg(RST, 901, 0)),
            SegmentCheck::Reset
        );
        assert_eq!(
            w.check(e, Dir::Reply, &seg(RST, 12345, 0)),
            SegmentCheck::OutOfWindow
        );
    }

    #[test]
    fn reset_in_syn_sent_must_acknowledge_the_syn() {
        let mut w = TcpWindow::default();
        w.learn(TcpState::SynSent, Dir::Orig, &seg(SYN, 100, 0));
        let s = TcpState::SynSent;
        assert_eq!(
            w.check(s, Dir::Reply, &seg(RST | ACK, 0, 101)),
            SegmentCheck::Reset
        );
        assert_eq!(
            w.check(s, Dir::Reply, &seg(RST | ACK, 0, 100)),
            SegmentCheck::OutOfWindow
        );
        assert_eq!(
            w.check(s, Dir::Reply, &seg(RST, 101, 0)),
            SegmentCheck::OutOfWindow
        );
        // The client aborting its own SYN: its next sequence number.
        assert_eq!(
            w.check(s, Dir::Orig, &seg(RST, 101, 0)),
            SegmentCheck::Reset
        );
        assert_eq!(
            w.check(s, Dir::Orig, &seg(RST, 7, 0)),
            SegmentCheck::OutOfWindow
        );
    }

    #[test]
    fn blind_segments_teach_nothing() {
        let w = established();
        let e = TcpState::Established;
        // Beyond the client's allowed edge (the server acknowledged 101
        // with a window of 1000), or more than a window behind it.
        assert_eq!(
            w.check(e, Dir::Orig, &seg(ACK, 1_000_000, 901)),
            SegmentCheck::OutOfWindow
        );
        assert_eq!(
            w.check(e, Dir::Orig, &seg(FIN | ACK, 3_000_000_000, 901)),
            SegmentCheck::OutOfWindow
        );
        // Acknowledging server data never sent.
        assert_eq!(
            w.check(e, Dir::Orig, &seg(ACK, 101, 50_000)),
            SegmentCheck::OutOfWindow
        );
        // A SYN on an established connection.
        assert_eq!(
            w.check(e, Dir::Orig, &seg(SYN, 7, 0)),
            SegmentCheck::OutOfWindow
        );
        assert_eq!(
            w.check(e, Dir::Orig, &seg(ACK, 101, 901)),
            SegmentCheck::Accepted
        );
        // A retransmission less than a window old is fine.
        assert_eq!(
            w.check(e, Dir::Orig, &seg(ACK, 101u32.wrapping_sub(900), 901)),
            SegmentCheck::Accepted
        );
    }

    #[test]
    fn window_scale_from_the_syn_options() {
        let opts = [1, 1, 3, 3, 7, 0, 0, 0];
        assert_eq!(wscale_option(&opts), Some(7));
        assert_eq!(wscale_option(&[2, 4, 5, 180, 3, 3, 20]), Some(14));
        assert_eq!(wscale_option(&[3, 9, 1]), None);
        assert_eq!(wscale_option(&[0, 3, 3, 7]), None);
        let mut w = TcpWindow::default();
        let syn = TcpSegment {
            wscale: Some(7),
            ..seg(SYN, 100, 0)
        };
        w.learn(TcpState::SynSent, Dir::Orig, &syn);
        let synack = TcpSegment {
            wscale: Some(4),
            ..seg(SYN | ACK, 900, 101)
        };
        w.learn(TcpState::SynSent, Dir::Reply, &synack);
        // The server advertises 1000 << 4 after the handshake.
        w.learn(TcpState::Established, Dir::Reply, &seg(ACK, 901, 101));
        let e = TcpState::Established;
        assert_eq!(
            w.check(e, Dir::Orig, &seg(ACK, 101 + 15_000, 901)),
            SegmentCheck::Accepted
        );
        assert_eq!(
            w.check(e, Dir::Orig, &seg(ACK, 101 + 17_000, 901)),
            SegmentCheck::OutOfWindow
        );
    }

    #[test]
    fn track_is_check_then_learn() {
        // Random segments over a few connections: the one-pass path and
        // the two steps agree on the verdict and the state.
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let states = [
            TcpState::SynSent,
            TcpState::SynRecv,
            TcpState::Established,
            TcpState::FinWait,
        ];
        for _ in 0..200 {
            let mut a = TcpWindow::default();
            let mut b = TcpWindow::default();
            for _ in 0..50 {
                let v = rnd();
                let flags = [ACK, ACK, ACK, 0, SYN, SYN | ACK, FIN | ACK, RST][(v % 8) as usize];
                // Near the connection's numbers most of the time.
                let near = |w: u64| 1000u32.wrapping_add((w % 3000) as u32).wrapping_sub(500);
                let seg = TcpSegment {
                    flags,
                    seq: if v & 0x100 == 0 {
                        near(v >> 9)
                    } else {
                        (v >> 20) as u32
                    },
                    ack: near(v >> 30),
                    window: (v >> 40) as u16 % 2048,
                    len: ((v >> 56) % 100) as u32,
                    wscale: (v & 0x200 != 0).then_some(((v >> 12) % 15) as u8),
                };
                let dir = if v & 0x400 == 0 {
                    Dir::Orig
                } else {
                    Dir::Reply
                };
                let state = states[((v >> 60) % 4) as usize];
                let ca = a.track(state, dir, &seg);
                let cb = b.check(state, dir, &seg);
                if cb == SegmentCheck::Accepted && seg.flags & RST == 0 {
                    b.learn(state, dir, &seg);
                }
                assert_eq!((ca, a), (cb, b), "{seg:?} {dir:?} {state:?}");
            }
        }
    }

    #[test]
    fn reads_a_segment() {
        let mut l4 = vec![0u8; 28];
        l4[4..8].copy_from_slice(&7u32.to_be_bytes());
        l4[8..12].copy_from_slice(&9u32.to_be_bytes());
        l4[12] = 6 << 4;
        l4[13] = SYN;
        l4[14..16].copy_from_slice(&512u16.to_be_bytes());
        l4[20..24].copy_from_slice(&[1, 3, 3, 8]);
        let s = TcpSegment::read(&l4).expect("segment");
        assert_eq!(
            (s.seq, s.ack, s.window, s.len, s.wscale),
            (7, 9, 512, 4, Some(8))
        );
        assert_eq!(TcpSegment::read(&l4[..10]), None);
    }
}
