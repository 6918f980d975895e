//! The compiled classifier: per-field decomposition into equivalence classes
//! with rule bitmaps (Lakshman–Stiliadis bit vectors, RFC-style class ids).
//!
//! ```
//! use lb_core::acl::{AddrMatch, Classifier, FlowKey, MatchRule, PortRange};
//!
//! let mut web = MatchRule::any();
//! web.proto = Some(6);
//! web.dst = AddrMatch::Prefixes(vec!["10.0.0.0/24".parse().unwrap()]);
//! web.dport = vec![PortRange::single(80), PortRange::single(443)];
//! let rules = vec![web, MatchRule::any()];
//! let classifier = Classifier::build(&rules);
//!
//! let key = FlowKey {
//!     src: "192.0.2.7".parse().unwrap(),
//!     dst: "10.0.0.9".parse().unwrap(),
//!     proto: 6,
//!     sport: 40000,
//!     dport: 443,
//! };
//! assert_eq!(classifier.classify(&key), Some(0));
//! assert_eq!(classifier.classify(&FlowKey { dport: 22, ..key }), Some(1));
//!
//! let mut out = [None; 2];
//! classifier.classify_burst(&[key, FlowKey { dport: 22, ..key }], &mut out);
//! assert_eq!(out, [Some(0), Some(1)]);
//!
//! // The same keys as columns (one family), answers as `u32`.
//! use lb_core::acl::{KeyColumnsBuf, NO_MATCH};
//! let mut keys = KeyColumnsBuf::new();
//! keys.push_v4(&key);
//! keys.push_v4(&FlowKey { dport: 22, ..key });
//! keys.push(0x0a00_0001, 0x0a00_0002, 17, 1, 53);
//! let mut out = [0; 3];
//! classifier.classify_v4_columns(&keys.columns(), &mut out);
//! assert_eq!(out, [0, 1, 1]);
//! let no_rules = Classifier::build(&[]);
//! no_rules.classify_v4_columns(&keys.columns(), &mut out);
//! assert_eq!(out, [NO_MATCH; 3]);
//! ```
//!
//! # How it works
//!
//! Rules are split by address family: a rule goes into the IPv4 (IPv6) tables
//! when both of its address fields can match an IPv4 (IPv6) address
//! (`AddrMatch::Any` goes into both). Within a family, rules get a dense local
//! bit number in precedence order.
//!
//! For each of the five fields, the boundaries of every rule's values (each
//! prefix of a prefix list, each range of a port list) cut the field's domain
//! into elementary intervals. A sweep over the sorted boundaries keeps, per
//! rule, how many of its entries cover the current point, so a rule with many
//! prefixes or port ranges stays one bit. Intervals whose rule sets are equal
//! share an equivalence class, which stores the set as a bitmap.
//!
//! A lookup maps each field to its class: protocol through a 256-entry
//! table, ports through 65536-entry tables, IPv4 addresses through a
//! three-step multibit trie (16, 8 and 8 bits, 16-bit entries, classes
//! pushed to the leaves, a class found early carried by conditional moves:
//! three loads and no data-dependent branch), IPv6 addresses through a static B+ tree of 16-key
//! nodes searched branch-free (count the keys not above the address, one
//! node per level). A field with a single class over its whole domain (e.g.
//! source ports that are "any" in every rule) is folded into the protocol
//! bitmaps and costs nothing at lookup time. Then, RFC-style, the class
//! sets are cross-producted into one another while the product stays within
//! a budget (protocol × destination port × source port × the address with
//! fewer classes × the other): each product is a table of class pairs and
//! the deduplicated bitmaps of the resulting classes. When every field made
//! it into the products, the final class stores its first rule and the
//! lookup is a handful of table reads.
//!
//! When one field is left out, its classes and the transport classes index
//! a *final table* holding the first rule of every pair (16-bit entries,
//! computed at build time): the lookup ends with one more table read and
//! no bitmap. The table is folded: equal rows are merged, then equal
//! columns, and the last cross product (or the protocol table) and the
//! field's intervals are rewritten to give the row and column numbers
//! directly, so folding costs nothing at lookup time (sg4_10k: 4991 × 1830
//! pairs fold to 317 × 482). A table of at most 2^21 entries once folded is
//! kept; one of up to 8 × 2^21 is computed to find out (given up early when
//! it has more than 2^21 / 256 distinct rows, which bounds the build time).
//! With a final table the transport bitmaps are dropped. When two or more
//! fields are left out, all but one of them are crossed in with a larger
//! budget (64 times the first) if the one left then gives a final table;
//! the fields that can be the one left are tried in the order of their
//! table's size before folding, the first that folds within the budget
//! taken (a product that would give too many classes stops early).
//! Cross products are therefore applied in any field order (a list of
//! field and table).
//!
//! Otherwise the tuple of the transport class and the classes of the fields
//! left out is looked up in a direct-mapped cache (64K entries, 4K in a staged build; each the
//! packed tuple and its first rule, relaxed atomics: an entry is read and
//! written whole and names its tuple, so concurrent lookups at worst miss;
//! a copy of the classifier starts with an empty cache). On a miss, the
//! bitmaps of the fields left out are ANDed word by word with the
//! product's, stopping at the first non-zero word: its lowest bit is the
//! first matching rule, which the cache then keeps. Since rules are in
//! precedence order, most packets stop in the first words. Each class
//! bitmap begins with summary words (one bit per non-zero word: an
//! aggregated bit vector), so a packet whose first matching rule is deep in
//! the list skips the empty words.
//!
//! A burst of 16 keys or more is classified in groups of up to 64 keys of
//! one family: each step (the protocol and port tables, each trie level or
//! tree level, each cross product, the final table or the bitmap scan) runs
//! over every key of the group before the next step, so that the table
//! reads of different keys overlap instead of waiting on one key's chain of
//! dependent reads. On a CPU with AVX-512 (detected at run time, `lb-simd`),
//! the steps take 16 keys per vector, with as many vectors as the group has
//! keys (1 to 4: a burst of 32 runs two, of 256 four at a time): the table,
//! trie, cross-product and final-table reads are masked gathers (then the
//! local rule number → rule index), bitmaps of up to 64 words are ANDed 8
//! words per instruction, longer ones are followed along their summary bits
//! 8 keys at a time; the scalar steps remain as the fallback and compute the
//! same answers. Smaller bursts take every key's lookup, then every key's
//! scan (through the final table when there is one). Bitmap rows are padded
//! to whole cache lines with their words 64-byte aligned, and the IPv4 trie
//! entries are 16-bit, to keep the tables' cache footprint small.
//!
//! # Key columns
//!
//! [`Classifier::classify_v4_columns`] and
//! [`Classifier::classify_v6_columns`] take the keys of one family as
//! columns ([`KeyColumns`]: source and destination addresses as `u32` or
//! `u128`, protocol `u8`, ports `u16`, one slice each) and write `u32`
//! answers ([`NO_MATCH`] for none). A group's fields are then read straight
//! from the caller's arrays (masked vector loads, zero-extended), with no
//! `IpAddr` to take apart and no `Option` to write: with the final table,
//! this is most of what is left of a small set's time. [`KeyColumnsBuf`]
//! converts [`FlowKey`]s once. Column bursts of 2 to 15 keys take the
//! scalar steps, each over all the keys (too few keys for vectors, whose
//! gathers would wait on one another: a burst of 8 is faster this way than
//! key by key, as the per-key set-up is paid once); a single key takes the
//! per-key path. `classify_burst` over `FlowKey`s fills the same group
//! columns from the keys and runs the same steps (key by key below 16).
//!
//! A key whose source and destination are of different families (no IP
//! header yields one) is answered by a linear scan of the few rules that can
//! match such a key.

//!
//! # Files
//!
//! This file holds the public types and the burst dispatch over the two
//! families; `build.rs` compiles one family's tables (the `Family`
//! struct), `partition.rs` the sweep into classes and their bitmaps,
//! `cross.rs` the cross products, `final_table.rs` the final table's
//! search and folding, `tuple_cache.rs` the cache of the bitmap AND,
//! `addr_tree.rs` the address searches (IPv4 trie, IPv6 B+ tree),
//! `lookup.rs` the per-key and per-group lookups; their AVX-512 steps are
//! the `lb-simd` crate.

mod addr_tree;
mod build;
mod cross;
mod final_table;
mod lookup;
mod partition;
mod tuple_cache;

use std::net::IpAddr;
use std::sync::OnceLock;

use ipnet::IpNet;
use lb_simd as simd;

use super::{AddrMatch, FlowKey, MatchRule, PortRange};

use addr_tree::Addr;
#[cfg(test)]
use addr_tree::{STree, Search};
use build::Family;
use cross::{CROSS_BUDGET, STAGED_CROSS_BUDGET};
use final_table::FINAL_BUDGET;
use partition::admits;

/// The answer of the column bursts ([`Classifier::classify_v4_columns`],
/// [`Classifier::classify_v6_columns`]) for a key that no rule matches.
pub const NO_MATCH: u32 = u32::MAX;

/// Keys of one address family as columns: key `i` is `src[i]`, `dst[i]`,
/// `proto[i]`, `sport[i]`, `dport[i]`, addresses as integers (`u32` for
/// IPv4, `u128` for IPv6, as `u32::from(Ipv4Addr)` and
/// `u128::from(Ipv6Addr)`). The keys are the first [`KeyColumns::len`]
/// (the shortest column).
#[derive(Debug, Clone, Copy)]
pub struct KeyColumns<'a, A> {
    pub src: &'a [A],
    pub dst: &'a [A],
    pub proto: &'a [u8],
    pub sport: &'a [u16],
    pub dport: &'a [u16],
}

impl<'a, A> KeyColumns<'a, A> {
    /// The number of keys: the length of the shortest column.
    #[inline]
    pub fn len(&self) -> usize {
        self.src
            .len()
            .min(self.dst.len())
            .min(self.proto.len())
            .min(self.sport.len())
            .min(self.dport.len())
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys `range` (cut at [`KeyColumns::len`]).
    #[inline]
    pub fn range(&self, range: std::ops::Range<usize>) -> KeyColumns<'a, A> {
        let end = range.end.min(self.len());
        let start = range.start.min(end);
        KeyColumns {
            src: &self.src[start..end],
            dst: &self.dst[start..end],
            proto: &self.proto[start..end],
            sport: &self.sport[start..end],
            dport: &self.dport[start..end],
        }
    }
}

/// Owned [`KeyColumns`], e.g. to convert [`FlowKey`]s once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyColumnsBuf<A> {
    pub src: Vec<A>,
    pub dst: Vec<A>,
    pub proto: Vec<u8>,
    pub sport: Vec<u16>,
    pub dport: Vec<u16>,
}

impl<A: Copy> KeyColumnsBuf<A> {
    pub fn new() -> KeyColumnsBuf<A> {
        KeyColumnsBuf {
            src: Vec::new(),
            dst: Vec::new(),
            proto: Vec::new(),
            sport: Vec::new(),
            dport: Vec::new(),
        }
    }

    /// Appends one key.
    pub fn push(&mut self, src: A, dst: A, proto: u8, sport: u16, dport: u16) {
        self.src.push(src);
        self.dst.push(dst);
        self.proto.push(proto);
        self.sport.push(sport);
        self.dport.push(dport);
    }

    pub fn clear(&mut self) {
        self.src.clear();
        self.dst.clear();
        self.proto.clear();
        self.sport.clear();
        self.dport.clear();
    }

    pub fn len(&self) -> usize {
        self.columns().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys as borrowed columns.
    pub fn columns(&self) -> KeyColumns<'_, A> {
        KeyColumns {
            src: &self.src,
            dst: &self.dst,
            proto: &self.proto,
            sport: &self.sport,
            dport: &self.dport,
        }
    }
}

/// Appends `key` to `buf` if both its addresses are of family `A`.
fn push_key<A: Addr>(buf: &mut KeyColumnsBuf<A>, key: &FlowKey) -> bool {
    match (A::from_ip(key.src), A::from_ip(key.dst)) {
        (Some(s), Some(d)) => {
            buf.push(s, d, key.proto, key.sport, key.dport);
            true
        }
        _ => false,
    }
}

impl KeyColumnsBuf<u32> {
    /// Appends `key` if both its addresses are IPv4; false otherwise.
    pub fn push_v4(&mut self, key: &FlowKey) -> bool {
        push_key(self, key)
    }
}

impl KeyColumnsBuf<u128> {
    /// Appends `key` if both its addresses are IPv6; false otherwise.
    pub fn push_v6(&mut self, key: &FlowKey) -> bool {
        push_key(self, key)
    }
}

/// A compiled rule set answering "first matching rule" for a [`FlowKey`].
#[derive(Debug, Clone)]
pub struct Classifier {
    v4: Family<u32>,
    v6: Family<u128>,
    /// The families [`Classifier::refine`] rebuilt with the final-table
    /// search; lookups take them once they are there.
    refined: OnceLock<Refined>,
    /// Rules that can match a key with mixed address families, with their
    /// index.
    mixed: Vec<(u32, MatchRule)>,
    rules: usize,
}

/// The families of a refined staged build (`None`: the staged one stays).
#[derive(Debug, Clone)]
struct Refined {
    v4: Option<Family<u32>>,
    v6: Option<Family<u128>>,
}

/// The tables of both families that one lookup reads.
#[derive(Clone, Copy)]
struct Tables<'a> {
    v4: &'a Family<u32>,
    v6: &'a Family<u128>,
}

/// Keys per group of [`Classifier::classify_burst`]: each step of the
/// lookup (the protocol and port tables, each trie level, each cross
/// product, the bitmap scan) runs over all the keys of a group before the
/// next step, so that the loads of different keys overlap.
const GROUP: usize = simd::GROUP;

/// Bursts below this size are classified key by key.
const SMALL_BURST: usize = 16;

/// Column bursts below this size are classified key by key; from there to
/// [`SMALL_BURST`] by the scalar steps over all the keys.
const COLUMN_SMALL_BURST: usize = 2;

/// A key's classes in its family (see `Family::lookup`).
#[derive(Debug, Clone, Copy)]
enum Looked {
    V4([u32; 5]),
    V6([u32; 5]),
    Mixed,
}

/// The fields of the keys of one family within a group, one array per
/// field.
#[derive(Debug, Clone)]
struct Group<A> {
    n: usize,
    /// The position of each key in its chunk of the burst.
    at: [u8; GROUP],
    src: [A; GROUP],
    dst: [A; GROUP],
    proto: [u8; GROUP],
    sport: [u16; GROUP],
    dport: [u16; GROUP],
}

impl<A: Addr> Group<A> {
    fn new() -> Group<A> {
        Group {
            n: 0,
            at: [0; GROUP],
            src: [A::default(); GROUP],
            dst: [A::default(); GROUP],
            proto: [0; GROUP],
            sport: [0; GROUP],
            dport: [0; GROUP],
        }
    }

    #[inline(always)]
    fn push(&mut self, at: usize, key: &FlowKey, src: A, dst: A) {
        let j = self.n;
        if j < GROUP {
            self.at[j] = at as u8;
            self.src[j] = src;
            self.dst[j] = dst;
            self.proto[j] = key.proto;
            self.sport[j] = key.sport;
            self.dport[j] = key.dport;
            self.n = j + 1;
        }
    }

    /// Takes the keys of `keys` (at most [`GROUP`]), in order; false (and
    /// the group unusable) when some address is not of this family.
    #[inline(always)]
    fn fill(&mut self, keys: &[FlowKey]) -> bool {
        let mut all = true;
        for (j, k) in keys.iter().enumerate().take(GROUP) {
            let (s, d) = (A::from_ip(k.src), A::from_ip(k.dst));
            all &= s.is_some() & d.is_some();
            self.src[j] = s.unwrap_or_default();
            self.dst[j] = d.unwrap_or_default();
            self.proto[j] = k.proto;
            self.sport[j] = k.sport;
            self.dport[j] = k.dport;
        }
        self.n = keys.len().min(GROUP);
        all
    }

    /// The group's keys as columns.
    #[inline(always)]
    fn columns(&self) -> KeyColumns<'_, A> {
        let n = self.n.min(GROUP);
        KeyColumns {
            src: &self.src[..n],
            dst: &self.dst[..n],
            proto: &self.proto[..n],
            sport: &self.sport[..n],
            dport: &self.dport[..n],
        }
    }

    /// Writes the answers of the group's keys to their places in `out`.
    #[inline(always)]
    fn scatter(&self, res: &[u32; GROUP], out: &mut [Option<u32>]) {
        for (&at, &r) in self.at.iter().zip(res).take(self.n) {
            if let Some(o) = out.get_mut(usize::from(at)) {
                *o = answer(r);
            }
        }
    }
}

impl Classifier {
    /// Compiles `rules`; index order is precedence (0 first).
    pub fn build(rules: &[MatchRule]) -> Classifier {
        Classifier::build_with(rules, CROSS_BUDGET, FINAL_BUDGET)
    }

    /// Compiles `rules` in two steps: this one builds every table but the
    /// final ones, with a smaller cross-product budget (well under a
    /// millisecond at 1000 rules), and the
    /// classifier answers at once; [`Classifier::refine`], called later
    /// with the same rules (from another thread, while this one
    /// classifies), searches for the
    /// final tables, which lookups then take. The answers are the same
    /// before and after; only their speed changes.
    pub fn build_staged(rules: &[MatchRule]) -> Classifier {
        Classifier::build_with(rules, STAGED_CROSS_BUDGET, 0)
    }

    /// A staged build that a final-table search may speed up (see
    /// [`Classifier::refine`]).
    fn staged(&self) -> bool {
        self.v4.refinable || self.v6.refinable
    }

    /// Completes a [`Classifier::build_staged`] of `rules` (the same rules:
    /// a classifier does not keep them): rebuilds the families that a final
    /// table may speed up, with the search for one, and hands them to the
    /// lookups. Returns whether it did (false: nothing to refine, refined
    /// already, or not the rules it was built from). It can take 100 ms or
    /// more on large rule sets; lookups carry on meanwhile.
    pub fn refine(&self, rules: &[MatchRule]) -> bool {
        if !self.staged() || rules.len() != self.rules {
            return false;
        }
        let mut done = false;
        self.refined.get_or_init(|| {
            done = true;
            let v4 = self.v4.refinable;
            let v6 = self.v6.refinable;
            Refined {
                v4: v4.then(|| Family::build(rules, CROSS_BUDGET, FINAL_BUDGET)),
                v6: v6.then(|| Family::build(rules, CROSS_BUDGET, FINAL_BUDGET)),
            }
        });
        done
    }

    /// Whether [`Classifier::refine`] has work left (a staged build not
    /// refined yet).
    pub fn needs_refinement(&self) -> bool {
        self.staged() && self.refined.get().is_none()
    }

    /// The tables the lookups use: the refined ones once they are there.
    /// A lookup takes them once, so that its steps all read the same
    /// tables.
    #[inline(always)]
    fn tables(&self) -> Tables<'_> {
        match self.refined.get() {
            Some(r) => Tables {
                v4: r.v4.as_ref().unwrap_or(&self.v4),
                v6: r.v6.as_ref().unwrap_or(&self.v6),
            },
            None => Tables {
                v4: &self.v4,
                v6: &self.v6,
            },
        }
    }

    /// [`Classifier::build`] with a cross-product budget (0: never cross)
    /// and a final table budget (0: no final table).
    fn build_with(rules: &[MatchRule], cross_budget: usize, final_budget: usize) -> Classifier {
        let mixed = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                (admits::<u32>(&r.src) && admits::<u128>(&r.dst))
                    || (admits::<u128>(&r.src) && admits::<u32>(&r.dst))
            })
            .filter_map(|(i, r)| Some((u32::try_from(i).ok()?, r.clone())))
            .collect();
        Classifier {
            v4: Family::build(rules, cross_budget, final_budget),
            v6: Family::build(rules, cross_budget, final_budget),
            refined: OnceLock::new(),
            mixed,
            rules: rules.len(),
        }
    }

    /// The number of rules the classifier was built from.
    pub fn len(&self) -> usize {
        self.rules
    }

    /// Whether the classifier was built from no rules.
    pub fn is_empty(&self) -> bool {
        self.rules == 0
    }

    /// The index of the first rule matching `key` (as
    /// [`linear_classify`](super::linear_classify)).
    #[inline]
    pub fn classify(&self, key: &FlowKey) -> Option<u32> {
        let t = self.tables();
        self.finish(t, key, &Classifier::lookup(t, key))
    }

    /// The per-field classes of `key` in its family's tables.
    #[inline(always)]
    fn lookup(t: Tables<'_>, key: &FlowKey) -> Looked {
        match (key.src, key.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                Looked::V4(t.v4.lookup(s.into(), d.into(), key.proto, key.sport, key.dport))
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                Looked::V6(t.v6.lookup(s.into(), d.into(), key.proto, key.sport, key.dport))
            }
            _ => Looked::Mixed,
        }
    }

    /// The first rule matching `key`, from its classes.
    #[inline(always)]
    fn finish(&self, t: Tables<'_>, key: &FlowKey, looked: &Looked) -> Option<u32> {
        match looked {
            Looked::V4(c) => t.v4.scan(c),
            Looked::V6(c) => t.v6.scan(c),
            Looked::Mixed => self.mixed(key),
        }
    }

    /// Classifies `keys[i]` into `out[i]` for every `i` below
    /// `min(keys.len(), out.len())`.
    pub fn classify_burst(&self, keys: &[FlowKey], out: &mut [Option<u32>]) {
        if let ([key], [o, ..]) = (keys, &mut *out) {
            *o = self.classify(key);
            return;
        }
        let t = self.tables();
        if keys.len() < SMALL_BURST {
            // Too few keys to fill a vector: every key's lookup, then every
            // key's scan.
            let mut looked = [Looked::Mixed; SMALL_BURST];
            for (k, l) in keys.iter().zip(looked.iter_mut()) {
                *l = Classifier::lookup(t, k);
            }
            for ((k, l), o) in keys.iter().zip(&looked).zip(out.iter_mut()) {
                *o = self.finish(t, k, l);
            }
            return;
        }
        // A family's arrays are set up at its first key only.
        let mut v4: Option<Group<u32>> = None;
        let mut v6: Option<Group<u128>> = None;
        let mut res = [NO_MATCH; GROUP];
        for (kc, oc) in keys.chunks(GROUP).zip(out.chunks_mut(GROUP)) {
            // The usual case, a chunk of one family (the family of its first
            // key): no sorting out.
            let done = match kc.first().map(|k| k.src) {
                Some(IpAddr::V4(_)) => {
                    let g = v4.get_or_insert_with(Group::new);
                    g.fill(kc) && {
                        t.v4.classify_group(&g.columns(), &mut res);
                        true
                    }
                }
                Some(IpAddr::V6(_)) => {
                    let g = v6.get_or_insert_with(Group::new);
                    g.fill(kc) && {
                        t.v6.classify_group(&g.columns(), &mut res);
                        true
                    }
                }
                None => false,
            };
            if done {
                for (o, &r) in oc.iter_mut().zip(&res) {
                    *o = answer(r);
                }
                continue;
            }
            if let Some(g) = v4.as_mut() {
                g.n = 0;
            }
            if let Some(g) = v6.as_mut() {
                g.n = 0;
            }
            for (i, (k, o)) in kc.iter().zip(oc.iter_mut()).enumerate() {
                match (k.src, k.dst) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => {
                        v4.get_or_insert_with(Group::new)
                            .push(i, k, s.into(), d.into());
                    }
                    (IpAddr::V6(s), IpAddr::V6(d)) => {
                        v6.get_or_insert_with(Group::new)
                            .push(i, k, s.into(), d.into());
                    }
                    _ => *o = self.mixed(k),
                }
            }
            if let Some(g) = v4.as_ref().filter(|g| g.n > 0) {
                t.v4.classify_group(&g.columns(), &mut res);
                g.scatter(&res, oc);
            }
            if let Some(g) = v6.as_ref().filter(|g| g.n > 0) {
                t.v6.classify_group(&g.columns(), &mut res);
                g.scatter(&res, oc);
            }
        }
    }

    /// Classifies IPv4 key `i` of `keys` into `out[i]` (the rule index, or
    /// [`NO_MATCH`]) for every `i` below `min(keys.len(), out.len())`: the
    /// answers of [`Classifier::classify`] for the same keys.
    pub fn classify_v4_columns(&self, keys: &KeyColumns<'_, u32>, out: &mut [u32]) {
        self.tables().v4.classify_columns(keys, out);
    }

    /// [`Classifier::classify_v4_columns`] for IPv6 keys.
    pub fn classify_v6_columns(&self, keys: &KeyColumns<'_, u128>, out: &mut [u32]) {
        self.tables().v6.classify_columns(keys, out);
    }

    /// The table shape, for reports: per family, the class counts of each
    /// field.
    pub fn shape(&self) -> String {
        let t = self.tables();
        let staged = if self.needs_refinement() {
            " (staged, not refined yet)"
        } else {
            ""
        };
        format!("v4 {}; v6 {}{staged}", t.v4.shape(), t.v6.shape())
    }

    /// Heap and inline bytes used by the compiled tables.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.v4.memory_bytes()
            + self.v6.memory_bytes()
            + self.refined.get().map_or(0, |r| {
                r.v4.as_ref().map_or(0, Family::memory_bytes)
                    + r.v6.as_ref().map_or(0, Family::memory_bytes)
            })
            + self.mixed.capacity() * std::mem::size_of::<(u32, MatchRule)>()
            + self
                .mixed
                .iter()
                .map(|(_, r)| rule_heap_bytes(r))
                .sum::<usize>()
    }

    #[inline(always)]
    fn mixed(&self, key: &FlowKey) -> Option<u32> {
        self.mixed
            .iter()
            .find(|(_, r)| r.matches(key))
            .map(|(i, _)| *i)
    }
}

/// A rule index or [`NO_MATCH`] as an option.
#[inline(always)]
fn answer(r: u32) -> Option<u32> {
    (r != NO_MATCH).then_some(r)
}

fn rule_heap_bytes(r: &MatchRule) -> usize {
    let addr = |a: &AddrMatch| match a {
        AddrMatch::Any => 0,
        AddrMatch::Prefixes(v) => v.capacity() * std::mem::size_of::<IpNet>(),
    };
    addr(&r.src)
        + addr(&r.dst)
        + (r.sport.capacity() + r.dport.capacity()) * std::mem::size_of::<PortRange>()
}

#[cfg(test)]
mod tests;
