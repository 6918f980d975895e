//! `lbd` with `io = "dpdk"`, two workers and two ports with RSS
//! (`net_null`: the PMD keeps the key, hash types and redirection table it
//! is given, though it hashes nothing it receives): at start `lbd` reads
//! each port's RSS back, and `lbctl stats` says that both ports steer
//! FULLNAT replies and counts each worker's handoffs. Needs root (EAL).

// Built only with the `dpdk` feature (`cargo test --features dpdk`).
#![cfg(feature = "dpdk")]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Stops the `lbd` this test started (by its pid) and removes its files,
/// also when the test fails.
struct Lbd {
    child: std::process::Child,
    dir: std::path::PathBuf,
    _runtime: common::RuntimeDir,
}

impl Drop for Lbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `lbd` with two workers on `vdevs` (`port_extra` added to both
/// ports), waits until both workers report, and returns `lbctl stats`
/// with the `lbd` (stopped on drop).
fn start(name: &str, vdevs: &[&str], port_extra: &str) -> (Lbd, serde_json::Value) {
    let prefix = format!("lbrss{name}{}", std::process::id());
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("lbd.toml");
    let control = dir.join("lbd.sock");
    let vdevs: Vec<String> = vdevs
        .iter()
        .map(|v| format!("--vdev={}", v.replace("DIR", &dir.display().to_string())))
        .collect();
    let vdevs: Vec<&str> = vdevs.iter().map(String::as_str).collect();
    let eal_args = common::lbd_eal_args(&prefix, 512, &vdevs);
    std::fs::write(
        &config,
        format!(
            r#"
[dataplane]
io = "dpdk"
workers = 2
eal_args = {eal_args:?}

[[port]]
name = "ext"
dpdk_port = 0
addresses = ["198.18.0.1/24"]
{port_extra}

[[port]]
name = "int"
dpdk_port = 1
addresses = ["198.19.1.1/24"]
{port_extra}

[[server_group]]
id = "sgp"
scheduler = "wrr"
[server_group.health_check]
enabled = false
[[server_group.server]]
address = "198.19.1.11"
port = 80
weight = 100

[[load_balancer]]
id = "alb-1"
vips = ["198.18.0.10"]
local_addresses = ["198.19.1.250"]
[[load_balancer.listener]]
protocol = "tcp"
port = 80
server_group = "sgp"
"#
        ),
    )
    .expect("write the configuration");
    let child = Command::new(env!("CARGO_BIN_EXE_lbd"))
        .arg("--config")
        .arg(&config)
        .arg("--control")
        .arg(&control)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lbd");
    let mut lbd = Lbd {
        child,
        dir,
        _runtime: common::RuntimeDir(common::dpdk_runtime_dir(&prefix)),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let out = Command::new(env!("CARGO_BIN_EXE_lbctl"))
            .args(["stats", "--json", "--control"])
            .arg(&control)
            .output()
            .expect("run lbctl");
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON stats");
            // Both workers have published their counters.
            if v["workers"].as_array().map(Vec::len) == Some(2) {
                break v;
            }
        }
        if let Some(status) = lbd.child.try_wait().expect("lbd's status") {
            let mut err = String::new();
            if let Some(mut e) = lbd.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("lbd exited ({status}): {err}");
        }
        assert!(Instant::now() < deadline, "lbd did not answer in 30 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    (lbd, stats)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        common::skip::skip("needs root (DPDK EAL)");
        return false;
    }
    true
}

#[test]
fn lbd_reads_each_ports_rss_and_reports_steering() {
    if !is_root() {
        return;
    }
    let (_lbd, stats) = start("null", &["net_null0", "net_null1"], "");
    let ports = stats["ports"].as_array().expect("ports");
    assert_eq!(ports.len(), 2, "{stats}");
    for p in ports {
        assert_eq!(p["rss_steering"], true, "{p}");
    }
    let workers = stats["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 2, "{stats}");
    for w in workers {
        // net_null's frames are zeros: nothing parses, nothing is handed over.
        assert_eq!(w["handoff_out"], 0, "{w}");
    }
}

/// memif has no RSS: by default two workers get one queue per port, so
/// one worker; with `dpdk_rss = "software"` each worker gets a queue of
/// each port, and FULLNAT replies are steered as the peer spreads them.
#[test]
fn software_rss_gives_a_port_without_rss_a_queue_per_worker() {
    if !is_root() {
        return;
    }
    let memif = [
        "net_memif0,role=server,id=0,socket=DIR/ext.sock,socket-abstract=no",
        "net_memif1,role=server,id=0,socket=DIR/int.sock,socket-abstract=no",
    ];
    let (_lbd, stats) = start("memif", &memif, "dpdk_rss = \"software\"");
    for p in stats["ports"].as_array().expect("ports") {
        assert_eq!(p["rss_steering"], true, "{p}");
    }
    assert_eq!(
        stats["workers"].as_array().map(Vec::len),
        Some(2),
        "{stats}"
    );
}
