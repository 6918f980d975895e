//! UDP headers (RFC 768).
//!
//! ```
//! use lb_core::packet::UdpPacket;
//!
//! let dgram = [0x04, 0x00, 0x00, 0x35, 0x00, 0x0a, 0x00, 0x00, b'h', b'i'];
//! let u = UdpPacket::new_checked(&dgram[..]).unwrap();
//! assert_eq!((u.src_port(), u.dst_port(), u.payload()), (1024, 53, &b"hi"[..]));
//! ```

use super::ParseError;

mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

pub const HEADER_LEN: usize = 8;
/// Byte offset of the checksum.
pub const CHECKSUM_OFFSET: usize = 6;

/// A view of a UDP datagram.
#[derive(Debug, Clone)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// `buffer` is the IP payload; it may be longer than the UDP length.
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the header and that `8 <= length <= buffer length`.
    pub fn check_len(&self) -> Result<(), ParseError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(ParseError::TruncatedUdp);
        }
        let l = self.len() as usize;
        if l < HEADER_LEN || l > len {
            return Err(ParseError::BadUdpLength);
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

    pub fn src_port(&self) -> u16 {
        self.be16(field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        self.be16(field::DST_PORT)
    }

    /// The length field (header + payload).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        self.be16(field::LENGTH)
    }

    pub fn checksum(&self) -> u16 {
        self.be16(field::CHECKSUM)
    }

    /// The payload up to the length field.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.len() as usize]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    fn set_be16(&mut self, r: core::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_src_port(&mut self, v: u16) {
        self.set_be16(field::SRC_PORT, v);
    }

    pub fn set_dst_port(&mut self, v: u16) {
        self.set_be16(field::DST_PORT, v);
    }

    pub fn set_len(&mut self, v: u16) {
        self.set_be16(field::LENGTH, v);
    }

    pub fn set_checksum(&mut self, v: u16) {
        self.set_be16(field::CHECKSUM, v);
    }

    /// Computes the checksum from scratch given the pseudo-header sum
    /// (a computed 0 is sent as 0xffff).
    pub fn fill_checksum(&mut self, pseudo_sum: u16) {
        self.set_checksum(0);
        let l = self.len() as usize;
        let c = !super::checksum::sum_with(pseudo_sum, &self.buffer.as_ref()[..l]);
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let l = self.len() as usize;
        &mut self.buffer.as_mut()[HEADER_LEN..l]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::checksum;

    // [2001:db8::1]:5353 -> [2001:db8::2]:53, "hello".
    const DATAGRAM: [u8; 13] = [
        0x14, 0xe9, 0x00, 0x35, 0x00, 0x0d, 0x4b, 0x6f, 0x68, 0x65, 0x6c, 0x6c, 0x6f,
    ];

    fn pseudo() -> u16 {
        checksum::pseudo_header_v6(
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
            17,
            13,
        )
    }

    #[test]
    fn deconstruct() {
        // Followed by two bytes that are not part of the datagram.
        let mut b = DATAGRAM.to_vec();
        b.extend_from_slice(&[0xee, 0xee]);
        let p = UdpPacket::new_checked(&b[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port(), p.len()), (5353, 53, 13));
        assert_eq!(p.checksum(), 0x4b6f);
        assert_eq!(p.payload(), b"hello");
        assert_eq!(checksum::sum_with(pseudo(), &DATAGRAM), 0xffff);
    }

    #[test]
    fn construct() {
        let mut b = [0u8; 13];
        let mut p = UdpPacket::new_unchecked(&mut b[..]);
        p.set_src_port(5353);
        p.set_dst_port(53);
        p.set_len(13);
        p.payload_mut().copy_from_slice(b"hello");
        p.fill_checksum(pseudo());
        assert_eq!(b, DATAGRAM);
    }

    #[test]
    fn errors() {
        let e = |b: &[u8]| UdpPacket::new_checked(b).unwrap_err();
        assert_eq!(e(&DATAGRAM[..7]), ParseError::TruncatedUdp);
        assert_eq!(e(&DATAGRAM[..12]), ParseError::BadUdpLength);
        let mut b = DATAGRAM;
        b[5] = 7;
        assert_eq!(e(&b), ParseError::BadUdpLength);
    }
}
