//! `bench dataplane`: the whole data path at DPDK speed, against
//! `dpdk-testpmd` on the same links in the same run.
//!
//! ```text
//!   bench dataplane-traffic                 device under test
//!   port 0 (clients)   <== net_memif ==>  port 0 "ext"   lbd, io = "dpdk"
//!   port 1 (backends)  <== net_memif ==>  port 1 "int"   (or dpdk-testpmd)
//! ```
//!
//! For 1 and 2 workers, `bench dataplane` starts the device (`lbd` with
//! `io = "dpdk"`, `--no-huge`, memif server ports; then `dpdk-testpmd`
//! in io forwarding mode on the same sockets), then the traffic process
//! (this binary, `bench dataplane-traffic`, memif client ports: see
//! [`traffic`]), reads the traffic process's phase lines and `lbd`'s
//! counters (`lbctl stats --json`), stops everything and prints the
//! figures, ending with `ratio lbd/testpmd: w1=… w2=…`. Every process runs
//! for a bounded time; sockets, EAL runtime directories and processes are
//! removed on every way out.
//!
//! The parts: `args` (both command lines), `run` (one device with a worker
//! count), `device` (lbd's configuration, binaries and counters), `procs`
//! (child processes and the working directory), `results` (phase lines,
//! counters, the printed figures), [`traffic`] and [`port`] (the traffic
//! process).

#[cfg(feature = "dpdk")]
pub mod port;
#[cfg(feature = "dpdk")]
pub mod traffic;

mod args;
mod device;
mod procs;
mod results;
mod run;

pub use args::{DataplaneArgs, TrafficArgs};
pub use device::{lbd_config, missing};
pub use results::{ratio_line, Dut, DutRun, LbdCounters, PhaseResult};

use device::*;
use procs::*;
use results::*;
use run::*;

use std::fmt::Write as _;
use std::io::Read as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::gen::{parse_duration, parse_mac, SrcNet};

/// Ethernet addresses of the memif ports (set with the `mac` devarg).
pub const LBD_EXT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x10, 0x01];
pub const LBD_INT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x10, 0x02];
pub const GEN_EXT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x20, 0x01];
pub const GEN_INT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x20, 0x02];

/// `bench dataplane`.
pub fn main(a: &DataplaneArgs) -> Result<()> {
    if let Some(dir) = &a.print_config {
        let name = dir
            .file_name()
            .map_or_else(|| "x".into(), |n| n.to_string_lossy().into_owned());
        let w = a.workers.first().copied().unwrap_or(1);
        print!(
            "{}",
            lbd_config(
                w,
                &lbd_eal(dir, &format!("lbdpb-{name}")),
                None,
                a.max_sessions,
            )
        );
        return Ok(());
    }
    if let Some(why) = missing(a) {
        bail!("bench dataplane: {why}");
    }
    if a.workers.is_empty() || a.workers.iter().any(|&w| w == 0 || w > 8) {
        bail!("--workers takes counts between 1 and 8");
    }
    let mut scratch = Scratch::new(a.keep)?;
    println!(
        "bench dataplane: 64-byte IPv4 TCP frames over net_memif (--no-huge), {} established flows, {} s per phase, traffic process on CPU {}",
        a.flows,
        a.duration.as_secs_f64(),
        a.gen_cpu
    );
    let mut ratios = Vec::new();
    let mut raw = Vec::new();
    for &w in &a.workers {
        let reference = if a.no_reference {
            None
        } else {
            Some(
                run_dut_retried(a, &mut scratch, Dut::Testpmd, w, &mut raw)
                    .context("testpmd run")?,
            )
        };
        let lbd = run_dut_retried(a, &mut scratch, Dut::Lbd, w, &mut raw).context("lbd run")?;
        print_workers(w, reference.as_ref(), &lbd);
        let ratio = match (
            lbd.est_mpps_per_worker(),
            reference.as_ref().and_then(DutRun::est_mpps_per_worker),
        ) {
            // Per worker of what ran: lbd with fewer workers than asked
            // is not the w-worker figure.
            (Some(l), Some(t)) if t > 0.0 && lbd.workers == w => Some(l / t),
            _ => None,
        };
        ratios.push((w, ratio));
    }
    for l in &raw {
        println!("{l}");
    }
    if a.keep {
        println!("work directory kept: {}", scratch.dir.display());
    }
    println!("{}", ratio_line(&ratios));
    Ok(())
}

/// `bench dataplane-traffic`.
pub fn traffic_main(a: &TrafficArgs) -> Result<()> {
    #[cfg(feature = "dpdk")]
    {
        traffic::run(a)
    }
    #[cfg(not(feature = "dpdk"))]
    {
        let _ = a;
        bail!("bench was built without DPDK: cargo build --release -p lb-bench --features dpdk")
    }
}
