//! The one-shot data-path parser.
//!
//! ```
//! use lb_core::packet::{parse, FrameSpec, Kind};
//!
//! let frame = lb_core::packet::build_frame(&FrameSpec {
//!     src: "2001:db8::1".parse().unwrap(),
//!     dst: "2001:db8::2".parse().unwrap(),
//!     proto: 17,
//!     sport: 5353,
//!     dport: 53,
//!     ..FrameSpec::default()
//! });
//! let p = parse(&frame).unwrap();
//! assert_eq!((p.kind, p.proto, p.dport, p.l4_len), (Kind::Ipv6, 17, 53, 8));
//! assert!(parse(&frame[..20]).is_err());
//! ```

use std::net::{IpAddr, Ipv4Addr};

use super::arp::{ArpPacket, ArpRepr};
use super::checksum;
use super::ethernet::EthernetFrame;
use super::gre::GrePacket;
use super::icmp::{Icmpv4Message, Icmpv4Packet};
use super::icmpv6::{Icmpv6Message, Icmpv6Packet};
use super::ip::{protocol_name, IpProtocol};
use super::ipv4::Ipv4Packet;
use super::ipv6::{self, Ipv6Packet};
use super::tcp::TcpPacket;
use super::udp::UdpPacket;
use super::ParseError;
use crate::flow::FlowKey;

/// What the Ethernet payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Ipv4,
    Ipv6,
    Arp,
    /// Anything else, with its EtherType (a second 802.1Q tag is
    /// `Other(0x8100)`).
    Other(u16),
}

/// The result of [`parse`]: offsets and the fields the data path needs.
///
/// For non-IP frames the IP fields are zero/unspecified. For non-first
/// fragments there is no L4 header: ports, flags and `icmp` are empty and
/// `l4_offset`/`l4_len` describe the fragment data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Parsed {
    /// The 802.1Q VLAN id (12 bits) when the frame is tagged.
    pub vlan: Option<u16>,
    /// The EtherType of the payload (after the tag).
    pub ethertype: u16,
    pub kind: Kind,
    /// Offset of the L3 header in the frame.
    pub l3_offset: usize,
    /// Length of the L3 packet (IP total length; 28 for ARP; the rest of
    /// the frame for other kinds). Link padding after it is ignored.
    pub l3_len: usize,
    /// Offset of the L4 header (after IPv4 options / IPv6 extension headers).
    pub l4_offset: usize,
    /// Bytes of L4 header + payload (for UDP: the UDP length field).
    pub l4_len: usize,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The upper-layer protocol (after IPv6 extension headers).
    pub proto: u8,
    /// TTL or hop limit.
    pub ttl: u8,
    pub is_fragment: bool,
    pub is_first_fragment: bool,
    /// TCP/UDP ports; for ICMP(v6) echo both are the identifier.
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    /// ICMP/ICMPv6 type and code.
    pub icmp: Option<(u8, u8)>,
}

impl Parsed {
    /// No frame: a placeholder for [`parse_into`] to write over.
    pub const EMPTY: Parsed = Parsed {
        vlan: None,
        ethertype: 0,
        kind: Kind::Other(0),
        l3_offset: 0,
        l3_len: 0,
        l4_offset: 0,
        l4_len: 0,
        src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        proto: 0,
        ttl: 0,
        is_fragment: false,
        is_first_fragment: false,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp: None,
    };

    fn new(vlan: Option<u16>, ethertype: u16, l3_offset: usize, l3_len: usize) -> Parsed {
        Parsed {
            vlan,
            ethertype,
            kind: Kind::Other(ethertype),
            l3_offset,
            l3_len,
            l4_offset: l3_offset + l3_len,
            ..Parsed::EMPTY
        }
    }

    pub fn is_ip(&self) -> bool {
        matches!(self.kind, Kind::Ipv4 | Kind::Ipv6)
    }

    pub fn is_ipv6(&self) -> bool {
        self.kind == Kind::Ipv6
    }

    /// End of the L3 packet in the frame (start of link padding, if any).
    pub fn l3_end(&self) -> usize {
        self.l3_offset + self.l3_len
    }

    /// An IP packet that carries the L4 header (not a non-first fragment).
    pub fn has_l4_header(&self) -> bool {
        self.is_ip() && (!self.is_fragment || self.is_first_fragment)
    }

    /// An ICMP/ICMPv6 echo request or reply (with its header).
    pub fn is_icmp_echo(&self) -> bool {
        match (self.kind, self.icmp) {
            (Kind::Ipv4, Some((t, _))) => Icmpv4Message::from(t).is_echo(),
            (Kind::Ipv6, Some((t, _))) => Icmpv6Message::from(t).is_echo(),
            _ => false,
        }
    }

    /// An ICMP/ICMPv6 error message that quotes a packet.
    pub fn is_icmp_error(&self) -> bool {
        match (self.kind, self.icmp) {
            (Kind::Ipv4, Some((t, _))) => Icmpv4Message::from(t).is_error(),
            (Kind::Ipv6, Some((t, _))) => Icmpv6Message::from(t).is_error(),
            _ => false,
        }
    }

    /// The 5-tuple of an IP packet.
    pub fn flow_key(&self) -> Option<FlowKey> {
        self.is_ip().then_some(FlowKey {
            src: self.src,
            dst: self.dst,
            proto: self.proto,
            sport: self.sport,
            dport: self.dport,
        })
    }
}

/// Parses an Ethernet frame. Never panics and never allocates; the frame
/// may carry link padding after the IP packet.
#[inline]
pub fn parse(frame: &[u8]) -> Result<Parsed, ParseError> {
    let mut p = Parsed::EMPTY;
    parse_into(frame, &mut p).map(|()| p)
}

/// [`parse`] writing its result into `out` (left unspecified on error):
/// for a caller that keeps the parsed frames of a burst in place, so the
/// result is not copied again while its bytes are still being written.
#[inline]
pub fn parse_into(frame: &[u8], out: &mut Parsed) -> Result<(), ParseError> {
    *out = match parse_simple(frame) {
        Some(p) => p,
        None => parse_general(frame)?,
    };
    Ok(())
}

/// The common case in a few instructions: an untagged IPv4 packet without
/// options, or IPv6 without extension headers, not a fragment, carrying
/// TCP or UDP, all well-formed. `None` for anything else, which
/// [`parse_general`] then handles; where this answers, it answers what
/// `parse_general` would.
#[inline(always)]
pub(crate) fn parse_simple(frame: &[u8]) -> Option<Parsed> {
    const ETH: usize = super::ethernet::HEADER_LEN;
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let (kind, l4_offset, l3_len, src, dst, proto, ttl) = match ethertype {
        0x0800 => {
            let ip: &[u8; 20] = frame.get(ETH..ETH + 20)?.try_into().ok()?;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            // Version 4, no options; neither MF nor an offset.
            if ip[0] != 0x45 || ip[6] & 0x3f != 0 || ip[7] != 0 {
                return None;
            }
            if total < 20 || ETH + total > frame.len() || !checksum::ipv4_header_ok(ip) {
                return None;
            }
            let src = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]);
            let dst = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
            (
                Kind::Ipv4,
                ETH + 20,
                total,
                IpAddr::V4(Ipv4Addr::from(src)),
                IpAddr::V4(Ipv4Addr::from(dst)),
                ip[9],
                ip[8],
            )
        }
        0x86dd => {
            let ip: &[u8; 40] = frame.get(ETH..ETH + 40)?.try_into().ok()?;
            let total = 40 + usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            if ip[0] >> 4 != 6 || ETH + total > frame.len() {
                return None;
            }
            let src: [u8; 16] = ip[8..24].try_into().ok()?;
            let dst: [u8; 16] = ip[24..40].try_into().ok()?;
            (
                Kind::Ipv6,
                ETH + 40,
                total,
                IpAddr::from(src),
                IpAddr::from(dst),
                ip[6],
                ip[7],
            )
        }
        _ => return None,
    };
    let l4 = frame.get(l4_offset..ETH + l3_len)?;
    let (tcp_flags, l4_len) = match proto {
        IpProtocol::TCP => {
            let off = usize::from(*l4.get(12)? >> 4) * 4;
            if l4.len() < 20 || off < 20 || off > l4.len() {
                return None;
            }
            (l4[13], l4.len())
        }
        IpProtocol::UDP => {
            let len = usize::from(u16::from_be_bytes([*l4.get(4)?, *l4.get(5)?]));
            if l4.len() < 8 || len < 8 || len > l4.len() {
                return None;
            }
            (0, len)
        }
        _ => return None,
    };
    Some(Parsed {
        vlan: None,
        ethertype,
        kind,
        l3_offset: ETH,
        l3_len,
        l4_offset,
        l4_len,
        src,
        dst,
        proto,
        ttl,
        is_fragment: false,
        is_first_fragment: false,
        sport: u16::from_be_bytes([l4[0], l4[1]]),
        dport: u16::from_be_bytes([l4[2], l4[3]]),
        tcp_flags,
        icmp: None,
    })
}

/// [`parse`] without its fast path for the common case: every frame the
/// long way.
pub fn parse_general(frame: &[u8]) -> Result<Parsed, ParseError> {
    let eth = EthernetFrame::new_checked(frame)?;
    let ethertype = eth.ethertype_raw();
    let l3_offset = eth.header_len();
    let l3 = &frame[l3_offset..];
    let mut p = Parsed::new(eth.vlan_id(), ethertype, l3_offset, l3.len());
    match ethertype {
        0x0800 => parse_ipv4(l3, &mut p)?,
        0x86dd => parse_ipv6(l3, &mut p)?,
        0x0806 => {
            ArpRepr::parse(&ArpPacket::new_unchecked(l3))?;
            p.kind = Kind::Arp;
            p.l3_len = super::arp::PACKET_LEN;
            p.l4_offset = p.l3_end();
        }
        _ => {}
    }
    Ok(p)
}

fn parse_ipv4(l3: &[u8], p: &mut Parsed) -> Result<(), ParseError> {
    let ip = Ipv4Packet::new_checked(l3)?;
    if !ip.verify_checksum() {
        return Err(ParseError::BadIpv4Checksum);
    }
    p.kind = Kind::Ipv4;
    p.l3_len = ip.total_len() as usize;
    p.l4_offset = p.l3_offset + ip.header_len();
    p.l4_len = p.l3_len - ip.header_len();
    p.src = IpAddr::V4(ip.src_addr());
    p.dst = IpAddr::V4(ip.dst_addr());
    p.proto = ip.protocol_raw();
    p.ttl = ip.ttl();
    p.is_fragment = ip.is_fragment();
    p.is_first_fragment = p.is_fragment && ip.frag_offset() == 0;
    if p.has_l4_header() {
        parse_l4(ip.payload(), p)?;
    }
    Ok(())
}

fn parse_ipv6(l3: &[u8], p: &mut Parsed) -> Result<(), ParseError> {
    let ip = Ipv6Packet::new_checked(l3)?;
    let chain = ip.walk_ext_headers()?;
    p.kind = Kind::Ipv6;
    p.l3_len = ip.total_len();
    p.l4_offset = p.l3_offset + ipv6::HEADER_LEN + chain.l4_offset;
    p.l4_len = ip.payload().len() - chain.l4_offset;
    p.src = IpAddr::V6(ip.src_addr());
    p.dst = IpAddr::V6(ip.dst_addr());
    p.proto = chain.protocol;
    p.ttl = ip.hop_limit();
    if let Some(f) = chain.fragment {
        // An atomic fragment (offset 0, M clear) is a whole packet
        // (RFC 6946).
        p.is_fragment = f.offset != 0 || f.more;
        p.is_first_fragment = p.is_fragment && f.offset == 0;
    }
    if p.has_l4_header() {
        parse_l4(&ip.payload()[chain.l4_offset..], p)?;
    }
    Ok(())
}

fn parse_l4(l4: &[u8], p: &mut Parsed) -> Result<(), ParseError> {
    match (p.proto, p.kind) {
        (IpProtocol::TCP, _) => {
            let tcp = TcpPacket::new_checked(l4)?;
            p.sport = tcp.src_port();
            p.dport = tcp.dst_port();
            p.tcp_flags = tcp.flags().0;
        }
        (IpProtocol::UDP, _) => {
            let udp = UdpPacket::new_unchecked(l4);
            if p.is_fragment {
                // The length field covers the whole datagram.
                if l4.len() < super::udp::HEADER_LEN {
                    return Err(ParseError::TruncatedUdp);
                }
                if (udp.len() as usize) < super::udp::HEADER_LEN {
                    return Err(ParseError::BadUdpLength);
                }
            } else {
                udp.check_len()?;
                p.l4_len = udp.len() as usize;
            }
            p.sport = udp.src_port();
            p.dport = udp.dst_port();
        }
        (IpProtocol::ICMP, Kind::Ipv4) => {
            let icmp = Icmpv4Packet::new_checked(l4)?;
            let t = icmp.msg_type();
            p.icmp = Some((t.into(), icmp.msg_code()));
            if t.is_echo() {
                p.sport = icmp.echo_ident();
                p.dport = p.sport;
            }
        }
        (IpProtocol::ICMPV6, Kind::Ipv6) => {
            let icmp = Icmpv6Packet::new_checked(l4)?;
            let t = icmp.msg_type();
            p.icmp = Some((t.into(), icmp.msg_code()));
            if t.is_echo() {
                p.sport = icmp.echo_ident();
                p.dport = p.sport;
            }
        }
        (IpProtocol::GRE, _) => {
            GrePacket::new_checked(l4)?;
        }
        _ => {}
    }
    Ok(())
}

/// Parses the ARP packet of a frame.
pub fn parse_arp(frame: &[u8]) -> Result<ArpRepr, ParseError> {
    let eth = EthernetFrame::new_checked(frame)?;
    if eth.ethertype_raw() != 0x0806 {
        return Err(ParseError::NotArp);
    }
    ArpRepr::parse(&ArpPacket::new_unchecked(eth.payload()))
}

/// The L4 bytes of `p` in `frame`, bounds-checked.
pub(crate) fn l4_bytes<'a>(frame: &'a [u8], p: &Parsed) -> Option<&'a [u8]> {
    frame.get(p.l4_offset..p.l4_offset.checked_add(p.l4_len)?)
}

/// The pseudo-header sum for `p` with the given L4 length.
pub(crate) fn pseudo_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Option<u16> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Some(checksum::pseudo_header_v4(
            s,
            d,
            proto,
            u16::try_from(len).ok()?,
        )),
        (IpAddr::V6(s), IpAddr::V6(d)) => Some(checksum::pseudo_header_v6(
            s,
            d,
            proto,
            u32::try_from(len).ok()?,
        )),
        _ => None,
    }
}

/// Verifies the TCP, UDP, ICMP, ICMPv6 or GRE (when present) checksum of a
/// parsed frame. UDP over IPv4 without checksum (0) verifies. Fragments
/// cannot be verified (false); protocols without a checksum verify (true).
pub fn verify_l4_checksum(frame: &[u8], p: &Parsed) -> bool {
    if !p.is_ip() {
        return false;
    }
    if p.is_fragment {
        return false;
    }
    let Some(l4) = l4_bytes(frame, p) else {
        return false;
    };
    let with_pseudo = |l4: &[u8]| match pseudo_sum(p.src, p.dst, p.proto, l4.len()) {
        Some(s) => checksum::sum_with(s, l4) == 0xffff,
        None => false,
    };
    match (p.proto, p.kind) {
        (IpProtocol::TCP, _) => with_pseudo(l4),
        (IpProtocol::UDP, k) => {
            let c = l4.get(6..8).map(|b| u16::from_be_bytes([b[0], b[1]]));
            match c {
                None => false,
                Some(0) if k == Kind::Ipv4 => true,
                Some(_) => with_pseudo(l4),
            }
        }
        (IpProtocol::ICMP, Kind::Ipv4) => checksum::sum(l4) == 0xffff,
        (IpProtocol::ICMPV6, Kind::Ipv6) => with_pseudo(l4),
        (IpProtocol::GRE, _) => match GrePacket::new_checked(l4) {
            Ok(g) if g.has_checksum() => checksum::sum(l4) == 0xffff,
            Ok(_) => true,
            Err(_) => false,
        },
        _ => true,
    }
}

/// Computes the TCP, UDP or ICMPv6 checksum of `p` from scratch, for the
/// addresses `src` and `dst` the packet now carries. A frame whose checksum
/// the kernel left partial (CHECKSUM_PARTIAL on veth) must be completed
/// before it leaves through a raw socket: nothing else will. Returns false
/// when the packet has no such checksum or is too short.
pub fn complete_l4_checksum(frame: &mut [u8], p: &Parsed, src: IpAddr, dst: IpAddr) -> bool {
    if !p.has_l4_header() || p.is_fragment {
        return false;
    }
    let field = match (p.proto, p.kind) {
        (IpProtocol::TCP, _) => 16,
        (IpProtocol::UDP, _) => 6,
        (IpProtocol::ICMPV6, Kind::Ipv6) => 2,
        _ => return false,
    };
    let Some(end) = p.l4_offset.checked_add(p.l4_len) else {
        return false;
    };
    let Some(l4) = frame.get_mut(p.l4_offset..end) else {
        return false;
    };
    if l4.len() < field + 2 {
        return false;
    }
    let Some(pseudo) = pseudo_sum(src, dst, p.proto, l4.len()) else {
        return false;
    };
    l4[field..field + 2].copy_from_slice(&[0, 0]);
    let mut c = !checksum::sum_with(pseudo, l4);
    if c == 0 && p.proto == IpProtocol::UDP {
        c = 0xffff;
    }
    l4[field..field + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// Whether the IP packet `p` asks to be source-routed: an IPv4 loose or
/// strict source route option, or an IPv6 routing header of type 0. Only
/// a packet with IPv4 options or IPv6 extension headers is looked at again,
/// so the common packet costs one comparison.
#[inline]
pub fn is_source_routed(frame: &[u8], p: &Parsed) -> bool {
    let plain = match p.kind {
        Kind::Ipv4 => super::ipv4::HEADER_LEN,
        Kind::Ipv6 => ipv6::HEADER_LEN,
        _ => return false,
    };
    p.l4_offset.saturating_sub(p.l3_offset) > plain && has_source_route(frame, p)
}

/// [`is_source_routed`] for a packet with IPv4 options or IPv6 extension
/// headers.
fn has_source_route(frame: &[u8], p: &Parsed) -> bool {
    let header = p.l4_offset.saturating_sub(p.l3_offset);
    match p.kind {
        Kind::Ipv4 if header > super::ipv4::HEADER_LEN => frame
            .get(p.l3_offset + super::ipv4::HEADER_LEN..p.l4_offset)
            .is_some_and(super::ipv4::has_source_route),
        Kind::Ipv6 if header > ipv6::HEADER_LEN => {
            let Some(ip) = frame.get(p.l3_offset..p.l3_end()) else {
                return false;
            };
            let ip = Ipv6Packet::new_unchecked(ip);
            ip.check_len().is_ok() && ip.walk_ext_headers().is_ok_and(|chain| chain.routing_type0)
        }
        _ => false,
    }
}

/// The 5-tuple of the packet quoted in an ICMP/ICMPv6 error message, as
/// it was sent (its source is the original sender). For a quoted ICMP
/// echo both ports are its identifier; for a quoted non-first fragment or
/// a protocol without ports they are 0.
pub fn parse_icmp_inner(frame: &[u8], p: &Parsed) -> Result<FlowKey, ParseError> {
    if !p.has_l4_header() || !p.is_icmp_error() {
        return Err(ParseError::NotIcmpError);
    }
    let truncated = if p.is_ipv6() {
        ParseError::TruncatedIcmpv6
    } else {
        ParseError::TruncatedIcmp
    };
    let l4 = l4_bytes(frame, p).ok_or(truncated)?;
    let inner = l4.get(8..).ok_or(truncated)?;
    let (src, dst, proto, l4_inner, has_l4) = if p.is_ipv6() {
        if inner.len() < ipv6::HEADER_LEN {
            return Err(ParseError::TruncatedIcmpInner);
        }
        let ip = Ipv6Packet::new_unchecked(inner);
        if ip.version() != 6 {
            return Err(ParseError::BadIcmpInner);
        }
        let rest = &inner[ipv6::HEADER_LEN..];
        let chain = ipv6::walk_ext_headers(rest, ip.next_header_raw()).map_err(|e| match e {
            ParseError::TruncatedIpv6ExtHeader => ParseError::TruncatedIcmpInner,
            e => e,
        })?;
        let has_l4 = match chain.fragment {
            Some(f) => f.offset == 0,
            None => true,
        };
        (
            IpAddr::V6(ip.src_addr()),
            IpAddr::V6(ip.dst_addr()),
            chain.protocol,
            &rest[chain.l4_offset..],
            has_l4,
        )
    } else {
        if inner.len() < super::ipv4::HEADER_LEN {
            return Err(ParseError::TruncatedIcmpInner);
        }
        let ip = Ipv4Packet::new_unchecked(inner);
        if ip.version() != 4 || ip.header_len() < super::ipv4::HEADER_LEN {
            return Err(ParseError::BadIcmpInner);
        }
        let l4 = inner
            .get(ip.header_len()..)
            .ok_or(ParseError::TruncatedIcmpInner)?;
        (
            IpAddr::V4(ip.src_addr()),
            IpAddr::V4(ip.dst_addr()),
            ip.protocol_raw(),
            l4,
            ip.frag_offset() == 0,
        )
    };
    let mut key = FlowKey {
        src,
        dst,
        proto,
        sport: 0,
        dport: 0,
    };
    if !has_l4 {
        return Ok(key);
    }
    let be16 = |off: usize| -> Result<u16, ParseError> {
        l4_inner
            .get(off..off + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or(ParseError::TruncatedIcmpInner)
    };
    let echo = match (proto, p.kind) {
        (IpProtocol::TCP | IpProtocol::UDP, _) => {
            key.sport = be16(0)?;
            key.dport = be16(2)?;
            false
        }
        (IpProtocol::ICMP, Kind::Ipv4) => {
            Icmpv4Message::from(*l4_inner.first().ok_or(ParseError::TruncatedIcmpInner)?).is_echo()
        }
        (IpProtocol::ICMPV6, Kind::Ipv6) => {
            Icmpv6Message::from(*l4_inner.first().ok_or(ParseError::TruncatedIcmpInner)?).is_echo()
        }
        _ => false,
    };
    if echo {
        key.sport = be16(4)?;
        key.dport = key.sport;
    }
    Ok(key)
}

/// Writes the trace notation of `p` into `out` (without allocating when
/// `out` has room): `tcp 192.168.1.250:1025 > 192.168.1.11:80`,
/// `udp [2001:db8::1]:53 > [2001:db8::2]:53`, `icmp 198.18.0.2 > 198.18.0.10`;
/// `arp`, or `ethertype 0x88cc` for other frames.
pub fn write_flow(out: &mut impl core::fmt::Write, p: &Parsed) -> core::fmt::Result {
    match p.kind {
        Kind::Arp => return out.write_str("arp"),
        Kind::Other(t) => return write!(out, "ethertype 0x{t:04x}"),
        Kind::Ipv4 | Kind::Ipv6 => {}
    }
    match protocol_name(p.proto) {
        Some(n) => out.write_str(n)?,
        None => write!(out, "{}", p.proto)?,
    }
    let ports = p.has_l4_header() && matches!(p.proto, IpProtocol::TCP | IpProtocol::UDP);
    let addr = |out: &mut dyn core::fmt::Write, a: IpAddr, port: u16| match (a, ports) {
        (IpAddr::V4(a), true) => write!(out, "{a}:{port}"),
        (IpAddr::V6(a), true) => write!(out, "[{a}]:{port}"),
        (a, false) => write!(out, "{a}"),
    };
    out.write_char(' ')?;
    addr(out, p.src, p.sport)?;
    out.write_str(" > ")?;
    addr(out, p.dst, p.dport)
}

/// The trace notation of `p`; see [`write_flow`].
pub fn format_flow(p: &Parsed) -> String {
    let mut s = String::with_capacity(64);
    write_flow(&mut s, p).expect("writing to a String cannot fail");
    s
}
