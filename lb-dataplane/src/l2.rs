//! Enough L2/L3 to stand on a real link: answer ARP and neighbour
//! solicitations for our addresses, learn neighbours, ask for unknown next
//! hops, answer pings to our addresses.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use lb_core::model::Config;
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
/// neighbours on `port` ([`heard`]); returns the frame to send back out of the same
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
            let claim = heard(neigh, snap, port, port_mac, sender, arp.sender_mac.0, now);
            let target = IpAddr::V4(arp.target_ip);
            if arp.op == packet::ArpOp::Request && snap.is_own_address(target) && !claim {
                return Some(packet::build_arp_reply(&arp, MacAddr(port_mac), p.vlan));
            }
            None
        }
        LocalKind::Neighbor => {
            let icmp =
                packet::Icmpv6Packet::new_checked(frame.get(p.l4_offset..p.l3_end())?).ok()?;
            let IpAddr::V6(src) = p.src else { return None };
            let nd = matches!(
                icmp.msg_type(),
                packet::Icmpv6Message::NeighborSolicit | packet::Icmpv6Message::NeighborAdvert
            );
            if nd && p.ttl != 255 {
                // RFC 4861: neighbour discovery never crosses a router; a
                // lower hop limit comes from off the link.
                neigh.counters.off_link.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            match icmp.msg_type() {
                packet::Icmpv6Message::NeighborSolicit => {
                    let sender_mac = icmp.source_lladdr().ok().flatten();
                    let mut claim = false;
                    if let Some(mac) = sender_mac {
                        if !src.is_unspecified() {
                            claim = heard(neigh, snap, port, port_mac, p.src, mac.0, now);
                        }
                    }
                    let target = icmp.nd_target();
                    if claim || !snap.is_own_address(IpAddr::V6(target)) {
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
                    let target = IpAddr::V6(icmp.nd_target());
                    // RFC 4861 7.2.5: without the override flag an
                    // advertisement does not replace a known address.
                    let keeps = icmp.na_flags() & packet::NA_FLAG_OVERRIDE == 0
                        && neigh.resolved(port, target).is_some_and(|m| m != mac);
                    if !keeps {
                        heard(neigh, snap, port, port_mac, target, mac, now);
                    }
                    None
                }
                _ => None,
            }
        }
        LocalKind::EchoRequest => packet::build_echo_reply(frame, p, MacAddr(port_mac)).ok(),
        LocalKind::ToSelf => None,
    }
}

/// A neighbour said "`addr` is at `mac`" on `port`. Learned only from a
/// sender on the port's links, and only for an address with an entry
/// (being resolved or resolved); a claim for one of our own addresses is
/// refused, counted and logged. Returns whether it was such a claim.
pub fn heard(
    neigh: &Neighbors,
    snap: &Snapshot,
    port: u32,
    port_mac: [u8; 6],
    addr: IpAddr,
    mac: [u8; 6],
    now: Instant,
) -> bool {
    if addr.is_unspecified() {
        // An ARP probe / duplicate address detection: no mapping claimed.
        return false;
    }
    if snap.is_own_address(addr) {
        // Our own frame read back is no claim.
        if mac != port_mac {
            neigh.refuse_claim(port, addr, mac, now);
            return true;
        }
        return false;
    }
    if !on_link(&snap.cfg, port, addr) {
        neigh.counters.off_link.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    neigh.learn(port, addr, mac, now);
    false
}

/// Whether `addr` is on a link of `port`: inside the prefix of one of its
/// addresses or the destination of a route through it without a next hop
/// (and, for IPv6, link-local).
pub fn on_link(cfg: &Config, port: u32, addr: IpAddr) -> bool {
    if let IpAddr::V6(a) = addr {
        if a.is_unicast_link_local() {
            return true;
        }
    }
    let Ok(pi) = usize::try_from(port) else {
        return false;
    };
    let Some(p) = cfg.ports.get(pi) else {
        return false;
    };
    p.addresses.iter().any(|n| n.contains(&addr))
        || cfg
            .routes
            .iter()
            .any(|r| r.port == pi && r.via.is_none() && r.destination.contains(&addr))
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

/// The VLAN of port `port`, if it has one.
pub fn port_vlan(snap: &lb_core::pipeline::Snapshot, port: u32) -> Option<u16> {
    snap.cfg.ports.get(port as usize).and_then(|p| p.vlan)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use lb_core::packet::{ArpOp, ArpRepr};

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

    const PORT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const EVIL: [u8; 6] = [2, 0, 0, 0, 0, 0x66];

    fn snap() -> Snapshot {
        let cfg = lb_config::parse_str(
            r#"
[[port]]
name = "ext"
interface = "lb-ext"
addresses = ["198.18.0.1/24", "2001:db8:18::1/64"]
[[port]]
name = "int"
interface = "lb-int"
addresses = ["198.19.1.1/24", "2001:db8:19:1::1/64"]
[[route]]
destination = "198.18.5.0/24"
port = "ext"
[[load_balancer]]
id = "alb"
vips = ["198.18.0.10", "2001:db8:18::10"]
local_addresses = ["198.19.1.250", "2001:db8:19:1::250"]
"#,
            "t.toml",
        )
        .expect("valid");
        Snapshot::compile(cfg, 1)
    }

    fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// An ARP frame "`sender_ip` is at `sender_mac`" arriving on port 0.
    fn arp(
        n: &Neighbors,
        s: &Snapshot,
        op: ArpOp,
        sender_ip: &str,
        sender_mac: [u8; 6],
        target_ip: &str,
    ) -> Option<Vec<u8>> {
        let repr = ArpRepr {
            op,
            sender_mac: MacAddr(sender_mac),
            sender_ip: sender_ip.parse().expect("v4"),
            target_mac: MacAddr::ZERO,
            target_ip: target_ip.parse().expect("v4"),
        };
        let frame = packet::build_arp(&repr, MacAddr::BROADCAST, None);
        receive(n, s, LocalKind::Arp, &frame)
    }

    /// `frame` arriving on port 0: the answer, if any.
    fn receive(n: &Neighbors, s: &Snapshot, kind: LocalKind, frame: &[u8]) -> Option<Vec<u8>> {
        let p = packet::parse(frame).expect("parses");
        answer(frame, kind, &p, 0, PORT_MAC, s, n, Instant::now())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn arp_claims_for_our_addresses_are_refused() {
        let (n, s) = (Neighbors::new(&[64, 64]), snap());
        let now = Instant::now();
        // Gratuitous ARP for the VIP, a port address, a local address.
        for addr in ["198.18.0.10", "198.18.0.1", "198.19.1.250"] {
            assert!(n.resolving(0, ip(addr), now));
            assert!(arp(&n, &s, ArpOp::Request, addr, EVIL, addr).is_none());
            assert!(arp(&n, &s, ArpOp::Reply, addr, EVIL, "198.18.0.2").is_none());
            assert!(n.lookup(0, ip(addr), Instant::now()).is_none(), "{addr}");
        }
        assert_eq!(count(&n.counters.own_address_claims), 6);
        // Our own request read back is no claim.
        arp(&n, &s, ArpOp::Request, "198.18.0.1", PORT_MAC, "198.18.0.2");
        assert_eq!(count(&n.counters.own_address_claims), 6);
    }

    #[test]
    fn arp_learns_only_on_link_senders_being_resolved() {
        let (n, s) = (Neighbors::new(&[64, 64]), snap());
        let now = Instant::now();
        // A request for our address from an unknown neighbour: answered,
        // not learned.
        let reply = arp(&n, &s, ArpOp::Request, "198.18.0.2", EVIL, "198.18.0.10");
        assert!(reply.is_some());
        assert!(n.lookup(0, ip("198.18.0.2"), Instant::now()).is_none());
        assert_eq!(count(&n.counters.unsolicited), 1);
        // Asked for: the answer is learned.
        assert!(n.resolving(0, ip("198.18.0.2"), now));
        arp(
            &n,
            &s,
            ArpOp::Reply,
            "198.18.0.2",
            [2, 0, 0, 0, 0, 2],
            "198.18.0.1",
        );
        assert_eq!(
            n.lookup(0, ip("198.18.0.2"), Instant::now()).map(|e| e.mac),
            Some([2, 0, 0, 0, 0, 2])
        );
        // On-link through a route without a next hop.
        assert!(n.resolving(0, ip("198.18.5.7"), now));
        arp(
            &n,
            &s,
            ArpOp::Reply,
            "198.18.5.7",
            [2, 0, 0, 0, 0, 3],
            "198.18.0.1",
        );
        assert!(n.lookup(0, ip("198.18.5.7"), Instant::now()).is_some());
        // Off the port's links: never learned, even when asked for (the
        // backend subnet is on the other port).
        for addr in ["198.19.1.11", "198.20.0.5"] {
            assert!(n.resolving(0, ip(addr), now));
            arp(&n, &s, ArpOp::Reply, addr, EVIL, "198.18.0.1");
            assert!(n.lookup(0, ip(addr), Instant::now()).is_none(), "{addr}");
        }
        assert_eq!(count(&n.counters.off_link), 2);
    }

    /// A neighbour advertisement for `target` from `mac` arriving on port 0.
    fn na(n: &Neighbors, s: &Snapshot, target: &str, mac: [u8; 6], hop_limit: u8, o: bool) {
        let target: Ipv6Addr = target.parse().expect("v6");
        let mut frame = packet::build_neighbor_advertisement(
            MacAddr(mac),
            target,
            MacAddr(PORT_MAC),
            "2001:db8:18::1".parse().expect("v6"),
            false,
            None,
        );
        frame[14 + 7] = hop_limit;
        if !o {
            // The flags byte; the checksum is not verified here.
            frame[14 + 40 + 4] &= !packet::NA_FLAG_OVERRIDE;
        }
        receive(n, s, LocalKind::Neighbor, &frame);
    }

    /// A neighbour solicitation for `target` from `src` / `mac`, port 0.
    fn ns(n: &Neighbors, s: &Snapshot, src: &str, mac: [u8; 6], target: &str) -> Option<Vec<u8>> {
        let frame = packet::build_neighbor_solicitation(
            MacAddr(mac),
            src.parse().expect("v6"),
            target.parse().expect("v6"),
            None,
        );
        receive(n, s, LocalKind::Neighbor, &frame)
    }

    #[test]
    fn neighbour_discovery_follows_the_same_rules() {
        let (n, s) = (Neighbors::new(&[64, 64]), snap());
        let now = Instant::now();
        // Unsolicited advertisements for the VIP and the port address.
        for addr in ["2001:db8:18::10", "2001:db8:18::1"] {
            assert!(n.resolving(0, ip(addr), now));
            na(&n, &s, addr, EVIL, 255, true);
            assert!(n.lookup(0, ip(addr), Instant::now()).is_none());
        }
        assert_eq!(count(&n.counters.own_address_claims), 2);
        // A solicitation from the VIP's address: a claim, not answered.
        assert!(ns(&n, &s, "2001:db8:18::10", EVIL, "2001:db8:18::1").is_none());
        assert_eq!(count(&n.counters.own_address_claims), 3);
        // An advertisement nobody asked for is not learned.
        let c = "2001:db8:18::2";
        na(&n, &s, c, [2, 0, 0, 0, 0, 2], 255, true);
        assert!(n.lookup(0, ip(c), Instant::now()).is_none());
        assert_eq!(count(&n.counters.unsolicited), 1);
        // Nor one from off the link (hop limit below 255, or off-prefix).
        assert!(n.resolving(0, ip(c), now));
        na(&n, &s, c, [2, 0, 0, 0, 0, 2], 64, true);
        assert!(n.lookup(0, ip(c), Instant::now()).is_none());
        let far = "2001:db8:99::2";
        assert!(n.resolving(0, ip(far), now));
        na(&n, &s, far, [2, 0, 0, 0, 0, 2], 255, true);
        assert!(n.lookup(0, ip(far), Instant::now()).is_none());
        assert_eq!(count(&n.counters.off_link), 2);
        // Asked for and on the link: learned.
        na(&n, &s, c, [2, 0, 0, 0, 0, 2], 255, true);
        assert_eq!(
            n.lookup(0, ip(c), Instant::now()).map(|e| e.mac),
            Some([2, 0, 0, 0, 0, 2])
        );
        // Without the override flag a known address stays.
        na(&n, &s, c, [2, 0, 0, 0, 0, 3], 255, false);
        assert_eq!(
            n.lookup(0, ip(c), Instant::now()).map(|e| e.mac),
            Some([2, 0, 0, 0, 0, 2])
        );
        // A solicitation for our address: answered; its source link-layer
        // address updates an entry that exists, creates none.
        assert!(ns(&n, &s, c, [2, 0, 0, 0, 0, 4], "2001:db8:18::10").is_some());
        assert_eq!(
            n.lookup(0, ip(c), Instant::now()).map(|e| e.mac),
            Some([2, 0, 0, 0, 0, 4])
        );
        assert!(ns(
            &n,
            &s,
            "2001:db8:18::5",
            [2, 0, 0, 0, 0, 5],
            "2001:db8:18::10"
        )
        .is_some());
        assert!(n.lookup(0, ip("2001:db8:18::5"), Instant::now()).is_none());
    }
}
