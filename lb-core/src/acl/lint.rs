//! Rules that can never match, duplicates and redundant rules.
//!
//! ```
//! use lb_core::acl::lint::{lint, Finding, FindingKind, LintRule};
//! use lb_core::acl::{AddrMatch, MatchRule, PortRange};
//!
//! let ssh = |net: &str| {
//!     let mut r = MatchRule::any();
//!     r.proto = Some(6);
//!     r.src = AddrMatch::Prefixes(vec![net.parse().unwrap()]);
//!     r.dport = vec![PortRange::single(22)];
//!     LintRule { rule: r, allow: true }
//! };
//! let rules = vec![ssh("10.0.0.0/8"), ssh("10.1.0.0/16"), ssh("10.0.0.0/8")];
//! let findings = lint(&rules);
//! assert_eq!(
//!     findings,
//!     vec![
//!         Finding { kind: FindingKind::Shadowed, rule: 1, by: 0 },
//!         Finding { kind: FindingKind::Duplicate, rule: 2, by: 0 },
//!     ]
//! );
//! assert_eq!(findings[0].to_string(), "rule 1 is shadowed by rule 0");
//! ```
//!
//! Every finding is exact: removing the reported rule (alone) changes the
//! verdict of no packet, where a packet that no rule matches is denied.
//! Coverage is decided on the exact sets each field matches (prefix lists and
//! port lists are merged into sorted disjoint ranges), and a rule is also
//! reported as shadowed when the *union* of earlier rules covers it (decided
//! by splitting it into boxes, within a work budget: beyond it, nothing is
//! reported).
//!
//! Not reported: a deny rule made useless by the implicit final deny (there is
//! no rule to name as `by`).

use std::fmt;

use super::{AddrMatch, MatchRule, PortRange};
use ipnet::IpNet;

/// A rule with its action, in precedence order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintRule {
    pub rule: MatchRule,
    pub allow: bool,
}

/// What is wrong with a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FindingKind {
    /// Same match and same action as the earlier rule `by`.
    Duplicate,
    /// Every packet it matches is matched by an earlier rule (`by`, or the
    /// union of earlier rules starting with `by`), so it never decides.
    Shadowed,
    /// The later rule `by` has the same action and covers it, and no rule in
    /// between with the other action overlaps it: removing it changes no
    /// verdict.
    Redundant,
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FindingKind::Duplicate => "duplicate of",
            FindingKind::Shadowed => "shadowed by",
            FindingKind::Redundant => "redundant with",
        })
    }
}

/// One finding: `rule` is `kind` `by` (indexes into the linted slice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Finding {
    pub kind: FindingKind,
    pub rule: usize,
    pub by: usize,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {} is {} rule {}", self.rule, self.kind, self.by)
    }
}

/// Work budget of the union-coverage check of one rule: a candidate rule
/// examined costs 1, a split [`SPLIT_COST`].
const UNION_BUDGET: usize = 2048;
const SPLIT_COST: usize = 32;

/// Lints `rules` (precedence order); at most one finding per rule, in rule
/// order. Duplicates are reported before shadowing, shadowing before
/// redundancy.
pub fn lint(rules: &[LintRule]) -> Vec<Finding> {
    let boxes: Vec<Boxed> = rules.iter().map(|r| Boxed::of(&r.rule)).collect();
    let mut findings = Vec::new();
    for (i, (r, b)) in rules.iter().zip(&boxes).enumerate() {
        let earlier = boxes.get(..i).unwrap_or(&[]);
        let finding = |kind, by| Finding { kind, rule: i, by };
        let dup = earlier
            .iter()
            .zip(rules)
            .position(|(e, er)| er.allow == r.allow && e.same(b));
        if let Some(by) = dup {
            findings.push(finding(FindingKind::Duplicate, by));
            continue;
        }
        if let Some(by) = earlier.iter().position(|e| e.covers(b)) {
            findings.push(finding(FindingKind::Shadowed, by));
            continue;
        }
        let overlapping: Vec<(usize, &Boxed)> = earlier
            .iter()
            .enumerate()
            .filter(|(_, e)| e.overlaps(b))
            .collect();
        if let Some(&(by, _)) = overlapping.first() {
            let cands: Vec<&Boxed> = overlapping.iter().map(|&(_, e)| e).collect();
            let mut budget = UNION_BUDGET;
            if covered_by_union(b.clone(), &cands, &mut budget) {
                findings.push(finding(FindingKind::Shadowed, by));
                continue;
            }
        }
    }
    // Redundancy, against later rules that are not themselves reported (so
    // that a pair of equal rules is not reported twice, each time naming the
    // other).
    let mut reported = vec![false; rules.len()];
    for fd in &findings {
        if let Some(r) = reported.get_mut(fd.rule) {
            *r = true;
        }
    }
    for (i, (r, b)) in rules.iter().zip(&boxes).enumerate() {
        if reported.get(i).copied().unwrap_or(true) {
            continue;
        }
        for (j, (l, lb)) in rules.iter().zip(&boxes).enumerate().skip(i + 1) {
            if l.allow == r.allow {
                if !reported.get(j).copied().unwrap_or(true) && lb.covers(b) {
                    findings.push(Finding {
                        kind: FindingKind::Redundant,
                        rule: i,
                        by: j,
                    });
                    break;
                }
            } else if lb.overlaps(b) {
                break;
            }
        }
    }
    findings.sort_by_key(|fd| fd.rule);
    findings
}

/// Whether every point of `b` is in one of `cands`; `false` when the budget
/// runs out.
fn covered_by_union(b: Boxed, cands: &[&Boxed], budget: &mut usize) -> bool {
    if b.is_empty() {
        return true;
    }
    for (k, a) in cands.iter().enumerate() {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        if !a.overlaps(&b) {
            continue;
        }
        if a.covers(&b) {
            return true;
        }
        if *budget < SPLIT_COST {
            return false;
        }
        *budget -= SPLIT_COST;
        let rest = cands.get(k + 1..).unwrap_or(&[]);
        return b
            .minus(a)
            .into_iter()
            .all(|piece| covered_by_union(piece, rest, budget));
    }
    false
}

/// A value type of a field.
trait Point: Copy + Ord {
    const MIN: Self;
    const MAX: Self;
    fn succ(self) -> Option<Self>;
    fn pred(self) -> Option<Self>;
}

macro_rules! point {
    ($($t:ty),*) => {$(
        impl Point for $t {
            const MIN: Self = <$t>::MIN;
            const MAX: Self = <$t>::MAX;
            fn succ(self) -> Option<Self> {
                self.checked_add(1)
            }
            fn pred(self) -> Option<Self> {
                self.checked_sub(1)
            }
        }
    )*};
}
point!(u8, u16, u32, u128);

/// A set of values as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Set<T>(Vec<(T, T)>);

impl<T: Point> Set<T> {
    fn full() -> Self {
        Set(vec![(T::MIN, T::MAX)])
    }

    fn from_ranges(mut v: Vec<(T, T)>) -> Self {
        v.retain(|(lo, hi)| lo <= hi);
        v.sort_unstable();
        let mut out: Vec<(T, T)> = Vec::with_capacity(v.len());
        for (lo, hi) in v {
            match out.last_mut() {
                Some(last) if last.1.succ().is_none_or(|n| n >= lo) => {
                    last.1 = last.1.max(hi);
                }
                _ => out.push((lo, hi)),
            }
        }
        Set(out)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The smallest range holding the set.
    fn hull(&self) -> Option<(T, T)> {
        Some((self.0.first()?.0, self.0.last()?.1))
    }

    /// Quick necessary condition for `self.contains(other)`.
    fn hull_contains(&self, other: &Self) -> bool {
        match (self.hull(), other.hull()) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(a), Some(b)) => a.0 <= b.0 && b.1 <= a.1,
        }
    }

    /// Quick necessary condition for `self.intersects(other)`.
    fn hull_intersects(&self, other: &Self) -> bool {
        match (self.hull(), other.hull()) {
            (Some(a), Some(b)) => a.0.max(b.0) <= a.1.min(b.1),
            _ => false,
        }
    }

    fn contains(&self, other: &Self) -> bool {
        other.0.iter().all(|&(lo, hi)| {
            let i = self.0.partition_point(|r| r.0 <= lo);
            i > 0 && self.0.get(i - 1).is_some_and(|r| r.1 >= hi)
        })
    }

    fn intersect(&self, other: &Self) -> Self {
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while let (Some(&a), Some(&b)) = (self.0.get(i), other.0.get(j)) {
            let lo = a.0.max(b.0);
            let hi = a.1.min(b.1);
            if lo <= hi {
                out.push((lo, hi));
            }
            if a.1 < b.1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        Set(out)
    }

    fn intersects(&self, other: &Self) -> bool {
        let (mut i, mut j) = (0, 0);
        while let (Some(&a), Some(&b)) = (self.0.get(i), other.0.get(j)) {
            if a.0.max(b.0) <= a.1.min(b.1) {
                return true;
            }
            if a.1 < b.1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        false
    }

    fn minus(&self, other: &Self) -> Self {
        let mut out = Vec::new();
        for &(lo, hi) in &self.0 {
            let mut cur = Some(lo);
            for &(olo, ohi) in &other.0 {
                let Some(c) = cur else { break };
                if ohi < c || olo > hi {
                    continue;
                }
                if olo > c {
                    if let Some(p) = olo.pred() {
                        out.push((c, p));
                    }
                }
                cur = ohi.succ().filter(|&n| n <= hi);
            }
            if let Some(c) = cur {
                out.push((c, hi));
            }
        }
        Set(out)
    }
}

/// The match of a rule as exact per-field sets.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Boxed {
    proto: Set<u8>,
    src4: Set<u32>,
    src6: Set<u128>,
    dst4: Set<u32>,
    dst6: Set<u128>,
    sport: Set<u16>,
    dport: Set<u16>,
}

fn addr_sets(m: &AddrMatch) -> (Set<u32>, Set<u128>) {
    match m {
        AddrMatch::Any => (Set::full(), Set::full()),
        AddrMatch::Prefixes(nets) => {
            let mut v4 = Vec::new();
            let mut v6 = Vec::new();
            for n in nets {
                match n {
                    IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                    IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
                }
            }
            (Set::from_ranges(v4), Set::from_ranges(v6))
        }
    }
}

fn port_set(p: &[PortRange]) -> Set<u16> {
    Set::from_ranges(p.iter().map(|r| (r.lo, r.hi)).collect())
}

impl Boxed {
    fn of(r: &MatchRule) -> Boxed {
        let (src4, src6) = addr_sets(&r.src);
        let (dst4, dst6) = addr_sets(&r.dst);
        Boxed {
            proto: match r.proto {
                None => Set::full(),
                Some(p) => Set(vec![(p, p)]),
            },
            src4,
            src6,
            dst4,
            dst6,
            sport: port_set(&r.sport),
            dport: port_set(&r.dport),
        }
    }

    /// Whether the box holds no packet (a key's families may differ, so the
    /// address sets are a union of four products).
    fn is_empty(&self) -> bool {
        let src_empty = self.src4.is_empty() && self.src6.is_empty();
        let dst_empty = self.dst4.is_empty() && self.dst6.is_empty();
        self.proto.is_empty()
            || src_empty
            || dst_empty
            || self.sport.is_empty()
            || self.dport.is_empty()
    }

    /// Same set of packets.
    fn same(&self, other: &Boxed) -> bool {
        (self.is_empty() && other.is_empty()) || self == other
    }

    /// Whether every packet of `other` is in `self`. Exact: with `other`
    /// non-empty, product containment is per-field containment.
    fn covers(&self, other: &Boxed) -> bool {
        other.is_empty()
            || (self.hull_covers(other)
                && self.proto.contains(&other.proto)
                && self.src4.contains(&other.src4)
                && self.src6.contains(&other.src6)
                && self.dst4.contains(&other.dst4)
                && self.dst6.contains(&other.dst6)
                && self.sport.contains(&other.sport)
                && self.dport.contains(&other.dport))
    }

    /// Cheap necessary condition for [`Boxed::covers`] (`other` non-empty).
    fn hull_covers(&self, other: &Boxed) -> bool {
        self.proto.hull_contains(&other.proto)
            && self.sport.hull_contains(&other.sport)
            && self.dport.hull_contains(&other.dport)
            && self.src4.hull_contains(&other.src4)
            && self.dst4.hull_contains(&other.dst4)
            && self.src6.hull_contains(&other.src6)
            && self.dst6.hull_contains(&other.dst6)
    }

    /// Cheap necessary condition for [`Boxed::overlaps`].
    fn hull_overlaps(&self, other: &Boxed) -> bool {
        self.proto.hull_intersects(&other.proto)
            && self.sport.hull_intersects(&other.sport)
            && self.dport.hull_intersects(&other.dport)
            && (self.src4.hull_intersects(&other.src4) || self.src6.hull_intersects(&other.src6))
            && (self.dst4.hull_intersects(&other.dst4) || self.dst6.hull_intersects(&other.dst6))
    }

    /// Whether some packet is in both.
    fn overlaps(&self, other: &Boxed) -> bool {
        self.hull_overlaps(other)
            && self.proto.intersects(&other.proto)
            && (self.src4.intersects(&other.src4) || self.src6.intersects(&other.src6))
            && (self.dst4.intersects(&other.dst4) || self.dst6.intersects(&other.dst6))
            && self.sport.intersects(&other.sport)
            && self.dport.intersects(&other.dport)
    }

    /// `self \ other` as disjoint boxes. The address fields are split as
    /// (src, dst) with src = (src4, src6) one field, so pieces stay products.
    fn minus(&self, other: &Boxed) -> Vec<Boxed> {
        let mut pieces = Vec::new();
        let mut inside = self.clone();
        // proto
        let mut p = inside.clone();
        p.proto = inside.proto.minus(&other.proto);
        pieces.push(p);
        inside.proto = inside.proto.intersect(&other.proto);
        // src
        let mut p = inside.clone();
        p.src4 = inside.src4.minus(&other.src4);
        p.src6 = inside.src6.minus(&other.src6);
        pieces.push(p);
        inside.src4 = inside.src4.intersect(&other.src4);
        inside.src6 = inside.src6.intersect(&other.src6);
        // dst
        let mut p = inside.clone();
        p.dst4 = inside.dst4.minus(&other.dst4);
        p.dst6 = inside.dst6.minus(&other.dst6);
        pieces.push(p);
        inside.dst4 = inside.dst4.intersect(&other.dst4);
        inside.dst6 = inside.dst6.intersect(&other.dst6);
        // sport
        let mut p = inside.clone();
        p.sport = inside.sport.minus(&other.sport);
        pieces.push(p);
        inside.sport = inside.sport.intersect(&other.sport);
        // dport
        let mut p = inside;
        p.dport = p.dport.minus(&other.dport);
        pieces.push(p);
        pieces.retain(|b| !b.is_empty());
        pieces
    }
}

#[cfg(test)]
mod tests;
