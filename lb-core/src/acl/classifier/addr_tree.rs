//! The address fields: an address family's integer form, the IPv4
//! multibit trie ([`Dir`]) and the IPv6 static B+ tree ([`STree`]) that map
//! an address to its interval's class.

use std::net::IpAddr;

use ipnet::IpNet;

use super::partition::{with_summary, Partition, Rows};
use super::GROUP;

/// An address family's integer form.
pub(super) trait Addr: Copy + Ord + Default + std::fmt::Debug {
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

/// Keys per node of an [`STree`] (one cache line of IPv4 addresses).
pub(super) const NODE: usize = 16;

/// A static B+ tree over sorted keys (an "S+ tree"): nodes of [`NODE`]
/// keys, `NODE + 1` children per inner node, stored level by level. A search
/// reads one node per level and counts its keys not above the address, with
/// no data-dependent branch: the count picks the child, and at the leaves it
/// is the rank.
#[derive(Debug, Clone)]
pub(super) struct STree<A: Addr> {
    /// Every level's nodes, the root first and the leaves last.
    pub(super) nodes: Vec<[A::Key; NODE]>,
    /// Where each inner level starts in `nodes`, root first.
    pub(super) inner: Vec<usize>,
    /// Where the leaves start in `nodes`.
    pub(super) leaves: usize,
    /// The number of keys.
    pub(super) len: usize,
}

impl<A: Addr> STree<A> {
    /// `keys` must be sorted.
    pub(super) fn new(keys: &[A]) -> STree<A> {
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
    pub(super) fn rank(&self, x: A) -> usize {
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
    pub(super) fn ranks(&self, xs: &[A], out: &mut [u32]) {
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

    pub(super) fn memory_bytes(&self) -> usize {
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
pub(super) struct Dir {
    pub(super) top: Box<[u16; 1 << 16]>,
    /// 256-entry blocks of the second and third steps; block 0 is unused.
    pub(super) mid: Vec<u16>,
    pub(super) low: Vec<u16>,
}

pub(super) const LEAF: u16 = 1 << 15;

impl Dir {
    /// `starts` sorted, the first 0; `class_of` the class of each interval.
    pub(super) fn new(starts: &[u128], class_of: &[u32]) -> Option<Dir> {
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
    pub(super) fn step(e: u16, blocks: &[u16], byte: u32) -> u16 {
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
    pub(super) fn class(&self, a: u32) -> u32 {
        let e = self.top[(a >> 16) as usize];
        let e = Dir::step(e, &self.mid, (a >> 8) & 0xff);
        u32::from(Dir::step(e, &self.low, a & 0xff) & !LEAF)
    }

    /// `out[i]` = the class of `addrs[i]`, one step at a time over all the
    /// addresses.
    #[inline(always)]
    pub(super) fn classes(&self, addrs: &[u32], out: &mut [u32]) {
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

    pub(super) fn memory_bytes(&self) -> usize {
        std::mem::size_of::<[u16; 1 << 16]>() + (self.mid.capacity() + self.low.capacity()) * 2
    }
}

/// Sets every entry of `entries` (entry `k` covers the addresses `base + (k
/// << shift)` and the `2^shift - 1` after it) that lies within one interval
/// to `LEAF | class`; returns the entries holding the start of an interval
/// (they need a block of the next step).
pub(super) fn fill(
    entries: &mut [u16],
    base: u32,
    shift: u32,
    starts: &[u128],
    class_of: &[u32],
) -> Vec<u32> {
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
pub(super) fn interval_of(starts: &[u128], addr: u128) -> usize {
    starts.partition_point(|&s| s <= addr).saturating_sub(1)
}

/// How an address field finds an address's interval.
#[derive(Debug, Clone)]
pub(super) enum Search<A: Addr> {
    /// IPv4: the class directly.
    Dir(Dir),
    /// The starts of the intervals but the first (0): the rank is the
    /// interval.
    Tree(STree<A>),
}

/// An address field: its search and each interval's class.
#[derive(Debug, Clone)]
pub(super) struct AddrField<A: Addr> {
    pub(super) search: Search<A>,
    pub(super) class_of: Vec<u32>,
    pub(super) bits: Rows,
}

impl<A: Addr> AddrField<A> {
    pub(super) fn new(mut p: Partition, words: usize, combined: bool) -> AddrField<A> {
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
    pub(super) fn intervals(&self) -> usize {
        self.class_of.len()
    }

    #[inline(always)]
    pub(super) fn class(&self, addr: A) -> u32 {
        match &self.search {
            Search::Dir(d) => d.class(addr.to_u128() as u32),
            Search::Tree(t) => self.class_of.get(t.rank(addr)).copied().unwrap_or(0),
        }
    }

    /// `out[i]` = the class of `addrs[i]`.
    #[inline(always)]
    pub(super) fn classes(&self, addrs: &[A], out: &mut [u32]) {
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

    pub(super) fn memory_bytes(&self) -> usize {
        let search = match &self.search {
            Search::Dir(d) => d.memory_bytes(),
            Search::Tree(t) => t.memory_bytes(),
        };
        search + self.class_of.capacity() * 4 + self.bits.memory_bytes()
    }
}
