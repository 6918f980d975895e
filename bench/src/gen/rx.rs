//! The receiving side: counts this run's frames per class, with their
//! latency.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use lb_dataplane::io::{IoStats, PacketIo};

use super::{Class, Stamp, CLASSES};

/// Sequence numbers tracked for duplicate detection (a 32 MiB bitmap).
const DEDUP_LIMIT: u64 = 1 << 28;

/// What the receiver counted.
#[derive(Debug, Clone)]
pub struct RxCounts {
    /// Stamped frames of this run, per class (duplicates not counted).
    pub received: [u64; CLASSES],
    /// Bytes of the measured classes (Ethernet frames without the FCS).
    pub bytes: u64,
    pub duplicates: u64,
    /// Frames that were not ours (health checks, ARP, other runs).
    pub other: u64,
    /// Latency of the measured classes, in nanoseconds.
    pub latency: Histogram<u64>,
    /// From the first to the last measured frame received.
    pub span: Duration,
    pub port: IoStats,
}

pub(super) fn rx_loop(
    mut port: Box<dyn PacketIo>,
    run: u8,
    epoch: Instant,
    stop: &AtomicBool,
    opened: &[AtomicU64],
) -> Result<RxCounts> {
    let mut c = RxCounts {
        received: [0; CLASSES],
        bytes: 0,
        duplicates: 0,
        other: 0,
        latency: Histogram::new_with_bounds(1, 60 * 1_000_000_000, 3)
            .context("latency histogram")?,
        span: Duration::ZERO,
        port: IoStats::default(),
    };
    let mut seen: Vec<u64> = Vec::new();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    let fd = port.poll_fd();
    // Once told to stop, read what is queued, but not for long if
    // frames keep coming.
    let mut stop_by = None;
    loop {
        let now = Instant::now();
        let now_ns = epoch.elapsed().as_nanos() as u32;
        let mut measured = false;
        let n = port.recv_burst(64, &mut |f, _| {
            let Some(s) = Stamp::find(f) else {
                c.other += 1;
                return;
            };
            if s.run != run {
                c.other += 1;
                return;
            }
            let seq = u64::from(s.seq);
            if s.class == Class::Warmup {
                // The sequence number is the flow's index.
                let Some(w) = opened.get((seq / 64) as usize) else {
                    c.other += 1;
                    return;
                };
                if w.fetch_or(1 << (seq % 64), Ordering::Relaxed) & (1 << (seq % 64)) != 0 {
                    c.duplicates += 1;
                    return;
                }
            } else if seq < DEDUP_LIMIT {
                let (w, b) = ((seq / 64) as usize, seq % 64);
                if seen.len() <= w {
                    seen.resize(w + 1024, 0);
                }
                if seen[w] & (1 << b) != 0 {
                    c.duplicates += 1;
                    return;
                }
                seen[w] |= 1 << b;
            }
            c.received[s.class as usize] += 1;
            if s.class != Class::Warmup {
                measured = true;
                c.bytes += f.len() as u64;
                c.latency
                    .saturating_record(u64::from(now_ns.wrapping_sub(s.tx_ns)).max(1));
            }
        });
        if measured {
            first.get_or_insert(now);
            last = Some(now);
        }
        if stop.load(Ordering::Acquire) {
            let by = *stop_by.get_or_insert(now + Duration::from_millis(100));
            if n == 0 || now > by {
                break;
            }
        }
        if n == 0 {
            match fd {
                Some(fd) => {
                    let mut pfd = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: `pfd` is one valid pollfd, exclusively
                    // borrowed for the call.
                    unsafe { libc::poll(&mut pfd, 1, 5) };
                }
                None => std::thread::sleep(Duration::from_micros(20)),
            }
        }
    }
    if let (Some(a), Some(b)) = (first, last) {
        c.span = b - a;
    }
    c.port = port.stats();
    Ok(c)
}
