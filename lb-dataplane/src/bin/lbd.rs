//! `lbd`: the load balancer's data plane, in the foreground.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use lb_dataplane::access::{Access, Level};
use lb_dataplane::control::ControlSocket;

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
    /// The control socket for `lbctl stats` and `lbctl reload`. Created
    /// with mode 0600 (root and lbd's own user: every command).
    #[arg(long, default_value = lb_dataplane::control::DEFAULT_CONTROL)]
    control: PathBuf,
    /// Also let this group (a name or a gid) use the control socket (mode
    /// 0660), at the level of --control-group-level.
    #[arg(long, value_name = "GROUP")]
    control_group: Option<String>,
    /// What members of --control-group may do: `user` (read-only: stats)
    /// or `admin` (also reload).
    #[arg(long, value_enum, default_value = "user", requires = "control_group")]
    control_group_level: Level,
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
        Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1]).context("installing signal handlers")?;
    let group = args
        .control_group
        .as_deref()
        .map(lb_dataplane::access::resolve_group)
        .transpose()
        .context("--control-group")?;
    // The control socket and the metrics address first: a second lbd on
    // the same socket stops here, before it takes any port.
    let control = ControlSocket::bind(&args.control, Access::new(group, args.control_group_level))?;
    let metrics = args
        .metrics
        .as_deref()
        .map(lb_dataplane::metrics::bind_metrics)
        .transpose()?;
    let daemon = lb_dataplane::daemon::Daemon::start(&args.config)?;
    let (reloader, reload_thread) = lb_dataplane::reloader::Reloader::start(daemon.shared.clone())
        .context("starting the reload thread")?;
    let control = control.serve(daemon.shared.clone(), reloader.clone())?;
    let metrics = match metrics {
        Some(listener) => Some(lb_dataplane::metrics::serve_metrics(
            daemon.shared.clone(),
            listener,
        )?),
        None => None,
    };
    tracing::info!(control = %args.control.display(), "ready");
    for sig in signals.forever() {
        match sig {
            SIGHUP => {
                tracing::info!("SIGHUP: reloading {}", args.config.display());
                reloader.request();
            }
            SIGUSR1 => {
                tracing::info!("SIGUSR1: reopening the access logs");
                daemon.shared.access_log.request_reopen();
            }
            _ => {
                tracing::info!("stopping");
                break;
            }
        }
    }
    daemon.stop();
    let _ = control.join();
    let _ = reload_thread.join();
    if let Some(m) = metrics {
        let _ = m.join();
    }
    Ok(())
}
