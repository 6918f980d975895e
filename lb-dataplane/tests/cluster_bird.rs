//! The routing daemon driven for real: BIRD 2 on a node (in a network
//! namespace) includes the file lbd's driver writes, and announces over
//! BGP (with BFD) to a second BIRD acting as the upstream router. The
//! router's table follows the servers' health, a drain and a clean stop.
//!
//! The node's lbd state is `Shared::offline` (no ports, no workers): the
//! test sets the servers' health and the drain directly, and runs the
//! driver thread as lbd does.

#[path = "common/skip.rs"]
mod skip;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_dataplane::daemon::Shared;

/// Why this machine cannot run the test, if it cannot.
fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces)".into());
    }
    for tool in ["ip", "ethtool", "bird", "birdc"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("needs {tool} (CI installs bird2: .ci/run)"));
        }
    }
    None
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Two namespaces joined by a veth (node 198.18.10.11, router
/// 198.18.10.1), a BIRD in each; removed on drop, also on failure.
struct Bed {
    prefix: String,
    dir: PathBuf,
}

impl Bed {
    /// The node's end of the link is `node_dev`; with `node_addr` it
    /// carries the node's address (standing in for lbd's TAP), else lbd
    /// owns it as its port and makes the TAP itself.
    fn new(node_dev: &str, node_addr: bool) -> Bed {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "lbcb{}x{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("{prefix}-bird"));
        let bed = Bed { prefix, dir };
        bed.cleanup();
        std::fs::create_dir_all(&bed.dir).expect("a run directory");
        let (node, rtr) = (bed.ns("node"), bed.ns("rtr"));
        for ns in [&node, &rtr] {
            run(&["ip", "netns", "add", ns]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let ip = |ns: &str, args: &str| {
            let mut all = vec!["ip", "-n", ns];
            all.extend(args.split(' '));
            run(&all);
        };
        ip(
            &node,
            &format!("link add {node_dev} type veth peer name lbcb-up netns {rtr}"),
        );
        if node_addr {
            ip(&node, &format!("addr add 198.18.10.11/24 dev {node_dev}"));
        }
        ip(&rtr, "addr add 198.18.10.1/24 dev lbcb-up");
        ip(&node, &format!("link set {node_dev} up"));
        ip(&rtr, "link set lbcb-up up");
        bed
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn socket(&self, host: &str) -> String {
        self.path(&format!("{host}.ctl")).display().to_string()
    }

    /// Starts BIRD in `host`'s namespace with `conf`.
    fn bird(&self, host: &str, conf: &str) {
        let file = self.path(&format!("{host}.conf"));
        std::fs::write(&file, conf).expect("writing bird.conf");
        run(&[
            "ip",
            "netns",
            "exec",
            &self.ns(host),
            "bird",
            "-c",
            &file.display().to_string(),
            "-s",
            &self.socket(host),
            "-P",
            &self.path(&format!("{host}.pid")).display().to_string(),
        ]);
    }

    fn birdc(&self, host: &str, args: &[&str]) -> String {
        let out = Command::new("birdc")
            .args(["-s", &self.socket(host)])
            .args(args)
            .output()
            .expect("birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The prefixes in the router's table.
    fn router_routes(&self) -> Vec<String> {
        self.birdc("rtr", &["show", "route"])
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| w.contains('/'))
            .map(str::to_string)
            .collect()
    }

    /// Waits (at most `secs`) until the router's table holds exactly `want`.
    fn wait_routes(&self, secs: u64, want: &[&str], what: &str) -> Duration {
        let t = Instant::now();
        let mut got = Vec::new();
        while t.elapsed() < Duration::from_secs(secs) {
            got = self.router_routes();
            got.sort();
            let mut w: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            w.sort();
            if got == w {
                return t.elapsed();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{what}: the router has {got:?}, not {want:?} after {secs} s\nnode:\n{}\n{}\nrouter:\n{}",
            self.birdc("node", &["show", "protocols", "all"]),
            self.birdc("node", &["show", "route"]),
            self.birdc("rtr", &["show", "protocols"])
        );
    }

    fn cleanup(&self) {
        for host in ["node", "rtr"] {
            if let Ok(pid) = std::fs::read_to_string(self.path(&format!("{host}.pid"))) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: kill has no memory preconditions; the pid is
                    // the BIRD this test started.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
            }
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(host)])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn lbd_config(bed: &Bed) -> String {
    format!(
        r#"
[[port]]
name = "ext"
interface = "lbcb-raw"
tap = "lbcb-ext"
addresses = ["198.18.10.11/24"]
[[port]]
name = "int"
interface = "lbcb-int"
addresses = ["198.19.2.11/24"]

[[server_group]]
id = "sgp-web"
scheduler = "maglev"
[[server_group.server]]
address = "198.19.2.101"
port = 80
[[server_group.server]]
address = "198.19.2.102"
port = 80

[[load_balancer]]
id = "alb-1"
vips = ["198.18.20.10"]
local_addresses = ["198.19.2.21"]
[[load_balancer.listener]]
protocol = "tcp"
port = 80
server_group = "sgp-web"

[cluster]
node_id = 1
nodes = 3
asn = 65011
bird_config = "{}"
bird_socket = "{}"
hold_time_s = 3
keepalive_s = 1
bfd = true
bfd_interval_ms = 100
bfd_multiplier = 3

[[cluster.peer]]
address = "198.18.10.1"
asn = 65000
port = "ext"
"#,
        bed.path("bird-lbd.conf").display(),
        bed.socket("node")
    )
}

/// `{log}`: the router's log file.
const ROUTER: &str = r#"
router id 198.18.10.1;
log "{log}" all;
debug protocols { states, routes };
protocol device { scan time 1; }
protocol bfd { interface "lbcb-up" { interval 100 ms; multiplier 3; }; }
protocol bgp node1 {
  local 198.18.10.1 as 65000;
  neighbor 198.18.10.11 as 65011;
  direct;
  hold time 3;
  keepalive time 1;
  connect retry time 1;
  graceful restart off;
  bfd on;
  ipv4 { import all; export none; };
}
"#;

fn node_conf(include: &Path) -> String {
    format!(
        "router id 198.18.10.11;\nprotocol device {{ scan time 1; }}\ninclude \"{}\";\n",
        include.display()
    )
}

/// Sets every server's health (checked, and up or down).
fn set_health(shared: &Shared, up: bool) {
    let health = shared.runtime.load().health.clone();
    for si in 0..2 {
        let s = health.server(0, si).expect("a server");
        s.checked.store(true, Ordering::Relaxed);
        s.up.store(up, Ordering::Relaxed);
    }
}

#[test]
fn the_router_learns_what_the_node_announces_as_health_and_drain_change() {
    if let Some(why) = unsupported() {
        skip::skip(&why);
        return;
    }
    // lbcb-ext stands in for the TAP lbd would make.
    let bed = Bed::new("lbcb-ext", true);
    let config = bed.path("lbd.toml");
    std::fs::write(&config, lbd_config(&bed)).expect("writing lbd.toml");
    let shared: Arc<Shared> = Shared::offline(&config).expect("a valid configuration");
    let cfg = shared.runtime.load().snap.cfg.clone();

    // lbd writes the include file before anything else; BIRD is not up
    // yet: the driver's birdc fails, is counted, and is retried.
    lb_dataplane::cluster::driver::write_initial(&cfg).expect("the include file");
    let driver = {
        let shared = shared.clone();
        std::thread::spawn(move || lb_dataplane::cluster::driver::run(&*shared))
    };
    let t = Instant::now();
    while shared.cluster.bird_errors.load(Ordering::Relaxed) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no birdc failure counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(shared.cluster.last_error.lock().expect("lock").is_some());

    bed.bird(
        "rtr",
        &ROUTER.replace("{log}", &bed.path("rtr.log").display().to_string()),
    );
    bed.bird("node", &node_conf(&bed.path("bird-lbd.conf")));
    // Not checked yet: the local address only, once BGP is up.
    let took = bed.wait_routes(30, &["198.19.2.21/32"], "start");
    eprintln!("BGP up and the local address announced after {took:?}");
    assert!(shared.cluster.bird_reconfigs.load(Ordering::Relaxed) >= 1);
    let protocols = bed.birdc("node", &["show", "protocols"]);
    assert!(
        protocols.contains("lbd_peer1") && protocols.contains("Established"),
        "{protocols}"
    );
    let bfd = bed.birdc("node", &["show", "bfd", "sessions"]);
    assert!(bfd.contains("198.18.10.1") && bfd.contains("Up"), "{bfd}");
    // The node's static routes are device routes through the port.
    let node_routes = bed.birdc("node", &["show", "route"]);
    assert!(node_routes.contains("dev lbcb-ext"), "{node_routes}");

    set_health(&shared, true);
    let took = bed.wait_routes(10, &["198.18.20.10/32", "198.19.2.21/32"], "healthy");
    eprintln!("VIP announced {took:?} after its servers came up");
    // The driver records what BIRD took once birdc returns, which may be
    // after the router heard of it.
    let t = Instant::now();
    while *shared.cluster.announced.lock().expect("lock") != ["198.18.20.10/32", "198.19.2.21/32"] {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "announced not recorded"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    set_health(&shared, false);
    let took = bed.wait_routes(10, &["198.19.2.21/32"], "servers down");
    eprintln!("VIP withdrawn {took:?} after its servers went down");
    set_health(&shared, true);
    bed.wait_routes(10, &["198.18.20.10/32", "198.19.2.21/32"], "up again");

    // Drain: the VIP goes, the local address (replies) stays.
    shared.cluster.drain(None, shared.now_ns());
    let took = bed.wait_routes(10, &["198.19.2.21/32"], "drain");
    eprintln!("VIP withdrawn {took:?} after drain");
    let t = Instant::now();
    while shared.cluster.announced.lock().expect("lock").len() != 1 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "withdrawal not recorded"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = lb_dataplane::control::stats(&shared);
    assert_eq!(stats["cluster_state"], "draining");
    assert_eq!(stats["cluster"]["cluster_announced"], 1);
    let metrics = lb_dataplane::metrics::prometheus(&shared);
    for line in [
        "lbd_cluster_state{state=\"active\"} 0",
        "lbd_cluster_state{state=\"draining\"} 1",
        "lbd_cluster_announced 1",
        "lbd_sessions 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    }
    assert!(
        metrics.contains("lbd_cluster_bird_errors_total ")
            && !metrics.contains("lbd_cluster_bird_errors_total 0\n"),
        "{metrics}"
    );
    shared.cluster.undrain();
    bed.wait_routes(10, &["198.18.20.10/32", "198.19.2.21/32"], "undrain");

    // A drain with a deadline: the driver tells the workers to end
    // their sessions when it passes.
    shared
        .cluster
        .drain(Some(Duration::from_secs(1)), shared.now_ns());
    let t = Instant::now();
    while shared.cluster.end_sessions.load(Ordering::Relaxed) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "deadline not acted on"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );
    shared.cluster.undrain();
    bed.wait_routes(10, &["198.18.20.10/32", "198.19.2.21/32"], "second undrain");

    // A clean stop withdraws everything, and BGP stays up to carry it.
    let reconfigs = shared.cluster.bird_reconfigs.load(Ordering::Relaxed);
    assert!(shared.cluster.withdraw_all(Duration::from_secs(10)));
    driver.join().expect("the driver ends after the withdrawal");
    assert!(shared.cluster.bird_reconfigs.load(Ordering::Relaxed) > reconfigs);
    bed.wait_routes(5, &[], "clean stop");
    let include = std::fs::read_to_string(bed.path("bird-lbd.conf")).expect("the include");
    assert!(include.contains("# Announced: nothing."), "{include}");
    shared.stop.store(true, Ordering::Relaxed);
}

/// The files lbd renders parse in BIRD, in their variants (BFD off, an
/// IPv6 and an iBGP peer, nothing announced).
#[test]
fn rendered_files_parse_in_bird() {
    let found = Command::new("sh")
        .args(["-c", "command -v bird"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        skip::skip("needs bird (CI installs bird2: .ci/run)");
        return;
    }
    use lb_dataplane::cluster::{render::render, Announced};
    let dir = std::env::temp_dir().join(format!("lbcb-parse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let variants = [
        "bfd = true",
        "bfd = false\nhold_time_s = 9\nkeepalive_s = 3",
    ];
    for (i, extra) in variants.iter().enumerate() {
        let text = format!(
            r#"
[[port]]
name = "ext"
interface = "lbcb-raw"
tap = "lbcb-ext"
addresses = ["198.18.10.11/24", "2001:db8:10::11/64"]
[cluster]
node_id = 1
nodes = 2
asn = 65011
{extra}
[[cluster.peer]]
address = "198.18.10.1"
asn = 65000
port = "ext"
[[cluster.peer]]
address = "2001:db8:10::1"
asn = 65011
port = "ext"
"#
        );
        let cfg = lb_config::parse_str(&text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
        let c = cfg.cluster.as_ref().expect("a cluster");
        for (j, set) in [
            Announced::default(),
            Announced {
                vips: [
                    "198.18.20.10/32".parse().expect("net"),
                    "2001:db8:20::10/128".parse().expect("net"),
                ]
                .into(),
                locals: ["198.19.2.21/32".parse().expect("net")].into(),
            },
        ]
        .iter()
        .enumerate()
        {
            let include = dir.join(format!("lbd-{i}-{j}.conf"));
            std::fs::write(&include, render(c, &cfg.ports, set)).expect("writing");
            let main = dir.join(format!("bird-{i}-{j}.conf"));
            std::fs::write(&main, node_conf(&include)).expect("writing");
            let out = Command::new("bird")
                .args(["-p", "-c"])
                .arg(&main)
                .output()
                .expect("bird -p");
            assert!(
                out.status.success(),
                "{}: {}\n{}",
                include.display(),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&include).unwrap_or_default()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reload may change the peers and timers, not the node's place (its
/// sessions hold ports of its slice).
#[test]
fn a_reload_that_moves_the_node_is_refused() {
    let dir = std::env::temp_dir().join(format!("lbcb-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let bed = Bed {
        prefix: "lbcb-unused".into(),
        dir: dir.clone(),
    };
    let config = dir.join("lbd.toml");
    let text = lbd_config(&bed);
    std::fs::write(&config, &text).expect("writing");
    let shared = Shared::offline(&config).expect("a valid configuration");
    std::fs::write(&config, text.replace("hold_time_s = 3", "hold_time_s = 6")).expect("writing");
    assert_eq!(shared.reload().expect("timers may change"), 2);
    std::fs::write(&config, text.replace("node_id = 1", "node_id = 2")).expect("writing");
    let e = shared.reload().expect_err("the node moved").to_string();
    assert!(e.contains("[cluster] node_id or nodes changed"), "{e}");
    let without = text[..text.find("[cluster]").expect("a cluster")].to_string();
    std::fs::write(&config, without).expect("writing");
    assert!(shared.reload().is_err(), "[cluster] removed");
    assert_eq!(
        shared
            .runtime
            .load()
            .snap
            .cfg
            .cluster
            .as_ref()
            .map(|c| c.hold_time_s),
        Some(6)
    );
}

/// An `lbd` that is killed when dropped.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real `lbd` on the node (AF_PACKET on `lbcb-raw`, its TAP `lbcb-ext`
/// carrying the node's address), with BIRD on the node and the router;
/// returns once the router has the node's local address.
fn start_real_lbd(bed: &Bed) -> Reap {
    let node = bed.ns("node");
    let ip = |args: &str| {
        let mut all = vec!["ip", "-n", &node];
        all.extend(args.split(' '));
        run(&all);
    };
    ip("link add lbcb-int type veth peer name lbcb-intp");
    ip("addr add 198.19.2.11/24 dev lbcb-int");
    ip("link set lbcb-int up");
    ip("link set lbcb-intp up");
    for dev in ["lbcb-raw", "lbcb-int"] {
        let _ = Command::new("ip")
            .args(["netns", "exec", &node, "ethtool", "-K", dev])
            .args(["tx", "off", "tso", "off", "gso", "off", "gro", "off"])
            .output();
    }
    let config = bed.path("lbd.toml");
    std::fs::write(&config, lbd_config(bed)).expect("writing lbd.toml");
    let log = std::fs::File::create(bed.path("lbd.log")).expect("a log file");
    let control = bed.path("lbd.sock");
    let lbd = Command::new("ip")
        .args([
            "netns",
            "exec",
            &node,
            env!("CARGO_BIN_EXE_lbd"),
            "--config",
        ])
        .arg(&config)
        .arg("--control")
        .arg(&control)
        .env("LBD_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting lbd");
    let lbd = Reap(lbd);
    let log = || std::fs::read_to_string(bed.path("lbd.log")).unwrap_or_default();
    // lbd wrote the include file at start: the node's BIRD can start.
    let t = Instant::now();
    while !bed.path("bird-lbd.conf").exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no include file:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    bed.bird(
        "rtr",
        &ROUTER.replace("{log}", &bed.path("rtr.log").display().to_string()),
    );
    bed.bird("node", &node_conf(&bed.path("bird-lbd.conf")));
    // No backend answers its health checks: the local address only.
    bed.wait_routes(30, &["198.19.2.21/32"], "lbd running");

    lbd
}

/// The lbd log of `bed`.
fn lbd_log(bed: &Bed) -> String {
    std::fs::read_to_string(bed.path("lbd.log")).unwrap_or_default()
}

/// A real `lbd` on the node (AF_PACKET on the router's link, the node's
/// BGP and BFD through lbd's TAP): on SIGTERM it withdraws its routes
/// before it exits, while the BGP session is still up (so the router
/// learned it from the withdrawal, not from a session that dropped).
#[test]
fn lbd_withdraws_its_routes_on_sigterm_before_it_exits() {
    if let Some(why) = unsupported() {
        skip::skip(&why);
        return;
    }
    let bed = Bed::new("lbcb-raw", false);
    let mut lbd = start_real_lbd(&bed);
    let log = || lbd_log(&bed);
    let pid = i32::try_from(lbd.0.id()).expect("a pid");
    // SAFETY: kill has no memory preconditions; the pid is our lbd.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let t = Instant::now();
    let status = loop {
        if let Some(st) = lbd.0.try_wait().expect("wait") {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "lbd did not stop:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}:\n{}", log());
    assert!(log().contains("routes withdrawn"), "{}", log());
    bed.wait_routes(5, &[], "after SIGTERM");
    // The router heard the withdrawal over a live session: its log has
    // the route removed before the session went down (with the TAP).
    let t = Instant::now();
    let rtr_log = loop {
        let text = std::fs::read_to_string(bed.path("rtr.log")).unwrap_or_default();
        if text.contains("State changed to stop") || t.elapsed() > Duration::from_secs(10) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let removed = rtr_log
        .find("removed [sole] 198.19.2.21/32")
        .unwrap_or_else(|| panic!("no withdrawal in the router's log:\n{rtr_log}"));
    let down = rtr_log
        .find("State changed to stop")
        .unwrap_or_else(|| panic!("the session never went down (the TAP stays?):\n{rtr_log}"));
    assert!(
        removed < down,
        "withdrawn only with the session:\n{rtr_log}"
    );
}

/// `lbctl check` accepts a cluster node whose listener does not use
/// Maglev, and warns about it.
#[test]
fn lbctl_check_warns_about_a_clustered_listener_without_maglev() {
    let dir = std::env::temp_dir().join(format!("lbcb-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let bed = Bed {
        prefix: "lbcb-unused".into(),
        dir: dir.clone(),
    };
    let config = dir.join("lbd.toml");
    let check = |text: &str| {
        std::fs::write(&config, text).expect("writing");
        let out = Command::new(env!("CARGO_BIN_EXE_lbctl"))
            .arg("check")
            .arg(&config)
            .output()
            .expect("lbctl check");
        assert!(out.status.success(), "{out:?}");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (stdout, stderr) = check(&lbd_config(&bed));
    assert!(
        stdout
            .trim_end()
            .ends_with(", cluster node 1 of 3 (1 peer)"),
        "{stdout}"
    );
    assert_eq!(stderr, "");
    let (_, stderr) = check(&lbd_config(&bed).replace("\"maglev\"", "\"wlc\""));
    assert_eq!(
        stderr,
        format!(
            "{}: warning: listener alb-1:80 of a cluster node uses server group sgp-web with scheduler wlc; use \"maglev\" so that every node sends a flow to the same server\n",
            config.display()
        )
    );
}

/// A killed `lbd` (SIGKILL: no clean-up of its own) leaves no route: its
/// TAP goes with it, so the node's BGP and BFD sessions end and the
/// router's BFD withdraws the node.
#[test]
fn a_killed_lbd_leaves_no_route() {
    if let Some(why) = unsupported() {
        skip::skip(&why);
        return;
    }
    let bed = Bed::new("lbcb-raw", false);
    let mut lbd = start_real_lbd(&bed);
    let t = Instant::now();
    let _ = lbd.0.kill();
    let _ = lbd.0.wait();
    let took = bed.wait_routes(10, &[], "after SIGKILL");
    eprintln!(
        "the router dropped the killed node's routes {took:?} after SIGKILL ({:?} in all)",
        t.elapsed()
    );
    assert!(!lbd_log(&bed).contains("routes withdrawn"));
    // BFD (3 x 100 ms) rather than the 3 s hold time.
    assert!(took < Duration::from_millis(2500), "{took:?}");
}
