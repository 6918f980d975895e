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
//! dependent reads. On a CPU with AVX-512 (detected at run time, `simd`),
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

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use ahash::AHashMap;
use ipnet::IpNet;

use super::{AddrMatch, FlowKey, MatchRule, PortRange};

#[allow(unsafe_code)]
mod simd;

use simd::{AddrStep, Avx512, Finish, Input, Plan, Trie};

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

/// An address family's integer form.
trait Addr: Copy + Ord + Default + std::fmt::Debug {
    const BITS: u32;
    const MAX: u128;
    /// The largest address.
    const LAST: Self;
    /// The form of an address in [`STree`] nodes.
    type Key: Copy + std::fmt::Debug;
    fn key(self) -> Self::Key;
    /// How many keys of `node` are not above `x`.
    fn count_le(node: &[Self::Key; NODE], x: Self::Key) -> usize;
    fn from_u128(v: u128) -> Self;
    fn to_u128(self) -> u128;
    /// `ip` if it is of this family.
    fn from_ip(ip: IpAddr) -> Option<Self>;
    /// The addresses as `u32`s when they are (IPv4).
    fn as_u32s(s: &[Self]) -> Option<&[u32]>;
    /// The inclusive range of `net` if it is of this family.
    fn range(net: &IpNet) -> Option<(u128, u128)>;
}

impl Addr for u32 {
    const BITS: u32 = 32;
    const MAX: u128 = u32::MAX as u128;
    const LAST: Self = u32::MAX;
    /// Sign-flipped, so that a signed comparison orders it as unsigned (SSE2
    /// has signed 32-bit comparisons only).
    type Key = i32;
    #[inline(always)]
    fn key(self) -> i32 {
        (self ^ 0x8000_0000) as i32
    }
    #[inline(always)]
    fn count_le(node: &[i32; NODE], x: i32) -> usize {
        node.iter().filter(|&&k| k <= x).count()
    }
    #[inline]
    fn from_u128(v: u128) -> Self {
        v as u32
    }
    #[inline]
    fn to_u128(self) -> u128 {
        self.into()
    }
    #[inline(always)]
    fn from_ip(ip: IpAddr) -> Option<u32> {
        match ip {
            IpAddr::V4(a) => Some(a.into()),
            IpAddr::V6(_) => None,
        }
    }
    #[inline(always)]
    fn as_u32s(s: &[u32]) -> Option<&[u32]> {
        Some(s)
    }
    fn range(net: &IpNet) -> Option<(u128, u128)> {
        match net {
            IpNet::V4(n) => Some((
                u32::from(n.network()).into(),
                u32::from(n.broadcast()).into(),
            )),
            IpNet::V6(_) => None,
        }
    }
}

impl Addr for u128 {
    const BITS: u32 = 128;
    const MAX: u128 = u128::MAX;
    const LAST: Self = u128::MAX;
    type Key = u128;
    #[inline(always)]
    fn key(self) -> u128 {
        self
    }
    #[inline(always)]
    fn count_le(node: &[u128; NODE], x: u128) -> usize {
        // 128-bit comparisons are scalar: a branch-free binary search over
        // the sorted keys (five comparisons) instead of sixteen.
        let mut i = 0;
        for step in [8, 4, 2, 1] {
            i += step * usize::from(node[i + step - 1] <= x);
        }
        i + usize::from(node[i] <= x)
    }
    #[inline]
    fn from_u128(v: u128) -> Self {
        v
    }
    #[inline]
    fn to_u128(self) -> u128 {
        self
    }
    #[inline(always)]
    fn from_ip(ip: IpAddr) -> Option<u128> {
        match ip {
            IpAddr::V6(a) => Some(a.into()),
            IpAddr::V4(_) => None,
        }
    }
    #[inline(always)]
    fn as_u32s(_: &[u128]) -> Option<&[u32]> {
        None
    }
    fn range(net: &IpNet) -> Option<(u128, u128)> {
        match net {
            IpNet::V6(n) => Some((n.network().into(), n.broadcast().into())),
            IpNet::V4(_) => None,
        }
    }
}

/// Whether `m` can match some address of family `A`.
fn admits<A: Addr>(m: &AddrMatch) -> bool {
    match m {
        AddrMatch::Any => true,
        AddrMatch::Prefixes(nets) => nets.iter().any(|n| A::range(n).is_some()),
    }
}

/// Pushes the start/end events of the inclusive range `lo..=hi` over a domain
/// ending at `max`.
fn push_range(events: &mut Vec<Event>, rule: u32, lo: u128, hi: u128, max: u128) {
    if lo > hi {
        return;
    }
    events.push(Event {
        pos: lo,
        rule,
        start: true,
    });
    if hi < max {
        events.push(Event {
            pos: hi + 1,
            rule,
            start: false,
        });
    }
}

#[derive(Debug, Clone, Copy)]
struct Event {
    pos: u128,
    rule: u32,
    start: bool,
}

/// A field's domain cut into intervals, each with a class, and the classes'
/// rule bitmaps.
#[derive(Debug, Clone, Default)]
struct Partition {
    /// Sorted interval starts; the first is 0.
    starts: Vec<u128>,
    /// The class of each interval.
    class_of: Vec<u32>,
    /// `classes * words` bitmap words.
    bits: Vec<u64>,
    classes: usize,
}

fn zobrist(rule: u32) -> u64 {
    // splitmix64
    let mut z = u64::from(rule)
        .wrapping_add(1)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Sweeps `events` (any order) for `rules` rules with `words`-word bitmaps.
fn partition(rules: usize, words: usize, events: &mut [Event]) -> Partition {
    events.sort_unstable_by_key(|e| e.pos);
    let mut count = vec![0u32; rules];
    let mut cur = vec![0u64; words];
    let mut hash = 0u64;
    // Class 0: no rule.
    let mut p = Partition {
        starts: vec![0],
        class_of: vec![0],
        bits: vec![0; words],
        classes: 1,
    };
    let mut known: AHashMap<u64, u32> = AHashMap::new();
    known.insert(0, 0);
    let mut i = 0;
    while let Some(&Event { pos, .. }) = events.get(i) {
        while let Some(e) = events.get(i).filter(|e| e.pos == pos) {
            let r = e.rule as usize;
            if let Some(c) = count.get_mut(r) {
                let was = *c > 0;
                if e.start {
                    *c += 1;
                } else {
                    *c = c.saturating_sub(1);
                }
                if was != (*c > 0) {
                    if let Some(w) = cur.get_mut(r / 64) {
                        *w ^= 1 << (r % 64);
                    }
                    hash ^= zobrist(e.rule);
                }
            }
            i += 1;
        }
        let class = match known.get(&hash) {
            Some(&c) if class_bits(&p.bits, c, words) == cur.as_slice() => c,
            found => {
                let c = p.classes as u32;
                p.bits.extend_from_slice(&cur);
                p.classes += 1;
                if found.is_none() {
                    known.insert(hash, c);
                }
                c
            }
        };
        if p.starts.last() == Some(&pos) {
            // Only at position 0.
            if let Some(last) = p.class_of.last_mut() {
                *last = class;
            }
        } else if p.class_of.last() != Some(&class) {
            p.starts.push(pos);
            p.class_of.push(class);
        }
    }
    p
}

#[inline]
fn class_bits(bits: &[u64], class: u32, words: usize) -> &[u64] {
    let start = class as usize * words;
    bits.get(start..start + words).unwrap_or(&[])
}

/// Class bitmaps laid out for the scans: per class, `summary(words)`
/// summary words (bit `i` set when word `i` is non-zero), the words, then
/// zero words up to [`stride`]`(words)`, a multiple of 8; the first row
/// starts at `off`, chosen so that every row's words start on a 64-byte
/// boundary (a 16-word bitmap is two cache lines, not three). A copy may
/// lose the alignment (the allocation moves), not the layout.
#[derive(Debug, Clone, Default)]
struct Rows {
    bits: Vec<u64>,
    off: usize,
}

impl Rows {
    /// The rows, the first at 0.
    #[inline(always)]
    fn rows(&self) -> &[u64] {
        self.bits.get(self.off..).unwrap_or(&[])
    }

    fn memory_bytes(&self) -> usize {
        self.bits.capacity() * 8
    }
}

/// Words per class in [`Rows`].
fn stride(words: usize) -> usize {
    (summary(words) + words).next_multiple_of(8)
}

/// Lays out `words`-word class bitmaps as [`Rows`].
fn with_summary(bits: &[u64], words: usize) -> Rows {
    let s = summary(words);
    let stride = stride(words);
    let classes = bits.len() / words.max(1);
    let mut out: Vec<u64> = Vec::with_capacity(classes * stride + 8);
    // The allocation does not move while it is filled.
    let at = out.as_ptr() as usize / 8;
    let off = (8 - (at + s) % 8) % 8;
    out.resize(off, 0);
    for class in bits.chunks(words.max(1)) {
        let start = out.len();
        out.resize(start + s, 0);
        for (i, &w) in class.iter().enumerate() {
            if w != 0 {
                if let Some(sw) = out.get_mut(start + i / 64) {
                    *sw |= 1 << (i % 64);
                }
            }
        }
        out.extend_from_slice(class);
        out.resize(start + stride, 0);
    }
    Rows { bits: out, off }
}

/// Summary words of a `words`-word bitmap.
fn summary(words: usize) -> usize {
    words.div_ceil(64)
}

/// The lowest bit set in all `N` bitmaps (each `s` summary words then the
/// words, as laid out by [`with_summary`]).
#[inline(always)]
fn first_common<const N: usize>(rows: [&[u64]; N], s: usize) -> Option<usize> {
    let n = rows.iter().map(|r| r.len()).min()?;
    let rows = rows.map(|r| &r[..n]);
    let and = |w: usize| rows.iter().fold(u64::MAX, |acc, r| acc & r[w]);
    for i in 0..s.min(n) {
        let mut m = and(i);
        while m != 0 {
            let w = s + i * 64 + m.trailing_zeros() as usize;
            if w >= n {
                break;
            }
            let x = and(w);
            if x != 0 {
                return Some((w - s) * 64 + x.trailing_zeros() as usize);
            }
            m &= m - 1;
        }
    }
    None
}

/// [`first_common`] for two bitmaps of one summary word (skipped) then
/// `words` words (at most 64 read; the padding of [`Rows`] is not),
/// ANDing every word, without branches, into a mask of the non-zero
/// ones.
#[inline(always)]
fn first_common_dense(a: &[u64], b: &[u64], words: usize) -> Option<usize> {
    let n = a.len().min(b.len()).min(words.min(64) + 1);
    let (a, b) = (a.get(1..n)?, b.get(1..n)?);
    let mut mask = 0u64;
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        mask |= u64::from(x & y != 0) << i;
    }
    let w = mask.trailing_zeros() as usize;
    let x = a.get(w)? & b.get(w)?;
    Some(w * 64 + x.trailing_zeros() as usize)
}

/// No rule: an empty class.
const NO_RULE: u32 = u32::MAX;

/// A cross-product table: transport class × port class → transport class.
#[derive(Debug, Clone)]
struct Combo {
    right: usize,
    table: Vec<u32>,
}

impl Combo {
    fn new(right: usize, table: Vec<u32>) -> Combo {
        Combo { right, table }
    }

    #[inline(always)]
    fn get(&self, left: u32, right: u32) -> u32 {
        self.table
            .get(left as usize * self.right + right as usize)
            .copied()
            .unwrap_or(0)
    }

    /// `left[i] = self.get(left[i], right[i])` for every `i`.
    #[inline(always)]
    fn apply(&self, left: &mut [u32], right: &[u32]) {
        for (l, &r) in left.iter_mut().zip(right) {
            *l = self.get(*l, r);
        }
    }
}

/// Most bitmap words a [`cross`] may compute (keeps builds fast).
const CROSS_BUDGET: usize = 1 << 18;

/// The budget of the further cross products that leave a single field for
/// the final table, in [`CROSS_BUDGET`]s.
const EXTRA_CROSS: usize = 64;

/// The cross-product budget of a staged build: a quarter of the full one.
/// Its tables serve only until the refinement, which rebuilds with the
/// full budget whenever a field was left out; a cross product costs its
/// size to compute (1000 rules: 0.3 instead of 0.9 ms).
const STAGED_CROSS_BUDGET: usize = CROSS_BUDGET / 4;

/// The cross product of two class sets (`words`-word bitmaps): the table of
/// `(i, j)` ↦ class of `a_i & b_j` (row-major) and the deduplicated class
/// bitmaps; `None` when it would compute more than `budget` words or find
/// more than `most` classes.
fn cross(
    a: &[u64],
    b: &[u64],
    words: usize,
    budget: usize,
    most: usize,
) -> Option<(Vec<u32>, Vec<u64>)> {
    let words = words.max(1);
    let pairs = (a.len() / words).checked_mul(b.len() / words)?;
    if pairs.checked_mul(words)? > budget || u32::try_from(pairs).is_err() {
        return None;
    }
    let mut table = Vec::with_capacity(pairs);
    let mut bits: Vec<u64> = Vec::new();
    let mut known: AHashMap<u64, u32> = AHashMap::new();
    let mut cur = vec![0u64; words];
    let mut classes = 0u32;
    // The class of the empty set, the most common pair: no hashing.
    let mut empty: Option<u32> = None;
    for ai in a.chunks(words) {
        for bj in b.chunks(words) {
            let mut h = 0u64;
            let mut any = 0u64;
            for ((c, x), y) in cur.iter_mut().zip(ai).zip(bj) {
                *c = x & y;
                any |= *c;
                h = (h.rotate_left(23) ^ *c).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            }
            if any == 0 {
                if let Some(c) = empty {
                    table.push(c);
                    continue;
                }
            }
            let class = match known.get(&h) {
                Some(&c) if class_bits(&bits, c, words) == cur.as_slice() => c,
                found => {
                    let c = classes;
                    classes += 1;
                    if classes as usize > most {
                        return None;
                    }
                    bits.extend_from_slice(&cur);
                    if found.is_none() {
                        known.insert(h, c);
                    }
                    c
                }
            };
            if any == 0 {
                empty = Some(class);
            }
            table.push(class);
        }
    }
    Some((table, bits))
}

/// A port field: class per port.
#[derive(Debug, Clone)]
struct PortField {
    table: Box<[u16; 65536]>,
    bits: Rows,
}

/// Keys per node of an [`STree`] (one cache line of IPv4 addresses).
const NODE: usize = 16;

/// A static B+ tree over sorted keys (an "S+ tree"): nodes of [`NODE`]
/// keys, `NODE + 1` children per inner node, stored level by level. A search
/// reads one node per level and counts its keys not above the address, with
/// no data-dependent branch: the count picks the child, and at the leaves it
/// is the rank.
#[derive(Debug, Clone)]
struct STree<A: Addr> {
    /// Every level's nodes, the root first and the leaves last.
    nodes: Vec<[A::Key; NODE]>,
    /// Where each inner level starts in `nodes`, root first.
    inner: Vec<usize>,
    /// Where the leaves start in `nodes`.
    leaves: usize,
    /// The number of keys.
    len: usize,
}

impl<A: Addr> STree<A> {
    /// `keys` must be sorted.
    fn new(keys: &[A]) -> STree<A> {
        let pad = |chunk: &[A]| {
            let mut node = [A::LAST.key(); NODE];
            for (n, &k) in node.iter_mut().zip(chunk) {
                *n = k.key();
            }
            node
        };
        let leaves: Vec<[A::Key; NODE]> = if keys.is_empty() {
            vec![[A::LAST.key(); NODE]]
        } else {
            keys.chunks(NODE).map(pad).collect()
        };
        // Bottom up: each level's nodes and the first key under each node.
        let mut first: Vec<A> = keys.iter().step_by(NODE).copied().collect();
        let mut levels = vec![leaves];
        while first.len() > 1 {
            let parents: Vec<[A::Key; NODE]> = first
                .chunks(NODE + 1)
                .map(|children| pad(children.get(1..).unwrap_or(&[])))
                .collect();
            first = first.chunks(NODE + 1).map(|c| c[0]).collect();
            levels.push(parents);
        }
        levels.reverse();
        let mut nodes = Vec::new();
        let mut inner = Vec::new();
        let mut leaves = 0;
        let depth = levels.len();
        for (l, level) in levels.into_iter().enumerate() {
            if l + 1 < depth {
                inner.push(nodes.len());
            } else {
                leaves = nodes.len();
            }
            nodes.extend(level);
        }
        STree {
            nodes,
            inner,
            leaves,
            len: keys.len(),
        }
    }

    /// The number of keys not above `x`.
    #[inline(always)]
    fn rank(&self, x: A) -> usize {
        if x == A::LAST {
            // Padding counts as `A::LAST`.
            return self.len;
        }
        let x = x.key();
        let count = |at: usize| self.nodes.get(at).map_or(0, |n| A::count_le(n, x));
        let mut node = 0;
        for &level in &self.inner {
            node = node * (NODE + 1) + count(level + node);
        }
        node * NODE + count(self.leaves + node)
    }

    /// `out[i]` = the rank of `xs[i]`, one level at a time over all the
    /// keys.
    #[inline(always)]
    fn ranks(&self, xs: &[A], out: &mut [u32]) {
        let count = |at: usize, x: A| self.nodes.get(at).map_or(0, |n| A::count_le(n, x.key()));
        out.fill(0);
        for &level in &self.inner {
            for (node, &x) in out.iter_mut().zip(xs) {
                let at = *node as usize;
                *node = (at * (NODE + 1) + count(level + at, x)) as u32;
            }
        }
        for (node, &x) in out.iter_mut().zip(xs) {
            let at = *node as usize;
            let r = (at * NODE + count(self.leaves + at, x)) as u32;
            // Padding counts as `A::LAST`.
            *node = if x == A::LAST { self.len as u32 } else { r };
        }
    }

    fn memory_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<[A::Key; NODE]>()
            + self.inner.capacity() * std::mem::size_of::<usize>()
    }
}

/// The class of every IPv4 address in three fixed steps of 16, 8 and 8 bits
/// (a multibit trie with the classes pushed to the leaves): an entry is a
/// class (`LEAF` set) or the block of the next step. A class found early is
/// carried through the remaining steps by conditional moves (reading block
/// 0), so a lookup has no data-dependent branch. Entries are 16-bit (a
/// field with more classes or blocks takes the B+ tree instead), which
/// halves the trie's cache footprint.
#[derive(Debug, Clone)]
struct Dir {
    top: Box<[u16; 1 << 16]>,
    /// 256-entry blocks of the second and third steps; block 0 is unused.
    mid: Vec<u16>,
    low: Vec<u16>,
}

const LEAF: u16 = 1 << 15;

impl Dir {
    /// `starts` sorted, the first 0; `class_of` the class of each interval.
    fn new(starts: &[u128], class_of: &[u32]) -> Option<Dir> {
        if class_of.iter().any(|&c| c >= u32::from(LEAF)) {
            return None;
        }
        let mut top: Box<[u16; 1 << 16]> =
            vec![0u16; 1 << 16].into_boxed_slice().try_into().ok()?;
        let mut mid = vec![LEAF; 256];
        let mut low = vec![LEAF; 256];
        let id = |len: usize| u16::try_from(len / 256).ok().filter(|&b| b < LEAF);
        for t in fill(&mut top[..], 0, 16, starts, class_of) {
            let base = t << 16;
            let block = mid.len();
            let mid_id = id(block)?;
            mid.resize(block + 256, LEAF);
            let inner = fill(mid.get_mut(block..)?, base, 8, starts, class_of);
            for b in inner {
                let at = low.len();
                let low_id = id(at)?;
                low.resize(at + 256, LEAF);
                fill(low.get_mut(at..)?, base | (b << 8), 0, starts, class_of);
                *mid.get_mut(block + b as usize)? = low_id;
            }
            top[t as usize] = mid_id;
        }
        Some(Dir { top, mid, low })
    }

    /// One step below the top: a class is kept, a block number is replaced
    /// by entry `byte` of its block.
    #[inline(always)]
    fn step(e: u16, blocks: &[u16], byte: u32) -> u16 {
        let at = if e & LEAF != 0 {
            0
        } else {
            usize::from(e) << 8
        } | byte as usize;
        let next = blocks.get(at).copied().unwrap_or(LEAF);
        if e & LEAF != 0 {
            e
        } else {
            next
        }
    }

    #[inline(always)]
    fn class(&self, a: u32) -> u32 {
        let e = self.top[(a >> 16) as usize];
        let e = Dir::step(e, &self.mid, (a >> 8) & 0xff);
        u32::from(Dir::step(e, &self.low, a & 0xff) & !LEAF)
    }

    /// `out[i]` = the class of `addrs[i]`, one step at a time over all the
    /// addresses.
    #[inline(always)]
    fn classes(&self, addrs: &[u32], out: &mut [u32]) {
        for (e, &a) in out.iter_mut().zip(addrs) {
            *e = self.top[(a >> 16) as usize].into();
        }
        for (e, &a) in out.iter_mut().zip(addrs) {
            *e = Dir::step(*e as u16, &self.mid, (a >> 8) & 0xff).into();
        }
        for (e, &a) in out.iter_mut().zip(addrs) {
            *e = (Dir::step(*e as u16, &self.low, a & 0xff) & !LEAF).into();
        }
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<[u16; 1 << 16]>() + (self.mid.capacity() + self.low.capacity()) * 2
    }
}

/// Sets every entry of `entries` (entry `k` covers the addresses `base + (k
/// << shift)` and the `2^shift - 1` after it) that lies within one interval
/// to `LEAF | class`; returns the entries holding the start of an interval
/// (they need a block of the next step).
fn fill(entries: &mut [u16], base: u32, shift: u32, starts: &[u128], class_of: &[u32]) -> Vec<u32> {
    let base = u64::from(base);
    let end = base + ((entries.len() as u64) << shift);
    let mut inner = Vec::new();
    let mut i = interval_of(starts, base.into());
    while let Some(&s) = starts.get(i) {
        let s = (s as u64).max(base);
        if s >= end {
            break;
        }
        let e = starts.get(i + 1).map_or(end, |&e| (e as u64).min(end));
        let first = (s - base).div_ceil(1 << shift) as usize;
        let last = ((e - base) >> shift) as usize;
        if let Some(run) = entries.get_mut(first..last.max(first)) {
            let class = class_of.get(i).copied().unwrap_or(0);
            run.fill(LEAF | u16::try_from(class).unwrap_or(0));
        }
        if e < end && (e - base) & ((1 << shift) - 1) != 0 {
            let k = ((e - base) >> shift) as u32;
            if inner.last() != Some(&k) {
                inner.push(k);
            }
        }
        i += 1;
    }
    inner
}

/// The index of the interval holding `addr` (starts sorted, first is 0).
fn interval_of(starts: &[u128], addr: u128) -> usize {
    starts.partition_point(|&s| s <= addr).saturating_sub(1)
}

/// How an address field finds an address's interval.
#[derive(Debug, Clone)]
enum Search<A: Addr> {
    /// IPv4: the class directly.
    Dir(Dir),
    /// The starts of the intervals but the first (0): the rank is the
    /// interval.
    Tree(STree<A>),
}

/// An address field: its search and each interval's class.
#[derive(Debug, Clone)]
struct AddrField<A: Addr> {
    search: Search<A>,
    class_of: Vec<u32>,
    bits: Rows,
}

impl<A: Addr> AddrField<A> {
    fn new(mut p: Partition, words: usize, combined: bool) -> AddrField<A> {
        // Adjacent intervals of one class are one interval: the partition
        // has none, but a final table's folding can give neighbours the same
        // column (sg6_10k: 4034 source intervals, 82 columns).
        let mut kept = 0;
        for i in 0..p.starts.len().min(p.class_of.len()) {
            if kept == 0 || p.class_of[kept - 1] != p.class_of[i] {
                p.starts[kept] = p.starts[i];
                p.class_of[kept] = p.class_of[i];
                kept += 1;
            }
        }
        p.starts.truncate(kept);
        p.class_of.truncate(kept);
        let dir = if A::BITS == 32 {
            Dir::new(&p.starts, &p.class_of)
        } else {
            None
        };
        let search = dir.map_or_else(
            || {
                let starts: Vec<A> = p.starts.iter().skip(1).map(|&s| A::from_u128(s)).collect();
                Search::Tree(STree::new(&starts))
            },
            Search::Dir,
        );
        AddrField {
            search,
            class_of: p.class_of,
            bits: if combined {
                Rows::default()
            } else {
                with_summary(&p.bits, words)
            },
        }
    }

    /// The number of intervals.
    fn intervals(&self) -> usize {
        self.class_of.len()
    }

    #[inline(always)]
    fn class(&self, addr: A) -> u32 {
        match &self.search {
            Search::Dir(d) => d.class(addr.to_u128() as u32),
            Search::Tree(t) => self.class_of.get(t.rank(addr)).copied().unwrap_or(0),
        }
    }

    /// `out[i]` = the class of `addrs[i]`.
    #[inline(always)]
    fn classes(&self, addrs: &[A], out: &mut [u32]) {
        match &self.search {
            Search::Dir(d) => match A::as_u32s(addrs) {
                Some(a) => d.classes(a, out),
                None => {
                    let mut a = [0u32; GROUP];
                    for (a, &x) in a.iter_mut().zip(addrs) {
                        *a = x.to_u128() as u32;
                    }
                    d.classes(&a[..addrs.len().min(GROUP)], out);
                }
            },
            Search::Tree(t) => {
                t.ranks(addrs, out);
                for c in out.iter_mut() {
                    *c = self.class_of.get(*c as usize).copied().unwrap_or(0);
                }
            }
        }
    }

    fn memory_bytes(&self) -> usize {
        let search = match &self.search {
            Search::Dir(d) => d.memory_bytes(),
            Search::Tree(t) => t.memory_bytes(),
        };
        search + self.class_of.capacity() * 4 + self.bits.memory_bytes()
    }
}

/// The tables of one address family.
#[derive(Debug, Clone)]
struct Family<A: Addr> {
    /// Local bit number → rule index.
    rule_ids: Vec<u32>,
    /// Words per class bitmap, summary included.
    stride: usize,
    /// Summary words at the start of each class bitmap.
    summary: usize,
    /// Bitmap words after the summary (without the padding).
    words: usize,
    proto: Box<[u16; 256]>,
    /// Transport class bitmaps: the protocol classes, crossed with the
    /// destination and source port classes when those have a [`Combo`], and
    /// ANDed with the single class of every field that has only one.
    proto_bits: Rows,
    /// Port fields with more than one class (their `bits` are empty when
    /// crossed into the transport classes).
    sport: Option<PortField>,
    dport: Option<PortField>,

    /// The cross products into the transport class, in order: the field
    /// (`simd::SPORT`, `DPORT`, `SRC` or `DST`) and its table.
    combos: Vec<(usize, Combo)>,
    /// The first rule (local bit) of each transport class, or [`NO_RULE`].
    first_rule: Vec<u32>,
    /// The first rule of every pair of a transport class and a class of
    /// the one field left outside the cross products, when it fits.
    last: Option<Last>,
    /// Without a final table: the answers of the class tuples seen.
    cache: Option<TupleCache>,
    /// A staged build with fields left outside the cross products: a full
    /// build may cross more of them and find a final table.
    refinable: bool,
    src: Option<AddrField<A>>,
    dst: Option<AddrField<A>>,
    /// The AVX-512 steps for bursts, when the CPU has them.
    simd: Option<Avx512>,
}

impl<A: Addr> Family<A> {
    fn build(rules: &[MatchRule], cross_budget: usize, final_budget: usize) -> Family<A> {
        let rule_ids: Vec<u32> = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| admits::<A>(&r.src) && admits::<A>(&r.dst))
            .filter(|(_, r)| !r.sport.iter().all(|p| p.lo > p.hi))
            .filter(|(_, r)| !r.dport.iter().all(|p| p.lo > p.hi))
            .filter_map(|(i, _)| u32::try_from(i).ok())
            .filter(|&i| i != NO_MATCH)
            .collect();
        let n = rule_ids.len();
        let words = n.div_ceil(64).max(1);
        let local = || {
            rule_ids
                .iter()
                .enumerate()
                .filter_map(|(l, &g)| Some((l as u32, rules.get(g as usize)?)))
        };

        let mut events = Vec::with_capacity(2 * n);
        for (l, r) in local() {
            match r.proto {
                None => push_range(&mut events, l, 0, 255, 255),
                Some(p) => push_range(&mut events, l, p.into(), p.into(), 255),
            }
        }
        let proto = partition(n, words, &mut events);

        let ports = |get: fn(&MatchRule) -> &[PortRange], events: &mut Vec<Event>| {
            events.clear();
            for (l, r) in local() {
                for pr in get(r) {
                    push_range(events, l, pr.lo.into(), pr.hi.into(), 65535);
                }
            }
            partition(n, words, events)
        };
        let mut sport = ports(|r| &r.sport, &mut events);
        let mut dport = ports(|r| &r.dport, &mut events);

        let addrs = |get: fn(&MatchRule) -> &AddrMatch, events: &mut Vec<Event>| {
            events.clear();
            for (l, r) in local() {
                match get(r) {
                    AddrMatch::Any => push_range(events, l, 0, A::MAX, A::MAX),
                    AddrMatch::Prefixes(nets) => {
                        for (lo, hi) in nets.iter().filter_map(A::range) {
                            push_range(events, l, lo, hi, A::MAX);
                        }
                    }
                }
            }
            partition(n, words, events)
        };
        let mut src = addrs(|r| &r.src, &mut events);
        let mut dst = addrs(|r| &r.dst, &mut events);

        // Fold single-class fields into the protocol bitmaps.
        let mut proto_bits = proto.bits;
        let mut fold = |p: &Partition| {
            if p.class_of.len() == 1 {
                let only = class_bits(&p.bits, p.class_of.first().copied().unwrap_or(0), words);
                for chunk in proto_bits.chunks_mut(words) {
                    for (w, m) in chunk.iter_mut().zip(only) {
                        *w &= m;
                    }
                }
                true
            } else {
                false
            }
        };
        let sport_trivial = fold(&sport);
        let dport_trivial = fold(&dport);
        let src_trivial = fold(&src);
        let dst_trivial = fold(&dst);

        // Cross-product the port classes into the protocol classes (RFC
        // phase 1), then the addresses (fewest classes first), each when
        // the result stays small.
        let mut order = [
            (simd::DPORT, &dport, dport_trivial),
            (simd::SPORT, &sport, sport_trivial),
            (simd::DST, &dst, dst_trivial),
            (simd::SRC, &src, src_trivial),
        ];
        if src.classes < dst.classes {
            order.swap(2, 3);
        }
        let mut l4_bits = proto_bits;
        let mut combos: Vec<(usize, Combo)> = Vec::new();
        let mut left: Vec<(usize, &Partition)> = Vec::new();
        for (f, p, trivial) in order {
            if trivial {
                continue;
            }
            match cross(&l4_bits, &p.bits, words, cross_budget, usize::MAX) {
                Some((table, bits)) => {
                    l4_bits = bits;
                    combos.push((f, Combo::new(p.classes, table)));
                }
                None => left.push((f, p)),
            }
        }
        // The final table of the transport classes and the classes of `p`,
        // folded, when it fits.
        let final_of = |l4_bits: &[u64], p: &Partition| {
            let rows = l4_bits.len() / words;
            if n >= usize::from(u16::MAX)
                || rows.saturating_mul(p.classes) > final_budget.saturating_mul(FOLD_FACTOR)
            {
                return None;
            }
            let max_rows = (final_budget / FOLD_MIN_COLUMNS).max(1);
            let folded = first_table(l4_bits, &p.bits, words, max_rows)?;
            (folded.table.len() <= final_budget).then_some(folded)
        };
        let mut last: Option<(usize, Folded)> = None;
        let refinable = final_budget == 0 && !left.is_empty();
        // More than one field left: cross all but one of them with a larger
        // budget, when the final table of the one then fits (of the ways
        // that fit, the smallest table).
        if final_budget == 0 {
            // A staged build: no final table is searched for.
        } else if left.len() > 1 {
            left.sort_by_key(|(_, p)| p.classes);
            // The field kept, the transport classes and the cross products.
            type Candidate = (usize, Vec<u64>, Vec<(usize, Combo)>);
            let mut candidates: Vec<Candidate> = Vec::new();
            for keep in (0..left.len()).rev() {
                let mut bits = l4_bits.clone();
                let mut more = Vec::new();
                // More transport classes than this and the table would be
                // too large to compute: such a cross stops early.
                let most = final_budget.saturating_mul(FOLD_FACTOR) / left[keep].1.classes.max(1);
                for (i, &(f, p)) in left.iter().enumerate() {
                    if i == keep {
                        continue;
                    }
                    let budget = cross_budget.saturating_mul(EXTRA_CROSS);
                    match cross(&bits, &p.bits, words, budget, most) {
                        Some((table, b)) => {
                            bits = b;
                            more.push((f, Combo::new(p.classes, table)));
                        }
                        None => break,
                    }
                }
                if more.len() + 1 == left.len() {
                    candidates.push((keep, bits, more));
                }
            }
            // The smallest table before folding first; the first that folds
            // within the budget is taken (each costs its size to compute).
            candidates.sort_by_key(|(keep, bits, _)| bits.len() / words * left[*keep].1.classes);
            for (keep, bits, more) in candidates {
                let (f, p) = left[keep];
                if let Some(folded) = final_of(&bits, p) {
                    l4_bits = bits;
                    left.retain(|(g, _)| *g == f);
                    combos.extend(more);
                    last = Some((f, folded));
                    break;
                }
            }
        } else if let [(f, p)] = left[..] {
            last = final_of(&l4_bits, p).map(|folded| (f, folded));
        }
        let cache = match (&last, n < usize::from(u16::MAX)) {
            (None, true) if !left.is_empty() => {
                let widths: Vec<(usize, u32)> = left
                    .iter()
                    .map(|(f, p)| (*f, class_bits_width(p.classes)))
                    .collect();
                let log2 = if final_budget == 0 {
                    STAGED_CACHE_LOG2
                } else {
                    CACHE_LOG2
                };
                TupleCache::new(class_bits_width(l4_bits.len() / words), &widths, log2)
            }
            _ => None,
        };
        // With a final table, the transport classes and the last field's
        // classes become the table's rows and columns (the last cross
        // product, or the protocol table, and the field's intervals give
        // them directly); the transport bitmaps and first rules are unused.
        let mut proto_class_of = proto.class_of.clone();
        let (first_rule, last) = match last {
            Some((field, f)) => {
                match combos.last_mut() {
                    Some((_, c)) => c.table.iter_mut().for_each(|e| {
                        *e = f.row_of.get(*e as usize).copied().unwrap_or(0);
                    }),
                    None => proto_class_of.iter_mut().for_each(|e| {
                        *e = f.row_of.get(*e as usize).copied().unwrap_or(0);
                    }),
                }
                let p = match field {
                    simd::SPORT => &mut sport,
                    simd::DPORT => &mut dport,
                    simd::SRC => &mut src,
                    _ => &mut dst,
                };
                for c in p.class_of.iter_mut() {
                    *c = f.col_of.get(*c as usize).copied().unwrap_or(0);
                }
                l4_bits = Vec::new();
                let last = Last {
                    field,
                    right: f.cols,
                    table: f.table,
                };
                (Vec::new(), Some(last))
            }
            None => {
                // The first rule of each transport class (the answer when
                // no field is left outside the cross products).
                let first_rule = l4_bits
                    .chunks(words)
                    .map(|class| {
                        class
                            .iter()
                            .enumerate()
                            .find(|(_, &w)| w != 0)
                            .map_or(NO_RULE, |(i, &w)| (i * 64) as u32 + w.trailing_zeros())
                    })
                    .collect();
                (first_rule, None)
            }
        };
        let done = |f: usize| {
            combos.iter().any(|(g, _)| *g == f) || last.as_ref().is_some_and(|l| l.field == f)
        };
        let (sport_done, dport_done) = (done(simd::SPORT), done(simd::DPORT));
        let (src_done, dst_done) = (done(simd::SRC), done(simd::DST));

        let mut proto_table = Box::new([0u16; 256]);
        fill_table(&mut proto_table[..], &proto.starts, &proto_class_of);
        let port_field = |p: Partition, trivial: bool, combined: bool| {
            if trivial {
                return None;
            }
            let mut table: Box<[u16; 65536]> =
                vec![0u16; 65536].into_boxed_slice().try_into().ok()?;
            fill_table(&mut table[..], &p.starts, &p.class_of);
            Some(PortField {
                table,
                bits: if combined {
                    Rows::default()
                } else {
                    with_summary(&p.bits, words)
                },
            })
        };
        Family {
            stride: stride(words),
            words,
            summary: summary(words),
            proto: proto_table,
            proto_bits: with_summary(&l4_bits, words),
            sport: port_field(sport, sport_trivial, sport_done),
            dport: port_field(dport, dport_trivial, dport_done),
            src: (!src_trivial).then(|| AddrField::new(src, words, src_done)),
            dst: (!dst_trivial).then(|| AddrField::new(dst, words, dst_done)),
            combos,
            first_rule,
            last,
            cache,
            refinable,
            rule_ids,
            simd: Avx512::detect(),
        }
    }

    #[inline(always)]
    fn lookup(&self, src: A, dst: A, proto: u8, sport: u16, dport: u16) -> [u32; 5] {
        let sc = self
            .sport
            .as_ref()
            .map_or(0, |f| f.table[usize::from(sport)].into());
        let dc = self
            .dport
            .as_ref()
            .map_or(0, |f| f.table[usize::from(dport)].into());
        let s = match &self.src {
            Some(f) => f.class(src),
            None => 0,
        };
        let d = match &self.dst {
            Some(f) => f.class(dst),
            None => 0,
        };
        let mut c = [self.proto[usize::from(proto)].into(), sc, dc, s, d];
        for (f, combo) in &self.combos {
            c[0] = combo.get(c[0], c.get(*f).copied().unwrap_or(0));
        }
        c
    }

    #[inline(always)]
    fn scan(&self, c: &[u32; 5]) -> Option<u32> {
        if let Some(l) = &self.last {
            let right = c.get(l.field).copied().unwrap_or(0) as usize;
            let local = l
                .table
                .get(c[0] as usize * l.right + right)
                .copied()
                .unwrap_or(u16::MAX);
            return self.rule_ids.get(usize::from(local)).copied();
        }
        self.scan_rows(c)
    }

    /// [`Family::scan`] without a final table: the first rule of the
    /// transport class or the bitmap AND (out of line: its set-up, hoisted
    /// by the compiler out of a loop over keys, would cost the final table
    /// path at every call otherwise).
    #[inline(never)]
    fn scan_rows(&self, c: &[u32; 5]) -> Option<u32> {
        let local = match &self.cache {
            Some(cache) => {
                let key = cache.key(c);
                match cache.get(key) {
                    Some(l) => l,
                    None => {
                        let l = self.scan_local(c);
                        cache.put(key, l);
                        l
                    }
                }
            }
            None => self.scan_local(c),
        }?;
        self.rule_ids.get(local).copied()
    }

    /// The first rule (local bit) of the classes `c`: the first rule of the
    /// transport class, or the bitmap AND.
    #[inline(always)]
    fn scan_local(&self, c: &[u32; 5]) -> Option<usize> {
        let w = self.stride;
        // The bitmaps of the fields left outside the cross products.
        let mut rows: [&[u64]; 4] = [&[]; 4];
        let mut n = 0;
        let fields = [
            self.sport.as_ref().map(|f| f.bits.rows()),
            self.dport.as_ref().map(|f| f.bits.rows()),
            self.src.as_ref().map(|f| f.bits.rows()),
            self.dst.as_ref().map(|f| f.bits.rows()),
        ];
        for (bits, &class) in fields.into_iter().zip(&c[1..]) {
            if let Some(bits) = bits.filter(|b| !b.is_empty()) {
                if let Some(r) = rows.get_mut(n) {
                    *r = class_bits(bits, class, w);
                    n += 1;
                }
            }
        }
        if n == 0 {
            let first = self.first_rule.get(c[0] as usize).copied()?;
            (first != NO_RULE).then_some(first as usize)
        } else {
            let p = class_bits(self.proto_bits.rows(), c[0], w);
            let [a, b, d, e] = rows;
            match n {
                1 if self.summary == 1 => first_common_dense(p, a, self.words),
                1 => first_common([p, a], self.summary),
                2 => first_common([p, a, b], self.summary),
                3 => first_common([p, a, b, d], self.summary),
                _ => first_common([p, a, b, d, e], self.summary),
            }
        }
    }

    /// How the SIMD lookup ends (see [`Finish`]).
    #[inline(always)]
    fn finish(&self) -> Finish<'_> {
        if let Some(l) = &self.last {
            return Finish::Table(&l.table, l.right, l.field);
        }
        let left = self.sport.as_ref().is_some_and(|f| !f.bits.bits.is_empty())
            || self.dport.as_ref().is_some_and(|f| !f.bits.bits.is_empty())
            || self.src.as_ref().is_some_and(|f| !f.bits.bits.is_empty())
            || self.dst.as_ref().is_some_and(|f| !f.bits.bits.is_empty());
        if left {
            Finish::Scan
        } else {
            Finish::First(&self.first_rule)
        }
    }

    /// Classifies the keys of `keys` into `out` (rule index or
    /// [`NO_MATCH`]) in groups of [`GROUP`].
    fn classify_columns(&self, keys: &KeyColumns<'_, A>, out: &mut [u32]) {
        let n = keys.len().min(out.len());
        if n < COLUMN_SMALL_BURST {
            self.classify_keys(keys, out);
            return;
        }
        let mut res = [NO_MATCH; GROUP];
        if n < SMALL_BURST {
            // Too few keys for the vectors: the scalar steps, each over
            // every key.
            self.classify_group_with(&keys.range(0..n), &mut res, None);
            out[..n].copy_from_slice(&res[..n]);
            return;
        }
        for (at, o) in (0..n).step_by(GROUP).zip(out.chunks_mut(GROUP)) {
            let k = keys.range(at..at + GROUP);
            self.classify_group(&k, &mut res);
            let m = k.len().min(o.len());
            o[..m].copy_from_slice(&res[..m]);
        }
    }

    /// [`Family::classify_columns`] key by key (out of line: the set-up of
    /// the group steps is not for a burst of one).
    #[inline(never)]
    fn classify_keys(&self, keys: &KeyColumns<'_, A>, out: &mut [u32]) {
        let k = keys.range(0..out.len());
        let cols = k
            .src
            .iter()
            .zip(k.dst)
            .zip(k.proto)
            .zip(k.sport)
            .zip(k.dport);
        for (o, ((((&s, &d), &p), &sp), &dp)) in out.iter_mut().zip(cols) {
            *o = self.scan(&self.lookup(s, d, p, sp, dp)).unwrap_or(NO_MATCH);
        }
    }

    /// Classifies the keys of `k` (at most [`GROUP`]) into `out` (rule
    /// index or [`NO_MATCH`]), one step at a time over all the keys.
    #[inline(always)]
    fn classify_group(&self, k: &KeyColumns<'_, A>, out: &mut [u32; GROUP]) {
        self.classify_group_with(k, out, self.simd);
    }

    /// [`Family::classify_group`] with the AVX-512 steps or not (`simd`).
    #[inline(always)]
    fn classify_group_with(
        &self,
        k: &KeyColumns<'_, A>,
        out: &mut [u32; GROUP],
        simd: Option<Avx512>,
    ) {
        let n = k.len().min(GROUP);
        // The transport class, then the class of each field.
        let mut cls = [[0u32; GROUP]; 5];
        match simd {
            Some(v) => {
                if self.lookup_simd(v, k, n, &mut cls, out) {
                    return;
                }
            }
            None => self.lookup_group(k, n, &mut cls),
        }
        let [l4, sc, dc, s, d] = &cls;
        let rule = |local: Option<usize>| {
            local
                .and_then(|l| self.rule_ids.get(l).copied())
                .unwrap_or(NO_MATCH)
        };
        if let Some(l) = &self.last {
            let c = &cls[l.field];
            for ((o, &t), &c) in out.iter_mut().zip(l4).zip(c).take(n) {
                let local = l
                    .table
                    .get(t as usize * l.right + c as usize)
                    .copied()
                    .unwrap_or(u16::MAX);
                *o = rule(Some(local.into()));
            }
            return;
        }
        if let Some(cache) = &self.cache {
            // The answers of the class tuples seen before; the bitmap AND
            // for the others.
            for (j, o) in out.iter_mut().enumerate().take(n) {
                let c = [l4[j], sc[j], dc[j], s[j], d[j]];
                let key = cache.key(&c);
                let local = match cache.get(key) {
                    Some(l) => l,
                    None => {
                        let l = self.scan_local(&c);
                        cache.put(key, l);
                        l
                    }
                };
                *o = rule(local);
            }
            return;
        }

        // The bitmaps of the fields left outside the cross products.
        let w = self.stride;
        let mut rows: [(&[u64], &[u32; GROUP]); 4] = [(&[], sc); 4];
        let mut nrows = 0;
        let fields = [
            (self.sport.as_ref().map(|f| f.bits.rows()), sc),
            (self.dport.as_ref().map(|f| f.bits.rows()), dc),
            (self.src.as_ref().map(|f| f.bits.rows()), s),
            (self.dst.as_ref().map(|f| f.bits.rows()), d),
        ];
        for (bits, classes) in fields {
            if let Some(bits) = bits.filter(|b| !b.is_empty()) {
                if let Some(r) = rows.get_mut(nrows) {
                    *r = (bits, classes);
                    nrows += 1;
                }
            }
        }
        if let (Some(v), 1..) = (simd, nrows) {
            let mut all = [(self.proto_bits.rows(), l4); 5];
            for (a, r) in all.iter_mut().skip(1).zip(&rows[..nrows.min(4)]) {
                *a = *r;
            }
            let mut local = [None; GROUP];
            let sm = self.summary;
            let row = |i: usize, j: usize| {
                let (bits, classes) = all[i];
                class_bits(bits, classes[j], w)
            };
            let put = |j: usize, l: Option<usize>| {
                if let Some(o) = local.get_mut(j) {
                    *o = l;
                }
            };
            match (nrows, sm) {
                // Up to 64 words: test them all, 8 per instruction, key by
                // key.
                (1, 1) => v.first_dense(n, self.words, |j| [row(0, j), row(1, j)], put),
                (2, 1) => v.first_dense(n, self.words, |j| [row(0, j), row(1, j), row(2, j)], put),
                (3, 1) => v.first_dense(n, self.words, |j| [0, 1, 2, 3].map(|i| row(i, j)), put),
                (_, 1) => v.first_dense(n, self.words, |j| [0, 1, 2, 3, 4].map(|i| row(i, j)), put),
                // Longer bitmaps: follow the summary bits, 8 keys at once.
                _ => v.scan(n, w, sm, &all[..=nrows.min(4)], &mut local),
            }
            for (o, &l) in out.iter_mut().zip(&local).take(n) {
                *o = rule(l);
            }
            return;
        }
        let out = &mut out[..n];
        let p = |j: usize| class_bits(self.proto_bits.rows(), l4[j], w);
        let [(a, ac), (b, bc), (e, ec), (f, fc)] = rows;
        let sm = self.summary;
        match nrows {
            0 => {
                for (o, &c) in out.iter_mut().zip(l4) {
                    let first = self.first_rule.get(c as usize).copied().unwrap_or(NO_RULE);
                    *o = rule((first != NO_RULE).then_some(first as usize));
                }
            }
            1 if sm == 1 => {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = rule(first_common_dense(
                        p(j),
                        class_bits(a, ac[j], w),
                        self.words,
                    ));
                }
            }
            1 => {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = rule(first_common([p(j), class_bits(a, ac[j], w)], sm));
                }
            }
            2 => {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = rule(first_common(
                        [p(j), class_bits(a, ac[j], w), class_bits(b, bc[j], w)],
                        sm,
                    ));
                }
            }
            3 => {
                for (j, o) in out.iter_mut().enumerate() {
                    let rows = [
                        p(j),
                        class_bits(a, ac[j], w),
                        class_bits(b, bc[j], w),
                        class_bits(e, ec[j], w),
                    ];
                    *o = rule(first_common(rows, sm));
                }
            }
            _ => {
                for (j, o) in out.iter_mut().enumerate() {
                    let rows = [
                        p(j),
                        class_bits(a, ac[j], w),
                        class_bits(b, bc[j], w),
                        class_bits(e, ec[j], w),
                        class_bits(f, fc[j], w),
                    ];
                    *o = rule(first_common(rows, sm));
                }
            }
        }
    }

    /// The scalar lookup of the first `n` keys of `k` into `cls` (the
    /// transport class, then the class of each field), one step at a time
    /// over all the keys.
    #[inline(always)]
    fn lookup_group(&self, k: &KeyColumns<'_, A>, n: usize, cls: &mut [[u32; GROUP]; 5]) {
        let n = n.min(GROUP).min(k.len());
        let [l4, sc, dc, s, d] = cls;
        table_into(&self.proto[..], &k.proto[..n], &mut l4[..n]);
        if let Some(f) = &self.dport {
            table_into(&f.table[..], &k.dport[..n], &mut dc[..n]);
        }
        if let Some(f) = &self.sport {
            table_into(&f.table[..], &k.sport[..n], &mut sc[..n]);
        }
        if let Some(f) = &self.src {
            f.classes(&k.src[..n], &mut s[..n]);
        }
        if let Some(f) = &self.dst {
            f.classes(&k.dst[..n], &mut d[..n]);
        }
        for (f, combo) in &self.combos {
            let right = match *f {
                simd::SPORT => &*sc,
                simd::DPORT => &*dc,
                simd::SRC => &*s,
                _ => &*d,
            };
            combo.apply(&mut l4[..n], &right[..n]);
        }
    }

    /// [`Family::lookup_group`] with AVX-512: the IPv6 trees scalar, the
    /// rest 16 keys per vector. True when `out` has the answers (every
    /// field in the cross products or the final table), false when `cls`
    /// has the classes for the bitmap scan.
    #[inline(always)]
    fn lookup_simd(
        &self,
        v: Avx512,
        k: &KeyColumns<'_, A>,
        n: usize,
        cls: &mut [[u32; GROUP]; 5],
        out: &mut [u32; GROUP],
    ) -> bool {
        let n = n.min(GROUP).min(k.len());
        let mut bufs = [[0u32; GROUP]; 2];
        let [src_buf, dst_buf] = &mut bufs;
        fn step<'a, A: Addr>(
            f: &'a Option<AddrField<A>>,
            xs: &'a [A],
            buf: &'a mut [u32; GROUP],
            n: usize,
        ) -> (AddrStep<'a>, &'a [u32]) {
            let Some(f) = f else {
                return (AddrStep::Zero, &[]);
            };
            match &f.search {
                Search::Dir(d) => {
                    let trie = AddrStep::Trie(Trie {
                        top: &d.top,
                        mid: &d.mid,
                        low: &d.low,
                        leaf: LEAF,
                    });
                    match A::as_u32s(xs) {
                        Some(a) => (trie, a),
                        None => {
                            for (i, &x) in buf.iter_mut().zip(xs) {
                                *i = x.to_u128() as u32;
                            }
                            (trie, &buf[..n])
                        }
                    }
                }
                Search::Tree(_) => {
                    f.classes(&xs[..n], &mut buf[..n]);
                    (AddrStep::Given, &buf[..n])
                }
            }
        }
        let (src, src_in) = step(&self.src, k.src, src_buf, n);
        let (dst, dst_in) = step(&self.dst, k.dst, dst_buf, n);
        let mut combos = [None; 4];
        for (c, (f, combo)) in combos.iter_mut().zip(&self.combos) {
            *c = Some((&combo.table[..], combo.right, *f));
        }
        let plan = Plan {
            proto: &self.proto[..],
            sport: self.sport.as_ref().map(|f| &f.table[..]),
            dport: self.dport.as_ref().map(|f| &f.table[..]),
            src,
            dst,
            combos,
            finish: self.finish(),
            rule_ids: &self.rule_ids,
        };
        let input = Input {
            proto: k.proto,
            sport: k.sport,
            dport: k.dport,
            src: src_in,
            dst: dst_in,
        };
        v.lookup(&plan, n, &input, cls, out)
    }

    fn shape(&self) -> String {
        let w = self.stride.max(1);
        let classes = |b: &[u64]| b.len() / w;
        let addr = |f: &Option<AddrField<A>>| {
            f.as_ref()
                .map_or((1, 1), |f| (f.intervals(), classes(f.bits.rows())))
        };
        let (si, sc) = addr(&self.src);
        let (di, dc) = addr(&self.dst);
        let end = match &self.last {
            Some(l) => format!(
                ", final table {}x{} ({})",
                l.table.len() / l.right.max(1),
                l.right,
                ["l4", "sport", "dport", "src", "dst"]
                    .get(l.field)
                    .copied()
                    .unwrap_or("?")
            ),
            None if self.cache.is_some() => ", tuple cache".to_owned(),
            None => String::new(),
        };
        format!(
            "rules {} words {} l4 classes {} src {si} intervals {sc} classes, dst {di} intervals {dc} classes, {} cross products{end}",
            self.rule_ids.len(),
            w,
            classes(self.proto_bits.rows()),
            self.combos.len()
        )
    }

    fn memory_bytes(&self) -> usize {
        let port = |f: &Option<PortField>| {
            f.as_ref().map_or(0, |f| {
                std::mem::size_of::<[u16; 65536]>() + f.bits.memory_bytes()
            })
        };
        let addr = |f: &Option<AddrField<A>>| f.as_ref().map_or(0, AddrField::memory_bytes);
        self.rule_ids.capacity() * 4
            + std::mem::size_of::<[u16; 256]>()
            + self.proto_bits.memory_bytes()
            + port(&self.sport)
            + port(&self.dport)
            + addr(&self.src)
            + addr(&self.dst)
            + self
                .combos
                .iter()
                .map(|(_, c)| c.table.capacity() * 4)
                .sum::<usize>()
            + self.first_rule.capacity() * 4
            + self.last.as_ref().map_or(0, |l| l.table.capacity() * 2)
            + self.cache.as_ref().map_or(0, TupleCache::memory_bytes)
    }
}

/// `out[i] = table[idx[i]]` (0 out of range).
#[inline(always)]
fn table_into<T: Copy + Into<usize>>(table: &[u16], idx: &[T], out: &mut [u32]) {
    for (c, &i) in out.iter_mut().zip(idx) {
        *c = table.get(i.into()).copied().unwrap_or(0).into();
    }
}

/// Most entries of the final table ([`Last`]).
const FINAL_BUDGET: usize = 1 << 21;

/// The final table: the first rule (local bit, `u16::MAX` for none) of
/// transport class `l` and class `c` of the field left outside the cross
/// products is `table[l * right + c]`.
#[derive(Debug, Clone)]
struct Last {
    /// The field (`simd::SPORT`, `DPORT`, `SRC` or `DST`).
    field: usize,
    right: usize,
    table: Vec<u16>,
}

/// Computing a final table of up to this many times [`FINAL_BUDGET`]
/// entries is allowed, when it folds to within the budget.
const FOLD_FACTOR: usize = 8;

/// A folded table whose distinct rows exceed `final_budget` over this
/// is given up early (its columns would have to fold to fewer: a guess
/// that bounds the build time).
const FOLD_MIN_COLUMNS: usize = 256;

/// The table of the first common bit of every pair of `a`'s and `b`'s
/// `words`-word bitmaps (`a` the rows), `u16::MAX` for none (fewer than
/// `u16::MAX` bits), folded; `None` when it has more than `max_rows`
/// distinct rows.
fn first_table(a: &[u64], b: &[u64], words: usize, max_rows: usize) -> Option<Folded> {
    let words = words.max(1);
    // Per bitmap, one bit per non-zero word: most pairs test a few words.
    let sw = words.div_ceil(64);
    let summaries = |bits: &[u64]| {
        let mut out = Vec::with_capacity(bits.len() / words * sw);
        for row in bits.chunks(words) {
            let start = out.len();
            out.resize(start + sw, 0u64);
            for (i, &w) in row.iter().enumerate() {
                if w != 0 {
                    if let Some(s) = out.get_mut(start + i / 64) {
                        *s |= 1 << (i % 64);
                    }
                }
            }
        }
        out
    };
    let (sa, sb) = (summaries(a), summaries(b));
    let cols = b.len() / words;
    let mut row_ids: AHashMap<Vec<u16>, u32> = AHashMap::new();
    let mut distinct: Vec<u16> = Vec::new();
    let mut row_of = Vec::with_capacity(a.len() / words);
    let mut row = Vec::with_capacity(cols);
    for (x, xs) in a.chunks(words).zip(sa.chunks(sw)) {
        row.clear();
        for (y, ys) in b.chunks(words).zip(sb.chunks(sw)) {
            let mut first = u16::MAX;
            'pair: for (i, (&p, &q)) in xs.iter().zip(ys).enumerate() {
                let mut m = p & q;
                while m != 0 {
                    let w = i * 64 + m.trailing_zeros() as usize;
                    let z = x.get(w).copied().unwrap_or(0) & y.get(w).copied().unwrap_or(0);
                    if z != 0 {
                        let bit = w * 64 + z.trailing_zeros() as usize;
                        first = u16::try_from(bit).unwrap_or(u16::MAX);
                        break 'pair;
                    }
                    m &= m - 1;
                }
            }
            row.push(first);
        }
        let next = row_ids.len() as u32;
        let id = *row_ids.entry(row.clone()).or_insert(next);
        if id == next {
            if row_ids.len() > max_rows {
                return None;
            }
            distinct.extend_from_slice(&row);
        }
        row_of.push(id);
    }
    Some(fold_columns(row_of, &distinct, cols))
}

/// A final table with its equal rows and equal columns merged: the entry of
/// row `r` and column `c` of the table folded is `table[row_of[r] * cols +
/// col_of[c]]`.
#[derive(Debug, Clone)]
struct Folded {
    row_of: Vec<u32>,
    col_of: Vec<u32>,
    cols: usize,
    table: Vec<u16>,
}

/// Folds the columns of the distinct rows `distinct` (row-major, `cols`
/// per row) of a table whose row `r` is `distinct` row `row_of[r]`.
fn fold_columns(row_of: Vec<u32>, distinct: &[u16], cols: usize) -> Folded {
    let cols = cols.max(1);
    let rows: Vec<&[u16]> = distinct.chunks(cols).collect();
    let mut col_ids: AHashMap<Vec<u16>, u32> = AHashMap::new();
    let mut col_first: Vec<usize> = Vec::new();
    let col_of: Vec<u32> = (0..cols)
        .map(|c| {
            let column: Vec<u16> = rows
                .iter()
                .map(|r| r.get(c).copied().unwrap_or(u16::MAX))
                .collect();
            *col_ids.entry(column).or_insert_with(|| {
                col_first.push(c);
                (col_first.len() - 1) as u32
            })
        })
        .collect();
    let ncols = col_first.len().max(1);
    let mut table = Vec::with_capacity(rows.len() * ncols + 1);
    for r in &rows {
        for &c in &col_first {
            table.push(r.get(c).copied().unwrap_or(u16::MAX));
        }
    }
    // An even length: the AVX-512 gathers read 16-bit entries in pairs.
    if table.len() % 2 == 1 {
        table.push(u16::MAX);
    }
    Folded {
        row_of,
        col_of,
        cols: ncols,
        table,
    }
}

/// Bits to hold a class below `classes`.
fn class_bits_width(classes: usize) -> u32 {
    usize::BITS - classes.saturating_sub(1).leading_zeros()
}

/// Entries of a [`TupleCache`], log2: 64K (512 KiB).
const CACHE_LOG2: u32 = 16;

/// Entries of a staged build's [`TupleCache`], log2: 4K (32 KiB). A staged
/// table serves until its refinement, and a smaller cache is quicker to
/// set up (a fresh 512 KiB block costs its page faults).
const STAGED_CACHE_LOG2: u32 = 12;

/// The answers of the class tuples seen, for a family whose last step is
/// the bitmap AND: a direct-mapped table of `(tuple + 1) << 16 | local
/// rule` (`u16::MAX`: none; 0: empty), the tuple being the transport class
/// and the classes of the fields left out, packed in 47 bits. Relaxed
/// atomics: an entry is read and written whole, and it says which tuple it
/// answers, so concurrent lookups at worst miss.
struct TupleCache {
    entries: Box<[AtomicU64]>,
    log2_entries: u32,
    /// The fields packed after the transport class and their shifts.
    fields: [(usize, u32); 4],
    nfields: usize,
}

impl TupleCache {
    /// `None` when the tuple does not fit 47 bits.
    fn new(l4_width: u32, fields: &[(usize, u32)], log2_entries: u32) -> Option<TupleCache> {
        let mut shift = l4_width;
        let mut packed = [(0, 0); 4];
        for (p, &(f, w)) in packed.iter_mut().zip(fields) {
            *p = (f, shift);
            shift += w;
        }
        if shift > 47 || fields.len() > 4 {
            return None;
        }
        Some(TupleCache {
            entries: (0..1usize << log2_entries)
                .map(|_| AtomicU64::new(0))
                .collect(),
            log2_entries,
            fields: packed,
            nfields: fields.len(),
        })
    }

    /// The packed tuple of the classes `c` (transport class first).
    #[inline(always)]
    fn key(&self, c: &[u32; 5]) -> u64 {
        let mut key = u64::from(c[0]);
        for &(f, shift) in self.fields.iter().take(self.nfields) {
            key |= u64::from(c.get(f).copied().unwrap_or(0)) << shift;
        }
        key
    }

    #[inline(always)]
    fn slot(&self, key: u64) -> Option<&AtomicU64> {
        let h = key.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            >> (u64::BITS - self.log2_entries);
        self.entries.get(h as usize)
    }

    /// The cached first rule of `key`: `Some(None)` for no rule, `None`
    /// when not cached.
    #[inline(always)]
    fn get(&self, key: u64) -> Option<Option<usize>> {
        let e = self.slot(key)?.load(Ordering::Relaxed);
        if e >> 16 != key + 1 {
            return None;
        }
        let local = e & 0xffff;
        Some((local != 0xffff).then_some(local as usize))
    }

    #[inline(always)]
    fn put(&self, key: u64, local: Option<usize>) {
        let local = local
            .and_then(|l| u16::try_from(l).ok())
            .unwrap_or(u16::MAX);
        if let Some(slot) = self.slot(key) {
            slot.store(((key + 1) << 16) | u64::from(local), Ordering::Relaxed);
        }
    }

    fn memory_bytes(&self) -> usize {
        self.entries.len() * 8
    }
}

/// A copy starts empty.
impl Clone for TupleCache {
    fn clone(&self) -> TupleCache {
        TupleCache {
            entries: (0..self.entries.len()).map(|_| AtomicU64::new(0)).collect(),
            log2_entries: self.log2_entries,
            fields: self.fields,
            nfields: self.nfields,
        }
    }
}

impl std::fmt::Debug for TupleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TupleCache")
            .field("entries", &self.entries.len())
            .field("fields", &&self.fields[..self.nfields])
            .finish()
    }
}

/// Writes the class of every value of a small domain.
fn fill_table(table: &mut [u16], starts: &[u128], class_of: &[u32]) {
    for (i, (&start, &class)) in starts.iter().zip(class_of).enumerate() {
        let end = starts
            .get(i + 1)
            .map_or(table.len(), |&s| usize::try_from(s).unwrap_or(table.len()));
        let start = usize::try_from(start).unwrap_or(table.len());
        if let Some(slots) = table.get_mut(start..end.min(table.len())) {
            slots.fill(u16::try_from(class).unwrap_or(u16::MAX));
        }
    }
}

#[cfg(test)]
mod tests;
