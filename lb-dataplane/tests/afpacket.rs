//! The AF_PACKET backend against a real veth pair inside a throwaway network
//! namespace. Needs root, `ip` and `ethtool`; otherwise each test prints
//! `SKIPPED <test>: <reason>` and passes, or fails under CI
//! (`common/skip.rs`). No frame leaves the namespace.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use lb_dataplane::io::afpacket::{AfPacket, AfPacketOpts};
use lb_dataplane::io::{PacketIo, RxMeta};

#[path = "common/skip.rs"]
mod skip;

mod netns {
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Why these tests cannot run here, if they cannot.
    pub fn skip_reason() -> Option<String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Some("needs root (network namespaces, AF_PACKET)".into());
        }
        for (tool, arg) in [("ip", "-V"), ("ethtool", "--version")] {
            match Command::new(tool).arg(arg).output() {
                Ok(out) if out.status.success() => {}
                _ => return Some(format!("`{tool}` is not installed")),
            }
        }
        None
    }

    /// A network namespace, deleted on drop (also when the test panics).
    pub struct Netns {
        pub name: String,
    }

    fn run(cmd: &mut Command) {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    impl Netns {
        pub fn new(test: &str) -> Netns {
            static SEQ: AtomicU32 = AtomicU32::new(0);
            let name = format!(
                "lbafp-{}-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed),
                test
            );
            run(Command::new("ip").args(["netns", "add", &name]));
            Netns { name }
        }

        /// `ip -n NAME args…`
        pub fn ip(&self, args: &[&str]) {
            run(Command::new("ip").args(["-n", &self.name]).args(args));
        }

        /// `ip netns exec NAME args…`
        pub fn exec(&self, args: &[&str]) {
            run(Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(args));
        }

        /// Runs `f` on a thread that has entered the namespace.
        pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
            let path = format!("/var/run/netns/{}", self.name);
            std::thread::scope(|s| {
                s.spawn(|| {
                    let ns = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                    // SAFETY: `ns` is an open namespace file; setns only
                    // changes this thread's network namespace.
                    let ret = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(ret, 0, "setns: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e))
            })
        }

        /// A veth pair `a`–`b`, both up, IPv6 off; offloads off unless
        /// `offload` (then left at veth's defaults: checksum offload on).
        pub fn veth(&self, a: &str, b: &str, offload: bool) {
            self.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
            self.enter(|| {
                for ifname in [a, b] {
                    let knob = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
                    match std::fs::write(&knob, "1") {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{knob}: {e}"),
                        _ => {}
                    }
                }
            });
            for ifname in [a, b] {
                if !offload {
                    self.exec(&[
                        "ethtool", "-K", ifname, "tx", "off", "tso", "off", "gso", "off", "gro",
                        "off",
                    ]);
                }
                self.ip(&["link", "set", ifname, "up"]);
            }
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let ok = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("warning: could not delete network namespace {}", self.name);
            }
        }
    }
}

use netns::Netns;

/// IEEE 802 local experimental EtherType: nothing in the kernel answers it.
const TEST_TYPE: u16 = 0x88b5;

fn skip() -> bool {
    match netns::skip_reason() {
        Some(reason) => {
            skip::skip(&reason);
            true
        }
        None => false,
    }
}

fn small_ring() -> AfPacketOpts {
    AfPacketOpts {
        block_size: 64 << 10,
        block_count: 4,
        ..AfPacketOpts::default()
    }
}

/// The EtherType after any VLAN tags.
fn inner_type(frame: &[u8]) -> Option<u16> {
    let mut at = 12;
    loop {
        let t = u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?);
        if t == 0x8100 || t == 0x88a8 {
            at += 4;
        } else {
            return Some(t);
        }
    }
}

/// A test frame of `len` bytes carrying `seq`.
fn test_frame(dst: [u8; 6], src: [u8; 6], seq: u32, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&TEST_TYPE.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    let mut x = seq.wrapping_mul(2_654_435_761);
    while f.len() < len {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        f.push((x >> 16) as u8);
    }
    f
}

/// Receives for up to `timeout`, until `want` kept frames were collected.
fn collect(
    port: &mut AfPacket,
    want: usize,
    timeout: Duration,
    max: usize,
    keep: &dyn Fn(&[u8]) -> bool,
    out: &mut Vec<(Vec<u8>, RxMeta)>,
) {
    let deadline = Instant::now() + timeout;
    let start = out.len();
    while out.len() - start < want && Instant::now() < deadline {
        let n = port.recv_burst(max, &mut |frame, meta| {
            if keep(frame) {
                out.push((frame.to_vec(), meta));
            }
        });
        assert!(n <= max, "recv_burst({max}) returned {n}");
        if n == 0 {
            port.wait(5).expect("poll");
        }
    }
}

fn is_test_frame(frame: &[u8]) -> bool {
    inner_type(frame) == Some(TEST_TYPE)
}

#[test]
fn frames_arrive_byte_exact_and_are_not_read_back() {
    if skip() {
        return;
    }
    let ns = Netns::new("exact");
    ns.veth("va", "vb", false);
    ns.enter(|| {
        let mut a = AfPacket::open("va", &small_ring()).expect("open va");
        let mut b = AfPacket::open("vb", &small_ring()).expect("open vb");
        assert_ne!(a.mac(), [0; 6]);
        assert_ne!(a.mac(), b.mac());

        // ~2.3 MB through a 256 KiB ring: dozens of blocks, many turns.
        const N: u32 = 3000;
        let mut sent = Vec::new();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        for seq in 0..N {
            let len = 60 + (seq as usize * 37) % (1514 - 60 + 1);
            let frame = test_frame(b.mac(), a.mac(), seq, len);
            assert!(a.send(&frame), "frame {seq} of {len} bytes");
            sent.push(frame);
            if sent.len() % 32 == 0 || seq == N - 1 {
                a.flush().expect("flush");
                // Odd burst sizes: blocks are resumed mid-way.
                let behind = sent.len() - got.len();
                collect(
                    &mut b,
                    behind,
                    Duration::from_secs(2),
                    7,
                    &is_test_frame,
                    &mut got,
                );
                assert!(Instant::now() < deadline, "too slow");
            }
        }
        assert_eq!(got.len(), sent.len(), "frames lost");
        for (i, ((frame, meta), want)) in got.iter().zip(&sent).enumerate() {
            assert_eq!(frame, want, "frame {i} differs");
            assert_eq!(*meta, RxMeta::default(), "frame {i}");
        }

        // Too big for the MTU: refused and counted.
        assert!(!a.send(&vec![0u8; a.max_tx_frame() + 1]));
        assert!(!a.send(&[0u8; 10]));

        let bytes: u64 = sent.iter().map(|f| f.len() as u64).sum();
        let sa = a.stats();
        assert_eq!(
            (sa.tx_packets, sa.tx_bytes, sa.tx_dropped),
            (N as u64, bytes, 2)
        );
        let sb = b.stats();
        assert!(sb.rx_packets >= N as u64 && sb.rx_bytes >= bytes, "{sb:?}");
        assert_eq!(sb.rx_dropped, 0);

        // Outgoing frames are not read back: neither the socket's own nor
        // another's on the same interface (sent through the qdisc, where
        // the kernel shows outgoing frames to every other packet socket).
        let mut a2 = AfPacket::open(
            "va",
            &AfPacketOpts {
                qdisc_bypass: false,
                ..small_ring()
            },
        )
        .expect("open va again");
        for seq in 0..8 {
            assert!(a2.send(&test_frame(b.mac(), a2.mac(), N + seq, 100)));
        }
        a2.flush().expect("flush");
        let mut at_b = Vec::new();
        collect(
            &mut b,
            8,
            Duration::from_secs(2),
            64,
            &is_test_frame,
            &mut at_b,
        );
        assert_eq!(at_b.len(), 8, "the second sender's frames did not arrive");
        let mut echo = Vec::new();
        for port in [&mut a, &mut a2] {
            collect(
                port,
                1,
                Duration::from_millis(50),
                64,
                &is_test_frame,
                &mut echo,
            );
        }
        assert!(echo.is_empty(), "{} outgoing frames read back", echo.len());
    });
}

/// An IPv4/UDP frame of flow `flow` carrying `seq`: 198.18.0.1:(10000 +
/// flow) → 198.18.0.2:9, or the other way round if `reply`.
fn udp_frame(dst: [u8; 6], src: [u8; 6], flow: u16, reply: bool, seq: u32) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let payload = seq.to_be_bytes();
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    let (client, server) = ([198, 18, 0, 1], [198, 18, 0, 2]);
    let (saddr, daddr) = if reply {
        (server, client)
    } else {
        (client, server)
    };
    ip[12..16].copy_from_slice(&saddr);
    ip[16..20].copy_from_slice(&daddr);
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    let (sport, dport) = if reply {
        (9, 10_000 + flow)
    } else {
        (10_000 + flow, 9)
    };
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum
    f.extend_from_slice(&payload);
    f.resize(60, 0);
    f
}

fn udp_seq_flow(frame: &[u8]) -> Option<(u32, u16)> {
    if frame.get(12..14)? != [0x08, 0x00] || frame.get(23)? != &17 {
        return None;
    }
    let sport = u16::from_be_bytes(frame.get(34..36)?.try_into().ok()?);
    let dport = u16::from_be_bytes(frame.get(36..38)?.try_into().ok()?);
    let seq = u32::from_be_bytes(frame.get(42..46)?.try_into().ok()?);
    Some((seq, sport.max(dport).checked_sub(10_000)?))
}

#[test]
fn fanout_delivers_each_frame_once_and_keeps_both_directions_of_a_flow_together() {
    if skip() {
        return;
    }
    let ns = Netns::new("fanout");
    ns.veth("va", "vb", false);
    ns.enter(|| {
        let group = (std::process::id() & 0xffff) as u16;
        let opts = AfPacketOpts {
            fanout: Some(group),
            ..small_ring()
        };
        let mut a = AfPacket::open("va", &small_ring()).expect("open va");
        let mut socks = [
            AfPacket::open("vb", &opts).expect("open vb #1"),
            AfPacket::open("vb", &opts).expect("open vb #2"),
        ];
        let dst = socks[0].mac();

        const FLOWS: u16 = 32;
        const PER_FLOW: u32 = 20;
        let total = 2 * usize::from(FLOWS) * PER_FLOW as usize;
        let mut seen: HashMap<u32, usize> = HashMap::new();
        let mut flow_socks: HashMap<u16, HashSet<usize>> = HashMap::new();
        let mut seq = 0u32;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut drain = |socks: &mut [AfPacket; 2], seen: &mut HashMap<u32, usize>| {
            for (i, sock) in socks.iter_mut().enumerate() {
                sock.recv_burst(64, &mut |frame, _| {
                    if let Some((seq, flow)) = udp_seq_flow(frame) {
                        *seen.entry(seq).or_default() += 1;
                        flow_socks.entry(flow).or_default().insert(i);
                    }
                });
            }
        };
        for _ in 0..PER_FLOW {
            for flow in 0..FLOWS {
                // Both directions of a flow: the kernel's flow hash is
                // symmetric, so they must meet on one socket.
                for reply in [false, true] {
                    assert!(a.send(&udp_frame(dst, a.mac(), flow, reply, seq)));
                    seq += 1;
                }
            }
            a.flush().expect("flush");
            // Take this round in before sending the next, so the kernel's
            // receive backlog never holds more than one round (on a loaded
            // machine a deeper one overflows and drops frames).
            let round_end = Instant::now() + Duration::from_millis(500);
            while seen.len() < seq as usize && Instant::now() < round_end {
                drain(&mut socks, &mut seen);
                socks[0].wait(1).expect("poll");
            }
        }
        while seen.len() < total && Instant::now() < deadline {
            drain(&mut socks, &mut seen);
            socks[0].wait(2).expect("poll");
        }
        // Let duplicates, if any, arrive.
        let settle = Instant::now() + Duration::from_millis(20);
        while Instant::now() < settle {
            drain(&mut socks, &mut seen);
        }

        assert_eq!(seen.len(), total, "frames lost");
        assert!(seen.values().all(|&n| n == 1), "a frame came twice");
        for (flow, s) in &flow_socks {
            assert_eq!(s.len(), 1, "flow {flow} was split over sockets {s:?}");
        }
        let per_sock: Vec<usize> = (0..2)
            .map(|i| flow_socks.values().filter(|s| s.contains(&i)).count())
            .collect();
        assert!(
            per_sock.iter().all(|&n| n > 0),
            "one socket got every flow: {per_sock:?}"
        );
        let rx: u64 = socks.iter().map(|s| s.stats().rx_packets).sum();
        assert!(rx >= total as u64);
    });
}

#[test]
fn vlan_tags_are_put_back() {
    if skip() {
        return;
    }
    let ns = Netns::new("vlan");
    ns.veth("va", "vb", false);
    ns.enter(|| {
        let mut a = AfPacket::open("va", &small_ring()).expect("open va");
        let mut b = AfPacket::open("vb", &small_ring()).expect("open vb");
        let tag = |tpid: u16, tci: u16| [tpid.to_be_bytes(), tci.to_be_bytes()].concat();
        let mut frames = Vec::new();
        for tags in [
            tag(0x8100, 0x2064),                                 // 802.1Q, PCP 1, VID 100
            tag(0x88a8, 0x0ffe),                                 // 802.1ad
            [tag(0x88a8, 0x0123), tag(0x8100, 0x0456)].concat(), // QinQ
        ] {
            let plain = test_frame(b.mac(), a.mac(), frames.len() as u32, 100);
            let mut f = plain[..12].to_vec();
            f.extend_from_slice(&tags);
            f.extend_from_slice(&plain[12..]);
            assert!(a.send(&f));
            frames.push(f);
        }
        a.flush().expect("flush");
        let mut got = Vec::new();
        collect(
            &mut b,
            frames.len(),
            Duration::from_secs(2),
            32,
            &is_test_frame,
            &mut got,
        );
        let got: Vec<Vec<u8>> = got.into_iter().map(|(f, _)| f).collect();
        assert_eq!(got, frames);
        let st = b.stats();
        assert!(st.rx_bytes >= frames.iter().map(|f| f.len() as u64).sum());
    });
}

#[test]
fn kernel_udp_with_tx_offload_arrives_checksum_partial() {
    if skip() {
        return;
    }
    let ns = Netns::new("csum");
    ns.veth("va", "vb", true);
    ns.ip(&["addr", "add", "198.18.0.1/24", "dev", "va"]);
    let mut b = ns.enter(|| AfPacket::open("vb", &small_ring()).expect("open vb"));
    // 198.18.0.3 lives "behind" vb: the kernel routes out of va, not lo.
    let mac = b.mac().map(|x| format!("{x:02x}")).join(":");
    ns.ip(&[
        "neigh",
        "add",
        "198.18.0.3",
        "lladdr",
        &mac,
        "dev",
        "va",
        "nud",
        "permanent",
    ]);
    let got = ns.enter(move || {
        let sock = std::net::UdpSocket::bind("198.18.0.1:0").expect("bind");
        sock.send_to(b"checksum me", "198.18.0.3:9")
            .expect("send_to");
        let mut got = Vec::new();
        let keep = |f: &[u8]| {
            f.get(12..14) == Some(&[0x08, 0x00][..])
                && f.get(23) == Some(&17)
                && f.get(30..34) == Some(&[198, 18, 0, 3][..])
        };
        collect(&mut b, 1, Duration::from_secs(2), 32, &keep, &mut got);
        got
    });
    assert_eq!(got.len(), 1, "the UDP datagram did not arrive");
    let (frame, meta) = &got[0];
    assert!(meta.csum_partial, "{meta:?}");
    assert!(!meta.truncated);
    assert!(frame.ends_with(b"checksum me"));
}

/// Prints frames/s of a send→receive loop of 64-byte frames; asserts nothing
/// about speed. `cargo test --release --test afpacket loop_rate -- --nocapture`
#[test]
fn loop_rate_of_64_byte_frames() {
    if skip() {
        return;
    }
    let ns = Netns::new("rate");
    ns.veth("va", "vb", false);
    ns.enter(|| {
        let opts = AfPacketOpts {
            block_size: 64 << 10,
            block_count: 64,
            ..AfPacketOpts::default()
        };
        let mut a = AfPacket::open("va", &opts).expect("open va");
        let mut b = AfPacket::open("vb", &opts).expect("open vb");
        let frame = test_frame(b.mac(), a.mac(), 0, 64);
        let (mut sent, mut got) = (0u64, 0u64);
        let start = Instant::now();
        let run = Duration::from_secs(1);
        while start.elapsed() < run {
            // Keep more in flight than a block holds, so blocks fill up
            // instead of waiting for the retire timeout.
            if sent - got < 4096 {
                for _ in 0..32 {
                    a.send(&frame);
                }
                a.flush().expect("flush");
                sent += 32;
            }
            got += b.recv_burst(256, &mut |_, _| {}) as u64;
        }
        let secs = start.elapsed().as_secs_f64();
        let deadline = Instant::now() + Duration::from_millis(100);
        while got < sent && Instant::now() < deadline {
            got += b.recv_burst(256, &mut |_, _| {}) as u64;
        }
        let (sa, sb) = (a.stats(), b.stats());
        eprintln!(
            "afpacket loop, 64-byte frames: {:.0} frames/s ({} sent, {} received, tx_dropped {}, rx_dropped {})",
            got as f64 / secs,
            sent,
            got,
            sa.tx_dropped,
            sb.rx_dropped
        );
        assert!(got > 0);
    });
}

#[test]
fn kernel_drops_of_a_full_ring_are_counted() {
    if skip() {
        return;
    }
    let ns = Netns::new("drops");
    ns.veth("va", "vb", false);
    ns.enter(|| {
        let mut a = AfPacket::open("va", &small_ring()).expect("open va");
        // Two one-page blocks hold a few dozen small frames.
        let tiny = AfPacketOpts {
            block_size: 4096,
            block_count: 2,
            frame_size: 2048,
            block_timeout_ms: 1,
            ..AfPacketOpts::default()
        };
        let mut b = AfPacket::open("vb", &tiny).expect("open vb");
        const N: u64 = 500;
        for seq in 0..N as u32 {
            assert!(a.send(&test_frame(b.mac(), a.mac(), seq, 200)));
        }
        a.flush().expect("flush");
        assert_eq!(a.stats().tx_packets, N);
        // Nothing read yet: the ring is full and the rest was dropped.
        std::thread::sleep(Duration::from_millis(20));
        let mut got = Vec::new();
        collect(
            &mut b,
            N as usize,
            Duration::from_millis(200),
            64,
            &is_test_frame,
            &mut got,
        );
        let st = b.stats();
        assert!(st.rx_dropped > 0, "{st:?}");
        assert_eq!(got.len() as u64 + st.rx_dropped, N, "{st:?}");
        // Received frames are still intact and in order.
        let mut last = None;
        for (frame, _) in &got {
            let seq = u32::from_be_bytes(frame[14..18].try_into().expect("4 bytes"));
            assert_eq!(frame, &test_frame(b.mac(), a.mac(), seq, 200));
            assert!(last < Some(seq));
            last = Some(seq);
        }
    });
}

#[test]
fn wait_sleeps_while_idle_and_wakes_on_traffic() {
    if skip() {
        return;
    }
    let ns = Netns::new("wait");
    ns.veth("va", "vb", false);
    ns.enter(|| {
        let mut a = AfPacket::open("va", &small_ring()).expect("open va");
        let mut b = AfPacket::open("vb", &small_ring()).expect("open vb");
        let t = Instant::now();
        assert!(!b.wait(30).expect("poll"), "nothing was sent");
        assert!(
            t.elapsed() >= Duration::from_millis(25),
            "{:?}",
            t.elapsed()
        );

        assert!(a.send(&test_frame(b.mac(), a.mac(), 1, 60)));
        a.flush().expect("flush");
        let t = Instant::now();
        assert!(b.wait(2000).expect("poll"));
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        assert!(b.rx_ready());
        let mut got = Vec::new();
        collect(
            &mut b,
            1,
            Duration::from_secs(1),
            1,
            &is_test_frame,
            &mut got,
        );
        assert_eq!(got.len(), 1);
    });
}
