//! The outcome of a run, and its summary.

use std::fmt;
use std::time::Duration;

use super::{Class, RxCounts, ALL, CLASSES};

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Report {
    pub tx_iface: String,
    pub rx_iface: Option<String>,
    pub rate: Option<u64>,
    pub size: usize,
    pub flows: usize,
    pub sources: usize,
    /// Frames that left, per class (indexed by `Class as usize`).
    pub sent: [u64; CLASSES],
    /// Frames the TX port could not take (not counted as loss).
    pub tx_dropped: [u64; CLASSES],
    /// Bytes of the measured classes (Ethernet frames without the FCS).
    pub tx_bytes: u64,
    /// Length of the measured sending phase.
    pub tx_time: Duration,
    pub rx: Option<RxCounts>,
    pub neighbor_replies: u64,
    /// New flows outnumbered the client tuples, which were reused.
    pub tuples_reused: bool,
    /// Established flows whose SYN reached the receiver in the warm-up
    /// (`None` without a receiver or established traffic).
    pub flows_opened: Option<u64>,
}

impl Report {
    pub fn sent(&self, c: Class) -> u64 {
        self.sent[c as usize]
    }

    pub fn received(&self, c: Class) -> Option<u64> {
        self.rx.as_ref().map(|r| r.received[c as usize])
    }

    /// Lost fraction of `c` (0..1), if there was a receiver and traffic.
    pub fn loss(&self, c: Class) -> Option<f64> {
        let sent = self.sent(c);
        let got = self.received(c)?;
        (sent > 0).then(|| sent.saturating_sub(got) as f64 / sent as f64)
    }

    pub fn latency(&self) -> Option<Latency> {
        let h = &self.rx.as_ref()?.latency;
        (!h.is_empty()).then(|| Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5) as f64 / 1e3,
            p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
            p999_us: h.value_at_quantile(0.999) as f64 / 1e3,
            max_us: h.max() as f64 / 1e3,
        })
    }

    fn measured_sent(&self) -> u64 {
        self.sent[..3].iter().sum()
    }
}

fn rates(pkts: u64, bytes: u64, t: Duration) -> String {
    let s = t.as_secs_f64();
    if s <= 0.0 {
        return "-".into();
    }
    format!(
        "{:.4} Mpps  {:.4} Gbit/s",
        pkts as f64 / s / 1e6,
        bytes as f64 * 8.0 / s / 1e9
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = match self.rate {
            Some(r) => format!("{r} pps"),
            None => "flat out".into(),
        };
        writeln!(
            f,
            "bench gen: {} -> {}, {rate}, {:.2} s, {}-byte frames, {} established flows, {} sources",
            self.tx_iface,
            self.rx_iface.as_deref().unwrap_or("(no receiver)"),
            self.tx_time.as_secs_f64(),
            self.size,
            self.flows,
            self.sources
        )?;
        writeln!(
            f,
            "  {:<12} {:>11} {:>11} {:>9}  tx drops",
            "class", "sent", "received", "loss"
        )?;
        for c in ALL {
            let sent = self.sent(c);
            if sent == 0 && self.tx_dropped[c as usize] == 0 {
                continue;
            }
            let got = self
                .received(c)
                .map_or_else(|| "-".to_string(), |g| g.to_string());
            let loss = match (c, self.received(c)) {
                (Class::Denied, Some(g)) => {
                    format!("{} {g}", if g > 0 { "LEAKED" } else { "leaked" })
                }
                _ => self
                    .loss(c)
                    .map_or_else(|| "-".into(), |l| format!("{:.3} %", l * 100.0)),
            };
            writeln!(
                f,
                "  {:<12} {:>11} {:>11} {:>9}  {}",
                c.name(),
                sent,
                got,
                loss,
                self.tx_dropped[c as usize]
            )?;
        }
        writeln!(
            f,
            "  tx  {}  ({} frames in the measured phase)",
            rates(self.measured_sent(), self.tx_bytes, self.tx_time),
            self.measured_sent()
        )?;
        if let Some(rx) = &self.rx {
            let got: u64 = rx.received[..3].iter().sum();
            writeln!(
                f,
                "  rx  {}  ({got} frames; {} duplicates, {} other frames, {} kernel drops)",
                rates(got, rx.bytes, rx.span),
                rx.duplicates,
                rx.other,
                rx.port.rx_dropped
            )?;
        }
        match self.latency() {
            Some(l) => writeln!(
                f,
                "  latency send -> receive (µs): p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  ({} samples)",
                l.p50_us, l.p99_us, l.p999_us, l.max_us, l.count
            )?,
            None => writeln!(f, "  latency: no samples")?,
        }
        if let Some(n) = self.flows_opened {
            writeln!(
                f,
                "  established flows opened by the warm-up: {n} of {}",
                self.flows
            )?;
        }
        write!(
            f,
            "  neighbour replies sent: {}{}",
            self.neighbor_replies,
            if self.tuples_reused {
                "; new flows outnumbered the client tuples: tuples were reused"
            } else {
                ""
            }
        )
    }
}
