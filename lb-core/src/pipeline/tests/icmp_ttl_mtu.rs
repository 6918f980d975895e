//! ICMP errors that must fit the path of the packet they quote; TTL and
//! hop limit; source routes; the egress MTU.

use super::*;

/// `config()` with two more instances in the backend subnet (ecs02, ecs03,
/// members of the same group, so they may talk to each other) and IPv6
/// addresses on both sides.
fn three_backends() -> Config {
    let mut cfg = config();
    for net in ["2001:db8:18::1/64", "2001:db8:19:1::1/64"] {
        cfg.ports[0].addresses.push(net.parse().expect("net"));
    }
    cfg.subnets[0]
        .cidrs
        .push("2001:db8:19:1::/64".parse().expect("net"));
    cfg.instances[0].addresses.push(addr("2001:db8:19:1::11"));
    for (id, v4, v6) in [
        ("ecs02", "198.19.1.12", "2001:db8:19:1::12"),
        ("ecs03", "198.19.1.13", "2001:db8:19:1::13"),
    ] {
        cfg.instances.push(Instance {
            id: id.into(),
            subnet: 0,
            addresses: vec![addr(v4), addr(v6)],
            security_groups: vec![0],
        });
    }
    cfg
}

fn udp(src: &str, dst: &str, sport: u16, dport: u16, ttl: u8, len: usize) -> Vec<u8> {
    build_frame(&FrameSpec {
        src: addr(src),
        dst: addr(dst),
        proto: proto::UDP,
        sport,
        dport,
        ttl,
        payload: vec![0x5a; len],
        ..FrameSpec::default()
    })
}

fn process(w: &mut Worker, snap: &Snapshot, frame: &mut [u8]) -> Verdict {
    w.process(frame, RxInfo::default(), 0, snap, &AllUp)
}

fn dropped(v: Verdict) -> Reason {
    match v {
        Verdict::Drop(r) => r,
        other => panic!("drop expected: {other:?}"),
    }
}

#[test]
fn icmp_errors_must_fit_the_path_of_the_packet_they_quote() {
    let snap = Snapshot::compile(three_backends(), 1);
    for (a, b, c, d, router) in [
        (
            "198.18.0.2",
            "198.19.1.11",
            "198.19.1.12",
            "198.19.1.13",
            "198.19.1.254",
        ),
        (
            "2001:db8:18::2",
            "2001:db8:19:1::11",
            "2001:db8:19:1::12",
            "2001:db8:19:1::13",
            "2001:db8:19:1::fe",
        ),
    ] {
        let mut w = Worker::new(0, 1, 16, 16);
        // A routed session from ecs01 (b) to an outside host (a).
        let mut out = udp(b, a, 5353, 53, 64, 32);
        assert!(matches!(
            process(&mut w, &snap, &mut out),
            Verdict::Forward(_)
        ));
        let sent = udp(b, a, 5353, 53, 64, 32);
        let unreach = if addr(a).is_ipv6() { (1, 4) } else { (3, 3) };

        // From the quoted destination back to the sender: forwarded.
        let mut ok = error_about(&sent, a, unreach, 0);
        let v = process(&mut w, &snap, &mut ok);
        assert!(
            matches!(v, Verdict::Forward(f) if f.reason == Reason::Related && f.out.dst == addr(b)),
            "{v:?}"
        );

        // Another backend (c) speaking for the session, to a third one (d):
        // neither relayed to d nor to anyone else.
        let mut to_third = error_about(&sent, c, unreach, 0);
        rewrite_outer_dst(&mut to_third, d);
        assert_eq!(
            dropped(process(&mut w, &snap, &mut to_third)),
            Reason::IcmpErrorMismatch
        );
        // Another backend to the sender: c is on no path to a.
        let mut from_peer = error_about(&sent, c, unreach, 0);
        assert_eq!(
            dropped(process(&mut w, &snap, &mut from_peer)),
            Reason::IcmpErrorMismatch
        );
        // The quoted destination itself, to someone else than the sender.
        let mut elsewhere = error_about(&sent, a, unreach, 0);
        rewrite_outer_dst(&mut elsewhere, d);
        assert_eq!(
            dropped(process(&mut w, &snap, &mut elsewhere)),
            Reason::IcmpErrorMismatch
        );
        // A router behind the client's port (the one route covers both
        // links in this configuration): on the path.
        let mut from_router = error_about(&sent, router, unreach, 0);
        assert!(matches!(
            process(&mut w, &snap, &mut from_router),
            Verdict::Forward(_)
        ));
        assert_eq!(w.stats.drops[DropKind::IcmpErrorMismatch as usize], 3);
    }
}

#[test]
fn icmp_errors_about_listener_sessions_must_come_from_the_path() {
    let snap = Snapshot::compile(three_backends(), 1);
    let mut w = Worker::new(0, 1, 16, 16);
    let mut f = syn(b"");
    assert!(matches!(
        process(&mut w, &snap, &mut f),
        Verdict::Forward(_)
    ));
    // What the load balancer sent the backend: local:1025 > ecs01:80.
    let to_backend = tcp_frame("198.19.1.250", "198.19.1.11", 1025, 80, 0x02);
    // From the backend itself: translated for the client.
    let mut ok = error_about(&to_backend, "198.19.1.11", (3, 3), 0);
    let v = process(&mut w, &snap, &mut ok);
    assert!(
        matches!(v, Verdict::Forward(f) if f.out.dst == addr("198.18.0.2")),
        "{v:?}"
    );
    // From another backend: dropped.
    let mut forged = error_about(&to_backend, "198.19.1.12", (3, 3), 0);
    assert_eq!(
        dropped(process(&mut w, &snap, &mut forged)),
        Reason::IcmpErrorMismatch
    );
    // To an address other than the local one the session uses.
    let mut astray = error_about(&to_backend, "198.19.1.11", (3, 3), 0);
    rewrite_outer_dst(&mut astray, "198.19.1.13");
    assert_eq!(
        dropped(process(&mut w, &snap, &mut astray)),
        Reason::IcmpErrorMismatch
    );
    assert_eq!(
        snap.describe(&Reason::IcmpErrorMismatch),
        "icmp_error_mismatch"
    );
}

/// Sets the outer destination of an IPv4 or IPv6 frame and fixes the
/// checksums that cover it.
fn rewrite_outer_dst(frame: &mut [u8], dst: &str) {
    let p = packet::parse(frame).expect("valid");
    let key = FlowKey {
        dst: addr(dst),
        ..p.flow_key().expect("ip")
    };
    if p.is_ipv6() {
        let at = p.l3_offset + 24;
        let IpAddr::V6(d) = key.dst else { panic!("v6") };
        frame[at..at + 16].copy_from_slice(&d.octets());
        let p = packet::parse(frame).expect("valid");
        let l4 = p.l4_offset;
        frame[l4 + 2..l4 + 4].copy_from_slice(&[0, 0]);
        let body = &frame[l4..p.l3_end()];
        let pseudo =
            crate::packet::parse::pseudo_sum(p.src, p.dst, p.proto, body.len()).expect("v6");
        let c = !crate::packet::checksum::sum_with(pseudo, body);
        frame[l4 + 2..l4 + 4].copy_from_slice(&c.to_be_bytes());
    } else {
        let at = p.l3_offset + 16;
        let IpAddr::V4(d) = key.dst else { panic!("v4") };
        frame[at..at + 4].copy_from_slice(&d.octets());
        crate::packet::Ipv4Packet::new_unchecked(&mut frame[p.l3_offset..]).fill_checksum();
    }
}

#[test]
fn forwarded_packets_lose_a_hop_and_expire_here() {
    let snap = Snapshot::compile(three_backends(), 1);
    let mut w = Worker::new(0, 1, 16, 16);
    // Listener traffic: TTL 1 is dropped before any session or rewrite.
    let mut f = tcp_frame_with("198.18.0.2", "198.18.0.10", 40000, 80, TCP_SYN, b"");
    set_ttl(&mut f, 1);
    let before = f.clone();
    assert_eq!(dropped(process(&mut w, &snap, &mut f)), Reason::TtlExceeded);
    assert_eq!(
        f, before,
        "the frame is left as it came, for the error to quote"
    );
    assert_eq!(w.sessions.len(), 0);
    assert_eq!(w.stats.sessions_created, 0);
    // TTL 2 leaves with 1, its header checksum still right.
    set_ttl(&mut f, 2);
    assert!(matches!(
        process(&mut w, &snap, &mut f),
        Verdict::Forward(_)
    ));
    let p = packet::parse(&f).expect("valid after the rewrite");
    assert_eq!(p.ttl, 1);
    // Routed (an instance's egress), both families.
    for (inst, outside) in [
        ("198.19.1.11", "198.18.0.2"),
        ("2001:db8:19:1::11", "2001:db8:18::2"),
    ] {
        let mut f = udp(inst, outside, 4000, 53, 1, 16);
        assert_eq!(dropped(process(&mut w, &snap, &mut f)), Reason::TtlExceeded);
        let mut f = udp(inst, outside, 4001, 53, 64, 16);
        assert!(matches!(
            process(&mut w, &snap, &mut f),
            Verdict::Forward(_)
        ));
        assert_eq!(packet::parse(&f).expect("valid").ttl, 63);
    }
    assert_eq!(w.sessions.len(), 3);
    assert_eq!(w.stats.drops[DropKind::TtlExceeded as usize], 3);
}

fn set_ttl(frame: &mut [u8], ttl: u8) {
    let p = packet::parse(frame).expect("valid");
    if p.is_ipv6() {
        frame[p.l3_offset + 7] = ttl;
    } else {
        frame[p.l3_offset + 8] = ttl;
        crate::packet::Ipv4Packet::new_unchecked(&mut frame[p.l3_offset..]).fill_checksum();
    }
}

#[test]
fn source_routes_are_dropped_other_options_pass() {
    let snap = Snapshot::compile(three_backends(), 1);
    let mut w = Worker::new(0, 1, 16, 16);
    let lsrr = [0x83, 7, 4, 198, 19, 1, 12];
    let ssrr = [0x89, 7, 4, 198, 19, 1, 12];
    let record_route = [7, 7, 4, 0, 0, 0, 0];
    for opts in [&lsrr[..], &ssrr[..]] {
        for (dst, dport) in [("198.19.1.11", 53), ("198.18.0.10", 80)] {
            let mut f = udp("198.18.0.2", dst, 4000, dport, 64, 16);
            packet::add_ipv4_options(&mut f, opts);
            assert_eq!(dropped(process(&mut w, &snap, &mut f)), Reason::SourceRoute);
        }
    }
    let mut f = udp("198.19.1.11", "198.18.0.2", 4000, 53, 64, 16);
    packet::add_ipv4_options(&mut f, &record_route);
    assert!(matches!(
        process(&mut w, &snap, &mut f),
        Verdict::Forward(_)
    ));

    // IPv6: a routing header of type 0 (one address, segments left 1);
    // type 2 (mobility) passes.
    let mut rh0 = vec![0u8, 1, 0, 0, 0, 0];
    rh0.extend_from_slice(&addr_octets("2001:db8:19:1::12"));
    let mut f = udp("2001:db8:18::2", "2001:db8:19:1::11", 4000, 53, 64, 16);
    packet::add_ipv6_ext_header(&mut f, 43, &rh0);
    assert_eq!(dropped(process(&mut w, &snap, &mut f)), Reason::SourceRoute);
    let mut rh2 = rh0.clone();
    rh2[0] = 2;
    let mut f = udp("2001:db8:19:1::11", "2001:db8:18::2", 4001, 53, 64, 16);
    packet::add_ipv6_ext_header(&mut f, 43, &rh2);
    assert!(matches!(
        process(&mut w, &snap, &mut f),
        Verdict::Forward(_)
    ));
    assert_eq!(w.stats.drops[DropKind::SourceRoute as usize], 5);
    assert_eq!(DropKind::SourceRoute.as_str(), "ip_source_route");
}

fn addr_octets(s: &str) -> [u8; 16] {
    match addr(s) {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => panic!("v6 expected"),
    }
}

#[test]
fn packets_over_the_egress_mtu_are_dropped_before_a_session() {
    let snap = Snapshot::compile(three_backends(), 1);
    let mut w = Worker::new(0, 1, 16, 16);
    // Unknown MTU: not checked.
    let mut f = tcp_frame_with("198.18.0.2", "198.18.0.10", 40000, 80, TCP_SYN, &[0; 1360]);
    assert!(matches!(
        process(&mut w, &snap, &mut f),
        Verdict::Forward(_)
    ));
    w.set_port_mtu(0, 1280);
    // A 1400-byte SYN with DF to the listener, and a routed datagram.
    let mut f = tcp_frame_with("198.18.0.2", "198.18.0.10", 40001, 80, TCP_SYN, &[0; 1360]);
    let before = f.clone();
    let too_big = Reason::TooBig {
        mtu: 1280,
        df: true,
    };
    assert_eq!(dropped(process(&mut w, &snap, &mut f)), too_big);
    assert_eq!(f, before);
    let mut f = udp("198.19.1.11", "198.18.0.2", 4000, 53, 64, 1372);
    assert_eq!(dropped(process(&mut w, &snap, &mut f)), too_big);
    // IPv6 always.
    let mut f = udp("2001:db8:19:1::11", "2001:db8:18::2", 4000, 53, 64, 1352);
    assert_eq!(dropped(process(&mut w, &snap, &mut f)), too_big);
    assert_eq!(w.sessions.len(), 1, "only the session made before");
    // IPv4 without DF: not fragmented, dropped all the same.
    let mut f = udp("198.19.1.11", "198.18.0.2", 4001, 53, 64, 1372);
    let p = packet::parse(&f).expect("valid");
    f[p.l3_offset + 6] &= !0x40;
    crate::packet::Ipv4Packet::new_unchecked(&mut f[p.l3_offset..]).fill_checksum();
    let v = process(&mut w, &snap, &mut f);
    assert_eq!(
        dropped(v),
        Reason::TooBig {
            mtu: 1280,
            df: false
        }
    );
    // Exactly the MTU passes.
    let mut f = udp("198.19.1.11", "198.18.0.2", 4002, 53, 64, 1280 - 28);
    assert!(matches!(
        process(&mut w, &snap, &mut f),
        Verdict::Forward(_)
    ));
    // An established session's big packet is dropped, the session stays.
    let mut f = tcp_frame_with("198.18.0.2", "198.18.0.10", 40000, 80, 0x10, &[0; 1360]);
    assert_eq!(dropped(process(&mut w, &snap, &mut f)), too_big);
    let mut f = tcp_frame_with("198.18.0.2", "198.18.0.10", 40000, 80, 0x10, &[0; 100]);
    assert!(matches!(
        process(&mut w, &snap, &mut f),
        Verdict::Forward(_)
    ));
    assert_eq!(w.stats.drops[DropKind::PacketTooBig as usize], 5);
    assert_eq!(
        snap.describe(&too_big),
        "packet_too_big: over egress mtu 1280"
    );
    // The MTU rises again: the same packet passes.
    w.set_port_mtu(0, 1500);
    let mut f = udp("198.19.1.11", "198.18.0.2", 4003, 53, 64, 1372);
    assert!(matches!(
        process(&mut w, &snap, &mut f),
        Verdict::Forward(_)
    ));
}

#[test]
fn an_icmp_error_belongs_to_the_worker_of_the_session_it_quotes() {
    let snap = Snapshot::compile(three_backends(), 1);
    // A routed session (ecs01 > outside) and a listener session's packet
    // to its backend (local:1025 > ecs01:80), each quoted in an error from
    // the other end.
    let routed = udp("198.19.1.11", "198.18.0.2", 5000, 6000, 64, 8);
    let to_backend = tcp_frame("198.19.1.250", "198.19.1.11", 1025, 80, 0x02);
    for workers in [2u16, 3, 4, 8] {
        for (sent, from) in [(&routed, "198.18.0.2"), (&to_backend, "198.19.1.11")] {
            let err = error_about(sent, from, (3, 3), 0);
            let p = packet::parse(&err).expect("valid");
            // The worker of the session: the one its answers go to.
            let answer = packet::parse(sent)
                .expect("valid")
                .flow_key()
                .expect("ip")
                .reversed();
            assert_eq!(
                frame_owner(&snap, &err, &p, workers),
                Some(owner(&snap, &answer, workers)),
                "{workers} workers"
            );
        }
    }
}
