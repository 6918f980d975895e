//! Access-log records: a start and an end per session of a listener that
//! logs, each end with why, the packets and bytes of both directions.

use super::*;

/// The test configuration with an access log on its listener.
fn logging(on_start: bool) -> Config {
    let mut cfg = config();
    let l = &mut cfg.load_balancers[0].listeners[0];
    l.syn_proxy = SynProxyMode::Off;
    l.access_log = Some(AccessLog {
        path: "/var/log/lbd/alb-1.log".into(),
        format: AccessLogFormat::Json,
        on_start,
    });
    cfg
}

/// IP length of a frame (what the counters add).
fn ip_len(frame: &[u8]) -> u64 {
    packet::parse(frame).expect("valid").l3_len as u64
}

/// One TCP connection through the listener, client port `sport`.
struct Conn<'a> {
    w: &'a mut Worker,
    snap: &'a Snapshot,
    sport: u16,
    lport: u16,
    /// IP bytes sent by the client and by the backend.
    bytes: [u64; 2],
    packets: [u32; 2],
}

const FIN: u8 = 0x01;

impl<'a> Conn<'a> {
    /// SYN (client ISN 100), SYN-ACK (backend ISN 500), ACK.
    fn open(w: &'a mut Worker, snap: &'a Snapshot, sport: u16, now: Nanos) -> Conn<'a> {
        let mut c = Conn {
            w,
            snap,
            sport,
            lport: 0,
            bytes: [0; 2],
            packets: [0; 2],
        };
        let v = c.client(TCP_SYN, 100, 0, b"", now);
        let Verdict::Forward(f) = v else {
            panic!("SYN: {v:?}")
        };
        c.lport = f.out.sport;
        c.backend(TCP_SYN | TCP_ACK, 500, 101, b"", now + 1);
        c.client(TCP_ACK, 101, 501, b"", now + 2);
        c
    }

    fn client(&mut self, flags: u8, seq: u32, ack: u32, data: &[u8], now: Nanos) -> Verdict {
        let f = tcp_seg(
            "198.18.0.2",
            "198.18.0.10",
            self.sport,
            80,
            flags,
            seq,
            ack,
            data,
        );
        self.send(Dir::Orig, f, now)
    }

    fn backend(&mut self, flags: u8, seq: u32, ack: u32, data: &[u8], now: Nanos) -> Verdict {
        let (lport, backend) = (self.lport, "198.19.1.11");
        let f = tcp_seg(backend, "198.19.1.250", 80, lport, flags, seq, ack, data);
        self.send(Dir::Reply, f, now)
    }

    /// Sends `f`, which must be forwarded, and counts it for `dir`.
    fn send(&mut self, dir: Dir, mut f: Vec<u8>, now: Nanos) -> Verdict {
        let len = ip_len(&f);
        let v = self
            .w
            .process(&mut f, RxInfo::default(), now, self.snap, &AllUp);
        assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
        self.bytes[dir.index()] += len;
        self.packets[dir.index()] += 1;
        v
    }
}

fn records(w: &mut Worker) -> Vec<SessionRecord> {
    let mut out = Vec::new();
    w.take_session_records(|r| out.push(r));
    out
}

fn ends(w: &mut Worker) -> Vec<SessionRecord> {
    records(w)
        .into_iter()
        .filter(|r| matches!(r.kind, RecordKind::End(_)))
        .collect()
}

#[test]
fn a_closed_session_ends_with_fin_its_counters_and_times() {
    let snap = Snapshot::compile(logging(true), 1);
    let mut w = Worker::new(0, 1, 64, 64);
    let t0 = secs(10.0);
    let mut c = Conn::open(&mut w, &snap, 40000, t0);
    c.client(TCP_ACK, 101, 501, b"GET / HTTP/1.0\r\n\r\n", t0 + 3);
    c.backend(TCP_ACK, 501, 119, &[b'x'; 1000], t0 + 4);
    c.client(FIN | TCP_ACK, 119, 1501, b"", t0 + 5);
    c.backend(FIN | TCP_ACK, 1501, 120, b"", t0 + 6);
    let last = t0 + 7;
    c.client(TCP_ACK, 120, 1502, b"", last);
    let (bytes, packets, lport) = (c.bytes, c.packets, c.lport);

    let got = records(&mut w);
    assert_eq!(got.len(), 1, "only the start so far: {got:?}");
    let start = got[0];
    assert_eq!(start.kind, RecordKind::Start);
    assert_eq!((start.started, start.ended), (t0, t0));
    assert_eq!(start.packets, [1, 0], "the SYN");

    // The closed timeout (10 s) after the last packet, then the sweep.
    for i in 0..4 {
        w.housekeep(last + secs(11.0) + i * secs(1.0), &snap);
    }
    let got = records(&mut w);
    assert_eq!(got.len(), 1, "{got:?}");
    let r = got[0];
    assert_eq!(r.kind, RecordKind::End(EndReason::Fin));
    assert_eq!(r.generation, 1);
    assert_eq!((r.lb, r.listener, r.group, r.server), (0, 0, 0, 0));
    assert_eq!(r.server(), Some((0, 0)));
    assert_eq!(r.orig.src, addr("198.18.0.2"));
    assert_eq!(
        (r.orig.sport, r.orig.dst, r.orig.dport),
        (40000, addr("198.18.0.10"), 80)
    );
    assert_eq!((r.reply.src, r.reply.sport), (addr("198.19.1.11"), 80));
    assert_eq!((r.reply.dst, r.reply.dport), (addr("198.19.1.250"), lport));
    assert!(r.local_port);
    assert_eq!(r.packets, packets);
    assert_eq!(r.bytes, bytes);
    assert!(r.bytes[1] > 1000 && r.bytes[0] > 18, "{:?}", r.bytes);
    assert_eq!(r.tcp_state, Some(crate::conntrack::TcpState::Closed));
    assert_eq!((r.started, r.last_seen), (t0, last));
    assert_eq!(r.ended, last + snap.timeouts.closed, "when it expired");
    assert!((r.duration_s() - 7e-9).abs() < 1e-12);
    assert_eq!(w.session_records_dropped(), 0);
}

#[test]
fn a_reset_session_ends_with_rst() {
    let snap = Snapshot::compile(logging(false), 1);
    let mut w = Worker::new(0, 1, 64, 64);
    let mut c = Conn::open(&mut w, &snap, 40001, 0);
    c.backend(TCP_RST | TCP_ACK, 501, 101, b"", 10);
    assert!(records(&mut w).is_empty(), "no start records");
    w.housekeep(secs(30.0), &snap);
    w.housekeep(secs(31.0), &snap);
    let got = ends(&mut w);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].kind, RecordKind::End(EndReason::Rst));
    assert_eq!(got[0].packets, [2, 2]);
}

#[test]
fn idle_sessions_end_with_idle_timeout() {
    let snap = Snapshot::compile(logging(false), 1);
    let mut w = Worker::new(0, 1, 64, 64);
    let c = Conn::open(&mut w, &snap, 40002, 0);
    let bytes = c.bytes;
    // Established: the session timeout (910 s).
    w.housekeep(secs(900.0), &snap);
    assert!(ends(&mut w).is_empty(), "still open");
    w.housekeep(secs(912.0), &snap);
    w.housekeep(secs(913.0), &snap);
    let got = ends(&mut w);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].kind, RecordKind::End(EndReason::IdleTimeout));
    assert_eq!(
        got[0].tcp_state,
        Some(crate::conntrack::TcpState::Established)
    );
    assert_eq!(got[0].bytes, bytes);
    assert_eq!(got[0].ended, 2 + secs(910.0));
}

#[test]
fn a_reload_that_removes_the_listener_ends_its_sessions() {
    let snap = Snapshot::compile(logging(false), 1);
    let mut w = Worker::new(0, 1, 64, 64);
    Conn::open(&mut w, &snap, 40003, 0);
    let mut cfg = logging(false);
    cfg.load_balancers[0].listeners[0].port = 8080;
    let next = Snapshot::compile(cfg, 2);
    w.housekeep(secs(5.0), &next);
    let got = ends(&mut w);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].kind, RecordKind::End(EndReason::Reload));
    assert_eq!(
        got[0].generation, 1,
        "indices of the configuration it ran under"
    );
    assert_eq!(got[0].ended, secs(5.0));
}

#[test]
fn a_session_the_reloaded_rules_deny_ends_denied() {
    let snap = Snapshot::compile(logging(false), 1);
    let mut w = Worker::new(0, 1, 64, 64);
    let mut c = Conn::open(&mut w, &snap, 40004, 0);
    let lport = c.lport;
    c.client(TCP_ACK, 101, 501, b"x", 3);
    // The new configuration blacklists the client on the listener.
    let mut cfg = logging(false);
    cfg.prefix_lists.push(PrefixList {
        id: "pl-bad".into(),
        max_entries: 1,
        entries: vec!["198.18.0.2/32".parse().expect("net")],
    });
    cfg.load_balancers[0].listeners[0].acl = Some(ListenerAcl {
        mode: AclMode::Blacklist,
        prefix_list: 0,
    });
    let next = Snapshot::compile(cfg, 2);
    let mut back = tcp_seg(
        "198.19.1.11",
        "198.19.1.250",
        80,
        lport,
        TCP_ACK,
        501,
        102,
        b"y",
    );
    let v = w.process(&mut back, RxInfo::default(), secs(4.0), &next, &AllUp);
    assert!(v.is_drop(), "{v:?}");
    let got = ends(&mut w);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].kind, RecordKind::End(EndReason::Denied));
    assert_eq!(got[0].generation, 2, "remapped to the new configuration");
    assert_eq!(got[0].packets, [3, 1], "SYN, ACK, data; SYN-ACK");
    assert_eq!(got[0].ended, secs(4.0));
}

#[test]
fn early_dropped_half_open_sessions_are_logged() {
    let snap = Snapshot::compile(logging(false), 1);
    let mut w = Worker::new(0, 1, 16, 16);
    for i in 0..20u16 {
        let src = format!("198.18.7.{}", i + 1);
        let mut f = tcp_frame_with(&src, "198.18.0.10", 1000 + i, 80, TCP_SYN, b"");
        let v = w.process(&mut f, RxInfo::default(), u64::from(i), &snap, &AllUp);
        assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
    }
    let got = ends(&mut w);
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(w.stats.early_drops, 4);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.kind, RecordKind::End(EndReason::EarlyDrop));
        assert_eq!(r.orig.sport, 1000 + i as u16, "oldest first");
        assert_eq!(r.tcp_state, Some(crate::conntrack::TcpState::SynSent));
    }
}

#[test]
fn a_new_connection_on_a_closed_tuple_ends_the_old_one() {
    let snap = Snapshot::compile(logging(true), 1);
    let mut w = Worker::new(0, 1, 64, 64);
    let mut c = Conn::open(&mut w, &snap, 40005, 0);
    c.client(FIN | TCP_ACK, 101, 501, b"", 3);
    c.backend(FIN | TCP_ACK, 501, 102, b"", 4);
    c.client(TCP_ACK, 102, 502, b"", 5);
    let old = c.packets;
    records(&mut w);
    // Within the closed timeout, the same client port opens again.
    let mut syn = tcp_seg(
        "198.18.0.2",
        "198.18.0.10",
        40005,
        80,
        TCP_SYN,
        9000,
        0,
        b"",
    );
    let v = w.process(&mut syn, RxInfo::default(), secs(2.0), &snap, &AllUp);
    assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
    let got = records(&mut w);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].kind, RecordKind::End(EndReason::Fin));
    assert_eq!(got[0].packets, old);
    assert_eq!(got[0].ended, secs(2.0));
    assert_eq!(got[1].kind, RecordKind::Start);
    assert_eq!(got[1].started, secs(2.0));
    // A new session (scheduled afresh), its SYN counted.
    assert_eq!(
        got[1].packets,
        [1, 0],
        "the new connection's count starts over"
    );
}

#[test]
fn listeners_without_a_log_make_no_records_and_a_full_buffer_counts() {
    let snap = Snapshot::compile(config(), 1);
    let mut w = Worker::new(0, 1, 64, 64);
    Conn::open(&mut w, &snap, 40006, 0);
    w.housekeep(secs(1000.0), &snap);
    w.housekeep(secs(1001.0), &snap);
    assert!(w.sessions.is_empty());
    assert!(records(&mut w).is_empty());

    // More starts than the buffer holds, nobody taking them.
    let snap = Snapshot::compile(logging(true), 2);
    let n = SESSION_LOG_CAPACITY + 10;
    let mut w = Worker::new(0, 1, n, 16);
    for i in 0..n {
        let src = format!("198.18.7.{}", 1 + i / 60000);
        let port = 1024 + (i % 60000) as u16;
        let mut f = tcp_frame_with(&src, "198.18.0.10", port, 80, TCP_SYN, b"");
        w.process(&mut f, RxInfo::default(), 0, &snap, &AllUp);
    }
    assert_eq!(w.session_records_dropped(), 10);
    assert_eq!(records(&mut w).len(), SESSION_LOG_CAPACITY);
}

#[test]
fn counters_leave_the_session_slot_at_one_cache_line_pair() {
    // The counters fill the room the TCP window's line had left.
    assert_eq!(
        SessionTable::<Flow>::session_bytes(false),
        128 + 4 * 8 + 16,
        "an IPv4 session: 128-byte slot, index, half-open ring"
    );
    assert_eq!(SessionTable::<Flow>::session_bytes(true), 192 + 4 * 8 + 16);
}
