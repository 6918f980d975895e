//! The SYN proxy: SYN cookies, the handshake frames the proxy sends, and
//! the sequence-number translation of proxied sessions.
//!
//! A listener whose proxy is engaged answers a client's SYN itself with a
//! SYN-ACK whose initial sequence number is a cookie, and keeps nothing.
//! Only the client's ACK, acknowledging `cookie + 1`, opens a session: the
//! proxy then sends its own SYN to the backend (with the client's initial
//! sequence number and options), and on the backend's SYN-ACK completes
//! that handshake with an ACK. From then on the client sees the cookie as
//! the server's sequence numbers and the backend its own: packets from the
//! backend have `offset` (backend ISN - cookie) taken off their sequence
//! number, packets from the client have it added to their acknowledgment
//! number and SACK blocks ([`translate`]).
//!
//! ```
//! use lb_core::flow::FlowKey;
//! use lb_core::synproxy::{CookieSecret, SynOptions, cookie_count, encode_cookie, decode_cookie};
//! use lb_core::NANOS_PER_SEC;
//!
//! let secret = CookieSecret::new([7; 16]);
//! let key = FlowKey {
//!     src: "198.18.0.2".parse().unwrap(),
//!     dst: "198.18.0.10".parse().unwrap(),
//!     proto: 6,
//!     sport: 40000,
//!     dport: 80,
//! };
//! let opts = SynOptions { mss: 1460, wscale: Some(7), sack: true };
//! let now = 100 * NANOS_PER_SEC;
//! let cookie = encode_cookie(&secret, &key, 1000, cookie_count(now), opts);
//! // The client's ACK: sequence 1001, acknowledging cookie + 1.
//! assert_eq!(decode_cookie(&secret, &key, 1000, cookie, cookie_count(now + 60 * NANOS_PER_SEC)), Some(opts));
//! // Another client port, another cookie.
//! let other = FlowKey { sport: 40001, ..key };
//! assert_eq!(decode_cookie(&secret, &other, 1000, cookie, cookie_count(now)), None);
//! ```
//!
//! # Cookies
//!
//! As Linux's (net/ipv4/syncookies.c), a cookie is
//! `H1(tuple) + client ISN + (count << 30) + ((H2(tuple, count) + data) mod 2^30)`
//! where `count` is a 64-second time counter (its low 2 bits travel in
//! the cookie), `H1` and `H2` are SipHash-2-4 under a per-process secret,
//! and `data` (7 bits) holds the MSS index, the client's window scale and
//! whether it permitted SACK. A cookie is accepted for 2 to 3 counter
//! periods (Linux's MAX_SYNCOOKIE_AGE is 2 minutes); a guessed one passes
//! with a probability of about 3 in 2^23. Linux carries the window scale
//! and SACK in the timestamp option; the proxy offers no timestamps (the
//! backend's would not match the ones the client saw), so they go into the
//! cookie itself, as IPVS's SYN proxy does.

use std::net::IpAddr;

use crate::flow::{addr_bits, FlowKey};
use crate::packet::checksum;
use crate::{Nanos, NANOS_PER_SEC};

/// The length of a cookie counter period.
pub const COOKIE_PERIOD: Nanos = 64 * NANOS_PER_SEC;

/// How many periods back a cookie's counter may be.
pub const MAX_COOKIE_AGE: u32 = 2;

/// The MSS values a cookie can carry (Linux's tables): the largest not
/// above the client's is chosen.
pub const MSS_V4: [u16; 4] = [536, 1300, 1440, 1460];
pub const MSS_V6: [u16; 4] = [1220, 1420, 1440, 8940];

/// The window scale the proxy's SYN-ACK offers (the shift Linux picks for
/// its default receive buffers): the backend's own is translated to it.
pub const PROXY_WSCALE: u8 = 7;

/// The MSS the proxy's SYN-ACK offers for IPv4 and IPv6 (a 1500-byte MTU).
pub const PROXY_MSS: [u16; 2] = [1460, 1440];

const COUNT_BITS: u32 = 2;
const HASH_BITS: u32 = 32 - COUNT_BITS;
const HASH_MASK: u32 = (1 << HASH_BITS) - 1;
/// Bits of `data` in a cookie.
const DATA_BITS: u32 = 7;

/// The secret the cookies are keyed with: 128 bits, drawn once per
/// process (the data plane takes it from getrandom).
#[derive(Clone, PartialEq, Eq)]
pub struct CookieSecret {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for CookieSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieSecret(..)")
    }
}

impl CookieSecret {
    pub fn new(bytes: [u8; 16]) -> CookieSecret {
        let (a, b) = bytes.split_at(8);
        CookieSecret {
            k0: u64::from_le_bytes(a.try_into().expect("8 bytes")),
            k1: u64::from_le_bytes(b.try_into().expect("8 bytes")),
        }
    }
}

impl Default for CookieSecret {
    /// A fixed secret, for `lbctl eval` and tests.
    fn default() -> Self {
        CookieSecret::new([0x5a; 16])
    }
}

/// The TCP options of a handshake that a cookie remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SynOptions {
    /// The client's MSS (after decoding: the table value at or below it).
    pub mss: u16,
    /// The client's window scale, when both sides offered one.
    pub wscale: Option<u8>,
    /// SACK permitted by the client (and offered back).
    pub sack: bool,
}

/// The cookie counter at `now`.
pub fn cookie_count(now: Nanos) -> u32 {
    (now / COOKIE_PERIOD) as u32
}

/// SipHash-2-4 of 64-bit words (as little-endian bytes).
fn siphash(k0: u64, k1: u64, words: &[u64]) -> u64 {
    let mut v0 = k0 ^ 0x736f_6d65_7073_6575;
    let mut v1 = k1 ^ 0x646f_7261_6e64_6f6d;
    let mut v2 = k0 ^ 0x6c79_6765_6e65_7261;
    let mut v3 = k1 ^ 0x7465_6462_7974_6573;
    let round = |v0: &mut u64, v1: &mut u64, v2: &mut u64, v3: &mut u64| {
        *v0 = v0.wrapping_add(*v1);
        *v1 = v1.rotate_left(13) ^ *v0;
        *v0 = v0.rotate_left(32);
        *v2 = v2.wrapping_add(*v3);
        *v3 = v3.rotate_left(16) ^ *v2;
        *v0 = v0.wrapping_add(*v3);
        *v3 = v3.rotate_left(21) ^ *v0;
        *v2 = v2.wrapping_add(*v1);
        *v1 = v1.rotate_left(17) ^ *v2;
        *v2 = v2.rotate_left(32);
    };
    let last = ((words.len() as u64 * 8) & 0xff) << 56;
    for &m in words.iter().chain(std::iter::once(&last)) {
        v3 ^= m;
        round(&mut v0, &mut v1, &mut v2, &mut v3);
        round(&mut v0, &mut v1, &mut v2, &mut v3);
        v0 ^= m;
    }
    v2 ^= 0xff;
    for _ in 0..4 {
        round(&mut v0, &mut v1, &mut v2, &mut v3);
    }
    v0 ^ v1 ^ v2 ^ v3
}

/// The hash of the client's tuple, with `count` and a tag (1 or 2).
fn tuple_hash(secret: &CookieSecret, key: &FlowKey, count: u32, tag: u64) -> u32 {
    let (s, d) = (addr_bits(key.src), addr_bits(key.dst));
    let ports = (u64::from(key.sport) << 16) | u64::from(key.dport);
    let words = [
        (s >> 64) as u64,
        s as u64,
        (d >> 64) as u64,
        d as u64,
        ports,
        (u64::from(count) << 8) | tag,
    ];
    siphash(secret.k0, secret.k1, &words) as u32
}

fn mss_table(key: &FlowKey) -> &'static [u16; 4] {
    if key.is_ipv6() {
        &MSS_V6
    } else {
        &MSS_V4
    }
}

/// The 7 bits of options a cookie carries.
fn options_data(key: &FlowKey, opts: SynOptions) -> u32 {
    let table = mss_table(key);
    let mssind = (1..table.len())
        .rev()
        .find(|&i| opts.mss >= table[i])
        .unwrap_or(0) as u32;
    let ws = opts.wscale.map_or(0, |w| u32::from(w.min(14)) + 1);
    mssind | (ws << 2) | (u32::from(opts.sack) << 6)
}

/// The cookie for a SYN of `key` (client → VIP) with initial sequence
/// number `isn` and the options negotiated (`opts.mss` the client's MSS,
/// or 0 without the option).
pub fn encode_cookie(
    secret: &CookieSecret,
    key: &FlowKey,
    isn: u32,
    count: u32,
    opts: SynOptions,
) -> u32 {
    let data = options_data(key, opts);
    let low = tuple_hash(secret, key, count, 2).wrapping_add(data) & HASH_MASK;
    tuple_hash(secret, key, 0, 1)
        .wrapping_add(isn)
        .wrapping_add(count << HASH_BITS)
        .wrapping_add(low)
}

/// The options of a valid `cookie` (the client acknowledged `cookie + 1`)
/// for `key` and the client's `isn` (its sequence number minus one), at
/// counter `now_count`; `None` when the cookie is wrong or too old.
pub fn decode_cookie(
    secret: &CookieSecret,
    key: &FlowKey,
    isn: u32,
    cookie: u32,
    now_count: u32,
) -> Option<SynOptions> {
    let v = cookie
        .wrapping_sub(tuple_hash(secret, key, 0, 1))
        .wrapping_sub(isn);
    let low_count = v >> HASH_BITS;
    let count = (0..=MAX_COOKIE_AGE)
        .map(|age| now_count.wrapping_sub(age))
        .find(|c| c & ((1 << COUNT_BITS) - 1) == low_count)?;
    let data = (v & HASH_MASK).wrapping_sub(tuple_hash(secret, key, count, 2)) & HASH_MASK;
    if data >= 1 << DATA_BITS {
        return None;
    }
    let ws = (data >> 2) & 0xf;
    if ws > 15 {
        return None;
    }
    Some(SynOptions {
        mss: mss_table(key)[(data & 3) as usize],
        wscale: (ws > 0).then(|| (ws - 1) as u8),
        sack: data & (1 << 6) != 0,
    })
}

/// TCP option kinds.
const OPT_EOL: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
const OPT_WSCALE: u8 = 3;
const OPT_SACK_PERM: u8 = 4;
const OPT_SACK: u8 = 5;

/// The handshake options of a SYN's TCP options (`mss` 0 when absent).
/// Malformed options end the walk: what was read so far counts.
pub fn parse_syn_options(opts: &[u8]) -> SynOptions {
    let mut o = SynOptions::default();
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            OPT_EOL => break,
            OPT_NOP => i += 1,
            kind => {
                let Some(&len) = opts.get(i + 1) else { break };
                let len = usize::from(len);
                if len < 2 || i + len > opts.len() {
                    break;
                }
                let body = &opts[i + 2..i + len];
                match (kind, body) {
                    (OPT_MSS, &[a, b]) => o.mss = u16::from_be_bytes([a, b]),
                    (OPT_WSCALE, &[s]) => o.wscale = Some(s.min(14)),
                    (OPT_SACK_PERM, &[]) => o.sack = true,
                    _ => {}
                }
                i += len;
            }
        }
    }
    o
}

/// Writes handshake options (MSS, SACK permitted, window scale) into
/// `out` and returns their length, padded to 4 bytes with NOPs.
pub fn write_syn_options(out: &mut [u8; 12], mss: u16, wscale: Option<u8>, sack: bool) -> usize {
    let mut n = 0;
    let mut put = |b: &[u8]| {
        out[n..n + b.len()].copy_from_slice(b);
        n += b.len();
    };
    let m = mss.to_be_bytes();
    put(&[OPT_MSS, 4, m[0], m[1]]);
    if sack {
        put(&[OPT_NOP, OPT_NOP, OPT_SACK_PERM, 2]);
    }
    if let Some(s) = wscale {
        put(&[OPT_NOP, OPT_WSCALE, 3, s]);
    }
    n
}

/// A TCP segment the proxy sends: its headers, in an Ethernet frame
/// (MACs left zero: the data plane fills them in on the way out).
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// (MSS, window scale, SACK permitted), for a SYN or SYN-ACK.
    pub syn_options: Option<(u16, Option<u8>, bool)>,
}

/// The longest frame [`build_segment`] writes.
pub const SEGMENT_MAX: usize = 14 + 40 + 20 + 12;

/// Writes `seg` as a frame into `out` and returns its length (0 when the
/// addresses are of two families).
pub fn build_segment(seg: &Segment, out: &mut [u8; SEGMENT_MAX]) -> usize {
    let mut opts = [0u8; 12];
    let olen = seg
        .syn_options
        .map_or(0, |(m, w, s)| write_syn_options(&mut opts, m, w, s));
    let tcp_len = 20 + olen;
    out.fill(0);
    let (l3, tcp_at) = match (seg.src, seg.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            let h = &mut out[14..34];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
            h[6] = 0x40; // DF
            h[8] = 64;
            h[9] = 6;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let c = checksum::checksum(h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            (checksum::pseudo_header_v4(s, d, 6, tcp_len as u16), 34)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            let h = &mut out[14..54];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
            h[6] = 6;
            h[7] = 64;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            (checksum::pseudo_header_v6(s, d, 6, tcp_len as u32), 54)
        }
        _ => return 0,
    };
    let t = &mut out[tcp_at..tcp_at + tcp_len];
    t[0..2].copy_from_slice(&seg.sport.to_be_bytes());
    t[2..4].copy_from_slice(&seg.dport.to_be_bytes());
    t[4..8].copy_from_slice(&seg.seq.to_be_bytes());
    t[8..12].copy_from_slice(&seg.ack.to_be_bytes());
    t[12] = ((tcp_len / 4) as u8) << 4;
    t[13] = seg.flags;
    t[14..16].copy_from_slice(&seg.window.to_be_bytes());
    t[20..].copy_from_slice(&opts[..olen]);
    let c = !checksum::sum_with(l3, t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    tcp_at + tcp_len
}

/// How a proxied session's packets are translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Translation {
    /// Backend ISN - cookie: taken off the sequence numbers of packets
    /// from the backend, added to the acknowledgments (and SACK blocks)
    /// of packets from the client.
    pub offset: u32,
    /// Window shift for packets from the backend: its own scale minus the
    /// one the proxy offered the client (negative: shift right).
    pub backend_shift: i8,
    /// Window shift for packets from the client: the client's scale when
    /// the backend did not take up window scaling, else 0.
    pub client_shift: i8,
}

/// Translates the TCP segment at `tcp` (header and payload) of a proxied
/// session travelling from the client (`from_client`) or from the
/// backend, and updates its checksum incrementally when `full_csum` (a
/// partial checksum is completed later over the new bytes).
pub fn translate(tcp: &mut [u8], from_client: bool, t: Translation, full_csum: bool) {
    if tcp.len() < 20 {
        return;
    }
    let mut c = u16::from_be_bytes([tcp[16], tcp[17]]);
    let mut set32 = |tcp: &mut [u8], at: usize, f: &dyn Fn(u32) -> u32| {
        let old = u32::from_be_bytes([tcp[at], tcp[at + 1], tcp[at + 2], tcp[at + 3]]);
        let new = f(old);
        tcp[at..at + 4].copy_from_slice(&new.to_be_bytes());
        let (o, n) = (checksum::sum32(old), checksum::sum32(new));
        // A field at an odd offset sums with its bytes swapped.
        let (o, n) = if at.is_multiple_of(2) {
            (o, n)
        } else {
            (o.swap_bytes(), n.swap_bytes())
        };
        c = checksum::update(c, o, n);
    };
    let off = t.offset;
    let shift = if from_client {
        set32(tcp, 8, &|a| a.wrapping_add(off));
        t.client_shift
    } else {
        set32(tcp, 4, &|s| s.wrapping_sub(off));
        t.backend_shift
    };
    if from_client {
        // SACK blocks acknowledge the backend's data.
        let hl = usize::from(tcp[12] >> 4) * 4;
        let mut i = 20;
        while i < hl.min(tcp.len()) {
            match tcp[i] {
                OPT_EOL => break,
                OPT_NOP => i += 1,
                kind => {
                    let Some(&len) = tcp.get(i + 1) else { break };
                    let len = usize::from(len);
                    if len < 2 || i + len > hl.min(tcp.len()) {
                        break;
                    }
                    if kind == OPT_SACK {
                        let mut b = i + 2;
                        while b + 4 <= i + len {
                            set32(tcp, b, &|v| v.wrapping_add(off));
                            b += 4;
                        }
                    }
                    i += len;
                }
            }
        }
    }
    if shift != 0 && tcp[13] & 0x02 == 0 {
        let old = u16::from_be_bytes([tcp[14], tcp[15]]);
        let new = if shift > 0 {
            (u32::from(old) << shift).min(0xffff) as u16
        } else {
            // Never a zero window from a non-zero one.
            (old >> -shift).max(u16::from(old != 0))
        };
        tcp[14..16].copy_from_slice(&new.to_be_bytes());
        c = checksum::update(c, old, new);
    }
    if full_csum {
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "tcp SRC:SPORT > DST:DPORT" (IPv6 addresses in brackets).
    fn key(s: &str) -> FlowKey {
        let w: Vec<&str> = s.split_whitespace().collect();
        let ep = |e: &str| -> (IpAddr, u16) {
            let (a, p) = e.rsplit_once(':').expect("port");
            let a = a.trim_start_matches('[').trim_end_matches(']');
            (a.parse().expect("addr"), p.parse().expect("port"))
        };
        let ((src, sport), (dst, dport)) = (ep(w[1]), ep(w[3]));
        FlowKey {
            src,
            dst,
            proto: 6,
            sport,
            dport,
        }
    }

    #[test]
    fn siphash_matches_the_reference_vector() {
        // The reference key 00..0f and the 8-byte message 00..07.
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        let m = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(siphash(k0, k1, &[m]), 0x93f5_f579_9a93_2462);
    }

    #[test]
    fn cookies_round_trip_with_their_options() {
        let secret = CookieSecret::new(*b"0123456789abcdef");
        let now = 1000 * NANOS_PER_SEC;
        for k in [
            "tcp 198.18.0.2:40000 > 198.18.0.10:80",
            "tcp [2001:db8:18::2]:40000 > [2001:db8:18::10]:443",
        ] {
            let k = key(k);
            let table = mss_table(&k);
            for (i, &mss) in table.iter().enumerate() {
                for wscale in [None, Some(0), Some(7), Some(14)] {
                    for sack in [false, true] {
                        for isn in [0, 1, 0x7fff_ffff, u32::MAX] {
                            let o = SynOptions { mss, wscale, sack };
                            let c = encode_cookie(&secret, &k, isn, cookie_count(now), o);
                            for later in [0, 1, 64, 128] {
                                let at = cookie_count(now + later * NANOS_PER_SEC);
                                assert_eq!(
                                    decode_cookie(&secret, &k, isn, c, at),
                                    Some(o),
                                    "{k} mss {i} {wscale:?} {sack} {isn} +{later}s"
                                );
                            }
                        }
                    }
                }
            }
            // An MSS between table values goes down; none at all is the
            // smallest.
            let o = SynOptions {
                mss: table[2] + 3,
                ..SynOptions::default()
            };
            let c = encode_cookie(&secret, &k, 5, 9, o);
            assert_eq!(
                decode_cookie(&secret, &k, 5, c, 9).map(|o| o.mss),
                Some(table[2])
            );
            let c = encode_cookie(&secret, &k, 5, 9, SynOptions::default());
            assert_eq!(
                decode_cookie(&secret, &k, 5, c, 9).map(|o| o.mss),
                Some(table[0])
            );
        }
    }

    #[test]
    fn wrong_or_expired_cookies_are_rejected() {
        let secret = CookieSecret::new([1; 16]);
        let k = key("tcp 198.18.0.2:40000 > 198.18.0.10:80");
        let o = SynOptions {
            mss: 1460,
            wscale: Some(7),
            sack: true,
        };
        let count = 1000;
        let c = encode_cookie(&secret, &k, 77, count, o);
        assert!(decode_cookie(&secret, &k, 77, c, count).is_some());
        // Too old: three periods on.
        assert_eq!(decode_cookie(&secret, &k, 77, c, count + 3), None);
        // From the future.
        assert_eq!(decode_cookie(&secret, &k, 77, c, count - 1), None);
        // Another tuple, another secret, a cookie far off.
        let other = key("tcp 198.18.0.3:40000 > 198.18.0.10:80");
        assert_eq!(decode_cookie(&secret, &other, 77, c, count), None);
        assert_eq!(decode_cookie(&secret, &k, 77 + (1 << 20), c, count), None);
        assert_eq!(
            decode_cookie(&CookieSecret::new([2; 16]), &k, 77, c, count),
            None
        );
        // Guessing: few of many random cookies pass (about 3 in 2^23).
        let mut x = 0x1234_5678u32;
        let mut passed = 0;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            passed += usize::from(decode_cookie(&secret, &k, 77, x, count).is_some());
        }
        assert!(passed <= 2, "{passed} random cookies passed");
    }

    #[test]
    fn syn_options_are_parsed_and_written() {
        // Linux's SYN: MSS, SACK permitted, timestamps, NOP, window scale.
        let linux = [
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        assert_eq!(
            parse_syn_options(&linux),
            SynOptions {
                mss: 1460,
                wscale: Some(7),
                sack: true
            }
        );
        assert_eq!(parse_syn_options(&[]), SynOptions::default());
        // Malformed: a length running past the end stops the walk.
        assert_eq!(parse_syn_options(&[2, 4, 0x05, 0xb4, 3, 9, 1]).mss, 1460);
        assert_eq!(parse_syn_options(&[2, 0, 1, 1]), SynOptions::default());
        let mut out = [0; 12];
        let n = write_syn_options(&mut out, 1460, Some(7), true);
        assert_eq!(n, 12);
        assert_eq!(
            parse_syn_options(&out[..n]),
            SynOptions {
                mss: 1460,
                wscale: Some(7),
                sack: true
            }
        );
        assert_eq!(write_syn_options(&mut out, 536, None, false), 4);
    }

    #[test]
    fn built_segments_carry_valid_checksums() {
        for (src, dst) in [
            ("198.18.0.10", "198.18.0.2"),
            ("2001:db8::1", "2001:db8::2"),
        ] {
            let seg = Segment {
                src: src.parse().expect("addr"),
                dst: dst.parse().expect("addr"),
                sport: 80,
                dport: 40000,
                seq: 0xdead_beef,
                ack: 1001,
                flags: 0x12,
                window: 65535,
                syn_options: Some((1460, Some(7), true)),
            };
            let mut out = [0; SEGMENT_MAX];
            let n = build_segment(&seg, &mut out);
            let p = crate::packet::parse(&out[..n]).expect("valid frame");
            assert!(crate::packet::verify_l4_checksum(&out[..n], &p));
            assert_eq!((p.sport, p.dport, p.tcp_flags), (80, 40000, 0x12));
            let tcp = crate::packet::TcpPacket::new_checked(&out[p.l4_offset..n]).expect("tcp");
            assert_eq!((tcp.seq_number(), tcp.ack_number()), (0xdead_beef, 1001));
            assert_eq!(parse_syn_options(tcp.options()).wscale, Some(7));
        }
    }

    #[test]
    fn translation_moves_sequence_numbers_sack_blocks_and_windows() {
        let seg = |flags: u8, seq: u32, ack: u32, window: u16| Segment {
            src: "198.18.0.2".parse().expect("addr"),
            dst: "198.18.0.10".parse().expect("addr"),
            sport: 40000,
            dport: 80,
            seq,
            ack,
            flags,
            window,
            syn_options: None,
        };
        let t = Translation {
            offset: 0x1000_0000,
            backend_shift: -2,
            client_shift: 3,
        };
        // From the backend: seq down by the offset, the window rescaled.
        let mut out = [0; SEGMENT_MAX];
        let n = build_segment(&seg(0x10, 0x1000_0005, 77, 400), &mut out);
        translate(&mut out[34..n], false, t, true);
        let p = crate::packet::parse(&out[..n]).expect("valid");
        assert!(crate::packet::verify_l4_checksum(&out[..n], &p));
        let tcp = crate::packet::TcpPacket::new_checked(&out[34..n]).expect("tcp");
        assert_eq!(
            (tcp.seq_number(), tcp.ack_number(), tcp.window_len()),
            (5, 77, 100)
        );

        // From the client, with SACK blocks at odd offsets (NOP, SACK
        // with the block 1..9, NOP, NOP, EOL padding): ack and blocks up by
        // the offset, the window scaled up (capped).
        let opts = [1u8, 5, 10, 0, 0, 0, 1, 0, 0, 0, 9, 1, 1, 0, 0, 0];
        let mut frame2 = [0u8; 128];
        let m = build_segment(&seg(0x10, 3, 0xffff_fff0, 0x4000), &mut out);
        frame2[..m].copy_from_slice(&out[..m]);
        frame2[m..m + opts.len()].copy_from_slice(&opts);
        let total = m + opts.len();
        frame2[34 + 12] = (36 / 4) << 4;
        frame2[16..18].copy_from_slice(&((20 + 36) as u16).to_be_bytes());
        frame2[24..26].fill(0);
        let hc = checksum::checksum(&frame2[14..34]);
        frame2[24..26].copy_from_slice(&hc.to_be_bytes());
        frame2[34 + 16..34 + 18].fill(0);
        let ph = checksum::pseudo_header_v4(
            "198.18.0.2".parse().expect("addr"),
            "198.18.0.10".parse().expect("addr"),
            6,
            36,
        );
        let c = !checksum::sum_with(ph, &frame2[34..total]);
        frame2[34 + 16..34 + 18].copy_from_slice(&c.to_be_bytes());
        translate(&mut frame2[34..total], true, t, true);
        let p = crate::packet::parse(&frame2[..total]).expect("valid");
        assert!(crate::packet::verify_l4_checksum(&frame2[..total], &p));
        let tcp = crate::packet::TcpPacket::new_checked(&frame2[34..total]).expect("tcp");
        assert_eq!(tcp.ack_number(), 0x0fff_fff0);
        assert_eq!(tcp.window_len(), 0xffff);
        let o = tcp.options();
        let rd = |at: usize| u32::from_be_bytes([o[at], o[at + 1], o[at + 2], o[at + 3]]);
        assert_eq!((rd(3), rd(7)), (0x1000_0001, 0x1000_0009));
    }
}
