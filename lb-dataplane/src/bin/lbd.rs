//! `lbd`: the load balancer's data plane, in the foreground.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

// Session tables are big arrays read at random: back them with huge pages.
#[global_allocator]
static ALLOC: lb_dataplane::alloc::HugePageAlloc = lb_dataplane::alloc::HugePageAlloc;

#[derive(Debug, Parser)]
#[command(
    name = "lbd",
    version,
    about = "Userspace load balancer with cloud security groups in its data path"
)]
struct Args {
    /// The configuration file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// The control socket for `lbctl stats` and `lbctl reload`.
    #[arg(long, default_value = lb_dataplane::control::DEFAULT_CONTROL)]
    control: PathBuf,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9100).
    #[arg(long)]
    metrics: Option<String>,
}

fn main() {
    lb_dataplane::alloc::keep_freed_memory();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LBD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if let Err(e) = run(Args::parse()) {
        tracing::error!("{e:#}");
        eprintln!("lbd: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).context("installing signal handlers")?;
    let daemon = lb_dataplane::daemon::Daemon::start(&args.config)?;
    let control = lb_dataplane::control::serve(daemon.shared.clone(), &args.control)?;
    let metrics = match &args.metrics {
        Some(addr) => Some(lb_dataplane::control::serve_metrics(
            daemon.shared.clone(),
            addr,
        )?),
        None => None,
    };
    tracing::info!(control = %args.control.display(), "ready");
    for sig in signals.forever() {
        match sig {
            SIGHUP => {
                tracing::info!("SIGHUP: reloading {}", args.config.display());
                let _ = daemon.shared.reload();
            }
            _ => {
                tracing::info!("stopping");
                break;
            }
        }
    }
    daemon.stop();
    let _ = control.join();
    if let Some(m) = metrics {
        let _ = m.join();
    }
    Ok(())
}
