//! TCP headers (RFC 9293). Options are exposed as bytes, not parsed.
//!
//! ```
//! use lb_core::packet::{TcpFlags, TcpPacket};
//!
//! let mut seg = [0u8; 20];
//! let mut t = TcpPacket::new_unchecked(&mut seg[..]);
//! t.set_dst_port(443);
//! t.set_header_len(20);
//! t.set_flags(TcpFlags(TcpFlags::SYN));
//! let t = TcpPacket::new_checked(&seg[..]).unwrap();
//! assert!(t.flags().contains(TcpFlags::SYN) && t.payload().is_empty());
//! ```

use super::ParseError;

mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ: Range<usize> = 4..8;
    pub const ACK: Range<usize> = 8..12;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;
/// Byte offset of the checksum.
pub const CHECKSUM_OFFSET: usize = 16;

/// TCP flag bits (the byte at offset 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;

    pub const fn contains(self, bits: u8) -> bool {
        self.0 & bits == bits
    }
}

/// A view of a TCP segment.
#[derive(Debug, Clone)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// `buffer` must be exactly the segment (header and payload).
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the fixed header and that the data offset is at least 5 and
    /// within the buffer.
    pub fn check_len(&self) -> Result<(), ParseError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(ParseError::TruncatedTcp);
        }
        let hl = self.header_len();
        if hl < HEADER_LEN || hl > len {
            return Err(ParseError::BadTcpDataOffset);
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

    fn be32(&self, r: core::ops::Range<usize>) -> u32 {
        let b = &self.buffer.as_ref()[r];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn src_port(&self) -> u16 {
        self.be16(field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        self.be16(field::DST_PORT)
    }

    pub fn seq_number(&self) -> u32 {
        self.be32(field::SEQ)
    }

    pub fn ack_number(&self) -> u32 {
        self.be32(field::ACK)
    }

    /// Header length in bytes (data offset * 4).
    pub fn header_len(&self) -> usize {
        ((self.buffer.as_ref()[field::DATA_OFF] >> 4) as usize) * 4
    }

    /// The eight flag bits (CWR..FIN); NS is not included.
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.buffer.as_ref()[field::FLAGS])
    }

    pub fn window_len(&self) -> u16 {
        self.be16(field::WINDOW)
    }

    pub fn checksum(&self) -> u16 {
        self.be16(field::CHECKSUM)
    }

    pub fn urgent_at(&self) -> u16 {
        self.be16(field::URGENT)
    }

    /// The raw options (not parsed).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    fn set_be16(&mut self, r: core::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_src_port(&mut self, v: u16) {
        self.set_be16(field::SRC_PORT, v);
    }

    pub fn set_dst_port(&mut self, v: u16) {
        self.set_be16(field::DST_PORT, v);
    }

    pub fn set_seq_number(&mut self, v: u32) {
        self.buffer.as_mut()[field::SEQ].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_ack_number(&mut self, v: u32) {
        self.buffer.as_mut()[field::ACK].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the header length in bytes (a multiple of 4, 20..=60); clears
    /// the reserved bits and NS.
    pub fn set_header_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::DATA_OFF] = ((len / 4) as u8) << 4;
    }

    pub fn set_flags(&mut self, f: TcpFlags) {
        self.buffer.as_mut()[field::FLAGS] = f.0;
    }

    pub fn set_window_len(&mut self, v: u16) {
        self.set_be16(field::WINDOW, v);
    }

    pub fn set_checksum(&mut self, v: u16) {
        self.set_be16(field::CHECKSUM, v);
    }

    pub fn set_urgent_at(&mut self, v: u16) {
        self.set_be16(field::URGENT, v);
    }

    /// Computes the checksum from scratch given the pseudo-header sum.
    pub fn fill_checksum(&mut self, pseudo_sum: u16) {
        self.set_checksum(0);
        let s = super::checksum::sum_with(pseudo_sum, self.buffer.as_ref());
        self.set_checksum(!s);
    }

    pub fn options_mut(&mut self) -> &mut [u8] {
        let h = self.header_len();
        &mut self.buffer.as_mut()[HEADER_LEN..h]
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let h = self.header_len();
        &mut self.buffer.as_mut()[h..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::checksum;
    use std::net::Ipv4Addr;

    // 198.18.0.2:40000 -> 198.18.0.10:443, PSH|ACK, seq 1, ack 2, window
    // 502, options MSS 1460 / NOP / window scale 7, payload "GET".
    const SEGMENT: [u8; 31] = [
        0x9c, 0x40, 0x01, 0xbb, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x70, 0x18, 0x01,
        0xf6, 0xbc, 0x94, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x01, 0x03, 0x03, 0x07, 0x47, 0x45,
        0x54,
    ];

    fn pseudo() -> u16 {
        checksum::pseudo_header_v4(
            Ipv4Addr::new(198, 18, 0, 2),
            Ipv4Addr::new(198, 18, 0, 10),
            6,
            SEGMENT.len() as u16,
        )
    }

    #[test]
    fn deconstruct() {
        let p = TcpPacket::new_checked(&SEGMENT[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port()), (40000, 443));
        assert_eq!((p.seq_number(), p.ack_number()), (1, 2));
        assert_eq!(p.header_len(), 28);
        assert_eq!(p.flags(), TcpFlags(TcpFlags::PSH | TcpFlags::ACK));
        assert_eq!(
            (p.window_len(), p.checksum(), p.urgent_at()),
            (502, 0xbc94, 0)
        );
        assert_eq!(p.options(), &[2, 4, 5, 0xb4, 1, 3, 3, 7]);
        assert_eq!(p.payload(), b"GET");
        assert_eq!(checksum::sum_with(pseudo(), &SEGMENT), 0xffff);
    }

    #[test]
    fn construct() {
        let mut b = [0u8; 31];
        let mut p = TcpPacket::new_unchecked(&mut b[..]);
        p.set_src_port(40000);
        p.set_dst_port(443);
        p.set_seq_number(1);
        p.set_ack_number(2);
        p.set_header_len(28);
        p.set_flags(TcpFlags(TcpFlags::PSH | TcpFlags::ACK));
        p.set_window_len(502);
        p.set_urgent_at(0);
        p.options_mut()
            .copy_from_slice(&[2, 4, 5, 0xb4, 1, 3, 3, 7]);
        p.payload_mut().copy_from_slice(b"GET");
        p.fill_checksum(pseudo());
        assert_eq!(b, SEGMENT);
    }

    #[test]
    fn errors() {
        let e = |b: &[u8]| TcpPacket::new_checked(b).unwrap_err();
        assert_eq!(e(&SEGMENT[..19]), ParseError::TruncatedTcp);
        assert_eq!(e(&SEGMENT[..27]), ParseError::BadTcpDataOffset);
        let mut b = SEGMENT;
        b[12] = 0x40;
        assert_eq!(e(&b), ParseError::BadTcpDataOffset);
    }
}
