//! Enough L2/L3 to stand on a real link: answer ARP and neighbour
//! solicitations for our addresses, learn neighbours, ask for unknown next
//! hops, answer pings to our addresses.

use std::net::IpAddr;
use std::time::Instant;

use lb_core::packet::{self, is_vlan_tag, MacAddr, Parsed, Tagging};
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

fn be16(frame: &[u8], at: usize) -> Option<u16> {
    frame
        .get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// Whether `frame` already carries exactly the tagging of a port with
/// VLAN `vlan` (one 802.1Q tag of that VLAN, priority 0; or none).
fn tagged_as(frame: &[u8], vlan: Option<u16>) -> bool {
    match (vlan, packet::tagging(frame)) {
        (None, Some(Tagging::Untagged)) => true,
        (Some(vid), Some(Tagging::Dot1q(tci))) => tci == vid,
        // Too short for a header: nothing to retag (the sender drops it).
        (_, None) => frame.len() < 14,
        _ => false,
    }
}

/// Where the tags of `frame` end (the offset of its EtherType), at most
/// a few tags deep.
fn tags_end(frame: &[u8]) -> usize {
    let mut at = 12;
    for _ in 0..4 {
        match be16(frame, at) {
            Some(et) if is_vlan_tag(et) => at += 4,
            _ => break,
        }
    }
    at.min(frame.len())
}

/// Writes `frame` as a port with VLAN `vlan` sends it into `out`: every
/// tag it arrived with removed, the port's own 802.1Q tag (priority 0)
/// added. Nothing of an ingress tag reaches another link.
fn retag_into(frame: &[u8], vlan: Option<u16>, out: &mut Vec<u8>) {
    out.clear();
    let Some(addrs) = frame.get(..12) else {
        out.extend_from_slice(frame);
        return;
    };
    out.extend_from_slice(addrs);
    if let Some(vid) = vlan {
        out.extend_from_slice(&0x8100u16.to_be_bytes());
        out.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    out.extend_from_slice(&frame[tags_end(frame)..]);
}

/// `frame` as it must leave a port with VLAN `vlan`: itself when its
/// tagging already fits (the common case, no copy), otherwise rebuilt in
/// `scratch` (a tag added, removed or replaced changes the length).
pub fn for_port<'a>(frame: &'a [u8], vlan: Option<u16>, scratch: &'a mut Vec<u8>) -> &'a [u8] {
    if tagged_as(frame, vlan) {
        return frame;
    }
    retag_into(frame, vlan, scratch);
    scratch
}

/// [`for_port`] for a frame the caller owns: retagged in place.
pub fn set_vlan(frame: &mut Vec<u8>, vlan: Option<u16>) {
    if !tagged_as(frame, vlan) {
        let mut out = Vec::with_capacity(frame.len() + 4);
        retag_into(frame, vlan, &mut out);
        *frame = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tags: &[(u16, u16)]) -> Vec<u8> {
        let mut f = vec![0xaa; 6];
        f.extend_from_slice(&[0xbb; 6]);
        for (tpid, tci) in tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0x00]);
        f
    }

    #[test]
    fn frames_leave_with_the_egress_ports_tagging_only() {
        let mut scratch = Vec::new();
        let plain = frame(&[]);
        // Untagged to an untagged port: the frame itself, no copy.
        let out = for_port(&plain, None, &mut scratch);
        assert!(std::ptr::eq(out, plain.as_slice()));
        // Tagged 100 (priority 3) to an untagged port: the tag is gone.
        assert_eq!(
            for_port(&frame(&[(0x8100, 0x6064)]), None, &mut scratch),
            plain
        );
        // QinQ to an untagged port: both tags go.
        let qinq = frame(&[(0x88a8, 5), (0x8100, 100)]);
        assert_eq!(for_port(&qinq, None, &mut scratch), plain);
        // Untagged to VLAN 7: tagged 7.
        let seven = frame(&[(0x8100, 7)]);
        assert_eq!(for_port(&plain, Some(7), &mut scratch), seven);
        // Tagged 100 to VLAN 7: retagged, the priority not carried over.
        assert_eq!(
            for_port(&frame(&[(0x8100, 0x6064)]), Some(7), &mut scratch),
            seven
        );
        // Already right: itself.
        let out = for_port(&seven, Some(7), &mut scratch);
        assert!(std::ptr::eq(out, seven.as_slice()));
        let mut owned = plain.clone();
        set_vlan(&mut owned, Some(7));
        assert_eq!(owned, seven);
        set_vlan(&mut owned, None);
        assert_eq!(owned, plain);
        // Too short to have an EtherType: left as it is.
        assert_eq!(for_port(&[1, 2, 3], Some(7), &mut scratch), [1, 2, 3]);
    }
}
