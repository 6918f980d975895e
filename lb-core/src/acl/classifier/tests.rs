use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;

use super::super::{linear_classify, AddrMatch, FlowKey, MatchRule, PortRange};
use super::{Addr, Classifier, KeyColumnsBuf, STree, Search, CROSS_BUDGET, NO_MATCH};

fn key(src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> FlowKey {
    FlowKey {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        proto,
        sport,
        dport,
    }
}

fn nets(list: &[&str]) -> AddrMatch {
    AddrMatch::Prefixes(list.iter().map(|s| s.parse().unwrap()).collect())
}

fn check(rules: &[MatchRule], keys: &[FlowKey]) {
    let c = Classifier::build(rules);
    let mut out = vec![None; keys.len()];
    c.classify_burst(keys, &mut out);
    for (k, o) in keys.iter().zip(&out) {
        let want = linear_classify(rules, k);
        assert_eq!(c.classify(k), want, "key {k:?}");
        assert_eq!(*o, want, "burst, key {k:?}");
    }
    check_bursts(rules, &c, keys);
}

#[test]
fn no_rules() {
    let c = Classifier::build(&[]);
    assert!(c.is_empty());
    assert_eq!(c.classify(&key("1.2.3.4", "5.6.7.8", 6, 1, 2)), None);
    assert_eq!(c.classify(&key("::1", "::2", 17, 1, 2)), None);
    assert!(c.memory_bytes() > 0);
}

#[test]
fn families() {
    let mut v4 = MatchRule::any();
    v4.src = nets(&["0.0.0.0/0"]);
    let mut v6 = MatchRule::any();
    v6.src = nets(&["::/0"]);
    let rules = vec![v4, v6, MatchRule::any()];
    let c = Classifier::build(&rules);
    assert_eq!(c.classify(&key("1.2.3.4", "5.6.7.8", 6, 1, 2)), Some(0));
    assert_eq!(c.classify(&key("::1", "::2", 6, 1, 2)), Some(1));
    // Mixed families (not produced by a real header) still agree.
    assert_eq!(c.classify(&key("::1", "1.2.3.4", 6, 1, 2)), Some(1));
    assert_eq!(c.classify(&key("1.2.3.4", "::1", 6, 1, 2)), Some(0));
    // An IPv4-mapped IPv6 address is IPv6.
    assert_eq!(c.classify(&key("::ffff:1.2.3.4", "::2", 6, 1, 2)), Some(1));
    check(
        &rules,
        &[
            key("255.255.255.255", "0.0.0.0", 0, 0, 0),
            key(
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "::",
                255,
                65535,
                65535,
            ),
        ],
    );
}

#[test]
fn empty_prefix_list_matches_nothing() {
    let mut r = MatchRule::any();
    r.dst = AddrMatch::Prefixes(vec![]);
    let mut no_ports = MatchRule::any();
    no_ports.dport = vec![];
    let rules = vec![r, no_ports, MatchRule::any()];
    let c = Classifier::build(&rules);
    assert_eq!(c.classify(&key("1.2.3.4", "5.6.7.8", 6, 1, 2)), Some(2));
    assert_eq!(c.classify(&key("::1", "::2", 6, 1, 2)), Some(2));
}

#[test]
fn port_edges() {
    let mut lo = MatchRule::any();
    lo.dport = vec![PortRange::single(0)];
    let mut hi = MatchRule::any();
    hi.sport = vec![PortRange::single(65535)];
    let mut list = MatchRule::any();
    list.proto = Some(6);
    list.dport = vec![
        PortRange::new(80, 81),
        PortRange::single(443),
        PortRange::new(1000, 999),
    ];
    let rules = vec![lo, hi, list];
    let c = Classifier::build(&rules);
    assert_eq!(c.classify(&key("1.2.3.4", "5.6.7.8", 6, 1, 0)), Some(0));
    assert_eq!(c.classify(&key("1.2.3.4", "5.6.7.8", 6, 65535, 1)), Some(1));
    assert_eq!(
        c.classify(&key("1.2.3.4", "5.6.7.8", 6, 65534, 81)),
        Some(2)
    );
    assert_eq!(c.classify(&key("1.2.3.4", "5.6.7.8", 6, 65534, 82)), None);
    assert_eq!(c.classify(&key("1.2.3.4", "5.6.7.8", 17, 65534, 443)), None);
    assert_eq!(c.classify(&key("::1", "::2", 6, 1, 443)), Some(2));
}

#[test]
fn prefix_list_is_one_rule() {
    let mut sg = MatchRule::any();
    sg.src = nets(&[
        "10.0.0.1/32",
        "10.0.0.0/24",
        "192.168.0.0/16",
        "2001:db8::/32",
    ]);
    sg.dport = vec![PortRange::single(22)];
    let rules = vec![sg, MatchRule::any()];
    let c = Classifier::build(&rules);
    assert_eq!(c.classify(&key("10.0.0.1", "1.1.1.1", 6, 9, 22)), Some(0));
    assert_eq!(c.classify(&key("10.0.0.200", "1.1.1.1", 6, 9, 22)), Some(0));
    assert_eq!(c.classify(&key("10.0.1.0", "1.1.1.1", 6, 9, 22)), Some(1));
    assert_eq!(
        c.classify(&key("192.168.255.255", "1.1.1.1", 6, 9, 22)),
        Some(0)
    );
    assert_eq!(c.classify(&key("2001:db8::5", "::1", 6, 9, 22)), Some(0));
    assert_eq!(c.classify(&key("2001:db9::5", "::1", 6, 9, 22)), Some(1));
}

#[test]
fn many_rules_span_words() {
    // 200 single-port rules, the packet matching only the last.
    let rules: Vec<MatchRule> = (0..200u16)
        .map(|p| {
            let mut r = MatchRule::any();
            r.dport = vec![PortRange::single(p * 3)];
            r
        })
        .collect();
    let c = Classifier::build(&rules);
    assert_eq!(c.classify(&key("1.2.3.4", "5.6.7.8", 6, 1, 597)), Some(199));
    assert_eq!(c.classify(&key("1.2.3.4", "5.6.7.8", 6, 1, 598)), None);
}

/// Rules over source and destination prefixes and destination ports whose
/// cross products leave a field out: a final table to find.
fn grid_rules(n: u32) -> Vec<MatchRule> {
    (0..n)
        .map(|i| {
            let mut r = MatchRule::any();
            r.proto = Some(6);
            let src = Ipv4Addr::from(0xC612_0000 | (i.wrapping_mul(2654435761) & 0xffff));
            let dst = Ipv4Addr::from(0xC613_0000 | (i.wrapping_mul(40503) & 0xff00));
            r.src = AddrMatch::Prefixes(vec![IpNet::new(IpAddr::V4(src), 28 + (i % 5) as u8)
                .unwrap()
                .trunc()]);
            r.dst = AddrMatch::Prefixes(vec![IpNet::new(IpAddr::V4(dst), 24).unwrap()]);
            r.sport = vec![PortRange {
                lo: (i * 37 % 60000) as u16,
                hi: (i * 37 % 60000 + 500) as u16,
            }];
            r.dport = vec![PortRange::single((i % 97) as u16)];
            r
        })
        .collect()
}

#[test]
fn staged_build_refines_while_classifying() {
    let rules = grid_rules(1000);
    let staged = Classifier::build_staged(&rules);
    assert!(staged.needs_refinement(), "{}", staged.shape());
    assert!(
        !staged.shape().contains("final table"),
        "{}",
        staged.shape()
    );
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let keys: Vec<FlowKey> = (0..4096)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let r = &rules[(x % 1000) as usize];
            let pick = |m: &AddrMatch| match m {
                AddrMatch::Prefixes(n) => n[0].network(),
                AddrMatch::Any => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            };
            FlowKey {
                src: pick(&r.src),
                dst: pick(&r.dst),
                proto: 6,
                sport: r.sport[0].lo.wrapping_add((x >> 20) as u16 % 600),
                dport: if i % 3 == 0 {
                    (x >> 40) as u16 % 100
                } else {
                    r.dport[0].lo
                },
            }
        })
        .collect();
    let want: Vec<Option<u32>> = keys.iter().map(|k| linear_classify(&rules, k)).collect();
    assert!(want.iter().filter(|w| w.is_some()).count() > 1000);
    // Lookups on one thread while the other refines: every answer right,
    // whichever tables it came from.
    std::thread::scope(|s| {
        let refiner = s.spawn(|| staged.refine(&rules));
        let mut rounds = 0;
        loop {
            let finished = refiner.is_finished();
            for burst in [1, 8, 32, 256] {
                assert_eq!(in_bursts(&staged, &keys, burst), want, "bursts of {burst}");
            }
            rounds += 1;
            if finished || rounds > 10_000 {
                break;
            }
        }
    });
    assert!(!staged.needs_refinement());
    assert!(staged.shape().contains("final table"), "{}", staged.shape());
    check_bursts(&rules, &staged, &keys);
    let full = Classifier::build(&rules);
    assert_eq!(full.shape(), staged.shape());
}

// ---- proptest ----

const V4_BASES: [u32; 4] = [0x0A00_0000, 0x0A00_0100, 0xC0A8_0000, 0xFFFF_FF00];
const V6_BASES: [u128; 3] = [
    0x2001_0db8_0000_0000_0000_0000_0000_0000,
    0x2001_0db8_0000_0001_0000_0000_0000_0000,
    0xfe80_0000_0000_0000_0000_0000_0000_0000,
];

fn arb_v4_net() -> impl Strategy<Value = IpNet> {
    (0..V4_BASES.len(), any::<u32>(), 0u8..=32).prop_map(|(b, noise, len)| {
        let addr = V4_BASES[b] ^ (noise & 0x0000_03FF);
        IpNet::new(IpAddr::V4(Ipv4Addr::from(addr)), len)
            .unwrap()
            .trunc()
    })
}

fn arb_v6_net() -> impl Strategy<Value = IpNet> {
    (0..V6_BASES.len(), any::<u128>(), 0u8..=128).prop_map(|(b, noise, len)| {
        let addr = V6_BASES[b] ^ (noise & 0xFFFF) ^ ((noise >> 64) << 64 >> 100 << 32);
        IpNet::new(IpAddr::V6(Ipv6Addr::from(addr)), len)
            .unwrap()
            .trunc()
    })
}

fn arb_addr() -> impl Strategy<Value = AddrMatch> {
    prop_oneof![
        2 => Just(AddrMatch::Any),
        1 => Just(AddrMatch::Prefixes(vec![])),
        4 => prop::collection::vec(arb_v4_net(), 1..4).prop_map(AddrMatch::Prefixes),
        3 => prop::collection::vec(arb_v6_net(), 1..4).prop_map(AddrMatch::Prefixes),
        2 => prop::collection::vec(prop_oneof![arb_v4_net(), arb_v6_net()], 1..6)
            .prop_map(AddrMatch::Prefixes),
    ]
}

fn arb_port_range() -> impl Strategy<Value = PortRange> {
    prop_oneof![
        Just(PortRange::ANY),
        (0u16..100).prop_map(PortRange::single),
        (0u16..100, 0u16..40).prop_map(|(lo, w)| PortRange::new(lo, lo.saturating_add(w))),
        (65500u16..=65535).prop_map(|lo| PortRange::new(lo, 65535)),
        Just(PortRange::single(0)),
    ]
}

fn arb_ports() -> impl Strategy<Value = Vec<PortRange>> {
    prop_oneof![
        3 => Just(vec![PortRange::ANY]),
        3 => prop::collection::vec(arb_port_range(), 1..4),
    ]
}

fn arb_rule() -> impl Strategy<Value = MatchRule> {
    (
        prop_oneof![
            Just(None),
            Just(Some(6u8)),
            Just(Some(17u8)),
            Just(Some(0u8)),
            Just(Some(255u8))
        ],
        arb_addr(),
        arb_addr(),
        arb_ports(),
        arb_ports(),
    )
        .prop_map(|(proto, src, dst, sport, dport)| MatchRule {
            proto,
            src,
            dst,
            sport,
            dport,
        })
}

/// Addresses at, inside and just outside every prefix of `m`.
fn boundary_addrs(m: &AddrMatch, out: &mut Vec<IpAddr>) {
    if let AddrMatch::Prefixes(nets) = m {
        for n in nets {
            match n {
                IpNet::V4(n) => {
                    let lo = u32::from(n.network());
                    let hi = u32::from(n.broadcast());
                    for a in [
                        lo.wrapping_sub(1),
                        lo,
                        lo + (hi - lo) / 2,
                        hi,
                        hi.wrapping_add(1),
                    ] {
                        out.push(IpAddr::V4(a.into()));
                    }
                }
                IpNet::V6(n) => {
                    let lo = u128::from(n.network());
                    let hi = u128::from(n.broadcast());
                    for a in [
                        lo.wrapping_sub(1),
                        lo,
                        lo + (hi - lo) / 2,
                        hi,
                        hi.wrapping_add(1),
                    ] {
                        out.push(IpAddr::V6(a.into()));
                    }
                }
            }
        }
    }
}

fn boundary_ports(p: &[PortRange], out: &mut Vec<u16>) {
    for r in p {
        out.extend([r.lo.wrapping_sub(1), r.lo, r.hi, r.hi.wrapping_add(1)]);
    }
}

/// How a packet is picked from the boundary pools.
type Pick = (usize, [u32; 5], bool);

fn arb_case() -> impl Strategy<Value = (Vec<MatchRule>, Vec<Pick>)> {
    (
        prop::collection::vec(arb_rule(), 0..300),
        prop::collection::vec((any::<usize>(), any::<[u32; 5]>(), any::<bool>()), 64),
    )
}

/// Packets built from rule boundaries (selected by `pick`) or random.
fn packets(rules: &[MatchRule], picks: &[Pick]) -> Vec<FlowKey> {
    let mut v4: Vec<IpAddr> = V4_BASES.iter().map(|&a| IpAddr::V4(a.into())).collect();
    let mut v6: Vec<IpAddr> = V6_BASES.iter().map(|&a| IpAddr::V6(a.into())).collect();
    let mut addrs = Vec::new();
    let mut ports = vec![0, 1, 65535];
    for r in rules {
        boundary_addrs(&r.src, &mut addrs);
        boundary_addrs(&r.dst, &mut addrs);
        boundary_ports(&r.sport, &mut ports);
        boundary_ports(&r.dport, &mut ports);
    }
    for a in addrs {
        if a.is_ipv4() {
            v4.push(a)
        } else {
            v6.push(a)
        }
    }
    let protos = [0u8, 6, 17, 255, 1];
    picks
        .iter()
        .map(|&(i, r, six)| {
            let fam = if six { &v6 } else { &v4 };
            let pick = |x: u32, v: &Vec<IpAddr>| v[(x as usize ^ i) % v.len()];
            FlowKey {
                src: pick(r[0], fam),
                dst: pick(r[1], fam),
                proto: protos[r[2] as usize % protos.len()],
                sport: ports[(r[3] as usize ^ i) % ports.len()],
                dport: ports[(r[4] as usize ^ (i >> 7)) % ports.len()],
            }
        })
        .collect()
}

/// `c` with its scalar burst steps only (no AVX-512).
fn scalar(c: &Classifier) -> Classifier {
    let mut s = c.clone();
    s.v4.simd = None;
    s.v6.simd = None;
    if let Some(r) = s.refined.get_mut() {
        r.v4.iter_mut().for_each(|f| f.simd = None);
        r.v6.iter_mut().for_each(|f| f.simd = None);
    }
    s
}

/// `c` without its tuple caches (the bitmap AND for every key).
fn uncached(c: &Classifier) -> Classifier {
    let mut s = c.clone();
    s.v4.cache = None;
    s.v6.cache = None;
    if let Some(r) = s.refined.get_mut() {
        r.v4.iter_mut().for_each(|f| f.cache = None);
        r.v6.iter_mut().for_each(|f| f.cache = None);
    }
    s
}

/// The answers of `c.classify_burst` over `keys` in bursts of `burst`.
fn in_bursts(c: &Classifier, keys: &[FlowKey], burst: usize) -> Vec<Option<u32>> {
    let mut out = vec![Some(u32::MAX); keys.len()];
    for (k, o) in keys.chunks(burst).zip(out.chunks_mut(burst)) {
        c.classify_burst(k, o);
    }
    out
}

/// What a run says about the AVX-512 steps: nothing when the CPU has
/// them, a note when it lacks them (the "simd" steps below are then the
/// scalar ones again), a failure when it lacks them and `require` (the
/// value of `LB_REQUIRE_AVX512`) is `1`.
fn avx512_report(detected: bool, require: Option<&str>) -> Result<Option<String>, String> {
    if detected {
        return Ok(None);
    }
    let note = "this CPU lacks AVX-512F/BW/VL/CD: the classifier's AVX-512 steps were not \
                exercised, only the scalar ones";
    if require.map(str::trim) == Some("1") {
        Err(format!("{note} (LB_REQUIRE_AVX512=1)"))
    } else {
        Ok(Some(note.to_string()))
    }
}

/// Says once per run, where libtest's output capture does not hide it,
/// when the AVX-512 steps cannot run on this CPU; fails instead under
/// `LB_REQUIRE_AVX512=1`.
fn note_missing_avx512() {
    use std::io::Write as _;
    static ONCE: std::sync::Once = std::sync::Once::new();
    let require = std::env::var("LB_REQUIRE_AVX512").ok();
    match avx512_report(lb_simd::Avx512::detect().is_some(), require.as_deref()) {
        Ok(None) => {}
        Ok(Some(note)) => ONCE.call_once(|| {
            let _ = writeln!(std::io::stderr(), "NOTE: {note}");
        }),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn avx512_steps_run_or_are_reported() {
    note_missing_avx512();
    assert_eq!(avx512_report(true, Some("1")), Ok(None));
    assert!(matches!(avx512_report(false, None), Ok(Some(n)) if n.contains("not exercised")));
    assert!(matches!(avx512_report(false, Some("0")), Ok(Some(_))));
    assert!(matches!(avx512_report(false, Some("1")), Err(e) if e.contains("LB_REQUIRE_AVX512")));
}

/// Every burst size and both step sets (AVX-512 when the CPU has it, and
/// scalar) give the linear scan's answers, for `FlowKey`s and for columns.
fn check_bursts(rules: &[MatchRule], c: &Classifier, keys: &[FlowKey]) {
    note_missing_avx512();
    let want: Vec<Option<u32>> = keys.iter().map(|k| linear_classify(rules, k)).collect();
    let steps = [
        (c.clone(), "simd"),
        (scalar(c), "scalar"),
        (uncached(c), "simd, no cache"),
        (scalar(&uncached(c)), "scalar, no cache"),
    ];
    for (c, steps) in steps {
        for burst in [2, 7, 16, 31, 32, 33, 64, 256] {
            assert_eq!(
                in_bursts(&c, keys, burst),
                want,
                "bursts of {burst}, {steps} steps, shape {}",
                c.shape()
            );
        }
    }
    check_columns(rules, c, keys);
}

/// The answers of the column bursts of `c` over the keys of one family of
/// `keys` (the others are skipped), in bursts of `burst`, with the keys
/// they answer.
fn in_column_bursts(c: &Classifier, keys: &[FlowKey], burst: usize) -> Vec<(FlowKey, u32)> {
    let mut v4 = KeyColumnsBuf::new();
    let mut v6 = KeyColumnsBuf::new();
    let (mut k4, mut k6) = (Vec::new(), Vec::new());
    for k in keys {
        if v4.push_v4(k) {
            k4.push(*k);
        } else if v6.push_v6(k) {
            k6.push(*k);
        }
    }
    let mut out4 = vec![NO_MATCH - 1; v4.len()];
    for (at, o) in (0..v4.len()).step_by(burst).zip(out4.chunks_mut(burst)) {
        c.classify_v4_columns(&v4.columns().range(at..at + burst), o);
    }
    let mut out6 = vec![NO_MATCH - 1; v6.len()];
    for (at, o) in (0..v6.len()).step_by(burst).zip(out6.chunks_mut(burst)) {
        c.classify_v6_columns(&v6.columns().range(at..at + burst), o);
    }
    k4.into_iter()
        .zip(out4)
        .chain(k6.into_iter().zip(out6))
        .collect()
}

/// The column bursts of every size from 1 to 256, with both step sets,
/// give the linear scan's answers (and the scalar path's).
fn check_columns(rules: &[MatchRule], c: &Classifier, keys: &[FlowKey]) {
    let s = scalar(c);
    let u = uncached(c);
    // The keys in the order of the answers (IPv4, then IPv6), and theirs.
    let order: Vec<FlowKey> = in_column_bursts(c, keys, 1)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let same_family = keys
        .iter()
        .filter(|k| k.src.is_ipv4() == k.dst.is_ipv4())
        .count();
    assert_eq!(order.len(), same_family);
    let want: Vec<u32> = order
        .iter()
        .map(|k| linear_classify(rules, k).unwrap_or(NO_MATCH))
        .collect();
    for (k, &w) in order.iter().zip(&want) {
        assert_eq!(s.classify(k).unwrap_or(NO_MATCH), w, "scalar, key {k:?}");
    }
    let bursts = (1..=40).chain([47, 63, 64, 65, 96, 127, 128, 200, 255, 256]);
    for burst in bursts {
        for c in [c, &s, &u] {
            let got = in_column_bursts(c, keys, burst);
            for ((k, r), (ko, &w)) in got.iter().zip(order.iter().zip(&want)) {
                assert_eq!(k, ko);
                assert_eq!(*r, w, "column bursts of {burst}, key {k:?}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn agrees_with_linear((rules, picks) in arb_case()) {
        let c = Classifier::build(&rules);
        let uncrossed = Classifier::build_with(&rules, 0, 0);
        let no_final = Classifier::build_with(&rules, CROSS_BUDGET, 0);
        // Small budgets: some fields crossed only by the larger budget of
        // the final table, some left to the bitmaps.
        let tight = Classifier::build_with(&rules, 64, 1 << 10);
        // A small cross budget and a final table: folded tables.
        let folded = Classifier::build_with(&rules, 64, 1 << 16);
        let keys = packets(&rules, &picks);
        let mut out = vec![None; keys.len()];
        c.classify_burst(&keys, &mut out);
        for (k, o) in keys.iter().zip(&out) {
            let want = linear_classify(&rules, k);
            prop_assert_eq!(c.classify(k), want, "key {:?}", k);
            prop_assert_eq!(*o, want, "burst key {:?}", k);
            prop_assert_eq!(uncrossed.classify(k), want, "uncrossed key {:?}", k);
            prop_assert_eq!(no_final.classify(k), want, "no final table, key {:?}", k);
            prop_assert_eq!(tight.classify(k), want, "small budgets, key {:?}", k);
            prop_assert_eq!(folded.classify(k), want, "folded, key {:?}", k);
        }
        check_bursts(&rules, &c, &keys);
        check_bursts(&rules, &uncrossed, &keys);
        check_bursts(&rules, &no_final, &keys);
        check_bursts(&rules, &tight, &keys);
        check_bursts(&rules, &folded, &keys);

        // A staged build answers the same before and after its refinement.
        let staged = Classifier::build_staged(&rules);
        check_bursts(&rules, &staged, &keys);
        let refinable = staged.needs_refinement();
        prop_assert!(!staged.refine(&rules[..rules.len().saturating_sub(1)]) || rules.is_empty());
        prop_assert_eq!(staged.refine(&rules), refinable);
        prop_assert!(!staged.needs_refinement());
        prop_assert!(!staged.refine(&rules));
        check_bursts(&rules, &staged, &keys);
    }

    #[test]
    fn agrees_on_random_keys(rules in prop::collection::vec(arb_rule(), 0..60),
                             raw in prop::collection::vec((any::<u128>(), any::<u128>(), any::<u8>(), any::<u16>(), any::<u16>(), 0u8..4), 32)) {
        let c = Classifier::build(&rules);
        let mut keys = Vec::new();
        for (s, d, proto, sport, dport, fam) in raw {
            let v4 = |x: u128| IpAddr::V4(Ipv4Addr::from(x as u32));
            let v6 = |x: u128| IpAddr::V6(Ipv6Addr::from(x));
            let (src, dst) = match fam { 0 => (v4(s), v4(d)), 1 => (v6(s), v6(d)), 2 => (v4(s), v6(d)), _ => (v6(s), v4(d)) };
            let k = FlowKey { src, dst, proto, sport, dport };
            prop_assert_eq!(c.classify(&k), linear_classify(&rules, &k));
            keys.push(k);
        }
        check_bursts(&rules, &c, &keys);
    }
}

#[test]
fn more_than_4096_rules() {
    // Several summary words per class bitmap.
    let mut rules: Vec<MatchRule> = (0..5000u16)
        .map(|p| {
            let mut r = MatchRule::any();
            r.dport = vec![PortRange::single(p)];
            r.src = nets(&["10.0.0.0/8", "2001:db8::/32"]);
            r
        })
        .collect();
    rules.push(MatchRule::any());
    let c = Classifier::build(&rules);
    let keys: Vec<FlowKey> = [0u16, 63, 64, 4095, 4096, 4100, 4999, 5000, 65535]
        .iter()
        .flat_map(|&p| {
            [
                key("10.1.2.3", "1.1.1.1", 6, 1, p),
                key("11.1.2.3", "1.1.1.1", 6, 1, p),
                key("2001:db8::1", "::1", 17, 1, p),
            ]
        })
        .collect();
    check(&rules, &keys);
    assert_eq!(c.classify(&keys[15]), Some(4100));
    assert_eq!(c.classify(&keys[16]), Some(5000));
}

#[test]
fn clustered_ipv6() {
    // Many prefixes under 2001:db8::/32, a few outliers: a tree of several
    // levels.
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut rules = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..400u32 {
        let r = u128::from(next());
        let base = (0x2001_0db8u128 << 96) | ((r & 0xffff_ffff) << 64);
        let (addr, len) = match i % 4 {
            0 => (base | u128::from(next()), 128),
            1 => (base, 64),
            2 => (base | (u128::from(next() & 0xff) << 56), 56 + (i % 8) as u8),
            _ => ((0x2000u128 << 112) | (r << 60), 60),
        };
        let net = IpNet::new(IpAddr::V6(Ipv6Addr::from(addr)), len)
            .unwrap()
            .trunc();
        let mut rule = MatchRule::any();
        rule.src = AddrMatch::Prefixes(vec![net]);
        rule.dport = vec![PortRange::single((i % 7) as u16)];
        rules.push(rule);
        let (lo, hi) = match net {
            IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
            IpNet::V4(_) => unreachable!(),
        };
        addrs.extend([
            lo.wrapping_sub(1),
            lo,
            lo + (hi - lo) / 3,
            hi,
            hi.wrapping_add(1),
        ]);
    }
    let c = Classifier::build(&rules);
    match &c.v6.src.as_ref().unwrap().search {
        Search::Tree(t) => assert!(t.inner.len() >= 2),
        Search::Dir(_) => panic!("an IPv6 field searched by the IPv4 trie"),
    }
    let keys: Vec<FlowKey> = addrs
        .iter()
        .enumerate()
        .map(|(i, &a)| FlowKey {
            src: IpAddr::V6(Ipv6Addr::from(a)),
            dst: "::1".parse().unwrap(),
            proto: 6,
            sport: 1,
            dport: (i % 7) as u16,
        })
        .collect();
    check(&rules, &keys);
}

fn check_rank<A: Addr>(keys: &[A], probes: &[A]) {
    let tree = STree::new(keys);
    for &x in probes {
        assert_eq!(
            tree.rank(x),
            keys.partition_point(|&k| k <= x),
            "{x:?} in {} keys",
            keys.len()
        );
    }
}

proptest! {
    #[test]
    fn stree_rank_is_partition_point(mut keys in prop::collection::vec(any::<u32>(), 0..2000),
                                     probes in prop::collection::vec(any::<u32>(), 0..200)) {
        keys.sort_unstable();
        keys.dedup();
        let mut all = probes;
        for &k in keys.iter().step_by(7) {
            all.extend([k, k.wrapping_sub(1), k.wrapping_add(1)]);
        }
        all.extend([0, u32::MAX, u32::MAX - 1]);
        check_rank(&keys, &all);
    }

    #[test]
    fn stree_rank_is_partition_point_v6(mut keys in prop::collection::vec(any::<u128>(), 0..600),
                                        probes in prop::collection::vec(any::<u128>(), 0..100)) {
        keys.sort_unstable();
        keys.dedup();
        let mut all = probes;
        for &k in keys.iter().step_by(5) {
            all.extend([k, k.wrapping_sub(1), k.wrapping_add(1)]);
        }
        all.extend([0, u128::MAX]);
        check_rank(&keys, &all);
    }
}

#[test]
fn stree_edges() {
    check_rank::<u32>(&[], &[0, 1, u32::MAX]);
    check_rank::<u32>(&[u32::MAX], &[0, u32::MAX - 1, u32::MAX]);
    check_rank::<u32>(&[0], &[0, 1, u32::MAX]);
    // Exactly full levels: 16, 16 * 17 and 16 * 17 * 17 keys.
    for n in [16u32, 17, 272, 273, 4624, 4625] {
        let keys: Vec<u32> = (1..=n).map(|k| k * 3).collect();
        let probes: Vec<u32> = (0..=n * 3 + 2).collect();
        check_rank(&keys, &probes);
    }
}
