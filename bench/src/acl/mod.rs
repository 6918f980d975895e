//! `bench acl`: the compiled classifier against the linear scan and, with
//! the `dpdk` feature, DPDK's `rte_acl` (behind the same [`Engine`] trait).
//!
//! Sets with a `.meta` (security groups) run twice: as written (one rule per
//! line for both engines) and grouped (our classifier gets one rule with a
//! prefix list per remote group / prefix list; rte_acl still one rule per
//! line, answering the line's group).

mod classbench;
mod engine;
mod meta;
mod rng;
#[cfg(feature = "dpdk")]
mod rte;

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use lb_core::acl::lint::{lint, FindingKind, LintRule};
use lb_core::acl::{
    linear_classify, AddrMatch, Classifier, FlowKey, KeyColumnsBuf, MatchRule, NO_MATCH,
};

use crate::AclArgs;
use engine::{Compiled, Engine, Linear};
use rng::Rng;

/// Burst sizes timed for the compiled engines.
const BURSTS: [usize; 4] = [1, 8, 32, 256];
/// Share of generated packets that are uniformly random.
const RANDOM_SHARE: f64 = 0.03;
/// Target duration of one timing round of the linear scan.
const LINEAR_ROUND: Duration = Duration::from_millis(300);

/// What one run of a rule file found.
#[derive(Debug)]
struct FileResult {
    name: String,
    /// linear / compiled per burst.
    linear: Vec<f64>,
    /// Rules given to ours (groups when grouped) and lines.
    rules: usize,
    lines: usize,
    /// Ours: build time (ms) of the staged classifier (ready to classify)
    /// and of the complete one, memory (bytes) and ns/packet per burst of
    /// the complete one.
    ready_ms: f64,
    build_ms: f64,
    memory: usize,
    ns: Vec<f64>,
    /// The staged classifier's ns/packet per burst, when it has a
    /// refinement to wait for (otherwise it is the complete one).
    staged_ns: Option<Vec<f64>>,
    /// rte_acl, when measured.
    rte: Option<RteFigures>,
}

/// rte_acl's figures of one run.
#[derive(Debug)]
struct RteFigures {
    build_ms: f64,
    memory: usize,
    /// Best method's ns/packet per burst, with the method.
    ns: Vec<(f64, &'static str)>,
    /// rte_acl / ours per burst.
    ratio: Vec<f64>,
    /// rte_acl / ours (staged) per burst.
    staged_ratio: Option<Vec<f64>>,
}

pub fn run(args: &AclArgs) -> Result<()> {
    let files = match (&args.all, &args.rules) {
        (Some(dir), _) => rule_files(dir)?,
        (None, Some(f)) => vec![f.clone()],
        (None, None) => bail!("give --rules FILE or --all DIR"),
    };
    #[cfg(feature = "dpdk")]
    let _eal = rte::Eal::init()?;
    println!("load average at the start: {}", load_average());
    let mut summary = Vec::new();
    for f in &files {
        let set = classbench::read_rules(f, args.ipv6)?;
        let meta = meta::read_meta(f, set.rules.len())?;
        summary.push(run_file(f, &set, meta.as_ref(), false, args)?);
        println!();
        if let Some(m) = &meta {
            summary.push(run_file(f, &set, Some(m), true, args)?);
            println!();
        }
    }
    if summary.len() > 1 {
        println!("summary (ratio linear/compiled):");
        for r in &summary {
            println!("  {:<24} {}", r.name, ratio_line(&r.linear, 1));
        }
        println!("summary (ns/packet of ours before refinement, then complete; staged sets only):");
        for r in &summary {
            if let Some(st) = &r.staged_ns {
                let per: Vec<String> = BURSTS
                    .iter()
                    .zip(st.iter().zip(&r.ns))
                    .map(|(b, (s, c))| format!("b{b}={s:.1}/{c:.1}"))
                    .collect();
                println!("  {:<24} {}", r.name, per.join(" "));
            }
        }
        if summary.iter().any(|r| r.rte.is_some()) {
            println!("summary (ratio rte_acl/ours, above 1: ours is faster):");
            for r in &summary {
                if let Some(x) = &r.rte {
                    println!("  {:<24} {}", r.name, ratio_line(&x.ratio, 2));
                }
            }
            println!("summary (build ms: ours ready, ours complete, rte_acl; rte_acl/ours ready):");
            for r in &summary {
                if let Some(x) = &r.rte {
                    println!(
                        "  {:<24} {:>8.3} {:>8.1} {:>8.1}  {:>6.0}x",
                        r.name,
                        r.ready_ms,
                        r.build_ms,
                        x.build_ms,
                        x.build_ms / r.ready_ms.max(1e-6)
                    );
                }
            }
            println!("summary (ratio rte_acl/ours before refinement, staged sets only):");
            for r in &summary {
                if let Some(s) = r.rte.as_ref().and_then(|x| x.staged_ratio.as_ref()) {
                    println!("  {:<24} {}", r.name, ratio_line(s, 2));
                }
            }
        }
    }
    print_table(&summary);
    println!("load average at the end: {}", load_average());
    Ok(())
}

/// `/proc/loadavg` (the machine may be shared).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The summary as a Markdown table (for bench/README.md).
fn print_table(summary: &[FileResult]) {
    println!();
    let bursts: Vec<String> = BURSTS.iter().map(|b| format!("b{b}")).collect();
    let vs = if summary.iter().any(|r| r.rte.is_some()) {
        " / rte_acl"
    } else {
        ""
    };
    println!(
        "| set | rules | build ms ours ready · complete{vs} | memory MiB ours{vs} | ns/pkt ours{vs} {} | rte_acl/ours |",
        bursts.join(" · ")
    );
    println!("|---|---|---|---|---|---|");
    for r in summary {
        let rules = if r.rules == r.lines {
            format!("{}", r.rules)
        } else {
            format!("{} ({} lines)", r.rules, r.lines)
        };
        let (build, memory, ns, ratio) = match &r.rte {
            Some(x) => (
                format!("{:.2} · {:.1} / {:.1}", r.ready_ms, r.build_ms, x.build_ms),
                format!("{:.2} / {:.2}", mib(r.memory), mib(x.memory)),
                r.ns.iter()
                    .zip(&x.ns)
                    .map(|(o, (t, m))| format!("{o:.1} / {t:.1} {m}"))
                    .collect::<Vec<_>>()
                    .join(" · "),
                ratio_line(&x.ratio, 2),
            ),
            None => (
                format!("{:.2} · {:.1}", r.ready_ms, r.build_ms),
                format!("{:.2}", mib(r.memory)),
                r.ns.iter()
                    .map(|o| format!("{o:.1}"))
                    .collect::<Vec<_>>()
                    .join(" · "),
                "-".to_owned(),
            ),
        };
        println!(
            "| {} | {rules} | {build} | {memory} | {ns} | {ratio} |",
            r.name
        );
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The rule files of `dir`: `cb_*` and `*.rules`, sorted.
fn rule_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = file_name(&path);
        if path.is_file() && (name.starts_with("cb_") || name.ends_with(".rules")) {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("no rule files (cb_*, *.rules) in {}", dir.display());
    }
    Ok(files)
}

fn ratio_line(r: &[f64], decimals: usize) -> String {
    let parts: Vec<String> = BURSTS
        .iter()
        .zip(r)
        .map(|(b, x)| format!("b{b}={x:.decimals$}"))
        .collect();
    parts.join(" ")
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Runs one rule file, as written or (`grouped`, needs `meta`) grouped.
fn run_file(
    path: &Path,
    set: &classbench::RuleSet,
    meta: Option<&meta::Meta>,
    grouped: bool,
    args: &AclArgs,
) -> Result<FileResult> {
    let lines = &set.rules;
    let groups = match (grouped, meta) {
        (true, Some(m)) => Some(meta::group(lines, m)),
        _ => None,
    };
    let (rules, answer_of_line): (&[MatchRule], Vec<u32>) = match &groups {
        Some(g) => (&g.rules, g.group_of.clone()),
        None => (lines, (0..u32::try_from(lines.len())?).collect()),
    };
    let name = if grouped {
        format!("{} grouped", file_name(path))
    } else {
        file_name(path)
    };
    match &groups {
        Some(g) => println!(
            "== {name}: {} lines as {} rules for ours (remote groups and prefix lists as one rule each), {} lines for rte_acl ({})",
            lines.len(),
            g.rules.len(),
            lines.len(),
            if set.ipv6 { "IPv6" } else { "IPv4" }
        ),
        None => println!(
            "== {name}: {} rules ({})",
            lines.len(),
            if set.ipv6 { "IPv6" } else { "IPv4" }
        ),
    }
    // The same packets both ways: drawn from the lines.
    let (trace, origin) = match &args.trace {
        Some(t) => (classbench::read_trace(t)?, format!("{}", t.display())),
        None => (
            generate_trace(lines, set.ipv6, args.packets, args.seed),
            format!("generated, {:.0}% random", RANDOM_SHARE * 100.0),
        ),
    };
    if trace.is_empty() {
        bail!("empty trace");
    }

    // Build time: best of a few builds, staged (ready to classify, what a
    // reload waits for) and complete (with the final-table search).
    let mut ready = Duration::MAX;
    let mut build = Duration::MAX;
    let mut staged = Classifier::build_staged(&[]);
    let mut classifier = Classifier::build(&[]);
    for _ in 0..5 {
        let t = Instant::now();
        staged = black_box(Classifier::build_staged(black_box(rules)));
        ready = ready.min(t.elapsed());
        let t = Instant::now();
        classifier = black_box(Classifier::build(black_box(rules)));
        build = build.min(t.elapsed());
    }
    let staged = staged.needs_refinement().then_some(staged);
    println!("compiled shape: {}", classifier.shape());
    if let Some(s) = &staged {
        println!("staged shape: {}", s.shape());
    }
    let compiled = Compiled(classifier);
    let linear = Linear { rules };

    // The brute-force answers: first matching line (both cores), as the
    // answer of that line (its group when grouped).
    let t = Instant::now();
    let reference: Vec<Option<u32>> = reference_answers(lines, &trace)
        .into_iter()
        .map(|r| r.and_then(|l| answer_of_line.get(l as usize).copied()))
        .collect();
    let verify_time = t.elapsed();
    let mut got = vec![None; trace.len()];
    compiled.classify_burst(&trace, &mut got);
    let mut mismatches = 0usize;
    for ((k, want), have) in trace.iter().zip(&reference).zip(&got) {
        if want != have {
            if mismatches < 5 {
                eprintln!("mismatch: {k:?}: brute force {want:?}, compiled {have:?}");
            }
            mismatches += 1;
        }
    }
    if mismatches > 0 {
        bail!(
            "{name}: the compiled classifier disagrees with the brute-force scan on {mismatches} of {} packets",
            trace.len()
        );
    }
    // The timed path of ours: the trace as columns (converted once, as
    // rte_acl's input), answers as u32.
    let columns = Columns::new(&trace, set.ipv6)?;
    let mut col_out = vec![NO_MATCH - 1; trace.len()];
    // Both classifiers' column bursts against the brute force.
    let mut check = |c: &Classifier, what: &str| -> Result<()> {
        for r in chunk_ranges(trace.len(), 256) {
            columns.classify(c, r.clone(), &mut col_out[r]);
        }
        let bad = reference
            .iter()
            .zip(&col_out)
            .filter(|(want, &have)| want.unwrap_or(NO_MATCH) != have)
            .count();
        if bad > 0 {
            bail!(
                "{name}: the {what} classifier's column bursts disagree with the brute-force scan on {bad} of {} packets",
                trace.len()
            );
        }
        Ok(())
    };
    check(&compiled.0, "compiled")?;
    if let Some(s) = &staged {
        check(s, "staged")?;
    }
    let unmatched = reference.iter().filter(|r| r.is_none()).count();
    let matched: Vec<f64> = reference.iter().flatten().map(|&i| f64::from(i)).collect();
    let mean_index = matched.iter().sum::<f64>() / matched.len().max(1) as f64;
    println!(
        "trace: {} packets ({origin}), {:.1}% match no rule, mean matching {} index {mean_index:.0}; compiled (FlowKey and column bursts) == brute force on every packet",
        trace.len(),
        100.0 * unmatched as f64 / trace.len() as f64,
        if grouped { "group" } else { "rule" }
    );
    println!(
        "compiled: build {:.3} ms ready (staged), {:.3} ms complete; memory {:.2} MiB{}",
        ready.as_secs_f64() * 1e3,
        build.as_secs_f64() * 1e3,
        mib(compiled.memory_bytes().unwrap_or(0)),
        if staged.is_some() {
            "; the staged classifier classifies at once and gets the final tables from a refinement"
        } else {
            "; nothing to refine (the staged build is the complete one)"
        }
    );

    #[cfg(feature = "dpdk")]
    let rte = rte_setup(lines, &answer_of_line, set.ipv6, &trace, &reference, &got)?;

    match (meta, &groups) {
        (_, Some(g)) => lint_report(rules, &g.allow, "actions from .meta", &reference)?,
        (Some(m), None) => lint_report(rules, &m.allow, "actions from .meta", &reference)?,
        (None, None) => lint_report(
            rules,
            &vec![true; rules.len()],
            "every rule taken as allow",
            &reference,
        )?,
    }

    // Linear scan on a prefix of the trace short enough for ~LINEAR_ROUND
    // per round (estimated from the verification, which ran on 2 threads
    // over the lines).
    let per_packet = verify_time.as_secs_f64() * 2.0 / trace.len() as f64 * rules.len() as f64
        / lines.len().max(1) as f64;
    let linear_n =
        ((LINEAR_ROUND.as_secs_f64() / per_packet.max(1e-9)) as usize).clamp(1000, trace.len());
    let linear_trace = trace.get(..linear_n).unwrap_or(&trace);

    // Rounds alternate between the engines, every burst size each round.
    let rounds = args.rounds.max(1);
    let mut linear_ns = Vec::new();
    let mut compiled_ns: Vec<Vec<f64>> = vec![Vec::new(); BURSTS.len()];
    let mut columns_ns: Vec<Vec<f64>> = vec![Vec::new(); BURSTS.len()];
    let mut staged_ns: Vec<Vec<f64>> = vec![Vec::new(); BURSTS.len()];
    #[cfg(feature = "dpdk")]
    let mut rte_ns: Vec<Vec<Vec<f64>>> =
        vec![vec![Vec::new(); BURSTS.len()]; rte.acl.methods.len()];
    #[cfg(feature = "dpdk")]
    let mut results = vec![0u32; trace.len()];
    let mut out = vec![None; trace.len()];
    for _ in 0..rounds {
        linear_ns.push(time_engine(&linear, linear_trace, 1, &mut out));
        for (b, times) in BURSTS.iter().zip(compiled_ns.iter_mut()) {
            times.push(time_engine(&compiled, &trace, *b, &mut out));
        }
        for (b, times) in BURSTS.iter().zip(columns_ns.iter_mut()) {
            times.push(time_chunks(trace.len(), *b, |r| {
                columns.classify(&compiled.0, r.clone(), &mut col_out[r]);
            }));
        }
        if let Some(s) = &staged {
            for (b, times) in BURSTS.iter().zip(staged_ns.iter_mut()) {
                times.push(time_chunks(trace.len(), *b, |r| {
                    columns.classify(s, r.clone(), &mut col_out[r]);
                }));
            }
        }
        black_box(&mut col_out);
        #[cfg(feature = "dpdk")]
        for (m, per_burst) in rte.acl.methods.iter().zip(rte_ns.iter_mut()) {
            for (b, times) in BURSTS.iter().zip(per_burst.iter_mut()) {
                times.push(time_chunks(trace.len(), *b, |r| {
                    rte.acl
                        .classify_raw(&rte.input.data[r.clone()], &mut results[r], *m);
                }));
            }
            black_box(&mut results);
        }
    }
    let lin = median(&mut linear_ns);
    let subset = if linear_n < trace.len() {
        format!(" (on the first {linear_n} packets)")
    } else {
        String::new()
    };
    println!("{:<20} {:>8.1} ns/packet{subset}", linear.name(), lin);
    let vs_linear = |c: f64| format!("linear/compiled {:.1}", lin / c);
    let flowkey = format!("{}/flowkey", compiled.name());
    burst_medians(&flowkey, &mut compiled_ns, vs_linear);
    // Ours: the column bursts.
    let columns_label = format!("{}/columns", compiled.name());
    let ours = burst_medians(&columns_label, &mut columns_ns, vs_linear);
    let ratios: Vec<f64> = ours.iter().map(|c| lin / c).collect();
    println!("ratio linear/compiled: {}", ratio_line(&ratios, 1));
    let staged_ns: Option<Vec<f64>> = staged.as_ref().map(|_| {
        let label = format!("{}/staged", compiled.name());
        burst_medians(&label, &mut staged_ns, |_| "(before refinement)".to_owned())
    });

    #[cfg(feature = "dpdk")]
    let rte_figures = Some(rte_report(&rte, &mut rte_ns, &ours, staged_ns.as_deref()));
    #[cfg(not(feature = "dpdk"))]
    let rte_figures = None;
    Ok(FileResult {
        name,
        linear: ratios,
        rules: rules.len(),
        lines: lines.len(),
        ready_ms: ready.as_secs_f64() * 1e3,
        build_ms: build.as_secs_f64() * 1e3,
        memory: compiled.memory_bytes().unwrap_or(0),
        ns: ours,
        staged_ns,
        rte: rte_figures,
    })
}

/// The rte_acl side of one run: the context and the trace in its input form.
#[cfg(feature = "dpdk")]
struct RteRun {
    acl: rte::RteAcl,
    input: rte::Prepared,
}

/// Builds rte_acl from the lines, prepares the trace, and checks every method
/// on every packet against the brute force (`reference`) and ours (`ours`).
#[cfg(feature = "dpdk")]
fn rte_setup(
    lines: &[MatchRule],
    answer_of_line: &[u32],
    ipv6: bool,
    trace: &[FlowKey],
    reference: &[Option<u32>],
    ours: &[Option<u32>],
) -> Result<RteRun> {
    let acl = rte::RteAcl::build(lines, answer_of_line, ipv6)?;
    let input = acl.prepare(trace)?;
    let mut results = vec![0u32; trace.len()];
    for m in &acl.methods {
        results.fill(u32::MAX);
        for r in chunk_ranges(trace.len(), 256) {
            acl.classify_raw(&input.data[r.clone()], &mut results[r], *m);
        }
        let mut bad = 0usize;
        for (i, &res) in results.iter().enumerate() {
            let have = res.checked_sub(1);
            if have != reference[i] || have != ours[i] {
                if bad < 5 {
                    eprintln!(
                        "mismatch: packet {} {:?}: ours {:?}, rte_acl/{} {:?}, brute force {:?}",
                        i + 1,
                        trace[i],
                        ours[i],
                        m.name,
                        have,
                        reference[i]
                    );
                }
                bad += 1;
            }
        }
        if bad > 0 {
            bail!(
                "rte_acl/{} disagrees on {bad} of {} packets",
                m.name,
                trace.len()
            );
        }
    }
    let mut engine_out = vec![None; trace.len()];
    acl.classify_burst(trace, &mut engine_out);
    if engine_out != reference {
        bail!("rte_acl (Engine, default method) disagrees with the brute force");
    }
    let names: Vec<&str> = acl.methods.iter().map(|m| m.name).collect();
    println!(
        "rte_acl: build {:.3} ms, memory {:.2} MiB (rte_malloc heap: tries {:.2} MiB + context and rules {:.2} MiB); methods {}{}; every packet: ours == rte_acl (each method) == brute force",
        acl.build_time.as_secs_f64() * 1e3,
        mib(acl.memory.tries + acl.memory.rules),
        mib(acl.memory.tries),
        mib(acl.memory.rules),
        names.join(" "),
        if acl.unsupported.is_empty() {
            String::new()
        } else {
            format!(" (refused here: {})", acl.unsupported.join(" "))
        }
    );
    Ok(RteRun { acl, input })
}

/// Prints rte_acl's figures per method and burst; returns rte_acl (best
/// method per burst) / ours per burst.
#[cfg(feature = "dpdk")]
fn rte_report(
    rte: &RteRun,
    rte_ns: &mut [Vec<Vec<f64>>],
    ours: &[f64],
    staged: Option<&[f64]>,
) -> RteFigures {
    let mut best: Vec<(f64, &'static str)> = vec![(f64::INFINITY, ""); BURSTS.len()];
    for (m, per_burst) in rte.acl.methods.iter().zip(rte_ns.iter_mut()) {
        for ((b, times), best) in BURSTS.iter().zip(per_burst.iter_mut()).zip(best.iter_mut()) {
            let t = median(times);
            let min = times.iter().copied().fold(f64::INFINITY, f64::min);
            if t < best.0 {
                *best = (t, m.name);
            }
            println!(
                "{:<20} {:>8.1} ns/packet (best {min:>6.1})  burst {b:>3}",
                format!("rte_acl/{}", m.name),
                t
            );
        }
    }
    let mut ratios = Vec::new();
    for ((b, (r, m)), o) in BURSTS.iter().zip(&best).zip(ours) {
        println!(
            "burst {b:>3}: ours {o:>6.1} ns/packet, rte_acl {r:>6.1} ({m}), rte_acl/ours {:.2}",
            r / o
        );
        ratios.push(r / o);
    }
    // Before its refinement, the staged classifier against the same.
    let staged_ratio: Option<Vec<f64>> =
        staged.map(|s| best.iter().zip(s).map(|((r, _), o)| r / o).collect());
    if let Some(r) = &staged_ratio {
        println!(
            "ratio rte_acl/ours before refinement (staged): {}",
            ratio_line(r, 2)
        );
    }
    println!("ratio rte_acl/ours: {}", ratio_line(&ratios, 2));
    RteFigures {
        build_ms: rte.acl.build_time.as_secs_f64() * 1e3,
        memory: rte.acl.memory.rules + rte.acl.memory.tries,
        ns: best,
        ratio: ratios,
        staged_ratio,
    }
}

/// A trace as key columns of its family (ours' timed input).
enum Columns {
    V4(KeyColumnsBuf<u32>),
    V6(KeyColumnsBuf<u128>),
}

impl Columns {
    /// The trace's keys, all of the set's family.
    fn new(trace: &[FlowKey], ipv6: bool) -> Result<Columns> {
        let mut v4 = KeyColumnsBuf::new();
        let mut v6 = KeyColumnsBuf::new();
        for (i, k) in trace.iter().enumerate() {
            let ok = if ipv6 { v6.push_v6(k) } else { v4.push_v4(k) };
            if !ok {
                bail!(
                    "trace packet {} ({k:?}) is not of the rule set's family",
                    i + 1
                );
            }
        }
        Ok(if ipv6 {
            Columns::V6(v6)
        } else {
            Columns::V4(v4)
        })
    }

    /// Classifies the keys `r` into `out` (rule index or `NO_MATCH`).
    #[inline]
    fn classify(&self, c: &Classifier, r: Range<usize>, out: &mut [u32]) {
        match self {
            Columns::V4(b) => c.classify_v4_columns(&b.columns().range(r), out),
            Columns::V6(b) => c.classify_v6_columns(&b.columns().range(r), out),
        }
    }
}

/// Prints, per burst size, the median and the best of `per_burst` under
/// `label`, the line ended by `tail(median)`; returns the medians.
fn burst_medians(
    label: &str,
    per_burst: &mut [Vec<f64>],
    tail: impl Fn(f64) -> String,
) -> Vec<f64> {
    BURSTS
        .iter()
        .zip(per_burst.iter_mut())
        .map(|(b, times)| {
            let c = median(times);
            let best = times.iter().copied().fold(f64::INFINITY, f64::min);
            println!(
                "{label:<20} {c:>8.1} ns/packet (best {best:>6.1})  burst {b:>3}  {}",
                tail(c)
            );
            c
        })
        .collect()
}

/// `0..n` in consecutive ranges of `burst`.
fn chunk_ranges(n: usize, burst: usize) -> impl Iterator<Item = Range<usize>> {
    let burst = burst.max(1);
    (0..n).step_by(burst).map(move |a| a..(a + burst).min(n))
}

/// ns per packet of `f` over `0..n` in bursts of `burst`.
fn time_chunks(n: usize, burst: usize, mut f: impl FnMut(Range<usize>)) -> f64 {
    let t = Instant::now();
    for r in chunk_ranges(n, burst) {
        f(black_box(r));
    }
    t.elapsed().as_secs_f64() * 1e9 / n.max(1) as f64
}

/// Runs the linter with the given actions; checks that no trace packet is
/// decided by a rule reported as shadowed or duplicate (`reference`: the first
/// matching rule of each packet).
fn lint_report(
    rules: &[MatchRule],
    allow: &[bool],
    actions: &str,
    reference: &[Option<u32>],
) -> Result<()> {
    let lint_rules: Vec<LintRule> = rules
        .iter()
        .zip(allow)
        .map(|(r, &allow)| LintRule {
            rule: r.clone(),
            allow,
        })
        .collect();
    let t = Instant::now();
    let findings = lint(&lint_rules);
    let took = t.elapsed();
    let count = |k: FindingKind| findings.iter().filter(|f| f.kind == k).count();
    let mut never = vec![false; rules.len()];
    for f in &findings {
        if matches!(f.kind, FindingKind::Shadowed | FindingKind::Duplicate) {
            if let Some(n) = never.get_mut(f.rule) {
                *n = true;
            }
        }
    }
    let wrong = reference
        .iter()
        .flatten()
        .filter(|&&i| never.get(i as usize).copied().unwrap_or(false))
        .count();
    if wrong > 0 {
        bail!("{wrong} trace packets are decided by rules lint reports as shadowed or duplicate");
    }
    println!(
        "lint ({actions}): {} duplicate, {} shadowed, {} redundant in {:.1} ms",
        count(FindingKind::Duplicate),
        count(FindingKind::Shadowed),
        count(FindingKind::Redundant),
        took.as_secs_f64() * 1e3
    );
    Ok(())
}

/// Median of `v` (sorts it); NaN when empty.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// ns per packet of classifying `trace` in bursts of `burst`.
fn time_engine<E: Engine + ?Sized>(
    e: &E,
    trace: &[FlowKey],
    burst: usize,
    out: &mut [Option<u32>],
) -> f64 {
    let t = Instant::now();
    for (k, o) in trace.chunks(burst).zip(out.chunks_mut(burst)) {
        e.classify_burst(black_box(k), o);
    }
    black_box(&mut *out);
    t.elapsed().as_secs_f64() * 1e9 / trace.len() as f64
}

/// `linear_classify` of every packet, on two threads.
fn reference_answers(rules: &[MatchRule], trace: &[FlowKey]) -> Vec<Option<u32>> {
    let mut out = vec![None; trace.len()];
    let half = trace.len().div_ceil(2).max(1);
    std::thread::scope(|s| {
        for (k, o) in trace.chunks(half).zip(out.chunks_mut(half)) {
            s.spawn(move || {
                for (k, o) in k.iter().zip(o.iter_mut()) {
                    *o = linear_classify(rules, k);
                }
            });
        }
    });
    out
}

/// `n` packets, each inside a randomly chosen rule, or (RANDOM_SHARE)
/// uniformly random.
fn generate_trace(rules: &[MatchRule], ipv6: bool, n: usize, seed: u64) -> Vec<FlowKey> {
    let mut rng = Rng::new(seed);
    let random_addr = |rng: &mut Rng| {
        if ipv6 {
            IpAddr::V6(Ipv6Addr::from(rng.next_u128()))
        } else {
            IpAddr::V4(Ipv4Addr::from(rng.next_u64() as u32))
        }
    };
    let addr_in = |m: &AddrMatch, rng: &mut Rng| -> IpAddr {
        match m {
            AddrMatch::Prefixes(nets) if !nets.is_empty() => {
                let i = rng.below(nets.len() as u64) as usize;
                match nets.get(i) {
                    Some(IpNet::V4(net)) => {
                        let mask = u32::from(net.hostmask());
                        let a = u32::from(net.network()) | (rng.next_u64() as u32 & mask);
                        IpAddr::V4(a.into())
                    }
                    Some(IpNet::V6(net)) => {
                        let mask = u128::from(net.hostmask());
                        let a = u128::from(net.network()) | (rng.next_u128() & mask);
                        IpAddr::V6(a.into())
                    }
                    None => random_addr(rng),
                }
            }
            _ => random_addr(rng),
        }
    };
    let port_in = |p: &[lb_core::acl::PortRange], rng: &mut Rng| -> u16 {
        match p.get(rng.below(p.len() as u64) as usize) {
            Some(r) => rng.range_u16(r.lo, r.hi),
            None => rng.next_u64() as u16,
        }
    };
    let protos = [6u8, 17, 1];
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        let rule = rules.get(rng.below(rules.len() as u64) as usize);
        let key = match rule {
            Some(r) if !rng.chance(RANDOM_SHARE) => FlowKey {
                src: addr_in(&r.src, &mut rng),
                dst: addr_in(&r.dst, &mut rng),
                proto: r
                    .proto
                    .unwrap_or(protos[rng.below(protos.len() as u64) as usize % protos.len()]),
                sport: port_in(&r.sport, &mut rng),
                dport: port_in(&r.dport, &mut rng),
            },
            _ => FlowKey {
                src: random_addr(&mut rng),
                dst: random_addr(&mut rng),
                proto: protos[rng.below(protos.len() as u64) as usize % protos.len()],
                sport: rng.next_u64() as u16,
                dport: rng.next_u64() as u16,
            },
        };
        keys.push(key);
    }
    keys
}
