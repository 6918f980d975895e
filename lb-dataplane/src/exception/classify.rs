//! Which frames go up to the kernel: the exception path's one rule.
//!
//! Only frames that arrived on a port with a `tap` and that the pipeline
//! left to the data plane itself (`Verdict::Local`) are looked at; a
//! frame the data plane forwards, drops or serves as a listener never
//! reaches here. Of those, up go:
//!
//! - **ARP replies** whose target address is an IPv4 address of the port:
//!   a copy (the data plane learns from them too). The kernel resolves its
//!   next hops with them. ARP requests stay: the data plane answers for the
//!   port's addresses with the port's MAC address, which is the TAP's.
//! - **Neighbour advertisements** (hop limit 255) to an IPv6 address of the
//!   port or to the TAP's link-local address: a copy. **Neighbour
//!   solicitations** for the TAP's link-local address (the data plane does
//!   not answer for it): to the kernel only. Other neighbour discovery
//!   (router solicitations and advertisements, redirects) stays.
//! - **Any other packet to an address of the port** (not a fragment) that
//!   no session, listener or local address claims: TCP (BGP's 179, SSH),
//!   UDP (BFD's 3784/4784), ICMP other than echo requests (echo replies,
//!   errors), other protocols. Except the health checker's: TCP or UDP from
//!   a server it probes from this port's address, to a probe port
//!   ([`crate::health::PROBE_PORTS`]), stays with it; an ICMP error then
//!   goes to both (the kernel ignores errors for sockets it lacks).
//!
//! Not up: echo requests (answered by the data plane), anything to a VIP,
//! a load balancer's local address or another port's address, broadcast
//! and multicast, IP fragments.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;
use lb_core::packet::{self, ArpOp, ArpPacket, ArpRepr, Icmpv6Message, IpProtocol, Parsed};
use lb_core::pipeline::LocalKind;

/// What the exception path does with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Up {
    /// Not for the kernel: the data plane handles it as it always does.
    No,
    /// For the kernel only.
    Kernel,
    /// A copy for the kernel, and the data plane handles it as well.
    Copy,
}

/// What the rule needs to know of the port a frame arrived on.
#[derive(Debug, Clone, Copy)]
pub struct PortFacts<'a> {
    /// The port's addresses (`[[port]] addresses`).
    pub addresses: &'a [IpNet],
    /// The TAP's IPv6 link-local address (when the port has IPv6).
    pub link_local: Option<Ipv6Addr>,
    /// The servers the health checker probes from an address of this
    /// port, sorted.
    pub probed: &'a [IpAddr],
}

impl PortFacts<'_> {
    fn is_port_address(&self, a: IpAddr) -> bool {
        self.addresses.iter().any(|n| n.addr() == a)
    }

    /// A port address or the TAP's link-local address.
    fn is_kernel_v6(&self, a: IpAddr) -> bool {
        self.is_port_address(a) || matches!(a, IpAddr::V6(v6) if Some(v6) == self.link_local)
    }
}

/// Applies the rule (see the module documentation) to `frame`, parsed as
/// `p`, which the pipeline left to the data plane as `kind`.
pub fn classify(frame: &[u8], p: &Parsed, kind: LocalKind, port: &PortFacts<'_>) -> Up {
    match kind {
        LocalKind::Arp => {
            let Some(l3) = frame.get(p.l3_offset..) else {
                return Up::No;
            };
            let Ok(arp) = ArpPacket::new_checked(l3).and_then(|a| ArpRepr::parse(&a)) else {
                return Up::No;
            };
            if arp.op == ArpOp::Reply && port.is_port_address(IpAddr::V4(arp.target_ip)) {
                Up::Copy
            } else {
                Up::No
            }
        }
        LocalKind::Neighbor => {
            if p.ttl != 255 {
                return Up::No;
            }
            let Some(icmp) = frame
                .get(p.l4_offset..p.l3_end())
                .and_then(|b| packet::Icmpv6Packet::new_checked(b).ok())
            else {
                return Up::No;
            };
            match icmp.msg_type() {
                Icmpv6Message::NeighborAdvert if port.is_kernel_v6(p.dst) => Up::Copy,
                Icmpv6Message::NeighborSolicit if Some(icmp.nd_target()) == port.link_local => {
                    Up::Kernel
                }
                _ => Up::No,
            }
        }
        LocalKind::EchoRequest => Up::No,
        LocalKind::ToSelf => {
            if !port.is_port_address(p.dst) || p.is_fragment {
                return Up::No;
            }
            match p.proto {
                IpProtocol::TCP | IpProtocol::UDP => {
                    let probe_reply = crate::health::PROBE_PORTS.contains(&p.dport)
                        && port.probed.binary_search(&p.src).is_ok();
                    if probe_reply {
                        Up::No
                    } else {
                        Up::Kernel
                    }
                }
                _ if p.is_icmp_error() && !port.probed.is_empty() => Up::Copy,
                _ => Up::Kernel,
            }
        }
    }
}

/// The IPv6 link-local address the kernel would derive from `mac`
/// (modified EUI-64, RFC 4291 appendix A): the TAP is given this one.
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    let [a, b, c, d, e, f] = mac;
    let w = |hi: u8, lo: u8| (u16::from(hi) << 8) | u16::from(lo);
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        w(a ^ 0x02, b),
        w(c, 0xff),
        w(0xfe, d),
        w(e, f),
    )
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use lb_core::packet::{FrameSpec, MacAddr};

    use super::*;

    const PORT_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x01];
    const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x02];

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse::<Ipv4Addr>().expect("v4"))
    }

    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse::<Ipv6Addr>().expect("v6"))
    }

    fn addresses() -> Vec<IpNet> {
        vec![
            "198.18.10.11/24".parse().expect("net"),
            "2001:db8:10::11/64".parse().expect("net"),
        ]
    }

    fn frame(src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        packet::build_frame(&FrameSpec {
            src_mac: MacAddr(PEER_MAC),
            dst_mac: MacAddr(PORT_MAC),
            src,
            dst,
            proto,
            sport,
            dport,
            ..FrameSpec::default()
        })
    }

    /// An ICMP port unreachable from `src` to `dst`.
    fn port_unreachable(src: IpAddr, dst: IpAddr) -> Vec<u8> {
        packet::build_frame(&FrameSpec {
            src,
            dst,
            proto: IpProtocol::ICMP,
            icmp: Some((3, 3)),
            payload: vec![0; 28],
            ..FrameSpec::default()
        })
    }

    fn up(frame: &[u8], kind: LocalKind, probed: &[IpAddr]) -> Up {
        let addrs = addresses();
        let facts = PortFacts {
            addresses: &addrs,
            link_local: Some(link_local(PORT_MAC)),
            probed,
        };
        let p = packet::parse(frame).expect("parses");
        classify(frame, &p, kind, &facts)
    }

    #[test]
    fn control_traffic_to_the_port_address_goes_up() {
        let (peer, me) = (v4("198.18.10.1"), v4("198.18.10.11"));
        let (peer6, me6) = (v6("2001:db8:10::1"), v6("2001:db8:10::11"));
        for (src, dst) in [(peer, me), (peer6, me6)] {
            // BGP both ways (the peer's connection and the reply to ours).
            let bgp = frame(src, dst, IpProtocol::TCP, 40000, 179);
            assert_eq!(up(&bgp, LocalKind::ToSelf, &[]), Up::Kernel);
            let bgp_reply = frame(src, dst, IpProtocol::TCP, 179, 61500);
            assert_eq!(up(&bgp_reply, LocalKind::ToSelf, &[]), Up::Kernel);
            // BFD single hop and multihop.
            for port in [3784, 4784] {
                let bfd = frame(src, dst, IpProtocol::UDP, 49152, port);
                assert_eq!(up(&bfd, LocalKind::ToSelf, &[]), Up::Kernel);
            }
            // Another protocol (OSPF).
            let ospf = frame(src, dst, 89, 0, 0);
            assert_eq!(up(&ospf, LocalKind::ToSelf, &[]), Up::Kernel);
        }
        // An echo reply (the kernel pinged) and an ICMP error.
        let mut reply = frame(peer, me, IpProtocol::ICMP, 7, 1);
        let p = packet::parse(&reply).expect("parses");
        reply[p.l4_offset] = 0;
        assert_eq!(up(&reply, LocalKind::ToSelf, &[]), Up::Kernel);
        let unreach = port_unreachable(peer, me);
        assert_eq!(up(&unreach, LocalKind::ToSelf, &[]), Up::Kernel);
    }

    #[test]
    fn what_the_data_plane_serves_stays() {
        let (peer, me) = (v4("198.18.10.1"), v4("198.18.10.11"));
        // Echo requests are answered by the data plane.
        let ping = frame(peer, me, IpProtocol::ICMP, 7, 1);
        assert_eq!(up(&ping, LocalKind::EchoRequest, &[]), Up::No);
        // Not the port's address: a local address, a VIP, another port's.
        for dst in ["198.18.10.250", "198.18.20.10", "198.19.2.11"] {
            let f = frame(peer, v4(dst), IpProtocol::TCP, 40000, 179);
            assert_eq!(up(&f, LocalKind::ToSelf, &[]), Up::No, "{dst}");
        }
        // Health-check replies from a probed server to a probe port.
        let probed = [peer];
        let hc = frame(peer, me, IpProtocol::TCP, 80, 61500);
        assert_eq!(up(&hc, LocalKind::ToSelf, &probed), Up::No);
        // ... but the same server to a port outside the probe range, or
        // another server to a probe port, is the kernel's.
        let other = frame(peer, me, IpProtocol::TCP, 80, 40000);
        assert_eq!(up(&other, LocalKind::ToSelf, &probed), Up::Kernel);
        let stranger = frame(v4("198.18.10.2"), me, IpProtocol::TCP, 80, 61500);
        assert_eq!(up(&stranger, LocalKind::ToSelf, &probed), Up::Kernel);
        // An ICMP error while probes go out from the port: to both.
        let unreach = port_unreachable(peer, me);
        assert_eq!(up(&unreach, LocalKind::ToSelf, &probed), Up::Copy);
        // A fragment.
        let mut frag = frame(peer, me, IpProtocol::UDP, 49152, 3784);
        let p = packet::parse(&frag).expect("parses");
        let h = p.l3_offset;
        frag[h + 6] = 0x20; // more fragments
        frag[h + 10..h + 12].copy_from_slice(&[0, 0]);
        let c = packet::checksum::checksum(&frag[h..h + 20]);
        frag[h + 10..h + 12].copy_from_slice(&c.to_be_bytes());
        let p = packet::parse(&frag).expect("parses");
        assert!(p.is_fragment);
        assert_eq!(up(&frag, LocalKind::ToSelf, &[]), Up::No);
    }

    #[test]
    fn arp_replies_for_the_port_go_up_as_copies() {
        let me = Ipv4Addr::new(198, 18, 10, 11);
        let peer = Ipv4Addr::new(198, 18, 10, 1);
        // The kernel asked "who has .1?": the answer is for .11.
        let request = ArpRepr {
            op: ArpOp::Request,
            sender_mac: MacAddr(PORT_MAC),
            sender_ip: me,
            target_mac: MacAddr::ZERO,
            target_ip: peer,
        };
        let reply = packet::build_arp_reply(&request, MacAddr(PEER_MAC), None);
        assert_eq!(up(&reply, LocalKind::Arp, &[]), Up::Copy);
        let tagged = packet::build_arp_reply(&request, MacAddr(PEER_MAC), Some(100));
        assert_eq!(up(&tagged, LocalKind::Arp, &[]), Up::Copy);
        // Requests are the data plane's to answer.
        let asks = packet::build_arp_request(MacAddr(PEER_MAC), peer, me, None);
        assert_eq!(up(&asks, LocalKind::Arp, &[]), Up::No);
        // A reply for someone else.
        let other = ArpRepr {
            sender_ip: Ipv4Addr::new(198, 18, 10, 250),
            ..request
        };
        let reply = packet::build_arp_reply(&other, MacAddr(PEER_MAC), None);
        assert_eq!(up(&reply, LocalKind::Arp, &[]), Up::No);
    }

    #[test]
    fn neighbour_discovery_the_kernel_needs_goes_up() {
        let me: Ipv6Addr = "2001:db8:10::11".parse().expect("v6");
        let peer: Ipv6Addr = "2001:db8:10::1".parse().expect("v6");
        let ll = link_local(PORT_MAC);
        // Advertisements to the port's address and to the TAP's link-local.
        for dst in [me, ll] {
            let na = packet::build_neighbor_advertisement(
                MacAddr(PEER_MAC),
                peer,
                MacAddr(PORT_MAC),
                dst,
                true,
                None,
            );
            assert_eq!(up(&na, LocalKind::Neighbor, &[]), Up::Copy, "{dst}");
        }
        // Unsolicited, to all nodes: no.
        let na = packet::build_neighbor_advertisement(
            MacAddr(PEER_MAC),
            peer,
            MacAddr(PORT_MAC),
            Ipv6Addr::UNSPECIFIED,
            false,
            None,
        );
        assert_eq!(up(&na, LocalKind::Neighbor, &[]), Up::No);
        // A solicitation for the link-local address: the kernel's to answer;
        // for the port's address: the data plane's.
        let ns = packet::build_neighbor_solicitation(MacAddr(PEER_MAC), peer, ll, None);
        assert_eq!(up(&ns, LocalKind::Neighbor, &[]), Up::Kernel);
        let ns = packet::build_neighbor_solicitation(MacAddr(PEER_MAC), peer, me, None);
        assert_eq!(up(&ns, LocalKind::Neighbor, &[]), Up::No);
        // Off the link (hop limit below 255): no.
        let mut na = packet::build_neighbor_advertisement(
            MacAddr(PEER_MAC),
            peer,
            MacAddr(PORT_MAC),
            me,
            true,
            None,
        );
        let p = packet::parse(&na).expect("parses");
        na[p.l3_offset + 7] = 64;
        assert_eq!(up(&na, LocalKind::Neighbor, &[]), Up::No);
    }

    #[test]
    fn the_link_local_address_is_the_kernels_eui64() {
        assert_eq!(
            link_local([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
            "fe80::5054:ff:fe12:3456".parse::<Ipv6Addr>().expect("v6")
        );
        assert_eq!(
            link_local(PORT_MAC),
            "fe80::5eff:fe10:1".parse::<Ipv6Addr>().expect("v6")
        );
    }
}
