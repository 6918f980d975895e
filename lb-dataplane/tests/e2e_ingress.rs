//! End to end, what arrives on a port: spoofed sources and VLAN tags sent
//! as raw frames from the client link, and VLAN ports carrying real
//! traffic. Needs root, iproute2, ethtool, curl, nginx and python3 (CI
//! installs them).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{seed_config, Topo, SERIAL};
use lb_core::packet::{build_frame, FrameSpec, MacAddr};

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Captures what `iface` of namespace `host` receives for `secs` seconds
/// (AF_PACKET, with the auxiliary data where the kernel leaves a VLAN tag
/// it took off) and prints one JSON list of frames: their inline tags, the
/// kernel's tag, and the IPv4 5-tuple.
const CAPTURE: &str = r#"
import json, socket, struct, sys, time
iface, secs = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.setsockopt(263, 8, 1)  # SOL_PACKET, PACKET_AUXDATA
s.bind((iface, 0))
s.settimeout(0.2)
print("ready", flush=True)
end = time.time() + secs
out = []
while time.time() < end and len(out) < 20000:
    try:
        data, anc, _, addr = s.recvmsg(65535, socket.CMSG_SPACE(32))
    except socket.timeout:
        continue
    if addr[2] == socket.PACKET_OUTGOING or len(data) < 14:
        continue
    aux = None
    for lvl, typ, d in anc:
        if lvl == 263 and typ == 8 and len(d) >= 20:
            st, _, _, _, _, tci, _ = struct.unpack("IIIHHHH", d[:20])
            if st & 0x10:
                aux = tci & 0xfff
    tags, off = [], 12
    et = struct.unpack("!H", data[off:off + 2])[0]
    while et in (0x8100, 0x88a8, 0x9100) and len(data) >= off + 6:
        tags.append(struct.unpack("!H", data[off + 2:off + 4])[0] & 0xfff)
        off += 4
        et = struct.unpack("!H", data[off:off + 2])[0]
    rec = {"aux_vlan": aux, "tags": tags, "ethertype": et}
    ip = data[off + 2:]
    if et == 0x0800 and len(ip) >= 24:
        ihl = (ip[0] & 15) * 4
        rec.update(src=socket.inet_ntoa(ip[12:16]), dst=socket.inet_ntoa(ip[16:20]), proto=ip[9])
        if ip[9] in (6, 17) and len(ip) >= ihl + 4:
            rec.update(sport=struct.unpack("!H", ip[ihl:ihl + 2])[0],
                       dport=struct.unpack("!H", ip[ihl + 2:ihl + 4])[0])
    out.append(rec)
print(json.dumps(out))
"#;

/// A capture running in the background.
struct Capture {
    child: Child,
}

impl Capture {
    fn start(t: &Topo, host: &str, iface: &str, secs: u32) -> Capture {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &t.ns(host), "python3", "-c", CAPTURE])
            .args([iface, &secs.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the capture");
        let mut line = String::new();
        let stdout = child.stdout.as_mut().expect("piped");
        // The first line says the socket is bound (or EOF if python failed).
        let _ = BufReader::new(stdout).read_line(&mut line);
        let mut c = Capture { child };
        if line.trim() != "ready" {
            let mut err = String::new();
            if let Some(e) = c.child.stderr.as_mut() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = c.child.kill();
            panic!("capture on {host}/{iface} did not start: {line}{err}");
        }
        c
    }

    /// The frames seen, once the capture's time is up (bounded: it is
    /// killed a few seconds after that).
    fn frames(mut self) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let mut text = String::new();
        if let Some(o) = self.child.stdout.as_mut() {
            let _ = o.read_to_string(&mut text);
        }
        let _ = self.child.wait();
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("capture output {text:?}: {e}"))
    }
}

/// The Ethernet address of `iface` in namespace `host`.
fn mac_of(t: &Topo, host: &str, iface: &str) -> [u8; 6] {
    let out = t.exec(host, &["cat", &format!("/sys/class/net/{iface}/address")]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut mac = [0u8; 6];
    for (b, h) in mac.iter_mut().zip(text.trim().split(':')) {
        *b = u8::from_str_radix(h, 16).expect("hex");
    }
    mac
}

/// A TCP SYN from the client's link to lbd's port `ext`.
fn syn(t: &Topo, src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    build_frame(&FrameSpec {
        src_mac: MacAddr(mac_of(t, "client", "c-eth0")),
        dst_mac: MacAddr(mac_of(t, "lb", "lb-ext")),
        src: src.parse().expect("address"),
        dst: dst.parse().expect("address"),
        proto: 6,
        sport,
        dport,
        tcp_flags: 0x02,
        tcp_seq: 1000,
        ttl: 64,
        ..FrameSpec::default()
    })
}

/// `frame` with a tag (TPID `tpid`, VLAN `vid`) pushed in front.
fn push_tag(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// Sends raw frames on the client's link.
fn send_raw(t: &Topo, frames: &[Vec<u8>]) {
    let hex: Vec<String> = frames
        .iter()
        .map(|f| f.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let py = format!(
        "import socket, time\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind(('c-eth0', 0))\nfor h in {hex:?}:\n    s.send(bytes.fromhex(h))\n    time.sleep(0.05)\n"
    );
    let out = t.exec("client", &["python3", "-c", &py]);
    assert!(
        out.status.success(),
        "send: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn port_stats(t: &Topo, name: &str) -> serde_json::Value {
    let s = t.stats();
    s["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no port {name} in {s}"))
}

#[test]
fn a_spoofed_backend_subnet_source_from_the_client_link_is_dropped() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    // The backends' group allows HTTP from their own subnet only.
    let config = seed_config("", "", (100, 100)).replacen(
        "port_range = \"80/80\"\nsource = \"0.0.0.0/0\"",
        "port_range = \"80/80\"\nsource = \"198.19.1.0/24\"",
        1,
    );
    t.start_lbd_with(&config, &["--metrics", "127.0.0.1:9464"]);
    t.wait_healthy();

    let cap = Capture::start(&t, "be1", "eth0", 4);
    send_raw(
        &t,
        &[
            // The spoof: be2's address, sent from the client's link.
            syn(&t, "198.19.1.12", 40123, "198.19.1.11", 80),
            // The client's own address: the group drops it.
            syn(&t, "198.18.0.2", 40124, "198.19.1.11", 80),
            // Through the VIP, to show the capture sees what lbd forwards
            // (round robin: one of the two reaches be1).
            syn(&t, "198.18.0.2", 40125, "198.18.0.10", 80),
            syn(&t, "198.18.0.2", 40126, "198.18.0.10", 80),
        ],
    );
    let frames = cap.frames();
    let spoofed: Vec<_> = frames
        .iter()
        .filter(|f| f["src"] == "198.19.1.12" && f["dport"] == 80 && f["sport"] == 40123)
        .collect();
    assert!(
        spoofed.is_empty(),
        "the spoofed SYN reached the backend: {spoofed:?}"
    );
    assert!(
        frames
            .iter()
            .any(|f| f["src"] == "198.19.1.250" && f["dport"] == 80),
        "the SYNs through the VIP should have reached be1: {frames:?}"
    );
    let s = t.stats();
    assert!(
        s["drops"]["spoofed_source"].as_u64().unwrap_or(0) >= 1,
        "{s}"
    );
    assert!(
        s["drops"]["security_group"].as_u64().unwrap_or(0) >= 1,
        "{s}"
    );
    let ext = port_stats(&t, "ext");
    assert_eq!(ext["spoofed_source"], 1, "{ext}");
    assert_eq!(ext["source_check"], "strict", "{ext}");
    let text = String::from_utf8_lossy(&t.lbctl(&["stats"]).stdout).to_string();
    assert!(text.contains("spoofed_source 1"), "{text}");
    let metrics = t.metrics();
    assert!(
        metrics.contains("lbd_port_spoofed_source_total{port=\"ext\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lbd_drops_total{reason=\"spoofed_source\"}"),
        "{metrics}"
    );
    // Real clients are served.
    assert!(t.curl("http://198.18.0.10:80/").is_some());
}

#[test]
fn tagged_frames_on_an_untagged_port_are_dropped_and_no_tag_leaves() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    t.start_lbd(&seed_config("", "", (100, 100)));
    t.wait_healthy();

    // Everything lbd sends on the backend link passes sw-lb.
    let cap = Capture::start(&t, "sw", "sw-lb", 4);
    let plain = |sport| syn(&t, "198.18.0.2", sport, "198.18.0.10", 80);
    send_raw(
        &t,
        &[
            push_tag(&plain(40200), 0x8100, 100),
            push_tag(&plain(40201), 0x88a8, 100),
            push_tag(&push_tag(&plain(40202), 0x8100, 100), 0x88a8, 7),
            // Untagged: forwarded (the capture's control).
            plain(40203),
        ],
    );
    let frames = cap.frames();
    let tagged: Vec<_> = frames
        .iter()
        .filter(|f| !f["aux_vlan"].is_null() || f["tags"].as_array().is_some_and(|a| !a.is_empty()))
        .collect();
    assert!(
        tagged.is_empty(),
        "tagged frames left on the backend link: {tagged:?}"
    );
    let syns = frames
        .iter()
        .filter(|f| f["src"] == "198.19.1.250" && f["dport"] == 80)
        .count();
    assert!(
        syns >= 1,
        "the untagged SYN should have been forwarded: {frames:?}"
    );
    let s = t.stats();
    assert_eq!(s["drops"]["vlan_mismatch"], 3, "{s}");
    assert_eq!(port_stats(&t, "ext")["vlan_mismatch"], 3);
    assert_eq!(s["listeners"][0]["total_sessions"], 1, "{s}");
}

/// An 802.1Q access port in user space (the test kernel has no VLAN
/// devices): frames from `plain` leave `tagged` tagged `vid`; frames on
/// `tagged` with VLAN `vid` (inline, or taken off by the kernel) go to
/// `plain` untagged; everything else is dropped. Runs for `secs` seconds.
const RELAY: &str = r#"
import select, socket, struct, sys, time
tagged_if, plain_if, vid, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
def bind(name):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.setsockopt(263, 8, 1)  # SOL_PACKET, PACKET_AUXDATA
    s.bind((name, 0))
    return s
t, p = bind(tagged_if), bind(plain_if)
tag = struct.pack("!HH", 0x8100, vid)
print("ready", flush=True)
end = time.time() + secs
while time.time() < end:
    ready, _, _ = select.select([t, p], [], [], 0.2)
    for s in ready:
        data, anc, _, addr = s.recvmsg(65535, socket.CMSG_SPACE(32))
        if addr[2] == socket.PACKET_OUTGOING or len(data) < 14:
            continue
        if s is p:
            t.send(data[:12] + tag + data[12:])
            continue
        v = None
        for lvl, typ, d in anc:
            if lvl == 263 and typ == 8 and len(d) >= 20:
                st, _, _, _, _, tci, _ = struct.unpack("IIIHHHH", d[:20])
                if st & 0x10:
                    v = tci & 0xfff
        if v is None and data[12:14] == b"\x81\x00" and len(data) >= 18:
            v = struct.unpack("!H", data[14:16])[0] & 0xfff
            data = data[:12] + data[16:]
        if v == vid:
            p.send(data)
"#;

/// A [`RELAY`] running in a namespace; killed on drop.
struct Relay(Child);

impl Relay {
    fn start(t: &Topo, host: &str, tagged: &str, plain: &str, vid: u16) -> Relay {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &t.ns(host), "python3", "-c", RELAY])
            .args([tagged, plain, &vid.to_string(), "25"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the relay");
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.as_mut().expect("piped")).read_line(&mut line);
        let r = Relay(child);
        assert_eq!(line.trim(), "ready", "relay on {host}");
        r
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs each command in `host`, asserting success.
fn run_in(t: &Topo, host: &str, cmds: &[&[&str]]) {
    for cmd in cmds {
        let out = t.exec(host, cmd);
        assert!(
            out.status.success(),
            "{host}: {cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn no_offload(t: &Topo, host: &str, iface: &str) {
    let _ = t.exec(
        host,
        &[
            "ethtool", "-K", iface, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
        ],
    );
}

#[test]
fn vlan_ports_carry_traffic_end_to_end() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    // The client on VLAN 100: its addresses move to c-in, whose frames a
    // relay tags onto c-eth0.
    run_in(
        &t,
        "client",
        &[
            &[
                "ip", "link", "add", "c-in", "type", "veth", "peer", "name", "c-tap",
            ],
            &["ip", "addr", "flush", "dev", "c-eth0"],
            // The relay's raw side sends nothing of the kernel's own (IPv6
            // router solicitations, MLD reports): they would arrive
            // untagged on the VLAN port.
            &["sysctl", "-qw", "net.ipv6.conf.c-eth0.disable_ipv6=1"],
            &["ip", "link", "set", "c-in", "mtu", "1400", "up"],
            &["ip", "link", "set", "c-tap", "up"],
            &["ip", "addr", "add", "198.18.0.2/24", "dev", "c-in"],
            &[
                "ip",
                "addr",
                "add",
                "2001:db8:18::2/64",
                "dev",
                "c-in",
                "nodad",
            ],
            &["ip", "route", "replace", "default", "via", "198.18.0.1"],
            &[
                "ip",
                "-6",
                "route",
                "replace",
                "default",
                "via",
                "2001:db8:18::1",
            ],
        ],
    );
    // The backends on VLAN 200: the switch's port toward lbd is tagged.
    run_in(
        &t,
        "sw",
        &[
            &["ip", "link", "set", "sw-lb", "nomaster"],
            &["sysctl", "-qw", "net.ipv6.conf.sw-lb.disable_ipv6=1"],
            &[
                "ip", "link", "add", "sw-vl", "type", "veth", "peer", "name", "sw-vb",
            ],
            &["ip", "link", "set", "sw-vb", "master", "br0", "up"],
            &["ip", "link", "set", "sw-vl", "up"],
        ],
    );
    for (host, i) in [
        ("client", "c-in"),
        ("client", "c-tap"),
        ("sw", "sw-vl"),
        ("sw", "sw-vb"),
    ] {
        no_offload(&t, host, i);
    }
    let _client = Relay::start(&t, "client", "c-eth0", "c-tap", 100);
    let _backends = Relay::start(&t, "sw", "sw-lb", "sw-vl", 200);
    // ARP, ND, health checks and forwarded traffic must all carry the
    // port's tag, and a tag is swapped between the links.
    let config = seed_config("", "", (100, 100))
        .replacen(
            "interface = \"lb-ext\"\n",
            "interface = \"lb-ext\"\nvlan = 100\n",
            1,
        )
        .replacen(
            "interface = \"lb-int\"\n",
            "interface = \"lb-int\"\nvlan = 200\n",
            1,
        );
    t.start_lbd(&config);
    t.wait_healthy();
    for url in ["http://198.18.0.10:80/", "http://[2001:db8:18::10]:80/"] {
        let body = t.curl(url);
        assert!(
            body.as_deref().is_some_and(|b| b.contains("ECS0")),
            "{url} through VLANs 100 and 200: {body:?}"
        );
    }
    let ext = port_stats(&t, "ext");
    assert_eq!(ext["vlan"], 100, "{ext}");
    assert_eq!(ext["vlan_mismatch"], 0, "{ext}");
    // An untagged frame on the VLAN port is dropped.
    send_raw(&t, &[syn(&t, "198.18.0.2", 40300, "198.18.0.10", 80)]);
    t.wait_for(5, "the untagged SYN counted", |t| {
        port_stats(t, "ext")["vlan_mismatch"] == 1
    });
}
