//! What the zero-allocation tests share: a global allocator that counts
//! the allocations made on a worker's forwarding path
//! (`lb_dataplane::alloc::on_forwarding_path`), and the client's SYNs they
//! replay.
//!
//! ```ignore
//! #[path = "common/zero_alloc.rs"]
//! mod zero_alloc;
//! #[global_allocator]
//! static ALLOC: zero_alloc::Counting = zero_alloc::Counting;
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lb_core::packet::{self, FrameSpec, MacAddr, TcpFlags};

/// The client's address and the VIP of the seed's load balancer.
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);

/// The SYNs of `flows` client connections to the VIP's port 80, replayed
/// forever: the first pass opens the sessions, every later one is a
/// retransmission the session forwards.
pub fn client_syns(client_mac: [u8; 6], lb_mac: [u8; 6], flows: u16) -> Vec<Vec<u8>> {
    (0..flows)
        .map(|i| {
            packet::build_frame(&FrameSpec {
                src_mac: MacAddr(client_mac),
                dst_mac: MacAddr(lb_mac),
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

/// Counts the allocations made on a worker's forwarding path.
pub struct Counting;

/// Allocations counted so far.
pub static ON_PATH: AtomicU64 = AtomicU64::new(0);

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

/// Frames the daemon's workers forwarded so far.
pub fn forwarded(daemon: &lb_dataplane::daemon::Daemon) -> u64 {
    let stats = lb_dataplane::control::stats(&daemon.shared);
    stats["workers"].as_array().map_or(0, |ws| {
        ws.iter().filter_map(|w| w["forwarded"].as_u64()).sum()
    })
}

/// Waits until the workers have forwarded `n` frames, for `timeout` at
/// most; the count reached.
pub fn wait_forwarded(daemon: &lb_dataplane::daemon::Daemon, n: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let got = forwarded(daemon);
        if got >= n || Instant::now() >= deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
