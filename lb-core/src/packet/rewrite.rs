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
pub fn decrement_ttl(frame: &mut [u8], p: &Parsed) -> bool {
    match p.kind {
        Kind::Ipv4 => {
            let off = p.l3_offset + ipv4::TTL_OFFSET;
            let coff = p.l3_offset + ipv4::CHECKSUM_OFFSET;
            if frame.len() < coff + 2 {
                return false;
            }
            let word = rd16(frame, off);
            let ttl = (word >> 8) as u8;
            if ttl <= 1 {
                return false;
            }
            let new = word - 0x0100;
            frame[off] = ttl - 1;
            let c = checksum::update16(rd16(frame, coff), word, new);
            wr16(frame, coff, c);
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
