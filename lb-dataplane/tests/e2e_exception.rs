//! The exception path on AF_PACKET ports, end to end in the namespace
//! topology (scripts/netns.sh): see `exception_common`.
//!
//! Needs root, iproute2, ethtool, curl, nginx, python3 and nft (CI
//! installs them); elsewhere it prints `SKIPPED …` and passes, or fails
//! under CI.

mod common;
mod exception_common;

use common::{seed_config, Topo};
use exception_common::{run_case, with_tap};

#[test]
fn control_traffic_reaches_the_kernel_through_the_tap_on_af_packet() {
    let Some((_g, mut t)) = exception_common::topology() else {
        return;
    };
    let config = with_tap(&seed_config("", "", (100, 100)));
    assert!(config.contains("tap = \"lbd-ext\""), "{config}");
    t.start_lbd_with(&config, &["--metrics", "127.0.0.1:9464"]);
    run_case(&mut t);
}

/// A client whose kernel leaves its checksums to the link
/// (CHECKSUM_PARTIAL on veth): the exception path completes them before
/// the frames go up, or the kernel behind the TAP would drop them all.
#[test]
fn partial_checksums_are_completed_on_the_way_up() {
    let Some((_g, mut t)) = exception_common::topology_with(&[("LBT_CLIENT_OFFLOAD", "on")]) else {
        return;
    };
    let config = with_tap(&seed_config("", "", (100, 100)));
    t.start_lbd_with(&config, &["--metrics", "127.0.0.1:9464"]);
    run_case(&mut t);
}

/// Sends UDP datagrams from the client to `dst`:9 for `secs` seconds, in
/// bursts of 100 every `10 ms × 100 / (rate / 100)`, at about `rate` a
/// second; returns how many went out.
fn udp_flood(t: &Topo, dst: &str, rate: u32, secs: f64) -> u64 {
    let script = r#"
import socket, sys, time
dst, rate, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent, start = 0, time.monotonic()
while True:
    now = time.monotonic() - start
    if now >= secs:
        break
    due = int(now * rate)
    while sent < due:
        try:
            s.sendto(b"x" * 32, (dst, 9))
        except OSError:
            pass
        sent += 1
    time.sleep(0.001)
print(sent)
"#;
    let out = t.exec(
        "client",
        &[
            "python3",
            "-c",
            script,
            dst,
            &rate.to_string(),
            &secs.to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a count")
}

/// A flood at the port's address fills the (small) queue to the kernel:
/// the frames that do not fit are dropped and counted, every flood frame
/// is accounted for, and the VIP is served throughout. Then a clean stop
/// takes the TAP away.
#[test]
fn a_flood_at_the_port_address_is_bounded_and_counted() {
    let Some((_g, mut t)) = exception_common::topology() else {
        return;
    };
    let config = with_tap(&seed_config("", "", (100, 100)))
        .replace("[dataplane]\n", "[dataplane]\nexception_queue = 16\n");
    t.start_lbd(&config);
    common::wait_healthy(&t);
    let ext = |t: &Topo, k: &str| t.stats()["ports"][0][k].as_u64().unwrap_or(0);
    let (up0, drops0) = (ext(&t, "exception_to_kernel"), ext(&t, "exception_drops"));
    let started = std::time::Instant::now();
    let (sent, served) = std::thread::scope(|s| {
        let flood = s.spawn(|| udp_flood(&t, "198.18.0.1", 10_000, 4.0));
        let mut served = 0;
        for _ in 0..5 {
            std::thread::sleep(std::time::Duration::from_millis(400));
            served += usize::from(t.backend_of("http://198.18.0.10:80/").is_some());
        }
        (flood.join().expect("flood"), served)
    });
    let secs = started.elapsed().as_secs_f64();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let up = ext(&t, "exception_to_kernel") - up0;
    let drops = ext(&t, "exception_drops") - drops0;
    eprintln!(
        "flood: {sent} datagrams in {secs:.1} s to the port's address; \
         {up} to the kernel, {drops} dropped (exception_queue = 16); VIP served {served}/5"
    );
    assert_eq!(served, 5, "the VIP is served during the flood");
    // Every datagram lbd received went up or was counted (a few of the
    // kernel's own frames come on top; the port's RX ring may drop some).
    assert!(up + drops <= sent + 50, "{up} + {drops} > {sent}");
    assert!(up + drops >= sent * 9 / 10, "{up} + {drops} of {sent}");
    // The exception path is still there after it.
    let _server = exception_common::KernelServer::start(&t);
    t.wait_for(10, "the kernel's server through the TAP", |t| {
        t.curl("http://198.18.0.1:179/tap-ok").is_some()
    });
    // A clean stop removes the TAP too.
    t.signal(libc::SIGTERM);
    t.wait_for(5, "the TAP gone after SIGTERM", |t| {
        !t.exec("lb", &["ip", "link", "show", exception_common::TAP])
            .status
            .success()
    });
}
