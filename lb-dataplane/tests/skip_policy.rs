//! A test whose prerequisite is missing passes with a visible `SKIPPED`
//! line on a developer's machine and fails under CI (`CI=true` or
//! `LB_REQUIRE_ALL=1`), shown by running an end-to-end prerequisite check
//! (`require_netns!`) in a child process as an unprivileged user and with a
//! `PATH` that lacks a tool.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::skip::required_by;

#[test]
fn ci_or_require_all_forbids_skipping() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    };
    assert!(required_by(env(&[("CI", "true")])));
    assert!(required_by(env(&[("CI", "1")])));
    assert!(required_by(env(&[("CI", "TRUE")])));
    assert!(required_by(env(&[("LB_REQUIRE_ALL", "1")])));
    assert!(required_by(env(&[
        ("CI", "false"),
        ("LB_REQUIRE_ALL", "1")
    ])));
    assert!(!required_by(env(&[])));
    assert!(!required_by(env(&[("CI", "false")])));
    assert!(!required_by(env(&[("CI", ""), ("LB_REQUIRE_ALL", "0")])));
}

/// What the end-to-end tests start with; run only as a child of the tests
/// below.
#[test]
#[ignore = "a child process of the tests below"]
fn probe_require_netns() {
    require_netns!();
    println!("PROBE RAN");
}

/// This test executable, copied where any user may run it.
fn probe_exe(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create the probe directory");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let exe = dir.join("probe");
    std::fs::copy(std::env::current_exe().expect("this test executable"), &exe)
        .expect("copy the test executable");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    exe
}

/// A fresh directory for this test's files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("lb-skip-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the probe through `cmd` with `ci` as the value of `CI`.
fn run_probe(mut cmd: Command, ci: &str) -> (bool, String) {
    cmd.args(["--exact", "probe_require_netns", "--ignored", "--nocapture"])
        .env("CI", ci)
        .env_remove("LB_REQUIRE_ALL");
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run the probe");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    (status.success(), text)
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

#[test]
fn unprivileged_netns_test_fails_under_ci() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        common::skip::skip("needs root (to drop to an unprivileged user)");
        return;
    }
    let Some(setpriv) = which("setpriv") else {
        common::skip::skip("needs setpriv (util-linux)");
        return;
    };
    let dir = TempDir::new("uid");
    let exe = probe_exe(&dir.0);
    let nobody = |ci: &str| {
        let mut cmd = Command::new(&setpriv);
        cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(&exe)
            .current_dir(&dir.0);
        run_probe(cmd, ci)
    };

    let (ok, out) = nobody("true");
    assert!(!ok, "passed under CI=true as an unprivileged user:\n{out}");
    assert!(out.contains("needs root"), "{out}");
    assert!(out.contains("forbids skipping"), "{out}");
    assert!(!out.contains("PROBE RAN"), "{out}");

    let (ok, out) = nobody("false");
    assert!(ok, "failed outside CI:\n{out}");
    assert!(
        out.contains("SKIPPED probe_require_netns: needs root"),
        "{out}"
    );
}

#[test]
fn missing_tool_fails_under_ci() {
    // A PATH with every tool the end-to-end tests need except ethtool.
    let dir = TempDir::new("path");
    let exe = probe_exe(&dir.0);
    let bin = dir.0.join("bin");
    std::fs::create_dir_all(&bin).expect("create bin");
    for tool in ["sh", "ip", "curl", "nginx", "ping", "python3"] {
        if let Some(real) = which(tool) {
            std::os::unix::fs::symlink(real, bin.join(tool)).expect("symlink a tool");
        }
    }
    let probe = |ci: &str| {
        let mut cmd = Command::new(&exe);
        cmd.env("PATH", &bin);
        run_probe(cmd, ci)
    };

    let (ok, out) = probe("true");
    assert!(!ok, "passed under CI=true without ethtool:\n{out}");
    assert!(out.contains("needs "), "{out}");
    assert!(!out.contains("PROBE RAN"), "{out}");

    let (ok, out) = probe("");
    assert!(ok, "failed outside CI:\n{out}");
    assert!(out.contains("SKIPPED probe_require_netns: needs "), "{out}");
}

/// Every test of lb-dataplane and bench skips through `common::skip`
/// (`require_netns!`, `skip::skip`): a test printing its own `SKIPPED`
/// line would pass under CI without running.
#[test]
fn every_skip_goes_through_the_policy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in [root.join("tests"), root.join("../bench/tests")] {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
                let path = e.expect("a directory entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|x| x == "rs") {
                    files.push(path);
                }
            }
        }
    }
    assert!(files.len() > 10, "the test sources: {files:?}");
    let mut own = Vec::new();
    for f in &files {
        if f.ends_with("common/skip.rs") || f.ends_with("skip_policy.rs") {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("a test source");
        for (i, line) in text.lines().enumerate() {
            if line.contains("\"SKIPPED") {
                own.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        own.is_empty(),
        "tests that skip without common::skip::skip: {own:#?}"
    );
}
