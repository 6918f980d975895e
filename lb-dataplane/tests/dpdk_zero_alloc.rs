//! The forwarding path allocates nothing: `lbd`'s own worker loop
//! (`Daemon::start` with `io = "dpdk"`) forwards an endless replay of
//! client segments of established FULLNAT sessions between two `net_pcap`
//! ports, and a counting global allocator counts every allocation a worker
//! makes on its forwarding path (`lb_dataplane::alloc::on_forwarding_path`:
//! from its RX bursts to its TX flushes). After a warm-up, many bursts
//! later, the count is still 0.
//!
//! No root needed. One test: EAL initialises once per process.

// Built only with the `dpdk` feature (`cargo test --features dpdk`).
#![cfg(feature = "dpdk")]

mod common;
mod dpdk_common;

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dpdk_common::write_pcap;
use lb_core::packet::{self, ArpOp, ArpRepr, MacAddr};

#[path = "common/zero_alloc.rs"]
mod zero_alloc;
use zero_alloc::ON_PATH;

#[global_allocator]
static ALLOC: zero_alloc::Counting = zero_alloc::Counting;

/// net_pcap gives its ports the address 02:70:63:61:70:<n> ("\x02pcap").
const EXT_MAC: [u8; 6] = [0x02, 0x70, 0x63, 0x61, 0x70, 0x00];
const INT_MAC: [u8; 6] = [0x02, 0x70, 0x63, 0x61, 0x70, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x18, 0x02];
const BE_MACS: [[u8; 6]; 2] = [[0x02, 0, 0, 0, 0x19, 0x11], [0x02, 0, 0, 0, 0x19, 0x12]];
const BE_ADDRS: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 19, 1, 11), Ipv4Addr::new(198, 19, 1, 12)];
const LOCAL4: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 250);

/// Sessions replayed; fewer than a burst, so the first burst opens them all.
const FLOWS: u16 = 16;

/// The client's SYNs, replayed forever.
fn ext_input() -> Vec<Vec<u8>> {
    zero_alloc::client_syns(CLIENT_MAC, EXT_MAC, FLOWS)
}

/// The backends answering the ARP requests lbd sends for them (read in
/// the same round as the first SYNs, after the requests went out).
fn int_input() -> Vec<Vec<u8>> {
    BE_MACS
        .iter()
        .zip(BE_ADDRS)
        .map(|(mac, addr)| {
            let request = ArpRepr {
                op: ArpOp::Request,
                sender_mac: MacAddr(INT_MAC),
                sender_ip: LOCAL4,
                target_mac: MacAddr([0; 6]),
                target_ip: addr,
            };
            packet::build_arp_reply(&request, MacAddr(*mac), None)
        })
        .collect()
}

use zero_alloc::{forwarded, wait_forwarded};

#[test]
fn forwarding_allocates_nothing_per_packet() {
    let _cleanup = dpdk_common::RuntimeDirGuard;
    let dir = dpdk_common::TempDir::new("lbzeroalloc");
    let path = |n: &str| dir.0.join(n);
    write_pcap(&path("ext_in.pcap"), &ext_input());
    write_pcap(&path("int_in.pcap"), &int_input());
    // The client's side loops (`infinite_rx`); what lbd sends is discarded.
    let vdevs = [
        format!(
            "net_pcap0,rx_pcap={},tx_pcap=/dev/null,infinite_rx=1",
            path("ext_in.pcap").display()
        ),
        format!(
            "net_pcap1,rx_pcap={},tx_pcap=/dev/null",
            path("int_in.pcap").display()
        ),
    ];
    let daemon = common::start_dpdk_step6(&path("lbd.toml"), &dpdk_common::eal_args(&vdevs));
    assert_eq!(daemon.shared.workers.len(), 1, "net_pcap: one worker");

    // Warm-up: sessions opened, neighbours learned, every buffer the loop
    // keeps grown to its size.
    let warm = wait_forwarded(&daemon, 20_000, Duration::from_secs(20));
    let before = ON_PATH.swap(0, Ordering::Relaxed);
    let counted_from = forwarded(&daemon);
    let t = Instant::now();
    let after = wait_forwarded(&daemon, counted_from + 200_000, Duration::from_secs(20));
    let secs = t.elapsed().as_secs_f64();
    let allocations = ON_PATH.load(Ordering::Relaxed);
    let stats = lb_dataplane::control::stats(&daemon.shared);
    daemon.stop();
    dpdk_common::check_runtime_dir_removed();

    let frames = after - counted_from;
    eprintln!(
        "warm-up: {warm} frames forwarded, {before} allocations on the forwarding path; \
         then {frames} frames in {secs:.2} s ({:.2} Mpps, debug build): {allocations} allocations",
        frames as f64 / secs / 1e6
    );
    assert!(
        warm >= 20_000,
        "the warm-up forwarded {warm} frames: {stats}"
    );
    assert!(
        frames >= 200_000,
        "forwarded {frames} frames after the warm-up: {stats}"
    );
    assert_eq!(
        allocations, 0,
        "allocations on the forwarding path over {frames} frames: {stats}"
    );
}
