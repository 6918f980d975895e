//! End to end: listener limits on the seed load balancer (two workers,
//! nginx backends). Beyond `max_connections` or
//! `max_new_connections_per_s`, new connections are refused (their SYNs
//! dropped as `listener_limit`) while the open ones keep working. Needs
//! root, iproute2, ethtool, nginx and python3.

mod common;

use common::{lock, seed_config, wait_healthy, Topo};

/// Runs a Python script on the client and parses its last line of output
/// as whitespace-separated numbers. Bounded by `timeout`.
fn client_numbers(t: &Topo, script: &str) -> Vec<f64> {
    let out = t.exec("client", &["timeout", "60", "python3", "-c", script]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "client script: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

const HELPERS: &str = r#"
import socket, time
def connect(port, timeout):
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect(("198.18.0.10", port))
        return s
    except OSError:
        s.close()
        return None
def get(s):
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        return b"200 OK" in s.recv(4096)
    except OSError:
        return False
"#;

#[test]
fn listener_limits_refuse_new_connections_and_keep_open_ones() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    let cfg = seed_config("", "", (100, 100))
        .replacen(
            "port = 80\nserver_group = \"sgp-web\"\n",
            "port = 80\nserver_group = \"sgp-web\"\nmax_connections = 20\n",
            1,
        )
        .replacen(
            "port = 81\nserver_group = \"sgp-web\"\n",
            "port = 81\nserver_group = \"sgp-web\"\nmax_new_connections_per_s = 50\n",
            1,
        );
    assert!(cfg.contains("max_connections = 20") && cfg.contains("per_s = 50"));
    t.start_lbd_with(&cfg, &["--metrics", "127.0.0.1:9464"]);
    wait_healthy(&t);

    // 40 connections held open to port 80: 20 get in (one more per worker
    // at most, when both take the last room at once).
    let held = client_numbers(
        &t,
        &format!(
            "{HELPERS}
socks = [connect(80, 0.5) for _ in range(40)]
open_ = [s for s in socks if s]
ok = sum(get(s) for s in open_)
time.sleep(1)
# The open ones keep working while new ones are refused.
again = sum(get(s) for s in open_)
late = connect(80, 0.5)
print(len(open_), ok, again, 0 if late is None else 1)
"
        ),
    );
    let (open, ok, again, late) = (held[0], held[1], held[2], held[3]);
    assert!((20.0..=21.0).contains(&open), "connections in: {held:?}");
    assert_eq!(ok, open, "every open connection is served: {held:?}");
    assert_eq!(again, open, "and still is: {held:?}");
    assert_eq!(late, 0.0, "a new one is refused while they are open");
    let s = t.stats();
    assert!(
        s["drops"]["listener_limit"].as_u64().unwrap_or(0) >= 19,
        "{}",
        s["drops"]
    );

    // New connections per second on port 81, each closed at once, as fast
    // as the client opens them for three seconds, while one connection
    // opened first keeps being served.
    let rate = client_numbers(
        &t,
        &format!(
            "{HELPERS}
keep = connect(81, 2.0)
assert keep and get(keep)
t0 = time.time(); n = 0; served = 0; tries = 0
while time.time() - t0 < 3.0:
    tries += 1
    s = connect(81, 0.05)
    if s:
        n += 1
        s.close()
    if tries % 20 == 0:
        served += get(keep)
print(n / (time.time() - t0), served, tries // 20)
"
        ),
    );
    let (cps, served, asked) = (rate[0], rate[1], rate[2]);
    eprintln!("max_new_connections_per_s = 50: {cps:.1} new connections per second measured");
    // The bucket holds one second's worth at the start: at most 50 more
    // over three seconds.
    assert!(cps <= 50.0 + 50.0 / 3.0 + 5.0, "cps {cps}");
    assert!(cps >= 30.0, "cps {cps}: the rate is let through");
    assert_eq!(served, asked, "the open connection is served throughout");
    let m = t.metrics();
    assert!(
        m.lines().any(
            |l| l.starts_with("lbd_drops_total{reason=\"listener_limit\"}") && !l.ends_with(" 0")
        ),
        "metrics: {m}"
    );
    // Per listener: both refused, each in its own count.
    let s = t.stats();
    for port in ["80", "81"] {
        let l = s["listeners"]
            .as_array()
            .and_then(|v| {
                v.iter()
                    .find(|l| l["listener"] == format!("alb-1:{port}"))
                    .cloned()
            })
            .unwrap_or_else(|| panic!("listener {port}: {}", s["listeners"]));
        assert!(l["listener_limit"].as_u64().unwrap_or(0) > 0, "{l}");
    }
    assert!(
        m.lines().any(
            |l| l.starts_with("lbd_listener_limit_drops_total{listener=\"alb-1:81\"}")
                && !l.ends_with(" 0")
        ),
        "metrics: {m}"
    );
}
