//! DPDK's `rte_acl` as a second [`Engine`], set up the way DPDK's own
//! `dpdk-test-acl` does it:
//!
//! - input: the 5-tuple packed in network byte order, the protocol byte first
//!   (rte_acl wants a 1-byte first field), then each following 4-byte group
//!   is one input index: IPv4 `proto | pad | src | dst | sport dport`
//!   (16 bytes), IPv6 `proto | pad | src[4] | dst[4] | sport dport` (40
//!   bytes, each address split into four 32-bit MASK fields);
//! - rules: field values in host order (MASK: value + prefix length, RANGE:
//!   low + high, BITMASK: value + mask), one category, priority `N - i` for
//!   line `i` (rte_acl returns the highest priority), userdata = answer + 1 so
//!   that 0 means "no match".

use std::ffi::{c_char, c_int, CStr, CString};
use std::net::IpAddr;
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ipnet::IpNet;
use lb_core::acl::{AddrMatch, FlowKey, MatchRule, PortRange};
use lb_dpdk_sys as sys;

use super::engine::Engine;

#[cfg(not(target_endian = "little"))]
compile_error!("the rte_acl field values are written through the union's u64 member");

/// `struct rte_malloc_socket_stats` (rte_malloc.h); the function is not in
/// the sys crate's allowlist.
#[repr(C)]
#[derive(Debug, Default)]
struct MallocSocketStats {
    heap_totalsz_bytes: usize,
    heap_freesz_bytes: usize,
    greatest_free_size: usize,
    free_count: u32,
    alloc_count: u32,
    heap_allocsz_bytes: usize,
}

/// `cpu_set_t` of glibc: 1024 bits.
const CPU_SET_WORDS: usize = 16;

extern "C" {
    fn rte_malloc_get_socket_stats(socket: c_int, stats: *mut MallocSocketStats) -> c_int;
    fn sched_getaffinity(pid: c_int, cpusetsize: usize, mask: *mut u64) -> c_int;
    fn sched_setaffinity(pid: c_int, cpusetsize: usize, mask: *const u64) -> c_int;
}

/// `rte_errno` with its message.
fn rte_error() -> String {
    // SAFETY: reads the calling thread's rte_errno through the shim.
    let errno = unsafe { sys::lb_rte_errno() };
    // SAFETY: rte_strerror returns a static or thread-local C string.
    let msg = unsafe { CStr::from_ptr(sys::rte_strerror(errno)) };
    format!("{} (rte_errno {errno})", msg.to_string_lossy())
}

/// The EAL, initialised once per process without NICs or hugepages; cleaned
/// up, and its runtime directory removed, on drop.
#[derive(Debug)]
pub struct Eal {
    runtime_dir: Option<PathBuf>,
    prefix: String,
}

impl Eal {
    /// `--no-huge --no-pci --no-shconf --no-telemetry -m 256 -l 0
    /// --file-prefix lbacl<pid>` (and `--force-max-simd-bitwidth=512` when the
    /// CPU has AVX-512F, which the avx512 classify methods need). The calling
    /// thread's CPU affinity is restored afterwards (EAL pins it to lcore 0),
    /// so the multi-threaded brute-force check keeps both cores.
    pub fn init() -> Result<Eal> {
        let prefix = format!("lbacl{}", std::process::id());
        let mut args: Vec<String> = [
            "lb-bench",
            "--no-huge",
            "--no-pci",
            "--no-shconf",
            "--no-telemetry",
            "-m",
            "256",
            "-l",
            "0",
            "--file-prefix",
            &prefix,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if has_avx512f() {
            args.push("--force-max-simd-bitwidth=512".to_owned());
        }
        // EAL may keep pointers into argv: leak it (a few hundred bytes, once).
        let cstrings: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_str()))
            .collect::<Result<_, _>>()?;
        let cstrings: &'static [CString] = Vec::leak(cstrings);
        let mut argv: Vec<*mut c_char> = cstrings.iter().map(|c| c.as_ptr().cast_mut()).collect();
        let argc = c_int::try_from(argv.len())?;
        argv.push(std::ptr::null_mut());
        let argv: &'static mut [*mut c_char] = Vec::leak(argv);

        let mut mask = [0u64; CPU_SET_WORDS];
        // SAFETY: `mask` is a writable cpu_set_t-sized buffer.
        let saved =
            unsafe { sched_getaffinity(0, std::mem::size_of_val(&mask), mask.as_mut_ptr()) == 0 };
        // SAFETY: argv holds argc valid NUL-terminated strings (and a NULL),
        // all alive for the rest of the process; EAL is initialised only here.
        let rc = unsafe { sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        if rc < 0 {
            bail!("rte_eal_init({}) failed: {}", args.join(" "), rte_error());
        }
        if saved {
            // SAFETY: `mask` is the cpu_set_t read above.
            unsafe { sched_setaffinity(0, std::mem::size_of_val(&mask), mask.as_ptr()) };
        }
        // SAFETY: after a successful init, EAL returns its runtime directory
        // as a C string it owns.
        let dir = unsafe { sys::rte_eal_get_runtime_dir() };
        let runtime_dir = (!dir.is_null()).then(|| {
            // SAFETY: non-null, NUL-terminated, owned by EAL.
            PathBuf::from(
                unsafe { CStr::from_ptr(dir) }
                    .to_string_lossy()
                    .into_owned(),
            )
        });
        Ok(Eal {
            runtime_dir,
            prefix,
        })
    }
}

impl Drop for Eal {
    fn drop(&mut self) {
        // SAFETY: EAL was initialised by `init`; every rte_acl context was
        // freed before (they borrow nothing from here, but `run` drops them
        // first).
        unsafe { sys::rte_eal_cleanup() };
        if let Some(dir) = &self.runtime_dir {
            // Only our own directory: its last component is our prefix.
            if dir.file_name().is_some_and(|n| *n == *self.prefix) {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A classify method of rte_acl.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    pub name: &'static str,
    alg: sys::rte_acl_classify_alg,
}

/// Every x86 method, slowest first.
const METHODS: [Method; 5] = [
    Method {
        name: "scalar",
        alg: sys::RTE_ACL_CLASSIFY_SCALAR,
    },
    Method {
        name: "sse",
        alg: sys::RTE_ACL_CLASSIFY_SSE,
    },
    Method {
        name: "avx2",
        alg: sys::RTE_ACL_CLASSIFY_AVX2,
    },
    Method {
        name: "avx512x16",
        alg: sys::RTE_ACL_CLASSIFY_AVX512X16,
    },
    Method {
        name: "avx512x32",
        alg: sys::RTE_ACL_CLASSIFY_AVX512X32,
    },
];

/// rte_malloc heap bytes of an rte_acl context.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Context and rule storage (`rte_acl_create` + `rte_acl_add_rules`).
    pub rules: usize,
    /// The run-time tries `rte_acl_build` leaves allocated.
    pub tries: usize,
}

/// Bytes allocated on every socket's rte_malloc heap.
fn heap_allocated() -> usize {
    // SAFETY: plain query of EAL state.
    let sockets = unsafe { sys::rte_socket_count() };
    let mut total = 0;
    for s in 0..sockets {
        let mut st = MallocSocketStats::default();
        let Ok(s) = c_int::try_from(s) else { break };
        // SAFETY: `st` is a writable rte_malloc_socket_stats.
        if unsafe { rte_malloc_get_socket_stats(s, &mut st) } == 0 {
            total += st.heap_allocsz_bytes;
        }
    }
    total
}

const V4_FIELDS: usize = 5;
const V6_FIELDS: usize = 11;
const V4_STRIDE: usize = 16;
const V6_STRIDE: usize = 40;

/// `RTE_ACL_RULE_DEF(name, N)`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Rule<const N: usize> {
    data: sys::rte_acl_rule_data,
    field: [sys::rte_acl_field; N],
}

fn def(ty: u32, size: u8, field: u8, input: u8, offset: u32) -> sys::rte_acl_field_def {
    sys::rte_acl_field_def {
        type_: u8::try_from(ty).expect("field types fit a byte"),
        size,
        field_index: field,
        input_index: input,
        offset,
    }
}

fn v4_defs() -> [sys::rte_acl_field_def; V4_FIELDS] {
    [
        def(sys::RTE_ACL_FIELD_TYPE_BITMASK, 1, 0, 0, 0),
        def(sys::RTE_ACL_FIELD_TYPE_MASK, 4, 1, 1, 4),
        def(sys::RTE_ACL_FIELD_TYPE_MASK, 4, 2, 2, 8),
        // Both ports in one 4-byte input.
        def(sys::RTE_ACL_FIELD_TYPE_RANGE, 2, 3, 3, 12),
        def(sys::RTE_ACL_FIELD_TYPE_RANGE, 2, 4, 3, 14),
    ]
}

fn v6_defs() -> [sys::rte_acl_field_def; V6_FIELDS] {
    let mut d = [def(sys::RTE_ACL_FIELD_TYPE_BITMASK, 1, 0, 0, 0); V6_FIELDS];
    for k in 0..4u8 {
        d[1 + usize::from(k)] = def(
            sys::RTE_ACL_FIELD_TYPE_MASK,
            4,
            1 + k,
            1 + k,
            4 + 4 * u32::from(k),
        );
        d[5 + usize::from(k)] = def(
            sys::RTE_ACL_FIELD_TYPE_MASK,
            4,
            5 + k,
            5 + k,
            20 + 4 * u32::from(k),
        );
    }
    d[9] = def(sys::RTE_ACL_FIELD_TYPE_RANGE, 2, 9, 9, 36);
    d[10] = def(sys::RTE_ACL_FIELD_TYPE_RANGE, 2, 10, 9, 38);
    d
}

fn field(value: u64, mask_range: u64) -> sys::rte_acl_field {
    sys::rte_acl_field {
        value: sys::rte_acl_field_types { u64_: value },
        mask_range: sys::rte_acl_field_types { u64_: mask_range },
    }
}

/// The one prefix of an expanded rule's address (`Any` = `/0`).
fn one_net(m: &AddrMatch, what: &str) -> Result<Option<IpNet>> {
    match m {
        AddrMatch::Any => Ok(None),
        AddrMatch::Prefixes(p) if p.len() == 1 => Ok(p.first().copied()),
        AddrMatch::Prefixes(p) => bail!(
            "rte_acl takes one {what} prefix per rule, this rule has {}",
            p.len()
        ),
    }
}

fn one_range(p: &[PortRange], what: &str) -> Result<PortRange> {
    match p {
        [r] => Ok(*r),
        _ => bail!(
            "rte_acl takes one {what} port range per rule, this rule has {}",
            p.len()
        ),
    }
}

fn proto_field(r: &MatchRule) -> sys::rte_acl_field {
    match r.proto {
        Some(p) => field(u64::from(p), 0xff),
        None => field(0, 0),
    }
}

fn port_fields(r: &MatchRule) -> Result<[sys::rte_acl_field; 2]> {
    let s = one_range(&r.sport, "source")?;
    let d = one_range(&r.dport, "destination")?;
    Ok([
        field(u64::from(s.lo), u64::from(s.hi)),
        field(u64::from(d.lo), u64::from(d.hi)),
    ])
}

fn v4_net(m: &AddrMatch, what: &str) -> Result<sys::rte_acl_field> {
    match one_net(m, what)? {
        None => Ok(field(0, 0)),
        Some(IpNet::V4(n)) => Ok(field(
            u64::from(u32::from(n.network())),
            u64::from(n.prefix_len()),
        )),
        Some(IpNet::V6(n)) => bail!("IPv6 {what} {n} in an IPv4 rule set"),
    }
}

fn v6_net(m: &AddrMatch, what: &str) -> Result<[sys::rte_acl_field; 4]> {
    let (addr, len) = match one_net(m, what)? {
        None => (0u128, 0u32),
        Some(IpNet::V6(n)) => (u128::from(n.network()), u32::from(n.prefix_len())),
        Some(IpNet::V4(n)) => bail!("IPv4 {what} {n} in an IPv6 rule set"),
    };
    let mut out = [field(0, 0); 4];
    for (k, f) in (0u32..).zip(out.iter_mut()) {
        let bits = len.saturating_sub(32 * k).min(32);
        let mask = if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        let chunk = (addr >> (96 - 32 * k)) as u32 & mask;
        *f = field(u64::from(chunk), u64::from(bits));
    }
    Ok(out)
}

fn v4_rule(r: &MatchRule) -> Result<[sys::rte_acl_field; V4_FIELDS]> {
    let [sp, dp] = port_fields(r)?;
    Ok([
        proto_field(r),
        v4_net(&r.src, "source")?,
        v4_net(&r.dst, "destination")?,
        sp,
        dp,
    ])
}

fn v6_rule(r: &MatchRule) -> Result<[sys::rte_acl_field; V6_FIELDS]> {
    let [sp, dp] = port_fields(r)?;
    let s = v6_net(&r.src, "source")?;
    let d = v6_net(&r.dst, "destination")?;
    let mut f = [proto_field(r); V6_FIELDS];
    f[1..5].copy_from_slice(&s);
    f[5..9].copy_from_slice(&d);
    f[9] = sp;
    f[10] = dp;
    Ok(f)
}

/// Writes `key` in the packed input layout into `out` (`stride` bytes);
/// false when its family is not the set's.
fn encode(key: &FlowKey, ipv6: bool, out: &mut [u8]) -> bool {
    out.fill(0);
    out[0] = key.proto;
    match (ipv6, key.src, key.dst) {
        (false, IpAddr::V4(s), IpAddr::V4(d)) => {
            out[4..8].copy_from_slice(&s.octets());
            out[8..12].copy_from_slice(&d.octets());
            out[12..14].copy_from_slice(&key.sport.to_be_bytes());
            out[14..16].copy_from_slice(&key.dport.to_be_bytes());
            true
        }
        (true, IpAddr::V6(s), IpAddr::V6(d)) => {
            out[4..20].copy_from_slice(&s.octets());
            out[20..36].copy_from_slice(&d.octets());
            out[36..38].copy_from_slice(&key.sport.to_be_bytes());
            out[38..40].copy_from_slice(&key.dport.to_be_bytes());
            true
        }
        _ => false,
    }
}

/// A trace in rte_acl's input form: one pointer per packet into `buf`.
#[derive(Debug)]
pub struct Prepared {
    _buf: Vec<u8>,
    pub data: Vec<*const u8>,
}

/// Unique context names (rte_acl keeps a global list by name).
static NEXT_CTX: AtomicU32 = AtomicU32::new(0);

/// A built rte_acl context.
#[derive(Debug)]
pub struct RteAcl {
    ctx: NonNull<sys::rte_acl_ctx>,
    ipv6: bool,
    /// `rte_acl_create` + `rte_acl_add_rules` + `rte_acl_build` (best of
    /// several builds when they are quick).
    pub build_time: Duration,
    pub memory: Memory,
    /// The methods the context accepts (`rte_acl_set_ctx_classify`).
    pub methods: Vec<Method>,
    /// The methods it refuses on this CPU / EAL configuration.
    pub unsupported: Vec<&'static str>,
}

impl Drop for RteAcl {
    fn drop(&mut self) {
        // SAFETY: `ctx` came from rte_acl_create and is freed only here.
        unsafe { sys::rte_acl_free(self.ctx.as_ptr()) };
    }
}

impl RteAcl {
    /// Builds a context from expanded rules (one prefix and one port range
    /// per field), line order = precedence; a match on line `i` answers
    /// `answer[i]`. Needs the [`Eal`].
    pub fn build(rules: &[MatchRule], answer: &[u32], ipv6: bool) -> Result<RteAcl> {
        if rules.is_empty() {
            bail!("rte_acl needs at least one rule");
        }
        let n = rules.len();
        let max_prio = usize::try_from(sys::RTE_ACL_MAX_PRIORITY)?;
        if n >= max_prio {
            bail!("{n} rules: more than rte_acl's priorities");
        }
        let data = |i: usize| -> Result<sys::rte_acl_rule_data> {
            let a = answer.get(i).copied().unwrap_or(u32::try_from(i)?);
            Ok(sys::rte_acl_rule_data {
                category_mask: 1,
                priority: i32::try_from(n - i)?,
                userdata: a + 1,
            })
        };
        let mut best: Option<RteAcl> = None;
        let started = Instant::now();
        for attempt in 0..5 {
            if attempt > 0 && started.elapsed() > Duration::from_millis(500) {
                break;
            }
            let t = Instant::now();
            let (ctx, memory) = if ipv6 {
                let r: Vec<Rule<V6_FIELDS>> = rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        Ok(Rule {
                            data: data(i)?,
                            field: v6_rule(r).with_context(|| format!("rule {}", i + 1))?,
                        })
                    })
                    .collect::<Result<_>>()?;
                create(&v6_defs(), &r)?
            } else {
                let r: Vec<Rule<V4_FIELDS>> = rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        Ok(Rule {
                            data: data(i)?,
                            field: v4_rule(r).with_context(|| format!("rule {}", i + 1))?,
                        })
                    })
                    .collect::<Result<_>>()?;
                create(&v4_defs(), &r)?
            };
            let acl = RteAcl {
                ctx,
                ipv6,
                build_time: t.elapsed(),
                memory,
                methods: Vec::new(),
                unsupported: Vec::new(),
            };
            if best.as_ref().is_none_or(|b| acl.build_time < b.build_time) {
                best = Some(acl);
            }
        }
        let mut acl = best.ok_or_else(|| anyhow!("no build"))?;
        for m in METHODS {
            // SAFETY: ctx is a built context; this only selects a function.
            if unsafe { sys::rte_acl_set_ctx_classify(acl.ctx.as_ptr(), m.alg) } == 0 {
                acl.methods.push(m);
            } else {
                acl.unsupported.push(m.name);
            }
        }
        // Back to rte_acl's own choice for `classify_burst`.
        // SAFETY: as above.
        unsafe { sys::rte_acl_set_ctx_classify(acl.ctx.as_ptr(), sys::RTE_ACL_CLASSIFY_DEFAULT) };
        if acl.methods.is_empty() {
            bail!("rte_acl accepts none of its classify methods");
        }
        Ok(acl)
    }

    /// The trace in input form (done once, outside the timed loops).
    pub fn prepare(&self, keys: &[FlowKey]) -> Result<Prepared> {
        let stride = if self.ipv6 { V6_STRIDE } else { V4_STRIDE };
        // Spare bytes at the end: the vector methods may load whole words.
        let mut buf = vec![0u8; keys.len() * stride + 64];
        for (i, (k, b)) in keys.iter().zip(buf.chunks_exact_mut(stride)).enumerate() {
            if !encode(k, self.ipv6, b) {
                bail!(
                    "trace packet {} ({k:?}) is not of the rule set's family",
                    i + 1
                );
            }
        }
        let base = buf.as_ptr();
        // The pointers stay valid: `buf` moves into `Prepared` but its heap
        // block does not.
        let data = (0..keys.len())
            .map(|i| base.wrapping_add(i * stride))
            .collect();
        Ok(Prepared { _buf: buf, data })
    }

    /// Classifies the inputs of `data` into `results` (userdata: answer + 1,
    /// 0 = no match) with `method`: the timed path.
    #[inline]
    pub fn classify_raw(&self, data: &[*const u8], results: &mut [u32], method: Method) {
        let n = data.len().min(results.len());
        // SAFETY: the context is built; `data` points into a live `Prepared`
        // buffer of this context's layout; `results` has room for `n`
        // results of one category; `method` was accepted by the context.
        let rc = unsafe {
            sys::rte_acl_classify_alg(
                self.ctx.as_ptr(),
                data.as_ptr().cast_mut(),
                results.as_mut_ptr(),
                n as u32,
                1,
                method.alg,
            )
        };
        debug_assert_eq!(rc, 0);
    }
}

/// `rte_acl_create`, `rte_acl_add_rules` and `rte_acl_build` of `rules`.
fn create<const N: usize>(
    defs: &[sys::rte_acl_field_def; N],
    rules: &[Rule<N>],
) -> Result<(NonNull<sys::rte_acl_ctx>, Memory)> {
    let name = CString::new(format!("lbacl{}", NEXT_CTX.fetch_add(1, Ordering::Relaxed)))?;
    let param = sys::rte_acl_param {
        name: name.as_ptr(),
        socket_id: sys::SOCKET_ID_ANY,
        rule_size: u32::try_from(std::mem::size_of::<Rule<N>>())?,
        max_rule_num: u32::try_from(rules.len())?,
    };
    let before = heap_allocated();
    // SAFETY: `param` is complete and its name outlives the call (rte_acl
    // copies it).
    let ctx = unsafe { sys::rte_acl_create(&param) };
    let ctx = NonNull::new(ctx).ok_or_else(|| anyhow!("rte_acl_create: {}", rte_error()))?;
    // Free the context on any error below.
    struct Guard(Option<NonNull<sys::rte_acl_ctx>>);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(c) = self.0 {
                // SAFETY: a context of rte_acl_create not handed out.
                unsafe { sys::rte_acl_free(c.as_ptr()) };
            }
        }
    }
    let mut guard = Guard(Some(ctx));
    // SAFETY: `rules` holds `len` rules of `rule_size` bytes laid out as
    // RTE_ACL_RULE_DEF(_, N).
    let rc = unsafe {
        sys::rte_acl_add_rules(
            ctx.as_ptr(),
            rules.as_ptr().cast::<sys::rte_acl_rule>(),
            u32::try_from(rules.len())?,
        )
    };
    if rc != 0 {
        bail!("rte_acl_add_rules: error {rc}");
    }
    let with_rules = heap_allocated();
    let mut cfg = sys::rte_acl_config {
        num_categories: 1,
        num_fields: u32::try_from(N)?,
        max_size: 0,
        ..Default::default()
    };
    cfg.defs[..N].copy_from_slice(defs);
    // SAFETY: ctx holds the rules; cfg describes N fields matching them.
    let rc = unsafe { sys::rte_acl_build(ctx.as_ptr(), &cfg) };
    if rc != 0 {
        bail!("rte_acl_build: error {rc} ({})", errno_name(-rc));
    }
    let built = heap_allocated();
    guard.0 = None;
    Ok((
        ctx,
        Memory {
            rules: with_rules.saturating_sub(before),
            tries: built.saturating_sub(with_rules),
        },
    ))
}

fn errno_name(e: c_int) -> String {
    std::io::Error::from_raw_os_error(e).to_string()
}

impl Engine for RteAcl {
    fn name(&self) -> String {
        "rte_acl".into()
    }

    /// Converts and classifies with rte_acl's default method (the checks;
    /// the timed path is [`RteAcl::classify_raw`] on a [`Prepared`] trace).
    fn classify_burst(&self, keys: &[FlowKey], out: &mut [Option<u32>]) {
        let stride = if self.ipv6 { V6_STRIDE } else { V4_STRIDE };
        for (kc, oc) in keys.chunks(64).zip(out.chunks_mut(64)) {
            let mut buf = [0u8; 64 * V6_STRIDE + 64];
            let mut data = [std::ptr::null::<u8>(); 64];
            let mut n = 0;
            let mut slot = [usize::MAX; 64];
            for (i, k) in kc.iter().enumerate() {
                let b = &mut buf[n * stride..(n + 1) * stride];
                if encode(k, self.ipv6, b) {
                    slot[i] = n;
                    n += 1;
                }
            }
            for (j, d) in data.iter_mut().enumerate().take(n) {
                *d = buf.as_ptr().wrapping_add(j * stride);
            }
            let mut res = [0u32; 64];
            // SAFETY: as in classify_raw, with the context's default method.
            unsafe {
                sys::rte_acl_classify(
                    self.ctx.as_ptr(),
                    data.as_mut_ptr(),
                    res.as_mut_ptr(),
                    n as u32,
                    1,
                )
            };
            for (i, o) in oc.iter_mut().enumerate().take(kc.len()) {
                *o = res.get(slot[i]).and_then(|&r| r.checked_sub(1));
            }
        }
    }

    fn memory_bytes(&self) -> Option<usize> {
        Some(self.memory.rules + self.memory.tries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::classbench::parse_rules;

    #[test]
    fn v6_fields_split_the_prefix() {
        let r = parse_rules(
            "@2001:db8:1:2::/40 ::/0 0 : 65535 80 : 81 0x06/0xff\n",
            "t",
            true,
        )
        .unwrap()
        .rules;
        let f = v6_rule(&r[0]).unwrap();
        // SAFETY: reading back the u64 member written by `field`.
        let v = |i: usize| unsafe { (f[i].value.u64_, f[i].mask_range.u64_) };
        assert_eq!(v(0), (6, 0xff));
        assert_eq!(v(1), (0x2001_0db8, 32));
        assert_eq!(v(2), (0x0000_0000, 8));
        assert_eq!(v(3), (0, 0));
        assert_eq!(v(5), (0, 0));
        assert_eq!(v(10), (80, 81));
    }

    /// The one test of this binary that starts EAL (once per process).
    #[test]
    fn rte_acl_agrees_with_linear() {
        use crate::acl::rng::Rng;
        use lb_core::acl::linear_classify;
        use std::net::{Ipv4Addr, Ipv6Addr};

        let _eal = Eal::init().unwrap();
        let v4 = parse_rules(
            "@10.0.0.0/8 0.0.0.0/0 0 : 65535 80 : 80 0x06/0xff\n\
             @10.1.0.0/16 192.168.0.0/24 1000 : 2000 0 : 65535 0x11/0xff\n\
             @0.0.0.0/0 192.168.0.7/32 0 : 65535 0 : 1023 0x00/0x00\n\
             @10.1.2.0/24 0.0.0.0/0 0 : 65535 0 : 65535 0x00/0x00\n",
            "v4",
            false,
        )
        .unwrap()
        .rules;
        let v6 = parse_rules(
            "@2001:db8::/32 ::/0 0 : 65535 443 : 443 0x06/0xff\n\
             @2001:db8:0:1::/64 fd00::/8 0 : 65535 0 : 65535 0x11/0xff\n\
             @::/0 fd00::7/128 0 : 65535 0 : 1023 0x00/0x00\n\
             @2001:db8:0:1:8000::/65 ::/0 0 : 65535 0 : 65535 0x00/0x00\n",
            "v6",
            true,
        )
        .unwrap()
        .rules;
        let mut rng = Rng::new(7);
        for (rules, ipv6) in [(&v4, false), (&v6, true)] {
            let answers: Vec<u32> = (0..rules.len() as u32).collect();
            let acl = RteAcl::build(rules, &answers, ipv6).unwrap();
            let keys: Vec<FlowKey> = (0..20_000)
                .map(|_| {
                    let (src, dst) = if ipv6 {
                        let s = 0x2001_0db8_0000_0001_0000_0000_0000_0000u128
                            | (rng.next_u128() >> (32 + rng.below(96) as u32));
                        let d = 0xfd00u128 << 112 | rng.below(16) as u128;
                        (IpAddr::V6(Ipv6Addr::from(s)), IpAddr::V6(Ipv6Addr::from(d)))
                    } else {
                        let s = 0x0a01_0000u32 | (rng.next_u64() as u32 >> (8 + rng.below(24)));
                        let d = 0xc0a8_0000u32 | rng.below(16) as u32;
                        (IpAddr::V4(Ipv4Addr::from(s)), IpAddr::V4(Ipv4Addr::from(d)))
                    };
                    FlowKey {
                        src,
                        dst,
                        proto: [6u8, 17, 1][rng.below(3) as usize],
                        sport: rng.range_u16(900, 2100),
                        dport: [80u16, 443, 53, 8080][rng.below(4) as usize],
                    }
                })
                .collect();
            let want: Vec<Option<u32>> = keys.iter().map(|k| linear_classify(rules, k)).collect();
            assert!(want.iter().flatten().count() > 1000);
            let mut got = vec![None; keys.len()];
            acl.classify_burst(&keys, &mut got);
            assert_eq!(got, want, "ipv6={ipv6}");
            let input = acl.prepare(&keys).unwrap();
            for m in &acl.methods {
                let mut res = vec![0u32; keys.len()];
                acl.classify_raw(&input.data, &mut res, *m);
                let got: Vec<Option<u32>> = res.iter().map(|r| r.checked_sub(1)).collect();
                assert_eq!(got, want, "ipv6={ipv6} method {}", m.name);
            }
        }
    }

    #[test]
    fn encodes_network_order() {
        let k = FlowKey {
            src: "1.2.3.4".parse().unwrap(),
            dst: "5.6.7.8".parse().unwrap(),
            proto: 17,
            sport: 0x0102,
            dport: 0x0304,
        };
        let mut b = [0xffu8; V4_STRIDE];
        assert!(encode(&k, false, &mut b));
        assert_eq!(b, [17, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4]);
        assert!(!encode(&k, true, &mut [0u8; V6_STRIDE]));
    }
}
