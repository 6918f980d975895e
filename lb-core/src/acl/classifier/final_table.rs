//! The final table: the first rule of every pair of a transport class and
//! a class of the one field left outside the cross products, computed at
//! build time and folded (equal rows, then equal columns, merged).

use ahash::AHashMap;

/// Most entries of the final table ([`Last`]).
pub(super) const FINAL_BUDGET: usize = 1 << 21;

/// The final table: the first rule (local bit, `u16::MAX` for none) of
/// transport class `l` and class `c` of the field left outside the cross
/// products is `table[l * right + c]`.
#[derive(Debug, Clone)]
pub(super) struct Last {
    /// The field (`simd::SPORT`, `DPORT`, `SRC` or `DST`).
    pub(super) field: usize,
    pub(super) right: usize,
    pub(super) table: Vec<u16>,
}

/// Computing a final table of up to this many times [`FINAL_BUDGET`]
/// entries is allowed, when it folds to within the budget.
pub(super) const FOLD_FACTOR: usize = 8;

/// A folded table whose distinct rows exceed `final_budget` over this
/// is given up early (its columns would have to fold to fewer: a guess
/// that bounds the build time).
pub(super) const FOLD_MIN_COLUMNS: usize = 256;

/// The table of the first common bit of every pair of `a`'s and `b`'s
/// `words`-word bitmaps (`a` the rows), `u16::MAX` for none (fewer than
/// `u16::MAX` bits), folded; `None` when it has more than `max_rows`
/// distinct rows.
pub(super) fn first_table(a: &[u64], b: &[u64], words: usize, max_rows: usize) -> Option<Folded> {
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
pub(super) struct Folded {
    pub(super) row_of: Vec<u32>,
    pub(super) col_of: Vec<u32>,
    pub(super) cols: usize,
    pub(super) table: Vec<u16>,
}

/// Folds the columns of the distinct rows `distinct` (row-major, `cols`
/// per row) of a table whose row `r` is `distinct` row `row_of[r]`.
pub(super) fn fold_columns(row_of: Vec<u32>, distinct: &[u16], cols: usize) -> Folded {
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
