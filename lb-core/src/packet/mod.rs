//! Packet parsing, checksums, NAT rewrites and frame builders.
//!
//! ```
//! use lb_core::packet::{self, FrameSpec, L4Csum};
//! use lb_core::flow::FlowKey;
//!
//! let spec = FrameSpec {
//!     src: "192.168.1.250".parse().unwrap(),
//!     dst: "192.168.1.11".parse().unwrap(),
//!     proto: 6,
//!     sport: 1025,
//!     dport: 80,
//!     ..FrameSpec::default()
//! };
//! let mut frame = packet::build_frame(&spec);
//! let p = packet::parse(&frame).unwrap();
//! assert_eq!(packet::format_flow(&p), "tcp 192.168.1.250:1025 > 192.168.1.11:80");
//!
//! // DNAT to a backend, updating the checksums incrementally.
//! let new = FlowKey { dst: "10.0.0.7".parse().unwrap(), dport: 8080, ..p.flow_key().unwrap() };
//! packet::rewrite(&mut frame, &p, &new, L4Csum::Full).unwrap();
//! let q = packet::parse(&frame).unwrap();
//! assert_eq!(q.flow_key(), Some(new));
//! assert!(packet::verify_l4_checksum(&frame, &q));
//! ```
//!
//! Layout, after smoltcp's `wire` module:
//!
//! - zero-copy views over a buffer, one per header ([`EthernetFrame`],
//!   [`ArpPacket`], [`Ipv4Packet`], [`Ipv6Packet`], [`TcpPacket`],
//!   [`UdpPacket`], [`Icmpv4Packet`], [`Icmpv6Packet`], [`GrePacket`]):
//!   `new_unchecked` (accessors may panic on a short buffer, never UB) and
//!   `new_checked` (validates lengths; the one to use on untrusted input),
//!   getters for `T: AsRef<[u8]>`, setters for `T: AsMut<[u8]>`;
//! - [`checksum`]: RFC 1071 sums, pseudo-headers, RFC 1624 updates;
//! - [`parse()`] / [`Parsed`]: the one-shot, allocation-free data-path parser,
//!   with [`parse_icmp_inner`], [`verify_l4_checksum`], [`format_flow`];
//! - [`rewrite()`] / [`decrement_ttl`]: in-place NAT;
//! - builders ([`build_frame`], [`build_icmp_error`], ARP, neighbour
//!   discovery, echo replies), which allocate.
//!
//! Every malformed input yields a [`ParseError`], never a panic.

pub mod arp;
pub mod build;
pub mod checksum;
pub mod error;
pub mod ethernet;
pub mod gre;
pub mod icmp;
pub mod icmpv6;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
pub mod parse;
pub mod rewrite;
pub mod tcp;
pub mod udp;

#[cfg(test)]
mod tests;

pub use arp::{ArpOp, ArpPacket, ArpRepr, PACKET_LEN as ARP_PACKET_LEN};
pub use build::{
    add_ipv4_options, add_ipv6_ext_header, build_arp, build_arp_reply, build_arp_request,
    build_echo_reply, build_frame, build_frame_into, build_icmp_error, build_icmp_error_into,
    build_neighbor_advertisement, build_neighbor_solicitation, build_tcp_reset, fragment_frame,
    solicited_node, FrameSpec,
};
pub use error::ParseError;
pub use ethernet::{is_vlan_tag, tagging, EtherType, EthernetFrame, MacAddr, Tagging};
pub use gre::GrePacket;
pub use icmp::{Icmpv4Message, Icmpv4Packet};
pub use icmpv6::{
    Icmpv6Message, Icmpv6Packet, NA_FLAG_OVERRIDE, NA_FLAG_ROUTER, NA_FLAG_SOLICITED,
    ND_OPT_SOURCE_LLADDR, ND_OPT_TARGET_LLADDR,
};
pub use ip::{protocol_name, IpProtocol};
pub use ipv4::Ipv4Packet;
pub use ipv6::{Ipv6FragHeader, Ipv6Packet};
pub use parse::{
    complete_l4_checksum, format_flow, is_source_routed, parse, parse_arp, parse_general,
    parse_icmp_inner, parse_into, verify_l4_checksum, write_flow, Kind, Parsed,
};
pub use rewrite::{decrement_ttl, rewrite, L4Csum};
pub use tcp::{TcpFlags, TcpPacket};
pub use udp::UdpPacket;
