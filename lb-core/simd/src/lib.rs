//! AVX-512 versions of the steps of lb-core's packet classifier
//! (`lb_core::acl::Classifier`) over a group of keys: 16 keys per vector,
//! table and trie reads as masked gathers, the rule bitmap AND as 8-word
//! tests.
//!
//! ```
//! use lb_simd::Avx512;
//!
//! // Two bitmaps of two words, each after one summary word: the lowest
//! // bit they have in common is bit 6 of word 1, rule 70.
//! let a = [0b10, 0, 1 << 6];
//! let b = [0b10, 0, 1 << 6 | 1];
//! if let Some(v) = Avx512::detect() {
//!     let mut first = None;
//!     v.first_dense(1, 2, |_| [&a[..], &b[..]], |_, r| first = r);
//!     assert_eq!(first, Some(70));
//! }
//! ```
//!
//! Every step is reached through [`Avx512`], which exists only once the CPU
//! has been seen to support AVX-512F/BW/VL/CD (runtime detection); without it
//! the classifier takes its scalar steps, which compute the same values
//! (the classifier's tests compare the two). Every gather index is checked
//! against its table's length in the gather's mask, so an out-of-range index
//! reads nothing (the lane gets the scalar path's fallback value) instead of
//! reading out of bounds.
//!
//! This is a crate of its own so that lb-core can forbid unsafe code: the
//! intrinsics are the only unsafe code of the per-packet logic.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Proof that the CPU supports the AVX-512 subsets these steps use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Avx512(());

/// Lanes per vector.
const LANES: usize = 16;

/// The mask of the first `n` lanes (all 16 from 16 on).
#[inline(always)]
fn lanes(n: usize) -> u16 {
    if n >= LANES {
        u16::MAX
    } else {
        (1u16 << n) - 1
    }
}

/// `len` as a gather bound: gather indices are signed 32-bit.
#[inline(always)]
fn bound(len: usize) -> u32 {
    len.min(i32::MAX as usize) as u32
}

impl Avx512 {
    /// The token when the CPU has AVX-512F, BW, VL and CD.
    pub fn detect() -> Option<Avx512> {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512cd")
            {
                return Some(Avx512(()));
            }
        }
        None
    }

    /// For every key `j` below `n`: `put(j, the lowest bit set in all the
    /// rows of rows(j))`, each row one summary word (skipped) then `words`
    /// words (at most 64 are read), as the classifier's `first_common_dense` for any number
    /// of rows.
    #[inline]
    pub fn first_dense<'a, const N: usize>(
        self,
        n: usize,
        words: usize,
        rows: impl Fn(usize) -> [&'a [u64]; N],
        put: impl FnMut(usize, Option<usize>),
    ) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `self` exists only when `detect` saw AVX-512F/BW/VL/CD.
        unsafe {
            first_dense_each(n, words, rows, put)
        }
    }
}

/// One step of the trie below the top: an entry that is a class (`leaf`
/// set) is kept, another is replaced by entry `byte` of its block (`leaf`
/// when out of range). Entries are 16-bit, block numbers below 2^15.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512cd")]
fn dir_step(e: __m512i, m: __mmask16, blocks: &[u16], byte: __m512i, leaf: __m512i) -> __m512i {
    let is_leaf = _mm512_mask_test_epi32_mask(m, e, leaf);
    let at = _mm512_or_si512(_mm512_slli_epi32::<8>(e), byte);
    let next = gather_u16(blocks, at, m & !is_leaf, leaf);
    _mm512_mask_blend_epi32(is_leaf, next, e)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512cd")]
fn first_dense_each<'a, const N: usize>(
    n: usize,
    words: usize,
    rows: impl Fn(usize) -> [&'a [u64]; N],
    mut put: impl FnMut(usize, Option<usize>),
) {
    for j in 0..n {
        put(j, first_dense(rows(j), words));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512cd")]
fn first_dense<const N: usize>(rows: [&[u64]; N], words: usize) -> Option<usize> {
    // The words after the summary word, at most 64.
    let mut len = words.min(64) + 1;
    for r in &rows {
        len = len.min(r.len());
    }
    let n = len.max(1) - 1;
    let mut mask = 0u64;
    let mut at = 0;
    while at < n {
        let m = lanes(n - at) as u8;
        let mut and = _mm512_set1_epi64(-1);
        for r in &rows {
            // SAFETY: lanes under `m` are the words `1 + at..1 + n` at
            // most, within `r` since `1 + n <= r.len()`.
            let v = unsafe { _mm512_maskz_loadu_epi64(m, r.as_ptr().add(1 + at).cast()) };
            and = _mm512_and_si512(and, v);
        }
        mask |= u64::from(_mm512_mask_test_epi64_mask(m, and, and)) << at;
        at += 8;
    }
    let w = mask.trailing_zeros() as usize;
    if w >= n {
        return None;
    }
    let mut x = u64::MAX;
    for r in &rows {
        x &= r.get(1 + w).copied().unwrap_or(0);
    }
    Some(w * 64 + x.trailing_zeros() as usize)
}

/// An IPv4 trie's tables (the classifier's `Dir`).
#[derive(Debug, Clone, Copy)]
pub struct Trie<'a> {
    pub top: &'a [u16; 1 << 16],
    pub mid: &'a [u16],
    pub low: &'a [u16],
    pub leaf: u16,
}

/// How [`Avx512::lookup`] gets an address field's class.
#[derive(Debug, Clone, Copy)]
pub enum AddrStep<'a> {
    /// The field has one class: 0.
    Zero,
    /// The input is the IPv4 address: through its trie.
    Trie(Trie<'a>),
    /// The input is already the class.
    Given,
}

/// A family's lookup tables, for [`Avx512::lookup`].
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a> {
    pub proto: &'a [u16],
    pub sport: Option<&'a [u16]>,
    pub dport: Option<&'a [u16]>,
    pub src: AddrStep<'a>,
    pub dst: AddrStep<'a>,
    /// The cross products in order: the table, the number of classes of
    /// its right side and the field of its right side ([`SPORT`],
    /// [`DPORT`], [`SRC`] or [`DST`]).
    pub combos: [Option<(&'a [u32], usize, usize)>; 4],
    /// How the classes give the first rule.
    pub finish: Finish<'a>,
    /// Local rule number → rule index.
    pub rule_ids: &'a [u32],
}

/// The last step of [`Avx512::lookup`].
#[derive(Debug, Clone, Copy)]
pub enum Finish<'a> {
    /// Fields remain outside the cross products: the output is the classes
    /// (for the bitmap scan).
    Scan,
    /// Every field is in the transport class: its first rule (local, or
    /// `u32::MAX`).
    First(&'a [u32]),
    /// One field remains: the first rule (local, or `u16::MAX`) of
    /// transport class `l` and class `c` of the field is entry `l * right +
    /// c`: the table, `right` and the field.
    Table(&'a [u16], usize, usize),
}

/// A group's keys, one slice per field, at least `n` keys each (the
/// addresses: IPv4 addresses or the address classes, as the plan says).
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub proto: &'a [u8],
    pub sport: &'a [u16],
    pub dport: &'a [u16],
    pub src: &'a [u32],
    pub dst: &'a [u32],
}

/// Indices of the fields in [`Avx512::lookup`]'s arrays (0 is the
/// protocol, then the transport class).
pub const SPORT: usize = 1;
pub const DPORT: usize = 2;
pub const SRC: usize = 3;
pub const DST: usize = 4;

/// Keys per group: a multiple of [`LANES`].
pub const GROUP: usize = 64;

impl Avx512 {
    /// The first rule common to a group's bitmaps, 8 keys per vector:
    /// `rows` are per field the class bitmaps (`stride` words per class,
    /// `summary` summary words first, as the classifier lays them out) and
    /// each key's class; `out[j]` gets the lowest bit set in all the
    /// bitmaps of key `j` (as the scalar scan), for `j < n`.
    #[inline]
    pub fn scan(
        self,
        n: usize,
        stride: usize,
        summary: usize,
        rows: &[(&[u64], &[u32; GROUP])],
        out: &mut [Option<usize>; GROUP],
    ) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `self` exists only when `detect` saw AVX-512F/BW/VL/CD.
        unsafe {
            scan(n, stride, summary, rows, out)
        }
    }

    /// A family's whole lookup for the first `n` keys of a group (at
    /// most the length of every slice of `input`), every step over all
    /// the keys in registers. When the plan finishes with a first rule
    /// ([`Finish::First`], [`Finish::Table`]), `out` gets each key's rule
    /// index (`u32::MAX`: none) and the result is true; otherwise `cls`
    /// gets the transport class (after every cross product) and the class
    /// of each field, lanes from `n` on 0, and the result is false.
    #[inline]
    pub fn lookup(
        self,
        plan: &Plan<'_>,
        n: usize,
        input: &Input<'_>,
        cls: &mut [[u32; GROUP]; 5],
        out: &mut [u32; GROUP],
    ) -> bool {
        // As many vectors as the keys need (the steps of different vectors
        // overlap; empty ones would cost their set-up).
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `self` exists only when `detect` saw AVX-512F/BW/VL/CD.
        unsafe {
            match n {
                0..=16 => lookup::<1>(plan, n, input, cls, out),
                17..=32 => lookup::<2>(plan, n, input, cls, out),
                33..=48 => lookup::<3>(plan, n, input, cls, out),
                _ => lookup::<{ GROUP / LANES }>(plan, n, input, cls, out),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }
}

/// Lanes `k * 16 ..` of `a` under `m`, zero-extended (0 elsewhere). `m`
/// must cover only lanes `k * 16 + i < a.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512cd")]
fn load_u8(a: &[u8], k: usize, m: __mmask16) -> __m512i {
    let m = m & lanes(a.len().saturating_sub(k * LANES));
    let p = a.as_ptr().wrapping_add(k * LANES);
    // SAFETY: the lanes under `m` are within `a` (the mask is cut at its
    // end); a masked-out lane is not read (and does not fault).
    unsafe { _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, p.cast())) }
}

/// [`load_u8`] of 16-bit values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512cd")]
fn load_u16(a: &[u16], k: usize, m: __mmask16) -> __m512i {
    let m = m & lanes(a.len().saturating_sub(k * LANES));
    let p = a.as_ptr().wrapping_add(k * LANES);
    // SAFETY: as in `load_u8`.
    unsafe { _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p.cast())) }
}

/// [`load_u8`] of 32-bit values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512cd")]
fn load_u32(a: &[u32], k: usize, m: __mmask16) -> __m512i {
    let m = m & lanes(a.len().saturating_sub(k * LANES));
    let p = a.as_ptr().wrapping_add(k * LANES);
    // SAFETY: as in `load_u8`.
    unsafe { _mm512_maskz_loadu_epi32(m, p.cast()) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512cd")]
fn store(a: &mut [u32; GROUP], k: usize, v: __m512i) {
    if let Some(s) = a.get_mut(k * LANES..(k + 1) * LANES) {
        // SAFETY: the 16 words at `s` are within `a`.
        unsafe { _mm512_storeu_si512(s.as_mut_ptr().cast(), v) }
    }
}

/// `table[i]` per lane under `m` (`or` where out of range, 0 elsewhere),
/// 16-bit entries, read in aligned pairs: the last entry of a table of odd
/// length reads as out of range (such tables are padded).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512cd")]
fn gather_u16(table: &[u16], i: __m512i, m: __mmask16, or: __m512i) -> __m512i {
    let one = _mm512_set1_epi32(1);
    let pair = _mm512_andnot_si512(one, i);
    let len = _mm512_set1_epi32(bound(table.len()) as i32);
    let ok = _mm512_mask_cmplt_epu32_mask(m, _mm512_or_si512(pair, one), len);
    // SAFETY: lanes under `ok` read the 4 bytes at `2 * pair`, inside
    // `table` since `pair + 1 < table.len()` (and `pair < 2^31`, a valid
    // signed index).
    let words = unsafe {
        _mm512_mask_i32gather_epi32::<2>(_mm512_setzero_si512(), ok, pair, table.as_ptr().cast())
    };
    let shift = _mm512_slli_epi32::<4>(_mm512_and_si512(i, one));
    let v = _mm512_and_si512(_mm512_srlv_epi32(words, shift), _mm512_set1_epi32(0xffff));
    _mm512_mask_mov_epi32(v, m & !ok, or)
}

/// `table[i]` per lane under `m` (`src` elsewhere or out of range).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512cd")]
fn gather_u32(table: &[u32], i: __m512i, m: __mmask16, src: __m512i) -> __m512i {
    let len = _mm512_set1_epi32(bound(table.len()) as i32);
    let ok = _mm512_mask_cmplt_epu32_mask(m, i, len);
    // SAFETY: lanes under `ok` have `i < table.len()` and `i < 2^31`.
    unsafe { _mm512_mask_i32gather_epi32::<4>(src, ok, i, table.as_ptr().cast()) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512cd")]
fn lookup<const V: usize>(
    plan: &Plan<'_>,
    n: usize,
    input: &Input<'_>,
    cls_out: &mut [[u32; GROUP]; 5],
    out: &mut [u32; GROUP],
) -> bool {
    let zero = _mm512_setzero_si512();
    let mut m = [0u16; V];
    for (k, m) in m.iter_mut().enumerate() {
        *m = if n > k * LANES {
            lanes(n - k * LANES)
        } else {
            0
        };
    }
    let mut cls = [[zero; V]; 5];
    for k in 0..V {
        cls[0][k] = gather_u16(plan.proto, load_u8(input.proto, k, m[k]), m[k], zero);
    }
    if let Some(t) = plan.dport {
        for k in 0..V {
            cls[DPORT][k] = gather_u16(t, load_u16(input.dport, k, m[k]), m[k], zero);
        }
    }
    if let Some(t) = plan.sport {
        for k in 0..V {
            cls[SPORT][k] = gather_u16(t, load_u16(input.sport, k, m[k]), m[k], zero);
        }
    }
    // Both tries a step at a time.
    let byte = _mm512_set1_epi32(0xff);
    let mut tries: [Option<(Trie<'_>, [__m512i; V], usize)>; 2] = [None, None];
    for (slot, (step, addrs, f)) in tries
        .iter_mut()
        .zip([(plan.src, input.src, SRC), (plan.dst, input.dst, DST)])
    {
        match step {
            AddrStep::Zero => {}
            AddrStep::Given => {
                for k in 0..V {
                    cls[f][k] = load_u32(addrs, k, m[k]);
                }
            }
            AddrStep::Trie(t) => {
                let mut a = [zero; V];
                for k in 0..V {
                    a[k] = load_u32(addrs, k, m[k]);
                    let top = _mm512_srli_epi32::<16>(a[k]);
                    cls[f][k] = gather_u16(t.top, top, m[k], zero);
                }
                *slot = Some((t, a, f));
            }
        }
    }
    for (t, a, f) in tries.iter().flatten() {
        let leaf = _mm512_set1_epi32(t.leaf.into());
        for k in 0..V {
            let b = _mm512_and_si512(_mm512_srli_epi32::<8>(a[k]), byte);
            cls[*f][k] = dir_step(cls[*f][k], m[k], t.mid, b, leaf);
        }
    }
    for (t, a, f) in tries.iter().flatten() {
        let leaf = _mm512_set1_epi32(t.leaf.into());
        for k in 0..V {
            let e = dir_step(cls[*f][k], m[k], t.low, _mm512_and_si512(a[k], byte), leaf);
            cls[*f][k] = _mm512_andnot_si512(leaf, e);
        }
    }
    for &(table, right, f) in plan.combos.iter().flatten() {
        let r = _mm512_set1_epi32(right as i32);
        let Some(&c) = cls.get(f) else { continue };
        for k in 0..V {
            let i = _mm512_add_epi32(_mm512_mullo_epi32(cls[0][k], r), c[k]);
            cls[0][k] = gather_u32(table, i, m[k], zero);
        }
    }
    let none = _mm512_set1_epi32(-1);
    let mut local = [none; V];
    match plan.finish {
        Finish::Scan => {
            for (o, c) in cls_out.iter_mut().zip(&cls) {
                for (k, &v) in c.iter().enumerate() {
                    store(o, k, v);
                }
            }
            return false;
        }
        Finish::First(table) => {
            for k in 0..V {
                local[k] = gather_u32(table, cls[0][k], m[k], none);
            }
        }
        Finish::Table(table, right, f) => {
            let r = _mm512_set1_epi32(right as i32);
            let Some(&c) = cls.get(f) else { return false };
            let or = _mm512_set1_epi32(0xffff);
            for k in 0..V {
                let i = _mm512_add_epi32(_mm512_mullo_epi32(cls[0][k], r), c[k]);
                local[k] = gather_u16(table, i, m[k], or);
            }
        }
    }
    // `u32::MAX` and `u16::MAX` are beyond `rule_ids` (fewer rules): none.
    for (k, &l) in local.iter().enumerate() {
        store(out, k, gather_u32(plan.rule_ids, l, m[k], none));
    }
    true
}

/// Word `at[i]` of `bits` per lane under `m` (0 elsewhere or out of
/// range).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512cd")]
fn gather_u64(bits: &[u64], at: __m256i, m: __mmask8) -> __m512i {
    let len = _mm256_set1_epi32(bound(bits.len()) as i32);
    let ok = _mm256_mask_cmplt_epu32_mask(m, at, len);
    // SAFETY: lanes under `ok` have `at < bits.len()` and `at < 2^31`.
    unsafe {
        _mm512_mask_i32gather_epi64::<8>(_mm512_setzero_si512(), ok, at, bits.as_ptr().cast())
    }
}

/// The number of trailing zeros of each (non-zero) lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512cd")]
fn trailing_zeros(x: __m512i) -> __m512i {
    let low = _mm512_and_si512(x, _mm512_sub_epi64(_mm512_setzero_si512(), x));
    _mm512_sub_epi64(_mm512_set1_epi64(63), _mm512_lzcnt_epi64(low))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512cd")]
fn scan(
    n: usize,
    stride: usize,
    summary: usize,
    rows: &[(&[u64], &[u32; GROUP])],
    out: &mut [Option<usize>; GROUP],
) {
    const HALF: usize = LANES / 2;
    let none = _mm512_set1_epi64(-1);
    let stride32 = _mm256_set1_epi32(bound(stride) as i32);
    let summary64 = _mm512_set1_epi64(summary as i64);
    for (h, out) in out.chunks_mut(HALF).enumerate() {
        let first = h * HALF;
        if first >= n {
            break;
        }
        let mut active = lanes(n - first) as u8;
        // Each row's start (its class times the stride) per lane.
        let mut base = [_mm256_setzero_si256(); 5];
        for (b, (_, classes)) in base.iter_mut().zip(rows) {
            if let Some(c) = classes.get(first..first + HALF) {
                // SAFETY: the 8 words at `c` are within `classes`.
                let c = unsafe { _mm256_loadu_si256(c.as_ptr().cast()) };
                *b = _mm256_mullo_epi32(c, stride32);
            }
        }
        let and = |at: __m256i, m: __mmask8| {
            let mut x = _mm512_set1_epi64(-1);
            for (b, (bits, _)) in base.iter().zip(rows) {
                x = _mm512_and_si512(x, gather_u64(bits, _mm256_add_epi32(*b, at), m));
            }
            x
        };
        let mut res = none;
        for sw in 0..summary {
            if active == 0 {
                break;
            }
            let mut sm = and(_mm256_set1_epi32(sw as i32), active);
            let mut live = _mm512_mask_test_epi64_mask(active, sm, sm);
            while live != 0 {
                // The word of each lane's lowest candidate bit.
                let w = _mm512_add_epi64(_mm512_set1_epi64((sw * 64) as i64), trailing_zeros(sm));
                let at = _mm512_add_epi64(summary64, w);
                let inside =
                    _mm512_mask_cmplt_epu64_mask(live, at, _mm512_set1_epi64(stride as i64));
                let x = and(_mm512_cvtepi64_epi32(at), inside);
                let hit = _mm512_mask_test_epi64_mask(inside, x, x);
                let bit = _mm512_add_epi64(_mm512_slli_epi64::<6>(w), trailing_zeros(x));
                res = _mm512_mask_mov_epi64(res, hit, bit);
                active &= !hit;
                // The next candidate of the lanes still looking.
                sm = _mm512_and_si512(sm, _mm512_sub_epi64(sm, _mm512_set1_epi64(1)));
                live = _mm512_mask_test_epi64_mask(live & !hit, sm, sm);
            }
        }
        let mut found = [0u64; HALF];
        // SAFETY: `found` holds 8 words.
        unsafe { _mm512_storeu_si512(found.as_mut_ptr().cast(), res) };
        for (o, &f) in out.iter_mut().zip(&found) {
            *o = (f != u64::MAX).then_some(f as usize);
        }
    }
}
