//! ICMPv6 (RFC 4443) and the neighbour discovery messages the load
//!
//! ```
//! use lb_core::packet::{Icmpv6Message, Icmpv6Packet};
//!
//! let ns = [135, 0, 0, 0, 0, 0, 0, 0, 0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
//!           1, 1, 2, 0, 0, 0, 0, 9];
//! let m = Icmpv6Packet::new_checked(&ns[..]).unwrap();
//! assert_eq!(m.msg_type(), Icmpv6Message::NeighborSolicit);
//! assert_eq!(m.source_lladdr().unwrap().unwrap().to_string(), "02:00:00:00:00:09");
//! ```
//! balancer answers (RFC 4861).

use std::net::Ipv6Addr;

use super::ethernet::MacAddr;
use super::ParseError;

/// An ICMPv6 message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Icmpv6Message {
    DstUnreachable,
    PktTooBig,
    TimeExceeded,
    ParamProblem,
    EchoRequest,
    EchoReply,
    RouterSolicit,
    RouterAdvert,
    NeighborSolicit,
    NeighborAdvert,
    Redirect,
    Unknown(u8),
}

impl From<u8> for Icmpv6Message {
    fn from(v: u8) -> Self {
        match v {
            1 => Icmpv6Message::DstUnreachable,
            2 => Icmpv6Message::PktTooBig,
            3 => Icmpv6Message::TimeExceeded,
            4 => Icmpv6Message::ParamProblem,
            128 => Icmpv6Message::EchoRequest,
            129 => Icmpv6Message::EchoReply,
            133 => Icmpv6Message::RouterSolicit,
            134 => Icmpv6Message::RouterAdvert,
            135 => Icmpv6Message::NeighborSolicit,
            136 => Icmpv6Message::NeighborAdvert,
            137 => Icmpv6Message::Redirect,
            other => Icmpv6Message::Unknown(other),
        }
    }
}

impl From<Icmpv6Message> for u8 {
    fn from(v: Icmpv6Message) -> Self {
        match v {
            Icmpv6Message::DstUnreachable => 1,
            Icmpv6Message::PktTooBig => 2,
            Icmpv6Message::TimeExceeded => 3,
            Icmpv6Message::ParamProblem => 4,
            Icmpv6Message::EchoRequest => 128,
            Icmpv6Message::EchoReply => 129,
            Icmpv6Message::RouterSolicit => 133,
            Icmpv6Message::RouterAdvert => 134,
            Icmpv6Message::NeighborSolicit => 135,
            Icmpv6Message::NeighborAdvert => 136,
            Icmpv6Message::Redirect => 137,
            Icmpv6Message::Unknown(other) => other,
        }
    }
}

impl Icmpv6Message {
    pub const DST_UNREACHABLE: u8 = 1;
    pub const PKT_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const PARAM_PROBLEM: u8 = 4;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    pub const NEIGHBOR_ADVERT: u8 = 136;

    pub fn is_echo(self) -> bool {
        matches!(self, Icmpv6Message::EchoRequest | Icmpv6Message::EchoReply)
    }

    /// Destination unreachable, packet too big, time exceeded, parameter
    /// problem: the messages that quote the offending packet.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            Icmpv6Message::DstUnreachable
                | Icmpv6Message::PktTooBig
                | Icmpv6Message::TimeExceeded
                | Icmpv6Message::ParamProblem
        )
    }
}

mod field {
    use core::ops::Range;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const ECHO_IDENT: Range<usize> = 4..6;
    pub const ECHO_SEQ: Range<usize> = 6..8;
    pub const REST: Range<usize> = 4..8;
    pub const NA_FLAGS: usize = 4;
    pub const ND_TARGET: Range<usize> = 8..24;
    pub const ND_OPTIONS: usize = 24;
}

pub const HEADER_LEN: usize = 8;
/// Length of a neighbour solicitation/advertisement without options.
pub const ND_LEN: usize = 24;
/// Byte offset of the checksum.
pub const CHECKSUM_OFFSET: usize = 2;
/// Byte offset of the echo identifier.
pub const ECHO_IDENT_OFFSET: usize = 4;

/// Neighbour advertisement flag: sender is a router.
pub const NA_FLAG_ROUTER: u8 = 0x80;
/// Neighbour advertisement flag: response to a solicitation.
pub const NA_FLAG_SOLICITED: u8 = 0x40;
/// Neighbour advertisement flag: override cache entry.
pub const NA_FLAG_OVERRIDE: u8 = 0x20;

/// ND option: source link-layer address.
pub const ND_OPT_SOURCE_LLADDR: u8 = 1;
/// ND option: target link-layer address.
pub const ND_OPT_TARGET_LLADDR: u8 = 2;

/// A view of an ICMPv6 message.
#[derive(Debug, Clone)]
pub struct Icmpv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv6Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Icmpv6Packet { buffer }
    }

    /// `buffer` must be exactly the message.
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the 8-byte header, and the 24-byte fixed part of neighbour
    /// solicitations and advertisements.
    pub fn check_len(&self) -> Result<(), ParseError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || (self.is_nd() && len < ND_LEN) {
            Err(ParseError::TruncatedIcmpv6)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn be16(&self, r: core::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }

    fn is_nd(&self) -> bool {
        matches!(
            self.buffer.as_ref().first(),
            Some(&Icmpv6Message::NEIGHBOR_SOLICIT) | Some(&Icmpv6Message::NEIGHBOR_ADVERT)
        )
    }

    pub fn msg_type(&self) -> Icmpv6Message {
        self.buffer.as_ref()[field::TYPE].into()
    }

    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        self.be16(field::CHECKSUM)
    }

    pub fn echo_ident(&self) -> u16 {
        self.be16(field::ECHO_IDENT)
    }

    pub fn echo_seq_no(&self) -> u16 {
        self.be16(field::ECHO_SEQ)
    }

    /// The 4 rest-of-header bytes: MTU of packet too big, pointer of a
    /// parameter problem.
    pub fn rest_of_header(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::REST];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// MTU of a packet too big message.
    pub fn mtu(&self) -> u32 {
        self.rest_of_header()
    }

    /// Pointer of a parameter problem message.
    pub fn pointer(&self) -> u32 {
        self.rest_of_header()
    }

    /// R/S/O flags of a neighbour advertisement.
    pub fn na_flags(&self) -> u8 {
        self.buffer.as_ref()[field::NA_FLAGS] & 0xe0
    }

    /// Target address of a neighbour solicitation/advertisement.
    pub fn nd_target(&self) -> Ipv6Addr {
        let b: [u8; 16] = self.buffer.as_ref()[field::ND_TARGET]
            .try_into()
            .expect("16-byte range");
        b.into()
    }

    /// Finds the link-layer address option `kind` ([`ND_OPT_SOURCE_LLADDR`]
    /// or [`ND_OPT_TARGET_LLADDR`]) among the options of a neighbour
    /// solicitation/advertisement. Options with length 0 or running past the
    /// end are [`ParseError::BadNdOption`].
    pub fn nd_lladdr_option(&self, kind: u8) -> Result<Option<MacAddr>, ParseError> {
        let b = self.buffer.as_ref();
        if b.len() < ND_LEN {
            return Err(ParseError::TruncatedIcmpv6);
        }
        let mut opts = &b[field::ND_OPTIONS..];
        let mut found = None;
        while !opts.is_empty() {
            if opts.len() < 2 {
                return Err(ParseError::BadNdOption);
            }
            let len = opts[1] as usize * 8;
            if len == 0 || len > opts.len() {
                return Err(ParseError::BadNdOption);
            }
            if opts[0] == kind && found.is_none() {
                found = Some(MacAddr::from_bytes(&opts[2..8]));
            }
            opts = &opts[len..];
        }
        Ok(found)
    }

    /// Source link-layer address option.
    pub fn source_lladdr(&self) -> Result<Option<MacAddr>, ParseError> {
        self.nd_lladdr_option(ND_OPT_SOURCE_LLADDR)
    }

    /// Target link-layer address option.
    pub fn target_lladdr(&self) -> Result<Option<MacAddr>, ParseError> {
        self.nd_lladdr_option(ND_OPT_TARGET_LLADDR)
    }

    /// After the 8-byte header; for error messages the quoted packet.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// Verifies the checksum given the pseudo-header sum.
    pub fn verify_checksum(&self, pseudo_sum: u16) -> bool {
        super::checksum::sum_with(pseudo_sum, self.buffer.as_ref()) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv6Packet<T> {
    fn set_be16(&mut self, r: core::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_msg_type(&mut self, v: Icmpv6Message) {
        self.buffer.as_mut()[field::TYPE] = v.into();
    }

    pub fn set_msg_code(&mut self, v: u8) {
        self.buffer.as_mut()[field::CODE] = v;
    }

    pub fn set_checksum(&mut self, v: u16) {
        self.set_be16(field::CHECKSUM, v);
    }

    pub fn set_echo_ident(&mut self, v: u16) {
        self.set_be16(field::ECHO_IDENT, v);
    }

    pub fn set_echo_seq_no(&mut self, v: u16) {
        self.set_be16(field::ECHO_SEQ, v);
    }

    pub fn set_rest_of_header(&mut self, v: u32) {
        self.buffer.as_mut()[field::REST].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the R/S/O flags (and clears the reserved bits).
    pub fn set_na_flags(&mut self, flags: u8) {
        self.set_rest_of_header(((flags & 0xe0) as u32) << 24);
    }

    pub fn set_nd_target(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::ND_TARGET].copy_from_slice(&a.octets());
    }

    /// Computes the checksum from scratch given the pseudo-header sum.
    pub fn fill_checksum(&mut self, pseudo_sum: u16) {
        self.set_checksum(0);
        let c = !super::checksum::sum_with(pseudo_sum, self.buffer.as_ref());
        self.set_checksum(c);
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::checksum;

    // Neighbour solicitation from fe80::1 for fe80::2 with source lladdr
    // 02:00:00:00:00:01, to ff02::1:ff00:2.
    const NS: [u8; 32] = [
        0x87, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // type, code, csum, reserved
        0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, // target
        0x01, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // source lladdr option
    ];

    fn pseudo() -> u16 {
        checksum::pseudo_header_v6(
            "fe80::1".parse().unwrap(),
            "ff02::1:ff00:2".parse().unwrap(),
            58,
            32,
        )
    }

    #[test]
    fn deconstruct() {
        let mut b = NS;
        Icmpv6Packet::new_unchecked(&mut b[..]).fill_checksum(pseudo());
        let p = Icmpv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.msg_type(), Icmpv6Message::NeighborSolicit);
        assert_eq!(p.nd_target(), "fe80::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.source_lladdr(), Ok(Some(MacAddr([2, 0, 0, 0, 0, 1]))));
        assert_eq!(p.target_lladdr(), Ok(None));
        assert!(p.verify_checksum(pseudo()));
        assert!(!p.msg_type().is_error());
    }

    #[test]
    fn construct() {
        let mut b = [0u8; 32];
        let mut p = Icmpv6Packet::new_unchecked(&mut b[..]);
        p.set_msg_type(Icmpv6Message::NeighborSolicit);
        p.set_msg_code(0);
        p.set_rest_of_header(0);
        p.set_nd_target("fe80::2".parse().unwrap());
        p.data_mut()[16..].copy_from_slice(&[1, 1, 2, 0, 0, 0, 0, 1]);
        assert_eq!(b, NS);
        for v in 0..=255u8 {
            assert_eq!(u8::from(Icmpv6Message::from(v)), v);
        }
    }

    #[test]
    fn errors() {
        assert_eq!(
            Icmpv6Packet::new_checked(&NS[..7]).unwrap_err(),
            ParseError::TruncatedIcmpv6
        );
        assert_eq!(
            Icmpv6Packet::new_checked(&NS[..23]).unwrap_err(),
            ParseError::TruncatedIcmpv6
        );
        let mut b = NS;
        b[25] = 0;
        let p = Icmpv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.source_lladdr(), Err(ParseError::BadNdOption));
        let p = Icmpv6Packet::new_checked(&NS[..30]).unwrap();
        assert_eq!(p.source_lladdr(), Err(ParseError::BadNdOption));
        let p = Icmpv6Packet::new_checked(&NS[..25]).unwrap();
        assert_eq!(p.source_lladdr(), Err(ParseError::BadNdOption));
    }
}
