//! What a run measured (the traffic process's phase lines, lbd's
//! counters) and how the figures are printed.

use super::*;

/// What one phase of the traffic process measured (one stdout line).
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseResult {
    pub name: String,
    pub secs: f64,
    /// Offered rate (pps), 0 for flat out.
    pub rate: u64,
    /// Frames that left port 0.
    pub sent: u64,
    /// Frames port 0's TX ring did not take (not sent, not loss).
    pub tx_full: u64,
    /// Frames that reached the backends.
    pub fwd: u64,
    /// Answers that came back to the clients.
    pub rev: u64,
    /// Answers port 1's TX ring did not take.
    pub reflect_full: u64,
    /// Round trip p50, p99, p99.9 (µs).
    pub rtt_us: [f64; 3],
    /// Client to backend p50, p99, p99.9 (µs).
    pub one_way_us: [f64; 3],
}

impl PhaseResult {
    pub fn to_line(&self) -> String {
        format!(
            "phase {} secs={:.4} rate={} sent={} tx_full={} fwd={} rev={} reflect_full={} rtt_us={:.1}/{:.1}/{:.1} one_way_us={:.1}/{:.1}/{:.1}",
            self.name, self.secs, self.rate, self.sent, self.tx_full, self.fwd, self.rev, self.reflect_full,
            self.rtt_us[0], self.rtt_us[1], self.rtt_us[2],
            self.one_way_us[0], self.one_way_us[1], self.one_way_us[2]
        )
    }

    pub fn from_line(line: &str) -> Option<PhaseResult> {
        let mut it = line.strip_prefix("phase ")?.split_whitespace();
        let name = it.next()?.to_string();
        let mut r = PhaseResult {
            name,
            secs: 0.0,
            rate: 0,
            sent: 0,
            tx_full: 0,
            fwd: 0,
            rev: 0,
            reflect_full: 0,
            rtt_us: [0.0; 3],
            one_way_us: [0.0; 3],
        };
        let triple = |v: &str| -> Option<[f64; 3]> {
            let mut p = v.split('/').map(str::parse::<f64>);
            Some([p.next()?.ok()?, p.next()?.ok()?, p.next()?.ok()?])
        };
        for kv in it {
            let (k, v) = kv.split_once('=')?;
            match k {
                "secs" => r.secs = v.parse().ok()?,
                "rate" => r.rate = v.parse().ok()?,
                "sent" => r.sent = v.parse().ok()?,
                "tx_full" => r.tx_full = v.parse().ok()?,
                "fwd" => r.fwd = v.parse().ok()?,
                "rev" => r.rev = v.parse().ok()?,
                "reflect_full" => r.reflect_full = v.parse().ok()?,
                "rtt_us" => r.rtt_us = triple(v)?,
                "one_way_us" => r.one_way_us = triple(v)?,
                _ => {}
            }
        }
        Some(r)
    }

    /// Frames through the device per second, both directions.
    pub fn both_pps(&self) -> f64 {
        (self.fwd + self.rev) as f64 / self.secs.max(1e-9)
    }

    /// Established loss over the round trip (0..1).
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        self.sent.saturating_sub(self.rev) as f64 / self.sent as f64
    }
}

/// The device under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dut {
    Lbd,
    Testpmd,
}

impl Dut {
    pub(super) fn name(self) -> &'static str {
        match self {
            Dut::Lbd => "lbd",
            Dut::Testpmd => "testpmd",
        }
    }
}

/// lbd's counters after a run (`lbctl stats --json`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbdCounters {
    pub workers: usize,
    pub rx: u64,
    pub forwarded: u64,
    pub sessions_created: u64,
    pub handoff_out: u64,
    pub denied: u64,
    pub drops: Vec<(String, u64)>,
}

impl LbdCounters {
    pub(super) fn from_json(v: &serde_json::Value) -> LbdCounters {
        let mut c = LbdCounters::default();
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        if let Some(ws) = v["workers"].as_array() {
            c.workers = ws.len();
            for w in ws {
                c.rx += n(&w["rx"]);
                c.forwarded += n(&w["forwarded"]);
                c.sessions_created += n(&w["sessions_created"]);
                c.handoff_out += n(&w["handoff_out"]);
            }
        }
        if let Some(d) = v["drops"].as_object() {
            for (k, v) in d {
                let v = n(v);
                if v > 0 {
                    c.drops.push((k.clone(), v));
                }
            }
        }
        c.denied = n(&v["drops"]["security_group"]);
        c
    }

    /// One line, `key=value`, for logs and tests.
    pub fn to_line(&self) -> String {
        let mut s = format!(
            "workers={} rx={} forwarded={} sessions_created={} handoff_out={} security_group={}",
            self.workers,
            self.rx,
            self.forwarded,
            self.sessions_created,
            self.handoff_out,
            self.denied
        );
        for (k, v) in &self.drops {
            if k != "security_group" {
                let _ = write!(s, " drop.{k}={v}");
            }
        }
        s
    }
}

/// One run of a device with a worker count.
#[derive(Debug, Clone)]
pub struct DutRun {
    pub dut: Dut,
    pub workers: u16,
    pub phases: Vec<PhaseResult>,
    pub warmup: String,
    pub lbd: Option<LbdCounters>,
}

impl DutRun {
    pub fn phase(&self, name: &str) -> Option<&PhaseResult> {
        self.phases.iter().find(|p| p.name == name)
    }

    /// Established Mpps per worker, both directions.
    pub fn est_mpps_per_worker(&self) -> Option<f64> {
        self.phase("est")
            .map(|p| p.both_pps() / 1e6 / f64::from(self.workers.max(1)))
    }
}

pub(super) fn mpps(x: f64) -> String {
    format!("{:.3}", x / 1e6)
}

/// Prints the figures of one worker count.
pub(super) fn print_workers(w: u16, reference: Option<&DutRun>, lbd: &DutRun) {
    println!("== {w} worker(s)");
    if lbd.workers != w {
        println!(
            "  lbd ran {} worker(s): its ports gave it {} queue(s)",
            lbd.workers, lbd.workers
        );
    }
    let per = |r: &DutRun| r.est_mpps_per_worker();
    for r in reference.into_iter().chain(std::iter::once(lbd)) {
        if let Some(p) = r.phase("est") {
            println!(
                "  {:<8} established, both directions: {} Mpps per worker ({} Mpps total; {} to the backends, {} back; offered {}, loss {:.3} %)   [{}]",
                r.dut.name(),
                per(r).map_or("-".into(), |x| format!("{x:.3}")),
                mpps(p.both_pps()),
                mpps(p.fwd as f64 / p.secs),
                mpps(p.rev as f64 / p.secs),
                mpps(p.sent as f64 / p.secs),
                p.loss() * 100.0,
                r.warmup
            );
        }
    }
    let lw = f64::from(lbd.workers.max(1));
    if let Some(p) = lbd.phase("new") {
        println!(
            "  lbd      new connections: {} M/s per worker (SYNs to a backend; {} M/s SYN-ACKs back; offered {} M/s)",
            mpps(p.fwd as f64 / p.secs / lw),
            mpps(p.rev as f64 / p.secs / lw),
            mpps(p.sent as f64 / p.secs)
        );
    }
    if let Some(p) = lbd.phase("deny") {
        println!(
            "  lbd      denied traffic dropped: {} Mpps per worker ({} of {} sent leaked)",
            mpps(p.sent.saturating_sub(p.fwd) as f64 / p.secs / lw),
            p.fwd,
            p.sent
        );
    }
    for r in reference.into_iter().chain(std::iter::once(lbd)) {
        if let Some(p) = r.phase("lat") {
            println!(
                "  {:<8} at {} Mpps (half of est): loss {:.4} %, round trip p50 {:.1} µs p99 {:.1} µs p99.9 {:.1} µs; one way p50 {:.1} p99 {:.1} p99.9 {:.1} µs",
                r.dut.name(),
                mpps(p.rate as f64),
                p.loss() * 100.0,
                p.rtt_us[0],
                p.rtt_us[1],
                p.rtt_us[2],
                p.one_way_us[0],
                p.one_way_us[1],
                p.one_way_us[2]
            );
        }
    }
    if let Some(c) = &lbd.lbd {
        println!("  lbd counters: {}", c.to_line());
    }
    // The targets, as figures (not assertions).
    if lbd.workers != w {
        return;
    }
    if let (Some(l), Some(t)) = (per(lbd), reference.and_then(per)) {
        println!(
            "  target established >= 0.8 of testpmd: {:.2} ({})",
            l / t,
            if l / t >= 0.8 { "met" } else { "not met" }
        );
    }
    if let Some(p) = lbd.phase("new") {
        let x = p.fwd as f64 / p.secs / lw;
        println!(
            "  target >= 1 M new connections/s per worker: {} ({})",
            mpps(x),
            if x >= 1e6 { "met" } else { "not met" }
        );
    }
    if let Some(p) = lbd.phase("lat") {
        let ok = p.sent == p.rev && p.rtt_us[1] < 50.0;
        println!(
            "  target zero loss and p99 < 50 µs at half rate: lost {}, p99 {:.1} µs round trip ({})",
            p.sent.saturating_sub(p.rev),
            p.rtt_us[1],
            if ok { "met" } else { "not met" }
        );
    }
}

/// The `ratio lbd/testpmd` line.
pub fn ratio_line(pairs: &[(u16, Option<f64>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .map(|(w, r)| format!("w{w}={}", r.map_or("n/a".into(), |r| format!("{r:.2}"))))
        .collect();
    format!("ratio lbd/testpmd: {}", parts.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_lines_round_trip() {
        let r = PhaseResult {
            name: "est".into(),
            secs: 2.0,
            rate: 0,
            sent: 10,
            tx_full: 1,
            fwd: 9,
            rev: 8,
            reflect_full: 0,
            rtt_us: [1.5, 2.5, 3.5],
            one_way_us: [0.5, 1.0, 2.0],
        };
        assert_eq!(PhaseResult::from_line(&r.to_line()), Some(r.clone()));
        assert!((r.both_pps() - 8.5).abs() < 1e-9);
        assert!((r.loss() - 0.2).abs() < 1e-9);
        assert_eq!(PhaseResult::from_line("warm-up: 1 of 2"), None);
    }

    #[test]
    fn ratio_line_has_both_counts() {
        assert_eq!(
            ratio_line(&[(1, Some(0.456)), (2, None)]),
            "ratio lbd/testpmd: w1=0.46 w2=n/a"
        );
    }
}
