//! End to end: a UDP listener carries datagrams larger than the links'
//! 1500-byte MTU. The client and the backends fragment them; `lbd` (two
//! workers) forwards the fragments without reassembly, in both
//! directions, IPv4 and IPv6. Needs root, iproute2, ethtool and python3.

mod common;

use common::{lock, seed_config, wait_udp_healthy, Topo, UDP_LISTENER};

/// Sends `count` datagrams of `size` bytes from the client to `vip`:53 and
/// counts the echoes that came back whole (the backend's name, a space,
/// the datagram). Bounded: one second's wait per datagram.
fn echoes(t: &Topo, vip: &str, size: usize, count: usize) -> usize {
    let fam = if vip.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let py = format!(
        r#"
import os, socket
s = socket.socket(socket.{fam}, socket.SOCK_DGRAM)
s.settimeout(1.0)
whole = 0
for i in range({count}):
    data = os.urandom({size})
    s.sendto(data, ('{vip}', 53))
    try:
        r = s.recv(65535)
    except socket.timeout:
        continue
    if len(r) == {size} + 6 and r[6:] == data:
        whole += 1
print(whole)
"#
    );
    let out = t.exec("client", &["timeout", "60", "python3", "-c", &py]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn udp_datagrams_larger_than_the_mtu_cross_in_both_directions() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    t.netns(&["udp-up"]);
    let mut cfg = seed_config("", "", (100, 100));
    cfg.push_str(UDP_LISTENER);
    t.start_lbd_with(&cfg, &["--metrics", "127.0.0.1:9464"]);
    wait_udp_healthy(&t);
    // The links' MTU is 1500: 4000 bytes go as three fragments each way.
    for vip in ["198.18.0.20", "2001:db8:18::20"] {
        assert_eq!(echoes(&t, vip, 100, 4), 4, "small datagrams to {vip}");
        let n = echoes(&t, vip, 4000, 20);
        assert!(
            n >= 19,
            "4000-byte datagrams to {vip}: {n} of 20 came back whole; stats {} {}",
            t.stats()["fragments"],
            t.stats()["drops"]
        );
    }
    // The largest a UDP datagram over IPv4 can be.
    assert!(
        echoes(&t, "198.18.0.20", 65_000, 3) >= 2,
        "65000-byte datagrams (45 fragments) cross"
    );
    let s = t.stats();
    let f = &s["fragments"];
    assert!(f["first"].as_u64().unwrap_or(0) >= 80, "stats: {f}");
    assert!(f["forwarded"].as_u64().unwrap_or(0) >= 160, "stats: {f}");
    assert_eq!(s["drops"]["fragment_overlap"], 0);
    let m = t.metrics();
    assert!(
        m.lines()
            .any(|l| l.starts_with("lbd_fragments_forwarded_total ") && !l.ends_with(" 0")),
        "metrics carry the fragment counters: {m}"
    );
    let text = t.lbctl(&["stats"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("ip fragments"));

    // Without fragment forwarding (a `[dataplane]` setting: a restart) the
    // large datagrams are lost, the small ones still pass.
    t.kill_lbd();
    let off = cfg.replace(
        "[dataplane]\n",
        "[dataplane]\nfragments = { forward = false }\n",
    );
    t.start_lbd(&off);
    wait_udp_healthy(&t);
    assert_eq!(echoes(&t, "198.18.0.20", 100, 2), 2);
    assert_eq!(echoes(&t, "198.18.0.20", 4000, 3), 0);
    assert!(t.stats()["drops"]["fragment"].as_u64().unwrap_or(0) > 0);
}
