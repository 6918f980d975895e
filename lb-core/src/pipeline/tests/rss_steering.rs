//! RSS steering: both directions of FULLNAT sessions reach their owner's
//! RX queue, through workers fed the way a NIC with RSS feeds them.

use std::sync::Arc;

use super::*;
use crate::nat::rss::tests::{default_reta, Rng};
use crate::nat::rss::{symmetric_key, RssSteering};

/// [`proxy_config`] (both families, no SYN proxy) with the backend's
/// subnets on a second port, "int".
fn config() -> Config {
    let mut cfg = proxy_config(SynProxyMode::Off, 1);
    let mut int_port = cfg.ports[0].clone();
    int_port.name = "int".into();
    let (ext, int): (Vec<IpNet>, Vec<IpNet>) = cfg.ports[0].addresses.iter().partition(|net| {
        net.contains(&addr("198.18.0.1")) || net.contains(&addr("2001:db8:18::1"))
    });
    cfg.ports[0].addresses = ext;
    int_port.addresses = int;
    cfg.ports.push(int_port);
    cfg
}

fn frame(key: &FlowKey, tcp_flags: u8) -> Vec<u8> {
    build_frame(&FrameSpec {
        src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
        src: key.src,
        dst: key.dst,
        proto: key.proto,
        sport: key.sport,
        dport: key.dport,
        tcp_flags,
        ttl: 64,
        ..FrameSpec::default()
    })
}

/// Opens `n` connections through `workers` workers, each frame
/// delivered to the worker whose RX queue the NIC's RSS picks, then
/// processed by the worker [`frame_owner_on`] names (a handoff when
/// the two differ): the client's SYN, then the backend's SYN-ACK.
/// With `steer`, the workers and the ownership know the ports' RSS.
/// Returns the handoffs of (client frames, backend replies).
fn connect_through_rss(workers: u16, n: u16, steer: bool) -> (usize, usize) {
    let snap = Snapshot::compile(config(), 1);
    let queue_workers: Vec<u16> = (0..workers).collect();
    let nic = Arc::new(
        RssSteering::new(
            &symmetric_key(40),
            &default_reta(128, workers),
            &queue_workers,
        )
        .expect("valid steering"),
    );
    let known = steer.then(|| nic.as_ref());
    let mut pool: Vec<Worker> = (0..workers)
        .map(|id| {
            let mut w = Worker::new(id, workers, 4096, 4096);
            if steer {
                w.set_port_rss(0, Some(nic.clone()));
                w.set_port_rss(1, Some(nic.clone()));
            }
            w
        })
        .collect();
    let mut rng = Rng(u64::from(workers));
    let mut handoffs = (0, 0);
    for i in 0..n {
        let v6 = i % 2 == 1;
        let host = rng.next() % 200 + 20;
        let (client, vip) = if v6 {
            (format!("2001:db8:18::{host:x}"), "2001:db8:18::10")
        } else {
            (format!("198.18.0.{host}"), "198.18.0.10")
        };
        let request = FlowKey {
            src: addr(&client),
            dst: addr(vip),
            proto: proto::TCP,
            sport: 1024 + i,
            dport: 80,
        };
        let mut syn = frame(&request, TCP_SYN);
        let p = packet::parse(&syn).expect("valid frame");
        let polled = nic.worker(&request).expect("a TCP flow");
        let owner = frame_owner_on(&snap, &syn, &p, workers, known).expect("a flow");
        handoffs.0 += usize::from(owner != polled);
        let w = &mut pool[usize::from(owner)];
        let v = w.process(&mut syn, on(0), 0, &snap, &AllUp);
        let Verdict::Forward(f) = v else {
            panic!("forwarded expected: {v:?}")
        };
        assert_eq!(f.hop.port, 1);

        let reply = f.out.reversed();
        let mut syn_ack = frame(&reply, TCP_SYN | TCP_ACK);
        let p = packet::parse(&syn_ack).expect("valid frame");
        let polled = nic.worker(&reply).expect("a TCP flow");
        let owner_of_reply = frame_owner_on(&snap, &syn_ack, &p, workers, known).expect("a flow");
        assert_eq!(owner_of_reply, owner, "the session's worker");
        handoffs.1 += usize::from(owner_of_reply != polled);
        let w = &mut pool[usize::from(owner_of_reply)];
        let v = w.process(&mut syn_ack, on(1), 1, &snap, &AllUp);
        let Verdict::Forward(back) = v else {
            panic!("forwarded expected: {v:?}")
        };
        assert_eq!(back.out, request.reversed());
    }
    handoffs
}

#[test]
fn rss_steering_puts_both_directions_of_fullnat_sessions_on_their_owner() {
    for workers in [2, 3, 4] {
        assert_eq!(
            connect_through_rss(workers, 2000, true),
            (0, 0),
            "{workers}"
        );
    }
}

#[test]
fn without_steering_frames_are_handed_over() {
    let (client, replies) = connect_through_rss(2, 2000, false);
    // About half of each direction lands on the other worker.
    assert!(client > 700 && client < 1300, "{client}");
    assert!(replies > 700 && replies < 1300, "{replies}");
}

/// A port without RSS: the local port still names the owner.
#[test]
fn ports_without_rss_keep_the_port_owner() {
    let snap = Snapshot::compile(config(), 1);
    let mut w = Worker::new(1, 2, 64, 64);
    w.set_port_rss(1, None);
    let request = FlowKey {
        src: addr("198.18.0.2"),
        dst: addr("198.18.0.10"),
        proto: proto::TCP,
        sport: 40000,
        dport: 80,
    };
    let mut syn = frame(&request, TCP_SYN);
    let Verdict::Forward(f) = w.process(&mut syn, on(0), 0, &snap, &AllUp) else {
        panic!("forwarded expected")
    };
    assert_eq!(crate::nat::port_owner(f.out.sport, 2), 1);
    assert_eq!(owner_on(&snap, &f.out.reversed(), 2, None), 1);
}

/// Replies to health probes (from a local address's probe ports) stay on
/// the worker RSS puts them on: any worker passes them to the checker.
#[test]
fn probe_replies_stay_where_rss_puts_them() {
    let snap = Snapshot::compile(config(), 1);
    let nic = RssSteering::new(&symmetric_key(40), &default_reta(128, 2), &[0, 1]).expect("valid");
    let mut on = [0usize; 2];
    for dport in crate::nat::PROBE_FIRST_PORT..crate::nat::PROBE_FIRST_PORT + 200 {
        let reply = FlowKey {
            src: addr("198.19.1.11"),
            dst: addr("198.19.1.250"),
            proto: proto::TCP,
            sport: 80,
            dport,
        };
        let w = nic.worker(&reply).expect("a TCP flow");
        assert_eq!(owner_on(&snap, &reply, 2, Some(&nic)), w);
        on[usize::from(w)] += 1;
        // Without RSS the port names the worker, as for sessions.
        assert_eq!(owner_on(&snap, &reply, 2, None), dport % 2);
    }
    assert!(on[0] > 50 && on[1] > 50, "{on:?}");
}
