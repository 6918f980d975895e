//! The lookups of one family: per key (the class of each field, the cross
//! products, then the final table, the tuple cache or the bitmap AND) and
//! per group of keys, each step over all the keys of the group, with the
//! AVX-512 steps when the CPU has them.

use super::addr_tree::{Addr, AddrField, Search, LEAF};
use super::build::{Family, NO_RULE};
use super::partition::class_bits;
use super::simd::{self, AddrStep, Avx512, Finish, Input, Plan, Trie};
use super::{KeyColumns, COLUMN_SMALL_BURST, GROUP, NO_MATCH, SMALL_BURST};

/// The lowest bit set in all `N` bitmaps (each `s` summary words then the
/// words, as laid out by [`with_summary`]).
#[inline(always)]
pub(super) fn first_common<const N: usize>(rows: [&[u64]; N], s: usize) -> Option<usize> {
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
pub(super) fn first_common_dense(a: &[u64], b: &[u64], words: usize) -> Option<usize> {
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

impl<A: Addr> Family<A> {
    #[inline(always)]
    pub(super) fn lookup(&self, src: A, dst: A, proto: u8, sport: u16, dport: u16) -> [u32; 5] {
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
    pub(super) fn scan(&self, c: &[u32; 5]) -> Option<u32> {
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
    pub(super) fn scan_rows(&self, c: &[u32; 5]) -> Option<u32> {
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
    pub(super) fn scan_local(&self, c: &[u32; 5]) -> Option<usize> {
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
    pub(super) fn finish(&self) -> Finish<'_> {
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
    pub(super) fn classify_columns(&self, keys: &KeyColumns<'_, A>, out: &mut [u32]) {
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
    pub(super) fn classify_keys(&self, keys: &KeyColumns<'_, A>, out: &mut [u32]) {
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
    pub(super) fn classify_group(&self, k: &KeyColumns<'_, A>, out: &mut [u32; GROUP]) {
        self.classify_group_with(k, out, self.simd);
    }

    /// [`Family::classify_group`] with the AVX-512 steps or not (`simd`).
    #[inline(always)]
    pub(super) fn classify_group_with(
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
    pub(super) fn lookup_group(
        &self,
        k: &KeyColumns<'_, A>,
        n: usize,
        cls: &mut [[u32; GROUP]; 5],
    ) {
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
    pub(super) fn lookup_simd(
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
}

/// `out[i] = table[idx[i]]` (0 out of range).
#[inline(always)]
pub(super) fn table_into<T: Copy + Into<usize>>(table: &[u16], idx: &[T], out: &mut [u32]) {
    for (c, &i) in out.iter_mut().zip(idx) {
        *c = table.get(i.into()).copied().unwrap_or(0).into();
    }
}
