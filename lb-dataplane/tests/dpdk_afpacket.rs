//! DPDK over `net_af_packet` on one end of a veth pair inside a throwaway
//! network namespace; a plain AF_PACKET socket on the other end plays the
//! kernel side. Needs root, `ip` and `ethtool`; otherwise prints
//! `SKIPPED <test>: <reason>` and passes, or fails under CI
//! (`common/skip.rs`). No frame leaves the namespace, and no
//! IP address is configured (the frames carry an experimental EtherType).

// Built only with the `dpdk` feature (`cargo test --features dpdk`).
#![cfg(feature = "dpdk")]

mod dpdk_common;
#[path = "common/skip.rs"]
mod skip;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::Duration;

use dpdk_common::{collect, seq_of, test_frame, TEST_TYPE};
use lb_dataplane::io::dpdk::{DpdkPort, DpdkPortOpts, Mempool};
use lb_dataplane::io::PacketIo;

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

fn skip_reason() -> Option<String> {
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

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace, deleted on drop (also when the test panics).
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        let name = format!("lbdpdk-{}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        Netns { name }
    }

    fn ip(&self, args: &[&str]) {
        run(Command::new("ip").args(["-n", &self.name]).args(args));
    }

    fn exec(&self, args: &[&str]) {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args));
    }

    /// Moves the calling thread into the namespace.
    fn enter(&self) {
        let path = format!("/var/run/netns/{}", self.name);
        let ns = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: `ns` is an open namespace file; setns only changes the
        // calling thread's network namespace (this test's own thread).
        let ret = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(ret, 0, "setns: {}", std::io::Error::last_os_error());
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

/// A plain AF_PACKET socket bound to `ifname` for our EtherType only.
struct KernelSide {
    fd: OwnedFd,
    ifindex: i32,
}

impl KernelSide {
    fn open(ifname: &str) -> KernelSide {
        let proto = TEST_TYPE.to_be();
        // SAFETY: plain socket creation; the fd is owned right below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let c = CString::new(ifname).expect("no NUL");
        // SAFETY: c is a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert!(ifindex > 0, "no interface {ifname}");
        let ifindex = i32::try_from(ifindex).expect("small ifindex");
        let sll = sockaddr(ifindex);
        // SAFETY: sll is a valid sockaddr_ll of the size passed.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(ret, 0, "bind: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: tv is a valid timeval of the size passed.
        let ret = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        assert_eq!(ret, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
        KernelSide { fd, ifindex }
    }

    fn send(&self, frame: &[u8]) {
        let sll = sockaddr(self.ifindex);
        // SAFETY: frame and sll are valid for the lengths passed.
        let ret = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            ret,
            frame.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The next frame, or `None` after the receive timeout.
    fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = usize::try_from(n).ok()?;
        buf.truncate(n);
        Some(buf)
    }
}

fn sockaddr(ifindex: i32) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = TEST_TYPE.to_be();
    sll.sll_ifindex = ifindex;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&MAC_A);
    sll
}

#[test]
fn net_af_packet() {
    if let Some(reason) = skip_reason() {
        skip::skip(&reason);
        return;
    }
    let _cleanup = dpdk_common::RuntimeDirGuard;
    let pid = std::process::id();
    let (a, b) = (format!("lbd{pid}a"), format!("lbd{pid}b"));
    let ns = Netns::new();
    let mac = |m: [u8; 6]| {
        m.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    ns.ip(&[
        "link",
        "add",
        &a,
        "address",
        &mac(MAC_A),
        "type",
        "veth",
        "peer",
        "name",
        &b,
        "address",
        &mac(MAC_B),
    ]);
    for ifname in [&a, &b] {
        ns.exec(&[
            "ethtool", "-K", ifname, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
        ]);
        ns.ip(&["link", "set", ifname, "up"]);
    }
    // The DPDK port's socket and ours are made in the namespace: this
    // thread (the test's own) moves there for good.
    ns.enter();
    for ifname in [&a, &b] {
        // Quiet links: no IPv6 autoconfiguration chatter.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"),
            "1",
        );
    }

    {
        let _eal = dpdk_common::init(&[format!("net_af_packet0,iface={a},qdisc_bypass=1")]);
        let pool =
            Mempool::new("afp_pool", 4095, 64, Mempool::DEFAULT_DATA_ROOM, None).expect("mempool");
        let port = DpdkPort::open(0, 1, &pool, &DpdkPortOpts::default()).expect("open");
        assert_eq!(port.mac(), MAC_A);
        eprintln!("{port:?}: link {}", port.link_status().expect("link"));
        let mut q = port.queue(0).expect("queue 0");
        let kernel = KernelSide::open(&b);

        // DPDK -> kernel.
        let sent: BTreeMap<u32, Vec<u8>> = (0..64u32)
            .map(|i| {
                (
                    i,
                    test_frame(MAC_B, MAC_A, i, 60 + (i as usize * 23) % 1455),
                )
            })
            .collect();
        for f in sent.values() {
            assert!(q.send(f));
        }
        q.flush().expect("flush");
        let mut got = BTreeMap::new();
        while got.len() < sent.len() {
            let Some(f) = kernel.recv() else { break };
            if f[6..12] == MAC_A {
                got.insert(seq_of(&f).expect("test frame"), f);
            }
        }
        assert_eq!(got, sent, "the kernel side got every DPDK frame byte-exact");
        assert_eq!(q.stats().tx_packets, sent.len() as u64);

        // Kernel -> DPDK.
        let sent: BTreeMap<u32, Vec<u8>> = (1000..1064u32)
            .map(|i| {
                (
                    i,
                    test_frame(MAC_A, MAC_B, i, 60 + (i as usize * 31) % 1455),
                )
            })
            .collect();
        for f in sent.values() {
            kernel.send(f);
        }
        let got: BTreeMap<u32, Vec<u8>> =
            collect(&mut q, sent.len(), Duration::from_secs(5), &|f| {
                f[6..12] == MAC_B && seq_of(f).is_some()
            })
            .into_iter()
            .map(|f| (seq_of(&f).expect("filtered"), f))
            .collect();
        assert_eq!(got, sent, "DPDK got every kernel frame byte-exact");
        drop(q);
        drop(port);
    }
    dpdk_common::check_runtime_dir_removed();
}
