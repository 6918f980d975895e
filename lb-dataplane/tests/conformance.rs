//! The conformance suite: every scenario of the cloud documents as an
//! `lbctl eval` trace under `tests/conformance/`, with its expected verdicts
//! written beside each packet line:
//!
//! ```text
//! 0.0 tcp 198.18.0.2:40000 > 198.18.0.10:81 S   #=> drop "sg sg-alb rule 3 (deny)"
//! ```
//!
//! `#=> VERDICT ["reason substring"] [backend=ID] [out="…"] [answer="…"]`
//! (`answer`: the ICMP error `lbd` sends back for the drop). The first line
//! `# config: FILE` names the configuration. Bad configurations under
//! `tests/conformance/bad/` carry `# expect: LINE: substring` (or `# expect:
//! LINE:COL: substring`) lines: `lbctl check` must fail and report an error
//! at that line (and column) containing it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance")
}

fn lbctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lbctl"))
}

#[derive(Debug, Default)]
struct Expect {
    verdict: String,
    reason: Option<String>,
    backend: Option<String>,
    out: Option<String>,
    answer: Option<String>,
}

/// Splits `#=> forward "a b" backend=x out="c d"` into its parts.
fn parse_expect(s: &str) -> Expect {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut e = Expect {
        verdict: words.first().cloned().unwrap_or_default(),
        ..Expect::default()
    };
    for w in words.iter().skip(1) {
        if let Some(b) = w.strip_prefix("backend=") {
            e.backend = Some(b.to_string());
        } else if let Some(o) = w.strip_prefix("out=") {
            e.out = Some(o.to_string());
        } else if let Some(a) = w.strip_prefix("answer=") {
            e.answer = Some(a.to_string());
        } else {
            e.reason = Some(w.clone());
        }
    }
    e
}

fn run_trace(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("read trace");
    let config = text
        .lines()
        .find_map(|l| l.strip_prefix("# config:"))
        .unwrap_or_else(|| panic!("{}: no '# config:' line", path.display()))
        .trim();
    let out = lbctl()
        .arg("eval")
        .arg("--config")
        .arg(path.parent().expect("dir").join(config))
        .arg(path)
        .output()
        .expect("run lbctl");
    assert!(
        out.status.success(),
        "{}: lbctl eval failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (n, line) in text.lines().enumerate() {
        let lineno = n + 1;
        let Some((_, exp)) = line.split_once("#=>") else {
            continue;
        };
        let exp = parse_expect(exp);
        let Some(got) = results.iter().find(|r| r["line"] == lineno) else {
            failures.push(format!("{}:{lineno}: no verdict printed", path.display()));
            continue;
        };
        checked += 1;
        let field = |k: &str| got[k].as_str().unwrap_or("").to_string();
        let mut bad = Vec::new();
        if field("verdict") != exp.verdict {
            bad.push(format!(
                "verdict {} (expected {})",
                field("verdict"),
                exp.verdict
            ));
        }
        if let Some(r) = &exp.reason {
            if !field("reason").contains(r.as_str()) {
                bad.push(format!("reason {:?} lacks {r:?}", field("reason")));
            }
        }
        if let Some(b) = &exp.backend {
            if &field("backend") != b {
                bad.push(format!("backend {:?} (expected {b:?})", field("backend")));
            }
        }
        if let Some(o) = &exp.out {
            if &field("out") != o {
                bad.push(format!("out {:?} (expected {o:?})", field("out")));
            }
        }
        if let Some(a) = &exp.answer {
            if &field("answer") != a {
                bad.push(format!("answer {:?} (expected {a:?})", field("answer")));
            }
        }
        if !bad.is_empty() {
            failures.push(format!(
                "{}:{lineno}: {} — got {got}",
                path.display(),
                bad.join("; ")
            ));
        }
    }
    assert!(checked > 0, "{}: no expectations", path.display());
    eprintln!("{}: {checked} packets checked", path.display());
    failures
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

#[test]
fn every_trace_gives_its_expected_verdicts() {
    let traces = files(&suite_dir(), "trace");
    assert!(traces.len() >= 4, "conformance traces missing");
    let failures: Vec<String> = traces.iter().flat_map(|t| run_trace(t)).collect();
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_example_traces_give_their_expected_verdicts() {
    let traces = files(&repo_examples(), "trace");
    assert!(!traces.is_empty(), "example traces missing");
    let failures: Vec<String> = traces.iter().flat_map(|t| run_trace(t)).collect();
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_configuration_of_the_suite_is_valid() {
    for f in files(&suite_dir(), "toml") {
        let out = lbctl().arg("check").arg(&f).output().expect("run lbctl");
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let summary = String::from_utf8_lossy(&out.stdout);
        assert!(
            summary.contains("ok"),
            "{}: summary {summary:?}",
            f.display()
        );
    }
}

#[test]
fn bad_configurations_are_rejected_at_their_line() {
    let bad = files(&suite_dir().join("bad"), "toml");
    assert!(bad.len() >= 10, "bad configurations missing");
    let mut failures = Vec::new();
    for f in bad {
        let text = std::fs::read_to_string(&f).expect("read");
        let out = lbctl().arg("check").arg(&f).output().expect("run lbctl");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.success() {
            failures.push(format!("{}: accepted", f.display()));
            continue;
        }
        let expects: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect:"))
            .map(|e| {
                let (line, msg) = e.trim().split_once(':').expect("LINE: substring");
                let line: usize = line.trim().parse().expect("line number");
                // An optional column: `LINE:COL: substring`.
                match msg.split_once(':') {
                    Some((col, rest))
                        if !col.is_empty() && col.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        (format!("{line}:{col}:"), rest.trim().to_string())
                    }
                    _ => (format!("{line}:"), msg.trim().to_string()),
                }
            })
            .collect();
        assert!(!expects.is_empty(), "{}: no '# expect:' lines", f.display());
        for (line, msg) in expects {
            let prefix = format!("{}:{line}", f.display());
            let found = stderr
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(msg.as_str()));
            if !found {
                failures.push(format!(
                    "{}: no error at line {line} containing {msg:?}; got:\n{stderr}",
                    f.display()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn lint_reports_shadowed_rules_within_and_across_groups() {
    let out = lbctl()
        .arg("lint")
        .arg(suite_dir().join("vpc.toml"))
        .output()
        .expect("run lbctl");
    assert_eq!(out.status.code(), Some(1), "findings give exit 1");
    let text = String::from_utf8_lossy(&out.stdout);
    // Allow 22 from 198.18.0.2 never decides: the deny of the same priority
    // for its /24 comes first.
    assert!(
        text.contains(":45:1: warning: sg sg-web rule 2 is shadowed by sg sg-web rule 3"),
        "{text}"
    );
    // Across the groups of agg1: sg-low's deny of 8081 shadows sg-extra's allow.
    assert!(
        text.contains("sg sg-extra rule 2 is shadowed by sg sg-low rule 2 (ingress of agg1"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 2, "each finding once: {text}");

    let clean = repo_examples().join("vpc.toml");
    let out = lbctl().arg("lint").arg(&clean).output().expect("run lbctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn repo_examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Runs `cmd` for at most 20 s; its exit status and standard error.
fn run_bounded(mut cmd: Command) -> (std::process::ExitStatus, String) {
    use std::io::Read as _;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed() > std::time::Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after 20 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut err)
        .expect("read stderr");
    (status, err)
}

#[test]
fn every_command_that_loads_a_configuration_refuses_dev_zero() {
    let want = "/dev/zero:1:1: the configuration must be a regular file, not a character device";
    let trace = suite_dir().join("alb-listener-ports.trace");
    let mut check = lbctl();
    check.args(["check", "/dev/zero"]);
    let mut lint = lbctl();
    lint.args(["lint", "/dev/zero"]);
    let mut eval = lbctl();
    eval.args(["eval", "--config", "/dev/zero"]).arg(&trace);
    let mut lbd = Command::new(env!("CARGO_BIN_EXE_lbd"));
    lbd.args(["--config", "/dev/zero", "--control"])
        .arg(std::env::temp_dir().join(format!("lbd-dev-zero-{}.sock", std::process::id())));
    for cmd in [check, lint, eval, lbd] {
        let shown = format!("{cmd:?}");
        let (status, err) = run_bounded(cmd);
        assert!(!status.success(), "{shown}: accepted");
        assert!(err.contains(want), "{shown}: {err}");
    }
    // A reload in a trace: refused, the previous configuration stays.
    let dir = std::env::temp_dir().join(format!("lb-reload-dev-zero-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let t = dir.join("reload.trace");
    std::fs::write(
        &t,
        "0.0 tcp 198.18.0.2:40000 > 198.18.0.10:80 S\n@reload /dev/zero\n0.1 tcp 198.18.0.2:40001 > 198.18.0.10:80 S\n",
    )
    .expect("write trace");
    let mut eval = lbctl();
    eval.arg("eval")
        .arg("--config")
        .arg(suite_dir().join("alb-step5.toml"))
        .arg(&t);
    let (status, err) = run_bounded(eval);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "{err}");
    assert!(
        err.contains("reload rejected, the previous configuration stays") && err.contains(want),
        "{err}"
    );
}
