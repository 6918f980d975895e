//! The one error type of the packet layer.
//!
//! ```
//! use lb_core::packet::{parse, ParseError};
//!
//! let mut counters = [0u64; ParseError::COUNT];
//! if let Err(e) = parse(&[0u8; 10]) {
//!     counters[e as usize] += 1;
//!     assert_eq!(e.as_str(), "truncated_ethernet");
//! }
//! ```

use core::fmt;

macro_rules! parse_errors {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)*) => {
        /// Why a frame was rejected. `#[repr(u8)]` and dense from 0, so a
        /// counter array can be indexed with `err as usize` (see
        /// [`ParseError::COUNT`] and [`ParseError::ALL`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum ParseError {
            $($(#[doc = $doc])* $variant,)*
        }

        impl ParseError {
            /// Every variant, in discriminant order (`ALL[e as usize] == e`).
            pub const ALL: [ParseError; ParseError::COUNT] = [$(ParseError::$variant,)*];

            /// The number of variants.
            pub const COUNT: usize = [$($name,)*].len();

            /// A stable snake_case name, suitable as a metric label.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ParseError::$variant => $name,)*
                }
            }
        }
    };
}

parse_errors! {
    /// Shorter than an Ethernet II header (14 bytes).
    TruncatedEthernet => "truncated_ethernet",
    /// An 802.1Q tag is announced but the frame ends inside it.
    TruncatedVlan => "truncated_vlan",
    /// Shorter than an Ethernet/IPv4 ARP packet (28 bytes).
    TruncatedArp => "truncated_arp",
    /// ARP for another hardware or protocol type than Ethernet/IPv4.
    UnsupportedArp => "unsupported_arp",
    /// The frame is not an ARP frame (see [`crate::packet::parse_arp`]).
    NotArp => "not_arp",
    /// Shorter than the IPv4 header or than the IPv4 total length.
    TruncatedIpv4 => "truncated_ipv4",
    /// The version nibble of an IPv4 packet is not 4.
    BadIpv4Version => "bad_ipv4_version",
    /// IHL below 5.
    BadIpv4HeaderLength => "bad_ipv4_header_length",
    /// Total length smaller than the header length.
    BadIpv4TotalLength => "bad_ipv4_total_length",
    /// The IPv4 header checksum does not verify.
    BadIpv4Checksum => "bad_ipv4_checksum",
    /// Shorter than the IPv6 header or than header + payload length.
    TruncatedIpv6 => "truncated_ipv6",
    /// The version nibble of an IPv6 packet is not 6.
    BadIpv6Version => "bad_ipv6_version",
    /// An IPv6 extension header runs past the end of the packet.
    TruncatedIpv6ExtHeader => "truncated_ipv6_ext_header",
    /// More IPv6 extension headers than [`crate::packet::ipv6::MAX_EXT_HEADERS`].
    Ipv6ExtChainTooLong => "ipv6_ext_chain_too_long",
    /// Shorter than the 20-byte TCP header.
    TruncatedTcp => "truncated_tcp",
    /// TCP data offset below 5 or beyond the end of the segment.
    BadTcpDataOffset => "bad_tcp_data_offset",
    /// Shorter than the 8-byte UDP header.
    TruncatedUdp => "truncated_udp",
    /// UDP length field below 8 or beyond the end of the IP payload.
    BadUdpLength => "bad_udp_length",
    /// Shorter than the 8-byte ICMP header.
    TruncatedIcmp => "truncated_icmp",
    /// Shorter than the 8-byte ICMPv6 header (or than a neighbour
    /// discovery message's fixed part).
    TruncatedIcmpv6 => "truncated_icmpv6",
    /// A neighbour discovery option with length 0 or running past the end.
    BadNdOption => "bad_nd_option",
    /// Shorter than the GRE header its flags announce.
    TruncatedGre => "truncated_gre",
    /// The packet is not an ICMP/ICMPv6 error message.
    NotIcmpError => "not_icmp_error",
    /// The packet is not an ICMP/ICMPv6 echo request.
    NotEchoRequest => "not_echo_request",
    /// The packet embedded in an ICMP error is too short for its headers.
    TruncatedIcmpInner => "truncated_icmp_inner",
    /// The packet embedded in an ICMP error is not a valid IP header of
    /// the same family as the ICMP message.
    BadIcmpInner => "bad_icmp_inner",
    /// The operation needs an IPv4 or IPv6 packet.
    NotIp => "not_ip",
    /// A rewrite would change the address family of the packet.
    AddressFamilyMismatch => "address_family_mismatch",
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for ParseError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_dense_and_names_unique() {
        for (i, e) in ParseError::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i);
            assert_eq!(e.to_string(), e.as_str());
            assert!(e
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        }
        let mut names: Vec<_> = ParseError::ALL.iter().map(|e| e.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ParseError::COUNT);
    }
}
