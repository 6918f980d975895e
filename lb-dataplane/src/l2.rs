//! Enough L2/L3 to stand on a real link: answer ARP and neighbour
//! solicitations for our addresses, learn neighbours, ask for unknown next
//! hops, answer pings to our addresses.

use std::net::IpAddr;
use std::time::Instant;

use lb_core::packet::{self, MacAddr, Parsed};
use lb_core::pipeline::{LocalKind, Snapshot};

use crate::neigh::Neighbors;

/// A request for `target`'s Ethernet address: an ARP request, or a
/// neighbour solicitation to its solicited-node multicast group.
pub fn solicit(my_mac: [u8; 6], src: IpAddr, target: IpAddr) -> Vec<u8> {
    match (src, target) {
        (IpAddr::V4(s), IpAddr::V4(t)) => packet::build_arp_request(MacAddr(my_mac), s, t, None),
        (IpAddr::V6(s), IpAddr::V6(t)) => {
            packet::build_neighbor_solicitation(MacAddr(my_mac), s, t, None)
        }
        // Mixed families never reach here: callers pick a source of the
        // target's family; an empty frame is dropped by the sender.
        _ => Vec::new(),
    }
}

/// Handles a frame the pipeline left to the data plane itself. Learns
/// neighbours on `port`; returns the frame to send back out of the same
/// port, if any.
#[allow(clippy::too_many_arguments)]
pub fn answer(
    frame: &[u8],
    kind: LocalKind,
    p: &Parsed,
    port: u32,
    port_mac: [u8; 6],
    snap: &Snapshot,
    neigh: &Neighbors,
    now: Instant,
) -> Option<Vec<u8>> {
    match kind {
        LocalKind::Arp => {
            let arp = packet::parse_arp(frame).ok()?;
            let sender = IpAddr::V4(arp.sender_ip);
            // Learn from every ARP packet on the link (gratuitous ones too).
            neigh.learn(port, sender, arp.sender_mac.0, now);
            let target = IpAddr::V4(arp.target_ip);
            if arp.op == packet::ArpOp::Request && snap.is_own_address(target) {
                return Some(packet::build_arp_reply(&arp, MacAddr(port_mac), p.vlan));
            }
            None
        }
        LocalKind::Neighbor => {
            let icmp =
                packet::Icmpv6Packet::new_checked(frame.get(p.l4_offset..p.l3_end())?).ok()?;
            let IpAddr::V6(src) = p.src else { return None };
            match icmp.msg_type() {
                packet::Icmpv6Message::NeighborSolicit => {
                    let sender_mac = icmp.source_lladdr().ok().flatten();
                    if let Some(mac) = sender_mac {
                        if !src.is_unspecified() {
                            neigh.learn(port, p.src, mac.0, now);
                        }
                    }
                    let target = icmp.nd_target();
                    if !snap.is_own_address(IpAddr::V6(target)) {
                        return None;
                    }
                    let to_mac = sender_mac.unwrap_or(MacAddr(eth_src(frame)));
                    Some(packet::build_neighbor_advertisement(
                        MacAddr(port_mac),
                        target,
                        to_mac,
                        src,
                        true,
                        p.vlan,
                    ))
                }
                packet::Icmpv6Message::NeighborAdvert => {
                    let mac = icmp
                        .target_lladdr()
                        .ok()
                        .flatten()
                        .map_or_else(|| eth_src(frame), |m| m.0);
                    neigh.learn(port, IpAddr::V6(icmp.nd_target()), mac, now);
                    None
                }
                _ => None,
            }
        }
        LocalKind::EchoRequest => packet::build_echo_reply(frame, p, MacAddr(port_mac)).ok(),
        LocalKind::ToSelf => None,
    }
}

fn eth_src(frame: &[u8]) -> [u8; 6] {
    let mut m = [0u8; 6];
    if let Some(s) = frame.get(6..12) {
        m.copy_from_slice(s);
    }
    m
}

/// Sets the Ethernet addresses of a frame about to leave.
pub fn set_macs(frame: &mut [u8], dst: [u8; 6], src: [u8; 6]) {
    if frame.len() >= 12 {
        frame[..6].copy_from_slice(&dst);
        frame[6..12].copy_from_slice(&src);
    }
}
