//! IP fragments: later fragments follow their first fragment's verdict
//! and translation; held, overlapping, denied and unmatched fragments.

use super::*;
use crate::packet::{fragment_frame, Ipv4Packet, Ipv6Packet};

/// `config()` with a UDP listener on port 53 (server ecs01:53) and IPv6
/// addresses for the VIP, the local address and the backend.
fn udp_config() -> Config {
    let mut cfg = config();
    for net in ["2001:db8:18::1/64", "2001:db8:19:1::1/64"] {
        cfg.ports[0].addresses.push(net.parse().expect("net"));
    }
    cfg.subnets[0]
        .cidrs
        .push("2001:db8:19:1::/64".parse().expect("net"));
    cfg.instances[0].addresses.push(addr("2001:db8:19:1::11"));
    cfg.server_groups.push(ServerGroup {
        id: "dns".into(),
        scheduler: SchedulerKind::Wrr,
        health_check: HealthCheck::default(),
        slow_start_ms: 0,
        drain_timeout_ms: None,
        servers: vec![Server {
            name: "ecs01".into(),
            instance: Some(0),
            addresses: vec![addr("198.19.1.11"), addr("2001:db8:19:1::11")],
            port: 53,
            weight: 100,
            draining: false,
        }],
    });
    let lb = &mut cfg.load_balancers[0];
    lb.vips.push(addr("2001:db8:18::10"));
    lb.local_addresses.push(addr("2001:db8:19:1::250"));
    let mut l = lb.listeners[0].clone();
    l.protocol = ListenerProtocol::Udp;
    l.port = 53;
    l.server_group = 1;
    lb.listeners.push(l);
    cfg
}

fn udp_datagram(src: &str, dst: &str, sport: u16, dport: u16, len: usize) -> Vec<u8> {
    build_frame(&FrameSpec {
        src: addr(src),
        dst: addr(dst),
        proto: proto::UDP,
        sport,
        dport,
        payload: (0..len).map(|i| (i % 251) as u8).collect(),
        ..FrameSpec::default()
    })
}

/// Puts fragments (as they left) back together into one frame, to check
/// the datagram the receiver reassembles.
fn reassemble(frags: &[Vec<u8>]) -> Vec<u8> {
    let mut parts: Vec<(usize, Vec<u8>, Vec<u8>)> = frags
        .iter()
        .map(|f| {
            let p = packet::parse(f).expect("a fragment parses");
            let l3 = &f[p.l3_offset..p.l3_end()];
            if p.is_ipv6() {
                let off = usize::from(u16::from_be_bytes([l3[42], l3[43]]) & 0xfff8);
                (off, f[..p.l3_offset + 48].to_vec(), l3[48..].to_vec())
            } else {
                let ip = Ipv4Packet::new_unchecked(l3);
                let hl = ip.header_len();
                let off = usize::from(ip.frag_offset());
                (off, f[..p.l3_offset + hl].to_vec(), l3[hl..].to_vec())
            }
        })
        .collect();
    parts.sort_by_key(|(off, _, _)| *off);
    let mut data = Vec::new();
    for (off, _, d) in &parts {
        assert_eq!(
            *off,
            data.len(),
            "fragments leave no gap and do not overlap"
        );
        data.extend_from_slice(d);
    }
    let mut out = parts[0].1.clone();
    let l3 = out.len() - if out[12] == 0x86 { 48 } else { 20 };
    if out[12] == 0x86 {
        // Drop the fragment header.
        let nh = out[l3 + 40];
        out.truncate(l3 + 40);
        out.extend_from_slice(&data);
        let mut ip = Ipv6Packet::new_unchecked(&mut out[l3..]);
        ip.set_next_header(nh.into());
        ip.set_payload_len(u16::try_from(data.len()).expect("fits"));
    } else {
        out.extend_from_slice(&data);
        let total = u16::try_from(out.len() - l3).expect("fits");
        let mut ip = Ipv4Packet::new_unchecked(&mut out[l3..]);
        ip.set_total_len(total);
        ip.set_frag(false, false, 0);
        ip.fill_checksum();
    }
    out
}

/// Runs `frags` through `w`, all forwarded; the reassembled datagram as it
/// left, and its 5-tuple.
fn forward_all(w: &mut Worker, snap: &Snapshot, frags: Vec<Vec<u8>>) -> (Vec<u8>, FlowKey) {
    let mut out = Vec::new();
    for mut f in frags {
        let v = w.process(&mut f, RxInfo::default(), 0, snap, &AllUp);
        assert!(matches!(v, Verdict::Forward(_)), "forwarded: {v:?}");
        out.push(f);
    }
    let whole = reassemble(&out);
    let p = packet::parse(&whole).expect("the reassembled datagram parses");
    assert!(
        packet::verify_l4_checksum(&whole, &p),
        "the first fragment's checksum update covers the datagram"
    );
    (whole, p.flow_key().expect("ip"))
}

#[test]
fn fragmented_datagrams_cross_a_fullnat_listener_both_ways() {
    let snap = Snapshot::compile(udp_config(), 1);
    let mut w = Worker::new(0, 1, 64, 64);
    for (client, vip, local, backend) in [
        ("198.18.0.2", "198.18.0.10", "198.19.1.250", "198.19.1.11"),
        (
            "2001:db8:18::2",
            "2001:db8:18::10",
            "2001:db8:19:1::250",
            "2001:db8:19:1::11",
        ),
    ] {
        let req = udp_datagram(client, vip, 40000, 53, 4000);
        let frags = fragment_frame(&req, 1500, 77);
        assert_eq!(frags.len(), 3);
        let (whole, out) = forward_all(&mut w, &snap, frags);
        assert_eq!(
            (out.src, out.dst, out.dport),
            (addr(local), addr(backend), 53)
        );
        let p = packet::parse(&whole).expect("parses");
        assert_eq!(p.l4_len, 4008, "the whole datagram arrived");

        // The reply, fragmented by the backend, goes back to the client.
        let reply = udp_datagram(backend, local, 53, out.sport, 4000);
        let (_, back) = forward_all(&mut w, &snap, fragment_frame(&reply, 1500, 78));
        assert_eq!(
            (back.src, back.sport, back.dst, back.dport),
            (addr(vip), 53, addr(client), 40000)
        );
    }
    assert_eq!(w.stats.fragments.first, 4);
    assert_eq!(w.stats.fragments.forwarded, 8);
    assert_eq!(w.stats.drops[DropKind::Fragment as usize], 0);
}

#[test]
fn a_fragment_before_its_first_is_held_then_released_or_dropped() {
    let snap = Snapshot::compile(udp_config(), 1);
    let mut w = Worker::new(0, 1, 64, 64);
    let req = udp_datagram("198.18.0.2", "198.18.0.10", 40000, 53, 3000);
    let mut frags = fragment_frame(&req, 1500, 9);
    let v = w.process(&mut frags[2], RxInfo::default(), 0, &snap, &AllUp);
    assert!(matches!(v, Verdict::Drop(Reason::FragmentHeld)), "{v:?}");
    let mut released = Vec::new();
    w.take_released(|f, _, r| released.push((f.to_vec(), r)));
    assert!(
        released.is_empty(),
        "nothing goes before its first fragment"
    );
    for f in &mut frags[..2] {
        let v = w.process(f, RxInfo::default(), 1_000_000, &snap, &AllUp);
        assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
    }
    w.take_released(|f, _, r| released.push((f.to_vec(), r)));
    assert_eq!(released.len(), 1);
    let Released::Forward(fwd) = released[0].1 else {
        panic!("forwarded: {:?}", released[0].1)
    };
    assert_eq!(fwd.out.dst, addr("198.19.1.11"));
    let all = vec![frags[0].clone(), frags[1].clone(), released[0].0.clone()];
    let whole = reassemble(&all);
    let p = packet::parse(&whole).expect("parses");
    assert!(packet::verify_l4_checksum(&whole, &p));
    assert_eq!(w.stats.fragments.held, 1);
    assert_eq!(w.stats.fragments.released, 1);

    // A fragment whose first never comes is dropped after hold_ms.
    let other = udp_datagram("198.18.0.2", "198.18.0.10", 40001, 53, 3000);
    let mut late = fragment_frame(&other, 1500, 10).remove(1);
    let v = w.process(&mut late, RxInfo::default(), 0, &snap, &AllUp);
    assert!(matches!(v, Verdict::Drop(Reason::FragmentHeld)), "{v:?}");
    w.housekeep(50_000_000, &snap);
    assert_eq!(w.stats.drops[DropKind::FragmentTimeout as usize], 0);
    w.housekeep(100_000_000, &snap);
    assert_eq!(w.stats.drops[DropKind::FragmentTimeout as usize], 1);
    w.take_released(|_, _, r| panic!("released {r:?}"));
}

#[test]
fn fragments_of_a_denied_first_fragment_never_pass() {
    let snap = Snapshot::compile(udp_config(), 1);
    let mut w = Worker::new(0, 1, 64, 64);
    // To the instance directly: its basic group denies ingress UDP.
    let d = udp_datagram("198.18.0.2", "198.19.1.11", 40000, 9999, 3000);
    let mut frags = fragment_frame(&d, 1500, 5);
    let v = w.process(&mut frags[0], RxInfo::default(), 0, &snap, &AllUp);
    assert!(matches!(v, Verdict::Drop(Reason::Policy(_))), "{v:?}");
    for f in &mut frags[1..] {
        let v = w.process(f, RxInfo::default(), 0, &snap, &AllUp);
        assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    }
    w.housekeep(1_000_000_000, &snap);
    w.take_released(|_, _, r| panic!("released {r:?}"));
    assert_eq!(w.stats.fragments.forwarded, 0);
    assert_eq!(w.stats.drops[DropKind::FragmentTimeout as usize], 2);
}

#[test]
fn overlapping_and_tiny_fragments_are_dropped() {
    let snap = Snapshot::compile(udp_config(), 1);
    let mut w = Worker::new(0, 1, 64, 64);
    // A TCP SYN in fragments of 8 bytes: the first cannot hold the header.
    let syn = tcp_frame_with("198.18.0.2", "198.18.0.10", 40000, 80, TCP_SYN, &[0; 32]);
    let mut tiny = fragment_frame(&syn, 28, 3);
    let v = w.process(&mut tiny[0], RxInfo::default(), 0, &snap, &AllUp);
    assert!(matches!(v, Verdict::Drop(Reason::Malformed(_))), "{v:?}");
    // Offset 8 would rewrite the TCP header's flags (RFC 1858).
    let v = w.process(&mut tiny[1], RxInfo::default(), 0, &snap, &AllUp);
    assert!(matches!(v, Verdict::Drop(Reason::FragmentOverlap)), "{v:?}");

    // A forwarded first fragment with a 20-byte TCP header: a later one at
    // offset 16 overlaps it.
    let mut big = fragment_frame(&syn, 20 + 48, 4);
    let v = w.process(&mut big[0], RxInfo::default(), 0, &snap, &AllUp);
    assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
    let mut overlap = fragment_frame(&syn, 20 + 16, 4).remove(1);
    let v = w.process(&mut overlap, RxInfo::default(), 0, &snap, &AllUp);
    assert!(matches!(v, Verdict::Drop(Reason::FragmentOverlap)), "{v:?}");
    assert_eq!(w.stats.drops[DropKind::FragmentOverlap as usize], 2);
    let v = w.process(&mut big[1], RxInfo::default(), 0, &snap, &AllUp);
    assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
}

#[test]
fn a_full_fragment_table_evicts_nothing() {
    let mut cfg = udp_config();
    cfg.dataplane.fragments.table = 8;
    let snap = Snapshot::compile(cfg, 1);
    let mut w = Worker::new(0, 1, 64, 64);
    let first = udp_datagram("198.18.0.2", "198.18.0.10", 40000, 53, 3000);
    let kept = fragment_frame(&first, 1500, 1);
    let mut f0 = kept[0].clone();
    assert!(!w
        .process(&mut f0, RxInfo::default(), 0, &snap, &AllUp)
        .is_drop());
    // A flood of first fragments of other datagrams.
    for id in 2..200 {
        let mut f = fragment_frame(&first, 1500, id).remove(0);
        w.process(&mut f, RxInfo::default(), 0, &snap, &AllUp);
    }
    assert!(w.stats.fragments.table_full > 0);
    assert!(w.fragment_state(0).0 <= 8);
    // The datagram that was there first still goes through.
    let mut f1 = kept[1].clone();
    let v = w.process(&mut f1, RxInfo::default(), 0, &snap, &AllUp);
    assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
    // Entries time out and make room again.
    let later = 2_000_000_001;
    let mut f = fragment_frame(&first, 1500, 500).remove(0);
    let full = w.stats.fragments.table_full;
    w.process(&mut f, RxInfo::default(), later, &snap, &AllUp);
    assert_eq!(w.stats.fragments.table_full, full);
}

#[test]
fn with_fragments_off_every_later_fragment_is_dropped() {
    let mut cfg = udp_config();
    cfg.dataplane.fragments.forward = false;
    let snap = Snapshot::compile(cfg, 1);
    let mut w = Worker::new(0, 1, 64, 64);
    let d = udp_datagram("198.18.0.2", "198.18.0.10", 40000, 53, 3000);
    let mut frags = fragment_frame(&d, 1500, 5);
    assert!(!w
        .process(&mut frags[0], RxInfo::default(), 0, &snap, &AllUp)
        .is_drop());
    let v = w.process(&mut frags[1], RxInfo::default(), 0, &snap, &AllUp);
    assert!(matches!(v, Verdict::Drop(Reason::Fragment)), "{v:?}");
}

#[test]
fn later_fragments_go_to_the_worker_of_their_first() {
    let snap = Snapshot::compile(udp_config(), 1);
    for workers in [2u16, 3] {
        for id in 0..32u32 {
            let sport = 40000 + u16::try_from(id).expect("small");
            let d = udp_datagram("198.18.0.2", "198.18.0.10", sport, 53, 3000);
            let frags = fragment_frame(&d, 1500, id);
            let whole = packet::parse(&d).expect("parses");
            let expect = frame_owner(&snap, &d, &whole, workers);
            // A later fragment before its first: no owner known.
            let p1 = packet::parse(&frags[1]).expect("parses");
            if id == 0 && workers == 2 {
                assert_eq!(frame_owner(&snap, &frags[1], &p1, workers), None);
            }
            let p0 = packet::parse(&frags[0]).expect("parses");
            assert_eq!(frame_owner(&snap, &frags[0], &p0, workers), expect);
            for f in &frags[1..] {
                let p = packet::parse(f).expect("parses");
                assert_eq!(frame_owner(&snap, f, &p, workers), expect);
            }
        }
    }
}

#[test]
fn a_fragment_held_by_the_wrong_worker_is_handed_to_its_owner() {
    let snap = Snapshot::compile(udp_config(), 1);
    let workers = 2;
    // A datagram whose flow worker 0 owns; worker 1 receives its second
    // fragment before the first one was handed out.
    let (_, frags) = (40000u16..)
        .map(|sport| {
            let d = udp_datagram("198.18.0.2", "198.18.0.10", sport, 53, 3000);
            let frags = fragment_frame(&d, 1500, u32::from(sport));
            (d, frags)
        })
        .find(|(d, _)| {
            let p = packet::parse(d).expect("parses");
            frame_owner(&snap, d, &p, workers) == Some(0)
        })
        .expect("some flow belongs to worker 0");
    let mut w1 = Worker::new(1, workers, 64, 64);
    let mut late = frags[1].clone();
    let v = w1.process(&mut late, RxInfo::default(), 0, &snap, &AllUp);
    assert!(matches!(v, Verdict::Drop(Reason::FragmentHeld)), "{v:?}");
    w1.housekeep(0, &snap);
    w1.take_released(|_, _, r| panic!("no owner known yet: {r:?}"));
    // The first fragment is handed to worker 0, which records it.
    let p0 = packet::parse(&frags[0]).expect("parses");
    assert_eq!(frame_owner(&snap, &frags[0], &p0, workers), Some(0));
    w1.housekeep(1_000_000, &snap);
    let mut given = Vec::new();
    w1.take_released(|f, _, r| given.push((f.to_vec(), r)));
    assert_eq!(given.len(), 1);
    assert!(matches!(given[0].1, Released::Owner(0)), "{:?}", given[0].1);
    assert_eq!(given[0].0, frags[1], "handed over as it came");
    // Worker 0 forwards it after the first fragment.
    let mut w0 = Worker::new(0, workers, 64, 64);
    let mut first = frags[0].clone();
    assert!(matches!(
        w0.process(&mut first, RxInfo::default(), 0, &snap, &AllUp),
        Verdict::Forward(_)
    ));
    let mut second = given[0].0.clone();
    let v = w0.process(&mut second, RxInfo::default(), 0, &snap, &AllUp);
    assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
}
