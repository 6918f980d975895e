//! Whole-frame tests: golden frames, error reachability, property tests.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;
use crate::flow::FlowKey;

const TCP4_SYN: [u8; 54] = [
    0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x02, 0x42, 0xc0, 0xa8, 0x01, 0xfa, 0x08, 0x00, 0x45, 0x00,
    0x00, 0x28, 0x00, 0x00, 0x40, 0x00, 0x40, 0x06, 0xb6, 0x7a, 0xc0, 0xa8, 0x01, 0xfa, 0xc0, 0xa8,
    0x01, 0x0b, 0x04, 0x01, 0x00, 0x50, 0x12, 0x34, 0x56, 0x78, 0x00, 0x00, 0x00, 0x00, 0x50, 0x02,
    0xff, 0xff, 0xbe, 0x8f, 0x00, 0x00,
];
const UDP6_VLAN: [u8; 71] = [
    0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x02, 0x42, 0xc0, 0xa8, 0x01, 0xfa, 0x81, 0x00, 0x00, 0x64,
    0x86, 0xdd, 0x60, 0x00, 0x00, 0x00, 0x00, 0x0d, 0x11, 0x40, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x14, 0xe9, 0x00, 0x35, 0x00, 0x0d,
    0x4b, 0x6f, 0x68, 0x65, 0x6c, 0x6c, 0x6f,
];
const TCP4_OPTS_PADDED: [u8; 73] = [
    0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x02, 0x42, 0xc0, 0xa8, 0x01, 0xfa, 0x08, 0x00, 0x46, 0x00,
    0x00, 0x37, 0xbe, 0xef, 0x00, 0x00, 0x07, 0x06, 0x65, 0xa0, 0xc6, 0x12, 0x00, 0x02, 0xc6, 0x12,
    0x00, 0x0a, 0x01, 0x01, 0x01, 0x00, 0x9c, 0x40, 0x01, 0xbb, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
    0x00, 0x02, 0x70, 0x18, 0x01, 0xf6, 0xbc, 0x94, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x01, 0x03,
    0x03, 0x07, 0x47, 0x45, 0x54, 0x00, 0x00, 0x00, 0x00,
];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const MAC_D: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
const MAC_S: MacAddr = MacAddr([0x02, 0x42, 0xc0, 0xa8, 0x01, 0xfa]);

fn syn_spec() -> FrameSpec {
    FrameSpec {
        src_mac: MAC_S,
        dst_mac: MAC_D,
        src: ip("192.168.1.250"),
        dst: ip("192.168.1.11"),
        proto: 6,
        sport: 1025,
        dport: 80,
        tcp_flags: TcpFlags::SYN,
        tcp_seq: 0x1234_5678,
        ..FrameSpec::default()
    }
}

fn udp6_spec() -> FrameSpec {
    FrameSpec {
        src_mac: MAC_S,
        dst_mac: MAC_D,
        vlan: Some(100),
        src: ip("2001:db8::1"),
        dst: ip("2001:db8::2"),
        proto: 17,
        sport: 5353,
        dport: 53,
        payload: b"hello".to_vec(),
        ..FrameSpec::default()
    }
}

#[test]
fn golden_tcp4_deconstruct() {
    let p = parse(&TCP4_SYN).unwrap();
    assert_eq!(p.kind, Kind::Ipv4);
    assert_eq!((p.vlan, p.ethertype), (None, 0x0800));
    assert_eq!(
        (p.l3_offset, p.l3_len, p.l4_offset, p.l4_len),
        (14, 40, 34, 20)
    );
    assert_eq!((p.src, p.dst), (ip("192.168.1.250"), ip("192.168.1.11")));
    assert_eq!((p.proto, p.ttl, p.sport, p.dport), (6, 64, 1025, 80));
    assert_eq!(p.tcp_flags, TcpFlags::SYN);
    assert_eq!(p.icmp, None);
    assert!(!p.is_fragment && !p.is_first_fragment && p.has_l4_header());
    assert!(verify_l4_checksum(&TCP4_SYN, &p));
    assert_eq!(format_flow(&p), "tcp 192.168.1.250:1025 > 192.168.1.11:80");
    let tcp = TcpPacket::new_checked(&TCP4_SYN[34..]).unwrap();
    assert_eq!(tcp.seq_number(), 0x1234_5678);
    assert_eq!(tcp.window_len(), 65535);
    assert_eq!(tcp.checksum(), 0xbe8f);
    assert!(tcp.flags().contains(TcpFlags::SYN) && !tcp.flags().contains(TcpFlags::ACK));
    let eth = EthernetFrame::new_checked(&TCP4_SYN[..]).unwrap();
    assert_eq!((eth.dst_addr(), eth.src_addr()), (MAC_D, MAC_S));
}

#[test]
fn golden_tcp4_construct() {
    assert_eq!(build_frame(&syn_spec()), TCP4_SYN);
    let mut reused = vec![1, 2, 3];
    build_frame_into(&syn_spec(), &mut reused);
    assert_eq!(reused, TCP4_SYN);
}

#[test]
fn golden_udp6_vlan() {
    assert_eq!(build_frame(&udp6_spec()), UDP6_VLAN);
    let p = parse(&UDP6_VLAN).unwrap();
    assert_eq!(p.kind, Kind::Ipv6);
    assert_eq!((p.vlan, p.ethertype), (Some(100), 0x86dd));
    assert_eq!(
        (p.l3_offset, p.l3_len, p.l4_offset, p.l4_len),
        (18, 53, 58, 13)
    );
    assert_eq!((p.proto, p.ttl, p.sport, p.dport), (17, 64, 5353, 53));
    assert!(verify_l4_checksum(&UDP6_VLAN, &p));
    assert_eq!(format_flow(&p), "udp [2001:db8::1]:5353 > [2001:db8::2]:53");
    let udp = UdpPacket::new_checked(&UDP6_VLAN[58..]).unwrap();
    assert_eq!(udp.payload(), b"hello");
    assert_eq!(udp.checksum(), 0x4b6f);
}

#[test]
fn golden_ipv4_options_tcp_options_and_padding() {
    let f = &TCP4_OPTS_PADDED;
    let p = parse(f).unwrap();
    assert_eq!((p.l3_len, p.l4_offset, p.l4_len), (55, 38, 31));
    assert_eq!(p.l3_end(), f.len() - 4);
    assert_eq!((p.ttl, p.sport, p.dport), (7, 40000, 443));
    assert_eq!(p.tcp_flags, TcpFlags::ACK | TcpFlags::PSH);
    assert!(verify_l4_checksum(f, &p));
    let v4 = Ipv4Packet::new_checked(&f[14..]).unwrap();
    assert_eq!(v4.options(), &[1, 1, 1, 0]);
    assert_eq!(v4.ident(), 0xbeef);
    let tcp = TcpPacket::new_checked(&f[38..p.l3_end()]).unwrap();
    assert_eq!(tcp.header_len(), 28);
    assert_eq!(tcp.options(), &[2, 4, 5, 0xb4, 1, 3, 3, 7]);
    assert_eq!(tcp.payload(), b"GET");
    assert_eq!((tcp.ack_number(), tcp.window_len()), (2, 502));
    // The padding is not part of the packet: rewrite and verify ignore it.
    let mut g = *f;
    let new = FlowKey {
        dst: ip("10.0.0.1"),
        dport: 8443,
        ..p.flow_key().unwrap()
    };
    rewrite(&mut g, &p, &new, L4Csum::Full).unwrap();
    let q = parse(&g).unwrap();
    assert_eq!(q.flow_key(), Some(new));
    assert!(verify_l4_checksum(&g, &q));
    // Shorter than the IP total length is an error.
    assert_eq!(parse(&f[..f.len() - 5]), Err(ParseError::TruncatedIpv4));
}

#[test]
fn format_flow_examples() {
    let spec = FrameSpec {
        src: ip("198.18.0.2"),
        dst: ip("198.18.0.10"),
        proto: 1,
        sport: 7,
        ..FrameSpec::default()
    };
    let p = parse(&build_frame(&spec)).unwrap();
    assert_eq!(format_flow(&p), "icmp 198.18.0.2 > 198.18.0.10");
    let spec = FrameSpec {
        proto: 47,
        payload: vec![0, 0, 0x08, 0],
        ..spec
    };
    assert_eq!(
        format_flow(&parse(&build_frame(&spec)).unwrap()),
        "gre 198.18.0.2 > 198.18.0.10"
    );
    let spec = FrameSpec {
        proto: 132,
        payload: vec![],
        ..spec
    };
    assert_eq!(
        format_flow(&parse(&build_frame(&spec)).unwrap()),
        "132 198.18.0.2 > 198.18.0.10"
    );
    let arp = build_arp_request(
        MAC_S,
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 0, 0, 2),
        None,
    );
    assert_eq!(format_flow(&parse(&arp).unwrap()), "arp");
}

/// Sets the IPv4 total length of an untagged frame, cuts the frame there
/// and fixes the header checksum.
fn with_ipv4_total(mut f: Vec<u8>, total: u16) -> Vec<u8> {
    f.truncate(14 + total as usize);
    let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
    ip.set_total_len(total);
    ip.fill_checksum();
    f
}

fn fix_ipv4_csum(mut f: Vec<u8>) -> Vec<u8> {
    Ipv4Packet::new_unchecked(&mut f[14..]).fill_checksum();
    f
}

fn v4(proto: u8, payload: &[u8]) -> Vec<u8> {
    build_frame(&FrameSpec {
        src: ip("10.0.0.1"),
        dst: ip("10.0.0.2"),
        proto,
        sport: 1,
        dport: 2,
        payload: payload.to_vec(),
        ..FrameSpec::default()
    })
}

fn v6(proto: u8, payload: &[u8]) -> Vec<u8> {
    build_frame(&FrameSpec {
        src: ip("fd00::1"),
        dst: ip("fd00::2"),
        proto,
        sport: 1,
        dport: 2,
        payload: payload.to_vec(),
        ..FrameSpec::default()
    })
}

#[test]
fn every_parse_error_is_reachable() {
    let mut seen = BTreeSet::new();
    let mut expect = |r: ParseError, want: ParseError| {
        assert_eq!(r, want);
        seen.insert(want);
    };
    let e = |f: &[u8]| parse(f).unwrap_err();
    let tcp4 = TCP4_SYN.to_vec();
    let arp = build_arp_request(
        MAC_S,
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 0, 0, 2),
        None,
    );

    expect(e(&tcp4[..13]), ParseError::TruncatedEthernet);
    expect(e(&UDP6_VLAN[..17]), ParseError::TruncatedVlan);
    expect(e(&arp[..40]), ParseError::TruncatedArp);
    let mut bad = arp.clone();
    bad[14 + 5] = 16; // protocol length
    expect(e(&bad), ParseError::UnsupportedArp);
    expect(parse_arp(&tcp4).unwrap_err(), ParseError::NotArp);
    expect(e(&tcp4[..30]), ParseError::TruncatedIpv4);
    let mut bad = tcp4.clone();
    bad[14] = 0x55;
    expect(e(&bad), ParseError::BadIpv4Version);
    bad[14] = 0x44;
    expect(e(&bad), ParseError::BadIpv4HeaderLength);
    let mut bad = tcp4.clone();
    bad[17] = 19;
    expect(e(&bad), ParseError::BadIpv4TotalLength);
    let mut bad = tcp4.clone();
    bad[22] = 63; // TTL without checksum update
    expect(e(&bad), ParseError::BadIpv4Checksum);
    let u6 = UDP6_VLAN.to_vec();
    expect(e(&u6[..70]), ParseError::TruncatedIpv6);
    let mut bad = u6.clone();
    bad[18] = 0x40;
    expect(e(&bad), ParseError::BadIpv6Version);
    expect(
        e(&v6(60, &[6, 0, 0, 0])),
        ParseError::TruncatedIpv6ExtHeader,
    );
    let chain: Vec<u8> = (0..9).flat_map(|_| [60, 0, 1, 4, 0, 0, 0, 0]).collect();
    expect(e(&v6(60, &chain)), ParseError::Ipv6ExtChainTooLong);
    expect(
        e(&with_ipv4_total(tcp4.clone(), 30)),
        ParseError::TruncatedTcp,
    );
    let mut bad = tcp4.clone();
    bad[46] = 0x40;
    expect(e(&bad), ParseError::BadTcpDataOffset);
    bad[46] = 0x60;
    expect(e(&bad), ParseError::BadTcpDataOffset);
    expect(
        e(&with_ipv4_total(v4(17, b""), 27)),
        ParseError::TruncatedUdp,
    );
    let mut bad = v4(17, b"abc");
    bad[14 + 20 + 5] = 12; // UDP length 12 > 11
    expect(e(&bad), ParseError::BadUdpLength);
    bad[14 + 20 + 5] = 7;
    expect(e(&bad), ParseError::BadUdpLength);
    expect(
        e(&with_ipv4_total(v4(1, b""), 27)),
        ParseError::TruncatedIcmp,
    );
    let mut short6 = v6(59, &[128, 0, 0, 0]);
    short6[14 + 6] = 58;
    expect(e(&short6), ParseError::TruncatedIcmpv6);
    let ns = build_neighbor_solicitation(
        MAC_S,
        "fe80::1".parse().unwrap(),
        "fe80::2".parse().unwrap(),
        None,
    );
    let mut bad = ns.clone();
    bad[14 + 40 + 25] = 0;
    expect(
        Icmpv6Packet::new_checked(&bad[54..])
            .unwrap()
            .source_lladdr()
            .unwrap_err(),
        ParseError::BadNdOption,
    );
    expect(
        e(&v4(47, &[0x20, 0, 0x08, 0, 0, 0])),
        ParseError::TruncatedGre,
    );
    let p = parse(&tcp4).unwrap();
    expect(
        parse_icmp_inner(&tcp4, &p).unwrap_err(),
        ParseError::NotIcmpError,
    );
    expect(
        build_echo_reply(&tcp4, &p, MAC_S).unwrap_err(),
        ParseError::NotEchoRequest,
    );
    let err = |payload: &[u8]| {
        build_frame(&FrameSpec {
            src: ip("10.0.0.1"),
            dst: ip("10.0.0.2"),
            proto: 1,
            icmp: Some((3, 1)),
            payload: payload.to_vec(),
            ..FrameSpec::default()
        })
    };
    let f = err(&[0x45; 10]);
    expect(
        parse_icmp_inner(&f, &parse(&f).unwrap()).unwrap_err(),
        ParseError::TruncatedIcmpInner,
    );
    let f = err(&[0x65; 28]);
    expect(
        parse_icmp_inner(&f, &parse(&f).unwrap()).unwrap_err(),
        ParseError::BadIcmpInner,
    );
    let pa = parse(&arp).unwrap();
    let key = p.flow_key().unwrap();
    expect(
        rewrite(&mut arp.clone(), &pa, &key, L4Csum::Full).unwrap_err(),
        ParseError::NotIp,
    );
    let key6 = FlowKey {
        src: ip("::1"),
        dst: ip("::2"),
        ..key
    };
    expect(
        rewrite(&mut tcp4.clone(), &p, &key6, L4Csum::Full).unwrap_err(),
        ParseError::AddressFamilyMismatch,
    );

    let missing: Vec<_> = ParseError::ALL
        .iter()
        .filter(|e| !seen.contains(e))
        .collect();
    assert!(missing.is_empty(), "not exercised: {missing:?}");
}

#[test]
fn ipv6_extension_headers_and_fragments() {
    // Hop-by-hop (8 bytes) then destination options (16 bytes) then UDP.
    let mut payload = vec![60, 0, 5, 2, 0, 0, 1, 0];
    payload.extend_from_slice(&[17, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    payload.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0x00, 0x0a, 0x00, 0x00, b'h', b'i']);
    let f = v6(0, &payload);
    let p = parse(&f).unwrap();
    assert_eq!((p.proto, p.l4_offset, p.l4_len), (17, 14 + 40 + 24, 10));
    assert_eq!((p.sport, p.dport), (12345, 53));
    assert!(!p.is_fragment);

    // Non-first fragment: no L4 header.
    let frag = [6, 0, 0x05, 0xa8, 0, 0, 0, 1, 0xde, 0xad];
    let p = parse(&v6(44, &frag)).unwrap();
    assert!(p.is_fragment && !p.is_first_fragment && !p.has_l4_header());
    assert_eq!(
        (p.proto, p.sport, p.dport, p.tcp_flags, p.l4_len),
        (6, 0, 0, 0, 2)
    );
    assert_eq!(format_flow(&p), "tcp fd00::1 > fd00::2");

    // First fragment of a UDP datagram: the UDP length covers the datagram.
    let mut first = vec![17, 0, 0x00, 0x01, 0, 0, 0, 1];
    first.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0x05, 0xdc, 0x00, 0x00, 1, 2]);
    let f = v6(44, &first);
    let p = parse(&f).unwrap();
    assert!(p.is_fragment && p.is_first_fragment && p.has_l4_header());
    assert_eq!((p.sport, p.dport, p.l4_len), (12345, 53, 10));
    assert!(!verify_l4_checksum(&f, &p));

    // An atomic fragment is a whole packet.
    let mut atomic = vec![17, 0, 0, 0, 0, 0, 0, 1];
    atomic.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0x00, 0x0a, 0x00, 0x00, 1, 2]);
    let p = parse(&v6(44, &atomic)).unwrap();
    assert!(!p.is_fragment && !p.is_first_fragment && p.has_l4_header());
    assert_eq!((p.sport, p.l4_len), (12345, 10));

    // IPv4 fragments.
    let mut f = TCP4_SYN.to_vec();
    Ipv4Packet::new_unchecked(&mut f[14..]).set_frag(false, false, 64);
    let f = fix_ipv4_csum(f);
    let p = parse(&f).unwrap();
    assert!(p.is_fragment && !p.is_first_fragment);
    assert_eq!((p.sport, p.dport, p.l4_len), (0, 0, 20));
    let new = FlowKey {
        src: ip("1.2.3.4"),
        sport: 9,
        ..p.flow_key().unwrap()
    };
    let mut g = f.clone();
    rewrite(&mut g, &p, &new, L4Csum::Full).unwrap();
    assert_eq!(&g[34..], &f[34..], "no L4 header to touch");
    assert_eq!(parse(&g).unwrap().src, ip("1.2.3.4"));

    let mut f = TCP4_SYN.to_vec();
    Ipv4Packet::new_unchecked(&mut f[14..]).set_frag(false, true, 0);
    let p = parse(&fix_ipv4_csum(f)).unwrap();
    assert!(p.is_fragment && p.is_first_fragment);
    assert_eq!((p.sport, p.dport), (1025, 80));
}

#[test]
fn icmp_errors_quote_the_original() {
    for (orig, src) in [
        (syn_spec(), ip("192.168.1.1")),
        (udp6_spec(), ip("2001:db8::ff")),
        (
            FrameSpec {
                proto: 1,
                sport: 77,
                ..syn_spec()
            },
            ip("192.168.1.1"),
        ),
        (
            FrameSpec {
                proto: 58,
                sport: 77,
                payload: vec![0; 3000],
                ..udp6_spec()
            },
            ip("2001:db8::ff"),
        ),
    ] {
        let f = build_frame(&orig);
        let p = parse(&f).unwrap();
        let (t, code, mtu) = if p.is_ipv6() {
            (2, 0, 1280)
        } else {
            (3, 4, 1400)
        };
        let e = build_icmp_error(&f, &p, src, t, code, mtu, MAC_D, MAC_S).unwrap();
        let q = parse(&e).unwrap();
        assert_eq!(q.icmp, Some((t, code)));
        assert_eq!((q.src, q.dst, q.vlan), (src, p.src, p.vlan));
        assert!(q.is_icmp_error() && verify_l4_checksum(&e, &q));
        assert!(q.l3_len <= if p.is_ipv6() { 1280 } else { 576 });
        assert_eq!(parse_icmp_inner(&e, &q).unwrap(), p.flow_key().unwrap());
        let rest = u32::from_be_bytes(e[q.l4_offset + 4..q.l4_offset + 8].try_into().unwrap());
        assert_eq!(rest, mtu);
    }
    // Parameter problem pointer goes in the first byte for IPv4.
    let f = build_frame(&syn_spec());
    let p = parse(&f).unwrap();
    let e = build_icmp_error(&f, &p, ip("192.168.1.1"), 12, 0, 9, MAC_D, MAC_S).unwrap();
    let q = parse(&e).unwrap();
    assert_eq!(
        Icmpv4Packet::new_checked(&e[q.l4_offset..])
            .unwrap()
            .pointer(),
        9
    );
    assert_eq!(
        build_icmp_error(&f, &p, ip("::1"), 1, 0, 0, MAC_D, MAC_S).unwrap_err(),
        ParseError::AddressFamilyMismatch
    );
}

#[test]
fn arp_and_neighbour_discovery() {
    let me = MacAddr([2, 0, 0, 0, 0, 9]);
    let req = build_arp_request(
        MAC_S,
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 0, 0, 9),
        Some(5),
    );
    assert_eq!(parse(&req).unwrap().kind, Kind::Arp);
    assert_eq!(parse(&req).unwrap().vlan, Some(5));
    let r = parse_arp(&req).unwrap();
    assert_eq!(
        (r.op, r.target_ip, r.target_mac),
        (ArpOp::Request, Ipv4Addr::new(10, 0, 0, 9), MacAddr::ZERO)
    );
    assert!(EthernetFrame::new_checked(&req[..])
        .unwrap()
        .dst_addr()
        .is_broadcast());
    let rep = build_arp_reply(&r, me, Some(5));
    let a = parse_arp(&rep).unwrap();
    assert_eq!(
        a,
        ArpRepr {
            op: ArpOp::Reply,
            sender_mac: me,
            sender_ip: Ipv4Addr::new(10, 0, 0, 9),
            target_mac: MAC_S,
            target_ip: Ipv4Addr::new(10, 0, 0, 1),
        }
    );
    assert_eq!(
        EthernetFrame::new_checked(&rep[..]).unwrap().dst_addr(),
        MAC_S
    );

    let target: Ipv6Addr = "2001:db8::1:2345:6789".parse().unwrap();
    let ns = build_neighbor_solicitation(MAC_S, "2001:db8::1".parse().unwrap(), target, None);
    let p = parse(&ns).unwrap();
    assert_eq!(p.icmp, Some((135, 0)));
    assert_eq!((p.ttl, p.dst), (255, ip("ff02::1:ff45:6789")));
    assert!(verify_l4_checksum(&ns, &p));
    assert_eq!(
        EthernetFrame::new_checked(&ns[..]).unwrap().dst_addr(),
        MacAddr([0x33, 0x33, 0xff, 0x45, 0x67, 0x89])
    );
    let m = Icmpv6Packet::new_checked(&ns[p.l4_offset..]).unwrap();
    assert_eq!(
        (m.nd_target(), m.source_lladdr(), m.target_lladdr()),
        (target, Ok(Some(MAC_S)), Ok(None))
    );
    let dad = build_neighbor_solicitation(MAC_S, Ipv6Addr::UNSPECIFIED, target, None);
    let p = parse(&dad).unwrap();
    assert_eq!(p.l4_len, 24);
    assert!(verify_l4_checksum(&dad, &p));

    let na = build_neighbor_advertisement(
        me,
        target,
        MAC_S,
        "2001:db8::1".parse().unwrap(),
        true,
        None,
    );
    let p = parse(&na).unwrap();
    assert_eq!(
        (p.icmp, p.src, p.ttl),
        (Some((136, 0)), IpAddr::V6(target), 255)
    );
    assert!(verify_l4_checksum(&na, &p));
    let m = Icmpv6Packet::new_checked(&na[p.l4_offset..]).unwrap();
    assert_eq!(m.na_flags(), NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE);
    assert_eq!((m.nd_target(), m.target_lladdr()), (target, Ok(Some(me))));
    let na = build_neighbor_advertisement(me, target, MAC_S, Ipv6Addr::UNSPECIFIED, true, None);
    let p = parse(&na).unwrap();
    assert_eq!(p.dst, ip("ff02::1"));
    assert_eq!(
        Icmpv6Packet::new_checked(&na[p.l4_offset..])
            .unwrap()
            .na_flags(),
        NA_FLAG_OVERRIDE
    );
}

#[test]
fn echo_replies() {
    let me = MacAddr([2, 0, 0, 0, 0, 9]);
    for spec in [
        FrameSpec {
            proto: 1,
            sport: 0x4242,
            dport: 3,
            payload: b"ping".to_vec(),
            ..syn_spec()
        },
        FrameSpec {
            proto: 58,
            sport: 0x4242,
            dport: 3,
            payload: b"ping6".to_vec(),
            ..udp6_spec()
        },
    ] {
        let f = build_frame(&spec);
        let p = parse(&f).unwrap();
        assert!(p.is_icmp_echo());
        assert_eq!((p.sport, p.dport), (0x4242, 0x4242));
        let r = build_echo_reply(&f, &p, me).unwrap();
        let q = parse(&r).unwrap();
        let want = if p.is_ipv6() { 129 } else { 0 };
        assert_eq!(q.icmp, Some((want, 0)));
        assert_eq!(
            (q.src, q.dst, q.sport, q.vlan),
            (p.dst, p.src, 0x4242, p.vlan)
        );
        assert!(verify_l4_checksum(&r, &q));
        assert_eq!(&r[q.l4_offset + 4..], &f[p.l4_offset + 4..p.l3_end()]);
        let eth = EthernetFrame::new_checked(&r[..]).unwrap();
        assert_eq!((eth.src_addr(), eth.dst_addr()), (me, spec.src_mac));
        // A reply is not a request.
        assert_eq!(
            build_echo_reply(&r, &q, me).unwrap_err(),
            ParseError::NotEchoRequest
        );
    }
}

#[test]
fn ttl_and_udp_zero_checksum() {
    let mut f = TCP4_SYN.to_vec();
    let p = parse(&f).unwrap();
    assert!(decrement_ttl(&mut f, &p));
    assert_eq!(
        f,
        build_frame(&FrameSpec {
            ttl: 63,
            ..syn_spec()
        })
    );
    let mut f = build_frame(&FrameSpec {
        ttl: 1,
        ..syn_spec()
    });
    let before = f.clone();
    assert!(!decrement_ttl(&mut f, &parse(&before).unwrap()));
    assert_eq!(f, before);
    let mut f = UDP6_VLAN.to_vec();
    assert!(decrement_ttl(&mut f, &parse(&UDP6_VLAN).unwrap()));
    assert_eq!(
        f,
        build_frame(&FrameSpec {
            ttl: 63,
            ..udp6_spec()
        })
    );

    // UDP over IPv4 without checksum stays without.
    let mut f = v4(17, b"data");
    f[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    let p = parse(&f).unwrap();
    assert!(verify_l4_checksum(&f, &p));
    let new = FlowKey {
        src: ip("172.16.0.1"),
        sport: 4000,
        ..p.flow_key().unwrap()
    };
    rewrite(&mut f, &p, &new, L4Csum::Full).unwrap();
    assert_eq!(&f[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
    assert_eq!(parse(&f).unwrap().flow_key(), Some(new));
}

/// A UDP checksum that comes out as 0 after a rewrite is sent as 0xffff
/// (search a port that makes it so).
#[test]
fn udp_rewrite_zero_becomes_ffff() {
    for v6 in [false, true] {
        let base = if v6 {
            udp6_spec()
        } else {
            FrameSpec {
                vlan: None,
                src: ip("10.0.0.1"),
                dst: ip("10.0.0.2"),
                ..udp6_spec()
            }
        };
        let f0 = build_frame(&base);
        let p = parse(&f0).unwrap();
        let off = p.l4_offset + 6;
        let c0 = u16::from_be_bytes([f0[off], f0[off + 1]]);
        // Changing sport by d changes the sum by d: pick the port that
        // makes the complete sum 0xffff, i.e. the checksum 0.
        let sport = checksum::add(base.sport, c0);
        let new = FlowKey {
            sport,
            ..p.flow_key().unwrap()
        };
        let mut f = f0.clone();
        rewrite(&mut f, &p, &new, L4Csum::Full).unwrap();
        assert_eq!(&f[off..off + 2], &[0xff, 0xff]);
        assert_eq!(f, build_frame(&FrameSpec { sport, ..base }));
        assert!(verify_l4_checksum(&f, &parse(&f).unwrap()));
    }
}

// ---- property tests ----

fn arb_addr(v6: bool) -> BoxedStrategy<IpAddr> {
    if v6 {
        any::<u128>().prop_map(|a| IpAddr::V6(a.into())).boxed()
    } else {
        any::<u32>().prop_map(|a| IpAddr::V4(a.into())).boxed()
    }
}

/// Frames of the protocols the parser understands (L4 well-formed).
fn arb_spec() -> impl Strategy<Value = FrameSpec> {
    (any::<bool>(), 0..5u8).prop_flat_map(|(v6, which)| {
        let proto = match which {
            0 => 6,
            1 => 17,
            2 => {
                if v6 {
                    58
                } else {
                    1
                }
            }
            3 => 47,
            _ => 50,
        };
        let icmp = prop_oneof![
            Just(None),
            Just(Some(if v6 { (129, 0) } else { (0, 0) })),
            (any::<u8>(), any::<u8>()).prop_map(Some),
        ];
        (
            arb_addr(v6),
            arb_addr(v6),
            (
                any::<u16>(),
                any::<u16>(),
                any::<u8>(),
                any::<u32>(),
                any::<u32>(),
            ),
            icmp,
            proptest::option::of(0..4096u16),
            1..=255u8,
            proptest::collection::vec(any::<u8>(), 0..80),
            (any::<[u8; 6]>(), any::<[u8; 6]>()),
        )
            .prop_map(
                move |(
                    src,
                    dst,
                    (sport, dport, flags, seq, ack),
                    icmp,
                    vlan,
                    ttl,
                    mut payload,
                    (sm, dm),
                )| {
                    if proto == 58 && matches!(icmp, Some((135 | 136, _))) && payload.len() < 16 {
                        // Neighbour discovery messages have a 24-byte fixed part.
                        payload.resize(16, 0);
                    }
                    if proto == 47 {
                        // A minimal GRE header (no optional fields).
                        payload.splice(0..0, [0, 0, 0x08, 0x00]);
                    }
                    FrameSpec {
                        src_mac: MacAddr(sm),
                        dst_mac: MacAddr(dm),
                        vlan,
                        src,
                        dst,
                        proto,
                        sport,
                        dport,
                        tcp_flags: flags,
                        tcp_seq: seq,
                        tcp_ack: ack,
                        icmp,
                        ttl,
                        payload,
                    }
                },
            )
    })
}

fn is_echo(spec: &FrameSpec) -> bool {
    let t = spec
        .icmp
        .map_or(if spec.src.is_ipv6() { 128 } else { 8 }, |(t, _)| t);
    match spec.proto {
        1 => Icmpv4Message::from(t).is_echo(),
        58 => Icmpv6Message::from(t).is_echo(),
        _ => false,
    }
}

/// Everything one may do with a parsed frame; must never panic.
fn exercise(frame: &[u8]) {
    // The fast path, where it answers, answers as the general parser.
    if let Some(fast) = super::parse::parse_simple(frame) {
        assert_eq!(Ok(fast), parse_general(frame), "{frame:02x?}");
    }
    let Ok(p) = parse(frame) else {
        let _ = parse_arp(frame);
        return;
    };
    let _ = verify_l4_checksum(frame, &p);
    let _ = parse_icmp_inner(frame, &p);
    let _ = format_flow(&p);
    let _ = parse_arp(frame);
    let _ = build_echo_reply(frame, &p, MacAddr::ZERO);
    if let Some(k) = p.flow_key() {
        let _ = build_icmp_error(frame, &p, k.dst, 3, 1, 0, MacAddr::ZERO, MacAddr::ZERO);
        let mut g = frame.to_vec();
        let new = FlowKey {
            sport: k.sport.wrapping_add(1),
            src: k.dst,
            dst: k.src,
            ..k
        };
        rewrite(&mut g, &p, &new, L4Csum::Full).unwrap();
        // The straight-line path, where it answers, writes what the
        // general one writes.
        let mut slow = frame.to_vec();
        super::rewrite::rewrite_general(&mut slow, &p, &new, L4Csum::Full).unwrap();
        assert_eq!(g, slow, "{frame:02x?}");
        let mut h = frame.to_vec();
        rewrite(&mut h, &p, &new, L4Csum::Partial).unwrap();
        let _ = decrement_ttl(&mut g, &p);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(
        data in proptest::collection::vec(any::<u8>(), 0..200),
        et in prop_oneof![Just(0x0800u16), Just(0x86dd), Just(0x0806), Just(0x8100), any::<u16>()],
    ) {
        exercise(&data);
        // Also behind a valid Ethernet header, to reach the L3 parsers.
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&et.to_be_bytes());
        f.extend_from_slice(&data);
        exercise(&f);
    }

    #[test]
    fn parse_never_panics_on_damaged_frames(
        spec in arb_spec(),
        cut in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        fix_csum in any::<bool>(),
    ) {
        let f = build_frame(&spec);
        let mut g = f.clone();
        for (i, b) in &flips {
            let i = i.index(g.len());
            g[i] ^= b;
        }
        if fix_csum && spec.vlan.is_none() && !spec.src.is_ipv6() && g.len() >= 34 && g[14] >> 4 == 4 {
            let hl = ((g[14] & 0xf) as usize * 4).max(20);
            if g.len() >= 14 + hl {
                g[24..26].copy_from_slice(&[0, 0]);
                let c = checksum::checksum(&g[14..14 + hl]);
                g[24..26].copy_from_slice(&c.to_be_bytes());
            }
        }
        exercise(&g);
        exercise(&g[..cut.index(g.len() + 1)]);
        exercise(&f[..cut.index(f.len() + 1)]);
    }

    #[test]
    fn build_parse_round_trip(spec in arb_spec()) {
        let f = build_frame(&spec);
        let p = parse(&f).unwrap();
        prop_assert_eq!(Ok(p), parse_general(&f));
        // Plain TCP and UDP take the fast path.
        let plain = spec.vlan.is_none() && matches!(spec.proto, 6 | 17);
        prop_assert_eq!(super::parse::parse_simple(&f).is_some(), plain);
        // ... and the straight-line rewrite, where the frame holds the
        // whole TCP header's span (a UDP frame may end sooner).
        let whole = f.len() >= p.l4_offset + 18;
        let other = FlowKey { sport: 1, dport: 2, ..p.flow_key().unwrap() };
        let mut fast = f.clone();
        let took = super::rewrite::rewrite_simple(&mut fast, &p, &other).is_some();
        prop_assert_eq!(took, matches!(spec.proto, 6 | 17) && whole);
        let mut slow = f.clone();
        super::rewrite::rewrite_general(&mut slow, &p, &other, L4Csum::Full).unwrap();
        if took {
            prop_assert_eq!(&fast, &slow);
            prop_assert!(verify_l4_checksum(&fast, &p));
        }
        let v6 = spec.src.is_ipv6();
        prop_assert_eq!(p.kind, if v6 { Kind::Ipv6 } else { Kind::Ipv4 });
        prop_assert_eq!(p.vlan, spec.vlan);
        prop_assert_eq!((p.src, p.dst, p.proto, p.ttl), (spec.src, spec.dst, spec.proto, spec.ttl));
        prop_assert!(!p.is_fragment && p.has_l4_header());
        prop_assert_eq!(p.l3_end(), f.len());
        prop_assert!(verify_l4_checksum(&f, &p));
        let (sport, dport) = match spec.proto {
            6 | 17 => (spec.sport, spec.dport),
            _ if is_echo(&spec) => (spec.sport, spec.sport),
            _ => (0, 0),
        };
        prop_assert_eq!(p.flow_key(), Some(FlowKey { src: spec.src, dst: spec.dst, proto: spec.proto, sport, dport }));
        prop_assert_eq!(p.tcp_flags, if spec.proto == 6 { spec.tcp_flags } else { 0 });
        let default_icmp = if v6 { (128, 0) } else { (8, 0) };
        prop_assert_eq!(p.icmp, matches!(spec.proto, 1 | 58).then(|| spec.icmp.unwrap_or(default_icmp)));
        let hdr = match spec.proto { 6 => 20, 17 | 1 | 58 => 8, _ => 0 };
        prop_assert_eq!(p.l4_len, hdr + spec.payload.len());
        let s = format_flow(&p);
        let want_prefix = protocol_name(spec.proto).map_or_else(|| spec.proto.to_string(), str::to_string);
        prop_assert!(s.starts_with(&want_prefix));
    }

    #[test]
    fn incremental_rewrite_matches_full_recomputation(
        spec in arb_spec().prop_filter("ports or echo", |s| matches!(s.proto, 6 | 17) || is_echo(s)),
        new_src in any::<u128>(),
        new_dst in any::<u128>(),
        nsport in any::<u16>(),
        ndport in any::<u16>(),
    ) {
        let v6 = spec.src.is_ipv6();
        let addr = |a: u128| if v6 { IpAddr::V6(a.into()) } else { IpAddr::V4((a as u32).into()) };
        let (ns, nd) = (addr(new_src), addr(new_dst));
        let f = build_frame(&spec);
        let p = parse(&f).unwrap();
        let echo = is_echo(&spec);
        let new = FlowKey { src: ns, dst: nd, proto: spec.proto, sport: nsport, dport: if echo { nsport } else { ndport } };

        // Full: identical to building the rewritten frame from scratch.
        let mut g = f.clone();
        rewrite(&mut g, &p, &new, L4Csum::Full).unwrap();
        let expected = FrameSpec {
            src: ns,
            dst: nd,
            sport: nsport,
            dport: if echo { spec.dport } else { ndport },
            ..spec.clone()
        };
        prop_assert_eq!(&g, &build_frame(&expected));
        let q = parse(&g).unwrap();
        prop_assert_eq!(q.flow_key(), Some(new));
        prop_assert!(verify_l4_checksum(&g, &q));

        // Partial: the field holds the pseudo-header sum and follows the
        // address change only.
        if spec.proto != 1 {
            let l4len = p.l4_len;
            let off = p.l4_offset + match spec.proto { 6 => 16, 17 => 6, _ => 2 };
            let before = parse::pseudo_sum(spec.src, spec.dst, spec.proto, l4len).unwrap();
            let after = parse::pseudo_sum(ns, nd, spec.proto, l4len).unwrap();
            let mut h = f.clone();
            h[off..off + 2].copy_from_slice(&before.to_be_bytes());
            rewrite(&mut h, &p, &new, L4Csum::Partial).unwrap();
            prop_assert_eq!(u16::from_be_bytes([h[off], h[off + 1]]), after);
            prop_assert_eq!(&h[..off], &g[..off]);
            prop_assert_eq!(&h[off + 2..], &g[off + 2..]);
        }
    }
}

#[test]
fn double_tagged_and_unknown_ethertypes_are_other() {
    let mut f = UDP6_VLAN.to_vec();
    f[16..18].copy_from_slice(&[0x81, 0x00]);
    let p = parse(&f).unwrap();
    assert_eq!(
        (p.kind, p.vlan, p.flow_key()),
        (Kind::Other(0x8100), Some(100), None)
    );
    assert_eq!(format_flow(&p), "ethertype 0x8100");
    assert!(!verify_l4_checksum(&f, &p));
    assert!(!decrement_ttl(&mut f, &p));
    let mut f = TCP4_SYN.to_vec();
    f[12..14].copy_from_slice(&[0x88, 0xcc]);
    let p = parse(&f).unwrap();
    assert_eq!(
        (p.kind, p.ethertype, p.l3_offset, p.l3_len),
        (Kind::Other(0x88cc), 0x88cc, 14, 40)
    );
}

/// Inserts 4 bytes of IPv4 options (NOPs) or an 8-byte IPv6 destination
/// options header between the IP header and the L4 header of a built
/// frame. L4 checksums stay valid (the pseudo-header length is the
/// upper-layer length).
fn with_l3_extras(f: &[u8], p: &Parsed) -> Vec<u8> {
    let l3 = p.l3_offset;
    let mut g = f[..p.l4_offset].to_vec();
    if p.is_ipv6() {
        g.extend_from_slice(&[p.proto, 0, 1, 4, 0, 0, 0, 0]);
        g[l3 + 6] = 60;
        let len = u16::from_be_bytes([g[l3 + 4], g[l3 + 5]]) + 8;
        g[l3 + 4..l3 + 6].copy_from_slice(&len.to_be_bytes());
    } else {
        g.extend_from_slice(&[1, 1, 1, 1]);
        g[l3] = 0x46;
        let len = u16::from_be_bytes([g[l3 + 2], g[l3 + 3]]) + 4;
        g[l3 + 2..l3 + 4].copy_from_slice(&len.to_be_bytes());
    }
    g.extend_from_slice(&f[p.l4_offset..]);
    if !p.is_ipv6() {
        Ipv4Packet::new_unchecked(&mut g[l3..]).fill_checksum();
    }
    g
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn rewrite_with_ipv4_options_and_ipv6_ext_headers(
        spec in arb_spec().prop_filter("ports or echo", |s| matches!(s.proto, 6 | 17) || is_echo(s)),
        new_src in any::<u128>(),
        nsport in any::<u16>(),
        ndport in any::<u16>(),
        padding in 0..8usize,
    ) {
        let f = build_frame(&spec);
        let p0 = parse(&f).unwrap();
        let mut g = with_l3_extras(&f, &p0);
        g.extend(std::iter::repeat_n(0u8, padding));
        let p = parse(&g).unwrap();
        prop_assert_eq!(p.l4_offset, p0.l4_offset + if p.is_ipv6() { 8 } else { 4 });
        prop_assert_eq!(p.flow_key(), p0.flow_key());
        prop_assert_eq!(p.l3_end() + padding, g.len());
        prop_assert!(verify_l4_checksum(&g, &p));
        let src = if p.is_ipv6() { IpAddr::V6(new_src.into()) } else { IpAddr::V4((new_src as u32).into()) };
        let dport = if is_echo(&spec) { nsport } else { ndport };
        let new = FlowKey { src, sport: nsport, dport, ..p.flow_key().unwrap() };
        rewrite(&mut g, &p, &new, L4Csum::Full).unwrap();
        let q = parse(&g).unwrap();
        prop_assert_eq!(q.flow_key(), Some(new));
        prop_assert!(verify_l4_checksum(&g, &q));
        prop_assert!(g[q.l3_end()..].iter().all(|b| *b == 0), "padding untouched");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The incremental TTL decrement writes what a full build writes.
    #[test]
    fn decrement_ttl_equals_a_full_checksum(
        src in any::<u32>(),
        dst in any::<u32>(),
        ttl in 2u8..=255,
        sport in any::<u16>(),
        payload in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let spec = FrameSpec {
            src: IpAddr::V4(src.into()),
            dst: IpAddr::V4(dst.into()),
            proto: 17,
            sport,
            dport: 53,
            ttl,
            payload,
            ..FrameSpec::default()
        };
        let mut f = build_frame(&spec);
        let p = parse(&f).unwrap();
        prop_assert!(decrement_ttl(&mut f, &p));
        prop_assert_eq!(f, build_frame(&FrameSpec { ttl: ttl - 1, ..spec }));
    }
}
