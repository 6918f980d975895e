//! IPv4 headers (RFC 791).
//!
//! ```
//! use lb_core::packet::Ipv4Packet;
//!
//! let hdr = [0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
//! let mut buf = hdr;
//! Ipv4Packet::new_unchecked(&mut buf[..]).fill_checksum();
//! let ip = Ipv4Packet::new_checked(&buf[..]).unwrap();
//! assert!(ip.verify_checksum() && ip.dont_frag());
//! assert_eq!(ip.dst_addr(), std::net::Ipv4Addr::new(10, 0, 0, 2));
//! ```

use std::net::Ipv4Addr;

use super::checksum;
use super::ip::IpProtocol;
use super::ParseError;

mod field {
    use core::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

/// Byte offset of the header checksum.
pub const CHECKSUM_OFFSET: usize = 10;
/// Byte offset of the source address (the destination follows).
pub const SRC_OFFSET: usize = 12;
/// Byte offset of the TTL (the protocol follows).
pub const TTL_OFFSET: usize = 8;
/// Length of a header without options.
pub const HEADER_LEN: usize = 20;

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len). The buffer may
    /// be longer than the packet (link-layer padding): use
    /// [`total_len`](Self::total_len) / [`payload`](Self::payload).
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks version, IHL, total length and that the buffer holds the
    /// whole packet. Does not check the header checksum.
    pub fn check_len(&self) -> Result<(), ParseError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(ParseError::TruncatedIpv4);
        }
        if self.version() != 4 {
            return Err(ParseError::BadIpv4Version);
        }
        let hl = self.header_len();
        if hl < HEADER_LEN {
            return Err(ParseError::BadIpv4HeaderLength);
        }
        let total = self.total_len() as usize;
        if total < hl {
            return Err(ParseError::BadIpv4TotalLength);
        }
        if hl > len || total > len {
            return Err(ParseError::TruncatedIpv4);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn be16(&self, r: core::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL * 4).
    pub fn header_len(&self) -> usize {
        ((self.buffer.as_ref()[field::VER_IHL] & 0x0f) as usize) * 4
    }

    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] >> 2
    }

    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] & 0x03
    }

    pub fn total_len(&self) -> u16 {
        self.be16(field::LENGTH)
    }

    pub fn ident(&self) -> u16 {
        self.be16(field::IDENT)
    }

    pub fn dont_frag(&self) -> bool {
        self.be16(field::FLG_OFF) & FLAG_DF != 0
    }

    pub fn more_frags(&self) -> bool {
        self.be16(field::FLG_OFF) & FLAG_MF != 0
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (self.be16(field::FLG_OFF) & OFFSET_MASK) << 3
    }

    /// MF set or a non-zero offset.
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> IpProtocol {
        self.buffer.as_ref()[field::PROTOCOL].into()
    }

    pub fn protocol_raw(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    pub fn checksum(&self) -> u16 {
        self.be16(field::CHECKSUM)
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SRC];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::DST];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// The options (between byte 20 and the header length).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// Whether the header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::sum(&self.buffer.as_ref()[..self.header_len()]) == 0xffff
    }

    /// From the end of the header to the total length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..self.total_len() as usize]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn set_be16(&mut self, r: core::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_version(&mut self, v: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0x0f) | (v << 4);
    }

    /// Sets the header length in bytes (a multiple of 4, 20..=60).
    pub fn set_header_len(&mut self, len: usize) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0xf0) | ((len / 4) as u8 & 0x0f);
    }

    pub fn set_dscp_ecn(&mut self, dscp: u8, ecn: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = (dscp << 2) | (ecn & 0x03);
    }

    pub fn set_total_len(&mut self, v: u16) {
        self.set_be16(field::LENGTH, v);
    }

    pub fn set_ident(&mut self, v: u16) {
        self.set_be16(field::IDENT, v);
    }

    /// Sets DF, MF and the fragment offset (in bytes, a multiple of 8).
    pub fn set_frag(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let mut v = (offset >> 3) & OFFSET_MASK;
        if dont_frag {
            v |= FLAG_DF;
        }
        if more_frags {
            v |= FLAG_MF;
        }
        self.set_be16(field::FLG_OFF, v);
    }

    pub fn set_ttl(&mut self, v: u8) {
        self.buffer.as_mut()[field::TTL] = v;
    }

    pub fn set_protocol(&mut self, v: IpProtocol) {
        self.buffer.as_mut()[field::PROTOCOL] = v.into();
    }

    pub fn set_checksum(&mut self, v: u16) {
        self.set_be16(field::CHECKSUM, v);
    }

    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.octets());
    }

    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.octets());
    }

    /// Recomputes the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let hl = self.header_len();
        let c = checksum::checksum(&self.buffer.as_ref()[..hl]);
        self.set_checksum(c);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (h, t) = (self.header_len(), self.total_len() as usize);
        &mut self.buffer.as_mut()[h..t]
    }
}

/// IPv4 option types that route a packet by its sender's list of
/// addresses: loose (LSRR, 131) and strict (SSRR, 137) source route.
pub const OPT_LSRR: u8 = 0x83;
pub const OPT_SSRR: u8 = 0x89;

/// Whether the IPv4 options `options` (the header bytes after the first
/// 20) carry a loose or strict source route. Record route, timestamps and
/// the rest do not count. The walk stops at end-of-list or at an option
/// whose length does not fit, so it never reads out of bounds.
pub fn has_source_route(options: &[u8]) -> bool {
    let mut i = 0;
    while let Some(&kind) = options.get(i) {
        match kind {
            0 => return false,
            1 => i += 1,
            OPT_LSRR | OPT_SSRR => return true,
            _ => match options.get(i + 1) {
                Some(&len) if len >= 2 => i += usize::from(len),
                _ => return false,
            },
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    // 192.168.0.1 -> 192.168.0.199, UDP, total length 115, DF, TTL 64.
    const HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn source_route_options() {
        // NOP, then record route (7, len 7, pointer 4, one slot).
        assert!(!has_source_route(&[1, 7, 7, 4, 0, 0, 0, 0]));
        // Timestamp then LSRR.
        assert!(has_source_route(&[
            68, 8, 5, 0, 0, 0, 0, 0, OPT_LSRR, 7, 4, 198, 18, 0, 1, 0
        ]));
        assert!(has_source_route(&[OPT_SSRR, 7, 4, 198, 18, 0, 1, 0]));
        // End of list before it; a bad length ends the walk.
        assert!(!has_source_route(&[0, 0, 0, 0, OPT_LSRR, 7, 4, 0]));
        assert!(!has_source_route(&[7, 0, OPT_LSRR, 3]));
        assert!(!has_source_route(&[]));
    }

    #[test]
    fn deconstruct() {
        let mut b = HEADER.to_vec();
        b.resize(115, 0);
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 115);
        assert!(p.dont_frag() && !p.more_frags() && !p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), IpProtocol::Udp);
        assert_eq!(p.checksum(), 0xb861);
        assert!(p.verify_checksum());
        assert_eq!(p.src_addr(), Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(192, 168, 0, 199));
        assert_eq!(p.payload().len(), 95);
        assert!(p.options().is_empty());
    }

    #[test]
    fn construct() {
        let mut b = [0u8; 20];
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.set_version(4);
        p.set_header_len(20);
        p.set_dscp_ecn(0, 0);
        p.set_total_len(115);
        p.set_ident(0);
        p.set_frag(true, false, 0);
        p.set_ttl(64);
        p.set_protocol(IpProtocol::Udp);
        p.set_src_addr(Ipv4Addr::new(192, 168, 0, 1));
        p.set_dst_addr(Ipv4Addr::new(192, 168, 0, 199));
        p.fill_checksum();
        assert_eq!(b, HEADER);
    }

    #[test]
    fn fragments_and_errors() {
        let mut b = HEADER.to_vec();
        b.resize(115, 0);
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.set_frag(false, true, 1480);
        assert!(p.more_frags() && p.frag_offset() == 1480 && p.is_fragment());
        let e = |b: &[u8]| Ipv4Packet::new_checked(b).unwrap_err();
        assert_eq!(e(&HEADER[..19]), ParseError::TruncatedIpv4);
        assert_eq!(e(&HEADER), ParseError::TruncatedIpv4); // total 115 > 20
        let mut h = HEADER;
        h[0] = 0x65;
        assert_eq!(e(&h), ParseError::BadIpv4Version);
        h[0] = 0x44;
        assert_eq!(e(&h), ParseError::BadIpv4HeaderLength);
        h[0] = 0x45;
        h[3] = 19;
        assert_eq!(e(&h), ParseError::BadIpv4TotalLength);
    }
}
