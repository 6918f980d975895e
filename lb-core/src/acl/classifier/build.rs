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
    pub(super) fn build(
        rules: &[MatchRule],
        cross_budget: usize,
        final_budget: usize,
    ) -> Family<A> {
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
