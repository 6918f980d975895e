//! `bench dataplane` in short: one and two workers, phases of one second,
//! lbd (built with the dpdk feature) and dpdk-testpmd over net_memif links.
//!
//! It checks that traffic flowed both ways through both devices, that the
//! ratio line has a figure for each worker count, and that lbd's own
//! counters agree with what the traffic process saw: established and new
//! traffic forwarded, sessions created for the new flows, every denied
//! frame dropped by the security group and none leaked. With two workers,
//! lbd ran two (memif has no RSS: the traffic process spreads the frames
//! as RSS would, `dpdk_rss = "software"`), and its steered FULLNAT local
//! ports brought every reply to its session's worker: no handoffs.
//!
//! Needs root and dpdk-testpmd (package dpdk-dev, which .ci/run installs);
//! elsewhere it says SKIPPED and passes, except under `CI=true` or
//! `LB_REQUIRE_ALL=1`, where a missing prerequisite fails it
//! (`lb-dataplane/tests/common/skip.rs`).

// Built only with the `dpdk` feature (`cargo test -p lb-bench --features dpdk`).
#![cfg(feature = "dpdk")]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lb_bench::dataplane::PhaseResult;

mod common;
#[path = "../../lb-dataplane/tests/common/skip.rs"]
mod skip;

/// Why this machine cannot run the test, if it cannot.
fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (DPDK's runtime directory)".into());
    }
    let found = Command::new("sh")
        .args(["-c", "command -v dpdk-testpmd"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        return Some("needs dpdk-testpmd (apt-get install dpdk-dev; CI installs it)".into());
    }
    None
}

/// The `key=value` of a line.
fn value(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[test]
fn lbd_and_testpmd_forward_over_memif() {
    if let Some(why) = unsupported() {
        return skip::skip(&why);
    }
    let (lbd, lbctl) = common::lbd_binaries(&["dpdk"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["dataplane", "--workers", "1,2", "--duration", "1s"])
        .args(["--flows", "256", "--max-time", "60s"])
        .arg("--lbd")
        .arg(&lbd)
        .arg("--lbctl")
        .arg(&lbctl)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bench dataplane");
    // The bench bounds every process itself; this bounds the bench.
    let by = Instant::now() + Duration::from_secs(180);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > by {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bench dataplane did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench dataplane failed:\n{text}\n{err}"
    );
    eprintln!("{text}");

    let phase = |dut: &str, w: u16, name: &str| -> PhaseResult {
        let prefix = format!("raw {dut} w{w} ");
        text.lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(PhaseResult::from_line)
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no {dut} {name} phase in:\n{text}"))
    };
    // Both devices forwarded both directions.
    for dut in ["testpmd", "lbd"] {
        for w in [1, 2] {
            let est = phase(dut, w, "est");
            assert!(est.fwd > 1000 && est.rev > 1000, "{dut} w{w}: {est:?}");
        }
    }
    let ratio = text
        .lines()
        .rfind(|l| l.starts_with("ratio lbd/testpmd: "))
        .expect("a ratio line");
    assert!(
        text.trim_end().ends_with(ratio),
        "the ratio line comes last"
    );
    let figures: Vec<f64> = ratio
        .strip_prefix("ratio lbd/testpmd: ")
        .map(|r| {
            r.split_whitespace()
                .zip(["w1=", "w2="])
                .filter_map(|(kv, k)| kv.strip_prefix(k)?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        figures.len() == 2 && figures.iter().all(|&r| r > 0.0),
        "{ratio}"
    );
    for w in [1, 2] {
        lbd_counters_agree(&text, w, |name| phase("lbd", w, name));
    }
    // Nothing left behind.
    let left: Vec<_> = std::fs::read_dir("/var/run/dpdk")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("lbdpb"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "EAL runtime directories left: {left:?}");
}

/// lbd's counters of the `w`-worker run tell the same story as the
/// traffic process.
fn lbd_counters_agree(text: &str, w: u16, phase: impl Fn(&str) -> PhaseResult) {
    let (est, new, deny) = (phase("est"), phase("new"), phase("deny"));
    let section = text
        .split("== ")
        .find(|s| s.starts_with(&format!("{w} worker(s)")))
        .unwrap_or_else(|| panic!("no {w}-worker figures in:\n{text}"));
    let counters = section
        .lines()
        .find_map(|l| l.trim().strip_prefix("lbd counters: "))
        .expect("lbd counters line");
    assert_eq!(value(counters, "workers"), u64::from(w), "{counters}");
    let forwarded = value(counters, "forwarded");
    let created = value(counters, "sessions_created");
    let denied = value(counters, "security_group");
    assert!(
        forwarded >= est.fwd + est.rev + new.fwd + new.rev,
        "forwarded {forwarded} < what arrived: {counters}"
    );
    assert!(
        new.fwd > 1000,
        "new connections reached the backends: {new:?}"
    );
    assert!(
        created >= new.fwd,
        "a session per new flow forwarded: {counters} {new:?}"
    );
    assert!(deny.sent > 1000, "{deny:?}");
    assert_eq!(deny.fwd, 0, "denied frames leaked: {deny:?}");
    assert!(
        denied >= deny.sent,
        "every denied frame counted as a security_group drop: {counters} {deny:?}"
    );
    // Steered: replies reach their session's worker (a session that found
    // no steered port free is handed over; a few at most).
    let handoffs = value(counters, "handoff_out");
    assert!(
        handoffs * 1000 <= forwarded,
        "{handoffs} handoffs of {forwarded} forwarded: {counters}"
    );
}
