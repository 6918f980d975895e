//! The pktgen profiles against lbd: one short run of
//! `scripts/pktgen/memif.sh mixed-denied` (pktgen-dpdk on lbd's client-side
//! memif link, `bench dataplane-traffic --backends-only` on its backend
//! side), which fails unless lbd's counters show what the profile intends:
//! half the SYNs dropped by the security group, sessions for the others.
//!
//! pktgen comes from `scripts/pktgen/build.sh` (about 10 s of
//! compiling; .ci/run installs what it needs). Needs root. Without root or
//! pktgen it says SKIPPED and passes, except under `CI=true` or
//! `LB_REQUIRE_ALL=1`, where it fails (`lb-dataplane/tests/common/skip.rs`).

// Built only with the `dpdk` feature (`cargo test -p lb-bench --features dpdk`).
#![cfg(feature = "dpdk")]

use std::process::Command;

mod common;
#[path = "../../lb-dataplane/tests/common/skip.rs"]
mod skip;

/// The pktgen binary, built by the shared build script, or why not.
fn pktgen() -> Result<String, String> {
    let script = common::repo().join("scripts/pktgen/build.sh");
    if !script.is_file() {
        return Err(format!("{} is missing", script.display()));
    }
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "building pktgen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn pktgen_mixed_denied_profile_against_lbd_over_memif() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip::skip("needs root (DPDK's runtime directory)");
    }
    let pktgen = match pktgen() {
        Ok(p) => p,
        Err(why) => return skip::skip(&why),
    };
    let (lbd, lbctl) = common::lbd_binaries(&["dpdk"]);
    let out = Command::new("bash")
        .arg(common::repo().join("scripts/pktgen/memif.sh"))
        .args(["mixed-denied", "2"])
        .env("PKTGEN", &pktgen)
        .env("LBD", &lbd)
        .env("LBCTL", &lbctl)
        .env("BENCH", env!("CARGO_BIN_EXE_bench"))
        .output()
        .expect("run memif.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{text}{err}");
    assert!(
        out.status.success(),
        "memif.sh mixed-denied failed:\n{text}\n{err}"
    );
    let sent: u64 = text
        .split_once(": sent ")
        .and_then(|(_, r)| r.split_whitespace().next()?.parse().ok())
        .expect("pktgen's report");
    assert!(sent > 1000, "pktgen sent {sent}");
    assert!(
        text.contains("ok   half the SYNs dropped by the security group"),
        "{text}"
    );
    assert!(!text.contains("FAIL"), "{text}");
}
