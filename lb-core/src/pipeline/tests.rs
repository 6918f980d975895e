//! The pipeline's tests: a worker over a small configuration, frame by
//! frame and in bursts.

use super::*;
use crate::model::*;
use crate::packet::{build_frame, FrameSpec, MacAddr};

mod access_log;
mod cluster;
mod fragments;
mod icmp_ttl_mtu;
mod limits;
mod rss_steering;
mod servers;

fn addr(s: &str) -> IpAddr {
    s.parse().expect("address")
}

#[test]
fn flow_packs_ingress_pins_and_window_shifts_in_nibbles() {
    let mut f = Flow::routed(1);
    for port in 0..15u32 {
        let g = f.arrived_on(pin(Some(port)));
        assert!(g.pinned_to(Dir::Orig, port, 1), "{port}");
        assert!(!g.pinned_to(Dir::Reply, port, 1), "{port}");
        assert!(!g.pinned_to(Dir::Orig, port, 2), "another generation");
    }
    // From the 16th port on, never pinned: the full check every time.
    for port in [15u32, 16, 255, 1000] {
        let g = f.arrived_on(pin(Some(port)));
        assert!(!g.pinned_to(Dir::Orig, port, 1), "{port}");
        assert!(!g.pinned_to(Dir::Orig, 15, 1), "{port}");
    }
    f.set_pin(Dir::Reply, pin(Some(3)));
    f.set_pin(Dir::Orig, pin(Some(14)));
    assert!(f.pinned_to(Dir::Reply, 3, 1) && f.pinned_to(Dir::Orig, 14, 1));
    for backend in -8..=7i8 {
        for client in 0..=15i8 {
            f.set_shifts(backend, client);
            assert_eq!(f.shifts(), (backend, client));
        }
    }
    assert!(f.pinned_to(Dir::Reply, 3, 1), "shifts leave the pins alone");
}

#[test]
fn flow_holds_16_bit_indices_in_16_bytes() {
    assert_eq!(std::mem::size_of::<Flow>(), 16);
    let gen = (7u64 << 32) | 9;
    let f = Flow::listener_session((1, 2, 3, 65534), gen, true).expect("fits");
    assert_eq!(f.listener(), Some((1, 2, 3, 65534)));
    assert!(f.local_port && f.admitted_in(gen) && !f.admitted_in(gen + 1));
    let gone = Flow::listener_session((0, 0, 0, GONE), gen, false).expect("fits");
    assert_eq!(gone.listener(), Some((0, 0, 0, GONE)));
    for too_big in [
        (65535, 0, 0, 0),
        (0, 65535, 0, 0),
        (0, 0, 1 << 16, 0),
        (0, 0, 0, 65535),
    ] {
        assert_eq!(
            Flow::listener_session(too_big, gen, true),
            None,
            "{too_big:?}"
        );
    }
    let mut f = f;
    assert!(!f.set_listener((0, 0, 0, 70000)));
    assert_eq!(f.listener(), Some((1, 2, 3, 65534)), "unchanged");
    assert_eq!(Flow::routed(gen).listener(), None);
}

/// One load balancer with a TCP listener in front of one instance.
fn config() -> Config {
    let mut cfg = Config::default();
    cfg.ports.push(Port {
        name: "ext".into(),
        interface: Some("lb-ext".into()),
        dpdk_port: None,
        addresses: vec![
            "198.18.0.1/24".parse().expect("net"),
            "198.19.1.1/24".parse().expect("net"),
        ],
        source_check: SourceCheck::Strict,
        vlan: None,
        max_neighbors: Port::DEFAULT_MAX_NEIGHBORS,
        dpdk_rss: Default::default(),
        tap: None,
    });
    cfg.security_groups.push(SecurityGroup {
        id: "sg-web".into(),
        kind: GroupKind::Basic {
            internal_access: true,
        },
        rules: vec![],
    });
    cfg.subnets.push(Subnet {
        id: "vsw".into(),
        cidrs: vec!["198.19.1.0/24".parse().expect("net")],
        network_acl: None,
    });
    cfg.instances.push(Instance {
        id: "ecs01".into(),
        subnet: 0,
        addresses: vec![addr("198.19.1.11")],
        security_groups: vec![0],
    });
    cfg.server_groups.push(ServerGroup {
        id: "sgp".into(),
        scheduler: SchedulerKind::Wrr,
        health_check: HealthCheck::default(),
        slow_start_ms: 0,
        drain_timeout_ms: None,
        servers: vec![Server {
            name: "ecs01".into(),
            instance: Some(0),
            addresses: vec![addr("198.19.1.11")],
            port: 80,
            weight: 100,
            draining: false,
        }],
    });
    cfg.load_balancers.push(LoadBalancer {
        id: "alb-1".into(),
        vips: vec![addr("198.18.0.10")],
        security_groups: vec![],
        local_addresses: vec![addr("198.19.1.250")],
        listeners: vec![Listener {
            protocol: ListenerProtocol::Tcp,
            port: 80,
            server_group: 0,
            transfer_client_ip: false,
            acl: None,
            syn_proxy: SynProxyMode::Auto,
            syn_proxy_threshold: DEFAULT_SYN_PROXY_THRESHOLD,
            limits: ListenerLimits::default(),
            access_log: None,
        }],
    });
    cfg
}

fn syn(payload: &[u8]) -> Vec<u8> {
    tcp_frame_with("198.18.0.2", "198.18.0.10", 40000, 80, TCP_SYN, payload)
}

#[test]
fn session_counts_by_index_pairs() {
    let mut c = SessionCounts::default();
    assert_eq!(c.iter().count(), 0);
    c.at_mut((2, 5)).total += 1;
    c.at_mut((2, 5)).active += 1;
    c.at_mut((0, 1)).total += 3;
    assert!(c.get_mut((7, 0)).is_none());
    assert!(c.get_mut((2, 9)).is_none());
    c.get_mut((2, 5)).expect("counted").active -= 1;
    let all: Vec<_> = c.iter().map(|(k, v)| (k, v.active, v.total)).collect();
    assert_eq!(all, [((0, 1), 0, 3), ((2, 5), 0, 1)]);
    // An index beyond 16 bits never grows the table.
    c.at_mut((GONE, 0)).total += 1;
    c.at_mut((0, GONE)).total += 1;
    assert_eq!(c.iter().count(), 2);
    c.clear();
    assert_eq!(c.iter().count(), 0);
}

#[test]
fn staged_rule_sets_refine_with_the_same_verdicts() {
    use crate::model::{Direction, Peer, Rule};
    // 900 deny rules (each its /32 source and its port range), then the
    // seed's allow: the cross products leave a field out, so the
    // instance's ingress set starts staged.
    let mut cfg = config();
    for i in 0..900u16 {
        let src = std::net::Ipv4Addr::new(198, 18, 100 + (i / 250) as u8, (i % 250) as u8);
        cfg.security_groups[0].rules.push(Rule {
            direction: Direction::Ingress,
            action: Action::Deny,
            priority: 1,
            protocol: Some(6),
            ports: vec![PortRange {
                lo: 1000 + i * 7,
                hi: 1000 + i * 7 + i % 50,
            }],
            port_list: None,
            peer: Peer::Cidr(IpNet::from(IpAddr::V4(src))),
            local: None,
            source_ports: PortRange::ANY,
            description: String::new(),
            line: 0,
        });
    }
    let snap = Snapshot::compile(cfg, 1);
    let set = &snap.instance_policy(0).ingress;
    assert!(set.needs_refinement());
    let key = |i: u16, dport: u16| FlowKey {
        src: IpAddr::V4(std::net::Ipv4Addr::new(
            198,
            18,
            100 + (i / 250) as u8,
            (i % 250) as u8,
        )),
        dst: addr("198.19.1.11"),
        proto: 6,
        sport: 40000,
        dport,
    };
    let keys: Vec<FlowKey> = (0..900u16)
        .flat_map(|i| [key(i, 1000 + i * 7), key(i, 999 + i * 7), key(i, 80)])
        .collect();
    let before: Vec<_> = keys.iter().map(|k| set.evaluate(k)).collect();
    assert!(snap.refine() >= 1);
    assert!(snap.rule_sets().all(|r| !r.needs_refinement()));
    assert_eq!(snap.refine(), 0);
    let after: Vec<_> = keys.iter().map(|k| set.evaluate(k)).collect();
    assert_eq!(before, after);
    // Rule i matches its own source on its first port only; the rest
    // falls to the basic group's default.
    for (k, d) in keys.iter().zip(&after) {
        let d = d.expect("a decision");
        let first_port = k.dport >= 1000 && (k.dport - 1000) % 7 == 0;
        let by_rule = matches!(d.origin, Origin::SgRule { .. });
        assert_eq!(by_rule, first_port, "{k:?}: {d:?}");
    }
}

#[test]
fn session_table_bytes_is_what_a_worker_commits() {
    let w = Worker::new(0, 1, 1 << 16, 1 << 14);
    let proxy = syn_proxy::SEQ_BYTES_PER_SESSION;
    let want = (1u64 << 16) * (w.sessions.bytes_per_session(false) + proxy) as u64
        + (1u64 << 14) * (w.sessions.bytes_per_session(true) + proxy) as u64;
    assert_eq!(Worker::session_table_bytes(1 << 16, 1 << 14), want);
}

#[test]
fn fullnat_rewrite_keeps_checksums_valid() {
    let snap = Snapshot::compile(config(), 1);
    let mut w = Worker::new(0, 1, 16, 16);
    let mut frame = syn(b"hello");
    let v = w.process(&mut frame, RxInfo::default(), 0, &snap, &AllUp);
    let Verdict::Forward(f) = v else {
        panic!("forwarded expected: {v:?}")
    };
    assert_eq!(f.out.to_string(), "tcp 198.19.1.250:1025 > 198.19.1.11:80");
    let p = packet::parse(&frame).expect("valid after rewrite");
    assert!(packet::verify_l4_checksum(&frame, &p));
    assert_eq!(p.flow_key(), Some(f.out));
}

#[test]
fn local_ports_come_back_when_sessions_end() {
    let snap = Snapshot::compile(config(), 1);
    let local = addr("198.19.1.250");
    let mut w = Worker::new(0, 1, 16, 16);
    let mut frame = syn(b"");
    let v = w.process(&mut frame, RxInfo::default(), 0, &snap, &AllUp);
    assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
    assert_eq!(w.ports.users(local, 1025), 1);
    // Expired after the handshake timeout, reaped by housekeeping.
    for i in 0..4 {
        w.housekeep(secs(60.0) + i, &snap);
    }
    assert!(w.sessions.is_empty());
    assert_eq!(w.ports.users(local, 1025), 0);

    // A session ended by a reload that removes its listener.
    let mut frame = syn(b"");
    w.process(&mut frame, RxInfo::default(), secs(61.0), &snap, &AllUp);
    assert_eq!(w.ports.users(local, 1026), 1);
    let mut cfg = config();
    cfg.load_balancers[0].listeners[0].port = 8080;
    let next = Snapshot::compile(cfg, 2);
    w.housekeep(secs(62.0), &next);
    assert!(w.sessions.is_empty());
    assert_eq!(w.ports.users(local, 1026), 0);
}

/// A flood of handshakes that never complete: when the session table
/// (or the worker's share of local ports) is full, the oldest
/// half-open session makes room; established sessions stay.
#[test]
fn a_syn_flood_early_drops_half_open_sessions_not_established_ones() {
    let snap = Snapshot::compile(config(), 1);
    // 16 sessions; then 15 local ports (4000, 8000, ... 60000).
    for (workers, max_sessions, room) in [(1, 16, 15), (4000, 1024, 14)] {
        let mut w = Worker::new(0, workers, max_sessions, 16);
        let mut frame = syn(b"");
        let Verdict::Forward(f) = w.process(&mut frame, RxInfo::default(), 0, &snap, &AllUp) else {
            panic!("first SYN forwarded")
        };
        let lport = f.out.sport;
        let mut syn_ack = tcp_frame_with(
            "198.19.1.11",
            "198.19.1.250",
            80,
            lport,
            TCP_SYN | TCP_ACK,
            b"",
        );
        let v = w.process(&mut syn_ack, RxInfo::default(), 1, &snap, &AllUp);
        assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
        let mut ack = tcp_frame_with("198.18.0.2", "198.18.0.10", 40000, 80, TCP_ACK, b"");
        let v = w.process(&mut ack, RxInfo::default(), 2, &snap, &AllUp);
        assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
        assert_eq!(w.sessions.half_open(), 0);

        for i in 0..40u16 {
            let src = format!("198.18.7.{}", i + 1);
            let mut f = tcp_frame_with(&src, "198.18.0.10", 1000 + i, 80, TCP_SYN, b"");
            let v = w.process(&mut f, RxInfo::default(), 3 + u64::from(i), &snap, &AllUp);
            assert!(matches!(v, Verdict::Forward(_)), "SYN {i}: {v:?}");
        }
        assert_eq!(w.stats.early_drops, 40 - room, "{workers} workers");
        assert_eq!(w.sessions.half_open(), room as usize);
        // The established session still flows, both ways.
        let mut data = tcp_frame_with("198.18.0.2", "198.18.0.10", 40000, 80, TCP_ACK, b"x");
        let v = w.process(&mut data, RxInfo::default(), 50, &snap, &AllUp);
        assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
        let mut back = tcp_frame_with("198.19.1.11", "198.19.1.250", 80, lport, TCP_ACK, b"y");
        let v = w.process(&mut back, RxInfo::default(), 51, &snap, &AllUp);
        assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
        let active: u64 = w
            .stats
            .listener_sessions
            .iter()
            .map(|(_, c)| c.active)
            .sum();
        assert_eq!(active, 1 + room, "counts follow the dropped sessions");
    }
}

/// A TCP segment as a frame: `seg` and its payload, checksums valid.
fn segment(seg: &synproxy::Segment, payload: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; synproxy::SEGMENT_MAX];
    let n = synproxy::build_segment(seg, &mut buf);
    let mut f = buf[..n].to_vec();
    f.extend_from_slice(payload);
    let p = packet::parse(&f).expect("valid");
    match p.kind {
        packet::Kind::Ipv4 => {
            let len = (f.len() - 14) as u16;
            f[16..18].copy_from_slice(&len.to_be_bytes());
            f[24..26].fill(0);
            let c = packet::checksum::checksum(&f[14..34]);
            f[24..26].copy_from_slice(&c.to_be_bytes());
        }
        _ => {
            let len = (f.len() - 54) as u16;
            f[18..20].copy_from_slice(&len.to_be_bytes());
        }
    }
    fill_tcp_checksum(&mut f);
    f
}

/// Computes the TCP checksum of a frame from scratch.
fn fill_tcp_checksum(f: &mut [u8]) {
    let p = packet::parse(f).expect("valid");
    let at = p.l4_offset;
    f[at + 16..at + 18].fill(0);
    let l4 = f.len() - at;
    let ph = match (p.src, p.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => packet::checksum::pseudo_header_v4(s, d, 6, l4 as u16),
        (IpAddr::V6(s), IpAddr::V6(d)) => packet::checksum::pseudo_header_v6(s, d, 6, l4 as u32),
        _ => unreachable!("one family"),
    };
    let c = !packet::checksum::sum_with(ph, &f[at..]);
    f[at + 16..at + 18].copy_from_slice(&c.to_be_bytes());
}

fn seg(
    src: &str,
    dst: &str,
    ports: (u16, u16),
    seq: u32,
    ack: u32,
    flags: u8,
) -> synproxy::Segment {
    synproxy::Segment {
        src: addr(src),
        dst: addr(dst),
        sport: ports.0,
        dport: ports.1,
        seq,
        ack,
        flags,
        window: 1000,
        syn_options: None,
    }
}

/// The TCP header of a frame: (seq, ack, flags, window, options), and
/// whether its checksum holds.
fn tcp_of(frame: &[u8]) -> ((u32, u32, u8, u16, Vec<u8>), bool) {
    let p = packet::parse(frame).expect("valid");
    let t = packet::TcpPacket::new_checked(&frame[p.l4_offset..p.l3_end()]).expect("tcp");
    (
        (
            t.seq_number(),
            t.ack_number(),
            t.flags().0,
            t.window_len(),
            t.options().to_vec(),
        ),
        packet::verify_l4_checksum(frame, &p),
    )
}

fn proxy_config(mode: SynProxyMode, threshold: u32) -> Config {
    let mut cfg = config();
    cfg.load_balancers[0].vips.push(addr("2001:db8:18::10"));
    cfg.load_balancers[0]
        .local_addresses
        .push(addr("2001:db8:19:1::250"));
    cfg.ports[0]
        .addresses
        .push("2001:db8:18::1/64".parse().expect("net"));
    cfg.ports[0]
        .addresses
        .push("2001:db8:19:1::1/64".parse().expect("net"));
    cfg.subnets[0]
        .cidrs
        .push("2001:db8:19:1::/64".parse().expect("net"));
    cfg.instances[0].addresses.push(addr("2001:db8:19:1::11"));
    cfg.server_groups[0].servers[0]
        .addresses
        .push(addr("2001:db8:19:1::11"));
    let l = &mut cfg.load_balancers[0].listeners[0];
    l.syn_proxy = mode;
    l.syn_proxy_threshold = threshold;
    cfg
}

/// The whole life of a proxied connection, IPv4 and IPv6: the SYN is
/// answered with a cookie and opens nothing; the ACK carrying the cookie
/// opens the session with the proxy's SYN to the backend; the backend's
/// SYN-ACK is answered with an ACK; then sequence numbers (and SACK
/// blocks, and windows) are translated both ways with valid checksums.
#[test]
fn the_syn_proxy_answers_with_cookies_and_translates_sequence_numbers() {
    let snap = Snapshot::compile(proxy_config(SynProxyMode::On, 1), 1);
    for (client, vip, local, backend) in [
        ("198.18.0.2", "198.18.0.10", "198.19.1.250", "198.19.1.11"),
        (
            "2001:db8:18::2",
            "2001:db8:18::10",
            "2001:db8:19:1::250",
            "2001:db8:19:1::11",
        ),
    ] {
        let mut w = Worker::new(0, 1, 64, 64);
        w.set_cookie_secret(synproxy::CookieSecret::new([9; 16]));
        let now = secs(100.0);
        let isn = 0xffff_fff0u32; // wraps during the connection
        let mut s = seg(client, vip, (40000, 80), isn, 0, TCP_SYN);
        s.syn_options = Some((1460, Some(8), true));
        let mut syn = segment(&s, b"");
        let v = w.process(&mut syn, RxInfo::default(), now, &snap, &AllUp);
        let Verdict::Send(f) = v else {
            panic!("SYN-ACK expected: {v:?}")
        };
        assert_eq!(f.reason, Reason::SynCookie { lb: 0, listener: 0 });
        assert_eq!(
            f.out.to_string(),
            format!("tcp {} > {}", fmt_ep(vip, 80), fmt_ep(client, 40000))
        );
        assert!(w.sessions.is_empty(), "a SYN opens nothing");
        let ((cookie, ack, flags, _, opts), ok) = tcp_of(w.built(0));
        assert!(ok, "SYN-ACK checksum");
        assert_eq!((ack, flags), (isn.wrapping_add(1), TCP_SYN | TCP_ACK));
        let o = synproxy::parse_syn_options(&opts);
        assert_eq!((o.wscale, o.sack), (Some(synproxy::PROXY_WSCALE), true));

        // A wrong cookie opens nothing.
        let mut bad = segment(
            &seg(
                client,
                vip,
                (40000, 80),
                isn.wrapping_add(1),
                cookie.wrapping_add(1 << 24),
                TCP_ACK,
            ),
            b"",
        );
        let v = w.process(&mut bad, RxInfo::default(), now, &snap, &AllUp);
        // Answered with a RST, as a listener without the connection does.
        assert!(matches!(v, Verdict::Drop(Reason::NoSessionReset)), "{v:?}");
        assert_eq!(w.stats.syn_cookies_invalid, 1);

        // The right one, with data (dropped: the client sends it again).
        let c2b = |seq: u32, ack: u32, flags: u8| seg(client, vip, (40000, 80), seq, ack, flags);
        let mut ack3 = segment(
            &c2b(isn.wrapping_add(1), cookie.wrapping_add(1), TCP_ACK),
            b"GET",
        );
        let v = w.process(&mut ack3, RxInfo::default(), now + 1, &snap, &AllUp);
        let Verdict::Send(f) = v else {
            panic!("SYN to the backend expected: {v:?}")
        };
        assert_eq!(f.out.dst, addr(backend));
        assert_eq!(f.out.src, addr(local));
        let lport = f.out.sport;
        let ((seq, _, flags, _, opts), ok) = tcp_of(w.built(0));
        assert!(ok);
        assert_eq!((seq, flags), (isn, TCP_SYN));
        let o = synproxy::parse_syn_options(&opts);
        let mss = if addr(client).is_ipv6() { 1440 } else { 1460 };
        assert_eq!((o.mss, o.wscale, o.sack), (mss, Some(8), true));
        assert_eq!(w.sessions.len(), 1);
        assert_eq!(w.stats.syn_cookies_valid, 1);

        // Before the backend answers, the client's packets wait.
        let mut early = segment(
            &c2b(isn.wrapping_add(1), cookie.wrapping_add(1), TCP_ACK | 0x08),
            b"GET",
        );
        let v = w.process(&mut early, RxInfo::default(), now + 2, &snap, &AllUp);
        assert!(matches!(v, Verdict::Drop(Reason::SynProxyPending)), "{v:?}");

        // The backend's SYN-ACK (window scale 5) gets the ACK.
        let b_isn = 0x1234_5678u32;
        let b2l = |seq: u32, ack: u32, flags: u8| seg(backend, local, (80, lport), seq, ack, flags);
        let mut sa = b2l(b_isn, isn.wrapping_add(1), TCP_SYN | TCP_ACK);
        sa.syn_options = Some((1460, Some(5), true));
        let mut syn_ack = segment(&sa, b"");
        let v = w.process(&mut syn_ack, RxInfo::default(), now + 3, &snap, &AllUp);
        let Verdict::Send(f) = v else {
            panic!("ACK to the backend expected: {v:?}")
        };
        assert_eq!(
            (f.out.dst, f.out.dport, f.out.sport),
            (addr(backend), 80, lport)
        );
        let ((seq, ack, flags, _, _), ok) = tcp_of(w.built(0));
        assert!(ok);
        assert_eq!(
            (seq, ack, flags),
            (isn.wrapping_add(1), b_isn.wrapping_add(1), TCP_ACK | 0x08)
        );
        assert!(w.built(0).ends_with(b"GET"));
        assert_eq!(w.sessions.half_open(), 0, "established");
        // Without a held segment: a bare ACK.
        let mut w2 = Worker::new(0, 1, 64, 64);
        w2.set_cookie_secret(synproxy::CookieSecret::new([9; 16]));
        let mut ack3 = segment(
            &c2b(isn.wrapping_add(1), cookie.wrapping_add(1), TCP_ACK),
            b"",
        );
        let v = w2.process(&mut ack3, RxInfo::default(), now + 1, &snap, &AllUp);
        assert!(matches!(v, Verdict::Send(_)), "{v:?}");
        let lport2 = packet::parse(w2.built(0)).expect("valid").sport;
        let mut sa2 = b2l(b_isn, isn.wrapping_add(1), TCP_SYN | TCP_ACK);
        sa2.dport = lport2;
        let mut syn_ack = segment(&sa2, b"");
        let v = w2.process(&mut syn_ack, RxInfo::default(), now + 3, &snap, &AllUp);
        assert!(matches!(v, Verdict::Send(_)), "{v:?}");
        let ((seq, ack, flags, _, _), ok) = tcp_of(w2.built(0));
        assert!(ok);
        assert_eq!(
            (seq, ack, flags),
            (isn.wrapping_add(1), b_isn.wrapping_add(1), TCP_ACK)
        );

        // Client → backend: the acknowledgment and SACK blocks move
        // into the backend's space; the window goes through (both
        // sides scale).
        let offset = b_isn.wrapping_sub(cookie);
        let mut d = c2b(isn.wrapping_add(1), cookie.wrapping_add(1), TCP_ACK);
        d.window = 300;
        let mut data = segment(&d, b"GET / HTTP/1.1\r\n\r\n");
        let p = packet::parse(&data).expect("valid");
        // Turn the payload's first 12 bytes into options: NOP, NOP,
        // SACK with one block (cookie+100 .. cookie+200).
        let at = p.l4_offset;
        let mut sack = vec![1u8, 1, 5, 10];
        sack.extend_from_slice(&cookie.wrapping_add(100).to_be_bytes());
        sack.extend_from_slice(&cookie.wrapping_add(200).to_be_bytes());
        data[at + 20..at + 32].copy_from_slice(&sack);
        data[at + 12] = (32 / 4) << 4;
        fill_tcp_checksum(&mut data);
        let v = w.process(&mut data, RxInfo::default(), now + 4, &snap, &AllUp);
        let Verdict::Forward(f) = v else {
            panic!("forward expected: {v:?}")
        };
        assert_eq!(f.out.dst, addr(backend));
        let ((seq, ack, _, win, opts), ok) = tcp_of(&data);
        assert!(ok, "checksum after translation");
        assert_eq!(
            (seq, ack, win),
            (isn.wrapping_add(1), b_isn.wrapping_add(1), 300)
        );
        let rd = |i: usize| u32::from_be_bytes([opts[i], opts[i + 1], opts[i + 2], opts[i + 3]]);
        assert_eq!(
            (rd(4), rd(8)),
            (b_isn.wrapping_add(100), b_isn.wrapping_add(200))
        );
        let _ = offset;

        // Backend → client: the sequence number moves into the
        // cookie's space, the window from scale 5 to the proxy's 7.
        // (The client's segment carried 6 bytes after its options.)
        let mut r = b2l(b_isn.wrapping_add(1), isn.wrapping_add(7), TCP_ACK);
        r.window = 4000;
        let mut reply = segment(&r, b"HTTP/1.1 200 OK\r\n\r\n");
        let v = w.process(&mut reply, RxInfo::default(), now + 5, &snap, &AllUp);
        let Verdict::Forward(f) = v else {
            panic!("forward expected: {v:?}")
        };
        assert_eq!((f.out.src, f.out.dst), (addr(vip), addr(client)));
        let ((seq, ack, _, win, _), ok) = tcp_of(&reply);
        assert!(ok, "checksum after translation");
        assert_eq!(
            (seq, ack, win),
            (cookie.wrapping_add(1), isn.wrapping_add(7), 1000)
        );

        // Sequence tracking follows the backend's side of the
        // translation: blind resets from either side are dropped, and
        // the session's own FINs close it.
        use crate::conntrack::TcpState;
        const TCP_FIN: u8 = 0x01;
        let state = |w: &Worker| w.sessions.iter().next().and_then(|(_, s)| s.tcp_state());
        let blind_c = c2b(isn.wrapping_add(0x4000_0000), 0, TCP_RST);
        let blind_b = b2l(b_isn.wrapping_add(0x4000_0000), 0, TCP_RST);
        for blind in [blind_c, blind_b] {
            let mut rst = segment(&blind, b"");
            let v = w.process(&mut rst, RxInfo::default(), now + 6, &snap, &AllUp);
            assert!(matches!(v, Verdict::Drop(Reason::TcpOutOfWindow)), "{v:?}");
        }
        assert_eq!(state(&w), Some(TcpState::Established));
        let mut fin = segment(
            &c2b(
                isn.wrapping_add(7),
                cookie.wrapping_add(20),
                TCP_FIN | TCP_ACK,
            ),
            b"",
        );
        let v = w.process(&mut fin, RxInfo::default(), now + 7, &snap, &AllUp);
        assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
        assert_eq!(state(&w), Some(TcpState::FinWait));
        let mut fin = segment(
            &b2l(
                b_isn.wrapping_add(20),
                isn.wrapping_add(8),
                TCP_FIN | TCP_ACK,
            ),
            b"",
        );
        let v = w.process(&mut fin, RxInfo::default(), now + 8, &snap, &AllUp);
        assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
        assert_eq!(state(&w), Some(TcpState::Closed));
    }
}

fn fmt_ep(a: &str, port: u16) -> String {
    match addr(a) {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// Under "auto" the proxy engages at the threshold of half-open
/// sessions and disengages below half of it; "off" never answers
/// with a cookie and takes no ACK for one.
#[test]
fn an_auto_syn_proxy_engages_above_its_threshold() {
    let snap = Snapshot::compile(proxy_config(SynProxyMode::Auto, 4), 1);
    let mut w = Worker::new(0, 1, 64, 64);
    let syn_from = |i: u16| {
        let src = format!("198.18.0.{}", i + 100);
        segment(
            &seg(&src, "198.18.0.10", (1000 + i, 80), 7, 0, TCP_SYN),
            b"",
        )
    };
    let mut kinds = Vec::new();
    for i in 0..6u16 {
        let v = w.process(
            &mut syn_from(i),
            RxInfo::default(),
            secs(1.0),
            &snap,
            &AllUp,
        );
        assert!(!v.is_drop(), "{v:?}");
        kinds.push(matches!(v, Verdict::Send(_)));
    }
    // Four sessions, then cookies.
    assert_eq!(kinds, [false, false, false, false, true, true]);
    assert_eq!(w.sessions.half_open(), 4);
    // The handshake timeout is 5 s: at 6.5 s all four are gone, the
    // proxy disengages and the next SYN opens a session again.
    w.housekeep(secs(6.5), &snap);
    let v = w.process(
        &mut syn_from(9),
        RxInfo::default(),
        secs(6.5),
        &snap,
        &AllUp,
    );
    assert!(matches!(v, Verdict::Forward(_)), "{v:?}");

    // Off: no cookie, and an ACK with one finds no session.
    let snap_off = Snapshot::compile(proxy_config(SynProxyMode::Off, 4), 2);
    let mut w = Worker::new(0, 1, 8, 8);
    for i in 0..8u16 {
        let v = w.process(
            &mut syn_from(i),
            RxInfo::default(),
            secs(1.0),
            &snap_off,
            &AllUp,
        );
        assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
    }
    assert_eq!(w.stats.syn_cookies_sent, 0);
    let mut on = Worker::new(0, 1, 8, 8);
    let snap_on = Snapshot::compile(proxy_config(SynProxyMode::On, 4), 3);
    on.process(
        &mut syn_from(20),
        RxInfo::default(),
        secs(1.0),
        &snap_on,
        &AllUp,
    );
    let ((cookie, _, _, _, _), _) = tcp_of(on.built(0));
    let mut ack = segment(
        &seg(
            "198.18.0.120",
            "198.18.0.10",
            (1020, 80),
            8,
            cookie.wrapping_add(1),
            TCP_ACK,
        ),
        b"",
    );
    let mut ack2 = ack.clone();
    let v = w.process(&mut ack, RxInfo::default(), secs(1.0), &snap_off, &AllUp);
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    let v = on.process(&mut ack2, RxInfo::default(), secs(1.0), &snap_on, &AllUp);
    assert!(matches!(v, Verdict::Send(_)), "{v:?}");
}

/// A burst gives the verdicts, the rewritten frames and the counters
/// that the same frames give one by one: new connections, their later
/// packets, replies from the backend, a port without listener,
/// malformed frames, pings.
#[test]
fn a_burst_decides_as_frame_by_frame() {
    let snap = Snapshot::compile(config(), 1);
    let mut one = Worker::new(0, 1, 4096, 4096);
    let mut burst = Worker::new(0, 1, 4096, 4096);
    // Frames the caller parsed itself, as the data plane does.
    let mut pre = Worker::new(0, 1, 4096, 4096);
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut replies: Vec<Vec<u8>> = Vec::new();
    let mut now = secs(1.0);
    for _ in 0..150 {
        let n = 1 + next(64) as usize;
        let frames: Vec<Vec<u8>> = (0..n)
            .map(|_| {
                let sport = 1000 + next(300) as u16;
                match next(8) {
                    0 | 1 => tcp_frame_with("198.18.0.2", "198.18.0.10", sport, 80, TCP_SYN, b""),
                    2 | 3 => tcp_frame_with("198.18.0.2", "198.18.0.10", sport, 80, TCP_ACK, b"x"),
                    4 if !replies.is_empty() => {
                        replies[next(replies.len() as u64) as usize].clone()
                    }
                    5 => tcp_frame_with("198.18.0.2", "198.18.0.10", sport, 81, TCP_SYN, b""),
                    6 => syn(b"")[..20 + next(30) as usize].to_vec(),
                    _ => build_frame(&FrameSpec {
                        src: addr("198.18.0.2"),
                        dst: addr("198.18.0.10"),
                        proto: proto::ICMP,
                        sport,
                        ..FrameSpec::default()
                    }),
                }
            })
            .collect();
        let mut a = frames.clone();
        let va: Vec<String> = a
            .iter_mut()
            .map(|f| {
                format!(
                    "{:?}",
                    one.process(f, RxInfo::default(), now, &snap, &AllUp)
                )
            })
            .collect();
        let mut b = frames.clone();
        let mut batch: Vec<Frame<'_>> = b
            .iter_mut()
            .map(|f| Frame {
                data: &mut f[..],
                rx: RxInfo::default(),
            })
            .collect();
        let mut verdicts = [Verdict::Drop(Reason::NoSession); BURST_MAX];
        let done = burst.process_burst(&mut batch, now, &snap, &AllUp, &mut verdicts);
        assert_eq!(done, n);
        for (i, v) in verdicts[..n].iter().enumerate() {
            if let Verdict::Forward(f) = v {
                if f.backend.is_some() && frames[i][47] & TCP_SYN != 0 {
                    let o = f.out;
                    replies.push(tcp_frame_with(
                        &o.dst.to_string(),
                        &o.src.to_string(),
                        o.dport,
                        o.sport,
                        TCP_SYN | TCP_ACK,
                        b"",
                    ));
                }
            }
        }
        let vb: Vec<String> = verdicts[..n].iter().map(|v| format!("{v:?}")).collect();
        assert_eq!(va, vb);
        assert_eq!(a, b);
        let mut c = frames.clone();
        let parsed: Vec<_> = c
            .iter()
            .map(|f| {
                let mut p = crate::packet::Parsed::EMPTY;
                let r = crate::packet::parse_into(f, &mut p);
                (p, r)
            })
            .collect();
        let mut batch: Vec<Frame<'_>> = c
            .iter_mut()
            .map(|f| Frame {
                data: &mut f[..],
                rx: RxInfo::default(),
            })
            .collect();
        let mut verdicts = [Verdict::Drop(Reason::NoSession); BURST_MAX];
        let done = pre.process_parsed_burst(&mut batch, &parsed, now, &snap, &AllUp, &mut verdicts);
        assert_eq!(done, n);
        let vc: Vec<String> = verdicts[..n].iter().map(|v| format!("{v:?}")).collect();
        assert_eq!(va, vc);
        assert_eq!(a, c);
        now += secs(0.5);
        one.housekeep(now, &snap);
        burst.housekeep(now, &snap);
        pre.housekeep(now, &snap);
    }
    assert!(one.stats.sessions_created > 100, "{:?}", one.stats);
    assert!(one.stats.drops.iter().sum::<u64>() > 100);
    assert!(replies.len() > 100);
    let counters = |w: &Worker| {
        let t = &w.stats;
        let mut l: Vec<_> = t
            .listener_sessions
            .iter()
            .map(|(k, v)| (k, v.active, v.total))
            .collect();
        let mut s: Vec<_> = t
            .server_sessions
            .iter()
            .map(|(k, v)| (k, v.active, v.total))
            .collect();
        l.sort_unstable();
        s.sort_unstable();
        let c = (t.rx, t.forwarded, t.local, t.drops, t.sessions_created);
        (c, l, s, w.sessions.len())
    };
    assert_eq!(counters(&one), counters(&burst));
    assert_eq!(counters(&one), counters(&pre));
}

#[test]
fn partial_checksums_are_completed() {
    let snap = Snapshot::compile(config(), 1);
    let mut w = Worker::new(0, 1, 16, 16);
    let mut frame = syn(b"hello");
    // What veth hands over with tx offload on: the checksum field holds
    // only the folded pseudo-header sum.
    let p = packet::parse(&frame).expect("valid");
    let pseudo = crate::packet::checksum::pseudo_header_v4(
        "198.18.0.2".parse().expect("v4"),
        "198.18.0.10".parse().expect("v4"),
        proto::TCP,
        u16::try_from(p.l4_len).expect("small"),
    );
    let at = p.l4_offset + 16;
    frame[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
    assert!(!packet::verify_l4_checksum(&frame, &p));
    let v = w.process(
        &mut frame,
        RxInfo {
            csum_partial: true,
            ..RxInfo::default()
        },
        0,
        &snap,
        &AllUp,
    );
    assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
    let p = packet::parse(&frame).expect("valid");
    assert!(packet::verify_l4_checksum(&frame, &p), "checksum completed");
}

#[test]
fn malformed_frames_are_dropped_and_counted() {
    let snap = Snapshot::compile(config(), 1);
    let mut w = Worker::new(0, 1, 16, 16);
    let good = syn(b"");
    for cut in [0, 5, 13, 20, 33, 40] {
        let mut f = good[..cut].to_vec();
        let v = w.process(&mut f, RxInfo::default(), 0, &snap, &AllUp);
        assert!(
            matches!(v, Verdict::Drop(Reason::Malformed(_))),
            "cut at {cut}: {v:?}"
        );
    }
    assert_eq!(w.stats.drops[DropKind::Malformed as usize], 6);
    assert_eq!(w.stats.rx, 6);
}

#[test]
fn owner_is_the_same_for_both_directions_of_a_nat_flow() {
    let mut cfg = config();
    cfg.load_balancers[0].listeners[0].transfer_client_ip = true;
    let snap = Snapshot::compile(cfg, 1);
    for sport in 1000..1200u16 {
        let req = FlowKey {
            src: addr("198.18.0.2"),
            dst: addr("198.18.0.10"),
            proto: proto::TCP,
            sport,
            dport: 80,
        };
        let reply = FlowKey {
            src: addr("198.19.1.11"),
            dst: addr("198.18.0.2"),
            proto: proto::TCP,
            sport: 80,
            dport: sport,
        };
        assert_eq!(owner(&snap, &req, 4), owner(&snap, &reply, 4));
        // A FULLNAT reply names its worker by port.
        let fullnat = FlowKey {
            src: addr("198.19.1.11"),
            dst: addr("198.19.1.250"),
            proto: proto::TCP,
            sport: 80,
            dport: sport,
        };
        assert_eq!(owner(&snap, &fullnat, 4), sport % 4);
    }
}

fn tcp_frame(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    tcp_frame_with(src, dst, sport, dport, flags, &[0x55; 1200])
}

fn tcp_frame_with(
    src: &str,
    dst: &str,
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let d = FrameSpec::default();
    tcp_seg(src, dst, sport, dport, flags, d.tcp_seq, d.tcp_ack, payload)
}

/// A TCP segment with sequence numbers and a payload.
#[allow(clippy::too_many_arguments)]
fn tcp_seg(
    src: &str,
    dst: &str,
    sport: u16,
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    build_frame(&FrameSpec {
        src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
        src: addr(src),
        dst: addr(dst),
        proto: proto::TCP,
        sport,
        dport,
        tcp_flags: flags,
        tcp_seq: seq,
        tcp_ack: ack,
        ttl: 64,
        payload: payload.to_vec(),
        ..FrameSpec::default()
    })
}

/// An ICMP error from `router` about `original` (sent to its source).
fn error_about(original: &[u8], router: &str, icmp: (u8, u8), mtu: u32) -> Vec<u8> {
    let p = packet::parse(original).expect("valid");
    packet::build_icmp_error(
        original,
        &p,
        addr(router),
        icmp.0,
        icmp.1,
        mtu,
        MacAddr([2, 0, 0, 0, 0, 9]),
        MacAddr([2, 0, 0, 0, 0, 2]),
    )
    .expect("error built")
}

fn ipv4_header_ok(frame: &[u8], at: usize) -> bool {
    let ihl = usize::from(frame[at] & 0x0f) * 4;
    crate::packet::checksum::sum(&frame[at..at + ihl]) == 0xffff
}

#[test]
fn icmp_errors_about_a_fullnat_session_reach_the_other_end() {
    let mut cfg = config();
    cfg.ports[0]
        .addresses
        .push("2001:db8:18::1/64".parse().expect("net"));
    cfg.ports[0]
        .addresses
        .push("2001:db8:19:1::1/64".parse().expect("net"));
    let snap = Snapshot::compile(cfg, 1);
    let mut w = Worker::new(0, 1, 16, 16);
    let mut f = syn(b"");
    assert!(matches!(
        w.process(&mut f, RxInfo::default(), 0, &snap, &AllUp),
        Verdict::Forward(_)
    ));

    // A router near the client: "fragmentation needed" about the reply
    // the load balancer sent (VIP:80 > client:40000) goes to the backend
    // about the reply as the backend sent it.
    let reply_out = tcp_frame("198.18.0.10", "198.18.0.2", 80, 40000, 0x12);
    let mut err = error_about(&reply_out, "198.18.0.254", (3, 4), 1400);
    let v = w.process(&mut err, RxInfo::default(), 1, &snap, &AllUp);
    let Verdict::Forward(fw) = v else {
        panic!("forwarded expected: {v:?}")
    };
    assert_eq!(fw.reason, Reason::Related);
    assert_eq!(
        (fw.out.src, fw.out.dst),
        (addr("198.19.1.250"), addr("198.19.1.11"))
    );
    let p = packet::parse(&err).expect("valid");
    assert_eq!((p.src, p.dst), (addr("198.19.1.250"), addr("198.19.1.11")));
    assert!(packet::verify_l4_checksum(&err, &p), "ICMP checksum");
    assert!(ipv4_header_ok(&err, p.l3_offset), "outer header checksum");
    assert!(
        ipv4_header_ok(&err, p.l4_offset + 8),
        "quoted header checksum"
    );
    let q = packet::parse_icmp_inner(&err, &p).expect("quoted packet");
    assert_eq!(q.to_string(), "tcp 198.19.1.11:80 > 198.19.1.250:1025");

    // The backend's side: an error about what we sent it (local:1025 >
    // backend:80) goes to the client about the client's own packet.
    let to_backend = tcp_frame("198.19.1.250", "198.19.1.11", 1025, 80, 0x10);
    let mut err = error_about(&to_backend, "198.19.1.254", (3, 4), 1300);
    let v = w.process(&mut err, RxInfo::default(), 2, &snap, &AllUp);
    let Verdict::Forward(fw) = v else {
        panic!("forwarded expected: {v:?}")
    };
    assert_eq!(
        (fw.out.src, fw.out.dst),
        (addr("198.18.0.10"), addr("198.18.0.2"))
    );
    let p = packet::parse(&err).expect("valid");
    assert!(packet::verify_l4_checksum(&err, &p));
    let q = packet::parse_icmp_inner(&err, &p).expect("quoted packet");
    assert_eq!(q.to_string(), "tcp 198.18.0.2:40000 > 198.18.0.10:80");

    // An error quoting no session of ours is not forwarded.
    let stranger = tcp_frame("198.18.0.10", "198.18.0.7", 80, 41000, 0x12);
    let mut err = error_about(&stranger, "198.18.0.254", (3, 4), 1400);
    assert!(w
        .process(&mut err, RxInfo::default(), 3, &snap, &AllUp)
        .is_drop());

    // IPv6: "packet too big" from a router near an IPv6 client.
    let mut cfg6 = config();
    cfg6.ports[0].addresses = vec![
        "2001:db8:18::1/64".parse().expect("net"),
        "2001:db8:19:1::1/64".parse().expect("net"),
    ];
    cfg6.instances[0].addresses = vec![addr("2001:db8:19:1::11")];
    cfg6.server_groups[0].servers[0].addresses = vec![addr("2001:db8:19:1::11")];
    cfg6.load_balancers[0].vips = vec![addr("2001:db8:18::10")];
    cfg6.load_balancers[0].local_addresses = vec![addr("2001:db8:19:1::250")];
    cfg6.subnets[0].cidrs = vec!["2001:db8:19:1::/64".parse().expect("net")];
    let snap6 = Snapshot::compile(cfg6, 1);
    let mut w6 = Worker::new(0, 1, 16, 16);
    let mut s6 = tcp_frame("2001:db8:18::2", "2001:db8:18::10", 40000, 80, 0x02);
    assert!(matches!(
        w6.process(&mut s6, RxInfo::default(), 0, &snap6, &AllUp),
        Verdict::Forward(_)
    ));
    let reply6 = tcp_frame("2001:db8:18::10", "2001:db8:18::2", 80, 40000, 0x12);
    let mut err6 = error_about(&reply6, "2001:db8:18::fe", (2, 0), 1280);
    let v = w6.process(&mut err6, RxInfo::default(), 1, &snap6, &AllUp);
    let Verdict::Forward(fw) = v else {
        panic!("forwarded expected: {v:?}")
    };
    assert_eq!(fw.out.dst, addr("2001:db8:19:1::11"));
    let p = packet::parse(&err6).expect("valid");
    assert!(
        packet::verify_l4_checksum(&err6, &p),
        "ICMPv6 checksum with the new pseudo-header"
    );
    let q = packet::parse_icmp_inner(&err6, &p).expect("quoted packet");
    assert_eq!(
        q.to_string(),
        "tcp [2001:db8:19:1::11]:80 > [2001:db8:19:1::250]:1025"
    );
}

/// [`config`] with the backend subnet on a second port ("int") and
/// both ports under `check`; port "ext" has VLAN `ext_vlan`.
fn two_ports(check: SourceCheck, ext_vlan: Option<u16>) -> Snapshot {
    let mut cfg = config();
    let int = cfg.ports[0].addresses.pop().expect("the backend subnet");
    cfg.ports[0].source_check = check;
    cfg.ports[0].vlan = ext_vlan;
    cfg.ports.push(Port {
        name: "int".into(),
        interface: Some("lb-int".into()),
        dpdk_port: None,
        addresses: vec![int],
        source_check: check,
        vlan: None,
        max_neighbors: Port::DEFAULT_MAX_NEIGHBORS,
        dpdk_rss: Default::default(),
        tap: None,
    });
    Snapshot::compile(cfg, 1)
}

fn on(port: u32) -> RxInfo {
    RxInfo {
        port: Some(port),
        ..RxInfo::default()
    }
}

/// `frame` with its outer EtherType replaced by a tag (TPID `tpid`,
/// VLAN `vid`) in front of it.
fn tag(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

#[test]
fn sources_must_route_back_through_their_port() {
    // A backend-subnet source from the client link, the client from
    // the client link, and a source no route covers.
    let spoofed = || tcp_frame("198.19.1.12", "198.18.0.10", 40000, 80, TCP_SYN);
    let client = || tcp_frame("198.18.0.2", "198.18.0.10", 40001, 80, TCP_SYN);
    let unrouted = || tcp_frame("198.18.77.7", "198.18.0.10", 40002, 80, TCP_SYN);
    let verdict = |check, mut f: Vec<u8>, port| {
        let snap = two_ports(check, None);
        let mut w = Worker::new(0, 1, 1024, 1024);
        let v = w.process(&mut f, on(port), 0, &snap, &AllUp);
        (v, w.stats)
    };
    let (v, stats) = verdict(SourceCheck::Strict, spoofed(), 0);
    assert!(
        matches!(v, Verdict::Drop(Reason::SpoofedSource { port: 0 })),
        "{v:?}"
    );
    assert_eq!(stats.drops[DropKind::SpoofedSource as usize], 1);
    assert_eq!(stats.port_drops[0].spoofed_source, 1);
    assert_eq!(stats.port_drops[1], PortDrops::default());
    let snap = two_ports(SourceCheck::Strict, None);
    assert_eq!(
        snap.describe(&Reason::SpoofedSource { port: 0 }),
        "spoofed_source on port ext (source_check strict)"
    );
    // The same source from the port it routes through passes.
    assert!(!verdict(SourceCheck::Strict, spoofed(), 1).0.is_drop());
    assert!(!verdict(SourceCheck::Strict, client(), 0).0.is_drop());
    assert!(verdict(SourceCheck::Strict, client(), 1).0.is_drop());
    assert!(verdict(SourceCheck::Strict, unrouted(), 0).0.is_drop());
    // Loose: routable through some port.
    assert!(!verdict(SourceCheck::Loose, spoofed(), 0).0.is_drop());
    let (v, _) = verdict(SourceCheck::Loose, unrouted(), 0);
    assert!(
        matches!(v, Verdict::Drop(Reason::SpoofedSource { port: 0 })),
        "{v:?}"
    );
    // Off: anything.
    assert!(!verdict(SourceCheck::Off, unrouted(), 0).0.is_drop());
    // Unknown port (a caller without ports): no check.
    let snap = two_ports(SourceCheck::Strict, None);
    let mut w = Worker::new(0, 1, 1024, 1024);
    let v = w.process(&mut spoofed(), RxInfo::default(), 0, &snap, &AllUp);
    assert!(!v.is_drop(), "{v:?}");
}

#[test]
fn session_packets_from_another_link_are_dropped() {
    let snap = two_ports(SourceCheck::Strict, None);
    let mut w = Worker::new(0, 1, 1024, 1024);
    let mut f = tcp_frame("198.18.0.2", "198.18.0.10", 40000, 80, TCP_SYN);
    let Verdict::Forward(fwd) = w.process(&mut f, on(0), 0, &snap, &AllUp) else {
        panic!("the SYN is forwarded");
    };
    assert_eq!(fwd.hop.port, 1);
    let out = fwd.out;
    let reply = || {
        tcp_frame(
            "198.19.1.11",
            "198.19.1.250",
            out.dport,
            out.sport,
            TCP_SYN | TCP_ACK,
        )
    };
    let ack = || tcp_frame("198.18.0.2", "198.18.0.10", 40000, 80, TCP_ACK);
    // The reply from the backend link, then the client's ACK.
    assert!(!w.process(&mut reply(), on(1), 1, &snap, &AllUp).is_drop());
    assert!(!w.process(&mut ack(), on(0), 2, &snap, &AllUp).is_drop());
    // The client's 5-tuple injected from the backend link, the
    // backend's from the client link: both dropped, the session lives.
    let v = w.process(&mut ack(), on(1), 3, &snap, &AllUp);
    assert!(
        matches!(v, Verdict::Drop(Reason::SpoofedSource { port: 1 })),
        "{v:?}"
    );
    let v = w.process(&mut reply(), on(0), 4, &snap, &AllUp);
    assert!(
        matches!(v, Verdict::Drop(Reason::SpoofedSource { port: 0 })),
        "{v:?}"
    );
    assert!(!w.process(&mut ack(), on(0), 5, &snap, &AllUp).is_drop());
    assert!(!w.process(&mut reply(), on(1), 6, &snap, &AllUp).is_drop());
    assert_eq!(w.stats.port_drops[0].spoofed_source, 1);
    assert_eq!(w.stats.port_drops[1].spoofed_source, 1);
    // Under a new configuration the check runs again (routes may have
    // moved): with both ports loose, either link is accepted.
    let loose = two_ports(SourceCheck::Loose, None);
    let loose = Snapshot::compile(loose.cfg.clone(), 2);
    w.housekeep(7, &loose);
    assert!(!w.process(&mut ack(), on(1), 7, &loose, &AllUp).is_drop());
}

#[test]
fn tagged_frames_pass_only_on_their_vlan() {
    let syn = || tcp_frame("198.18.0.2", "198.18.0.10", 40000, 80, TCP_SYN);
    let run = |vlan: Option<u16>, mut f: Vec<u8>| {
        let snap = two_ports(SourceCheck::Strict, vlan);
        let mut w = Worker::new(0, 1, 1024, 1024);
        let v = w.process(&mut f, on(0), 0, &snap, &AllUp);
        (v, w.stats)
    };
    let mismatch = |v: Verdict| matches!(v, Verdict::Drop(Reason::VlanMismatch { port: 0 }));
    // An untagged port: no tag of any kind, QinQ included.
    let (v, stats) = run(None, tag(&syn(), 0x8100, 100));
    assert!(mismatch(v), "{v:?}");
    assert_eq!(stats.drops[DropKind::VlanMismatch as usize], 1);
    assert_eq!(stats.port_drops[0].vlan_mismatch, 1);
    assert!(mismatch(run(None, tag(&syn(), 0x88a8, 100)).0));
    assert!(mismatch(run(None, tag(&syn(), 0x8100, 0)).0));
    let qinq = tag(&tag(&syn(), 0x8100, 100), 0x88a8, 7);
    assert!(mismatch(run(None, qinq.clone()).0));
    assert!(!run(None, syn()).0.is_drop());
    // A port with vlan = 100: its tag only, once.
    assert!(!run(Some(100), tag(&syn(), 0x8100, 100)).0.is_drop());
    assert!(!run(Some(100), tag(&syn(), 0x8100, 0x6064)).0.is_drop());
    assert!(mismatch(run(Some(100), syn()).0));
    assert!(mismatch(run(Some(100), tag(&syn(), 0x8100, 200)).0));
    assert!(mismatch(run(Some(100), tag(&syn(), 0x88a8, 100)).0));
    assert!(mismatch(run(Some(100), qinq).0));
    let inner_q = tag(&tag(&syn(), 0x8100, 5), 0x8100, 100);
    assert!(mismatch(run(Some(100), inner_q).0));
    // ARP too.
    let arp = crate::packet::build_arp_request(
        MacAddr([2, 0, 0, 0, 0, 1]),
        "198.18.0.2".parse().expect("address"),
        "198.18.0.1".parse().expect("address"),
        None,
    );
    assert!(matches!(
        run(None, arp.clone()).0,
        Verdict::Local(LocalKind::Arp)
    ));
    assert!(mismatch(run(Some(100), arp.clone()).0));
    let tagged_arp = tag(&arp, 0x8100, 100);
    assert!(matches!(
        run(Some(100), tagged_arp).0,
        Verdict::Local(LocalKind::Arp)
    ));
    let snap = two_ports(SourceCheck::Strict, Some(100));
    assert_eq!(
        snap.describe(&Reason::VlanMismatch { port: 0 }),
        "vlan_mismatch on port ext (vlan 100)"
    );
    assert_eq!(
        snap.describe(&Reason::VlanMismatch { port: 1 }),
        "vlan_mismatch on port int (untagged)"
    );
}

#[test]
fn neighbour_discovery_is_not_source_checked() {
    let snap = two_ports(SourceCheck::Strict, None);
    let mut w = Worker::new(0, 1, 1024, 1024);
    // A neighbour solicitation from a link-local address (no route).
    let mut ns = build_frame(&FrameSpec {
        src: addr("fe80::1"),
        dst: addr("ff02::1:ff00:1"),
        proto: proto::ICMPV6,
        icmp: Some((135, 0)),
        ttl: 255,
        payload: vec![0; 20],
        ..FrameSpec::default()
    });
    let v = w.process(&mut ns, on(0), 0, &snap, &AllUp);
    assert!(matches!(v, Verdict::Local(LocalKind::Neighbor)), "{v:?}");
    // Other link-scoped traffic (a multicast listener report) is not
    // a spoof; a link-local source toward a global address is.
    let udp = |src: &str, dst: &str| {
        build_frame(&FrameSpec {
            src: addr(src),
            dst: addr(dst),
            proto: proto::UDP,
            sport: 5353,
            dport: 5353,
            ttl: 1,
            ..FrameSpec::default()
        })
    };
    for (src, dst) in [
        ("fe80::1", "ff02::16"),
        ("::", "ff02::fb"),
        ("fe80::1", "fe80::2"),
    ] {
        let v = w.process(&mut udp(src, dst), on(0), 0, &snap, &AllUp);
        assert!(
            !matches!(v, Verdict::Drop(Reason::SpoofedSource { .. })),
            "{src} > {dst}: {v:?}"
        );
    }
    let v = w.process(
        &mut udp("fe80::1", "2001:db8:19:1::11"),
        on(0),
        0,
        &snap,
        &AllUp,
    );
    assert!(
        matches!(v, Verdict::Drop(Reason::SpoofedSource { port: 0 })),
        "{v:?}"
    );
    let v = w.process(&mut udp("fe80::1", "ff05::2"), on(0), 0, &snap, &AllUp);
    assert!(
        matches!(v, Verdict::Drop(Reason::SpoofedSource { port: 0 })),
        "{v:?}"
    );
    // An echo request to our address from a spoofed source is dropped.
    let mut ping = build_frame(&FrameSpec {
        src: addr("198.19.1.12"),
        dst: addr("198.18.0.1"),
        proto: proto::ICMP,
        icmp: Some((8, 0)),
        ttl: 64,
        ..FrameSpec::default()
    });
    let v = w.process(&mut ping, on(0), 0, &snap, &AllUp);
    assert!(
        matches!(v, Verdict::Drop(Reason::SpoofedSource { port: 0 })),
        "{v:?}"
    );
}

#[test]
fn segments_without_a_session_are_answered_with_a_rate_limited_rst() {
    let mut cfg = config();
    cfg.dataplane.reset_unknown_rate = 10;
    let snap = Snapshot::compile(cfg.clone(), 1);
    let mut w = Worker::new(0, 1, 16, 16);
    let ack = |flags| tcp_frame_with("198.18.0.2", "198.18.0.10", 40000, 80, flags, b"data");
    let kind = |w: &mut Worker, flags, now| match w.process(
        &mut ack(flags),
        RxInfo::default(),
        now,
        &snap,
        &AllUp,
    ) {
        Verdict::Drop(r) => r,
        v => panic!("dropped expected: {v:?}"),
    };
    let t0 = 5 * NANOS_PER_SEC;
    // Ten a second: a burst of ten, then one per 100 ms.
    for _ in 0..10 {
        assert_eq!(kind(&mut w, TCP_ACK, t0), Reason::NoSessionReset);
    }
    assert_eq!(kind(&mut w, TCP_ACK, t0), Reason::NoSession);
    assert_eq!(
        kind(&mut w, TCP_ACK, t0 + NANOS_PER_SEC / 10),
        Reason::NoSessionReset
    );
    assert_eq!(
        kind(&mut w, TCP_ACK, t0 + NANOS_PER_SEC / 10),
        Reason::NoSession
    );
    // Never a RST for a RST.
    assert_eq!(
        kind(&mut w, TCP_RST, t0 + 9 * NANOS_PER_SEC),
        Reason::NoSession
    );
    assert_eq!(
        w.stats.drops[DropKind::NoSessionReset as usize],
        11,
        "counted"
    );
    // Off: only dropped.
    cfg.dataplane.reset_unknown = false;
    let off = Snapshot::compile(cfg, 2);
    let v = w.process(
        &mut ack(TCP_ACK),
        RxInfo::default(),
        20 * NANOS_PER_SEC,
        &off,
        &AllUp,
    );
    assert!(matches!(v, Verdict::Drop(Reason::NoSession)), "{v:?}");
}

#[test]
fn the_rst_follows_rfc_9293() {
    let my_mac = MacAddr([2, 0, 0, 0, 0, 9]);
    // The answer to a segment: its flow, flags, seq and ack, and MACs.
    let answer = |spec: FrameSpec| {
        let f = build_frame(&FrameSpec {
            sport: 40000,
            dport: 80,
            payload: vec![1; 5],
            ..spec
        });
        let p = packet::parse(&f).expect("parse");
        let rst = packet::build_tcp_reset(&f, &p, my_mac).expect("a RST");
        let q = packet::parse(&rst).expect("parse");
        assert!(packet::verify_l4_checksum(&rst, &q));
        let seg = packet::TcpPacket::new_checked(&rst[q.l4_offset..]).expect("tcp");
        let fields = (seg.flags().0, seg.seq_number(), seg.ack_number());
        (packet::format_flow(&q), fields, rst[0..12].to_vec())
    };
    // With ACK set: <SEQ=SEG.ACK><CTL=RST>.
    let (flow, fields, macs) = answer(FrameSpec {
        src: addr("198.18.0.2"),
        dst: addr("198.18.0.10"),
        tcp_flags: TCP_ACK,
        tcp_seq: 111,
        tcp_ack: 222,
        ..FrameSpec::default()
    });
    assert_eq!(flow, "tcp 198.18.0.10:80 > 198.18.0.2:40000");
    assert_eq!(fields, (TCP_RST, 222, 0));
    assert_eq!(macs, [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 9]);
    // Without ACK (a FIN and 5 bytes): <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>.
    let (_, fields, _) = answer(FrameSpec {
        src: addr("2001:db8:18::2"),
        dst: addr("2001:db8:18::10"),
        tcp_flags: 0x01,
        tcp_seq: u32::MAX - 2,
        ..FrameSpec::default()
    });
    assert_eq!(fields, (TCP_RST | TCP_ACK, 0, 3));
    // A RST is never answered.
    let f = tcp_frame_with("198.18.0.2", "198.18.0.10", 1, 80, TCP_RST, b"");
    let p = packet::parse(&f).expect("parse");
    assert!(packet::build_tcp_reset(&f, &p, my_mac).is_none());
}

/// A worker whose table holds `n` routed UDP sessions made at 0, all long
/// expired at the time returned, when the worker has housekept once.
fn expired_sessions(n: u32) -> (Snapshot, Worker, Nanos) {
    use crate::conntrack::Timeouts;
    let snap = Snapshot::compile(config(), 1);
    let mut w = Worker::new(0, 1, 4096, 1024);
    let t = 10_000 * NANOS_PER_SEC;
    w.housekeep(t, &snap);
    for n in 0..n {
        let key = FlowKey {
            src: IpAddr::from(std::net::Ipv4Addr::from(0xc612_0000 + n)),
            dst: addr("198.19.1.11"),
            proto: proto::UDP,
            sport: 1000,
            dport: 53,
        };
        w.sessions
            .insert(
                key,
                key.reversed(),
                Flow::routed(1),
                0,
                &Timeouts::default(),
            )
            .expect("room");
    }
    (snap, w, t)
}

#[test]
fn a_small_table_is_swept_by_calls_a_millisecond_apart() {
    // 171 sessions earn 0.171 slots a millisecond: the fractions add up,
    // so an idle worker calling every millisecond still expires them.
    let (snap, mut w, t) = expired_sessions(171);
    for i in 1..=3000 {
        w.housekeep(t + i * NANOS_PER_SEC / 1000, &snap);
    }
    assert_eq!(w.sessions.len(), 0, "expired sessions left after 3 s");
}

/// The expiry sweep walks the session table at a pace set by the time
/// that passes: a data plane calling `housekeep` between every burst (or
/// spinning while idle) does no more work than one calling it seldom.
#[test]
fn the_expiry_sweep_follows_time_not_calls() {
    // 4096 sessions made at 0: all long expired at `t`.
    let (snap, mut w, t) = expired_sessions(4096);
    // However many calls without time passing: nothing examined.
    for _ in 0..10_000 {
        w.housekeep(t, &snap);
    }
    assert_eq!(w.sessions.len(), 4096);
    // Ten calls a millisecond apart earn 40 slots: below a step.
    for i in 1..=10 {
        w.housekeep(t + i * NANOS_PER_SEC / 1000, &snap);
    }
    assert_eq!(w.sessions.len(), 4096);
    // Half a second: half the table.
    w.housekeep(t + NANOS_PER_SEC / 2, &snap);
    let left = w.sessions.len();
    assert!((2000..=2100).contains(&left), "{left} left after 0.5 s");
    // A second: the whole table once.
    w.housekeep(t + NANOS_PER_SEC, &snap);
    w.housekeep(t + 2 * NANOS_PER_SEC, &snap);
    assert_eq!(w.sessions.len(), 0);
}
