//! The stamp at the start of every frame's TCP payload.

use lb_core::packet::{self, Kind};

use super::Class;

/// Bytes of the stamp at the start of the TCP payload.
pub const STAMP_LEN: usize = 10;
/// First byte of every stamp.
const MAGIC: u8 = 0x9e;

/// The stamp as it travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub run: u8,
    pub class: Class,
    pub seq: u32,
    pub tx_ns: u32,
}

impl Stamp {
    pub fn write(&self, out: &mut [u8; STAMP_LEN]) {
        out[0] = MAGIC;
        out[1] = (self.run << 4) | self.class as u8;
        out[2..6].copy_from_slice(&self.seq.to_be_bytes());
        out[6..10].copy_from_slice(&self.tx_ns.to_be_bytes());
    }

    pub fn read(b: &[u8]) -> Option<Stamp> {
        let b: &[u8; STAMP_LEN] = b.get(..STAMP_LEN)?.try_into().ok()?;
        if b[0] != MAGIC {
            return None;
        }
        Some(Stamp {
            run: b[1] >> 4,
            class: Class::from_index(b[1] & 0x0f)?,
            seq: u32::from_be_bytes([b[2], b[3], b[4], b[5]]),
            tx_ns: u32::from_be_bytes([b[6], b[7], b[8], b[9]]),
        })
    }

    /// The stamp in the TCP payload of `frame`, if it is one of ours.
    pub fn find(frame: &[u8]) -> Option<Stamp> {
        let p = packet::parse(frame).ok()?;
        if !matches!(p.kind, Kind::Ipv4 | Kind::Ipv6) || p.proto != 6 || p.is_fragment {
            return None;
        }
        let doff = usize::from(frame.get(p.l4_offset + 12)? >> 4) * 4;
        let start = p.l4_offset + doff;
        Stamp::read(frame.get(start..p.l3_end())?)
    }
}
