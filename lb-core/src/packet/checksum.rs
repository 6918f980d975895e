//! The internet checksum (RFC 1071), pseudo-header sums and incremental
//! updates (RFC 1624).
//!
//! ```
//! use lb_core::packet::checksum;
//!
//! // RFC 1071's example, then an RFC 1624 update of one 16-bit word.
//! let mut data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
//! assert_eq!(checksum::sum(&data), 0xddf2);
//! let hc = checksum::checksum(&data);
//! data[2..4].copy_from_slice(&[0x12, 0x34]);
//! assert_eq!(checksum::update16(hc, 0xf203, 0x1234), checksum::checksum(&data));
//! ```
//!
//! Terminology: a *sum* is the folded, non-inverted 16-bit one's complement
//! sum of some data; a *checksum* is the inverted sum as it is stored in a
//! header. A buffer whose stored checksum is right sums to `0xffff`.

use std::net::{Ipv4Addr, Ipv6Addr};

/// One's complement addition of two 16-bit sums.
#[inline]
pub const fn add(a: u16, b: u16) -> u16 {
    let s = a as u32 + b as u32;
    ((s & 0xffff) + (s >> 16)) as u16
}

/// Folds a wide accumulator (sum of big-endian words with or without
/// end-around carries) into a 16-bit one's complement sum.
#[inline]
pub const fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Accumulates `data` into `acc` (64-bit words with end-around carry).
/// The data are treated as a sequence of big-endian 16-bit words; an odd
/// last byte is padded with a zero byte.
fn accumulate(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes(c.try_into().expect("chunks_exact(8) yields 8 bytes"));
        let (s, carry) = acc.overflowing_add(w);
        acc = s + carry as u64;
    }
    let rem = chunks.remainder();
    if !rem.is_empty() {
        let mut tail = [0u8; 8];
        tail[..rem.len()].copy_from_slice(rem);
        let (s, carry) = acc.overflowing_add(u64::from_be_bytes(tail));
        acc = s + carry as u64;
    }
    acc
}

/// The one's complement sum of `data` (RFC 1071), folded to 16 bits and
/// not inverted. Data must start at an even offset of the checksummed
/// region.
pub fn sum(data: &[u8]) -> u16 {
    fold(accumulate(data, 0))
}

/// The sum of `data` added to a previous sum `initial`.
pub fn sum_with(initial: u16, data: &[u8]) -> u16 {
    fold(accumulate(data, initial as u64))
}

/// Whether an IPv4 header without options carries a correct checksum (its
/// ten words sum to `0xffff`).
#[inline]
pub fn ipv4_header_ok(h: &[u8; 20]) -> bool {
    let mut acc = 0u64;
    for w in h.chunks_exact(4) {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    fold(acc) == 0xffff
}

/// The internet checksum of `data`: `!sum(data)`.
pub fn checksum(data: &[u8]) -> u16 {
    !sum(data)
}

/// Sum of a 32-bit value as two 16-bit words.
#[inline]
pub const fn sum32(v: u32) -> u16 {
    add((v >> 16) as u16, v as u16)
}

/// Sum of an IPv6 address as eight 16-bit words.
#[inline]
pub fn sum128(a: Ipv6Addr) -> u16 {
    a.segments().iter().fold(0, |s, w| add(s, *w))
}

/// The IPv4 pseudo-header sum (RFC 793/768): addresses, protocol and the
/// upper-layer length.
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u16) -> u16 {
    let s = add(sum32(src.to_bits()), sum32(dst.to_bits()));
    add(add(s, proto as u16), len)
}

/// The IPv6 pseudo-header sum (RFC 8200 section 8.1).
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: u32) -> u16 {
    let s = add(sum128(src), sum128(dst));
    add(add(s, sum32(len)), proto as u16)
}

/// RFC 1624 eqn. 3 on sums: a checksum `hc` over data in which a part that
/// summed to `old` now sums to `new`: `HC' = ~(~HC + ~m + m')`.
#[inline]
pub const fn update(hc: u16, old: u16, new: u16) -> u16 {
    !add(add(!hc, !old), new)
}

/// Incremental update of a checksum for one 16-bit word changing.
#[inline]
pub const fn update16(hc: u16, old: u16, new: u16) -> u16 {
    update(hc, old, new)
}

/// Incremental update of a checksum for a 32-bit field (e.g. an IPv4
/// address) changing. The field must be 16-bit aligned in the data.
#[inline]
pub const fn update32(hc: u16, old: u32, new: u32) -> u16 {
    update(hc, sum32(old), sum32(new))
}

/// Incremental update for an IPv4 address changing.
#[inline]
pub const fn update_ipv4(hc: u16, old: Ipv4Addr, new: Ipv4Addr) -> u16 {
    update32(hc, old.to_bits(), new.to_bits())
}

/// Incremental update for an IPv6 address changing.
pub fn update_ipv6(hc: u16, old: Ipv6Addr, new: Ipv6Addr) -> u16 {
    update(hc, sum128(old), sum128(new))
}

/// Incremental update of a non-inverted sum (e.g. the pseudo-header sum
/// left in the checksum field by `CHECKSUM_PARTIAL`): `S' = S + ~m + m'`.
#[inline]
pub const fn update_sum(s: u16, old: u16, new: u16) -> u16 {
    add(add(s, !old), new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The textbook RFC 1071 loop, as a reference.
    fn reference(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            acc += w as u32;
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&d), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
        assert_eq!(sum(&[]), 0);
        assert_eq!(sum(&[0xff]), 0xff00);
    }

    #[test]
    fn rfc1624_corner_case() {
        // RFC 1624 section 4: HC = 0xdd2f, m = 0x5555 -> m' = 0x3285.
        // Eqn. 3 must give 0x0000, not the -0 (0xffff) of eqn. 2.
        assert_eq!(update16(0xdd2f, 0x5555, 0x3285), 0x0000);
        // And back.
        assert_eq!(update16(0x0000, 0x3285, 0x5555), 0xdd2f);
        // A checksum of 0xffff (ones complement -0) behaves like 0x0000.
        assert_eq!(update16(0xffff, 0x1234, 0x1234), 0x0000);
        assert_eq!(update16(0x0000, 0x1234, 0x1234), 0x0000);
    }

    proptest! {
        #[test]
        fn fast_sum_matches_reference(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(sum(&data), reference(&data));
        }

        #[test]
        fn incremental_matches_full(
            mut data in proptest::collection::vec(any::<u8>(), 2..64),
            idx in any::<prop::sample::Index>(),
            w in any::<u16>(),
        ) {
            prop_assume!(data.iter().any(|b| *b != 0));
            let i = idx.index(data.len() / 2) * 2;
            let hc = checksum(&data);
            let old = u16::from_be_bytes([data[i], data[i + 1]]);
            data[i..i + 2].copy_from_slice(&w.to_be_bytes());
            prop_assume!(data.iter().any(|b| *b != 0));
            prop_assert_eq!(update16(hc, old, w), checksum(&data));
            let s = sum(&data);
            data[i..i + 2].copy_from_slice(&old.to_be_bytes());
            prop_assert_eq!(update_sum(s, w, old), reference(&data));
        }

        #[test]
        fn wide_updates(a in any::<u32>(), b in any::<u32>(), x in any::<u128>(), y in any::<u128>()) {
            let mut d = [0u8; 20];
            d[0] = 0x45;
            d[4..8].copy_from_slice(&a.to_be_bytes());
            let hc = checksum(&d);
            d[4..8].copy_from_slice(&b.to_be_bytes());
            prop_assert_eq!(update32(hc, a, b), checksum(&d));

            let mut d = [0u8; 34];
            d[0] = 0x60;
            d[2..18].copy_from_slice(&x.to_be_bytes());
            let hc = checksum(&d);
            d[2..18].copy_from_slice(&y.to_be_bytes());
            prop_assert_eq!(update_ipv6(hc, x.into(), y.into()), checksum(&d));
        }
    }
}
