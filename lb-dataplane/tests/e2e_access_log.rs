//! End to end: a listener's access log on the seed load balancer (two
//! workers, nginx backends). curl's connections each get a line with their
//! client port, backend, bytes both ways and `fin`; logrotate-style
//! renames are followed by `lbctl log reopen` and SIGUSR1; a reload that
//! moves the log loses no line; under `wrk` every session is written and
//! none dropped. Needs root, iproute2, ethtool, curl, nginx, python3 and
//! wrk.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{lock, seed_config, wait_healthy, Topo};
use serde_json::Value;

/// The seed configuration with an access log at `path` on listener 80,
/// sessions closing 5 s after their last packet (the closed timeout is capped by the session timeout).
fn config(path: &Path) -> String {
    seed_config("", "\n[platform]\nsession_timeout_s = 5\n", (100, 100)).replacen(
        "port = 80\nserver_group = \"sgp-web\"\n",
        &format!(
            "port = 80\nserver_group = \"sgp-web\"\naccess_log = {{ path = \"{}\", format = \"json\" }}\n",
            path.display()
        ),
        1,
    )
}

/// The lines of an access log so far.
fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Waits (at most `secs`) until `path` holds at least `n` lines.
fn wait_lines(t: &Topo, path: &Path, n: usize, secs: u64) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = lines(path);
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} lines in {} after {secs} s, {n} expected; lbd log:\n{}",
            got.len(),
            path.display(),
            t.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One request with curl from the client on a connection of its own:
/// (client port, bytes of the response body, bytes of the request).
fn curl(t: &Topo) -> (u64, u64, u64) {
    let out = t.exec(
        "client",
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
            "-H",
            "Connection: close",
            "-w",
            "%{local_port} %{size_download} %{size_request} %{http_code}",
            "http://198.18.0.10:80/",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let n: Vec<u64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(n.len() == 4 && n[3] == 200, "curl: {text}");
    (n[0], n[1], n[2])
}

fn lbctl_log_reopen(t: &Topo) {
    let out = t.lbctl(&[
        "log",
        "reopen",
        "--control",
        t.control.to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "lbctl log reopen: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn count_where(got: &[Value], port: u64) -> usize {
    got.iter()
        .filter(|l| l["client_port"].as_u64() == Some(port))
        .count()
}

#[test]
fn access_log_lines_reopen_reload_and_wrk() {
    require_netns!();
    if std::process::Command::new("sh")
        .args(["-c", "command -v wrk"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        common::skip::skip("needs wrk (CI installs it: .ci/run)");
        return;
    }
    let _g = lock();
    let mut t = Topo::up();
    let log: PathBuf = t.run.join("access.log");
    t.start_lbd_with(&config(&log), &["--metrics", "127.0.0.1:9464"]);
    wait_healthy(&t);

    // Each curl connection: one line when it ends, with its fields.
    let reqs: Vec<(u64, u64, u64)> = (0..6).map(|_| curl(&t)).collect();
    let got = wait_lines(&t, &log, reqs.len(), 30);
    assert_eq!(got.len(), reqs.len(), "{got:#?}");
    let mut backends = std::collections::BTreeSet::new();
    for &(port, down, up) in &reqs {
        let l = got
            .iter()
            .find(|l| l["client_port"].as_u64() == Some(port))
            .unwrap_or_else(|| panic!("no line for client port {port}: {got:#?}"));
        assert_eq!(l["event"], "end", "{l}");
        assert_eq!(l["reason"], "fin", "{l}");
        assert_eq!(l["tcp_state"], "closed", "{l}");
        assert_eq!(l["listener"], "alb-1:80", "{l}");
        assert_eq!(
            (&l["client"], &l["vip"]),
            (&"198.18.0.2".into(), &"198.18.0.10".into()),
            "{l}"
        );
        assert_eq!(l["vip_port"], 80, "{l}");
        assert_eq!(l["local"], "198.19.1.250", "{l}");
        assert!(l["local_port"].as_u64().is_some_and(|p| p >= 1024), "{l}");
        let backend = l["backend"].as_str().unwrap_or("").to_string();
        let address = match backend.as_str() {
            "ecs01" => "198.19.1.11",
            "ecs02" => "198.19.1.12",
            _ => panic!("backend: {l}"),
        };
        assert_eq!(l["backend_address"], address, "{l}");
        assert_eq!(l["backend_port"], 80, "{l}");
        backends.insert(backend);
        // IP bytes: the payload and at least 40 bytes of headers a packet.
        let (pc, bc) = (
            l["packets_from_client"].as_u64(),
            l["bytes_from_client"].as_u64(),
        );
        let (pb, bb) = (
            l["packets_from_backend"].as_u64(),
            l["bytes_from_backend"].as_u64(),
        );
        let (pc, bc, pb, bb) = (
            pc.unwrap_or(0),
            bc.unwrap_or(0),
            pb.unwrap_or(0),
            bb.unwrap_or(0),
        );
        assert!(pc >= 4 && pb >= 3, "handshake, request, FINs: {l}");
        assert!(bc >= up + 40 * pc, "{up} request bytes: {l}");
        assert!(
            bb > down + 40 * pb,
            "{down} body bytes and the headers: {l}"
        );
        assert!(bb < down + 2000, "{down} body bytes: {l}");
        assert!(
            l["duration_s"]
                .as_f64()
                .is_some_and(|d| (0.0..2.0).contains(&d)),
            "{l}"
        );
        assert!(l["time"].as_str().is_some_and(|s| s.ends_with('Z')), "{l}");
    }
    assert_eq!(backends.len(), 2, "both backends served: {backends:?}");

    // logrotate: rename, then `lbctl log reopen`: new lines in a new file.
    let first = log.with_extension("log.1");
    std::fs::rename(&log, &first).expect("rename");
    lbctl_log_reopen(&t);
    assert!(log.exists(), "reopened at the old path");
    let (port, _, _) = curl(&t);
    let got = wait_lines(&t, &log, 1, 30);
    assert_eq!(count_where(&got, port), 1, "{got:#?}");
    assert_eq!(
        lines(&first).len(),
        reqs.len(),
        "the rotated file is left alone"
    );

    // The same with SIGUSR1.
    let second = log.with_extension("log.2");
    std::fs::rename(&log, &second).expect("rename");
    t.signal(libc::SIGUSR1);
    t.wait_for(10, "the log reopened on SIGUSR1", |_| log.exists());
    let (port, _, _) = curl(&t);
    let got = wait_lines(&t, &log, 1, 30);
    assert_eq!(count_where(&got, port), 1, "{got:#?}");
    assert_eq!(lines(&second).len(), 1);

    // A reload moves the log while a connection is open: its line goes to
    // the new file when it ends, nothing is lost.
    let moved = t.run.join("moved.log");
    let mut held = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.ns("client"),
            "timeout",
            "30",
            "python3",
            "-c",
        ])
        .arg(HOLD)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 on the client");
    let mut first_line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(held.stdout.take().expect("stdout")),
        &mut first_line,
    )
    .expect("the held connection's port");
    let held_port: u64 = first_line.trim().parse().expect("a port");
    let out = t.reload(&config(&moved));
    assert!(
        out.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = held.wait().expect("python3");
    assert!(
        status.success(),
        "the held connection was served throughout"
    );
    let (port, _, _) = curl(&t);
    let got = wait_lines(&t, &moved, 2, 30);
    assert_eq!(count_where(&got, port), 1, "{got:#?}");
    assert_eq!(count_where(&got, held_port), 1, "{got:#?}");
    assert_eq!(count_where(&lines(&log), held_port), 0);

    // wrk: a connection per request, two workers; every session written,
    // none dropped.
    let before = t.stats()["access_log_records"].as_u64().unwrap_or(0);
    let secs = 5;
    let out = t.exec(
        "client",
        &[
            "timeout",
            "30",
            "wrk",
            "-t2",
            "-c32",
            &format!("-d{secs}s"),
            "--timeout",
            "2s",
            "-H",
            "Connection: close",
            "http://198.18.0.10:80/",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let requests: u64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("wrk: {text}"));
    assert!(requests > 100, "wrk: {text}");
    // Every session ends within the closed timeout (5 s) and the sweep.
    t.wait_for(30, "every wrk session written", |t| {
        t.stats()["access_log_records"].as_u64().unwrap_or(0) >= before + requests
    });
    std::thread::sleep(Duration::from_secs(6));
    let s = t.stats();
    let written = s["access_log_records"].as_u64().unwrap_or(0) - before;
    assert_eq!(s["access_log_dropped"], 0, "{s}");
    // Connections wrk opened but had not finished at its end come on top.
    assert!(
        (requests..=requests + 64).contains(&written),
        "{written} lines for {requests} requests"
    );
    let rate = written as f64 / secs as f64;
    eprintln!(
        "access log under wrk -t2 -c32 -d{secs}s, Connection: close: {written} records in {secs} s = {rate:.0} records/s, 0 dropped"
    );
    let on_file = lines(&moved).len() as u64;
    assert_eq!(on_file, 2 + written, "lines on file");

    let m = t.metrics();
    assert!(
        m.lines()
            .any(|l| l.starts_with("lbd_access_log_records_total ") && !l.ends_with(" 0")),
        "metrics: {m}"
    );
    assert!(
        m.lines().any(|l| l == "lbd_access_log_dropped_total 0"),
        "metrics: {m}"
    );
}

/// A connection opened, used, held for 3 s (a reload happens then), used
/// again and closed; prints its client port first.
const HOLD: &str = "import socket, sys, time
s = socket.create_connection(('198.18.0.10', 80), timeout=5)
s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')
assert b'200 OK' in s.recv(4096)
print(s.getsockname()[1]); sys.stdout.flush()
time.sleep(3)
s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')
assert b'200 OK' in s.recv(4096)
while s.recv(4096):
    pass
s.close()
";
