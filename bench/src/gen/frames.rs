//! Frame templates, and the answers to neighbour requests.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_core::packet::{self, checksum, FrameSpec, Kind, MacAddr};

use super::{Opts, Stamp, CLASSES, STAMP_LEN};

const TCP_SYN: u8 = 0x02;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;

/// Frame templates, one per class: source address and port zero, stamp
/// zero; per packet the fields are written and the checksums updated.
#[derive(Debug)]
pub(crate) struct Templates {
    frames: [Vec<u8>; CLASSES],
    l4: usize,
    v6: bool,
}

impl Templates {
    pub(crate) fn new(o: &Opts, src_mac: [u8; 6]) -> Templates {
        let v6 = o.v6();
        let unspec = if v6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        let l4 = 14 + if v6 { 40 } else { 20 };
        let payload = o.size - l4 - 20;
        let build = |dport: u16, flags: u8, seq: u32, ack: u32| {
            packet::build_frame(&FrameSpec {
                src_mac: MacAddr(src_mac),
                dst_mac: MacAddr(o.dst_mac),
                src: unspec,
                dst: o.vip,
                proto: 6,
                sport: 0,
                dport,
                tcp_flags: flags,
                tcp_seq: seq,
                tcp_ack: ack,
                ttl: 64,
                payload: vec![0; payload],
                ..FrameSpec::default()
            })
        };
        let syn = build(o.port, TCP_SYN, 1, 0);
        Templates {
            frames: [
                syn.clone(),
                build(o.port, TCP_ACK | TCP_PSH, 2, 1),
                build(o.deny_port, TCP_SYN, 1, 0),
                syn,
            ],
            l4,
            v6,
        }
    }

    /// Writes the frame of `class` from `src`:`sport` with `stamp` into
    /// `out`; returns its length.
    pub(crate) fn fill(&self, out: &mut [u8], src: IpAddr, sport: u16, stamp: &Stamp) -> usize {
        let t = &self.frames[stamp.class as usize];
        let f = &mut out[..t.len()];
        f.copy_from_slice(t);
        let l4 = self.l4;
        let tcp_csum = l4 + 16;
        let mut tc = u16::from_be_bytes([f[tcp_csum], f[tcp_csum + 1]]);
        match src {
            IpAddr::V4(a) if !self.v6 => {
                f[26..30].copy_from_slice(&a.octets());
                let ip = u16::from_be_bytes([f[24], f[25]]);
                let ip = checksum::update_ipv4(ip, Ipv4Addr::UNSPECIFIED, a);
                f[24..26].copy_from_slice(&ip.to_be_bytes());
                tc = checksum::update_ipv4(tc, Ipv4Addr::UNSPECIFIED, a);
            }
            IpAddr::V6(a) if self.v6 => {
                f[22..38].copy_from_slice(&a.octets());
                tc = checksum::update_ipv6(tc, Ipv6Addr::UNSPECIFIED, a);
            }
            // Families are checked up front.
            _ => {}
        }
        f[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
        tc = checksum::update16(tc, 0, sport);
        let mut s = [0u8; STAMP_LEN];
        stamp.write(&mut s);
        f[l4 + 20..l4 + 20 + STAMP_LEN].copy_from_slice(&s);
        for w in s.chunks_exact(2) {
            tc = checksum::update16(tc, 0, u16::from_be_bytes([w[0], w[1]]));
        }
        f[tcp_csum..tcp_csum + 2].copy_from_slice(&tc.to_be_bytes());
        t.len()
    }
}

/// The answer to an ARP request or a neighbour solicitation for one of
/// `own` addresses, from `mac`.
pub(crate) fn answer_neighbor(
    frame: &[u8],
    own: &HashSet<IpAddr>,
    mac: [u8; 6],
) -> Option<Vec<u8>> {
    let p = packet::parse(frame).ok()?;
    match p.kind {
        Kind::Arp => {
            let arp = packet::parse_arp(frame).ok()?;
            (arp.op == packet::ArpOp::Request && own.contains(&IpAddr::V4(arp.target_ip)))
                .then(|| packet::build_arp_reply(&arp, MacAddr(mac), p.vlan))
        }
        Kind::Ipv6 if p.proto == 58 && p.icmp == Some((135, 0)) => {
            let icmp =
                packet::Icmpv6Packet::new_checked(frame.get(p.l4_offset..p.l3_end())?).ok()?;
            let target = icmp.nd_target();
            if !own.contains(&IpAddr::V6(target)) {
                return None;
            }
            let IpAddr::V6(src) = p.src else { return None };
            let mut eth_src = [0u8; 6];
            eth_src.copy_from_slice(frame.get(6..12)?);
            let to = icmp
                .source_lladdr()
                .ok()
                .flatten()
                .unwrap_or(MacAddr(eth_src));
            Some(packet::build_neighbor_advertisement(
                MacAddr(mac),
                target,
                to,
                src,
                true,
                p.vlan,
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::args::tests::opts;
    use super::super::ALL;

    /// Frames carry valid checksums and a stamp the receiver finds.
    #[test]
    fn frames_are_valid_and_stamped() {
        for v6 in [false, true] {
            let mut o = opts();
            if v6 {
                o.vip = "2001:db8:18::10".parse().expect("ip");
                o.src = "2001:db8:18::100-2001:db8:18::1ff".parse().expect("range");
                o.size = 90;
            }
            let t = Templates::new(&o, [2, 0, 0, 0, 0, 1]);
            let mut buf = vec![0u8; 2048];
            for (i, class) in ALL.into_iter().enumerate() {
                let stamp = Stamp {
                    run: 5,
                    class,
                    seq: 0xdead_0000 + i as u32,
                    tx_ns: 0x1234_5678,
                };
                let src = o.src.addresses(&[])[i];
                let len = t.fill(&mut buf, src, 40_000 + i as u16, &stamp);
                assert_eq!(len, o.size);
                let f = &buf[..len];
                let p = packet::parse(f).expect("parses");
                assert_eq!((p.src, p.sport), (src, 40_000 + i as u16));
                assert!(packet::verify_l4_checksum(f, &p), "TCP checksum, {class:?}");
                if !v6 {
                    assert_eq!(checksum::checksum(&f[14..34]), 0, "IPv4 header checksum");
                }
                assert_eq!(Stamp::find(f), Some(stamp));
            }
        }
    }

    #[test]
    fn neighbours_are_answered_for_our_addresses_only() {
        let own: HashSet<IpAddr> = ["198.18.0.100".parse().expect("ip")].into();
        let mac = [2, 0, 0, 0, 0, 1];
        let ask = |t: &str| {
            packet::build_arp_request(
                MacAddr([2, 0, 0, 0, 0, 9]),
                "198.18.0.1".parse().expect("ip"),
                t.parse().expect("ip"),
                None,
            )
        };
        let r = answer_neighbor(&ask("198.18.0.100"), &own, mac).expect("answered");
        let arp = packet::parse_arp(&r).expect("arp");
        assert_eq!(arp.sender_mac, MacAddr(mac));
        assert!(answer_neighbor(&ask("198.18.0.101"), &own, mac).is_none());
    }
}
