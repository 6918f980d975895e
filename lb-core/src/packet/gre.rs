//! GRE headers (RFC 2784 / RFC 2890): flags, protocol type and the
//!
//! ```
//! use lb_core::packet::GrePacket;
//!
//! let hdr = [0x20, 0x00, 0x08, 0x00, 0, 0, 0, 42];
//! let g = GrePacket::new_checked(&hdr[..]).unwrap();
//! assert_eq!((g.protocol_type(), g.key(), g.header_len()), (0x0800, Some(42), 8));
//! ```
//! optional checksum, key and sequence number fields.

use super::ParseError;

mod field {
    use core::ops::Range;
    pub const FLAGS_VER: Range<usize> = 0..2;
    pub const PROTOCOL: Range<usize> = 2..4;
    pub const OPTIONAL: usize = 4;
}

/// Length of the header without optional fields.
pub const HEADER_LEN: usize = 4;

pub const FLAG_CHECKSUM: u16 = 0x8000;
/// RFC 1701 routing present (deprecated; implies the checksum/offset word).
pub const FLAG_ROUTING: u16 = 0x4000;
pub const FLAG_KEY: u16 = 0x2000;
pub const FLAG_SEQ: u16 = 0x1000;

/// A view of a GRE packet.
#[derive(Debug, Clone)]
pub struct GrePacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> GrePacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        GrePacket { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the header with the optional fields its flags announce
    /// fits in the buffer.
    pub fn check_len(&self) -> Result<(), ParseError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || len < self.header_len() {
            Err(ParseError::TruncatedGre)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn flags_ver(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::FLAGS_VER];
        u16::from_be_bytes([b[0], b[1]])
    }

    fn be32_at(&self, off: usize) -> u32 {
        let b = &self.buffer.as_ref()[off..off + 4];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn has_checksum(&self) -> bool {
        self.flags_ver() & FLAG_CHECKSUM != 0
    }

    pub fn has_routing(&self) -> bool {
        self.flags_ver() & FLAG_ROUTING != 0
    }

    pub fn has_key(&self) -> bool {
        self.flags_ver() & FLAG_KEY != 0
    }

    pub fn has_seq(&self) -> bool {
        self.flags_ver() & FLAG_SEQ != 0
    }

    pub fn version(&self) -> u8 {
        (self.flags_ver() & 0x7) as u8
    }

    /// The EtherType of the payload.
    pub fn protocol_type(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::PROTOCOL];
        u16::from_be_bytes([b[0], b[1]])
    }

    fn csum_len(&self) -> usize {
        if self.has_checksum() || self.has_routing() {
            4
        } else {
            0
        }
    }

    /// Length of the optional fields (checksum/offset, key, sequence).
    pub fn optional_len(&self) -> usize {
        self.csum_len() + 4 * self.has_key() as usize + 4 * self.has_seq() as usize
    }

    /// 4 plus the optional fields.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.optional_len()
    }

    pub fn checksum(&self) -> Option<u16> {
        self.has_checksum()
            .then(|| (self.be32_at(field::OPTIONAL) >> 16) as u16)
    }

    pub fn key(&self) -> Option<u32> {
        self.has_key()
            .then(|| self.be32_at(field::OPTIONAL + self.csum_len()))
    }

    pub fn seq_number(&self) -> Option<u32> {
        let off = field::OPTIONAL + self.csum_len() + 4 * self.has_key() as usize;
        self.has_seq().then(|| self.be32_at(off))
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> GrePacket<T> {
    /// Sets the flags that decide the optional fields, and the version.
    /// Set these before the optional fields themselves.
    pub fn set_flags(&mut self, checksum: bool, key: bool, seq: bool, version: u8) {
        let mut v = version as u16 & 0x7;
        if checksum {
            v |= FLAG_CHECKSUM;
        }
        if key {
            v |= FLAG_KEY;
        }
        if seq {
            v |= FLAG_SEQ;
        }
        self.buffer.as_mut()[field::FLAGS_VER].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_protocol_type(&mut self, v: u16) {
        self.buffer.as_mut()[field::PROTOCOL].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the checksum word (no-op without the C flag).
    pub fn set_checksum(&mut self, v: u16) {
        if self.has_checksum() {
            let b = self.buffer.as_mut();
            b[4..6].copy_from_slice(&v.to_be_bytes());
            b[6..8].copy_from_slice(&[0, 0]);
        }
    }

    /// Sets the key (no-op without the K flag).
    pub fn set_key(&mut self, v: u32) {
        if self.has_key() {
            let off = field::OPTIONAL + self.csum_len();
            self.buffer.as_mut()[off..off + 4].copy_from_slice(&v.to_be_bytes());
        }
    }

    /// Sets the sequence number (no-op without the S flag).
    pub fn set_seq_number(&mut self, v: u32) {
        if self.has_seq() {
            let off = field::OPTIONAL + self.csum_len() + 4 * self.has_key() as usize;
            self.buffer.as_mut()[off..off + 4].copy_from_slice(&v.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // K and S set, transparent Ethernet bridging, key 0x01020304, seq 7.
    const HEADER: [u8; 12] = [
        0x30, 0x00, 0x65, 0x58, 0x01, 0x02, 0x03, 0x04, 0x00, 0x00, 0x00, 0x07,
    ];

    #[test]
    fn deconstruct() {
        let p = GrePacket::new_checked(&HEADER[..]).unwrap();
        assert!(!p.has_checksum() && p.has_key() && p.has_seq());
        assert_eq!(p.version(), 0);
        assert_eq!(p.protocol_type(), 0x6558);
        assert_eq!(p.header_len(), 12);
        assert_eq!(p.checksum(), None);
        assert_eq!(p.key(), Some(0x0102_0304));
        assert_eq!(p.seq_number(), Some(7));
        assert!(p.payload().is_empty());
    }

    #[test]
    fn construct() {
        let mut b = [0u8; 12];
        let mut p = GrePacket::new_unchecked(&mut b[..]);
        p.set_flags(false, true, true, 0);
        p.set_protocol_type(0x6558);
        p.set_key(0x0102_0304);
        p.set_seq_number(7);
        p.set_checksum(0xffff); // no C flag: no-op
        assert_eq!(b, HEADER);
    }

    #[test]
    fn truncated() {
        assert_eq!(
            GrePacket::new_checked(&HEADER[..3]).unwrap_err(),
            ParseError::TruncatedGre
        );
        assert_eq!(
            GrePacket::new_checked(&HEADER[..11]).unwrap_err(),
            ParseError::TruncatedGre
        );
        let mut c = [0u8; 8];
        c[0] = 0x80;
        let p = GrePacket::new_checked(&c[..]).unwrap();
        assert_eq!((p.header_len(), p.checksum()), (8, Some(0)));
    }
}
