//! End to end, with raw frames from the client link: ICMP errors that do
//! not fit the path of the packet they quote are not relayed; forwarded
//! packets lose a hop and expire with "time exceeded"; source routes are
//! dropped; a packet over the egress link's MTU (lowered while `lbd` runs)
//! gets "fragmentation needed" / "packet too big" and makes no session.
//! Needs root, iproute2, ethtool, curl, nginx and python3.

mod common;

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};

use common::{seed_config, Topo, SERIAL};
use lb_core::packet::{self, FrameSpec, MacAddr, Parsed};

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn addr(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// The Ethernet address of `ifname` in namespace `host`.
fn mac_of(t: &Topo, host: &str, ifname: &str) -> MacAddr {
    let out = t.exec(host, &["cat", &format!("/sys/class/net/{ifname}/address")]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut m = [0u8; 6];
    for (b, part) in m.iter_mut().zip(text.trim().split(':')) {
        *b = u8::from_str_radix(part, 16).expect("a MAC address");
    }
    MacAddr(m)
}

/// Sends raw Ethernet frames out of `ifname` in namespace `host`.
fn send_frames(t: &Topo, host: &str, ifname: &str, frames: &[Vec<u8>]) {
    let hex: Vec<String> = frames
        .iter()
        .map(|f| f.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let py = format!(
        "import socket\ns=socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind(('{ifname}', 0))\nfor h in {hex:?}:\n    s.send(bytes.fromhex(h))\n"
    );
    let out = t.exec(host, &["python3", "-c", &py]);
    assert!(
        out.status.success(),
        "send: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A capture of the IP frames arriving on an interface, for a bounded
/// time.
struct Capture {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Capture {
    /// Starts capturing on `ifname` in `host` for `secs` seconds; returns
    /// once the socket is bound.
    fn start(t: &Topo, host: &str, ifname: &str, secs: u32) -> Capture {
        let py = format!(
            "import socket, select, time\n\
             s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))\n\
             s.bind(('{ifname}', 0))\n\
             print('ready', flush=True)\n\
             end = time.time() + {secs}\n\
             n = 0\n\
             while n < 2000:\n\
             \x20   left = end - time.time()\n\
             \x20   if left <= 0: break\n\
             \x20   r, _, _ = select.select([s], [], [], left)\n\
             \x20   if not r: continue\n\
             \x20   data, a = s.recvfrom(65535)\n\
             \x20   if a[2] == socket.PACKET_OUTGOING: continue\n\
             \x20   if data[12:14] in (b'\\x08\\x00', b'\\x86\\xdd'):\n\
             \x20       n += 1\n\
             \x20       print(data.hex(), flush=True)\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &t.ns(host), "python3", "-c", &py])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the capture");
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        out.read_line(&mut line).expect("capture output");
        assert_eq!(line.trim(), "ready", "the capture did not start");
        Capture { child, out }
    }

    /// Waits for the capture to end; the frames it saw.
    fn frames(mut self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        for line in (&mut self.out).lines() {
            let line = line.expect("capture output");
            let bytes = (0..line.len() / 2)
                .map(|i| u8::from_str_radix(&line[2 * i..2 * i + 2], 16).expect("hex"))
                .collect();
            frames.push(bytes);
        }
        let _ = self.child.wait();
        frames
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ICMP or ICMPv6 errors among `frames`: (parsed, type, code, rest of
/// header, the quoted packet's 5-tuple).
fn icmp_errors(frames: &[Vec<u8>]) -> Vec<(Parsed, u8, u8, u32, String)> {
    frames
        .iter()
        .filter_map(|f| {
            let p = packet::parse(f).ok()?;
            if !p.is_icmp_error() {
                return None;
            }
            let (ty, code) = p.icmp?;
            let l4 = &f[p.l4_offset..];
            let rest = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
            let quoted = packet::parse_icmp_inner(f, &p).ok()?;
            Some((p, ty, code, rest, quoted.to_string()))
        })
        .collect()
}

/// The client's frames toward `lbd`'s client port.
struct Client {
    mac: MacAddr,
    lbd: MacAddr,
}

impl Client {
    fn new(t: &Topo) -> Client {
        Client {
            mac: mac_of(t, "client", "c-eth0"),
            lbd: mac_of(t, "lb", "lb-ext"),
        }
    }

    /// A TCP SYN of `len` IP bytes (at least the headers).
    fn syn(&self, src: &str, dst: &str, sport: u16, dport: u16, ttl: u8, len: usize) -> Vec<u8> {
        let header = if addr(src).is_ipv6() {
            40 + 20
        } else {
            20 + 20
        };
        packet::build_frame(&FrameSpec {
            src_mac: self.mac,
            dst_mac: self.lbd,
            src: addr(src),
            dst: addr(dst),
            proto: 6,
            sport,
            dport,
            tcp_flags: 0x02,
            tcp_seq: 1000,
            ttl,
            payload: vec![0; len.saturating_sub(header)],
            ..FrameSpec::default()
        })
    }
}

fn drops(t: &Topo, kind: &str) -> u64 {
    t.stats()["drops"][kind].as_u64().unwrap_or(0)
}

fn sessions_created(t: &Topo) -> u64 {
    t.stats()["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| w["sessions_created"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn icmp_errors_are_not_relayed_outside_the_session() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    t.start_lbd(&seed_config("", "", (100, 100)));
    let client = Client::new(&t);

    // A routed session: be1 (198.19.1.11:5000) sends a datagram to the
    // client (198.18.0.2:6000), which it allows as egress.
    let py = "import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('198.19.1.11', 5000))\ns.sendto(b'hello', ('198.18.0.2', 6000))\n";
    let got = Capture::start(&t, "client", "c-eth0", 3);
    let out = t.exec("be1", &["python3", "-c", py]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frames = got.frames();
    assert!(
        frames
            .iter()
            .any(|f| packet::parse(f).is_ok_and(|p| p.dport == 6000)),
        "the session's first datagram reached the client"
    );

    // What be1 sent, as a router would quote it.
    let sent = packet::build_frame(&FrameSpec {
        src: addr("198.19.1.11"),
        dst: addr("198.18.0.2"),
        proto: 17,
        sport: 5000,
        dport: 6000,
        payload: b"hello".to_vec(),
        ..FrameSpec::default()
    });
    let sent_p = packet::parse(&sent).expect("valid");
    let error = |from: &str, to: &str| {
        let mut f =
            packet::build_icmp_error(&sent, &sent_p, addr(from), 3, 3, 0, client.mac, client.lbd)
                .expect("an error");
        // build_icmp_error answers the quoted packet's sender: address
        // it to `to` instead (the attack), keeping the checksum right.
        let p = packet::parse(&f).expect("valid");
        let at = p.l3_offset + 16;
        let IpAddr::V4(to) = addr(to) else {
            panic!("IPv4")
        };
        f[at..at + 4].copy_from_slice(&to.octets());
        packet::Ipv4Packet::new_unchecked(&mut f[p.l3_offset..]).fill_checksum();
        f
    };

    // From the client link: an error quoting be1's packet, sent to be2 (a
    // third host, outside the session), and one to be1 itself (the
    // sender: the client is the quoted destination, so this one fits).
    let be2 = Capture::start(&t, "be2", "eth0", 6);
    let be1 = Capture::start(&t, "be1", "eth0", 6);
    let before = drops(&t, "icmp_error_mismatch");
    send_frames(
        &t,
        "client",
        "c-eth0",
        &[
            error("198.18.0.2", "198.19.1.12"),
            error("198.18.0.2", "198.19.1.11"),
        ],
    );
    let at_be2 = icmp_errors(&be2.frames());
    let at_be1 = icmp_errors(&be1.frames());
    assert!(
        at_be2.is_empty(),
        "no error reaches the third host: {at_be2:?}"
    );
    assert!(
        at_be1.iter().any(|(p, ty, _, _, q)| *ty == 3
            && p.src == addr("198.18.0.2")
            && q == "udp 198.19.1.11:5000 > 198.18.0.2:6000"),
        "the error from the session's other end reaches be1: {at_be1:?}"
    );
    t.wait_for(3, "the mismatch counted", |t| {
        drops(t, "icmp_error_mismatch") > before
    });
}

#[test]
fn forwarded_packets_lose_a_hop_and_expire_with_time_exceeded() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    t.start_lbd(&seed_config("", "", (100, 100)));
    let client = Client::new(&t);

    // TTL 1 through a listener and to an instance, hop limit 1 likewise:
    // "time exceeded" from the client port's address, quoting the packet
    // as the client sent it.
    let expired = [
        client.syn("198.18.0.2", "198.18.0.10", 41001, 80, 1, 60),
        client.syn("198.18.0.2", "198.19.1.11", 41002, 80, 1, 60),
        client.syn("2001:db8:18::2", "2001:db8:18::10", 41003, 80, 1, 80),
        client.syn("2001:db8:18::2", "2001:db8:19:1::11", 41004, 80, 1, 80),
    ];
    let created = sessions_created(&t);
    let cap = Capture::start(&t, "client", "c-eth0", 3);
    send_frames(&t, "client", "c-eth0", &expired);
    let errors = icmp_errors(&cap.frames());
    for (src, dst, port, v6) in [
        ("198.18.0.2", "198.18.0.10", 41001, false),
        ("198.18.0.2", "198.19.1.11", 41002, false),
        ("2001:db8:18::2", "2001:db8:18::10", 41003, true),
        ("2001:db8:18::2", "2001:db8:19:1::11", 41004, true),
    ] {
        let quoted = if v6 {
            format!("tcp [{src}]:{port} > [{dst}]:80")
        } else {
            format!("tcp {src}:{port} > {dst}:80")
        };
        let (ty, from) = if v6 {
            (3, "2001:db8:18::1")
        } else {
            (11, "198.18.0.1")
        };
        assert!(
            errors
                .iter()
                .any(|(p, t, c, _, q)| *t == ty && *c == 0 && p.src == addr(from) && *q == quoted),
            "time exceeded for {quoted}: {errors:?}"
        );
    }
    assert_eq!(
        sessions_created(&t),
        created,
        "an expired packet makes no session"
    );
    assert!(drops(&t, "ttl_exceeded") >= 4);
    assert!(t.stats()["icmp_errors"]["sent"].as_u64().unwrap_or(0) >= 4);
    let text = String::from_utf8_lossy(&t.lbctl(&["stats"]).stdout).to_string();
    assert!(
        text.contains("ttl_exceeded") && text.contains("icmp errors sent"),
        "lbctl stats shows them: {text}"
    );

    // TTL 5 leaves with 4, through a listener and routed.
    let be1 = Capture::start(&t, "be1", "eth0", 6);
    let be2 = Capture::start(&t, "be2", "eth0", 6);
    send_frames(
        &t,
        "client",
        "c-eth0",
        &[
            client.syn("198.18.0.2", "198.18.0.10", 41005, 80, 5, 60),
            client.syn("198.18.0.2", "198.19.1.11", 41006, 80, 5, 60),
        ],
    );
    let mut seen: Vec<Parsed> = be1
        .frames()
        .iter()
        .chain(&be2.frames())
        .filter_map(|f| packet::parse(f).ok())
        .collect();
    seen.retain(|p| p.proto == 6 && p.tcp_flags == 0x02);
    assert!(
        seen.iter()
            .any(|p| p.src == addr("198.19.1.250") && p.ttl == 4),
        "the listener's SYN reaches a backend with TTL 4: {seen:?}"
    );
    assert!(
        seen.iter().any(|p| p.sport == 41006 && p.ttl == 4),
        "the routed SYN reaches be1 with TTL 4: {seen:?}"
    );
}

#[test]
fn source_routed_packets_are_dropped() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    t.start_lbd(&seed_config("", "", (100, 100)));
    let client = Client::new(&t);
    let mut lsrr = client.syn("198.18.0.2", "198.19.1.11", 42001, 80, 64, 40);
    // Loose source route through be2.
    packet::add_ipv4_options(&mut lsrr, &[0x83, 7, 4, 198, 19, 1, 12]);
    let mut ssrr = client.syn("198.18.0.2", "198.19.1.11", 42002, 80, 64, 40);
    packet::add_ipv4_options(&mut ssrr, &[0x89, 7, 4, 198, 19, 1, 12]);
    let mut rr = client.syn("198.18.0.2", "198.19.1.11", 42003, 80, 64, 40);
    packet::add_ipv4_options(&mut rr, &[7, 7, 4, 0, 0, 0, 0]);
    let mut rh0 = client.syn("2001:db8:18::2", "2001:db8:19:1::11", 42004, 80, 64, 60);
    let mut body = vec![0u8, 1, 0, 0, 0, 0];
    body.extend_from_slice(&[
        0x20, 0x01, 0x0d, 0xb8, 0, 0x19, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x12,
    ]);
    packet::add_ipv6_ext_header(&mut rh0, 43, &body);

    let before = drops(&t, "ip_source_route");
    let be1 = Capture::start(&t, "be1", "eth0", 6);
    send_frames(&t, "client", "c-eth0", &[lsrr, ssrr, rr, rh0]);
    let ports: Vec<u16> = be1
        .frames()
        .iter()
        .filter_map(|f| packet::parse(f).ok())
        .filter(|p| p.proto == 6 && p.tcp_flags == 0x02)
        .map(|p| p.sport)
        .collect();
    assert!(ports.contains(&42003), "record route passes: {ports:?}");
    for dropped in [42001, 42002, 42004] {
        assert!(
            !ports.contains(&dropped),
            "{dropped} was source-routed: {ports:?}"
        );
    }
    t.wait_for(3, "source routes counted", |t| {
        drops(t, "ip_source_route") >= before + 3
    });
}

#[test]
fn packets_over_a_lowered_link_mtu_get_fragmentation_needed_and_no_session() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    t.start_lbd(&seed_config("", "", (100, 100)));
    let client = Client::new(&t);
    let port_mtu = |t: &Topo, name: &str| {
        t.stats()["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .and_then(|p| p["mtu"].as_u64())
    };
    assert_eq!(port_mtu(&t, "int"), Some(1500));
    // The backend link's MTU drops while lbd runs.
    let out = t.exec("lb", &["ip", "link", "set", "lb-int", "mtu", "1280"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.wait_for(5, "lbd to read the new MTU", |t| {
        port_mtu(t, "int") == Some(1280)
    });

    let created = sessions_created(&t);
    let cap = Capture::start(&t, "client", "c-eth0", 3);
    send_frames(
        &t,
        "client",
        "c-eth0",
        &[
            client.syn("198.18.0.2", "198.18.0.10", 43001, 80, 64, 1400),
            client.syn("198.18.0.2", "198.19.1.11", 43002, 80, 64, 1400),
            client.syn("2001:db8:18::2", "2001:db8:18::10", 43003, 80, 64, 1400),
            client.syn("2001:db8:18::2", "2001:db8:19:1::11", 43004, 80, 64, 1400),
        ],
    );
    let errors = icmp_errors(&cap.frames());
    for (dst, port, v6) in [
        ("198.18.0.10", 43001, false),
        ("198.19.1.11", 43002, false),
        ("2001:db8:18::10", 43003, true),
        ("2001:db8:19:1::11", 43004, true),
    ] {
        let (ty, code) = if v6 { (2, 0) } else { (3, 4) };
        assert!(
            errors.iter().any(|(_, t, c, mtu, q)| *t == ty
                && *c == code
                && *mtu == 1280
                && q.contains(&format!(":{port} > "))
                && q.contains(dst)),
            "{dst}:{port}: too big, mtu 1280: {errors:?}"
        );
    }
    assert_eq!(
        sessions_created(&t),
        created,
        "no session for what could not leave"
    );
    assert!(drops(&t, "packet_too_big") >= 4);

    // Path-MTU discovery then works through the listener: a POST larger
    // than one 1500-byte packet goes through at 1280.
    let body = "x".repeat(20_000);
    let out = t.exec(
        "client",
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            "--data",
            &body,
            "http://198.18.0.10/",
        ],
    );
    let code = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && code.starts_with('4'),
        "nginx answered the POST (405 on a static file): {code:?}"
    );
}
