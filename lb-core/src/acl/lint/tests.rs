use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;

use super::super::{linear_classify, AddrMatch, FlowKey, MatchRule, PortRange};
use super::{lint, Finding, FindingKind, LintRule};

fn rule(proto: Option<u8>, src: &[&str], dports: &[(u16, u16)], allow: bool) -> LintRule {
    let mut r = MatchRule::any();
    r.proto = proto;
    if !src.is_empty() {
        r.src = AddrMatch::Prefixes(src.iter().map(|s| s.parse().unwrap()).collect());
    }
    if !dports.is_empty() {
        r.dport = dports
            .iter()
            .map(|&(lo, hi)| PortRange::new(lo, hi))
            .collect();
    }
    LintRule { rule: r, allow }
}

fn f(kind: FindingKind, rule: usize, by: usize) -> Finding {
    Finding { kind, rule, by }
}

#[test]
fn duplicate() {
    let rules = vec![
        rule(Some(6), &["10.0.0.0/8"], &[(22, 22)], true),
        rule(Some(6), &["10.0.0.0/9", "10.128.0.0/9"], &[(22, 22)], true),
    ];
    assert_eq!(lint(&rules), vec![f(FindingKind::Duplicate, 1, 0)]);
    assert_eq!(FindingKind::Duplicate.to_string(), "duplicate of");
}

#[test]
fn same_match_other_action_is_shadowed() {
    let rules = vec![
        rule(Some(6), &["10.0.0.0/8"], &[(22, 22)], true),
        rule(Some(6), &["10.0.0.0/8"], &[(22, 22)], false),
    ];
    assert_eq!(lint(&rules), vec![f(FindingKind::Shadowed, 1, 0)]);
    assert_eq!(FindingKind::Shadowed.to_string(), "shadowed by");
}

#[test]
fn shadowed_by_prefix_list_and_port_list() {
    let rules = vec![
        rule(
            None,
            &["10.0.0.0/8", "192.168.0.0/16"],
            &[(20, 30), (31, 40)],
            true,
        ),
        rule(
            Some(17),
            &["192.168.3.0/24", "10.1.2.3/32"],
            &[(25, 35)],
            false,
        ),
    ];
    assert_eq!(lint(&rules), vec![f(FindingKind::Shadowed, 1, 0)]);
}

#[test]
fn shadowed_by_union() {
    let rules = vec![
        rule(Some(6), &["10.0.0.0/9"], &[(0, 100)], false),
        rule(Some(6), &["10.128.0.0/9"], &[(0, 65535)], false),
        rule(Some(6), &["10.0.0.0/9"], &[(101, 65535)], true),
        rule(Some(6), &["10.0.0.0/8"], &[(80, 80)], true),
    ];
    assert_eq!(lint(&rules), vec![f(FindingKind::Shadowed, 3, 0)]);
}

#[test]
fn redundant() {
    let rules = vec![
        rule(Some(6), &["10.1.0.0/16"], &[(443, 443)], true),
        rule(Some(6), &["192.168.0.0/16"], &[(443, 443)], false),
        rule(Some(6), &["10.0.0.0/8"], &[(443, 443)], true),
    ];
    assert_eq!(lint(&rules), vec![f(FindingKind::Redundant, 0, 2)]);
    assert_eq!(FindingKind::Redundant.to_string(), "redundant with");
}

#[test]
fn not_redundant_when_other_action_between_overlaps() {
    let rules = vec![
        rule(Some(6), &["10.1.0.0/16"], &[(443, 443)], true),
        rule(Some(6), &["10.1.2.0/24"], &[(400, 500)], false),
        rule(Some(6), &["10.0.0.0/8"], &[(443, 443)], true),
    ];
    assert_eq!(lint(&rules), vec![]);
}

#[test]
fn partial_overlap_not_reported() {
    let rules = vec![
        rule(Some(6), &["10.0.0.0/8"], &[(1, 100)], true),
        rule(Some(6), &["10.0.0.0/7"], &[(50, 60)], false),
        rule(None, &["10.0.0.0/8"], &[(50, 200)], true),
        rule(
            Some(6),
            &["2001:db8::/32", "10.0.0.0/8"],
            &[(50, 60)],
            false,
        ),
    ];
    assert_eq!(lint(&rules), vec![]);
}

#[test]
fn families_matter() {
    // 0.0.0.0/0 does not cover ::/0, Any covers both.
    let rules = vec![
        rule(None, &["0.0.0.0/0"], &[], true),
        rule(None, &[], &[], true),
        rule(None, &["::/0"], &[], false),
    ];
    assert_eq!(
        lint(&rules),
        vec![
            f(FindingKind::Redundant, 0, 1),
            f(FindingKind::Shadowed, 2, 1)
        ]
    );
}

#[test]
fn empty_rule_never_matches() {
    let rules = vec![
        rule(None, &[], &[], true),
        LintRule {
            rule: MatchRule {
                dst: AddrMatch::Prefixes(vec![]),
                ..MatchRule::any()
            },
            allow: false,
        },
    ];
    assert_eq!(lint(&rules), vec![f(FindingKind::Shadowed, 1, 0)]);
    assert_eq!(lint(&[]), vec![]);
}

// ---- proptest ----

fn arb_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        4 => (0u32..16, prop_oneof![Just(0u8), 28u8..=32]).prop_map(|(a, len)| {
            IpNet::new(IpAddr::V4(Ipv4Addr::from(0x0A00_0000 | a)), len).unwrap().trunc()
        }),
        1 => (0u128..16, prop_oneof![Just(0u8), 124u8..=128]).prop_map(|(a, len)| {
            IpNet::new(IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) | a)), len)
                .unwrap()
                .trunc()
        }),
    ]
}

fn arb_addr() -> impl Strategy<Value = AddrMatch> {
    prop_oneof![
        3 => Just(AddrMatch::Any),
        1 => Just(AddrMatch::Prefixes(vec![])),
        6 => prop::collection::vec(arb_net(), 1..4).prop_map(AddrMatch::Prefixes),
    ]
}

fn arb_ports() -> impl Strategy<Value = Vec<PortRange>> {
    prop_oneof![
        3 => Just(vec![PortRange::ANY]),
        4 => prop::collection::vec((0u16..8, 0u16..4).prop_map(|(lo, w)| PortRange::new(lo, lo + w)), 1..3),
    ]
}

fn arb_lint_rule() -> impl Strategy<Value = LintRule> {
    (
        prop_oneof![Just(None), Just(Some(6u8)), Just(Some(17u8))],
        arb_addr(),
        arb_addr(),
        arb_ports(),
        arb_ports(),
        any::<bool>(),
    )
        .prop_map(|(proto, src, dst, sport, dport, allow)| LintRule {
            rule: MatchRule {
                proto,
                src,
                dst,
                sport,
                dport,
            },
            allow,
        })
}

fn arb_key() -> impl Strategy<Value = FlowKey> {
    let v4 = (0u32..18).prop_map(|a| IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + a)));
    let v6 = (0u128..18).prop_map(|a| IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) + a)));
    (
        any::<bool>(),
        v4.clone(),
        v4,
        v6.clone(),
        v6,
        prop_oneof![Just(6u8), Just(17u8), Just(1u8)],
        0u16..14,
        0u16..14,
    )
        .prop_map(|(six, s4, d4, s6, d6, proto, sport, dport)| FlowKey {
            src: if six { s6 } else { s4 },
            dst: if six { d6 } else { d4 },
            proto,
            sport,
            dport,
        })
}

fn verdict(rules: &[LintRule], k: &FlowKey) -> bool {
    let m: Vec<MatchRule> = rules.iter().map(|r| r.rule.clone()).collect();
    linear_classify(&m, k).is_some_and(|i| rules[i as usize].allow)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn findings_are_safe(rules in prop::collection::vec(arb_lint_rule(), 0..24),
                         keys in prop::collection::vec(arb_key(), 200)) {
        let findings = lint(&rules);
        let plain: Vec<MatchRule> = rules.iter().map(|r| r.rule.clone()).collect();
        for fd in &findings {
            prop_assert!(fd.rule < rules.len() && fd.by < rules.len() && fd.rule != fd.by);
            if fd.kind == FindingKind::Shadowed || fd.kind == FindingKind::Duplicate {
                prop_assert!(fd.by < fd.rule);
                for k in &keys {
                    prop_assert_ne!(linear_classify(&plain, k), Some(fd.rule as u32), "{:?} {:?}", fd, k);
                }
            }
            let mut without = rules.clone();
            without.remove(fd.rule);
            for k in &keys {
                prop_assert_eq!(verdict(&rules, k), verdict(&without, k), "{:?} {:?}", fd, k);
            }
        }
    }
}
