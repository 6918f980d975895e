//! The AF_PACKET forwarding path allocates nothing: `lbd`'s own worker
//! loops (`Daemon::start` with `io = "af_packet"`, the seed's step 6, two
//! workers) forward the SYNs of established FULLNAT sessions, resent
//! without end by a client, between two veth links in network namespaces,
//! and a counting global allocator counts every allocation a worker makes
//! on its forwarding path (`lb_dataplane::alloc::on_forwarding_path`: from
//! its RX bursts to its TX flushes, frames handed to the other worker
//! included). After a warm-up, many bursts later, the count is still 0.
//!
//! ```text
//!   client ns          lb ns (this process's daemon)          backend ns
//!   cl-eth  <== veth ==>  lb-ext  [lbd]  lb-int  <== veth ==>  be-eth
//!   198.18.0.2            198.18.0.1     198.19.1.1            198.19.1.11, .12
//! ```
//!
//! The backends' kernel answers lbd's ARP requests; an nftables rule drops
//! the SYNs that reach them, so no RST closes a session. Needs root, `ip`,
//! `ethtool` and `nft`; without them it says SKIPPED, or fails under CI
//! (`common/skip.rs`). The namespaces are deleted on every way out.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lb_dataplane::daemon::Daemon;

mod common;

#[path = "common/zero_alloc.rs"]
mod zero_alloc;
use zero_alloc::ON_PATH;

#[global_allocator]
static ALLOC: zero_alloc::Counting = zero_alloc::Counting;

/// Sessions replayed: a burst or two of distinct flows, spread over both
/// workers.
const FLOWS: u16 = 64;

/// Why the test cannot run here, if it cannot.
fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, AF_PACKET)".into());
    }
    for (tool, arg) in [("ip", "-V"), ("ethtool", "--version"), ("nft", "--version")] {
        if !Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(format!("needs `{tool}` (CI installs it: .ci/run)"));
        }
    }
    None
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The three namespaces, deleted on drop (also when the test panics).
struct Hosts {
    prefix: String,
}

impl Hosts {
    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    fn ip(&self, host: &str, args: &[&str]) -> String {
        run(Command::new("ip").args(["-n", &self.ns(host)]).args(args))
    }

    fn exec(&self, host: &str, args: &[&str]) {
        run(Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .args(args));
    }

    fn up() -> Hosts {
        let h = Hosts {
            prefix: format!("lbza{}", std::process::id()),
        };
        for host in ["lb", "cl", "be"] {
            run(Command::new("ip").args(["netns", "add", &h.ns(host)]));
        }
        for (lb_if, host, peer, addrs) in [
            ("lb-ext", "cl", "cl-eth", &["198.18.0.2/24"][..]),
            (
                "lb-int",
                "be",
                "be-eth",
                &["198.19.1.11/24", "198.19.1.12/24"][..],
            ),
        ] {
            let peer_ns = h.ns(host);
            h.ip(
                "lb",
                &[
                    "link", "add", lb_if, "type", "veth", "peer", "name", peer, "netns", &peer_ns,
                ],
            );
            // Raw sockets read and write these links: no offloads.
            for (ns, ifname) in [("lb", lb_if), (host, peer)] {
                h.exec(
                    ns,
                    &[
                        "ethtool", "-K", ifname, "tx", "off", "tso", "off", "gso", "off", "gro",
                        "off",
                    ],
                );
                h.ip(ns, &["link", "set", ifname, "up"]);
            }
            for a in addrs {
                h.ip(host, &["addr", "add", a, "dev", peer]);
            }
        }
        // The backends drop what lbd forwards (no RST closes a session).
        h.exec("be", &["nft", "add", "table", "inet", "be"]);
        h.exec(
            "be",
            &[
                "nft",
                "add chain inet be in { type filter hook input priority 0; policy accept; }",
            ],
        );
        h.exec(
            "be",
            &[
                "nft", "add", "rule", "inet", "be", "in", "tcp", "dport", "80", "drop",
            ],
        );
        h
    }

    /// The MAC address of `ifname` in `host`.
    fn mac(&self, host: &str, ifname: &str) -> [u8; 6] {
        let out = self.ip(host, &["-o", "link", "show", "dev", ifname]);
        let hex = out
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no MAC in {out:?}"));
        let mut mac = [0u8; 6];
        for (b, part) in mac.iter_mut().zip(hex.split(':')) {
            *b = u8::from_str_radix(part, 16).expect("a hex byte");
        }
        mac
    }

    /// Runs `f` with the calling thread in `host`'s network namespace, then
    /// moves it back.
    fn inside<T>(&self, host: &str, f: impl FnOnce() -> T) -> T {
        let home = File::open("/proc/thread-self/ns/net").expect("this thread's namespace");
        let path = format!("/var/run/netns/{}", self.ns(host));
        let ns = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: `ns` is an open namespace file; setns only changes this
        // thread's network namespace.
        let ret = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(ret, 0, "setns: {}", std::io::Error::last_os_error());
        let out = f();
        // SAFETY: as above, back to the namespace the thread came from.
        let ret = unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(ret, 0, "setns back: {}", std::io::Error::last_os_error());
        out
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for host in ["lb", "cl", "be"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(host)])
                .status();
        }
    }
}

/// Sends `frames` round and round on `ifname` (of the calling thread's
/// namespace) until `stop`, or for `max` at most.
fn replay(ifname: &str, frames: &[Vec<u8>], stop: &AtomicBool, max: Duration) {
    // SAFETY: plain socket(2); the descriptor is owned and closed below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        )
    };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    let name = std::ffi::CString::new(ifname).expect("a name");
    // SAFETY: `name` is a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index > 0, "{ifname}: {}", std::io::Error::last_os_error());
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = i32::try_from(index).expect("an interface index");
    // SAFETY: `addr` is a valid sockaddr_ll of the given length.
    let ret = unsafe {
        libc::bind(
            fd,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(ret, 0, "bind: {}", std::io::Error::last_os_error());
    let end = Instant::now() + max;
    'out: while Instant::now() < end {
        for f in frames {
            if stop.load(Ordering::Relaxed) {
                break 'out;
            }
            // SAFETY: `f` is a readable buffer of f.len() bytes. A full
            // queue (ENOBUFS) just loses the frame: the next round resends.
            unsafe { libc::send(fd, f.as_ptr().cast(), f.len(), 0) };
        }
    }
    // SAFETY: `fd` is ours and not used afterwards.
    unsafe { libc::close(fd) };
}

use zero_alloc::{forwarded, wait_forwarded};

#[test]
fn afpacket_forwarding_allocates_nothing_per_packet() {
    if let Some(why) = unsupported() {
        common::skip::skip(&why);
        return;
    }
    let hosts = Hosts::up();
    let dir = std::env::temp_dir().join(format!("lbzeroalloc-afp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("lbd.toml");
    // The seed's step 6 on AF_PACKET, two workers, health checks off:
    // nothing but the test's own frames on the links.
    let text = common::seed_config(
        "security_groups = [\"sg-alb\"]",
        &common::sg_alb(false),
        (100, 100),
    )
    .replace(
        "[server_group.health_check]\n",
        "[server_group.health_check]\nenabled = false\n",
    );
    std::fs::write(&config, text).expect("config");
    let daemon = hosts.inside("lb", || {
        Daemon::start(&config).unwrap_or_else(|e| panic!("lbd: {e:#}"))
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(daemon.shared.workers.len(), 2, "two workers");

    let frames =
        zero_alloc::client_syns(hosts.mac("cl", "cl-eth"), hosts.mac("lb", "lb-ext"), FLOWS);
    let stop = AtomicBool::new(false);
    let (warm, before, frames_counted, secs, allocations, stats) = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            hosts.inside("cl", || {
                replay("cl-eth", &frames, &stop, Duration::from_secs(90));
            });
        });
        // Warm-up: sessions opened, neighbours learned, every buffer the
        // loops keep grown to its size.
        let warm = wait_forwarded(&daemon, 20_000, Duration::from_secs(30));
        let before = ON_PATH.swap(0, Ordering::Relaxed);
        let counted_from = forwarded(&daemon);
        let t = Instant::now();
        let after = wait_forwarded(&daemon, counted_from + 100_000, Duration::from_secs(40));
        let secs = t.elapsed().as_secs_f64();
        let allocations = ON_PATH.load(Ordering::Relaxed);
        let stats = lb_dataplane::control::stats(&daemon.shared);
        stop.store(true, Ordering::Relaxed);
        sender.join().expect("the sender");
        (warm, before, after - counted_from, secs, allocations, stats)
    });
    daemon.stop();
    drop(hosts);

    eprintln!(
        "warm-up: {warm} frames forwarded, {before} allocations on the forwarding path; \
         then {frames_counted} frames in {secs:.2} s ({:.3} Mpps): {allocations} allocations",
        frames_counted as f64 / secs / 1e6
    );
    let handed: u64 = stats["workers"].as_array().map_or(0, |ws| {
        ws.iter().filter_map(|w| w["handoff_out"].as_u64()).sum()
    });
    assert!(
        warm >= 20_000,
        "the warm-up forwarded {warm} frames: {stats}"
    );
    assert!(
        frames_counted >= 100_000,
        "forwarded {frames_counted} frames after the warm-up: {stats}"
    );
    // Both workers' paths ran: each read frames, and some flows' frames
    // were handed to their owner.
    assert!(handed > 0, "no frame handed over: {stats}");
    assert_eq!(
        allocations, 0,
        "allocations on the forwarding path over {frames_counted} frames: {stats}"
    );
}
