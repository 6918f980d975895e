//! Helpers shared by the test targets of bench.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `lbd` and `lbctl` with the lb-dataplane `features` given, built for the
/// profile and target directory of this test executable (a no-op when a
/// build of the workspace already made them, and never a stale binary).
pub fn lbd_binaries(features: &[&str]) -> (PathBuf, PathBuf) {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let target_dir = profile_dir.parent().expect("target directory");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(p) => p.to_string(),
    };
    let cargo = std::env::var("CARGO")
        .ok()
        .or_else(|| option_env!("CARGO").map(str::to_string))
        .unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(repo()).args([
        "build",
        "-p",
        "lb-dataplane",
        "--bin",
        "lbd",
        "--bin",
        "lbctl",
    ]);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    let out = cmd
        .arg("--profile")
        .arg(&profile)
        .arg("--target-dir")
        .arg(target_dir)
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo build -p lb-dataplane --bin lbd (features {features:?}) failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (profile_dir.join("lbd"), profile_dir.join("lbctl"))
}
