//! IPv6 headers (RFC 8200) and extension-header chain walking.
//!
//! ```
//! use lb_core::packet::ipv6::walk_ext_headers;
//!
//! // A destination options header (8 bytes) followed by TCP.
//! let payload = [6, 0, 1, 4, 0, 0, 0, 0, /* TCP header… */];
//! let chain = walk_ext_headers(&payload, 60).unwrap();
//! assert_eq!((chain.protocol, chain.l4_offset, chain.count), (6, 8, 1));
//! ```

use std::net::Ipv6Addr;

use super::ip::IpProtocol;
use super::ParseError;

mod field {
    use core::ops::Range;
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;
/// Byte offset of the source address (the destination follows).
pub const SRC_OFFSET: usize = 8;
/// Byte offset of the hop limit.
pub const HOP_LIMIT_OFFSET: usize = 7;
/// The most extension headers [`walk_ext_headers`] accepts.
pub const MAX_EXT_HEADERS: usize = 8;

/// A view of an IPv6 packet.
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len). The buffer may
    /// be longer than the packet (link-layer padding).
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the version and that the buffer holds header + payload length.
    pub fn check_len(&self) -> Result<(), ParseError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(ParseError::TruncatedIpv6);
        }
        if self.version() != 6 {
            return Err(ParseError::BadIpv6Version);
        }
        if self.total_len() > len {
            return Err(ParseError::TruncatedIpv6);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn word0(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VER_TC_FLOW];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    pub fn traffic_class(&self) -> u8 {
        (self.word0() >> 20) as u8
    }

    pub fn flow_label(&self) -> u32 {
        self.word0() & 0x000f_ffff
    }

    pub fn payload_len(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::LENGTH];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Header plus payload length.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.payload_len() as usize
    }

    pub fn next_header(&self) -> IpProtocol {
        self.buffer.as_ref()[field::NXT_HDR].into()
    }

    pub fn next_header_raw(&self) -> u8 {
        self.buffer.as_ref()[field::NXT_HDR]
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    pub fn src_addr(&self) -> Ipv6Addr {
        let b: [u8; 16] = self.buffer.as_ref()[field::SRC]
            .try_into()
            .expect("16-byte range");
        b.into()
    }

    pub fn dst_addr(&self) -> Ipv6Addr {
        let b: [u8; 16] = self.buffer.as_ref()[field::DST]
            .try_into()
            .expect("16-byte range");
        b.into()
    }

    /// The payload (extension headers included), without link padding.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.total_len()]
    }

    /// Walks the extension headers of the payload; see [`walk_ext_headers`].
    pub fn walk_ext_headers(&self) -> Result<ExtChain, ParseError> {
        walk_ext_headers(self.payload(), self.next_header_raw())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    fn set_word0(&mut self, v: u32) {
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_version(&mut self, v: u8) {
        let w = self.word0();
        self.set_word0((w & 0x0fff_ffff) | ((v as u32 & 0xf) << 28));
    }

    pub fn set_traffic_class(&mut self, v: u8) {
        let w = self.word0();
        self.set_word0((w & 0xf00f_ffff) | ((v as u32) << 20));
    }

    pub fn set_flow_label(&mut self, v: u32) {
        let w = self.word0();
        self.set_word0((w & 0xfff0_0000) | (v & 0x000f_ffff));
    }

    pub fn set_payload_len(&mut self, v: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_next_header(&mut self, v: IpProtocol) {
        self.buffer.as_mut()[field::NXT_HDR] = v.into();
    }

    pub fn set_hop_limit(&mut self, v: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = v;
    }

    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.octets());
    }

    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.octets());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let t = self.total_len();
        &mut self.buffer.as_mut()[HEADER_LEN..t]
    }
}

/// Fragment header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragInfo {
    /// Offset in bytes.
    pub offset: u16,
    pub more: bool,
    pub ident: u32,
}

/// The result of walking an extension-header chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExtChain {
    /// The upper-layer protocol (the last next-header value). For a
    /// non-first fragment the next header of the fragment header.
    pub protocol: u8,
    /// Offset of the upper-layer header from the start of the IPv6 payload
    /// (for non-first fragments: of the fragment data).
    pub l4_offset: usize,
    /// Number of extension headers walked.
    pub count: u8,
    pub fragment: Option<FragInfo>,
    /// A routing header of type 0 (source routing, deprecated by RFC 5095)
    /// is in the chain.
    pub routing_type0: bool,
}

/// Whether `proto` is an extension header [`walk_ext_headers`] steps over:
/// hop-by-hop, routing, fragment, destination options, AH, mobility (135),
/// HIP (139), shim6 (140).
pub fn is_ext_header(proto: u8) -> bool {
    matches!(proto, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140)
}

mod frag_field {
    use core::ops::Range;
    pub const NXT_HDR: usize = 0;
    pub const OFF_M: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..8;
}

/// Length of the fragment header.
pub const FRAG_HEADER_LEN: usize = 8;

/// A view of an IPv6 fragment header.
#[derive(Debug, Clone)]
pub struct Ipv6FragHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6FragHeader<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6FragHeader { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        if buffer.as_ref().len() < FRAG_HEADER_LEN {
            return Err(ParseError::TruncatedIpv6ExtHeader);
        }
        Ok(Self::new_unchecked(buffer))
    }

    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[frag_field::NXT_HDR]
    }

    fn off_m(&self) -> u16 {
        let b = &self.buffer.as_ref()[frag_field::OFF_M];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Fragment offset in bytes.
    pub fn offset(&self) -> u16 {
        self.off_m() & 0xfff8
    }

    pub fn more_frags(&self) -> bool {
        self.off_m() & 1 != 0
    }

    pub fn ident(&self) -> u32 {
        let b = &self.buffer.as_ref()[frag_field::IDENT];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6FragHeader<T> {
    pub fn set_next_header(&mut self, v: u8) {
        let b = self.buffer.as_mut();
        b[frag_field::NXT_HDR] = v;
        b[1] = 0;
    }

    /// Sets the offset (bytes, multiple of 8) and the M flag.
    pub fn set_offset_more(&mut self, offset: u16, more: bool) {
        let v = (offset & 0xfff8) | more as u16;
        self.buffer.as_mut()[frag_field::OFF_M].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_ident(&mut self, v: u32) {
        self.buffer.as_mut()[frag_field::IDENT].copy_from_slice(&v.to_be_bytes());
    }
}

/// Walks the extension headers at the start of `payload` (an IPv6
/// payload, or the available part of one), starting with next header
/// `first`, up to the upper-layer header. At most [`MAX_EXT_HEADERS`]
/// headers are accepted. A non-first fragment ends the walk at its
/// fragment header. Never reads out of bounds.
pub fn walk_ext_headers(payload: &[u8], first: u8) -> Result<ExtChain, ParseError> {
    let mut nh = first;
    let mut off = 0usize;
    let mut count = 0u8;
    let mut fragment = None;
    let mut routing_type0 = false;
    while is_ext_header(nh) {
        if count as usize == MAX_EXT_HEADERS {
            return Err(ParseError::Ipv6ExtChainTooLong);
        }
        let hdr = payload
            .get(off..)
            .ok_or(ParseError::TruncatedIpv6ExtHeader)?;
        if hdr.len() < 8 {
            // Every extension header is at least 8 bytes long.
            return Err(ParseError::TruncatedIpv6ExtHeader);
        }
        let len = match nh {
            IpProtocol::IPV6_FRAG => FRAG_HEADER_LEN,
            IpProtocol::AH => (hdr[1] as usize + 2) * 4,
            _ => (hdr[1] as usize + 1) * 8,
        };
        if hdr.len() < len {
            return Err(ParseError::TruncatedIpv6ExtHeader);
        }
        count += 1;
        routing_type0 |= nh == IpProtocol::IPV6_ROUTE && hdr[2] == 0;
        if nh == IpProtocol::IPV6_FRAG {
            let f = Ipv6FragHeader::new_unchecked(hdr);
            let info = FragInfo {
                offset: f.offset(),
                more: f.more_frags(),
                ident: f.ident(),
            };
            fragment = Some(info);
            if info.offset != 0 {
                return Ok(ExtChain {
                    protocol: f.next_header(),
                    l4_offset: off + len,
                    count,
                    fragment,
                    routing_type0,
                });
            }
        }
        nh = hdr[0];
        off += len;
    }
    Ok(ExtChain {
        protocol: nh,
        l4_offset: off,
        count,
        fragment,
        routing_type0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2001:db8::1 -> 2001:db8::2, payload 32 bytes, hop-by-hop (router
    // alert) then fragment (offset 0, M) then TCP; hop limit 64, TC 0xb8,
    // flow label 0x12345.
    const PACKET: [u8; 72] = [
        0x6b, 0x81, 0x23, 0x45, 0x00, 0x20, 0x00, 0x40, // ver/tc/flow, len 32, hbh, hlim 64
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, //
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, //
        0x2c, 0x00, 0x05, 0x02, 0x00, 0x00, 0x01, 0x00, // HBH: nh=44, router alert, PadN
        0x06, 0x00, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef, // frag: nh=6, off 0, M, ident
        0x04, 0x01, 0x00, 0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // first 16 TCP bytes
    ];

    #[test]
    fn deconstruct() {
        let p = Ipv6Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0xb8);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.payload_len(), 32);
        assert_eq!(p.next_header(), IpProtocol::HopByHop);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src_addr(), "2001:db8::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst_addr(), "2001:db8::2".parse::<Ipv6Addr>().unwrap());
        let c = p.walk_ext_headers().unwrap();
        assert_eq!(c.protocol, 6);
        assert_eq!(c.l4_offset, 16);
        assert_eq!(c.count, 2);
        assert_eq!(
            c.fragment,
            Some(FragInfo {
                offset: 0,
                more: true,
                ident: 0xdeadbeef
            })
        );
    }

    #[test]
    fn construct() {
        let mut b = [0u8; 72];
        b[40..].copy_from_slice(&PACKET[40..]);
        let mut p = Ipv6Packet::new_unchecked(&mut b[..]);
        p.set_version(6);
        p.set_traffic_class(0xb8);
        p.set_flow_label(0x12345);
        p.set_payload_len(32);
        p.set_next_header(IpProtocol::HopByHop);
        p.set_hop_limit(64);
        p.set_src_addr("2001:db8::1".parse().unwrap());
        p.set_dst_addr("2001:db8::2".parse().unwrap());
        let mut f = Ipv6FragHeader::new_unchecked(&mut b[48..56]);
        f.set_next_header(6);
        f.set_offset_more(0, true);
        f.set_ident(0xdeadbeef);
        assert_eq!(b, PACKET);
    }

    #[test]
    fn non_first_fragment_and_errors() {
        let mut b = PACKET;
        b[50..52].copy_from_slice(&(1448u16 | 1).to_be_bytes());
        let c = Ipv6Packet::new_checked(&b[..])
            .unwrap()
            .walk_ext_headers()
            .unwrap();
        assert_eq!(c.fragment.unwrap().offset, 1448);
        assert_eq!((c.protocol, c.l4_offset), (6, 16));

        let e = |b: &[u8]| Ipv6Packet::new_checked(b).unwrap_err();
        assert_eq!(e(&PACKET[..39]), ParseError::TruncatedIpv6);
        assert_eq!(e(&PACKET[..71]), ParseError::TruncatedIpv6);
        let mut b = PACKET;
        b[0] = 0x4b;
        assert_eq!(e(&b), ParseError::BadIpv6Version);

        assert_eq!(
            walk_ext_headers(&PACKET[40..44], 0),
            Err(ParseError::TruncatedIpv6ExtHeader)
        );
        // A destination options header claiming 16 bytes in 8.
        assert_eq!(
            walk_ext_headers(&[59, 1, 0, 0, 0, 0, 0, 0], 60),
            Err(ParseError::TruncatedIpv6ExtHeader)
        );
        // Nine destination options headers.
        let mut chain = Vec::new();
        for _ in 0..9 {
            chain.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
        }
        assert_eq!(
            walk_ext_headers(&chain, 60),
            Err(ParseError::Ipv6ExtChainTooLong)
        );
        chain[8 * 7] = 59;
        let c = walk_ext_headers(&chain, 60).unwrap();
        assert_eq!((c.protocol, c.count, c.l4_offset), (59, 8, 64));
        // AH: length in 4-byte units minus 2.
        let ah = [
            6, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let c = walk_ext_headers(&ah, 51).unwrap();
        assert_eq!((c.protocol, c.l4_offset), (6, 24));
        assert!(!c.routing_type0);
        // Routing headers: type 0 (source route) and type 2 (mobility).
        let rh = |t: u8| [6, 0, t, 1, 0, 0, 0, 0];
        assert!(walk_ext_headers(&rh(0), 43).unwrap().routing_type0);
        assert!(!walk_ext_headers(&rh(2), 43).unwrap().routing_type0);
    }
}
