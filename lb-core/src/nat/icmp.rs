//! ICMP errors about translated sessions.
//!
//! A router between the load balancer and a client (or a backend) answers a
//! packet *as the load balancer sent it*: "fragmentation needed" for a
//! reply from the VIP, say. For path-MTU discovery to work through the
//! translation, the error must reach the other end of the session about the
//! packet *as that end sent it*: the outer addresses and the quoted packet's
//! addresses and ports are rewritten, and the checksums that cover them are
//! computed again.

use std::net::IpAddr;

use crate::flow::FlowKey;
use crate::model::proto;
use crate::packet::{checksum, Ipv4Packet, Kind, ParseError, Parsed};

/// Rewrites the ICMP or ICMPv6 error `p` in `frame` so that it goes from
/// `src` to `dst` and quotes the packet `quoted` (its addresses and, for
/// TCP and UDP, ports). The families of all addresses must be the packet's.
pub fn translate_error(
    frame: &mut [u8],
    p: &Parsed,
    src: IpAddr,
    dst: IpAddr,
    quoted: &FlowKey,
) -> Result<(), ParseError> {
    let v6 = p.kind == Kind::Ipv6;
    if [src, dst, quoted.src, quoted.dst]
        .iter()
        .any(|a| a.is_ipv6() != v6)
    {
        return Err(ParseError::AddressFamilyMismatch);
    }
    let l3 = p.l3_offset;
    let l4 = p.l4_offset;
    let end = p.l3_end();
    if end > frame.len() || l4 + 8 > end {
        return Err(if v6 {
            ParseError::TruncatedIpv6
        } else {
            ParseError::TruncatedIpv4
        });
    }

    // The outer header.
    if v6 {
        put_addr(frame, l3 + 8, src);
        put_addr(frame, l3 + 24, dst);
    } else {
        put_addr(frame, l3 + 12, src);
        put_addr(frame, l3 + 16, dst);
        Ipv4Packet::new_unchecked(&mut frame[l3..end]).fill_checksum();
    }

    // The quoted packet: its IP header, then the first bytes of its L4.
    let q = l4 + 8;
    let short = || {
        if v6 {
            ParseError::TruncatedIpv6
        } else {
            ParseError::TruncatedIpv4
        }
    };
    let (q_l4, q_proto) = if v6 {
        if q + 40 > end {
            return Err(short());
        }
        put_addr(frame, q + 8, quoted.src);
        put_addr(frame, q + 24, quoted.dst);
        (q + 40, frame[q + 6])
    } else {
        if q + 20 > end {
            return Err(short());
        }
        let ihl = usize::from(frame[q] & 0x0f) * 4;
        if ihl < 20 || q + ihl > end {
            return Err(ParseError::BadIpv4HeaderLength);
        }
        put_addr(frame, q + 12, quoted.src);
        put_addr(frame, q + 16, quoted.dst);
        Ipv4Packet::new_unchecked(&mut frame[q..end]).fill_checksum();
        (q + ihl, frame[q + 9])
    };
    // Only the first 8 bytes of the quoted L4 header are guaranteed; its
    // checksum covers data the error does not carry, so it stays as it is.
    if matches!(q_proto, proto::TCP | proto::UDP) && q_l4 + 4 <= end {
        frame[q_l4..q_l4 + 2].copy_from_slice(&quoted.sport.to_be_bytes());
        frame[q_l4 + 2..q_l4 + 4].copy_from_slice(&quoted.dport.to_be_bytes());
    }

    // The ICMP checksum covers all of it (and, for ICMPv6, the new outer
    // addresses through the pseudo-header).
    frame[l4 + 2..l4 + 4].copy_from_slice(&[0, 0]);
    let body = &frame[l4..end];
    let sum = if v6 {
        let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else {
            return Err(ParseError::AddressFamilyMismatch);
        };
        let len = u32::try_from(body.len()).map_err(|_| short())?;
        checksum::sum_with(checksum::pseudo_header_v6(s, d, proto::ICMPV6, len), body)
    } else {
        checksum::sum(body)
    };
    frame[l4 + 2..l4 + 4].copy_from_slice(&(!sum).to_be_bytes());
    Ok(())
}

fn put_addr(frame: &mut [u8], at: usize, a: IpAddr) {
    match a {
        IpAddr::V4(v4) => frame[at..at + 4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => frame[at..at + 16].copy_from_slice(&v6.octets()),
    }
}
