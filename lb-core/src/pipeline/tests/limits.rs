//! Listener limits: concurrent sessions across workers, new sessions per
//! second; open sessions unaffected.

use super::*;

fn limited(max_connections: Option<u32>, per_s: Option<u32>) -> Snapshot {
    let mut cfg = config();
    cfg.load_balancers[0].listeners[0].syn_proxy = SynProxyMode::Off;
    cfg.load_balancers[0].listeners[0].limits = ListenerLimits {
        max_connections,
        max_new_connections_per_s: per_s,
    };
    Snapshot::compile(cfg, 1)
}

fn syn_from(w: &mut Worker, snap: &Snapshot, sport: u16, now: Nanos) -> Verdict {
    let mut f = tcp_frame("198.18.0.2", "198.18.0.10", sport, 80, TCP_SYN);
    w.process(&mut f, RxInfo::default(), now, snap, &AllUp)
}

fn is_limit(v: &Verdict, kind: LimitKind) -> bool {
    matches!(v, Verdict::Drop(Reason::ListenerLimit { kind: k, .. }) if *k == kind)
}

#[test]
fn max_connections_refuses_new_sessions_not_open_ones() {
    let snap = limited(Some(3), None);
    let mut w = Worker::new(0, 1, 64, 64);
    for sport in 40000..40003 {
        let v = syn_from(&mut w, &snap, sport, 0);
        assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
    }
    let v = syn_from(&mut w, &snap, 40003, 0);
    assert!(is_limit(&v, LimitKind::MaxConnections), "{v:?}");
    assert_eq!(
        snap.describe(&match v {
            Verdict::Drop(r) => r,
            _ => unreachable!(),
        }),
        "listener_limit: alb-1:80 max_connections 3"
    );
    assert_eq!(w.stats.drops[DropKind::ListenerLimit as usize], 1);
    // Counted per listener too.
    assert_eq!(w.stats.listener_limited.at_mut((0, 0)).total, 1);
    // The open sessions go on: a retransmitted SYN and the handshake's ACK.
    let v = syn_from(&mut w, &snap, 40000, 0);
    assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
    let mut ack = tcp_frame("198.18.0.2", "198.18.0.10", 40001, 80, TCP_ACK);
    let v = w.process(&mut ack, RxInfo::default(), 0, &snap, &AllUp);
    assert!(
        !matches!(v, Verdict::Drop(Reason::ListenerLimit { .. })),
        "{v:?}"
    );
    // Sessions that end make room (unanswered ones time out).
    let later = 3600 * NANOS_PER_SEC;
    for _ in 0..64 {
        w.housekeep(later, &snap);
    }
    let v = syn_from(&mut w, &snap, 40010, later);
    assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
}

#[test]
fn max_connections_counts_every_worker() {
    let snap = limited(Some(4), None);
    let mut a = Worker::new(0, 2, 64, 64);
    let mut b = Worker::new(1, 2, 64, 64);
    for sport in 40000..40003 {
        assert!(!syn_from(&mut a, &snap, sport, 0).is_drop());
    }
    // Worker a publishes its three sessions between bursts.
    a.housekeep(0, &snap);
    assert!(!syn_from(&mut b, &snap, 41000, 0).is_drop());
    let v = syn_from(&mut b, &snap, 41001, 0);
    assert!(is_limit(&v, LimitKind::MaxConnections), "{v:?}");
    b.housekeep(0, &snap);
    let v = syn_from(&mut a, &snap, 40005, 0);
    assert!(is_limit(&v, LimitKind::MaxConnections), "{v:?}");
}

#[test]
fn new_sessions_per_second_are_a_token_bucket() {
    let snap = limited(None, Some(10));
    let mut w = Worker::new(0, 1, 256, 64);
    let mut sport = 40000;
    let mut burst = |w: &mut Worker, now: Nanos| {
        let mut n = 0;
        for _ in 0..30 {
            sport += 1;
            let v = syn_from(w, &snap, sport, now);
            if matches!(v, Verdict::Forward(_)) {
                n += 1;
            } else {
                assert!(is_limit(&v, LimitKind::MaxNewConnectionsPerS), "{v:?}");
            }
        }
        n
    };
    // The bucket starts empty and fills at the rate: one second in, ten.
    assert_eq!(burst(&mut w, NANOS_PER_SEC), 10);
    assert_eq!(burst(&mut w, NANOS_PER_SEC + NANOS_PER_SEC / 2), 5);
    assert_eq!(burst(&mut w, 10 * NANOS_PER_SEC), 10);
    // Two workers share the rate.
    let mut a = Worker::new(0, 2, 256, 64);
    assert_eq!(burst(&mut a, NANOS_PER_SEC), 5);
}
