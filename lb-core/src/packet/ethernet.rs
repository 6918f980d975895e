//! Ethernet II frames with at most one 802.1Q tag.
//!
//! ```
//! use lb_core::packet::{EtherType, EthernetFrame, MacAddr};
//!
//! let mut buf = [0u8; 18];
//! let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
//! f.set_src_addr(MacAddr([2, 0, 0, 0, 0, 1]));
//! f.set_outer_ethertype(0x8100);
//! f.set_vlan_tci(42);
//! f.set_ethertype(EtherType::Ipv6);
//! let f = EthernetFrame::new_checked(&buf[..]).unwrap();
//! assert_eq!((f.vlan_id(), f.ethertype(), f.header_len()), (Some(42), EtherType::Ipv6, 18));
//! ```

use core::fmt;
use std::net::Ipv6Addr;

use super::ParseError;

/// A 48-bit Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// # Panics
    /// If `b` is not exactly 6 bytes long.
    pub fn from_bytes(b: &[u8]) -> MacAddr {
        MacAddr(b.try_into().expect("a MAC address is 6 bytes"))
    }

    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    pub fn is_broadcast(&self) -> bool {
        *self == MacAddr::BROADCAST
    }

    /// Group bit set (includes broadcast).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// The Ethernet address IPv6 multicast `addr` maps to (RFC 2464):
    /// `33:33` followed by the last 32 bits of the address.
    pub fn from_ipv6_multicast(addr: Ipv6Addr) -> MacAddr {
        let o = addr.octets();
        MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// An EtherType.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EtherType {
    Ipv4,
    Arp,
    /// 802.1Q tag.
    Vlan,
    Ipv6,
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(v: u16) -> Self {
        match v {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x8100 => EtherType::Vlan,
            0x86dd => EtherType::Ipv6,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(v: EtherType) -> Self {
        match v {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Vlan => 0x8100,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Unknown(other) => other,
        }
    }
}

mod field {
    use core::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const VLAN_TCI: Range<usize> = 14..16;
    pub const VLAN_ETHERTYPE: Range<usize> = 16..18;
}

/// Length of an untagged Ethernet II header.
pub const HEADER_LEN: usize = 14;
/// Length of an Ethernet II header with one 802.1Q tag.
pub const VLAN_HEADER_LEN: usize = 18;
/// The 802.1Q tag protocol identifier.
pub const ETHERTYPE_VLAN: u16 = 0x8100;

/// Whether `ethertype` starts a VLAN tag: 802.1Q, 802.1ad (the QinQ
/// service tag) or the pre-standard QinQ 0x9100.
pub fn is_vlan_tag(ethertype: u16) -> bool {
    matches!(ethertype, ETHERTYPE_VLAN | 0x88a8 | 0x9100)
}

/// How a frame is tagged, as far as a port's VLAN is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tagging {
    Untagged,
    /// One 802.1Q tag, with its TCI (priority, DEI and VLAN id).
    Dot1q(u16),
    /// Anything else: an 802.1ad or 0x9100 outer tag, or stacked tags.
    Other,
}

/// The tagging of `frame`; `None` when it is too short to tell.
pub fn tagging(frame: &[u8]) -> Option<Tagging> {
    let be16 = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let outer = be16(12)?;
    Some(match outer {
        ETHERTYPE_VLAN => {
            let (tci, inner) = (be16(14)?, be16(16)?);
            if is_vlan_tag(inner) {
                Tagging::Other
            } else {
                Tagging::Dot1q(tci)
            }
        }
        t if is_vlan_tag(t) => Tagging::Other,
        _ => Tagging::Untagged,
    })
}

/// A view of an Ethernet II frame, optionally with one 802.1Q tag.
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps a buffer without checking its length: accessors may panic on a
    /// short buffer (never undefined behaviour).
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let f = Self::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
    }

    /// Checks that the header (with its tag, if any) fits in the buffer.
    pub fn check_len(&self) -> Result<(), ParseError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            Err(ParseError::TruncatedEthernet)
        } else if self.has_vlan() && len < VLAN_HEADER_LEN {
            Err(ParseError::TruncatedVlan)
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

    pub fn dst_addr(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::DST])
    }

    pub fn src_addr(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::SRC])
    }

    /// The EtherType right after the addresses (0x8100 when tagged).
    pub fn outer_ethertype(&self) -> u16 {
        self.be16(field::ETHERTYPE)
    }

    pub fn has_vlan(&self) -> bool {
        self.outer_ethertype() == ETHERTYPE_VLAN
    }

    /// The tag control information (PCP, DEI, VID) when tagged.
    pub fn vlan_tci(&self) -> Option<u16> {
        self.has_vlan().then(|| self.be16(field::VLAN_TCI))
    }

    /// The 12-bit VLAN id when tagged.
    pub fn vlan_id(&self) -> Option<u16> {
        self.vlan_tci().map(|t| t & 0x0fff)
    }

    /// The EtherType of the payload (after the tag, if any).
    pub fn ethertype(&self) -> EtherType {
        self.ethertype_raw().into()
    }

    /// The EtherType of the payload as a number.
    pub fn ethertype_raw(&self) -> u16 {
        if self.has_vlan() {
            self.be16(field::VLAN_ETHERTYPE)
        } else {
            self.outer_ethertype()
        }
    }

    /// 14, or 18 when tagged.
    pub fn header_len(&self) -> usize {
        if self.has_vlan() {
            VLAN_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst_addr(&mut self, a: MacAddr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.0);
    }

    pub fn set_src_addr(&mut self, a: MacAddr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.0);
    }

    /// Sets the EtherType right after the addresses.
    pub fn set_outer_ethertype(&mut self, v: u16) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the tag control information; the frame must already be tagged
    /// (outer EtherType 0x8100).
    pub fn set_vlan_tci(&mut self, tci: u16) {
        self.buffer.as_mut()[field::VLAN_TCI].copy_from_slice(&tci.to_be_bytes());
    }

    /// Sets the payload EtherType (after the tag, if any).
    pub fn set_ethertype(&mut self, v: EtherType) {
        let v: u16 = v.into();
        if self.has_vlan() {
            self.buffer.as_mut()[field::VLAN_ETHERTYPE].copy_from_slice(&v.to_be_bytes());
        } else {
            self.set_outer_ethertype(v);
        }
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let h = self.header_len();
        &mut self.buffer.as_mut()[h..]
    }
}

/// Appends an Ethernet header to `out`.
pub(crate) fn emit(
    out: &mut Vec<u8>,
    dst: MacAddr,
    src: MacAddr,
    vlan: Option<u16>,
    ethertype: u16,
) {
    out.extend_from_slice(&dst.0);
    out.extend_from_slice(&src.0);
    if let Some(vid) = vlan {
        out.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        out.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    out.extend_from_slice(&ethertype.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    // A tagged IPv4 frame header: dst 52:54:00:12:34:56, src
    // 02:42:ac:11:00:02, VLAN 100 (PCP 3), IPv4.
    const TAGGED: [u8; 18] = [
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x02, 0x42, 0xac, 0x11, 0x00, 0x02, 0x81, 0x00, 0x60,
        0x64, 0x08, 0x00,
    ];

    #[test]
    fn deconstruct() {
        let f = EthernetFrame::new_checked(&TAGGED[..]).unwrap();
        assert_eq!(f.dst_addr(), MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]));
        assert_eq!(f.src_addr().to_string(), "02:42:ac:11:00:02");
        assert_eq!(f.vlan_tci(), Some(0x6064));
        assert_eq!(f.vlan_id(), Some(100));
        assert_eq!(f.ethertype(), EtherType::Ipv4);
        assert_eq!(f.header_len(), 18);
        assert!(f.payload().is_empty());
    }

    #[test]
    fn construct() {
        let mut b = [0u8; 18];
        let mut f = EthernetFrame::new_unchecked(&mut b[..]);
        f.set_dst_addr(MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]));
        f.set_src_addr(MacAddr([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]));
        f.set_outer_ethertype(ETHERTYPE_VLAN);
        f.set_vlan_tci(0x6064);
        f.set_ethertype(EtherType::Ipv4);
        assert_eq!(b, TAGGED);
        let mut v = Vec::new();
        emit(
            &mut v,
            MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
            MacAddr([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]),
            Some(100),
            0x0800,
        );
        assert_eq!(&v[..14], &TAGGED[..14]);
        assert_eq!(&v[16..], &TAGGED[16..]);
    }

    #[test]
    fn tagging_of_frames() {
        assert_eq!(tagging(&TAGGED), Some(Tagging::Dot1q(0x6064)));
        assert_eq!(tagging(&TAGGED[..17]), None);
        let mut plain = TAGGED[..12].to_vec();
        plain.extend_from_slice(&[0x08, 0x00]);
        assert_eq!(tagging(&plain), Some(Tagging::Untagged));
        let mut ad = TAGGED;
        ad[12..14].copy_from_slice(&[0x88, 0xa8]);
        assert_eq!(tagging(&ad), Some(Tagging::Other));
        let mut qinq = TAGGED;
        qinq[16..18].copy_from_slice(&[0x81, 0x00]);
        assert_eq!(tagging(&qinq), Some(Tagging::Other));
    }

    #[test]
    fn errors_and_enums() {
        assert_eq!(
            EthernetFrame::new_checked(&TAGGED[..13]).unwrap_err(),
            ParseError::TruncatedEthernet
        );
        assert_eq!(
            EthernetFrame::new_checked(&TAGGED[..17]).unwrap_err(),
            ParseError::TruncatedVlan
        );
        for v in [0x0800u16, 0x0806, 0x8100, 0x86dd, 0x88cc] {
            assert_eq!(u16::from(EtherType::from(v)), v);
        }
        assert!(MacAddr::BROADCAST.is_multicast() && MacAddr::BROADCAST.is_broadcast());
        assert_eq!(
            MacAddr::from_ipv6_multicast("ff02::1:ff00:1".parse().unwrap()).to_string(),
            "33:33:ff:00:00:01"
        );
    }
}
