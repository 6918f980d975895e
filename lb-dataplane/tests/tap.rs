//! The exception path's TAP interface, made in a network namespace of its
//! own (one thread's, `unshare(CLONE_NEWNET)`): created with the port's
//! MAC address, MTU and addresses and up; never taking over an existing
//! interface; gone when dropped. Needs root (CAP_NET_ADMIN); elsewhere it
//! prints `SKIPPED …` and passes, or fails under CI.

#[path = "common/skip.rs"]
mod skip;

use std::net::Ipv6Addr;

use ipnet::IpNet;
use lb_dataplane::exception::{link_local, Tap};

fn index_of(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("name");
    // SAFETY: `c` is a valid NUL-terminated string for the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// Interface ioctl `op` on `name`, returning the filled request.
fn query(name: &str, op: libc::Ioctl) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all zeroes is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: `req` is a valid ifreq for the call; `op` reads one.
    let rc = unsafe { libc::ioctl(fd, op, &mut req as *mut libc::ifreq) };
    // SAFETY: `fd` is ours.
    unsafe { libc::close(fd) };
    assert_eq!(
        rc,
        0,
        "ioctl on {name}: {}",
        std::io::Error::last_os_error()
    );
    req
}

#[test]
fn a_tap_carries_the_port_s_identity_and_goes_when_dropped() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip::skip("needs root (a network namespace and a TAP interface)");
        return;
    }
    std::thread::spawn(|| {
        // SAFETY: unshare affects only this thread, which ends with the test.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        let mac = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x0b];
        let addrs: Vec<IpNet> = vec![
            "198.18.99.1/24".parse().expect("net"),
            "2001:db8:99::1/64".parse().expect("net"),
        ];
        let ll = link_local(mac);
        let tap = Tap::create("lbt-tap0").expect("create");
        tap.configure(mac, 1400, &addrs, Some(ll))
            .expect("configure");

        // SAFETY: the ioctls filled the members read.
        unsafe {
            let hw = query("lbt-tap0", libc::SIOCGIFHWADDR).ifr_ifru.ifru_hwaddr;
            let got: Vec<u8> = hw.sa_data[..6].iter().map(|b| *b as u8).collect();
            assert_eq!(got, mac);
            assert_eq!(query("lbt-tap0", libc::SIOCGIFMTU).ifr_ifru.ifru_mtu, 1400);
            let flags = query("lbt-tap0", libc::SIOCGIFFLAGS).ifr_ifru.ifru_flags;
            assert_ne!(flags & libc::IFF_UP as libc::c_short, 0, "up");
            let a = query("lbt-tap0", libc::SIOCGIFADDR).ifr_ifru.ifru_addr;
            let sin: libc::sockaddr_in = std::mem::transmute_copy(&a);
            assert_eq!(sin.sin_addr.s_addr.to_ne_bytes(), [198, 18, 99, 1]);
        }
        // Exactly the port's IPv6 address and the link-local one, neither
        // tentative.
        let v6 = std::fs::read_to_string("/proc/thread-self/net/if_inet6").expect("if_inet6");
        let mine: Vec<(Ipv6Addr, String)> = v6
            .lines()
            .filter(|l| l.ends_with("lbt-tap0"))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let a = u128::from_str_radix(f[0], 16).expect("hex");
                (Ipv6Addr::from(a), f[4].to_string())
            })
            .collect();
        let mut got: Vec<Ipv6Addr> = mine.iter().map(|(a, _)| *a).collect();
        got.sort();
        let mut want = vec!["2001:db8:99::1".parse::<Ipv6Addr>().expect("v6"), ll];
        want.sort();
        assert_eq!(got, want, "{v6}");
        for (a, flags) in &mine {
            let f = u8::from_str_radix(flags, 16).expect("flags");
            assert_eq!(f & 0x40, 0, "{a} is tentative");
        }

        // An existing interface is never taken over.
        let again = Tap::create("lbt-tap0").expect_err("exists");
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists, "{again}");
        assert!(Tap::create("lo").is_err(), "not a TAP");

        assert_ne!(index_of("lbt-tap0"), 0);
        drop(tap);
        assert_eq!(index_of("lbt-tap0"), 0, "gone with its descriptor");
    })
    .join()
    .expect("the test thread");
}
