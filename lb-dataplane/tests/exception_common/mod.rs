//! The exception path end to end, for either back end: `lbd` with
//! `tap = "lbd-ext"` on its ext port in the namespace topology; a TCP
//! server of the load-balancer host's kernel on the port's addresses; the
//! client reaching it through the TAP over IPv4 and IPv6, the kernel
//! resolving the client by ARP and neighbour discovery through the TAP,
//! the VIP still served, the counters grown, and the TAP gone once `lbd`
//! is killed.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::Topo;

pub const TAP: &str = "lbd-ext";

/// Why this machine cannot run the test, if it cannot: the end-to-end
/// tests' prerequisites and nft.
pub fn unsupported() -> Option<String> {
    if let Some(why) = crate::common::unsupported() {
        return Some(why);
    }
    let nft = Command::new("sh")
        .args(["-c", "command -v nft"])
        .output()
        .is_ok_and(|o| o.status.success());
    (!nft).then(|| "needs nft (CI installs nftables: .ci/run)".to_string())
}

/// `config` with `tap = "lbd-ext"` on the port whose interface (or, on
/// DPDK, whose place) is the ext port's: the first port.
pub fn with_tap(config: &str) -> String {
    let at = config.find("name = \"ext\"\n").expect("an ext port") + "name = \"ext\"\n".len();
    let mut out = config.to_string();
    out.insert_str(at, &format!("tap = \"{TAP}\"\n"));
    out
}

/// The namespace topology with the kernel kept off `lb-ext`, and the
/// topology lock held; `None` (the test skipped) when the machine cannot
/// run it.
pub fn topology() -> Option<(std::sync::MutexGuard<'static, ()>, Topo)> {
    topology_with(&[])
}

/// [`topology`] with extra environment for netns.sh.
pub fn topology_with(env: &[(&str, &str)]) -> Option<(std::sync::MutexGuard<'static, ()>, Topo)> {
    if let Some(why) = unsupported() {
        crate::common::skip::skip(&why);
        return None;
    }
    let g = crate::common::lock();
    let t = Topo::up_with(env);
    keep_kernel_off(&t, "lb-ext");
    Some((g, t))
}

/// A TCP server of the kernel in the load-balancer namespace, on port 179
/// of every address (IPv4 and IPv6), answering HTTP `GET /tap-ok`; killed
/// on drop.
pub struct KernelServer(Child);

impl KernelServer {
    pub fn start(t: &Topo) -> KernelServer {
        let dir = t.run.join("tap-www");
        std::fs::create_dir_all(&dir).expect("server directory");
        std::fs::write(dir.join("tap-ok"), "through the TAP\n").expect("page");
        // Many full-sized segments from the kernel: no offload on the TAP,
        // so they come segmented and with their checksums.
        let big: String = (0..4000).map(|i| format!("{i:063}\n")).collect();
        std::fs::write(dir.join("big"), big).expect("big page");
        // `ip netns exec` execs python in place: the child is the server.
        let child = Command::new("ip")
            .args(["netns", "exec", &t.ns("lb"), "python3", "-m", "http.server"])
            .args(["179", "--bind", "::", "--directory"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the kernel's server");
        KernelServer(child)
    }
}

impl Drop for KernelServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The kernel of the load-balancer host takes no frame from the port's
/// link itself: an nftables ingress hook drops everything there (packet
/// sockets, AF_PACKET's and DPDK's, read frames before it), so what the
/// kernel gets comes through the TAP.
pub fn keep_kernel_off(t: &Topo, iface: &str) {
    let file = t.run.join("kernel-off.nft");
    let rules = format!(
        "table netdev lbd_port {{\n  chain kernel_off {{\n    type filter hook ingress device \"{iface}\" priority 0; policy drop;\n  }}\n}}\n"
    );
    std::fs::write(&file, rules).expect("nft file");
    let out = t.exec("lb", &["nft", "-f", &file.to_string_lossy()]);
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip` in the load-balancer namespace: its output, and whether it worked.
fn ip_lb(t: &Topo, args: &[&str]) -> (bool, String) {
    let mut all = vec!["ip"];
    all.extend_from_slice(args);
    let out = t.exec("lb", &all);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn port(stats: &serde_json::Value, name: &str) -> serde_json::Value {
    stats["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .cloned()
        .unwrap_or_default()
}

/// The whole case, on a running `lbd` (started with `--metrics
/// 127.0.0.1:9464`) whose ext port has `tap = "lbd-ext"` and whose link
/// the kernel keeps off.
pub fn run_case(t: &mut Topo) {
    // The TAP: up, with the port's MAC address, MTU and addresses, and
    // the link-local address lbd gave it.
    let (ok, link) = ip_lb(t, &["-o", "link", "show", TAP]);
    assert!(ok, "no {TAP}:\n{}", t.log());
    let (_, ext) = ip_lb(t, &["-o", "link", "show", "lb-ext"]);
    let mac = |s: &str| {
        s.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(str::to_string)
    };
    assert_eq!(mac(&link), mac(&ext), "{link}\n{ext}");
    assert!(link.contains("mtu 1500"), "{link}");
    assert!(link.contains(",UP"), "{link}");
    let (_, addrs) = ip_lb(t, &["-o", "addr", "show", "dev", TAP]);
    for a in ["198.18.0.1/24", "2001:db8:18::1/64", "fe80::"] {
        assert!(addrs.contains(a), "{a} on {TAP}:\n{addrs}");
    }
    assert!(!addrs.contains("tentative"), "{addrs}");

    let _server = KernelServer::start(t);
    // The kernel's server answers through the TAP, IPv4 and IPv6; the
    // first tries may come before the server listens.
    for url in [
        "http://198.18.0.1:179/tap-ok",
        "http://[2001:db8:18::1]:179/tap-ok",
    ] {
        let deadline = Instant::now() + Duration::from_secs(10);
        let body = loop {
            if let Some(b) = t.curl(url) {
                break b;
            }
            assert!(
                Instant::now() < deadline,
                "{url} never answered:\n{}",
                t.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        };
        assert_eq!(body, "through the TAP", "{url}");
    }

    let big = t.curl("http://198.18.0.1:179/big").expect("the big page");
    assert_eq!(big.len(), 4000 * 64 - 1, "256 KB through the TAP");
    assert!(big.ends_with(&format!("{:063}", 3999)));

    // The kernel resolved the client itself, through the TAP.
    let (_, neigh) = ip_lb(t, &["neigh", "show", "dev", TAP]);
    let (_, cmac) = {
        let out = t.exec("client", &["ip", "-o", "link", "show", "c-eth0"]);
        (true, String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let cmac = mac(&cmac).expect("client MAC");
    for a in ["198.18.0.2 ", "2001:db8:18::2 "] {
        let line = neigh
            .lines()
            .find(|l| l.starts_with(a))
            .unwrap_or_else(|| panic!("no neighbour {a}on {TAP}:\n{neigh}"));
        assert!(line.contains(&cmac), "{line}");
        assert!(
            !line.contains("FAILED") && !line.contains("INCOMPLETE"),
            "{line}"
        );
    }

    // Counted both ways, no drop; in lbctl stats and /metrics.
    let s = t.stats();
    let ext = port(&s, "ext");
    assert_eq!(ext["tap"], TAP, "{ext}");
    assert!(
        ext["exception_to_kernel"].as_u64().unwrap_or(0) >= 6,
        "{ext}"
    );
    assert!(
        ext["exception_from_kernel"].as_u64().unwrap_or(0) >= 6,
        "{ext}"
    );
    assert_eq!(ext["exception_drops"].as_u64(), Some(0), "{ext}");
    let int = port(&s, "int");
    assert!(int["tap"].is_null(), "{int}");
    assert_eq!(int["exception_to_kernel"].as_u64(), Some(0), "{int}");
    let text = t.lbctl(&["stats"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("tap lbd-ext: to_kernel"), "{text}");
    let m = t.metrics();
    assert!(
        m.lines().any(
            |l| l.starts_with("lbd_port_exception_to_kernel_total{port=\"ext\"}")
                && !l.ends_with(" 0")
        ),
        "{m}"
    );
    assert!(
        m.contains("lbd_port_exception_drops_total{port=\"ext\"} 0"),
        "{m}"
    );

    // What the data plane serves stays with it: the VIP answers, and
    // pings to the port's address are answered by lbd, not the kernel.
    crate::common::wait_healthy(t);
    assert!(t.backend_of("http://198.18.0.10:80/").is_some());
    assert!(t.backend_of("http://[2001:db8:18::10]:80/").is_some());
    let before = port(&t.stats(), "ext")["exception_to_kernel"]
        .as_u64()
        .unwrap_or(0);
    let ping = t.exec(
        "client",
        &["ping", "-c", "10", "-i", "0.2", "-W", "2", "198.18.0.1"],
    );
    assert!(ping.status.success(), "ping the port's address");
    for _ in 0..3 {
        assert!(t.backend_of("http://198.18.0.10:80/").is_some());
    }
    let after = port(&t.stats(), "ext")["exception_to_kernel"]
        .as_u64()
        .unwrap_or(0);
    // The 10 pings and the VIP's 30-odd frames did not go up (the
    // kernel's own neighbour refreshes and late segments may: a few).
    assert!(after - before <= 8, "{before} -> {after}");

    // lbd dies: its TAP goes with it.
    t.kill_lbd();
    let deadline = Instant::now() + Duration::from_secs(5);
    while ip_lb(t, &["link", "show", TAP]).0 {
        assert!(Instant::now() < deadline, "{TAP} outlived lbd");
        std::thread::sleep(Duration::from_millis(100));
    }
}
