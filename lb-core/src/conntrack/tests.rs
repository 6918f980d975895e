use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::tcp_flags::*;
use super::*;
use crate::NANOS_PER_SEC;

const S: Nanos = NANOS_PER_SEC;

fn key(proto: u8, n: u16) -> FlowKey {
    FlowKey {
        src: IpAddr::V4(Ipv4Addr::new(198, 51, 100, (n % 200) as u8)),
        dst: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)),
        proto,
        sport: 10_000 + n,
        dport: 80,
    }
}

/// The reply key after full NAT: backend → local address, port `n`.
fn nat_reply(proto: u8, n: u16) -> FlowKey {
    FlowKey {
        src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
        dst: IpAddr::V4(Ipv4Addr::new(10, 0, 255, 1)),
        proto,
        sport: 8080,
        dport: 1024 + n,
    }
}

fn table(cap: usize) -> SessionTable<u32> {
    SessionTable::with_seed(cap, 7)
}

#[test]
fn insert_lookup_both_directions() {
    let t0 = Timeouts::default();
    let mut t = table(16);
    let o = key(6, 1);
    let r = nat_reply(6, 1);
    let id = t.insert(o, r, 42, 0, &t0).expect("room");
    assert_eq!(t.len(), 1);
    assert_eq!(t.lookup(&o, 1), Some((id, Dir::Orig)));
    assert_eq!(t.lookup(&r, 1), Some((id, Dir::Reply)));
    assert_eq!(t.lookup(&o.reversed(), 1), None);
    assert!(t.contains_key(&o) && t.contains_key(&r));
    let s = t.get(id).expect("live");
    assert_eq!((s.orig(), s.reply(), s.payload), (&o, &r, &42));
    assert_eq!(s.tcp_state(), Some(TcpState::SynSent));
    *t.payload_mut(id).expect("live") = 43;
    assert_eq!(t.get(id).map(|s| *s.payload), Some(43));
    assert_eq!(t.payload(id), Some(&43));
    assert_eq!(t.key(id, Dir::Reply), Some(r));

    // IPv6, and a non-NAT reply (the reversed key).
    let o6 = FlowKey {
        src: IpAddr::V6(Ipv6Addr::LOCALHOST),
        dst: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        proto: 17,
        sport: 1,
        dport: 2,
    };
    let id6 = t.insert(o6, o6.reversed(), 6, 0, &t0).expect("room");
    assert_eq!(t.lookup(&o6.reversed(), 0), Some((id6, Dir::Reply)));
    assert_eq!(t.get(id6).and_then(|s| s.tcp_state()), None);
    t.check_invariants();
}

#[test]
fn duplicate_keys_rejected() {
    let t0 = Timeouts::default();
    let mut t = table(16);
    t.insert(key(6, 1), nat_reply(6, 1), 0, 0, &t0)
        .expect("room");
    assert_eq!(
        t.insert(key(6, 1), nat_reply(6, 2), 0, 0, &t0),
        Err(InsertError::KeyExists(Dir::Orig))
    );
    assert_eq!(
        t.insert(key(6, 2), nat_reply(6, 1), 0, 0, &t0),
        Err(InsertError::KeyExists(Dir::Reply))
    );
    // A session's own reply key used as another's orig key.
    assert_eq!(
        t.insert(nat_reply(6, 1), key(6, 9), 0, 0, &t0),
        Err(InsertError::KeyExists(Dir::Orig))
    );
    assert_eq!(
        t.insert(key(6, 3), key(6, 3), 0, 0, &t0),
        Err(InsertError::SameKeys)
    );
    assert_eq!(t.len(), 1);
    t.check_invariants();
}

#[test]
fn idle_timeout_boundary_and_refresh() {
    // Without the unreplied limit (see `unreplied_sessions_expire_early`).
    let t0 = Timeouts::default().with_unreplied(910);
    let mut t = table(4);
    let o = key(6, 1);
    let id = t.insert(o, nat_reply(6, 1), 1, 0, &t0).expect("room");
    // Mid-stream ACK: established, 910 s.
    assert!(t.update(id, Dir::Orig, Some(ACK), 0, &t0));
    assert_eq!(
        t.get(id).and_then(|s| s.tcp_state()),
        Some(TcpState::Established)
    );
    assert_eq!(t.get(id).map(|s| s.expires_at()), Some(910 * S));
    assert!(t.lookup(&o, 910 * S - 1_000_000).is_some()); // 909.999 s
    assert!(t.lookup(&o, 910 * S - 1).is_some());
    // A packet at 900 s pushes the expiry to 1810 s.
    assert!(t.update(id, Dir::Reply, Some(ACK), 900 * S, &t0));
    assert!(t.lookup(&o, 1810 * S - 1).is_some());
    assert_eq!(t.reaped_len(), 0);
    assert_eq!(t.lookup(&o, 1810 * S), None);
    assert_eq!(t.len(), 0);
    let reaped: Vec<_> = t.drain_reaped().collect();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].payload, 1);
    assert_eq!(reaped[0].last_seen(), 900 * S);
    assert!(t.get(id).is_none());
    assert!(!t.update(id, Dir::Orig, None, 1811 * S, &t0));
    t.check_invariants();
}

#[test]
fn exact_boundary_without_update() {
    let t0 = Timeouts::default().with_unreplied(910);
    let mut t = table(4);
    let o = key(17, 1);
    t.insert(o, nat_reply(17, 1), 1, 5, &t0).expect("room");
    assert!(t.lookup(&o, 5 + 910 * S - 1).is_some());
    assert!(t.lookup(&o, 5 + 910 * S).is_none());
}

#[test]
fn tcp_close_and_rst_shorten_timeout() {
    let t0 = Timeouts::default();
    let mut t = table(8);
    let o = key(6, 1);
    let r = nat_reply(6, 1);
    let id = t.insert(o, r, 1, 0, &t0).expect("room");
    t.update(id, Dir::Orig, Some(SYN), 0, &t0);
    assert_eq!(t.get(id).map(|s| s.expires_at()), Some(5 * S));
    t.update(id, Dir::Reply, Some(SYN | ACK), S, &t0);
    assert_eq!(
        t.get(id).and_then(|s| s.tcp_state()),
        Some(TcpState::SynRecv)
    );
    t.update(id, Dir::Orig, Some(ACK), 2 * S, &t0);
    assert_eq!(t.get(id).map(|s| s.expires_at()), Some(912 * S));
    t.update(id, Dir::Orig, Some(FIN | ACK), 3 * S, &t0);
    assert_eq!(
        t.get(id).and_then(|s| s.tcp_state()),
        Some(TcpState::FinWait)
    );
    assert_eq!(t.get(id).map(|s| s.expires_at()), Some(63 * S));
    assert!(t
        .get(id)
        .is_some_and(|s| s.fin_seen(Dir::Orig) && !s.fin_seen(Dir::Reply)));
    t.update(id, Dir::Reply, Some(FIN | ACK), 4 * S, &t0);
    t.update(id, Dir::Orig, Some(ACK), 5 * S, &t0);
    assert_eq!(
        t.get(id).and_then(|s| s.tcp_state()),
        Some(TcpState::Closed)
    );
    assert!(t.lookup(&r, 15 * S - 1).is_some());
    assert!(t.lookup(&r, 15 * S).is_none());

    let id = t
        .insert(key(6, 2), nat_reply(6, 2), 2, 100 * S, &t0)
        .expect("room");
    t.update(id, Dir::Orig, Some(ACK), 100 * S, &t0);
    t.update(id, Dir::Reply, Some(RST), 101 * S, &t0);
    assert_eq!(t.get(id).map(|s| s.expires_at()), Some(111 * S));
    assert_eq!(t.expire(110 * S, 10), 0);
    assert_eq!(t.expire(111 * S, 10), 1);
    let got: Vec<u32> = t.drain_reaped().map(|s| s.payload).collect();
    assert_eq!(got, [1, 2]);
}

#[test]
fn full_table_error_and_slot_reuse() {
    let t0 = Timeouts::default();
    let mut t = table(3);
    let ids: Vec<_> = (0..3)
        .map(|i| {
            t.insert(key(17, i), nat_reply(17, i), u32::from(i), 0, &t0)
                .expect("room")
        })
        .collect();
    assert_eq!(
        t.insert(key(17, 9), nat_reply(17, 9), 9, 0, &t0),
        Err(InsertError::Full { capacity: 3 })
    );
    assert_eq!(t.remove(ids[1]), Some(1));
    assert_eq!(t.remove(ids[1]), None);
    assert_eq!(t.reaped_len(), 0);
    let new = t
        .insert(key(17, 9), nat_reply(17, 9), 9, 0, &t0)
        .expect("room");
    assert_eq!(new.slot(), ids[1].slot());
    assert_ne!(new, ids[1]);
    assert!(t.get(ids[1]).is_none());
    assert_eq!(t.get(new).map(|s| *s.payload), Some(9));
    assert_eq!(t.lookup(&key(17, 1), 0), None);
    assert_eq!(t.lookup(&key(17, 9), 0), Some((new, Dir::Orig)));

    // An expired session's key is reclaimed by insert (and reaped).
    let late = 910 * S;
    let again = t
        .insert(key(17, 0), nat_reply(17, 0), 10, late, &t0)
        .expect("reclaimed");
    assert_eq!(t.drain_reaped().map(|s| s.payload).collect::<Vec<_>>(), [0]);
    assert_eq!(t.get(again).map(|s| *s.payload), Some(10));
    // Full again, though two are expired: insert does not sweep.
    assert!(matches!(
        t.insert(key(17, 20), nat_reply(17, 20), 0, late, &t0),
        Err(InsertError::Full { .. })
    ));
    assert_eq!(t.capacities(), [3, 3]);
    t.check_invariants();
}

#[test]
fn zero_capacity() {
    let mut t = table(0);
    assert!(matches!(
        t.insert(key(6, 0), nat_reply(6, 0), 0, 0, &Timeouts::default()),
        Err(InsertError::Full { capacity: 0 })
    ));
    assert_eq!(t.expire(0, 10), 0);
    assert_eq!(t.lookup(&key(6, 0), 0), None);
}

#[test]
fn expire_respects_budget_and_delivers_once() {
    let t0 = Timeouts::from_session_timeout(10);
    let mut t = table(1000);
    for i in 0..1000u16 {
        t.insert(key(17, i), nat_reply(17, i), u32::from(i), 0, &t0)
            .expect("room");
    }
    // Keep every 10th alive.
    for i in (0..1000u16).step_by(10) {
        let (id, _) = t.lookup(&key(17, i), 5 * S).expect("alive");
        t.update(id, Dir::Orig, None, 5 * S, &t0);
    }
    assert_eq!(t.expire(10 * S - 1, 1000), 0);
    let mut seen = vec![0u32; 1000];
    let mut calls = 0;
    loop {
        let n = t.expire(10 * S, 7);
        assert!(n <= 7);
        let drained: Vec<_> = t.drain_reaped().collect();
        assert_eq!(drained.len(), n);
        for s in drained {
            seen[s.payload as usize] += 1;
        }
        calls += 1;
        if n == 0 && t.len() == 100 {
            break;
        }
        assert!(calls < 1000, "sweep does not progress");
    }
    for (i, &c) in seen.iter().enumerate() {
        assert_eq!(c, u32::from(i % 10 != 0), "payload {i}");
    }
    // Lookups of the reaped find nothing and reap nothing again.
    assert_eq!(t.lookup(&key(17, 1), 10 * S), None);
    assert_eq!(t.reaped_len(), 0);
    t.check_invariants();
    // The rest go at 15 s.
    let mut total = 0;
    for _ in 0..100 {
        total += t.expire(15 * S, 3);
    }
    assert_eq!(total, 100);
    assert!(t.is_empty());
    assert_eq!(t.drain_reaped().count(), 100);
}

#[test]
fn expire_scan_is_bounded() {
    let t0 = Timeouts::default().with_unreplied(910);
    let mut t = table(1000);
    for i in 0..1000u16 {
        t.insert(key(17, i), nat_reply(17, i), 0, 0, &t0)
            .expect("room");
    }
    // Only the last slot is expired-looking after an update pattern: make
    // all but slot 999 live long.
    for i in 0..999u16 {
        let (id, _) = t.lookup(&key(17, i), 0).expect("alive");
        t.update(id, Dir::Orig, None, 100 * S, &t0);
    }
    // One budget unit scans 32 slots: 999 slots take ~32 calls to reach it.
    let mut calls = 0;
    while t.expire(910 * S, 1) == 0 {
        calls += 1;
    }
    assert_eq!(calls, 999 / EXPIRE_SCAN_PER_BUDGET);
}

#[test]
fn retain_and_iter() {
    let t0 = Timeouts::default();
    let mut t = table(10);
    for i in 0..10u16 {
        t.insert(key(6, i), nat_reply(6, i), u32::from(i), 0, &t0)
            .expect("room");
    }
    assert_eq!(t.iter().count(), 10);
    t.retain(|_, s| *s.payload % 2 == 0);
    assert_eq!(t.len(), 5);
    let mut gone: Vec<u32> = t.drain_reaped().map(|s| s.payload).collect();
    gone.sort_unstable();
    assert_eq!(gone, [1, 3, 5, 7, 9]);
    assert!(t
        .iter()
        .all(|(id, s)| s.payload % 2 == 0 && t.get(id).is_some()));
    t.check_invariants();
}

#[test]
fn memory_per_session() {
    // An IPv4 session is two cache lines with a 16-byte payload and the
    // 28-byte TCP window, an IPv6 one three; the index adds two 8-byte
    // buckets per session at a load of 1/2, whatever the capacity, and the
    // half-open ring 16 bytes.
    assert_eq!(std::mem::size_of::<TcpWindow>(), 28);
    assert_eq!(std::mem::size_of::<Slot<Ipv4Addr, [u32; 4]>>(), 128);
    assert_eq!(std::mem::size_of::<Slot<Ipv6Addr, [u32; 4]>>(), 192);
    assert_eq!(std::mem::align_of::<Slot<Ipv4Addr, [u32; 4]>>(), 64);
    for cap in [1 << 20, 3 << 19, 1_000_000] {
        let t: SessionTable<[u32; 4]> = SessionTable::with_capacities(cap, cap / 4);
        assert_eq!(t.bytes_per_session(false), 128 + 16 + 32, "{cap}");
        assert_eq!(t.bytes_per_session(true), 192 + 16 + 32, "{cap}");
    }
}

#[test]
fn session_bytes_is_what_a_full_table_takes() {
    fn check<T>() {
        for cap in [4096, 1 << 20, 1_000_003] {
            let t: SessionTable<T> = SessionTable::with_capacities(cap, cap);
            for v6 in [false, true] {
                assert_eq!(
                    SessionTable::<T>::session_bytes(v6),
                    t.bytes_per_session(v6),
                    "{cap} {v6}"
                );
            }
        }
    }
    check::<u32>();
    check::<[u32; 4]>();
    check::<[u64; 5]>();
    assert_eq!(SessionTable::<[u32; 4]>::session_bytes(false), 176);
    assert_eq!(SessionTable::<[u32; 4]>::session_bytes(true), 240);
}

#[test]
fn families_have_tables_of_their_own() {
    let t0 = Timeouts::default();
    let mut t: SessionTable<u32> = SessionTable::with_capacities_and_seed(2, 1, 3);
    let v6 = |n: u16| FlowKey {
        src: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n)),
        dst: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, 1)),
        proto: 6,
        sport: 1000 + n,
        dport: 80,
    };
    let a = t
        .insert(key(6, 1), nat_reply(6, 1), 1, 0, &t0)
        .expect("room");
    let b = t.insert(v6(1), v6(1).reversed(), 2, 0, &t0).expect("room");
    assert!(!a.is_ipv6() && b.is_ipv6());
    assert_eq!((a.slot(), b.slot()), (0, 0));
    assert_ne!(a, b);
    // The IPv6 table is full; the IPv4 one is not.
    assert_eq!(
        t.insert(v6(2), v6(2).reversed(), 3, 0, &t0),
        Err(InsertError::Full { capacity: 1 })
    );
    let c = t
        .insert(key(6, 2), nat_reply(6, 2), 4, 0, &t0)
        .expect("room");
    assert_eq!(t.lookup(&v6(1).reversed(), 1), Some((b, Dir::Reply)));
    assert_eq!(t.lookup(&key(6, 2), 1), Some((c, Dir::Orig)));
    assert_eq!(t.get(b).map(|s| *s.orig()), Some(v6(1)));
    assert_eq!(t.remove(a), Some(1));
    assert_eq!(t.payload(b), Some(&2));
    // Keys of mixed families or protocols are refused.
    let mixed = FlowKey {
        dst: v6(1).dst,
        ..key(6, 3)
    };
    assert_eq!(
        t.insert(mixed, mixed.reversed(), 5, 0, &t0),
        Err(InsertError::Mismatch)
    );
    assert_eq!(
        t.insert(key(6, 4), nat_reply(17, 4), 5, 0, &t0),
        Err(InsertError::Mismatch)
    );
    assert_eq!(
        t.insert(key(6, 4), v6(4), 5, 0, &t0),
        Err(InsertError::Mismatch)
    );
    assert_eq!(t.lookup(&mixed, 1), None);
    // Keys differing only in the protocol are different sessions.
    let u = t
        .insert(key(17, 2), nat_reply(17, 2), 6, 0, &t0)
        .expect("room");
    assert_eq!(t.lookup(&key(17, 2), 1), Some((u, Dir::Orig)));
    assert_eq!(t.lookup(&key(6, 2), 1), Some((c, Dir::Orig)));
    let mut all: Vec<u32> = t.iter().map(|(_, s)| *s.payload).collect();
    all.sort_unstable();
    assert_eq!(all, [2, 4, 6]);
    t.check_invariants();
}

#[derive(Debug, Clone)]
enum Op {
    Insert { o: u16, r: u16 },
    Lookup(u16),
    Update(u16),
    Remove(u16),
    Expire(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    // 24 distinct keys: collisions between orig and reply keys are common.
    prop_oneof![
        3 => (0..24u16, 0..24u16).prop_map(|(o, r)| Op::Insert { o, r }),
        3 => (0..24u16).prop_map(Op::Lookup),
        2 => (0..24u16).prop_map(Op::Update),
        1 => (0..24u16).prop_map(Op::Remove),
        1 => (0..6usize).prop_map(Op::Expire),
        2 => (0..15u64).prop_map(Op::Advance),
    ]
}

#[derive(Debug)]
struct ModelSession {
    orig: FlowKey,
    reply: FlowKey,
    expires: Nanos,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn agrees_with_model(ops in proptest::collection::vec(op(), 1..200), cap in 1usize..12, seed in any::<u64>()) {
        // UDP sessions with a 10-tick timeout.
        let t0 = Timeouts { udp: 10, ..Timeouts::default() };
        let k = |n: u16| key(17, n);
        let mut t: SessionTable<u32> = SessionTable::with_seed(cap, seed);
        let mut model: BTreeMap<u32, ModelSession> = BTreeMap::new();
        let mut keys: BTreeMap<FlowKey, (u32, Dir)> = BTreeMap::new();
        let mut next_payload = 0u32;
        let mut now: Nanos = 0;

        for op in ops {
            // Sessions this op must reap (the deterministic cases).
            let mut must_reap: Vec<u32> = Vec::new();
            match op {
                Op::Insert { o, r } => {
                    let (o, r) = (k(o), k(r));
                    let live = |key: &FlowKey| keys.get(key).map(|&(p, _)| (p, model[&p].expires > now));
                    let expected = if o == r {
                        Err(InsertError::SameKeys)
                    } else if let Some((_, true)) = live(&o) {
                        Err(InsertError::KeyExists(Dir::Orig))
                    } else if let Some((_, true)) = live(&r) {
                        Err(InsertError::KeyExists(Dir::Reply))
                    } else {
                        // Expired holders of either key are reclaimed first.
                        for key in [&o, &r] {
                            if let Some((p, false)) = live(key) {
                                if !must_reap.contains(&p) {
                                    must_reap.push(p);
                                }
                            }
                        }
                        if model.len() - must_reap.len() >= cap {
                            Err(InsertError::Full { capacity: cap })
                        } else {
                            Ok(())
                        }
                    };
                    let got = t.insert(o, r, next_payload, now, &t0);
                    prop_assert_eq!(got.map(|_| ()), expected);
                    if got.is_ok() {
                        for p in &must_reap {
                            let m = &model[p];
                            keys.remove(&m.orig);
                            keys.remove(&m.reply);
                        }
                        model.insert(next_payload, ModelSession { orig: o, reply: r, expires: now + 10 });
                        keys.insert(o, (next_payload, Dir::Orig));
                        keys.insert(r, (next_payload, Dir::Reply));
                    }
                    next_payload += 1;
                }
                Op::Lookup(n) | Op::Update(n) | Op::Remove(n) => {
                    let key = k(n);
                    let got = t.lookup(&key, now);
                    match keys.get(&key).copied() {
                        Some((p, dir)) if model[&p].expires > now => {
                            let (id, gdir) = got.expect("live session found");
                            prop_assert_eq!(gdir, dir);
                            prop_assert_eq!(t.get(id).map(|s| *s.payload), Some(p));
                            if matches!(op, Op::Update(_)) {
                                prop_assert!(t.update(id, dir, None, now, &t0));
                                model.get_mut(&p).expect("live").expires = now + 10;
                            } else if matches!(op, Op::Remove(_)) {
                                prop_assert_eq!(t.remove(id), Some(p));
                                prop_assert!(t.get(id).is_none());
                                let m = model.remove(&p).expect("live");
                                keys.remove(&m.orig);
                                keys.remove(&m.reply);
                            }
                        }
                        Some((p, _)) => {
                            prop_assert_eq!(got, None);
                            must_reap.push(p);
                        }
                        None => prop_assert_eq!(got, None),
                    }
                }
                Op::Expire(budget) => {
                    let n = t.expire(now, budget);
                    prop_assert!(n <= budget);
                    prop_assert_eq!(n, t.reaped_len());
                }
                Op::Advance(d) => now += d,
            }

            // Every reaped session: known, expired, delivered exactly once.
            let reaped: Vec<_> = t.drain_reaped().collect();
            for s in &reaped {
                let m = model.remove(&s.payload);
                prop_assert!(m.is_some(), "reaped twice or unknown: {}", s.payload);
                if let Some(m) = m {
                    prop_assert!(m.expires <= now);
                    prop_assert_eq!(s.expires_at(), m.expires);
                    for key in [&m.orig, &m.reply] {
                        if keys.get(key).map(|e| e.0) == Some(s.payload) {
                            keys.remove(key);
                        }
                    }
                }
            }
            for p in must_reap {
                prop_assert!(reaped.iter().any(|s| s.payload == p), "not reaped: {}", p);
            }
            prop_assert_eq!(t.len(), model.len());
            t.check_invariants();
            for (key, &(p, dir)) in &keys {
                prop_assert!(t.contains_key(key));
                let s = t.iter().find(|(_, s)| *s.payload == p).map(|(_, s)| *s.key(dir));
                prop_assert_eq!(s.as_ref(), Some(key));
            }
        }
        // Everything left is eventually swept, exactly once.
        let far = now + 1_000;
        let mut total = 0;
        for _ in 0..cap + 1 {
            total += t.expire(far, 1);
        }
        prop_assert_eq!(total, model.len());
        prop_assert!(t.is_empty());
        prop_assert_eq!(t.drain_reaped().count(), model.len());
    }
}

#[test]
fn prefaulted_table_behaves_the_same() {
    let t = Timeouts::default();
    let mut a: SessionTable<u32> = SessionTable::with_seed(64, 9);
    let mut b: SessionTable<u32> = SessionTable::with_seed(64, 9);
    b.prefault();
    let key = |i: u16| FlowKey {
        src: "198.18.0.2".parse().expect("addr"),
        dst: "198.18.0.10".parse().expect("addr"),
        proto: 17,
        sport: 1000 + i,
        dport: 53,
    };
    for i in 0..64u16 {
        let ia = a
            .insert(key(i), key(i).reversed(), u32::from(i), 0, &t)
            .expect("room");
        let ib = b
            .insert(key(i), key(i).reversed(), u32::from(i), 0, &t)
            .expect("room");
        assert_eq!(ia, ib, "same slots handed out");
    }
    assert!(
        b.insert(key(100), key(100).reversed(), 0, 0, &t).is_err(),
        "full at capacity"
    );
    for i in 0..64u16 {
        assert_eq!(a.lookup(&key(i), 1), b.lookup(&key(i), 1));
    }
    assert_eq!(b.len(), 64);
}

/// The expiry sweep examines the slots sessions took, not the capacity a
/// table was prefaulted to: a full sweep of a large, nearly empty table
/// costs its sessions, and reaps every expired one.
#[test]
fn a_sweep_walks_the_slots_sessions_took_not_the_capacity() {
    let t0 = Timeouts::default();
    let mut t: SessionTable<u32> = SessionTable::with_capacities_and_seed(1 << 16, 1 << 12, 3);
    t.prefault();
    assert_eq!(t.slab_len(), 0);
    for i in 0..10u16 {
        t.insert(key(17, i), key(17, i).reversed(), 0, 0, &t0)
            .expect("room");
    }
    assert_eq!(t.slab_len(), 10);
    // Long expired: one sweep of slab_len() slots reaps them all.
    assert_eq!(t.sweep(1000 * S, t.slab_len()), 10);
    assert_eq!(t.drain_reaped().count(), 10);
    // Freed slots are taken again first: the walked part does not grow.
    for i in 0..10u16 {
        t.insert(key(17, i), key(17, i).reversed(), 0, 1000 * S, &t0)
            .expect("room");
    }
    assert_eq!(t.slab_len(), 10);
    assert_eq!(t.sweep(2000 * S, 10), 10);
}

#[test]
fn deferred_reply_keys_are_found_before_and_after_the_flush() {
    let t0 = Timeouts::default();
    let mut t = table(64);
    let ids: Vec<SessionId> = (0..40)
        .map(|n| {
            t.insert_deferred(key(6, n), nat_reply(6, n), u32::from(n), 0, &t0)
                .expect("room")
        })
        .collect();
    t.check_invariants();
    // Waiting for the flush, and after it: the same answers.
    for flushed in [false, true] {
        if flushed {
            t.flush();
            assert!(t.v4.pending.is_empty() && t.v6.pending.is_empty());
        }
        for (n, id) in (0..40u16).zip(&ids) {
            assert_eq!(t.lookup(&nat_reply(6, n), 1), Some((*id, Dir::Reply)));
            assert_eq!(t.lookup(&key(6, n), 1), Some((*id, Dir::Orig)));
        }
        t.check_invariants();
    }
    // Removing a session whose reply entry still waits, and sessions
    // reaped before a flush.
    let extra = t
        .insert_deferred(key(6, 50), nat_reply(6, 50), 50, 0, &t0)
        .expect("room");
    assert_eq!(t.remove(extra), Some(50));
    assert!(!t.contains_key(&nat_reply(6, 50)));
    t.insert_deferred(key(6, 51), nat_reply(6, 51), 51, 0, &t0)
        .expect("room");
    let later = 100 * S;
    assert_eq!(t.expire(later, 64), 41);
    assert!(t.is_empty());
    assert!(!t.contains_key(&nat_reply(6, 51)));
    t.check_invariants();
}

#[test]
fn insert_after_a_missed_lookup() {
    let t0 = Timeouts::default();
    let mut t = table(16);
    let held = t
        .insert(key(6, 1), nat_reply(6, 1), 1, 0, &t0)
        .expect("room");
    for (n, defer) in [(2u16, false), (3, true)] {
        let h = t.hash_key(&key(6, n));
        assert_eq!(t.lookup_hashed(&key(6, n), h, 0), None);
        let id = t
            .insert_missed(key(6, n), h, nat_reply(6, n), u32::from(n), 0, &t0, defer)
            .expect("room");
        assert_eq!(t.lookup(&key(6, n), 1), Some((id, Dir::Orig)));
        assert_eq!(t.lookup(&nat_reply(6, n), 1), Some((id, Dir::Reply)));
    }
    // The reply key is still checked unless deferred.
    let h = t.hash_key(&key(6, 4));
    assert_eq!(
        t.insert_missed(key(6, 4), h, nat_reply(6, 1), 4, 0, &t0, false),
        Err(InsertError::KeyExists(Dir::Reply))
    );
    assert_eq!(t.lookup(&nat_reply(6, 1), 1), Some((held, Dir::Reply)));
    t.flush();
    t.check_invariants();
}

fn seg(flags: u8, seq: u32, ack: u32) -> TcpSegment {
    TcpSegment {
        flags,
        seq,
        ack,
        window: 65535,
        ..TcpSegment::default()
    }
}

/// A TCP session through the handshake: client ISN 1000, server ISN 5000.
fn handshake(t: &mut SessionTable<u32>, n: u16, t0: &Timeouts) -> SessionId {
    let id = t
        .insert(key(6, n), nat_reply(6, n), 1, 0, t0)
        .expect("room");
    for (dir, s) in [
        (Dir::Orig, seg(SYN, 1000, 0)),
        (Dir::Reply, seg(SYN | ACK, 5000, 1001)),
        (Dir::Orig, seg(ACK, 1001, 5001)),
    ] {
        assert_eq!(
            t.update_tcp(id, dir, &s, S, t0),
            Some(SegmentCheck::Accepted)
        );
    }
    assert_eq!(
        t.get(id).and_then(|s| s.tcp_state()),
        Some(TcpState::Established)
    );
    id
}

#[test]
fn blind_rst_leaves_the_session_alone() {
    let t0 = Timeouts::default();
    let mut t = table(4);
    let id = handshake(&mut t, 1, &t0);
    let before = t.get(id).map(|s| s.expires_at());
    // Random sequence numbers, both directions: dropped, nothing changes.
    for (i, blind) in [7u32, 0x8000_0000, 0xdead_beef, 1000, 70_000]
        .into_iter()
        .enumerate()
    {
        let dir = if i % 2 == 0 { Dir::Orig } else { Dir::Reply };
        assert_eq!(
            t.update_tcp(id, dir, &seg(RST, blind, 0), 2 * S, &t0),
            Some(SegmentCheck::OutOfWindow),
            "seq {blind}"
        );
    }
    assert_eq!(
        t.get(id).and_then(|s| s.tcp_state()),
        Some(TcpState::Established)
    );
    assert_eq!(t.get(id).map(|s| s.expires_at()), before);
    // A blind FIN moves nothing either (it is passed on).
    assert_eq!(
        t.update_tcp(
            id,
            Dir::Orig,
            &seg(FIN | ACK, 0x9000_0000, 5001),
            3 * S,
            &t0
        ),
        Some(SegmentCheck::OutOfWindow)
    );
    assert_eq!(
        t.get(id).and_then(|s| s.tcp_state()),
        Some(TcpState::Established)
    );
    // In the window but not exact: the state stays, the expiry shortens
    // until the next packet (the endpoint's challenge ACK) restores it.
    assert_eq!(
        t.update_tcp(id, Dir::Orig, &seg(RST, 1500, 0), 4 * S, &t0),
        Some(SegmentCheck::ResetInWindow)
    );
    assert_eq!(
        t.get(id).map(|s| (s.tcp_state(), s.expires_at())),
        Some((Some(TcpState::Established), 4 * S + t0.closed))
    );
    assert_eq!(
        t.update_tcp(id, Dir::Reply, &seg(ACK, 5001, 1001), 5 * S, &t0),
        Some(SegmentCheck::Accepted)
    );
    assert_eq!(
        t.get(id).map(|s| s.expires_at()),
        Some(5 * S + t0.established)
    );
    // The client's own RST (its next sequence number) closes.
    assert_eq!(
        t.update_tcp(id, Dir::Orig, &seg(RST, 1001, 0), 6 * S, &t0),
        Some(SegmentCheck::Reset)
    );
    assert_eq!(
        t.get(id).and_then(|s| s.tcp_state()),
        Some(TcpState::Closed)
    );
}

#[test]
fn rst_in_syn_sent_must_acknowledge_the_syn() {
    let t0 = Timeouts::default();
    let mut t = table(4);
    let id = t
        .insert(key(6, 2), nat_reply(6, 2), 1, 0, &t0)
        .expect("room");
    t.update_tcp(id, Dir::Orig, &seg(SYN, 1000, 0), 0, &t0);
    assert_eq!(
        t.update_tcp(id, Dir::Reply, &seg(RST | ACK, 0, 77), S, &t0),
        Some(SegmentCheck::OutOfWindow)
    );
    assert_eq!(
        t.get(id).and_then(|s| s.tcp_state()),
        Some(TcpState::SynSent)
    );
    assert_eq!(
        t.update_tcp(id, Dir::Reply, &seg(RST | ACK, 0, 1001), S, &t0),
        Some(SegmentCheck::Reset)
    );
    assert_eq!(
        t.get(id).and_then(|s| s.tcp_state()),
        Some(TcpState::Closed)
    );
}

#[test]
fn unreplied_sessions_expire_early() {
    let t0 = Timeouts::default();
    assert_eq!(t0.unreplied, 30 * S);
    let mut t = table(8);
    // UDP and a TCP flow picked up mid-stream, one direction only: 30 s.
    let udp = key(17, 1);
    let id = t.insert(udp, nat_reply(17, 1), 1, 0, &t0).expect("room");
    t.update(id, Dir::Orig, None, 0, &t0);
    let tcp = key(6, 2);
    let id2 = t.insert(tcp, nat_reply(6, 2), 2, 0, &t0).expect("room");
    t.update_tcp(id2, Dir::Orig, &seg(ACK, 1, 1), 0, &t0);
    assert_eq!(
        t.get(id2).and_then(|s| s.tcp_state()),
        Some(TcpState::Established)
    );
    assert!(t.lookup(&udp, 30 * S - 1).is_some());
    assert!(t.lookup(&tcp, 30 * S - 1).is_some());
    assert!(t.lookup(&udp, 30 * S).is_none());
    assert!(t.lookup(&tcp, 30 * S).is_none());
    // Once a reply came, the protocol's timeout.
    let id = t
        .insert(udp, nat_reply(17, 1), 3, 100 * S, &t0)
        .expect("room");
    t.update(id, Dir::Orig, None, 100 * S, &t0);
    t.update(id, Dir::Reply, None, 101 * S, &t0);
    assert!(t.lookup(&udp, 101 * S + t0.udp - 1).is_some());
    // Configurable.
    let t1 = Timeouts::default().with_unreplied(5);
    let id = t
        .insert(key(17, 3), nat_reply(17, 3), 4, 0, &t1)
        .expect("room");
    t.update(id, Dir::Orig, None, 0, &t1);
    assert!(t.lookup(&key(17, 3), 5 * S).is_none());
    // A closed tuple reused by a new connection is unanswered again.
    let id = handshake(&mut t, 4, &t1);
    t.update_tcp(id, Dir::Orig, &seg(RST, 1001, 0), 2 * S, &t1);
    t.update_tcp(id, Dir::Orig, &seg(SYN, 9000, 0), 3 * S, &t1);
    assert_eq!(
        t.get(id).map(|s| (s.tcp_state(), s.expires_at())),
        Some((Some(TcpState::SynSent), 8 * S))
    );
}

#[test]
fn early_drop_takes_the_oldest_half_open_session_and_never_an_established_one() {
    let t0 = Timeouts::default();
    let mut t = table(8);
    // Established (picked up mid-stream), then three handshakes begun.
    let est = t
        .insert(key(6, 0), nat_reply(6, 0), 100, 0, &t0)
        .expect("room");
    t.update(est, Dir::Orig, Some(ACK), 0, &t0);
    let mut half = Vec::new();
    for n in 1..=3u16 {
        let id = t
            .insert(
                key(6, n),
                nat_reply(6, n),
                u32::from(n),
                S * u64::from(n),
                &t0,
            )
            .expect("room");
        t.update(id, Dir::Orig, Some(SYN), S * u64::from(n), &t0);
        half.push(id);
    }
    // The second handshake completes: no longer a candidate.
    t.update(half[1], Dir::Reply, Some(SYN | ACK), 4 * S, &t0);
    t.update(half[1], Dir::Orig, Some(ACK), 4 * S, &t0);
    assert_eq!(t.half_open(), 2);
    t.check_invariants();

    let first = t.early_drop(false, |_| true).expect("a half-open session");
    assert_eq!(first.payload, 1);
    assert_eq!(t.half_open(), 1);
    // A filter (e.g. "holds a port on this local address") skips others.
    assert!(t.early_drop(false, |s| *s.payload == 7).is_none());
    let third = t.early_drop(false, |_| true).expect("a half-open session");
    assert_eq!(third.payload, 3);
    // Only established sessions are left: nothing to drop.
    assert!(t.early_drop(false, |_| true).is_none());
    assert!(t.early_drop(true, |_| true).is_none());
    assert_eq!(t.len(), 2);
    assert_eq!(t.get(est).map(|s| *s.payload), Some(100));
    assert_eq!(t.half_open(), 0);
    assert_eq!(t.reaped_len(), 0);
    t.check_invariants();
}

#[test]
fn early_drop_frees_room_in_a_full_table_of_half_open_sessions() {
    let t0 = Timeouts::default();
    let mut t = table(64);
    // Many more handshakes than the table holds, each made room for by
    // dropping the oldest: the ring's stale entries never block it.
    for n in 0..1000u16 {
        let (o, r) = (key(6, n), nat_reply(6, n));
        let id = match t.insert(o, r, u32::from(n), 0, &t0) {
            Ok(id) => id,
            Err(InsertError::Full { .. }) => {
                let oldest = t.iter().map(|(_, s)| *s.payload).min();
                let old = t.early_drop(false, |_| true).expect("a half-open session");
                assert_eq!(Some(old.payload), oldest, "the oldest goes first");
                t.insert(o, r, u32::from(n), 0, &t0).expect("room made")
            }
            Err(e) => panic!("{e}"),
        };
        t.update(id, Dir::Orig, Some(SYN), 0, &t0);
        if n % 3 == 0 {
            // Some complete and end: their ring entries go stale.
            t.update(id, Dir::Reply, Some(SYN | ACK), 0, &t0);
            t.update(id, Dir::Orig, Some(ACK), 0, &t0);
            t.remove(id);
        }
    }
    t.check_invariants();
}

#[test]
fn retransmitted_syns_and_syn_acks_do_not_extend_a_handshake() {
    let t0 = Timeouts::default();
    assert_eq!(t0.syn, 5 * S);
    let mut t = table(8);
    let (o, r) = (key(6, 1), nat_reply(6, 1));
    let id = t.insert(o, r, 1, 0, &t0).expect("room");
    t.update(id, Dir::Orig, Some(SYN), 0, &t0);
    // The client retransmits its SYN, the backend its SYN-ACK, again and
    // again: the session still ends 5 s after it began.
    t.update(id, Dir::Orig, Some(SYN), 2 * S, &t0);
    t.update(id, Dir::Reply, Some(SYN | ACK), 3 * S, &t0);
    t.update(id, Dir::Reply, Some(SYN | ACK), 4 * S, &t0);
    t.update(id, Dir::Orig, Some(SYN), 4 * S, &t0);
    assert_eq!(t.get(id).map(|s| s.expires_at()), Some(5 * S));
    assert_eq!(t.lookup(&o, 5 * S - 1), Some((id, Dir::Orig)));
    assert_eq!(t.lookup(&r, 5 * S), None);
    assert_eq!(t.half_open(), 0);

    // A completed handshake takes the established timeout from its ACK.
    let id = t.insert(o, r, 2, 10 * S, &t0).expect("room");
    t.update(id, Dir::Orig, Some(SYN), 10 * S, &t0);
    t.update(id, Dir::Reply, Some(SYN | ACK), 14 * S, &t0);
    t.update(id, Dir::Orig, Some(ACK), 14 * S, &t0);
    assert_eq!(
        t.get(id).map(|s| s.expires_at()),
        Some(14 * S + t0.established)
    );
    t.check_invariants();
}

#[test]
fn counted_updates_count_packets_and_bytes_per_direction() {
    let t0 = Timeouts::default();
    let mut t = table(4);
    // The handshake's updates do not count.
    let id = handshake(&mut t, 1, &t0);
    let s = t.get(id).expect("held");
    assert_eq!((s.packets(Dir::Orig), s.bytes(Dir::Reply)), (0, 0));
    assert_eq!(s.started(), 0);
    let data = seg(ACK, 1001, 5001);
    let c = t.update_tcp_counted(id, Dir::Orig, &data, 1040, 2 * S, &t0);
    assert_eq!(c, Some(SegmentCheck::Accepted));
    t.update_tcp_counted(id, Dir::Reply, &seg(ACK, 5001, 1001), 52, 3 * S, &t0);
    // A RST outside the window is the caller's to drop: not counted.
    let blind = seg(RST, 77_000_000, 0);
    let c = t.update_tcp_counted(id, Dir::Reply, &blind, 40, 4 * S, &t0);
    assert_eq!(c, Some(SegmentCheck::OutOfWindow));
    let s = t.get(id).expect("held");
    assert_eq!((s.packets(Dir::Orig), s.bytes(Dir::Orig)), (1, 1040));
    assert_eq!((s.packets(Dir::Reply), s.bytes(Dir::Reply)), (1, 52));
    // UDP through the plain update.
    let u = t
        .insert(key(17, 2), nat_reply(17, 2), 2, 5 * S, &t0)
        .expect("room");
    for _ in 0..3 {
        t.update_counted(u, Dir::Orig, None, 100, 6 * S, &t0);
    }
    t.update(u, Dir::Reply, None, 7 * S, &t0);
    let s = t.get(u).expect("held");
    assert_eq!((s.packets(Dir::Orig), s.bytes(Dir::Orig)), (3, 300));
    assert_eq!(s.packets(Dir::Reply), 0, "update alone does not count");
    assert_eq!(s.started(), 5 * S);
    // A new connection on the tuple starts over.
    t.restart(u, 8 * S);
    let s = t.get(u).expect("held");
    assert_eq!(
        (s.packets(Dir::Orig), s.bytes(Dir::Orig), s.started()),
        (0, 0, 8 * S)
    );
}
