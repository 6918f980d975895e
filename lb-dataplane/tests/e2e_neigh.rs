//! End to end: ARP and neighbour discovery from an attacker on the client
//! link, with raw frames written on the client's interface. Needs what
//! e2e.rs needs (root, iproute2, ethtool, curl, nginx, ping, python3).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{seed_config, Topo, SERIAL};
use serde_json::Value;

const V4_80: &str = "http://198.18.0.10:80/";
const V6_80: &str = "http://[2001:db8:18::10]:80/";

/// The attacker's Ethernet address.
const EVIL: &str = "02:66:66:66:66:66";

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes raw frames on the client's interface, as `send.py` commands
/// (one JSON list of objects, see `FRAMES`).
const FRAMES: &str = r#"
import json, random, socket, struct, sys, time

def mac(s): return bytes.fromhex(s.replace(':', ''))
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
def eth(dst, src, t): return mac(dst) + mac(src) + struct.pack('!H', t)
def arp(c, sip, smac):
    return eth(c['dst'], smac, 0x0806) + struct.pack('!HHBBH', 1, 0x0800, 6, 4, c['op']) \
        + mac(smac) + socket.inet_aton(sip) + b'\0' * 6 + socket.inet_aton(c['tip'])
def ip6(src, dst, hop, payload):
    s, d = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    return struct.pack('!IHBB', 6 << 28, len(payload), 58, hop) + s + d, s, d
def icmp6(src, dst, hop, body, smac, c):
    hdr, s, d = ip6(src, dst, hop, body)
    pseudo = s + d + struct.pack('!IxxxB', len(body), 58)
    body = body[:2] + struct.pack('!H', csum(pseudo + body)) + body[4:]
    return eth(c['dst'], smac, 0x86dd) + hdr + body
def na(c, target, smac):
    body = struct.pack('!BBHI', 136, 0, 0, c.get('flags', 0x20) << 24) \
        + socket.inet_pton(socket.AF_INET6, target) + bytes([2, 1]) + mac(smac)
    return icmp6(target if c.get('from_target') else c['src'], c['to'], c.get('hop', 255), body, smac, c)
def ns(c, src, smac):
    body = struct.pack('!BBHI', 135, 0, 0, 0) \
        + socket.inet_pton(socket.AF_INET6, c['target']) + bytes([1, 1]) + mac(smac)
    return icmp6(src, c['to'], 255, body, smac, c)
def syn(c, sip, smac):
    sport = random.randint(1024, 65535)
    tcp = struct.pack('!HHIIBBHHH', sport, c['dport'], random.getrandbits(32), 0, 5 << 4, 0x02, 64240, 0, 0)
    s, d = socket.inet_aton(sip), socket.inet_aton(c['dip'])
    tcp = tcp[:16] + struct.pack('!H', csum(s + d + struct.pack('!BBH', 0, 6, len(tcp)) + tcp)) + tcp[18:]
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, s, d)
    ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
    return eth(c['dst'], smac, 0x0800) + ip + tcp
def rand_v4(prefix): return prefix + '.%d.%d' % (random.randint(1, 254), random.randint(1, 254))
def rand_mac(): return '02:%02x:%02x:%02x:%02x:%02x' % tuple(random.getrandbits(8) for _ in range(5))

s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
sent = 0
t0 = time.time()
for c in json.loads(sys.argv[2]):
    for i in range(c.get('count', 1)):
        smac = c.get('smac') or rand_mac()
        k = c['kind']
        if k == 'arp': f = arp(c, c.get('sip') or rand_v4(c['net']), smac)
        elif k == 'na': f = na(c, c.get('target') or '%s%x:%x' % (c['net'], random.getrandbits(16), random.getrandbits(16)), smac)
        elif k == 'ns': f = ns(c, c['src'], smac)
        elif k == 'syn': f = syn(c, c.get('sip') or rand_v4(c['net']), smac)
        while True:
            try:
                s.send(f)
                break
            except BlockingIOError:
                time.sleep(0.0005)
        sent += 1
print(sent, '%.3f' % (time.time() - t0))
"#;

/// Sends the frames `cmds` describe from the client's interface; returns
/// how many and in how many seconds.
fn send(t: &Topo, cmds: &Value) -> (u64, f64) {
    let out = t.exec(
        "client",
        &["python3", "-c", FRAMES, "c-eth0", &cmds.to_string()],
    );
    assert!(
        out.status.success(),
        "send.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut it = text.split_whitespace();
    let n = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let secs = it.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (n, secs)
}

/// The Ethernet address of `ifname` in namespace `host`.
fn mac_of(t: &Topo, host: &str, ifname: &str) -> String {
    let out = t.exec(host, &["cat", &format!("/sys/class/net/{ifname}/address")]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `lbctl stats --json`'s neighbours: (port, address, mac).
fn neighbors(t: &Topo) -> Vec<(String, String, String)> {
    t.stats()["neighbors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let s = |k: &str| n[k].as_str().unwrap_or("").to_string();
            (s("port"), s("address"), s("mac"))
        })
        .collect()
}

fn drop_count(t: &Topo, reason: &str) -> u64 {
    t.stats()["drops"][reason].as_u64().unwrap_or(0)
}

fn start(t: &mut Topo, config: &str, args: &[&str]) {
    t.start_lbd_with(config, args);
    t.wait_for(15, "both backends healthy", |t| {
        t.server_up("sgp-web", "ecs01") == Some(true)
            && t.server_up("sgp-web", "ecs02") == Some(true)
    });
    assert!(t.backend_of(V4_80).is_some());
    assert!(t.backend_of(V6_80).is_some());
}

#[test]
fn gratuitous_arp_and_unsolicited_na_for_our_addresses_do_not_divert_traffic() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    start(
        &mut t,
        &seed_config("", "", (100, 100)),
        &["--metrics", "127.0.0.1:9464"],
    );
    let lb = mac_of(&t, "lb", "lb-ext");
    // Gratuitous ARP (request and reply) for the VIP and the port
    // address, and unsolicited advertisements (override set) for both.
    let mut cmds = Vec::new();
    for addr in ["198.18.0.10", "198.18.0.1"] {
        for op in [1, 2] {
            cmds.push(serde_json::json!({
                "kind": "arp", "op": op, "dst": "ff:ff:ff:ff:ff:ff", "smac": EVIL,
                "sip": addr, "tip": addr,
            }));
        }
    }
    for target in ["2001:db8:18::10", "2001:db8:18::1"] {
        cmds.push(serde_json::json!({
            "kind": "na", "dst": lb, "smac": EVIL, "target": target,
            "from_target": true, "to": "ff02::1", "flags": 0x20,
        }));
    }
    send(&t, &Value::Array(cmds));
    std::thread::sleep(Duration::from_millis(500));
    let evil: Vec<_> = neighbors(&t)
        .into_iter()
        .filter(|(_, _, m)| m == EVIL)
        .collect();
    assert!(evil.is_empty(), "learned from the attacker: {evil:?}");
    t.wait_for(5, "the claims counted", |t| {
        drop_count(t, "neighbor_own_address_claim") >= 6
    });
    // Traffic through the VIP is not diverted.
    for _ in 0..3 {
        assert!(t.backend_of(V4_80).is_some());
        assert!(t.backend_of(V6_80).is_some());
    }
    // The counter is in the text form and the metrics too.
    let text = t.lbctl(&["stats"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("neighbor_own_address_claim"), "{text}");
    let metrics = t.metrics();
    assert!(
        metrics.contains("lbd_drops_total{reason=\"neighbor_own_address_claim\"} 6"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lbd_neighbor_limit{port=\"ext\"} 1024"),
        "{metrics}"
    );
    assert!(
        t.log().contains("refused a neighbour claim"),
        "logged:\n{}",
        t.log()
    );
}

#[test]
fn off_link_and_unsolicited_answers_are_not_learned() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    start(&mut t, &seed_config("", "", (100, 100)), &[]);
    let lb = mac_of(&t, "lb", "lb-ext");
    let be1 = mac_of(&t, "be1", "eth0");
    let before_off = drop_count(&t, "neighbor_off_link");
    let before_unsol = drop_count(&t, "neighbor_unsolicited");
    // ARP replies from senders off the client link: another network, and
    // a backend's address (its link is the other port); IPv6 alike, and
    // one advertisement with a hop limit below 255.
    let mut cmds = Vec::new();
    for sip in ["198.20.0.5", "198.19.1.11"] {
        cmds.push(serde_json::json!({
            "kind": "arp", "op": 2, "dst": lb, "smac": EVIL, "sip": sip, "tip": "198.18.0.1",
        }));
    }
    for (target, hop) in [
        ("2001:db8:20::5", 255),
        ("2001:db8:19:1::11", 255),
        ("2001:db8:18::77", 64),
    ] {
        cmds.push(serde_json::json!({
            "kind": "na", "dst": lb, "smac": EVIL, "target": target, "from_target": true,
            "to": "2001:db8:18::1", "hop": hop, "flags": 0x20,
        }));
    }
    // On the link but never asked for: an ARP reply, a gratuitous ARP, an
    // unsolicited advertisement, a solicitation carrying its source
    // link-layer address.
    cmds.push(serde_json::json!({
        "kind": "arp", "op": 2, "dst": lb, "smac": EVIL, "sip": "198.18.0.77", "tip": "198.18.0.1",
    }));
    cmds.push(serde_json::json!({
        "kind": "arp", "op": 1, "dst": "ff:ff:ff:ff:ff:ff", "smac": EVIL,
        "sip": "198.18.0.78", "tip": "198.18.0.78",
    }));
    cmds.push(serde_json::json!({
        "kind": "na", "dst": lb, "smac": EVIL, "target": "2001:db8:18::77", "from_target": true,
        "to": "ff02::1", "flags": 0x20,
    }));
    cmds.push(serde_json::json!({
        "kind": "ns", "dst": lb, "smac": EVIL, "src": "2001:db8:18::78",
        "target": "2001:db8:18::1", "to": "2001:db8:18::1",
    }));
    send(&t, &Value::Array(cmds));
    std::thread::sleep(Duration::from_millis(500));
    let n = neighbors(&t);
    let evil: Vec<_> = n.iter().filter(|(_, _, m)| m == EVIL).collect();
    assert!(evil.is_empty(), "learned from the attacker: {evil:?}");
    t.wait_for(5, "the refusals counted", |t| {
        drop_count(t, "neighbor_off_link") >= before_off + 5
            && drop_count(t, "neighbor_unsolicited") >= before_unsol + 4
    });
    // The backend keeps its own address on its own link.
    assert!(
        n.iter()
            .any(|(p, a, m)| p == "int" && a == "198.19.1.11" && *m == be1),
        "{n:?}"
    );
    assert!(t.backend_of(V4_80).is_some());
}

/// Pings the port address from the client every 5 ms while `during`
/// runs: (replies lost of sent, p50 ms, p99 ms).
fn ping_during(t: &Topo, during: impl FnOnce()) -> (usize, usize, f64, f64) {
    let count = 400;
    let child = Command::new("ip")
        .args(["netns", "exec", &t.ns("client")])
        .args([
            "ping",
            "-n",
            "-i",
            "0.005",
            "-W",
            "1",
            "-c",
            &count.to_string(),
        ])
        .arg("198.18.0.1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ping");
    std::thread::sleep(Duration::from_millis(300));
    during();
    let out = child.wait_with_output().expect("ping output");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rtts: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .collect();
    rtts.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        rtts.get(((rtts.len() as f64 * q) as usize).min(rtts.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    (count - rtts.len(), count, pct(0.5), pct(0.99))
}

#[test]
fn an_arp_flood_leaves_the_table_bounded_and_traffic_flowing() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    // A /16 on the client link: room for 20 000 distinct on-link senders.
    let config = seed_config("", "", (100, 100)).replacen(
        "addresses = [\"198.18.0.1/24\", \"2001:db8:18::1/64\"]",
        "addresses = [\"198.18.0.1/16\", \"2001:db8:18::1/64\"]\nmax_neighbors = 64",
        1,
    );
    start(&mut t, &config, &[]);
    let lb = mac_of(&t, "lb", "lb-ext");

    // 20 000 gratuitous ARPs and 5 000 unsolicited advertisements from
    // random on-link senders, while the client pings the port address.
    let flood = serde_json::json!([
        {"kind": "arp", "op": 1, "dst": "ff:ff:ff:ff:ff:ff", "net": "198.18", "tip": "198.18.0.1", "count": 20000},
        {"kind": "na", "dst": lb, "net": "2001:db8:18::", "to": "ff02::1", "from_target": true, "count": 5000},
    ]);
    let (lost, pings, p50, p99) = ping_during(&t, || {});
    eprintln!("no flood: ping the port address every 5 ms: {lost} of {pings} lost, p50 {p50} ms, p99 {p99} ms");
    let mut sent = (0, 0.0);
    let started = Instant::now();
    let (lost, pings, p50, p99) = ping_during(&t, || sent = send(&t, &flood));
    eprintln!(
        "flood: {} frames in {:.3} s; ping the port address every 5 ms: {lost} of {pings} lost, p50 {p50} ms, p99 {p99} ms ({:.1} s in all)",
        sent.0,
        sent.1,
        started.elapsed().as_secs_f64()
    );
    let ext = |t: &Topo| {
        t.stats()["neighbor_tables"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["port"] == "ext").cloned())
            .unwrap_or(Value::Null)
    };
    let learned = neighbors(&t).len();
    assert!(
        learned <= 64 + 64,
        "{learned} entries learned from the flood"
    );
    let table = ext(&t);
    assert_eq!(table["limit"], 64, "{table}");
    assert!(
        table["entries"].as_u64().is_some_and(|n| n <= 64),
        "{table}"
    );
    // Legitimate traffic flows during and after.
    assert!(
        lost * 10 <= pings,
        "lost {lost} of {pings} pings during the flood"
    );
    assert!(t.backend_of(V4_80).is_some());
    assert!(t.backend_of(V6_80).is_some());

    // SYNs from 3 000 random on-link sources: each answer needs its
    // sender resolved, which the table bounds; the client's resolved
    // entry stays.
    let syns = serde_json::json!([
        {"kind": "syn", "dst": lb, "net": "198.18", "dip": "198.18.0.10", "dport": 80, "count": 3000},
    ]);
    send(&t, &syns);
    std::thread::sleep(Duration::from_millis(500));
    let table = ext(&t);
    assert!(
        table["entries"].as_u64().is_some_and(|n| n <= 64),
        "{table}"
    );
    for _ in 0..3 {
        assert!(t.backend_of(V4_80).is_some(), "curl during the SYN flood");
    }
    let clients: Vec<_> = neighbors(&t)
        .into_iter()
        .filter(|(p, a, _)| p == "ext" && a == "198.18.0.2")
        .collect();
    assert_eq!(clients.len(), 1, "the client's entry stays");

    // The limit is sized at start: a reload that changes it is refused.
    let out = t.reload(&config.replace("max_neighbors = 64", "max_neighbors = 128"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_neighbors changed"), "{err}");
    assert_eq!(t.stats()["generation"], 1);
}
