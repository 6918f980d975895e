//! Drain and slow start: a draining server takes no new session and keeps
//! its open ones until its deadline; weights follow what the data plane
//! publishes.

use super::*;
use std::cell::Cell;

/// Three servers (ecs01 and two by address) under `kind`.
fn three(kind: SchedulerKind, draining: [bool; 3]) -> Snapshot {
    let mut cfg = config();
    let g = &mut cfg.server_groups[0];
    g.scheduler = kind;
    for a in ["198.19.1.12", "198.19.1.13"] {
        g.servers.push(Server {
            name: format!("{a}:80"),
            instance: None,
            addresses: vec![addr(a)],
            port: 80,
            weight: 100,
            draining: false,
        });
    }
    for (s, d) in g.servers.iter_mut().zip(draining) {
        s.draining = d;
    }
    let l = &mut cfg.load_balancers[0].listeners[0];
    l.syn_proxy = SynProxyMode::Off;
    l.access_log = Some(AccessLog {
        path: "/var/log/lbd/alb-1.log".into(),
        format: AccessLogFormat::Json,
        on_start: false,
    });
    Snapshot::compile(cfg, 1)
}

/// What a data plane publishes: weights and deadlines, behind an epoch.
#[derive(Debug, Default)]
struct Board {
    epoch: Cell<u64>,
    weights: std::cell::RefCell<HashMap<(usize, usize), u32>>,
    close: std::cell::RefCell<HashSet<(usize, usize)>>,
}

impl Board {
    fn set(&self, server: usize, weight: u32) {
        self.weights.borrow_mut().insert((0, server), weight);
        self.epoch.set(self.epoch.get() + 1);
    }
    fn close(&self, server: usize) {
        self.close.borrow_mut().insert((0, server));
        self.epoch.set(self.epoch.get() + 1);
    }
}

impl Health for Board {
    fn is_up(&self, _: usize, _: usize) -> bool {
        true
    }
    fn servers_epoch(&self) -> u64 {
        self.epoch.get()
    }
    fn weight(&self, g: usize, s: usize) -> Option<u32> {
        self.weights.borrow().get(&(g, s)).copied()
    }
    fn must_close(&self, g: usize, s: usize) -> bool {
        self.close.borrow().contains(&(g, s))
    }
}

const KINDS: [SchedulerKind; 3] = [
    SchedulerKind::Wrr,
    SchedulerKind::Wlc,
    SchedulerKind::Maglev,
];

/// Opens a session from client port `sport`; the server it went to.
fn open(w: &mut Worker, snap: &Snapshot, h: &dyn Health, sport: u16) -> u32 {
    let mut f = tcp_frame("198.18.0.2", "198.18.0.10", sport, 80, TCP_SYN);
    match w.process(&mut f, RxInfo::default(), 0, snap, h) {
        Verdict::Forward(f) => f.backend.expect("listener session").1,
        v => panic!("{v:?}"),
    }
}

/// A client segment of the session from `sport`: the server it reaches.
fn follow(w: &mut Worker, snap: &Snapshot, h: &dyn Health, sport: u16) -> Verdict {
    let mut f = tcp_frame("198.18.0.2", "198.18.0.10", sport, 80, TCP_ACK);
    w.process(&mut f, RxInfo::default(), 0, snap, h)
}

#[test]
fn a_drained_server_takes_no_new_sessions_and_keeps_its_open_ones() {
    for kind in KINDS {
        let snap = three(kind, [false; 3]);
        let mut w = Worker::new(0, 1, 1024, 64);
        let board = Board::default();
        let mut on_1 = Vec::new();
        for sport in 20000..20090 {
            if open(&mut w, &snap, &board, sport) == 1 {
                on_1.push(sport);
            }
        }
        assert!(
            on_1.len() > 10,
            "{kind:?}: {} sessions on server 1",
            on_1.len()
        );
        // Drain server 1 (weight 0).
        board.set(1, 0);
        for sport in 30000..30300 {
            assert_ne!(open(&mut w, &snap, &board, sport), 1, "{kind:?}");
        }
        // Its sessions go on, to it.
        for &sport in &on_1 {
            match follow(&mut w, &snap, &board, sport) {
                Verdict::Forward(f) => {
                    assert_eq!(f.backend, Some((0, 1)), "{kind:?}");
                    assert_eq!(f.out.dst, addr("198.19.1.12"));
                }
                v => panic!("{kind:?}: {v:?}"),
            }
        }
        let active = |w: &mut Worker| w.stats.server_sessions.at_mut((0, 1)).active;
        w.take_session_records(|_| {});
        assert_eq!(active(&mut w), on_1.len() as u64);
        // The deadline: its sessions end, once, and are counted.
        board.close(1);
        w.follow_servers(&snap, &board, 7);
        assert_eq!(w.stats.drain_closed, on_1.len() as u64, "{kind:?}");
        // Their access-log records say why they ended.
        let mut ends = Vec::new();
        w.take_session_records(|r| ends.push(r));
        assert_eq!(ends.len(), on_1.len(), "{kind:?}");
        assert!(ends
            .iter()
            .all(|r| r.kind == RecordKind::End(EndReason::DrainDeadline) && r.ended == 7));
        assert_eq!(active(&mut w), 0);
        let v = follow(&mut w, &snap, &board, on_1[0]);
        assert!(
            matches!(v, Verdict::Drop(Reason::NoSession | Reason::NoSessionReset)),
            "{kind:?}: {v:?}"
        );
        // Other servers' sessions are untouched.
        assert!(matches!(
            follow(&mut w, &snap, &board, 30000),
            Verdict::Forward(_)
        ));
        board.set(2, 0); // a new epoch: server 1 is not walked again
        w.follow_servers(&snap, &board, 0);
        assert_eq!(w.stats.drain_closed, on_1.len() as u64);
    }
}

#[test]
fn draining_by_configuration_applies_at_reload_to_new_sessions_only() {
    for kind in KINDS {
        let snap = three(kind, [false; 3]);
        let mut w = Worker::new(0, 1, 1024, 64);
        let mut on_0 = Vec::new();
        for sport in 20000..20060 {
            if open(&mut w, &snap, &AllUp, sport) == 0 {
                on_0.push(sport);
            }
        }
        assert!(!on_0.is_empty());
        let mut next = three(kind, [true, false, false]);
        next.generation = 2;
        for sport in 30000..30200 {
            assert_ne!(open(&mut w, &next, &AllUp, sport), 0, "{kind:?}");
        }
        for &sport in &on_0 {
            match follow(&mut w, &next, &AllUp, sport) {
                Verdict::Forward(f) => assert_eq!(f.backend, Some((0, 0)), "{kind:?}"),
                v => panic!("{kind:?}: {v:?}"),
            }
        }
        // Every server draining: no server for a new session.
        let mut all = three(kind, [true; 3]);
        all.generation = 3;
        let mut f = tcp_frame("198.18.0.2", "198.18.0.10", 40000, 80, TCP_SYN);
        let v = w.process(&mut f, RxInfo::default(), 0, &all, &AllUp);
        assert!(
            matches!(v, Verdict::Drop(Reason::NoHealthyServer { .. })),
            "{v:?}"
        );
    }
}

#[test]
fn published_weights_set_the_shares_of_new_sessions() {
    for kind in KINDS {
        let snap = three(kind, [false; 3]);
        let mut w = Worker::new(0, 1, 8192, 64);
        let board = Board::default();
        // Server 2 ramping at a tenth of the others' weight.
        board.set(2, 1000);
        let mut counts = [0usize; 3];
        for sport in 10000..13000 {
            counts[open(&mut w, &snap, &board, sport) as usize] += 1;
        }
        let share = counts[2] as f64 / 3000.0;
        let want = 1000.0 / 21_000.0;
        assert!(
            (share - want).abs() < want * 0.3,
            "{kind:?}: {counts:?} share {share:.3}"
        );
        // A reload keeps what the board says (the worker applies it to the
        // new schedulers).
        let mut next = three(kind, [false; 3]);
        next.generation = 2;
        board.set(2, 0);
        for sport in 14000..14300 {
            assert_ne!(open(&mut w, &next, &board, sport), 2, "{kind:?}");
        }
    }
}

#[test]
fn a_syn_reusing_a_closed_session_is_scheduled_afresh() {
    for kind in KINDS {
        let snap = three(kind, [false; 3]);
        let mut w = Worker::new(0, 1, 1024, 64);
        let board = Board::default();
        let on_1: Vec<u16> = (20000..20100)
            .filter(|&sport| open(&mut w, &snap, &board, sport) == 1)
            .take(2)
            .collect();
        assert_eq!(on_1.len(), 2, "{kind:?}");
        // The client resets both (in the window: after its SYN): the
        // sessions are closed, their tuples free.
        for &sport in &on_1 {
            let mut rst = build_frame(&FrameSpec {
                src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
                dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
                src: addr("198.18.0.2"),
                dst: addr("198.18.0.10"),
                proto: proto::TCP,
                sport,
                dport: 80,
                tcp_flags: TCP_RST,
                // After the SYN and its 1200 bytes.
                tcp_seq: 1201,
                ttl: 64,
                ..FrameSpec::default()
            });
            let v = w.process(&mut rst, RxInfo::default(), 0, &snap, &board);
            assert!(matches!(v, Verdict::Forward(_)), "{kind:?}: {v:?}");
        }
        // A SYN reusing a tuple is a new session, scheduled afresh.
        let created = w.stats.sessions_created;
        let active = w.stats.server_sessions.at_mut((0, 1)).active;
        let again = open(&mut w, &snap, &board, on_1[0]);
        assert_eq!(
            w.stats.sessions_created,
            created + 1,
            "{kind:?}: a new session"
        );
        let active_1 = w.stats.server_sessions.at_mut((0, 1)).active;
        assert_eq!(active_1, active - u64::from(again != 1), "{kind:?}");
        // Drained: the reused tuple goes elsewhere.
        board.set(1, 0);
        assert_ne!(open(&mut w, &snap, &board, on_1[1]), 1, "{kind:?}");
        assert_eq!(w.stats.sessions_created, created + 2, "{kind:?}");
        assert_eq!(
            w.stats.server_sessions.at_mut((0, 1)).active,
            active_1 - 1,
            "{kind:?}: the old session went"
        );
    }
}
