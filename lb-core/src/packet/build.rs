//! Frame builders for `lbctl eval`, tests, health checks and the control
//! replies of the data plane (ARP, neighbour discovery, echo, ICMP errors).
//! These allocate; the per-packet path uses [`super::rewrite()`] instead.
//!
//! ```
//! use lb_core::packet::{build_frame, parse, FrameSpec};
//!
//! let ping = build_frame(&FrameSpec { src: "198.18.0.2".parse().unwrap(),
//!                                     dst: "198.18.0.10".parse().unwrap(),
//!                                     proto: 1, sport: 7, ..FrameSpec::default() });
//! let p = parse(&ping).unwrap();
//! assert_eq!((p.icmp, p.sport, p.dport), (Some((8, 0)), 7, 7));
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::arp::{self, ArpOp, ArpPacket, ArpRepr};
use super::ethernet::{self, MacAddr};
use super::icmp::{Icmpv4Message, Icmpv4Packet};
use super::icmpv6::{self, Icmpv6Message, Icmpv6Packet};
use super::ip::IpProtocol;
use super::ipv4::{self, Ipv4Packet};
use super::ipv6::{self, Ipv6Packet};
use super::parse::{l4_bytes, pseudo_sum, Kind, Parsed};
use super::tcp::{self, TcpFlags, TcpPacket};
use super::udp::{self, UdpPacket};
use super::ParseError;

/// What [`build_frame`] builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSpec {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    /// 802.1Q VLAN id (12 bits) of a tag to add.
    pub vlan: Option<u16>,
    /// Source and destination must be of the same family.
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TCP, UDP, ICMP (IPv4), ICMPv6 (IPv6) get a header; other protocol
    /// numbers carry `payload` as is.
    pub proto: u8,
    /// TCP/UDP ports; for ICMP echo `sport` is the identifier and `dport`
    /// the sequence number.
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    /// ICMP/ICMPv6 type and code; `None` = echo request. The
    /// rest-of-header of non-echo messages is 0.
    pub icmp: Option<(u8, u8)>,
    /// TTL or hop limit.
    pub ttl: u8,
    pub payload: Vec<u8>,
}

impl Default for FrameSpec {
    /// A TCP SYN 0.0.0.0:0 > 0.0.0.0:0 between 02:00:00:00:00:01 and
    /// 02:00:00:00:00:02, TTL 64.
    fn default() -> Self {
        FrameSpec {
            src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            vlan: None,
            src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            proto: IpProtocol::TCP,
            sport: 0,
            dport: 0,
            tcp_flags: TcpFlags::SYN,
            tcp_seq: 0,
            tcp_ack: 0,
            icmp: None,
            ttl: 64,
            payload: Vec::new(),
        }
    }
}

/// Appends an IPv4 or IPv6 header (no options / extension headers, IPv4
/// with DF and a correct checksum).
///
/// # Panics
/// If the families differ or the packet would exceed 65535 bytes.
fn emit_ip(out: &mut Vec<u8>, src: IpAddr, dst: IpAddr, proto: u8, ttl: u8, l4_len: usize) {
    let start = out.len();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = u16::try_from(ipv4::HEADER_LEN + l4_len)
                .expect("IPv4 packet longer than 65535 bytes");
            out.resize(start + ipv4::HEADER_LEN, 0);
            let mut ip = Ipv4Packet::new_unchecked(&mut out[start..]);
            ip.set_version(4);
            ip.set_header_len(ipv4::HEADER_LEN);
            ip.set_total_len(total);
            ip.set_frag(true, false, 0);
            ip.set_ttl(ttl);
            ip.set_protocol(proto.into());
            ip.set_src_addr(s);
            ip.set_dst_addr(d);
            ip.fill_checksum();
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let len = u16::try_from(l4_len).expect("IPv6 payload longer than 65535 bytes");
            out.resize(start + ipv6::HEADER_LEN, 0);
            let mut ip = Ipv6Packet::new_unchecked(&mut out[start..]);
            ip.set_version(6);
            ip.set_payload_len(len);
            ip.set_next_header(proto.into());
            ip.set_hop_limit(ttl);
            ip.set_src_addr(s);
            ip.set_dst_addr(d);
        }
        _ => panic!("source and destination addresses of different families"),
    }
}

fn ethertype_of(a: IpAddr) -> u16 {
    if a.is_ipv6() {
        0x86dd
    } else {
        0x0800
    }
}

/// Builds a frame; see [`build_frame_into`].
pub fn build_frame(spec: &FrameSpec) -> Vec<u8> {
    let mut v = Vec::new();
    build_frame_into(spec, &mut v);
    v
}

/// Builds a valid Ethernet + IPv4/IPv6 (+ TCP/UDP/ICMP/ICMPv6) frame with
/// correct checksums into `out` (cleared first, so a buffer can be reused).
/// TCP segments have no options and window 65535.
///
/// # Panics
/// If `spec.src` and `spec.dst` are of different families, or the packet
/// would exceed 65535 bytes.
pub fn build_frame_into(spec: &FrameSpec, out: &mut Vec<u8>) {
    out.clear();
    let v6 = spec.src.is_ipv6();
    ethernet::emit(
        out,
        spec.dst_mac,
        spec.src_mac,
        spec.vlan,
        ethertype_of(spec.src),
    );
    let hdr_len = match spec.proto {
        IpProtocol::TCP => tcp::HEADER_LEN,
        IpProtocol::UDP => udp::HEADER_LEN,
        IpProtocol::ICMP if !v6 => 8,
        IpProtocol::ICMPV6 if v6 => 8,
        _ => 0,
    };
    let l4_len = hdr_len + spec.payload.len();
    emit_ip(out, spec.src, spec.dst, spec.proto, spec.ttl, l4_len);
    let l4 = out.len();
    out.resize(l4 + hdr_len, 0);
    out.extend_from_slice(&spec.payload);
    let pseudo = pseudo_sum(spec.src, spec.dst, spec.proto, l4_len)
        .expect("same family, length checked by emit_ip");
    let seg = &mut out[l4..];
    match spec.proto {
        IpProtocol::TCP => {
            let mut t = TcpPacket::new_unchecked(seg);
            t.set_src_port(spec.sport);
            t.set_dst_port(spec.dport);
            t.set_seq_number(spec.tcp_seq);
            t.set_ack_number(spec.tcp_ack);
            t.set_header_len(tcp::HEADER_LEN);
            t.set_flags(TcpFlags(spec.tcp_flags));
            t.set_window_len(65535);
            t.fill_checksum(pseudo);
        }
        IpProtocol::UDP => {
            let mut u = UdpPacket::new_unchecked(seg);
            u.set_src_port(spec.sport);
            u.set_dst_port(spec.dport);
            u.set_len(l4_len as u16);
            u.fill_checksum(pseudo);
        }
        IpProtocol::ICMP if !v6 => {
            let (t, c) = spec.icmp.unwrap_or((Icmpv4Message::ECHO_REQUEST, 0));
            let mut m = Icmpv4Packet::new_unchecked(seg);
            m.set_msg_type(t.into());
            m.set_msg_code(c);
            if Icmpv4Message::from(t).is_echo() {
                m.set_echo_ident(spec.sport);
                m.set_echo_seq_no(spec.dport);
            }
            m.fill_checksum();
        }
        IpProtocol::ICMPV6 if v6 => {
            let (t, c) = spec.icmp.unwrap_or((Icmpv6Message::ECHO_REQUEST, 0));
            let mut m = Icmpv6Packet::new_unchecked(seg);
            m.set_msg_type(t.into());
            m.set_msg_code(c);
            if Icmpv6Message::from(t).is_echo() {
                m.set_echo_ident(spec.sport);
                m.set_echo_seq_no(spec.dport);
            }
            m.fill_checksum(pseudo);
        }
        _ => {}
    }
}

/// Largest IPv4 datagram an ICMP error may fill (RFC 1812 4.3.2.3).
const ICMPV4_ERROR_MAX: usize = 576;
/// Largest IPv6 packet an ICMPv6 error may fill (RFC 4443 2.4(c)).
const ICMPV6_ERROR_MAX: usize = 1280;

/// Builds an ICMP (IPv4) or ICMPv6 error message from `src` to the sender
/// of the parsed `original_frame`, quoting the original IP packet (header
/// and as much payload as fits in 576 / 1280 bytes). `mtu_or_pointer` is
/// the rest-of-header: the next-hop MTU of IPv4 "fragmentation needed"
/// (low 16 bits) or of ICMPv6 "packet too big", the pointer of a parameter
/// problem, otherwise usually 0. The frame keeps the original VLAN.
///
/// Whether an error may be sent at all (not in response to an error, a
/// multicast or a non-first fragment; rate limits) is the caller's call.
#[allow(clippy::too_many_arguments)]
pub fn build_icmp_error(
    original_frame: &[u8],
    p: &Parsed,
    src: IpAddr,
    icmp_type: u8,
    code: u8,
    mtu_or_pointer: u32,
    src_mac: MacAddr,
    dst_mac: MacAddr,
) -> Result<Vec<u8>, ParseError> {
    let mut out = Vec::new();
    build_icmp_error_into(
        &mut out,
        original_frame,
        p,
        src,
        icmp_type,
        code,
        mtu_or_pointer,
        src_mac,
        dst_mac,
    )?;
    Ok(out)
}

/// [`build_icmp_error`] into `out` (cleared first), so that a data plane
/// answering errors reuses one buffer. `out` is left empty on error.
#[allow(clippy::too_many_arguments)]
pub fn build_icmp_error_into(
    out: &mut Vec<u8>,
    original_frame: &[u8],
    p: &Parsed,
    src: IpAddr,
    icmp_type: u8,
    code: u8,
    mtu_or_pointer: u32,
    src_mac: MacAddr,
    dst_mac: MacAddr,
) -> Result<(), ParseError> {
    out.clear();
    if !p.is_ip() {
        return Err(ParseError::NotIp);
    }
    let v6 = p.is_ipv6();
    if src.is_ipv6() != v6 || p.src.is_ipv6() != v6 {
        return Err(ParseError::AddressFamilyMismatch);
    }
    let original = original_frame.get(p.l3_offset..p.l3_end()).ok_or(if v6 {
        ParseError::TruncatedIpv6
    } else {
        ParseError::TruncatedIpv4
    })?;
    let (max, proto) = if v6 {
        (ICMPV6_ERROR_MAX - ipv6::HEADER_LEN - 8, IpProtocol::ICMPV6)
    } else {
        (ICMPV4_ERROR_MAX - ipv4::HEADER_LEN - 8, IpProtocol::ICMP)
    };
    let quoted = &original[..original.len().min(max)];
    let l4_len = 8 + quoted.len();
    out.reserve(ethernet::VLAN_HEADER_LEN + ipv6::HEADER_LEN + l4_len);
    ethernet::emit(out, dst_mac, src_mac, p.vlan, ethertype_of(src));
    emit_ip(out, src, p.src, proto, 64, l4_len);
    let l4 = out.len();
    out.resize(l4 + 8, 0);
    out.extend_from_slice(quoted);
    let rest = if !v6 && icmp_type == Icmpv4Message::PARAM_PROBLEM {
        (mtu_or_pointer & 0xff) << 24
    } else {
        mtu_or_pointer
    };
    if v6 {
        let pseudo = pseudo_sum(src, p.src, proto, l4_len).expect("same family, bounded length");
        let mut m = Icmpv6Packet::new_unchecked(&mut out[l4..]);
        m.set_msg_type(icmp_type.into());
        m.set_msg_code(code);
        m.set_rest_of_header(rest);
        m.fill_checksum(pseudo);
    } else {
        let mut m = Icmpv4Packet::new_unchecked(&mut out[l4..]);
        m.set_msg_type(icmp_type.into());
        m.set_msg_code(code);
        m.set_rest_of_header(rest);
        m.fill_checksum();
    }
    Ok(())
}

/// Inserts IPv4 `options` (padded with end-of-list to a multiple of 4
/// bytes) after the IPv4 header of a frame [`build_frame`] built, fixing
/// the header length, total length and header checksum. For tests and
/// `lbctl eval` traces.
///
/// # Panics
/// If the frame holds no IPv4 header without options, or the options do
/// not fit in 40 bytes.
pub fn add_ipv4_options(frame: &mut Vec<u8>, options: &[u8]) {
    let p = super::parse::parse_general(frame).expect("a valid frame");
    assert!(p.kind == Kind::Ipv4 && p.l4_offset == p.l3_offset + ipv4::HEADER_LEN);
    let padded = options.len().div_ceil(4) * 4;
    assert!(padded <= 40, "IPv4 options are at most 40 bytes");
    let mut opts = options.to_vec();
    opts.resize(padded, 0);
    let at = p.l3_offset + ipv4::HEADER_LEN;
    frame.splice(at..at, opts);
    let total = u16::try_from(p.l3_len + padded).expect("fits");
    let mut ip = Ipv4Packet::new_unchecked(&mut frame[p.l3_offset..]);
    ip.set_header_len(ipv4::HEADER_LEN + padded);
    ip.set_total_len(total);
    ip.fill_checksum();
}

/// Inserts an IPv6 extension header of kind `next_header` (its own next
/// header and length bytes are filled in; `body` is the rest, padded with
/// zeros to a multiple of 8 bytes with them) right after the IPv6 header
/// of a frame [`build_frame`] built. The L4 checksum stays valid (the
/// pseudo-header does not change). For tests and `lbctl eval` traces.
///
/// # Panics
/// If the frame holds no IPv6 packet or the header would exceed 2048 bytes.
pub fn add_ipv6_ext_header(frame: &mut Vec<u8>, next_header: u8, body: &[u8]) {
    let p = super::parse::parse_general(frame).expect("a valid frame");
    assert!(p.kind == Kind::Ipv6);
    let len = (body.len() + 2).div_ceil(8) * 8;
    let units = u8::try_from(len / 8 - 1).expect("extension header too long");
    let first = frame[p.l3_offset + 6];
    let mut hdr = vec![first, units];
    hdr.extend_from_slice(body);
    hdr.resize(len, 0);
    let at = p.l3_offset + ipv6::HEADER_LEN;
    frame.splice(at..at, hdr);
    let payload = u16::try_from(p.l3_len - ipv6::HEADER_LEN + len).expect("fits");
    let mut ip = Ipv6Packet::new_unchecked(&mut frame[p.l3_offset..]);
    ip.set_next_header(next_header.into());
    ip.set_payload_len(payload);
}

/// Builds an Ethernet/IPv4 ARP frame (not padded to 60 bytes).
pub fn build_arp(repr: &ArpRepr, eth_dst: MacAddr, vlan: Option<u16>) -> Vec<u8> {
    let mut out = Vec::with_capacity(ethernet::VLAN_HEADER_LEN + arp::PACKET_LEN);
    ethernet::emit(&mut out, eth_dst, repr.sender_mac, vlan, 0x0806);
    let start = out.len();
    out.resize(start + arp::PACKET_LEN, 0);
    repr.emit(&mut ArpPacket::new_unchecked(&mut out[start..]));
    out
}

/// A broadcast "who has `target_ip`? tell `my_ip`".
pub fn build_arp_request(
    my_mac: MacAddr,
    my_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
    vlan: Option<u16>,
) -> Vec<u8> {
    let repr = ArpRepr {
        op: ArpOp::Request,
        sender_mac: my_mac,
        sender_ip: my_ip,
        target_mac: MacAddr::ZERO,
        target_ip,
    };
    build_arp(&repr, MacAddr::BROADCAST, vlan)
}

/// The reply to `request` ("`request.target_ip` is at `my_mac`"), unicast
/// to the requester.
pub fn build_arp_reply(request: &ArpRepr, my_mac: MacAddr, vlan: Option<u16>) -> Vec<u8> {
    let repr = ArpRepr {
        op: ArpOp::Reply,
        sender_mac: my_mac,
        sender_ip: request.target_ip,
        target_mac: request.sender_mac,
        target_ip: request.sender_ip,
    };
    build_arp(&repr, request.sender_mac, vlan)
}

/// The solicited-node multicast address of `addr` (ff02::1:ffXX:XXXX).
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | o[13] as u16,
        u16::from_be_bytes([o[14], o[15]]),
    )
}

#[allow(clippy::too_many_arguments)]
fn build_nd(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    msg: Icmpv6Message,
    flags: u8,
    target: Ipv6Addr,
    option: Option<u8>,
    vlan: Option<u16>,
) -> Vec<u8> {
    let l4_len = icmpv6::ND_LEN + if option.is_some() { 8 } else { 0 };
    let mut out = Vec::with_capacity(ethernet::VLAN_HEADER_LEN + ipv6::HEADER_LEN + l4_len);
    ethernet::emit(&mut out, dst_mac, src_mac, vlan, 0x86dd);
    emit_ip(
        &mut out,
        src.into(),
        dst.into(),
        IpProtocol::ICMPV6,
        255,
        l4_len,
    );
    let l4 = out.len();
    out.resize(l4 + icmpv6::ND_LEN, 0);
    if let Some(kind) = option {
        out.extend_from_slice(&[kind, 1]);
        out.extend_from_slice(&src_mac.0);
    }
    let pseudo = pseudo_sum(src.into(), dst.into(), IpProtocol::ICMPV6, l4_len)
        .expect("same family, small length");
    let mut m = Icmpv6Packet::new_unchecked(&mut out[l4..]);
    m.set_msg_type(msg);
    m.set_msg_code(0);
    m.set_na_flags(flags);
    m.set_nd_target(target);
    m.fill_checksum(pseudo);
    out
}

/// A neighbour solicitation for `target` from `src_ip`, to the target's
/// solicited-node multicast address, with a source link-layer address
/// option (omitted when `src_ip` is unspecified, for duplicate address
/// detection). Hop limit 255.
pub fn build_neighbor_solicitation(
    src_mac: MacAddr,
    src_ip: Ipv6Addr,
    target: Ipv6Addr,
    vlan: Option<u16>,
) -> Vec<u8> {
    let dst = solicited_node(target);
    let option = (!src_ip.is_unspecified()).then_some(icmpv6::ND_OPT_SOURCE_LLADDR);
    build_nd(
        src_mac,
        MacAddr::from_ipv6_multicast(dst),
        src_ip,
        dst,
        Icmpv6Message::NeighborSolicit,
        0,
        target,
        option,
        vlan,
    )
}

/// A neighbour advertisement "`target` is at `src_mac`" sent from
/// `target` to `dst_ip`/`dst_mac`, with the override flag, the solicited
/// flag when `solicited`, and a target link-layer address option. An
/// unspecified `dst_ip` (answer to duplicate address detection) sends an
/// unsolicited advertisement to all nodes (ff02::1). Hop limit 255.
pub fn build_neighbor_advertisement(
    src_mac: MacAddr,
    target: Ipv6Addr,
    dst_mac: MacAddr,
    dst_ip: Ipv6Addr,
    solicited: bool,
    vlan: Option<u16>,
) -> Vec<u8> {
    let (dst_ip, dst_mac, solicited) = if dst_ip.is_unspecified() {
        let all = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        (all, MacAddr::from_ipv6_multicast(all), false)
    } else {
        (dst_ip, dst_mac, solicited)
    };
    let mut flags = icmpv6::NA_FLAG_OVERRIDE;
    if solicited {
        flags |= icmpv6::NA_FLAG_SOLICITED;
    }
    build_nd(
        src_mac,
        dst_mac,
        target,
        dst_ip,
        Icmpv6Message::NeighborAdvert,
        flags,
        target,
        Some(icmpv6::ND_OPT_TARGET_LLADDR),
        vlan,
    )
}

/// The echo reply to a parsed ICMP or ICMPv6 echo request: addresses and
/// MAC addresses swapped (source MAC `my_mac`), TTL 64, same identifier,
/// sequence number and data, same VLAN; IPv4 options and IPv6 extension
/// headers are not copied. The caller decides whether the request was
/// addressed to one of its unicast addresses. Fragmented requests are
/// [`ParseError::NotEchoRequest`] (they need reassembly).
pub fn build_echo_reply(
    request_frame: &[u8],
    p: &Parsed,
    my_mac: MacAddr,
) -> Result<Vec<u8>, ParseError> {
    let (reply, v6) = match (p.kind, p.icmp) {
        (Kind::Ipv4, Some((Icmpv4Message::ECHO_REQUEST, _))) if p.proto == IpProtocol::ICMP => {
            (Icmpv4Message::ECHO_REPLY, false)
        }
        (Kind::Ipv6, Some((Icmpv6Message::ECHO_REQUEST, _))) if p.proto == IpProtocol::ICMPV6 => {
            (Icmpv6Message::ECHO_REPLY, true)
        }
        _ => return Err(ParseError::NotEchoRequest),
    };
    if p.is_fragment {
        return Err(ParseError::NotEchoRequest);
    }
    let trunc = if v6 {
        ParseError::TruncatedIcmpv6
    } else {
        ParseError::TruncatedIcmp
    };
    let l4 = l4_bytes(request_frame, p).ok_or(trunc)?;
    if l4.len() < 8 || l4.len() > usize::from(u16::MAX) - ipv4::HEADER_LEN {
        return Err(trunc);
    }
    let req_src_mac = request_frame
        .get(6..12)
        .map(MacAddr::from_bytes)
        .ok_or(ParseError::TruncatedEthernet)?;
    let mut out = Vec::with_capacity(ethernet::VLAN_HEADER_LEN + ipv6::HEADER_LEN + l4.len());
    ethernet::emit(&mut out, req_src_mac, my_mac, p.vlan, ethertype_of(p.dst));
    emit_ip(&mut out, p.dst, p.src, p.proto, 64, l4.len());
    let start = out.len();
    out.extend_from_slice(l4);
    if v6 {
        let pseudo =
            pseudo_sum(p.dst, p.src, p.proto, l4.len()).expect("same family, bounded length");
        let mut m = Icmpv6Packet::new_unchecked(&mut out[start..]);
        m.set_msg_type(reply.into());
        m.set_msg_code(0);
        m.fill_checksum(pseudo);
    } else {
        let mut m = Icmpv4Packet::new_unchecked(&mut out[start..]);
        m.set_msg_type(reply.into());
        m.set_msg_code(0);
        m.fill_checksum();
    }
    Ok(out)
}

/// The RST a host without the connection answers a parsed TCP segment
/// with (RFC 9293 §3.10.7.1): `<SEQ=SEG.ACK><CTL=RST>` when the segment
/// has ACK set, else `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>` (SYN and
/// FIN count in the length). Addresses, ports and MAC addresses swapped
/// (source MAC `my_mac`), TTL 64, same VLAN, no payload. `None` for a RST
/// (never answered), a non-first fragment, or anything but a whole TCP
/// header.
pub fn build_tcp_reset(frame: &[u8], p: &Parsed, my_mac: MacAddr) -> Option<Vec<u8>> {
    if p.proto != IpProtocol::TCP
        || !matches!(p.kind, Kind::Ipv4 | Kind::Ipv6)
        || (p.is_fragment && !p.is_first_fragment)
    {
        return None;
    }
    let seg = TcpPacket::new_checked(l4_bytes(frame, p)?).ok()?;
    let flags = seg.flags();
    if flags.contains(TcpFlags::RST) {
        return None;
    }
    let (seq, ack, ctl) = if flags.contains(TcpFlags::ACK) {
        (seg.ack_number(), 0, TcpFlags::RST)
    } else {
        let len = u32::try_from(seg.payload().len()).ok()?
            + u32::from(flags.contains(TcpFlags::SYN))
            + u32::from(flags.contains(TcpFlags::FIN));
        (
            0,
            seg.seq_number().wrapping_add(len),
            TcpFlags::RST | TcpFlags::ACK,
        )
    };
    let src_mac = frame.get(6..12).map(MacAddr::from_bytes)?;
    Some(build_frame(&FrameSpec {
        src_mac: my_mac,
        dst_mac: src_mac,
        vlan: p.vlan,
        src: p.dst,
        dst: p.src,
        proto: IpProtocol::TCP,
        sport: p.dport,
        dport: p.sport,
        tcp_flags: ctl,
        tcp_seq: seq,
        tcp_ack: ack,
        icmp: None,
        ttl: 64,
        payload: Vec::new(),
    }))
}

/// Splits the IP packet of `frame` into fragments of at most `max_l3`
/// bytes of IP packet each (RFC 791 / RFC 8200, in order, with
/// identification `id`), each in a copy of the frame's link header. An
/// IPv6 packet gets a fragment header (it must have no extension headers
/// of its own). One fragment, still marked as such, when it fits. For
/// tests and `lbctl eval` traces.
///
/// # Panics
/// If the frame holds no IP packet, or `max_l3` leaves no room for 8
/// bytes of data after the header.
pub fn fragment_frame(frame: &[u8], max_l3: usize, id: u32) -> Vec<Vec<u8>> {
    let p = super::parse::parse_general(frame).expect("a valid frame");
    let link = &frame[..p.l3_offset];
    let l3 = &frame[p.l3_offset..p.l3_end()];
    let v6 = p.kind == Kind::Ipv6;
    let hl = if v6 {
        ipv6::HEADER_LEN
    } else {
        Ipv4Packet::new_unchecked(l3).header_len()
    };
    let extra = if v6 { 8 } else { 0 };
    let chunk = (max_l3 - hl - extra) & !7;
    assert!(chunk >= 8, "no room for fragment data");
    let data = &l3[hl..];
    let mut out = Vec::new();
    let mut off = 0;
    while off < data.len() || out.is_empty() {
        let end = (off + chunk).min(data.len());
        let more = end < data.len();
        let mut f = link.to_vec();
        f.extend_from_slice(&l3[..hl]);
        let offset = u16::try_from(off).expect("offset fits");
        if v6 {
            let nh = l3[6];
            let ident = id.to_be_bytes();
            let om = (offset & 0xfff8) | u16::from(more);
            f.extend_from_slice(&[nh, 0]);
            f.extend_from_slice(&om.to_be_bytes());
            f.extend_from_slice(&ident);
        }
        f.extend_from_slice(&data[off..end]);
        let ip_len = u16::try_from(f.len() - link.len()).expect("fits");
        if v6 {
            let mut ip = Ipv6Packet::new_unchecked(&mut f[link.len()..]);
            ip.set_next_header(IpProtocol::from(44u8));
            ip.set_payload_len(ip_len - 40);
        } else {
            let mut ip = Ipv4Packet::new_unchecked(&mut f[link.len()..]);
            ip.set_total_len(ip_len);
            ip.set_ident(id as u16);
            ip.set_frag(false, more, offset);
            ip.fill_checksum();
        }
        out.push(f);
        off = end;
    }
    out
}
