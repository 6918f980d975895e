//! `lbctl`: check, evaluate and lint load-balancer configurations.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "lbctl",
    version,
    about = "Check, evaluate and lint load-balancer configurations"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Validate a configuration: a one-line summary, or every error as file:line:col.
    Check { file: PathBuf },
    /// Run a packet trace through the pipeline and print one JSON verdict per packet.
    Eval {
        #[arg(long)]
        config: PathBuf,
        /// The trace file (default: standard input).
        trace: Option<PathBuf>,
    },
    /// Report rules that never decide, duplicates and redundant rules.
    Lint { file: PathBuf },
    /// Show the counters of a running lbd (read-only: root, lbd's user or
    /// the control group).
    Stats {
        #[arg(long, default_value = lb_dataplane::control::DEFAULT_CONTROL)]
        control: PathBuf,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Make a running lbd re-read its configuration file (the admin
    /// level: root, lbd's user, or the control group at level admin).
    Reload {
        #[arg(long, default_value = lb_dataplane::control::DEFAULT_CONTROL)]
        control: PathBuf,
    },
    /// Drain a server of a running lbd, or end its drain (the admin level).
    Server {
        #[command(subcommand)]
        action: ServerCmd,
        #[arg(long, global = true, default_value = lb_dataplane::control::DEFAULT_CONTROL)]
        control: PathBuf,
    },
    /// Drain this node of a cluster: withdraw its VIPs from the routers and
    /// keep forwarding its sessions; prints their count (the admin level).
    Drain {
        #[arg(long, default_value = lb_dataplane::control::DEFAULT_CONTROL)]
        control: PathBuf,
        /// After this many seconds, end the listener sessions still open
        /// (their clients' next segments are answered with a RST).
        #[arg(long, value_name = "SECONDS")]
        deadline: Option<u64>,
        /// Then print the session count every second until it is 0.
        #[arg(long)]
        wait: bool,
    },
    /// End a drain: announce the node's VIPs again (the admin level).
    Undrain {
        #[arg(long, default_value = lb_dataplane::control::DEFAULT_CONTROL)]
        control: PathBuf,
    },
    /// Act on a running lbd's access logs (the admin level).
    Log {
        #[command(subcommand)]
        cmd: LogCmd,
    },
}

#[derive(Debug, Subcommand)]
enum ServerCmd {
    /// No new sessions to the server; its open ones go on until they end,
    /// or until the deadline, when they are dropped (the client's next
    /// segment is answered with a RST).
    Drain {
        /// The server group's id.
        group: String,
        /// The server: instance id or address, optionally with :port.
        server: String,
        /// Seconds the open sessions may go on (default: the group's
        /// drain_timeout_s, else until they end).
        #[arg(long)]
        deadline: Option<f64>,
    },
    /// End a drain set by `lbctl server drain`: the server takes new
    /// sessions again, ramping up over the group's slow_start_s.
    Undrain { group: String, server: String },
}

/// `lbctl server …`: one control command; its reply's servers, or the error.
fn server_command(control: &std::path::Path, action: ServerCmd) -> Result<ExitCode> {
    let (verb, group, server, deadline) = match action {
        ServerCmd::Drain {
            group,
            server,
            deadline,
        } => ("drain", group, server, deadline),
        ServerCmd::Undrain { group, server } => ("undrain", group, server, None),
    };
    if [&group, &server]
        .iter()
        .any(|w| w.is_empty() || w.contains(char::is_whitespace))
    {
        anyhow::bail!("a group or server name with white space cannot be named here");
    }
    let mut line = format!("server {verb} {group} {server}");
    if let Some(d) = deadline {
        line.push_str(&format!(" {d}"));
    }
    let v = lb_dataplane::control::request(control, &line)?;
    if v["ok"].as_bool() == Some(true) {
        let names: Vec<&str> = v["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str())
            .collect();
        println!("{verb}ed: {}", names.join(", "));
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("lbctl: {}", v["error"].as_str().unwrap_or("refused"));
        Ok(ExitCode::FAILURE)
    }
}

#[derive(Debug, Subcommand)]
enum LogCmd {
    /// Reopen every access log file (after logrotate moved them); as
    /// SIGUSR1 to lbd, but waits until it is done.
    Reopen {
        #[arg(long, default_value = lb_dataplane::control::DEFAULT_CONTROL)]
        control: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lbctl: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Check { file } => match lb_config::load(&file) {
            Ok(cfg) => {
                println!("{}: {}", file.display(), lb_config::summary(&cfg));
                for w in lb_dataplane::cluster::warnings(&cfg) {
                    eprintln!("{}: warning: {w}", file.display());
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Cmd::Eval { config, trace } => {
            let (text, path) = match trace {
                Some(p) => (
                    std::fs::read_to_string(&p)
                        .with_context(|| format!("reading {}", p.display()))?,
                    p,
                ),
                None => {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .context("reading the trace from standard input")?;
                    (s, PathBuf::from("<stdin>"))
                }
            };
            let stdout = std::io::stdout();
            let stderr = std::io::stderr();
            lb_dataplane::eval::run(
                &config,
                &text,
                &path,
                &mut stdout.lock(),
                &mut stderr.lock(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stats { control, json } => {
            let v = lb_dataplane::control::request(&control, "stats")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", lb_dataplane::stats_text::render(&v));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Reload { control } => {
            let v = lb_dataplane::control::request(&control, "reload")?;
            if v["ok"].as_bool() == Some(true) {
                println!("reloaded: generation {}", v["generation"]);
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "reload rejected, the running configuration stays:\n{}",
                    v["errors"].as_str().unwrap_or("")
                );
                Ok(ExitCode::FAILURE)
            }
        }
        Cmd::Server { action, control } => server_command(&control, action),
        Cmd::Drain {
            control,
            deadline,
            wait,
        } => {
            let command = match deadline {
                Some(d) => format!("drain {d}"),
                None => "drain".to_string(),
            };
            let v = lb_dataplane::control::request(&control, &command)?;
            println!("{}", lb_dataplane::cluster::text::drain_line(&v));
            if wait {
                return wait_drained(&control);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Undrain { control } => {
            let v = lb_dataplane::control::request(&control, "undrain")?;
            println!("{}", lb_dataplane::cluster::text::drain_line(&v));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Log {
            cmd: LogCmd::Reopen { control },
        } => log_reopen(&control),
        Cmd::Lint { file } => {
            let cfg = match lb_config::load(&file) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let notes = lb_dataplane::lint::lint_config(&cfg);
            for n in &notes {
                println!("{}:{}:1: warning: {}", file.display(), n.line, n.message);
            }
            if notes.is_empty() {
                println!("{}: no findings", file.display());
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// Prints `sessions N` every second until the draining node has none
/// (`drained`), or until it is no longer draining (`undrained`, a
/// failure).
fn wait_drained(control: &std::path::Path) -> Result<ExitCode> {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let v = lb_dataplane::control::request(control, "stats")?;
        let sessions = v["sessions"].as_u64().unwrap_or(0);
        if v["cluster_state"].as_str() != Some("draining") {
            println!("undrained: {sessions} sessions");
            return Ok(ExitCode::FAILURE);
        }
        if sessions == 0 {
            println!("drained: 0 sessions");
            return Ok(ExitCode::SUCCESS);
        }
        println!("sessions {sessions}");
    }
}

/// `lbctl log reopen`.
fn log_reopen(control: &std::path::Path) -> Result<ExitCode> {
    let v = lb_dataplane::control::request(control, "log reopen")?;
    if v["ok"].as_bool() == Some(true) {
        println!("access logs reopened");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("log reopen failed: {}", v["error"].as_str().unwrap_or(""));
        Ok(ExitCode::FAILURE)
    }
}
