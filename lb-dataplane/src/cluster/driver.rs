//! The thread that keeps BIRD in step with what the node announces (and
//! ends a drain's sessions at its deadline, with or without BIRD): it
//! looks every [`POLL`] (or at once when poked: a drain, a stop), and
//! when the announced set or the `[cluster]` configuration changed, it
//! writes the include file atomically and runs `birdc configure`. A
//! failure is logged, counted (`cluster_bird_errors`) and retried every
//! [`RETRY`]; it never touches the data path.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lb_core::model::{Cluster, Config};

use super::{announced, render::render, Announced};

/// How often the announced set is computed again.
pub const POLL: Duration = Duration::from_millis(100);
/// How soon a failed `birdc configure` is tried again.
pub const RETRY: Duration = Duration::from_secs(1);
/// The longest `birdc` may take before it is killed (and counted as failed).
pub const BIRDC_TIMEOUT: Duration = Duration::from_secs(10);

/// Why BIRD could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("running birdc")]
    Spawn(#[source] std::io::Error),
    #[error("birdc -s {socket} configure did not answer within {} s", BIRDC_TIMEOUT.as_secs())]
    Timeout { socket: String },
    #[error("birdc -s {socket} configure failed: {output}")]
    Failed { socket: String, output: String },
}

/// Writes `text` to `path` atomically: a temporary file beside it,
/// flushed, then renamed over it (BIRD reads either the old or the new
/// file, never half of one). Creates the directory if needed.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), BirdError> {
    let err = |source| BirdError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Runs `birdc -s SOCKET configure`: BIRD re-reads its configuration
/// (with the include file) and changes only the protocols whose part
/// changed, so the BGP sessions stay up while routes come and go.
pub fn birdc_configure(socket: &str) -> Result<(), BirdError> {
    let mut child = Command::new("birdc")
        .args(["-s", socket, "configure"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(BirdError::Spawn)?;
    let until = Instant::now() + BIRDC_TIMEOUT;
    loop {
        match child.try_wait().map_err(BirdError::Spawn)? {
            Some(_) => break,
            None if Instant::now() >= until => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BirdError::Timeout {
                    socket: socket.to_string(),
                });
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    let out = child.wait_with_output().map_err(BirdError::Spawn)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // birdc exits 0 only when BIRD took the configuration ("Reconfigured",
    // or "Reconfiguration in progress").
    if out.status.success() && text.contains("Reconfigur") {
        Ok(())
    } else {
        Err(BirdError::Failed {
            socket: socket.to_string(),
            output: text
                .lines()
                .filter(|l| !l.starts_with("BIRD ") && !l.trim().is_empty())
                .collect::<Vec<_>>()
                .join("; "),
        })
    }
}

/// The include file for `cfg` announcing `set`; `None` without
/// `[cluster]`.
fn file_for<'c>(cfg: &'c Config, set: &Announced) -> Option<(&'c Cluster, String)> {
    let cluster = cfg.cluster.as_ref()?;
    Some((cluster, render(cluster, &cfg.ports, set)))
}

/// Writes the include file for `cfg` with what a node that just started
/// announces (its local addresses: no VIP before its health checks
/// conclude), so that BIRD started after `lbd` finds it. Does not run
/// `birdc`: the driver does, once running.
pub fn write_initial(cfg: &Config) -> Result<(), BirdError> {
    let Some(cluster) = &cfg.cluster else {
        return Ok(());
    };
    let set = Announced {
        vips: Default::default(),
        locals: cfg
            .load_balancers
            .iter()
            .flat_map(|lb| lb.local_addresses.iter().copied().map(super::host))
            .collect(),
    };
    write_atomically(
        Path::new(&cluster.bird_config),
        &render(cluster, &cfg.ports, &set),
    )
}

/// Runs until the host stops, or until [`super::ClusterState::withdraw_all`]
/// was asked and BIRD has taken the empty set.
pub fn run(host: &dyn super::Host) {
    let state = host.cluster();
    // The text BIRD was last configured with, and when to try again
    // after a failure.
    let mut applied: Option<String> = None;
    let mut retry_at: Option<Instant> = None;
    let mut failing = false;
    loop {
        let stopping = state.stopping();
        if state.check_deadline(host.now_ns()) {
            tracing::info!("drain deadline passed: the workers end their listener sessions");
        }
        let (snap, health) = host.current();
        let set = if stopping {
            Announced::default()
        } else {
            announced(&snap.cfg, &health, state.draining.load(Ordering::Relaxed))
        };
        match file_for(&snap.cfg, &set) {
            Some((cluster, text)) => {
                let due = retry_at.is_none_or(|t| Instant::now() >= t);
                if applied.as_deref() != Some(text.as_str()) && (due || stopping) {
                    let result = write_atomically(Path::new(&cluster.bird_config), &text)
                        .and_then(|()| birdc_configure(&cluster.bird_socket));
                    match result {
                        Ok(()) => {
                            state.bird_reconfigs.fetch_add(1, Ordering::Relaxed);
                            let prefixes: Vec<String> =
                                set.prefixes().map(ToString::to_string).collect();
                            tracing::info!(announced = ?prefixes, "BIRD reconfigured");
                            *state.announced.lock().unwrap_or_else(|p| p.into_inner()) = prefixes;
                            *state.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                            applied = Some(text.clone());
                            retry_at = None;
                            failing = false;
                        }
                        Err(e) => {
                            state.bird_errors.fetch_add(1, Ordering::Relaxed);
                            let msg = format!("{e:#}");
                            let msg = match std::error::Error::source(&e) {
                                Some(src) => format!("{msg}: {src}"),
                                None => msg,
                            };
                            if failing {
                                tracing::debug!("BIRD not reconfigured, retrying: {msg}");
                            } else {
                                tracing::warn!(
                                    "BIRD not reconfigured, retrying every {} s: {msg}",
                                    RETRY.as_secs()
                                );
                            }
                            *state.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg);
                            failing = true;
                            retry_at = Some(Instant::now() + RETRY);
                        }
                    }
                }
                if stopping && applied.as_deref() == Some(text.as_str()) {
                    state.set_withdrawn();
                    return;
                }
            }
            None => {
                if stopping {
                    state.set_withdrawn();
                    return;
                }
            }
        }
        if host.stopping() {
            return;
        }
        state.wait_poke(if stopping {
            Duration::from_millis(200)
        } else {
            POLL
        });
    }
}
