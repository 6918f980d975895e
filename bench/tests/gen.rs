//! `bench gen` end to end: the namespace topology of scripts/netns.sh with
//! `lbd` running the seed configuration that denies port 81; the generator
//! sends from the client's link and counts on the switch port that faces
//! the load balancer's backend link.
//!
//! At 20 000 pps for 2 s with new, established and denied traffic it
//! checks that new and established frames arrive (every loss beyond 3 %
//! must be one lbd counts as dropped by its own RX ring), that no denied
//! frame arrives, and that a latency distribution is reported.
//!
//! The generator runs in-process (`gen::run`): it opens its TX port in the
//! client namespace and its RX port in the switch namespace from threads
//! that `setns` there (a socket keeps the namespace it was made in). It
//! sends from on-link client addresses of lbd's ext port (198.18.0.100 to
//! .200) and answers lbd's ARP requests for them itself: lbd keeps its own
//! neighbour table, which no `ip neigh` in a namespace could pre-load.
//!
//! Runs as root only (network namespaces); elsewhere it prints
//! `SKIPPED <test>: <reason>` and passes, or fails under CI
//! (`lb-dataplane/tests/common/skip.rs`).
//!
//! `lbd` is a binary of another package, so `CARGO_BIN_EXE_lbd` does not
//! exist here (artifact dependencies are unstable). The test runs
//! `cargo build -p lb-dataplane --bin lbd --bin lbctl` with the cargo, the
//! target directory and the profile of its own build (a no-op when
//! `cargo build --workspace` already built them, and never a stale binary),
//! and takes the binaries next to its own executable.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lb_bench::gen::{self, Class, Mix, Opts, SrcNet};

mod common;
#[path = "../../lb-dataplane/tests/common/skip.rs"]
mod skip;

use common::repo;

/// Why this machine cannot run the test, if it cannot.
fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces)".into());
    }
    // nginx keeps the backends' health checks green; netns.sh would
    // install it, a test must not.
    for tool in ["ip", "ethtool", "nginx"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("needs {tool}"));
        }
    }
    None
}

/// `lbd` and `lbctl`, built for the profile and target directory of this
/// test executable.
fn lbd_binaries() -> (PathBuf, PathBuf) {
    common::lbd_binaries(&[])
}

/// The topology with `lbd` in it; torn down on drop, also when the test
/// fails.
struct Topo {
    prefix: String,
    run: PathBuf,
    lbd: Option<Child>,
}

impl Topo {
    fn up() -> Topo {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("lbg{}-{n}", std::process::id() % 100_000);
        let t = Topo {
            run: PathBuf::from(format!("/tmp/{prefix}")),
            prefix,
            lbd: None,
        };
        t.netns(&["up"]);
        t.netns(&["nginx-up"]);
        t
    }

    fn netns(&self, args: &[&str]) {
        let out = Command::new("bash")
            .arg(repo().join("scripts/netns.sh"))
            .args(args)
            .env("LBT_PREFIX", &self.prefix)
            .env("LBT_RUN", &self.run)
            .output()
            .expect("run netns.sh");
        assert!(
            out.status.success(),
            "netns.sh {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.run.join("lbd.log")).unwrap_or_default()
    }

    /// Starts `lbd` with `config` and waits until it answers `lbctl stats`
    /// and has health-checked its servers (so its neighbours are known).
    fn start_lbd(&mut self, lbd: &Path, lbctl: &Path, config: &Path) {
        let control = self.run.join("lbd.sock");
        let log = std::fs::File::create(self.run.join("lbd.log")).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns("lb")])
            .arg(lbd)
            .arg("--config")
            .arg(config)
            .arg("--control")
            .arg(&control)
            .env("LBD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start lbd");
        self.lbd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let out = Command::new(lbctl)
                .args(["stats", "--json", "--control"])
                .arg(&control)
                .output()
                .expect("run lbctl");
            if out.status.success() {
                let json: String = String::from_utf8_lossy(&out.stdout)
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                if json.contains("\"checked\":true")
                    && !json.contains("\"checked\":false")
                    && !json.contains("\"up\":false")
                {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.lbd.as_mut().map(Child::try_wait) {
                panic!("lbd exited with {status}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("lbd did not come up with healthy servers:\n{}", self.log());
    }

    /// The Ethernet address of `iface` in `host`'s namespace.
    fn mac(&self, host: &str, iface: &str) -> [u8; 6] {
        let out = Command::new("ip")
            .args(["-n", &self.ns(host), "-o", "link", "show", "dev", iface])
            .output()
            .expect("ip link");
        let text = String::from_utf8_lossy(&out.stdout);
        let mac = text
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no MAC address in {text:?}"));
        gen::parse_mac(mac).expect("MAC address")
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        if let Some(mut c) = self.lbd.take() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(i32::try_from(c.id()).unwrap_or(0), libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("lbd log:\n{}", self.log());
        }
        let _ = Command::new("bash")
            .arg(repo().join("scripts/netns.sh"))
            .arg("down")
            .env("LBT_PREFIX", &self.prefix)
            .env("LBT_RUN", &self.run)
            .output();
    }
}

/// The example configuration with `syn_proxy = MODE` on its listeners.
fn seed_with_syn_proxy(mode: &str) -> String {
    let seed = std::fs::read_to_string(repo().join("examples/alb-seed-deny81.toml"))
        .expect("seed configuration");
    seed.replace(
        "server_group = \"sgp-web\"\n",
        &format!("server_group = \"sgp-web\"\nsyn_proxy = \"{mode}\"\n"),
    )
}

/// The spoofed sources of the SYN flood.
const FLOOD_SOURCES: &str = "198.18.128.0/17";

/// This file's tests' start: `None` when the machine cannot run them
/// (skipped, or failed under CI: see `skip::skip`); otherwise the lock that
/// runs them one at a time.
fn runnable() -> Option<std::sync::MutexGuard<'static, ()>> {
    if let Some(why) = unsupported() {
        skip::skip(&why);
        return None;
    }
    Some(one_at_a_time())
}

/// The tests of this file send as fast as they can and measure: one at a
/// time.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn generator_through_lbd_counts_loss_leaks_and_latency() {
    let Some(_serial) = runnable() else {
        return;
    };
    let (lbd, lbctl) = lbd_binaries();
    let mut topo = Topo::up();
    // The generator's new flows are SYNs that never complete: past 1024
    // half-open sessions the default SYN proxy would answer them itself.
    // This test measures the forwarding path.
    let config = topo.run.join("gen.toml");
    std::fs::write(&config, seed_with_syn_proxy("off")).expect("write configuration");
    topo.start_lbd(&lbd, &lbctl, &config);

    let opts = Opts {
        tx_iface: "c-eth0".into(),
        tx_netns: Some(topo.ns("client")),
        rx_iface: Some("sw-lb".into()),
        rx_netns: Some(topo.ns("sw")),
        dst_mac: topo.mac("lb", "lb-ext"),
        vip: "198.18.0.10".parse::<IpAddr>().expect("VIP"),
        port: 80,
        deny_port: 81,
        mix: "new=60,established=20,denied=20"
            .parse::<Mix>()
            .expect("mix"),
        flows: 1000,
        rate: Some(20_000),
        duration: Duration::from_secs(2),
        size: 64,
        // On-link clients of lbd's ext port (198.18.0.0/24): lbd can send
        // replies to them, after ARP, which the generator answers.
        src: "198.18.0.100-198.18.0.200"
            .parse::<SrcNet>()
            .expect("sources"),
        drain: Duration::from_millis(500),
        seed: 7,
    };
    let t0 = Instant::now();
    let report = gen::run(&opts).expect("generator run");
    println!("{report}");
    let stats = Command::new(&lbctl)
        .args(["stats", "--control"])
        .arg(topo.run.join("lbd.sock"))
        .output()
        .expect("run lbctl");
    println!("lbctl stats:\n{}", String::from_utf8_lossy(&stats.stdout));
    assert!(t0.elapsed() < Duration::from_secs(15), "bounded run");

    for c in [Class::New, Class::Established, Class::Denied] {
        assert!(report.sent(c) > 0, "{c:?} traffic was sent");
    }
    let total: u64 = [Class::New, Class::Established, Class::Denied]
        .iter()
        .map(|&c| report.sent(c))
        .sum();
    assert!(
        (30_000..=41_000).contains(&total),
        "about 20 000 pps for 2 s (never more): {total}"
    );
    // What lbd itself counts as dropped by its client-side RX ring: at
    // light load each ring block is handed over after 1 ms with a few
    // frames in it, so a worker stalled for more than ~16 ms (a debug
    // build on a busy two-core machine) loses frames there. Those losses
    // are lbd's, and visible in its stats; every other frame must arrive.
    let stats = String::from_utf8_lossy(&stats.stdout);
    let lbd_ring_drops: u64 = stats
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&"ext"))
        .and_then(|w| w.get(2)?.parse().ok())
        .expect("lbctl stats: the ext port's rx_drop");
    let mut lost = 0;
    let mut sent = 0;
    for c in [Class::New, Class::Established] {
        let loss = report.loss(c).expect("a receiver");
        assert!(loss < 0.25, "{c:?} loss {:.2} %", loss * 100.0);
        sent += report.sent(c);
        lost += report.sent(c) - report.received(c).expect("a receiver");
    }
    let unexplained = lost.saturating_sub(lbd_ring_drops);
    println!("lost {lost} of {sent}; lbd's ext RX ring dropped {lbd_ring_drops}");
    assert!(
        (unexplained as f64) < 0.03 * sent as f64,
        "{unexplained} of {sent} new/established frames lost beyond lbd's own ring drops"
    );
    assert_eq!(report.received(Class::Denied), Some(0), "denied leaked");
    assert!(
        report.flows_opened.unwrap_or(0) >= 990,
        "the established flows were opened: {:?}",
        report.flows_opened
    );
    let lat = report.latency().expect("latency samples");
    assert!(lat.p50_us > 0.0 && lat.p50_us <= lat.p99_us && lat.p99_us <= lat.max_us);
    assert!(
        report.neighbor_replies > 0,
        "lbd asked for the clients' addresses and got answers"
    );
}

/// The legitimate side of a SYN flood, run in the client namespace:
/// `threads` clients each open connections to `vip`:80 one after another
/// until `secs` have passed (each an HTTP request and its answer within
/// `timeout` seconds), while one keep-alive connection opened before the
/// flood sends a request every 50 ms. Prints `attempts ok keepalive_ok
/// keepalive_failed`.
const LEGIT_CLIENTS: &str = r#"
import socket, sys, threading, time
vip, secs, threads, timeout = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
lock = threading.Lock()
counts = {"attempts": 0, "ok": 0, "ka_ok": 0, "ka_fail": 0}
REQ = b"GET / HTTP/1.1\r\nHost: lb\r\n\r\n"
def answer(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise IOError("closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    n = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            n = int(line.split(b":")[1])
    while len(body) < n:
        chunk = s.recv(4096)
        if not chunk:
            raise IOError("closed")
        body += chunk
    return head.startswith(b"HTTP/1.1 200")
# The keep-alive connection waits longer: a request lost in an RX ring
# that the flood overflows is sent again, after a growing timeout.
ka = socket.create_connection((vip, 80), timeout=3 * timeout)
end = time.time() + secs
def keepalive():
    while time.time() < end:
        try:
            ka.sendall(REQ)
            good = answer(ka)
        except Exception:
            good = False
        with lock:
            counts["ka_ok" if good else "ka_fail"] += 1
        time.sleep(0.05)
def client():
    while time.time() < end:
        good = False
        try:
            s = socket.create_connection((vip, 80), timeout=timeout)
            s.settimeout(timeout)
            s.sendall(REQ)
            good = answer(s)
            s.close()
        except Exception:
            pass
        with lock:
            counts["attempts"] += 1
            counts["ok"] += good
ts = [threading.Thread(target=keepalive)] + [threading.Thread(target=client) for _ in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
print(counts["attempts"], counts["ok"], counts["ka_ok"], counts["ka_fail"])
"#;

/// A spoofed SYN flood from the client link, as fast as the generator
/// sends, against `lbd` at its default settings (the SYN proxy on
/// "auto"): at least 99 % of the legitimate connections succeed, and an
/// established keep-alive connection sees no failure. The flood's rate
/// and the figures are printed. `LB_SYNFLOOD_SECS` (default 4) sets its
/// length and `LB_SYNFLOOD_PROXY` (off, on, auto) the listeners' proxy,
/// for measurements.
#[test]
fn a_spoofed_syn_flood_leaves_legitimate_clients_served() {
    let Some(_serial) = runnable() else {
        return;
    };
    let secs: u64 = std::env::var("LB_SYNFLOOD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4)
        .clamp(1, 60);
    let (lbd, lbctl) = lbd_binaries();
    let mut topo = Topo::up();
    let config = match std::env::var("LB_SYNFLOOD_PROXY") {
        Ok(mode) => seed_with_syn_proxy(&mode),
        // The defaults.
        Err(_) => std::fs::read_to_string(repo().join("examples/alb-seed-deny81.toml"))
            .expect("seed configuration"),
    };
    // The flood's sources route through the client link (as the Internet
    // does behind a default route), so they pass the source check and
    // reach the listener: what is tested is the SYN flood defences.
    let config = format!(
        "{config}\n[[route]]\ndestination = \"{FLOOD_SOURCES}\"\nvia = \"198.18.0.2\"\nport = \"ext\"\n"
    );
    let config_path = topo.run.join("synflood.toml");
    std::fs::write(&config_path, config).expect("write configuration");
    topo.start_lbd(&lbd, &lbctl, &config_path);
    let script = topo.run.join("legit.py");
    std::fs::write(&script, LEGIT_CLIENTS).expect("write client script");

    // The legitimate clients start first and run as long as the flood.
    let legit = Command::new("ip")
        .args(["netns", "exec", &topo.ns("client"), "python3"])
        .arg(&script)
        .args(["198.18.0.10", &(secs + 1).to_string(), "8", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the legitimate clients");
    std::thread::sleep(Duration::from_millis(500));
    let opts = Opts {
        tx_iface: "c-eth0".into(),
        tx_netns: Some(topo.ns("client")),
        rx_iface: None,
        rx_netns: None,
        dst_mac: topo.mac("lb", "lb-ext"),
        vip: "198.18.0.10".parse::<IpAddr>().expect("VIP"),
        port: 80,
        deny_port: 81,
        mix: "new=100".parse::<Mix>().expect("mix"),
        flows: 1,
        rate: None,
        duration: Duration::from_secs(secs),
        size: 64,
        // Spoofed: sources nobody answers for.
        src: FLOOD_SOURCES.parse::<SrcNet>().expect("sources"),
        drain: Duration::from_millis(100),
        seed: 11,
    };
    let report = gen::run(&opts).expect("flood");
    let flood = report.sent(Class::New);
    let out = legit.wait_with_output().expect("legitimate clients");
    let text = String::from_utf8_lossy(&out.stdout);
    let stats = Command::new(&lbctl)
        .args(["stats", "--control"])
        .arg(topo.run.join("lbd.sock"))
        .output()
        .expect("run lbctl");
    println!("lbctl stats:\n{}", String::from_utf8_lossy(&stats.stdout));
    let json = Command::new(&lbctl)
        .args(["stats", "--json", "--control"])
        .arg(topo.run.join("lbd.sock"))
        .output()
        .expect("run lbctl");
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("stats JSON");
    let spoofed = json["drops"]["spoofed_source"].as_u64().unwrap_or(0);
    let met = ["syn_cookies_sent", "early_drops", "half_open"]
        .map(|k| json["syn_flood"][k].as_u64().unwrap_or(0));
    println!("spoofed_source drops {spoofed}; syn flood counters (cookies sent, early drops, half-open) {met:?}");
    let n: Vec<u64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [attempts, ok, ka_ok, ka_fail] = n[..] else {
        panic!(
            "client output {text:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    println!(
        "flood: {flood} SYNs in {secs} s ({} SYN/s); legitimate: {ok} of {attempts} connections; keep-alive: {ka_ok} ok, {ka_fail} failed",
        flood / secs
    );
    assert!(flood > 10_000 * secs, "the flood ran: {flood}");
    assert!(
        spoofed * 100 < flood,
        "the flood reached the listener: {spoofed} of {flood} dropped as spoofed"
    );
    assert!(attempts >= 20, "the clients ran: {attempts}");
    assert!(
        ok * 100 >= attempts * 99,
        "{ok} of {attempts} legitimate connections succeeded"
    );
    assert!(
        ka_ok > 0 && ka_fail == 0,
        "keep-alive: {ka_ok} ok, {ka_fail} failed"
    );
}
