//! End to end: draining a server and its slow start, on the seed load
//! balancer (two workers, nginx backends).
//!
//! - Drain under load: `wrk` opens a new connection per request while
//!   `lbctl server drain` drains ecs02; no request fails, no new connection
//!   reaches ecs02 (lbd's per-server count and nginx's access log), the
//!   connections it had keep being served until the drain deadline, when
//!   lbd drops them (counted) and its sessions reach 0.
//! - Slow start: ecs02 goes down and comes back; its share of new
//!   connections grows over `slow_start_s`, measured at a few points.
//!
//! Needs root, iproute2, ethtool, nginx, python3 and wrk.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{lock, seed_config, wait_healthy, Topo};

/// Whether `wrk` is here; without it the test is skipped, or fails under
/// CI (see `common::skip`).
fn have_wrk() -> bool {
    let found = Command::new("sh")
        .args(["-c", "command -v wrk"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        common::skip::skip("needs wrk (CI installs it: .ci/run)");
    }
    found
}

/// Starts `script` with `args` in Python on the client (at most 60 s),
/// its output piped.
fn python_on_client(t: &Topo, script: &str, args: &[&str]) -> std::process::Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.ns("client"),
            "timeout",
            "60",
            "python3",
            "-c",
        ])
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 on the client")
}

/// Seconds since the Unix epoch: the clock the client scripts and the test
/// share (a loaded machine may start a script late).
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `lbctl server …` against the topology's lbd.
fn server_cmd(t: &Topo, args: &[&str]) -> String {
    let mut all = vec!["server"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--control", t.control.to_str().expect("utf-8 path")]);
    let out = t.lbctl(&all);
    assert!(
        out.status.success(),
        "lbctl {all:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `lbctl stats` entry of server `name` of `sgp-web`.
fn server(t: &Topo, name: &str) -> serde_json::Value {
    let s = t.stats();
    s["servers"]
        .as_array()
        .and_then(|v| {
            v.iter()
                .find(|v| v["group"] == "sgp-web" && v["server"] == name)
                .cloned()
        })
        .unwrap_or_else(|| panic!("no server {name}: {s}"))
}

fn num(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Requests in a backend's nginx access log that came through the load
/// balancer's listener: not the kept-alive connections (User-Agent
/// `keeper`), not the health checks.
fn logged_requests(t: &Topo, backend: u8) -> Vec<String> {
    std::fs::read_to_string(t.run.join(format!("be{backend}/access.log")))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.contains("keeper") && !l.contains("lbd-health-check"))
        .map(str::to_string)
        .collect()
}

/// Six HTTP/1.1 connections kept alive, each asked every 0.5 s for `secs`
/// seconds; prints one JSON object per connection: the backend that
/// answered first, the answers, and the time of the first failure (Unix
/// time, as [`unix_now`]).
const KEEPERS: &str = r#"
import json, socket, sys, time
secs = float(sys.argv[1])
conns = []
for _ in range(6):
    s = socket.create_connection(("198.18.0.10", 80), timeout=5)
    conns.append({"s": s, "backend": None, "ok": 0, "failed_at": None})
t0 = time.time()
while time.time() - t0 < secs:
    for c in conns:
        if c["failed_at"] is not None:
            continue
        try:
            c["s"].sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: keeper\r\n\r\n")
            body = c["s"].recv(4096)
            if b"200 OK" not in body:
                raise OSError("no answer")
            name = "ECS01" if b"ECS01" in body else "ECS02" if b"ECS02" in body else "?"
            c["backend"] = c["backend"] or name
            c["ok"] += 1
        except OSError:
            c["failed_at"] = time.time()
    time.sleep(0.5)
print(json.dumps([{k: v for k, v in c.items() if k != "s"} for c in conns]))
"#;

#[test]
fn draining_a_server_under_load_fails_no_request_and_ends_its_sessions_at_the_deadline() {
    require_netns!();
    if !have_wrk() {
        return;
    }
    let _g = lock();
    let mut t = Topo::up();
    let cfg = seed_config("", "", (100, 100));
    t.start_lbd_with(&cfg, &["--metrics", "127.0.0.1:9464"]);
    wait_healthy(&t);

    let start = Instant::now();
    let keepers = python_on_client(&t, KEEPERS, &["13"]);
    // A new connection per request, for 8 s.
    let wrk = Command::new("ip")
        .args(["netns", "exec", &t.ns("client"), "timeout", "60"])
        .args(["wrk", "-t2", "-c8", "-d8s", "--timeout", "5s"])
        .args(["-H", "Connection: close", "http://198.18.0.10:80/"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wrk");

    std::thread::sleep(Duration::from_secs(3));
    let before = server(&t, "ecs02");
    assert!(
        num(&before["total_sessions"]) > 10,
        "ecs02 took connections: {before}"
    );
    let out = server_cmd(&t, &["drain", "sgp-web", "ecs02", "--deadline", "6"]);
    let drained_at = start.elapsed().as_secs_f64();
    let drained_unix = unix_now();
    assert!(out.contains("drained: ecs02:80"), "{out}");
    // Connections opened before the command may still be answered, and
    // the workers publish their counts every 100 ms.
    std::thread::sleep(Duration::from_millis(1000));
    let sessions_mark = num(&server(&t, "ecs02")["total_sessions"]);
    let log_mark = logged_requests(&t, 2);
    let st = server(&t, "ecs02");
    assert_eq!(st["state"], "draining", "{st}");
    assert_eq!(st["effective_weight"], 0.0);

    let wrk = wrk.wait_with_output().expect("wrk ran");
    let report = String::from_utf8_lossy(&wrk.stdout).into_owned();
    assert!(
        wrk.status.success(),
        "wrk: {report}{}",
        String::from_utf8_lossy(&wrk.stderr)
    );
    let requests: u64 = report
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let failed = report.contains("Socket errors") || report.contains("Non-2xx");
    eprintln!(
        "drain under wrk: {requests} requests, each on a new connection, drain at {drained_at:.1} s; failed: {}",
        if failed { report.as_str() } else { "none" }
    );
    assert!(requests > 100, "wrk ran: {report}");
    assert!(!failed, "no request fails during the drain: {report}");
    let after = server(&t, "ecs02");
    let ecs01 = server(&t, "ecs01");
    assert_eq!(
        num(&after["total_sessions"]),
        sessions_mark,
        "no new session reached ecs02 after the drain: {after}"
    );
    let logged = logged_requests(&t, 2);
    assert_eq!(
        logged.len(),
        log_mark.len(),
        "no new request in ecs02's access log after the drain: {:?}",
        &logged[log_mark.len().min(logged.len())..]
    );
    assert!(
        num(&ecs01["total_sessions"]) > sessions_mark,
        "ecs01 took the load: {ecs01}"
    );

    // The kept-alive connections: ecs02's are served until the deadline
    // (drain + 6 s), then dropped; ecs01's throughout.
    let kept = keepers.wait_with_output().expect("keepers ran");
    let text = String::from_utf8_lossy(&kept.stdout).into_owned();
    let conns: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "keepers: {e}: {text}{}",
            String::from_utf8_lossy(&kept.stderr)
        )
    });
    let deadline = drained_unix + 6.0;
    let mut on_2 = 0;
    for c in conns.as_array().expect("connections") {
        let failed_at = c["failed_at"].as_f64();
        match c["backend"].as_str() {
            Some("ECS02") => {
                on_2 += 1;
                let f = failed_at.unwrap_or_else(|| panic!("ended at the deadline: {c}"));
                assert!(
                    f > deadline - 0.5 && f < deadline + 4.0,
                    "served until the deadline ({deadline:.1}), not after: {c}"
                );
            }
            Some("ECS01") => assert!(failed_at.is_none(), "ecs01 served throughout: {c}"),
            _ => panic!("{c}"),
        }
    }
    assert!(on_2 > 0, "a kept connection went to ecs02: {conns}");
    eprintln!("kept-alive connections: {conns}");

    t.wait_for(5, "ecs02 without sessions", |t| {
        num(&server(t, "ecs02")["active_sessions"]) == 0
    });
    let s = t.stats();
    assert!(
        num(&s["drain_closed"]) >= on_2,
        "dropped at the deadline: {}",
        s["drain_closed"]
    );
    let m = t.metrics();
    assert!(
        m.contains(
            "lbd_server_state{group=\"sgp-web\",server=\"ecs02\",port=\"80\",state=\"draining\"} 1"
        ),
        "{m}"
    );

    // A reload of the same file keeps the commanded drain.
    let out = t.reload(&cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = server(&t, "ecs02");
    assert_eq!(st["state"], "draining", "after a reload: {st}");
    assert_eq!(st["drained_by"], "command");
    assert!((0..10).all(|_| t.backend_of("http://198.18.0.10:80/").as_deref() == Some("ECS01")));

    // Undrain: ecs02 takes new connections again.
    let out = server_cmd(&t, &["undrain", "sgp-web", "ecs02"]);
    assert!(out.contains("undrained: ecs02:80"), "{out}");
    t.wait_for(10, "ecs02 answering again", |t| {
        (0..10).any(|_| t.backend_of("http://198.18.0.10:80/").as_deref() == Some("ECS02"))
    });
}

/// New connections from the client for `secs` seconds; prints its start
/// (Unix time) and, per `bucket` seconds, how many reached ECS01, ECS02,
/// and neither.
const SHARES: &str = r#"
import json, socket, sys, time
secs, bucket = float(sys.argv[1]), float(sys.argv[2])
counts = {}
t0 = time.time()
while time.time() - t0 < secs:
    k = int((time.time() - t0) / bucket)
    try:
        s = socket.create_connection(("198.18.0.10", 80), timeout=3)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = s.recv(4096)
        s.close()
    except OSError:
        body = b""
    c = counts.setdefault(k, [0, 0, 0])
    c[0 if b"ECS01" in body else 1 if b"ECS02" in body else 2] += 1
print(json.dumps({"t0": t0, "buckets": [counts.get(k, [0, 0, 0]) for k in range(int(secs / bucket))]}))
"#;

#[test]
fn a_server_that_comes_back_ramps_its_share_over_slow_start() {
    require_netns!();
    ramp_after_coming_back("wrr", 20);
}

#[test]
fn a_server_that_comes_back_ramps_its_share_of_the_maglev_table() {
    require_netns!();
    ramp_after_coming_back("maglev", 5);
}

/// ecs02 goes down and comes back under `scheduler`, whose ramp has
/// `steps` steps over `slow_start_s = 10`: its share of new connections,
/// per 2 s, follows the ramp.
fn ramp_after_coming_back(scheduler: &str, steps: u32) {
    let _g = lock();
    let mut t = Topo::up();
    let cfg = seed_config("", "", (100, 100)).replacen(
        "id = \"sgp-web\"\nscheduler = \"wrr\"\n",
        &format!("id = \"sgp-web\"\nscheduler = \"{scheduler}\"\nslow_start_s = 10\n"),
        1,
    );
    assert!(cfg.contains("slow_start_s = 10"));
    t.start_lbd(&cfg);
    wait_healthy(&t);
    assert_eq!(server(&t, "ecs02")["state"], "up");

    t.netns(&["nginx-stop", "2"]);
    t.wait_for(15, "ecs02 down", |t| {
        t.server_up("sgp-web", "ecs02") == Some(false)
    });
    assert_eq!(server(&t, "ecs02")["state"], "down");
    assert_eq!(server(&t, "ecs02")["effective_weight"], 0.0);

    // Measure from before it comes back until well after its ramp.
    let shares = python_on_client(&t, SHARES, &["22", "2"]);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    t.netns(&["nginx-start", "2"]);
    // When lbd sees it up and starts the ramp.
    let mut ramp_at = None;
    let mut seen = Vec::new();
    while start.elapsed() < Duration::from_secs(21) {
        let s = server(&t, "ecs02");
        let at = start.elapsed().as_secs_f64();
        if ramp_at.is_none() && s["state"] == "ramping" {
            ramp_at = Some(unix_now());
        }
        seen.push((
            at,
            s["state"].as_str().unwrap_or("?").to_string(),
            s["effective_weight"].as_f64().unwrap_or(-1.0),
        ));
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = shares.wait_with_output().expect("client ran");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "client: {e}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let buckets: Vec<[u64; 3]> = serde_json::from_value(v["buckets"].clone()).expect("buckets");
    // In seconds since the client started.
    let ramp_at = ramp_at.unwrap_or_else(|| panic!("never ramping: {seen:?}"))
        - v["t0"].as_f64().expect("t0");
    let share = |b: &[u64; 3]| b[1] as f64 / (b[0] + b[1]).max(1) as f64;
    let table: Vec<String> = buckets
        .iter()
        .enumerate()
        .map(|(i, b)| {
            format!(
                "{:>4.1}..{:>4.1} s after the ramp began: ecs02 {:>5.1} % of {} connections",
                (i * 2) as f64 - ramp_at,
                (i * 2 + 2) as f64 - ramp_at,
                share(b) * 100.0,
                b[0] + b[1]
            )
        })
        .collect();
    eprintln!(
        "slow_start_s = 10, weights 100/100 ({scheduler}):\n{}",
        table.join("\n")
    );
    eprintln!("ecs02 as lbctl stats showed it: {seen:?}");
    // The buckets wholly inside the ramp, wholly after it.
    // The share ecs02 gets `x` s into the ramp (weights 100 and its
    // step's), averaged over a bucket.
    let k_max = f64::from(steps);
    let expected = |from: f64| {
        let at = |x: f64| {
            let k = (x / 10.0 * k_max).floor().clamp(0.0, k_max);
            let w = if k >= k_max {
                100.0
            } else {
                100.0 * (2.0 * k + 1.0) / (2.0 * k_max)
            };
            w / (100.0 + w)
        };
        (0..20)
            .map(|i| at(from + 2.0 * f64::from(i) / 20.0))
            .sum::<f64>()
            / 20.0
    };
    // Buckets wholly inside the ramp (as far as lbctl's 0.5 s polling
    // tells its start), and wholly after it.
    let during: Vec<(f64, f64)> = buckets
        .iter()
        .enumerate()
        .map(|(i, b)| ((i * 2) as f64 - ramp_at, share(b)))
        .filter(|&(from, _)| from >= 0.0 && from + 2.0 <= 10.0)
        .collect();
    let after: Vec<f64> = buckets
        .iter()
        .enumerate()
        .filter(|(i, _)| (*i * 2) as f64 >= ramp_at + 10.5)
        .map(|(_, b)| share(b))
        .collect();
    assert!(during.len() >= 3 && !after.is_empty(), "{table:?}");
    // A loaded machine may time out a request now and then.
    let failed: u64 = buckets.iter().map(|b| b[2]).sum();
    let total: u64 = buckets.iter().map(|b| b[0] + b[1] + b[2]).sum();
    assert!(failed * 50 <= total, "requests answered: {buckets:?}");
    for &(from, got) in &during {
        let want = expected(from);
        assert!(
            (got - want).abs() <= 0.1,
            "{from:.1} s into the ramp: {got:.3}, the ramp gives {want:.3}: {table:?}"
        );
    }
    let (first, last) = (during[0].1, during[during.len() - 1].1);
    assert!(last > first + 0.1, "the share grows: {table:?}");
    for a in &after {
        assert!((0.4..=0.6).contains(a), "half after the ramp: {table:?}");
    }
    assert_eq!(server(&t, "ecs02")["state"], "up");
}
