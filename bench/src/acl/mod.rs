//! `bench acl`: the compiled classifier against the linear scan (and, later,
//! other engines behind [`Engine`]).

mod classbench;
mod engine;
mod rng;

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use lb_core::acl::lint::{lint, FindingKind, LintRule};
use lb_core::acl::{linear_classify, AddrMatch, Classifier, FlowKey, MatchRule};

use crate::AclArgs;
use engine::{Compiled, Engine, Linear};
use rng::Rng;

/// Burst sizes timed for the compiled engines.
const BURSTS: [usize; 4] = [1, 8, 32, 256];
/// Share of generated packets that are uniformly random.
const RANDOM_SHARE: f64 = 0.03;
/// Target duration of one timing round of the linear scan.
const LINEAR_ROUND: Duration = Duration::from_millis(300);

pub fn run(args: &AclArgs) -> Result<()> {
    let files = match (&args.all, &args.rules) {
        (Some(dir), _) => rule_files(dir)?,
        (None, Some(f)) => vec![f.clone()],
        (None, None) => bail!("give --rules FILE or --all DIR"),
    };
    let mut summary = Vec::new();
    for f in &files {
        let ratios = run_file(f, args)?;
        summary.push((f.clone(), ratios));
        println!();
    }
    if files.len() > 1 {
        println!("summary (ratio linear/compiled):");
        for (f, r) in &summary {
            println!("  {:<16} {}", file_name(f), ratio_line(r));
        }
    }
    Ok(())
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

fn ratio_line(r: &[f64]) -> String {
    let parts: Vec<String> = BURSTS
        .iter()
        .zip(r)
        .map(|(b, x)| format!("b{b}={x:.1}"))
        .collect();
    parts.join(" ")
}

/// Runs one rule file; returns the linear/compiled ratio per burst size.
fn run_file(path: &Path, args: &AclArgs) -> Result<Vec<f64>> {
    let set = classbench::read_rules(path, args.ipv6)?;
    let rules = set.rules;
    println!(
        "== {}: {} rules ({})",
        file_name(path),
        rules.len(),
        if set.ipv6 { "IPv6" } else { "IPv4" }
    );
    let (trace, origin) = match &args.trace {
        Some(t) => (classbench::read_trace(t)?, format!("{}", t.display())),
        None => (
            generate_trace(&rules, set.ipv6, args.packets, args.seed),
            format!("generated, {:.0}% random", RANDOM_SHARE * 100.0),
        ),
    };
    if trace.is_empty() {
        bail!("empty trace");
    }

    // Build time: best of a few builds.
    let mut build = Duration::MAX;
    let mut classifier = Classifier::build(&[]);
    for _ in 0..5 {
        let t = Instant::now();
        classifier = black_box(Classifier::build(black_box(&rules)));
        build = build.min(t.elapsed());
    }
    let compiled = Compiled(classifier);
    let linear = Linear { rules: &rules };

    // Verify every packet against the reference (both cores).
    let t = Instant::now();
    let reference = reference_answers(&rules, &trace);
    let verify_time = t.elapsed();
    let mut got = vec![None; trace.len()];
    compiled.classify_burst(&trace, &mut got);
    let mut mismatches = 0usize;
    for ((k, want), have) in trace.iter().zip(&reference).zip(&got) {
        if want != have {
            if mismatches < 5 {
                eprintln!("mismatch: {k:?}: linear {want:?}, compiled {have:?}");
            }
            mismatches += 1;
        }
    }
    if mismatches > 0 {
        bail!(
            "{}: the compiled classifier disagrees with linear_classify on {mismatches} of {} packets",
            path.display(),
            trace.len()
        );
    }
    let unmatched = reference.iter().filter(|r| r.is_none()).count();
    let matched: Vec<f64> = reference.iter().flatten().map(|&i| f64::from(i)).collect();
    let mean_index = matched.iter().sum::<f64>() / matched.len().max(1) as f64;
    println!(
        "trace: {} packets ({origin}), {:.1}% match no rule, mean matching rule index {mean_index:.0}; all agree with linear_classify",
        trace.len(),
        100.0 * unmatched as f64 / trace.len() as f64
    );
    println!(
        "compiled: build {:.3} ms, memory {:.2} MiB",
        build.as_secs_f64() * 1e3,
        compiled.memory_bytes().unwrap_or(0) as f64 / (1024.0 * 1024.0)
    );

    lint_report(path, &rules, &reference)?;

    // Linear scan on a prefix of the trace short enough for ~LINEAR_ROUND
    // per round (estimated from the verification, which ran on 2 threads).
    let per_packet = verify_time.as_secs_f64() * 2.0 / trace.len() as f64;
    let linear_n =
        ((LINEAR_ROUND.as_secs_f64() / per_packet.max(1e-9)) as usize).clamp(1000, trace.len());
    let linear_trace = trace.get(..linear_n).unwrap_or(&trace);

    let rounds = args.rounds.max(1);
    let mut linear_ns = Vec::new();
    let mut compiled_ns: Vec<Vec<f64>> = vec![Vec::new(); BURSTS.len()];
    let mut out = vec![None; trace.len()];
    for _ in 0..rounds {
        linear_ns.push(time_engine(&linear, linear_trace, 1, &mut out));
        for (b, times) in BURSTS.iter().zip(compiled_ns.iter_mut()) {
            times.push(time_engine(&compiled, &trace, *b, &mut out));
        }
    }
    let lin = median(&mut linear_ns);
    let subset = if linear_n < trace.len() {
        format!(" (on the first {linear_n} packets)")
    } else {
        String::new()
    };
    println!("{:<12} {:>10.1} ns/packet{subset}", linear.name(), lin);
    let mut ratios = Vec::new();
    for (b, times) in BURSTS.iter().zip(compiled_ns.iter_mut()) {
        let c = median(times);
        let best = times.iter().copied().fold(f64::INFINITY, f64::min);
        ratios.push(lin / c);
        println!(
            "{:<12} {:>10.1} ns/packet (best {best:.1})  burst {b:>3}  linear/compiled {:.1}",
            compiled.name(),
            c,
            lin / c
        );
    }
    println!("ratio linear/compiled: {}", ratio_line(&ratios));
    Ok(ratios)
}

/// Runs the linter, with the actions of `<rules>.meta` when it exists (all
/// rules allow otherwise).
/// Checks that no trace packet is decided by a rule reported as shadowed or
/// duplicate (`reference`: the first matching rule of each packet).
fn lint_report(path: &Path, rules: &[MatchRule], reference: &[Option<u32>]) -> Result<()> {
    let mut meta = path.as_os_str().to_owned();
    meta.push(".meta");
    let meta = PathBuf::from(meta);
    let mut allow = vec![true; rules.len()];
    let actions = if meta.is_file() {
        let text = std::fs::read_to_string(&meta)
            .with_context(|| format!("reading {}", meta.display()))?;
        for (n, line) in text.lines().enumerate().skip(1) {
            let mut cols = line.split(',');
            let (Some(num), Some(_prio), Some(action)) = (cols.next(), cols.next(), cols.next())
            else {
                bail!(
                    "{}:{}: expected line,sg_prio,action,origin",
                    meta.display(),
                    n + 1
                );
            };
            let num: usize = num
                .trim()
                .parse()
                .with_context(|| format!("{}:{}: bad line number", meta.display(), n + 1))?;
            if let Some(a) = num.checked_sub(1).and_then(|i| allow.get_mut(i)) {
                *a = action.trim() == "allow";
            }
        }
        "actions from .meta"
    } else {
        "every rule taken as allow"
    };
    let lint_rules: Vec<LintRule> = rules
        .iter()
        .zip(&allow)
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
fn time_engine(e: &dyn Engine, trace: &[FlowKey], burst: usize, out: &mut [Option<u32>]) -> f64 {
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
