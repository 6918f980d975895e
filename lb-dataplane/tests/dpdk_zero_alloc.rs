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

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dpdk_common::write_pcap;
use lb_core::packet::{self, ArpOp, ArpRepr, FrameSpec, MacAddr, TcpFlags};
use lb_dataplane::daemon::Daemon;

/// Counts the allocations made on a worker's forwarding path.
struct Counting;

static ON_PATH: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to `System`; counting reads a
// const-initialised thread-local and bumps an atomic, neither allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if lb_dataplane::alloc::on_forwarding_path() {
            ON_PATH.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged; the caller upholds alloc's contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if lb_dataplane::alloc::on_forwarding_path() {
            ON_PATH.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if lb_dataplane::alloc::on_forwarding_path() {
            ON_PATH.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged; `ptr` came from System with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from System with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// net_pcap gives its ports the address 02:70:63:61:70:<n> ("\x02pcap").
const EXT_MAC: [u8; 6] = [0x02, 0x70, 0x63, 0x61, 0x70, 0x00];
const INT_MAC: [u8; 6] = [0x02, 0x70, 0x63, 0x61, 0x70, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x18, 0x02];
const BE_MACS: [[u8; 6]; 2] = [[0x02, 0, 0, 0, 0x19, 0x11], [0x02, 0, 0, 0, 0x19, 0x12]];
const BE_ADDRS: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 19, 1, 11), Ipv4Addr::new(198, 19, 1, 12)];
const LOCAL4: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 250);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);

/// Sessions replayed; fewer than a burst, so the first burst opens them all.
const FLOWS: u16 = 16;

/// The client's SYNs, replayed forever: the first pass opens the sessions,
/// every later one is a retransmission the session forwards.
fn ext_input() -> Vec<Vec<u8>> {
    (0..FLOWS)
        .map(|i| {
            packet::build_frame(&FrameSpec {
                src_mac: MacAddr(CLIENT_MAC),
                dst_mac: MacAddr(EXT_MAC),
                vlan: None,
                src: CLIENT4.into(),
                dst: VIP4.into(),
                proto: 6,
                sport: 41000 + i,
                dport: 80,
                tcp_flags: TcpFlags::SYN,
                tcp_seq: 0x2000_0000 + u32::from(i),
                tcp_ack: 0,
                icmp: None,
                ttl: 64,
                payload: Vec::new(),
            })
        })
        .collect()
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

/// Frames worker 0 forwarded so far.
fn forwarded(daemon: &Daemon) -> u64 {
    let stats = lb_dataplane::control::stats(&daemon.shared);
    stats["workers"][0]["forwarded"].as_u64().unwrap_or(0)
}

/// Waits until worker 0 has forwarded `n` frames; the count reached.
fn wait_forwarded(daemon: &Daemon, n: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let got = forwarded(daemon);
        if got >= n || Instant::now() >= deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

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
