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

/// Accumulates changes to a checksum field, in full or partial arithmetic.
struct Csum {
    value: u16,
    partial: bool,
}

impl Csum {
    fn change(&mut self, old: u16, new: u16) {
        self.value = if self.partial {
            checksum::update_sum(self.value, old, new)
        } else {
            checksum::update(self.value, old, new)
        };
    }
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
    let mut l4c = l4.map(|(off, pseudo, _, _)| {
        (
            p.l4_offset + off,
            pseudo,
            Csum {
                value: rd16(frame, p.l4_offset + off),
                partial,
            },
        )
    });
    // UDP over IPv4 without checksum stays without.
    let udp_no_csum = p.proto == IpProtocol::UDP
        && !v6
        && !partial
        && l4c.as_ref().is_some_and(|c| c.2.value == 0);
    if udp_no_csum {
        l4c = None;
    }

    // Addresses.
    match (new.src, new.dst) {
        (IpAddr::V4(ns), IpAddr::V4(nd)) => {
            let a = p.l3_offset + ipv4::SRC_OFFSET;
            let mut ipc = Csum {
                value: rd16(frame, p.l3_offset + ipv4::CHECKSUM_OFFSET),
                partial: false,
            };
            for (off, new) in [(a, ns), (a + 4, nd)] {
                let old = u32::from_be_bytes(frame[off..off + 4].try_into().expect("4-byte range"));
                let (o, n) = (checksum::sum32(old), checksum::sum32(new.to_bits()));
                ipc.change(o, n);
                if let Some((_, true, c)) = l4c.as_mut() {
                    c.change(o, n);
                }
                frame[off..off + 4].copy_from_slice(&new.octets());
            }
            wr16(frame, p.l3_offset + ipv4::CHECKSUM_OFFSET, ipc.value);
        }
        (IpAddr::V6(ns), IpAddr::V6(nd)) => {
            let a = p.l3_offset + ipv6::SRC_OFFSET;
            for (off, new) in [(a, ns), (a + 16, nd)] {
                let old: [u8; 16] = frame[off..off + 16].try_into().expect("16-byte range");
                if let Some((_, true, c)) = l4c.as_mut() {
                    c.change(checksum::sum128(old.into()), checksum::sum128(new));
                }
                frame[off..off + 16].copy_from_slice(&new.octets());
            }
        }
        _ => return Err(ParseError::AddressFamilyMismatch),
    }

    // Ports / echo identifier (only where the L4 header was bounds-checked
    // above): covered by full checksums only.
    if l4.is_some() {
        let mut change = |frame: &mut [u8], off: usize, new: u16| {
            let old = rd16(frame, off);
            if !partial {
                if let Some((_, _, c)) = l4c.as_mut() {
                    c.change(old, new);
                }
            }
            wr16(frame, off, new);
        };
        match p.proto {
            IpProtocol::TCP | IpProtocol::UDP => {
                change(frame, p.l4_offset, new.sport);
                change(frame, p.l4_offset + 2, new.dport);
            }
            IpProtocol::ICMP | IpProtocol::ICMPV6 if p.is_icmp_echo() => {
                change(frame, p.l4_offset + icmp::ECHO_IDENT_OFFSET, new.sport);
            }
            _ => {}
        }
    }

    if let Some((off, _, c)) = l4c {
        let mut v = c.value;
        if p.proto == IpProtocol::UDP && !partial && v == 0 {
            v = 0xffff;
        }
        wr16(frame, off, v);
    }
    Ok(())
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
