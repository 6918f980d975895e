//! One family's tables and how they are compiled from the rules, step by
//! step: the rules of the family, the partitions of the five fields, the
//! single-class fields folded away, the cross products, the final table or
//! the tuple cache, then the lookup tables.

use super::addr_tree::{Addr, AddrField};
use super::cross::{cross, Combo, EXTRA_CROSS};
use super::final_table::{first_table, Folded, Last, FOLD_FACTOR, FOLD_MIN_COLUMNS};
use super::partition::{
    admits, class_bits, partition, push_range, stride, summary, with_summary, Event, Partition,
    Rows,
};
use super::simd::{self, Avx512};
use super::tuple_cache::{class_bits_width, TupleCache, CACHE_LOG2, STAGED_CACHE_LOG2};
use super::{AddrMatch, MatchRule, PortRange, NO_MATCH};

/// No rule: an empty class.
pub(super) const NO_RULE: u32 = u32::MAX;

/// A port field: class per port.
#[derive(Debug, Clone)]
pub(super) struct PortField {
    pub(super) table: Box<[u16; 65536]>,
    pub(super) bits: Rows,
}

/// The tables of one address family.
#[derive(Debug, Clone)]
pub(super) struct Family<A: Addr> {
    /// Local bit number → rule index.
    pub(super) rule_ids: Vec<u32>,
    /// Words per class bitmap, summary included.
    pub(super) stride: usize,
    /// Summary words at the start of each class bitmap.
    pub(super) summary: usize,
    /// Bitmap words after the summary (without the padding).
    pub(super) words: usize,
    pub(super) proto: Box<[u16; 256]>,
    /// Transport class bitmaps: the protocol classes, crossed with the
    /// destination and source port classes when those have a [`Combo`], and
    /// ANDed with the single class of every field that has only one.
    pub(super) proto_bits: Rows,
    /// Port fields with more than one class (their `bits` are empty when
    /// crossed into the transport classes).
    pub(super) sport: Option<PortField>,
    pub(super) dport: Option<PortField>,

    /// The cross products into the transport class, in order: the field
    /// (`simd::SPORT`, `DPORT`, `SRC` or `DST`) and its table.
    pub(super) combos: Vec<(usize, Combo)>,
    /// The first rule (local bit) of each transport class, or [`NO_RULE`].
    pub(super) first_rule: Vec<u32>,
    /// The first rule of every pair of a transport class and a class of
    /// the one field left outside the cross products, when it fits.
    pub(super) last: Option<Last>,
    /// Without a final table: the answers of the class tuples seen.
    pub(super) cache: Option<TupleCache>,
    /// A staged build with fields left outside the cross products: a full
    /// build may cross more of them and find a final table.
    pub(super) refinable: bool,
    pub(super) src: Option<AddrField<A>>,
    pub(super) dst: Option<AddrField<A>>,
    /// The AVX-512 steps for bursts, when the CPU has them.
    pub(super) simd: Option<Avx512>,
}

impl<A: Addr> Family<A> {
    /// Compiles the tables of the rules of family `A`, crossing within
    /// `cross_budget` and keeping a final table of at most `final_budget`
    /// entries (0: a staged build, none searched for).
    pub(super) fn build(
        rules: &[MatchRule],
        cross_budget: usize,
        final_budget: usize,
    ) -> Family<A> {
        let rule_ids = family_rules::<A>(rules);
        let n = rule_ids.len();
        let words = n.div_ceil(64).max(1);
        let mut fields = Fields::sweep::<A>(rules, &rule_ids, words);
        let (proto_bits, trivial) = fields.fold_single_classes(words);
        let mut crossed = Crossed::new(proto_bits, &fields, &trivial, words, cross_budget);
        let refinable = final_budget == 0 && !crossed.left.is_empty();
        let found = crossed.final_table(&fields, n, words, cross_budget, final_budget);
        let cache = match (&found, n < usize::from(u16::MAX)) {
            (None, true) if !crossed.left.is_empty() => {
                crossed.tuple_cache(&fields, words, final_budget)
            }
            _ => None,
        };
        let mut proto_class_of = fields.proto.class_of.clone();
        let (first_rule, last) = match found {
            Some((field, folded)) => {
                renumber(
                    &mut crossed,
                    &mut proto_class_of,
                    fields.get_mut(field),
                    &folded,
                );
                let last = Last {
                    field,
                    right: folded.cols,
                    table: folded.table,
                };
                (Vec::new(), Some(last))
            }
            None => (first_rules(&crossed.l4_bits, words), None),
        };
        let Crossed {
            l4_bits, combos, ..
        } = crossed;
        let done = |f: usize| {
            combos.iter().any(|(g, _)| *g == f) || last.as_ref().is_some_and(|l| l.field == f)
        };
        let (sport_done, dport_done) = (done(simd::SPORT), done(simd::DPORT));
        let (src_done, dst_done) = (done(simd::SRC), done(simd::DST));

        let mut proto_table = Box::new([0u16; 256]);
        fill_table(&mut proto_table[..], &fields.proto.starts, &proto_class_of);
        let Fields {
            sport,
            dport,
            src,
            dst,
            ..
        } = fields;
        Family {
            stride: stride(words),
            words,
            summary: summary(words),
            proto: proto_table,
            proto_bits: with_summary(&l4_bits, words),
            sport: port_field(sport, trivial[simd::SPORT], sport_done, words),
            dport: port_field(dport, trivial[simd::DPORT], dport_done, words),
            src: (!trivial[simd::SRC]).then(|| AddrField::new(src, words, src_done)),
            dst: (!trivial[simd::DST]).then(|| AddrField::new(dst, words, dst_done)),
            combos,
            first_rule,
            last,
            cache,
            refinable,
            rule_ids,
            simd: Avx512::detect(),
        }
    }
}

/// The rules of family `A` that can match something, as rule indices in
/// precedence order (a rule's position in the list is its local bit).
fn family_rules<A: Addr>(rules: &[MatchRule]) -> Vec<u32> {
    rules
        .iter()
        .enumerate()
        .filter(|(_, r)| admits::<A>(&r.src) && admits::<A>(&r.dst))
        .filter(|(_, r)| !r.sport.iter().all(|p| p.lo > p.hi))
        .filter(|(_, r)| !r.dport.iter().all(|p| p.lo > p.hi))
        .filter_map(|(i, _)| u32::try_from(i).ok())
        .filter(|&i| i != NO_MATCH)
        .collect()
}

/// The partitions of the five fields of one family's rules.
struct Fields {
    proto: Partition,
    sport: Partition,
    dport: Partition,
    src: Partition,
    dst: Partition,
}

impl Fields {
    /// Sweeps every field of the rules `rule_ids` (local bit `l` is rule
    /// `rule_ids[l]`) with `words`-word bitmaps.
    fn sweep<A: Addr>(rules: &[MatchRule], rule_ids: &[u32], words: usize) -> Fields {
        let n = rule_ids.len();
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
        let sport = ports(|r| &r.sport, &mut events);
        let dport = ports(|r| &r.dport, &mut events);

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
        let src = addrs(|r| &r.src, &mut events);
        let dst = addrs(|r| &r.dst, &mut events);
        Fields {
            proto,
            sport,
            dport,
            src,
            dst,
        }
    }

    /// The partition of `field` (`simd::SPORT`, `DPORT`, `SRC` or `DST`).
    fn get(&self, field: usize) -> &Partition {
        match field {
            simd::SPORT => &self.sport,
            simd::DPORT => &self.dport,
            simd::SRC => &self.src,
            _ => &self.dst,
        }
    }

    fn get_mut(&mut self, field: usize) -> &mut Partition {
        match field {
            simd::SPORT => &mut self.sport,
            simd::DPORT => &mut self.dport,
            simd::SRC => &mut self.src,
            _ => &mut self.dst,
        }
    }

    /// Folds the fields of a single class into the protocol bitmaps (taken
    /// out of `proto`): the transport bitmaps, and per field (indexed as
    /// `simd::SPORT` etc.) whether it was folded.
    fn fold_single_classes(&mut self, words: usize) -> (Vec<u64>, [bool; 5]) {
        let mut proto_bits = std::mem::take(&mut self.proto.bits);
        let mut trivial = [false; 5];
        for f in [simd::SPORT, simd::DPORT, simd::SRC, simd::DST] {
            let p = self.get(f);
            if p.class_of.len() == 1 {
                let only = class_bits(&p.bits, p.class_of.first().copied().unwrap_or(0), words);
                for chunk in proto_bits.chunks_mut(words) {
                    for (w, m) in chunk.iter_mut().zip(only) {
                        *w &= m;
                    }
                }
                trivial[f] = true;
            }
        }
        (proto_bits, trivial)
    }
}

/// The transport classes after the cross products, and the fields left
/// outside them.
struct Crossed {
    /// The transport class bitmaps.
    l4_bits: Vec<u64>,
    /// The cross products taken, in order.
    combos: Vec<(usize, Combo)>,
    /// The fields left out.
    left: Vec<usize>,
}

/// A way to leave one field for the final table: the index in
/// `Crossed::left` of the field kept, the transport classes and the cross
/// products of the others.
type Candidate = (usize, Vec<u64>, Vec<(usize, Combo)>);

impl Crossed {
    /// Cross-products the port classes into the protocol classes (RFC
    /// phase 1), then the addresses (fewest classes first), each when the
    /// result stays within `cross_budget`; fields of one class (`trivial`)
    /// are folded already.
    fn new(
        proto_bits: Vec<u64>,
        fields: &Fields,
        trivial: &[bool; 5],
        words: usize,
        cross_budget: usize,
    ) -> Crossed {
        let mut order = [simd::DPORT, simd::SPORT, simd::DST, simd::SRC];
        if fields.src.classes < fields.dst.classes {
            order.swap(2, 3);
        }
        let mut c = Crossed {
            l4_bits: proto_bits,
            combos: Vec::new(),
            left: Vec::new(),
        };
        for f in order {
            if trivial[f] {
                continue;
            }
            let p = fields.get(f);
            match cross(&c.l4_bits, &p.bits, words, cross_budget, usize::MAX) {
                Some((table, bits)) => {
                    c.l4_bits = bits;
                    c.combos.push((f, Combo::new(p.classes, table)));
                }
                None => c.left.push(f),
            }
        }
        c
    }

    /// Searches for a final table (none in a staged build, `final_budget`
    /// 0): with one field left, its table when it fits; with more, all
    /// but one of them crossed in with a larger budget, when the final
    /// table of the one then fits (the ways tried smallest table first),
    /// those cross products then taken. Returns the field and its folded
    /// table.
    fn final_table(
        &mut self,
        fields: &Fields,
        n: usize,
        words: usize,
        cross_budget: usize,
        final_budget: usize,
    ) -> Option<(usize, Folded)> {
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
        if final_budget == 0 {
            // A staged build: no final table is searched for.
            return None;
        }
        if let [f] = self.left[..] {
            return final_of(&self.l4_bits, fields.get(f)).map(|folded| (f, folded));
        }
        if self.left.is_empty() {
            return None;
        }
        self.left.sort_by_key(|&f| fields.get(f).classes);
        let mut candidates = self.candidates(fields, words, cross_budget, final_budget);
        // The smallest table before folding first; the first that folds
        // within the budget is taken (each costs its size to compute).
        candidates.sort_by_key(|(keep, bits, _)| {
            bits.len() / words * fields.get(self.left[*keep]).classes
        });
        for (keep, bits, more) in candidates {
            let f = self.left[keep];
            if let Some(folded) = final_of(&bits, fields.get(f)) {
                self.l4_bits = bits;
                self.left.retain(|&g| g == f);
                self.combos.extend(more);
                return Some((f, folded));
            }
        }
        None
    }

    /// Per field left out, the cross products of all the others with a
    /// larger budget, when they all fit.
    fn candidates(
        &self,
        fields: &Fields,
        words: usize,
        cross_budget: usize,
        final_budget: usize,
    ) -> Vec<Candidate> {
        let mut candidates: Vec<Candidate> = Vec::new();
        for keep in (0..self.left.len()).rev() {
            let mut bits = self.l4_bits.clone();
            let mut more = Vec::new();
            // More transport classes than this and the table would be
            // too large to compute: such a cross stops early.
            let kept = fields.get(self.left[keep]);
            let most = final_budget.saturating_mul(FOLD_FACTOR) / kept.classes.max(1);
            for (i, &f) in self.left.iter().enumerate() {
                if i == keep {
                    continue;
                }
                let p = fields.get(f);
                let budget = cross_budget.saturating_mul(EXTRA_CROSS);
                match cross(&bits, &p.bits, words, budget, most) {
                    Some((table, b)) => {
                        bits = b;
                        more.push((f, Combo::new(p.classes, table)));
                    }
                    None => break,
                }
            }
            if more.len() + 1 == self.left.len() {
                candidates.push((keep, bits, more));
            }
        }
        candidates
    }

    /// The cache of the class tuples of the transport class and the fields
    /// left out (smaller in a staged build), when the tuple fits.
    fn tuple_cache(
        &self,
        fields: &Fields,
        words: usize,
        final_budget: usize,
    ) -> Option<TupleCache> {
        let widths: Vec<(usize, u32)> = self
            .left
            .iter()
            .map(|&f| (f, class_bits_width(fields.get(f).classes)))
            .collect();
        let log2 = if final_budget == 0 {
            STAGED_CACHE_LOG2
        } else {
            CACHE_LOG2
        };
        TupleCache::new(class_bits_width(self.l4_bits.len() / words), &widths, log2)
    }
}

/// With a final table, the transport classes and the last field's classes
/// become the table's rows and columns (the last cross product, or the
/// protocol table, and the field's intervals give them directly); the
/// transport bitmaps and first rules are unused, and dropped.
fn renumber(crossed: &mut Crossed, proto_class_of: &mut [u32], p: &mut Partition, f: &Folded) {
    match crossed.combos.last_mut() {
        Some((_, c)) => c.table.iter_mut().for_each(|e| {
            *e = f.row_of.get(*e as usize).copied().unwrap_or(0);
        }),
        None => proto_class_of.iter_mut().for_each(|e| {
            *e = f.row_of.get(*e as usize).copied().unwrap_or(0);
        }),
    }
    for c in p.class_of.iter_mut() {
        *c = f.col_of.get(*c as usize).copied().unwrap_or(0);
    }
    crossed.l4_bits = Vec::new();
}

/// The first rule of each transport class (the answer when no field is
/// left outside the cross products).
fn first_rules(l4_bits: &[u64], words: usize) -> Vec<u32> {
    l4_bits
        .chunks(words)
        .map(|class| {
            class
                .iter()
                .enumerate()
                .find(|(_, &w)| w != 0)
                .map_or(NO_RULE, |(i, &w)| (i * 64) as u32 + w.trailing_zeros())
        })
        .collect()
}

/// A port field's table and bitmaps (none when `combined`: crossed into the
/// transport classes); `None` for a field of one class (`trivial`).
fn port_field(p: Partition, trivial: bool, combined: bool, words: usize) -> Option<PortField> {
    if trivial {
        return None;
    }
    let mut table: Box<[u16; 65536]> = vec![0u16; 65536].into_boxed_slice().try_into().ok()?;
    fill_table(&mut table[..], &p.starts, &p.class_of);
    Some(PortField {
        table,
        bits: if combined {
            Rows::default()
        } else {
            with_summary(&p.bits, words)
        },
    })
}

impl<A: Addr> Family<A> {
    pub(super) fn shape(&self) -> String {
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

    pub(super) fn memory_bytes(&self) -> usize {
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

/// Writes the class of every value of a small domain.
pub(super) fn fill_table(table: &mut [u16], starts: &[u128], class_of: &[u32]) {
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
