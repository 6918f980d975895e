//! In-place NAT rewrites with incremental checksum updates (RFC 1624).
//!
//! ```
//! use lb_core::packet::{self, decrement_ttl, rewrite, FrameSpec, L4Csum};
//!
//! let spec = FrameSpec { src: "10.0.0.1".parse().unwrap(), dst: "10.0.0.2".parse().unwrap(),
//!                        proto: 17, sport: 1000, dport: 53, ..FrameSpec::default() };
//! let mut frame = packet::build_frame(&spec);
//! let p = packet::parse(&frame).unwrap();
//! let snat = lb_core::flow::FlowKey { src: "192.0.2.1".parse().unwrap(), sport: 40000, ..p.flow_key().unwrap() };
//! rewrite(&mut frame, &p, &snat, L4Csum::Full).unwrap();
//! assert!(decrement_ttl(&mut frame, &p));
//! let expect = FrameSpec { src: snat.src, sport: 40000, ttl: 63, ..spec };
//! assert_eq!(frame, packet::build_frame(&expect));
//! ```

use std::net::IpAddr;

use super::checksum;
use super::ip::IpProtocol;
use super::parse::{Kind, Parsed};
use super::{icmp, ipv4, ipv6, tcp, udp, ParseError};
use crate::flow::FlowKey;

/// What the L4 checksum field of a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4Csum {
    /// A complete checksum.
    Full,
    /// `CHECKSUM_PARTIAL` (e.g. veth offload): the folded, non-inverted
    /// pseudo-header sum; the device completes it. Only pseudo-header
    /// changes (addresses) are applied, with non-inverted arithmetic.
    Partial,
}

fn rd16(frame: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([frame[off], frame[off + 1]])
}

fn wr16(frame: &mut [u8], off: usize, v: u16) {
    frame[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

/// Rewrites the addresses and (TCP/UDP) ports or (ICMP/ICMPv6 echo)
/// identifier of the parsed packet in `frame` to those of `new` (for echo,
/// `new.sport` is the identifier; the protocol of `new` is ignored),
/// updating the IPv4 header checksum and the L4 checksum incrementally.
///
/// UDP over IPv4 without checksum (0) keeps 0; a UDP checksum that comes
/// out as 0 is stored as 0xffff. For non-first fragments only the
/// addresses change. Does not allocate.
///
/// Limitation: an IPv6 packet with a routing header (segments left > 0)
/// has the final destination, not the destination field, in its
/// pseudo-header; rewriting its destination leaves a wrong L4 checksum.
///
/// Errors: [`ParseError::NotIp`], [`ParseError::AddressFamilyMismatch`],
/// or a truncation error when `frame` is shorter than `p` says (a `p` from
/// another frame).
pub fn rewrite(
    frame: &mut [u8],
    p: &Parsed,
    new: &FlowKey,
    csum: L4Csum,
) -> Result<(), ParseError> {
    if csum == L4Csum::Full && rewrite_simple(frame, p, new).is_some() {
        return Ok(());
    }
    rewrite_general(frame, p, new, csum)
}

/// The common case in straight-line code: TCP or UDP right after an IPv4
/// header without options or an IPv6 header without extension headers,
/// with a full checksum, all within the frame. `None` (and the frame
/// unchanged) for anything else, which [`rewrite_general`] then handles;
/// where this answers, it writes what `rewrite_general` would.
#[inline(always)]
pub(crate) fn rewrite_simple(frame: &mut [u8], p: &Parsed, new: &FlowKey) -> Option<()> {
    let (udp, l4_len) = match p.proto {
        IpProtocol::TCP => (false, tcp::HEADER_LEN),
        IpProtocol::UDP => (true, udp::HEADER_LEN),
        _ => return None,
    };
    if !p.has_l4_header() || p.l3_end() > frame.len() {
        return None;
    }
    match (p.kind, p.src, new.src, new.dst) {
        (Kind::Ipv4, IpAddr::V4(_), IpAddr::V4(ns), IpAddr::V4(nd)) => {
            const L4: usize = ipv4::HEADER_LEN;
            let h: &mut [u8; L4 + L4_SPAN] = simple_span(frame, p, L4, l4_len)?;
            let (ns, nd) = (ns.to_bits(), nd.to_bits());
            let mut addrs = Delta::default();
            addrs.change32(u32::from_be_bytes([h[12], h[13], h[14], h[15]]), ns);
            addrs.change32(u32::from_be_bytes([h[16], h[17], h[18], h[19]]), nd);
            h[12..16].copy_from_slice(&ns.to_be_bytes());
            h[16..20].copy_from_slice(&nd.to_be_bytes());
            let hc = addrs.apply(u16::from_be_bytes([h[10], h[11]]));
            h[10..12].copy_from_slice(&hc.to_be_bytes());
            let (_, l4) = h.split_at_mut(L4);
            ports_simple(l4.try_into().ok()?, udp, udp, addrs, new);
        }
        (Kind::Ipv6, IpAddr::V6(_), IpAddr::V6(ns), IpAddr::V6(nd)) => {
            const L4: usize = ipv6::HEADER_LEN;
            let h: &mut [u8; L4 + L4_SPAN] = simple_span(frame, p, L4, l4_len)?;
            let (ns, nd) = (ns.to_bits(), nd.to_bits());
            let mut addrs = Delta::default();
            let (src, rest) = h.split_at_mut(16 + 8);
            let (dst, l4) = rest.split_at_mut(16);
            let src: &mut [u8; 16] = src.get_mut(8..)?.try_into().ok()?;
            let dst: &mut [u8; 16] = dst.try_into().ok()?;
            addrs.change128(u128::from_be_bytes(*src), ns);
            addrs.change128(u128::from_be_bytes(*dst), nd);
            *src = ns.to_be_bytes();
            *dst = nd.to_be_bytes();
            ports_simple(l4.try_into().ok()?, udp, false, addrs, new);
        }
        _ => return None,
    }
    Some(())
}

/// The IP header of `ip_len` bytes and the L4 header after it, `N` bytes
/// in all, when the packet is laid out so: no IP options or extension
/// headers, an L4 header of `l4_len` within the packet, `N` bytes within
/// the frame.
#[inline(always)]
fn simple_span<'a, const N: usize>(
    frame: &'a mut [u8],
    p: &Parsed,
    ip_len: usize,
    l4_len: usize,
) -> Option<&'a mut [u8; N]> {
    let l3 = p.l3_offset;
    if p.l4_offset != l3 + ip_len || p.l3_len < ip_len + l4_len {
        return None;
    }
    frame.get_mut(l3..l3 + N)?.try_into().ok()
}

/// The bytes of a TCP or UDP header that [`rewrite_simple`] reads: the
/// ports to the end of TCP's checksum.
const L4_SPAN: usize = tcp::CHECKSUM_OFFSET + 2;

/// The ports and the L4 checksum of [`rewrite_simple`]: `addrs` is the
/// addresses' change (in the pseudo-header); `keep_zero` keeps a zero UDP
/// checksum (IPv4: none was computed).
#[inline(always)]
fn ports_simple(l4: &mut [u8; L4_SPAN], udp: bool, keep_zero: bool, addrs: Delta, new: &FlowKey) {
    let csum_at = if udp {
        udp::CHECKSUM_OFFSET
    } else {
        tcp::CHECKSUM_OFFSET
    };
    let ports = (u32::from(new.sport) << 16) | u32::from(new.dport);
    let mut d = addrs;
    d.change32(u32::from_be_bytes([l4[0], l4[1], l4[2], l4[3]]), ports);
    l4[0..4].copy_from_slice(&ports.to_be_bytes());
    let Some(c) = l4.get_mut(csum_at..csum_at + 2) else {
        return;
    };
    let old = u16::from_be_bytes([c[0], c[1]]);
    if keep_zero && old == 0 {
        return;
    }
    let v = match d.apply(old) {
        0 if udp => 0xffff,
        v => v,
    };
    c.copy_from_slice(&v.to_be_bytes());
}

/// [`rewrite`] for every packet it accepts.
pub(crate) fn rewrite_general(
    frame: &mut [u8],
    p: &Parsed,
    new: &FlowKey,
    csum: L4Csum,
) -> Result<(), ParseError> {
    let v6 = match p.kind {
        Kind::Ipv4 => false,
        Kind::Ipv6 => true,
        _ => return Err(ParseError::NotIp),
    };
    if new.src.is_ipv6() != v6 || new.dst.is_ipv6() != v6 || p.src.is_ipv6() != v6 {
        return Err(ParseError::AddressFamilyMismatch);
    }
    let l3_end = p.l3_end();
    let l3_min = if v6 {
        ipv6::HEADER_LEN
    } else {
        ipv4::HEADER_LEN
    };
    if l3_end > frame.len() || p.l3_len < l3_min {
        return Err(if v6 {
            ParseError::TruncatedIpv6
        } else {
            ParseError::TruncatedIpv4
        });
    }

    // Where the L4 checksum is, whether it covers the pseudo-header, and
    // how long the L4 header must be.
    let l4 = if p.has_l4_header() {
        match (p.proto, v6) {
            (IpProtocol::TCP, _) => Some((
                tcp::CHECKSUM_OFFSET,
                true,
                tcp::HEADER_LEN,
                ParseError::TruncatedTcp,
            )),
            (IpProtocol::UDP, _) => Some((
                udp::CHECKSUM_OFFSET,
                true,
                udp::HEADER_LEN,
                ParseError::TruncatedUdp,
            )),
            (IpProtocol::ICMP, false) => Some((
                icmp::CHECKSUM_OFFSET,
                false,
                icmp::HEADER_LEN,
                ParseError::TruncatedIcmp,
            )),
            (IpProtocol::ICMPV6, true) => Some((
                super::icmpv6::CHECKSUM_OFFSET,
                true,
                super::icmpv6::HEADER_LEN,
                ParseError::TruncatedIcmpv6,
            )),
            _ => None,
        }
    } else {
        None
    };
    if let Some((_, _, hl, err)) = l4 {
        match p.l4_offset.checked_add(hl) {
            Some(end) if end <= l3_end => {}
            _ => return Err(err),
        }
    }
    let partial = csum == L4Csum::Partial;
    // The L4 checksum field, if it is to be updated; UDP over IPv4
    // without checksum stays without.
    let l4c = l4.and_then(|(off, pseudo, _, _)| {
        let at = p.l4_offset + off;
        let none = p.proto == IpProtocol::UDP && !v6 && !partial && rd16(frame, at) == 0;
        (!none).then_some((at, pseudo))
    });

    // Every changed field adds `!old + new` (RFC 1624) to one wide
    // accumulator per checksum, folded once at the end.
    let mut addrs = Delta::default();
    if let (IpAddr::V4(ns), IpAddr::V4(nd)) = (new.src, new.dst) {
        let a = p.l3_offset + ipv4::SRC_OFFSET;
        addrs.change32(rd32(frame, a), ns.to_bits());
        addrs.change32(rd32(frame, a + 4), nd.to_bits());
        frame[a..a + 4].copy_from_slice(&ns.octets());
        frame[a + 4..a + 8].copy_from_slice(&nd.octets());
        let c = p.l3_offset + ipv4::CHECKSUM_OFFSET;
        wr16(frame, c, addrs.apply(rd16(frame, c)));
    } else if let (IpAddr::V6(ns), IpAddr::V6(nd)) = (new.src, new.dst) {
        let a = p.l3_offset + ipv6::SRC_OFFSET;
        addrs.change128(rd128(frame, a), ns.to_bits());
        addrs.change128(rd128(frame, a + 16), nd.to_bits());
        frame[a..a + 16].copy_from_slice(&ns.octets());
        frame[a + 16..a + 32].copy_from_slice(&nd.octets());
    } else {
        return Err(ParseError::AddressFamilyMismatch);
    }

    // Ports / echo identifier (only where the L4 header was bounds-checked
    // above): covered by full checksums only.
    let mut ports = Delta::default();
    if l4.is_some() {
        match p.proto {
            IpProtocol::TCP | IpProtocol::UDP => {
                let at = p.l4_offset;
                let new_ports = (u32::from(new.sport) << 16) | u32::from(new.dport);
                ports.change32(rd32(frame, at), new_ports);
                frame[at..at + 4].copy_from_slice(&new_ports.to_be_bytes());
            }
            IpProtocol::ICMP | IpProtocol::ICMPV6 if p.is_icmp_echo() => {
                let at = p.l4_offset + icmp::ECHO_IDENT_OFFSET;
                ports.change16(rd16(frame, at), new.sport);
                wr16(frame, at, new.sport);
            }
            _ => {}
        }
    }

    if let Some((at, pseudo)) = l4c {
        let old = rd16(frame, at);
        let v = if partial {
            // The field holds the pseudo-header sum: only addresses count,
            // in non-inverted arithmetic.
            if pseudo {
                addrs.apply_sum(old)
            } else {
                old
            }
        } else {
            let mut d = ports;
            if pseudo {
                d.0 += addrs.0;
            }
            let v = d.apply(old);
            if p.proto == IpProtocol::UDP && v == 0 {
                0xffff
            } else {
                v
            }
        };
        wr16(frame, at, v);
    }
    Ok(())
}

#[inline]
fn rd32(frame: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(frame[off..off + 4].try_into().expect("4-byte range"))
}

#[inline]
fn rd128(frame: &[u8], off: usize) -> u128 {
    u128::from_be_bytes(frame[off..off + 16].try_into().expect("16-byte range"))
}

/// The change to a one's complement sum as fields change: the sum of
/// `!old + new` over them, as 32-bit halves of 16-bit word pairs in a
/// 64-bit accumulator (which cannot overflow for a header's worth of
/// fields), folded when applied.
#[derive(Debug, Clone, Copy, Default)]
struct Delta(u64);

impl Delta {
    #[inline]
    fn change16(&mut self, old: u16, new: u16) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    #[inline]
    fn change32(&mut self, old: u32, new: u32) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    #[inline]
    fn change128(&mut self, old: u128, new: u128) {
        for shift in [0, 32, 64, 96] {
            self.change32((old >> shift) as u32, (new >> shift) as u32);
        }
    }

    /// The checksum `hc` (inverted sum) after the changes: `~(~hc + Δ)`.
    #[inline]
    fn apply(self, hc: u16) -> u16 {
        !checksum::fold(u64::from(!hc) + self.0)
    }

    /// A non-inverted sum `s` after the changes: `s + Δ`.
    #[inline]
    fn apply_sum(self, s: u16) -> u16 {
        checksum::fold(u64::from(s) + self.0)
    }
}

/// Decrements the TTL / hop limit of the parsed IP packet, updating the
/// IPv4 header checksum incrementally. Returns false (and leaves the frame
/// unchanged) when the result would be 0, or for non-IP frames.
#[inline]
pub fn decrement_ttl(frame: &mut [u8], p: &Parsed) -> bool {
    match p.kind {
        Kind::Ipv4 => {
            // TTL, protocol, then the header checksum.
            let off = p.l3_offset + ipv4::TTL_OFFSET;
            let Some(h) = frame.get_mut(off..off + 4) else {
                return false;
            };
            if h[0] <= 1 {
                return false;
            }
            h[0] -= 1;
            // The TTL is the high byte of its word: the sum loses 0x0100,
            // the checksum (its complement) gains it, with the end-around
            // carry (RFC 1141, as Linux's ip_decrease_ttl).
            let c = u32::from(u16::from_be_bytes([h[2], h[3]])) + 0x0100;
            let [_, _, hi, lo] = c.wrapping_add(u32::from(c >= 0xffff)).to_be_bytes();
            h[2] = hi;
            h[3] = lo;
            true
        }
        Kind::Ipv6 => match frame.get_mut(p.l3_offset + ipv6::HOP_LIMIT_OFFSET) {
            Some(h) if *h > 1 => {
                *h -= 1;
                true
            }
            _ => false,
        },
        _ => false,
    }
}
