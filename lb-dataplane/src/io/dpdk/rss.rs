//! Receive-side scaling: the symmetric Toeplitz key and hash.

use super::*;

/// The symmetric Toeplitz key: `0x6d5a` repeated. Its 16-bit period makes
/// the hash invariant under swapping source and destination (addresses and
/// ports are both multiples of 16 bits), so both directions of a flow land
/// on the same queue.
pub const SYMMETRIC_RSS_KEY: [u8; 40] = {
    let mut key = [0u8; 40];
    let mut i = 0;
    while i < 40 {
        key[i] = if i % 2 == 0 { 0x6d } else { 0x5a };
        i += 1;
    }
    key
};

/// The symmetric key at `len` bytes (NICs differ: 40 and 52 are common).
pub use lb_core::nat::rss::symmetric_key as symmetric_rss_key;

/// The Toeplitz hash NICs compute for RSS (see `lb_core::nat::rss`).
pub use lb_core::nat::rss::toeplitz_hash;

/// The hash types we ask for, when the PMD supports them.
pub(super) const RSS_HF: u64 = sys::LB_RTE_ETH_RSS_IPV4
    | sys::LB_RTE_ETH_RSS_NONFRAG_IPV4_TCP
    | sys::LB_RTE_ETH_RSS_NONFRAG_IPV4_UDP
    | sys::LB_RTE_ETH_RSS_IPV6
    | sys::LB_RTE_ETH_RSS_NONFRAG_IPV6_TCP
    | sys::LB_RTE_ETH_RSS_NONFRAG_IPV6_UDP;

#[cfg(test)]
mod tests {
    use super::*;

    /// Microsoft's RSS verification key.
    const MS_KEY: [u8; 40] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f,
        0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30,
        0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
    ];

    fn tuple4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&src);
        v.extend_from_slice(&dst);
        v.extend_from_slice(&sport.to_be_bytes());
        v.extend_from_slice(&dport.to_be_bytes());
        v
    }

    #[test]
    fn toeplitz_matches_microsoft_vectors() {
        // 66.9.149.187:2794 -> 161.142.100.80:1766
        let t = tuple4([66, 9, 149, 187], [161, 142, 100, 80], 2794, 1766);
        assert_eq!(toeplitz_hash(&MS_KEY, &t[..8]), 0x323e_8fc2);
        assert_eq!(toeplitz_hash(&MS_KEY, &t), 0x51cc_c178);
        // 199.92.111.2:14230 -> 65.69.140.83:4739
        let t = tuple4([199, 92, 111, 2], [65, 69, 140, 83], 14230, 4739);
        assert_eq!(toeplitz_hash(&MS_KEY, &t[..8]), 0xd718_262a);
        assert_eq!(toeplitz_hash(&MS_KEY, &t), 0xc626_b0ea);
    }

    #[test]
    fn symmetric_key_hashes_both_directions_alike() {
        assert_eq!(SYMMETRIC_RSS_KEY.to_vec(), symmetric_rss_key(40));
        let mut x = 0x1234_5678u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for _ in 0..1000 {
            let (a, b) = (next().to_be_bytes(), next().to_be_bytes());
            let (p, q) = (next() as u16, (next() >> 16) as u16);
            let fwd = toeplitz_hash(&SYMMETRIC_RSS_KEY, &tuple4(a, b, p, q));
            let rev = toeplitz_hash(&SYMMETRIC_RSS_KEY, &tuple4(b, a, q, p));
            assert_eq!(fwd, rev);
            // IPv6: 16-byte addresses, and a 52-byte key as some NICs use.
            let (a6, b6): (Vec<u8>, Vec<u8>) = (
                (0..4).flat_map(|_| next().to_be_bytes()).collect(),
                (0..4).flat_map(|_| next().to_be_bytes()).collect(),
            );
            let key52 = symmetric_rss_key(52);
            let t6 = |s: &[u8], d: &[u8], sp: u16, dp: u16| {
                let mut v = s.to_vec();
                v.extend_from_slice(d);
                v.extend_from_slice(&sp.to_be_bytes());
                v.extend_from_slice(&dp.to_be_bytes());
                v
            };
            assert_eq!(
                toeplitz_hash(&key52, &t6(&a6, &b6, p, q)),
                toeplitz_hash(&key52, &t6(&b6, &a6, q, p))
            );
        }
        // The default key is not symmetric: the reason for ours.
        let t = tuple4([66, 9, 149, 187], [161, 142, 100, 80], 2794, 1766);
        let r = tuple4([161, 142, 100, 80], [66, 9, 149, 187], 1766, 2794);
        assert_ne!(toeplitz_hash(&MS_KEY, &t), toeplitz_hash(&MS_KEY, &r));
    }
}
