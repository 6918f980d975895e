//! Reloads on a thread of their own, so that compiling a large
//! configuration never holds up `lbctl stats` or the signal handler.
//!
//! Requests that arrive while a reload is compiling are served together by
//! the next one: it reads the file after all of them were made, so each
//! sees a configuration at least as new as the one it asked for, and a
//! burst of requests costs two compilations, not one each.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};

use crate::daemon::Shared;

/// A reload's outcome: the new generation, or why the running
/// configuration stays.
pub type Outcome = Result<u64, ReloadFailure>;

/// Why a reload did not take effect. Cloned to every request it served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadFailure {
    /// The new configuration was refused (the message gives `file:line:col`
    /// where it can); the running one stays.
    #[error("{0}")]
    Refused(String),
    /// `lbd` is stopping: no reload runs any more.
    #[error("lbd is stopping")]
    Stopping,
}

/// One request: where its outcome goes (`None`: nobody waits, as for
/// SIGHUP).
type Request = Option<Sender<Outcome>>;

/// The reload thread and its queue.
#[derive(Debug)]
pub struct Reloader {
    tx: Sender<Request>,
}

impl Reloader {
    /// Starts the reload thread; it ends when `shared.stop` is set.
    /// Fails only if the thread cannot be started.
    pub fn start(shared: Arc<Shared>) -> std::io::Result<(Arc<Reloader>, JoinHandle<()>)> {
        let flag = shared.clone();
        Reloader::spawn(
            move || flag.stop.load(Ordering::Relaxed),
            move || {
                shared
                    .reload()
                    .map_err(|e| ReloadFailure::Refused(e.to_string()))
            },
        )
    }

    /// The reload thread around `reload`, until `stopped()`.
    fn spawn(
        stopped: impl Fn() -> bool + Send + 'static,
        mut reload: impl FnMut() -> Outcome + Send + 'static,
    ) -> std::io::Result<(Arc<Reloader>, JoinHandle<()>)> {
        let (tx, rx) = unbounded();
        let h = std::thread::Builder::new()
            .name("lbd-reload".into())
            .spawn(move || run(&stopped, &mut reload, &rx))?;
        Ok((Arc::new(Reloader { tx }), h))
    }

    /// Reloads and waits for the outcome.
    pub fn reload(&self) -> Outcome {
        let (tx, rx) = bounded(1);
        if self.tx.send(Some(tx)).is_err() {
            return Err(ReloadFailure::Stopping);
        }
        rx.recv().unwrap_or(Err(ReloadFailure::Stopping))
    }

    /// Asks for a reload without waiting (SIGHUP); the outcome is logged.
    pub fn request(&self) {
        let _ = self.tx.send(None);
    }
}

fn run(stopped: &dyn Fn() -> bool, reload: &mut dyn FnMut() -> Outcome, rx: &Receiver<Request>) {
    while !stopped() {
        let first = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut waiting: Vec<Sender<Outcome>> = first.into_iter().collect();
        let mut requests = 1usize;
        while let Ok(r) = rx.try_recv() {
            requests += 1;
            waiting.extend(r);
        }
        if requests > 1 {
            tracing::debug!(requests, "reload requests served by one reload");
        }
        let outcome = reload();
        for w in waiting {
            let _ = w.send(outcome.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64};

    #[test]
    fn requests_made_during_a_reload_are_served_by_the_next_one() {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        // The first reload waits for the test's go, the others do not.
        let (started_tx, started) = bounded::<()>(1);
        let (go, go_rx) = bounded::<()>(1);
        let (stop2, calls2) = (stop.clone(), calls.clone());
        let (reloader, h) = Reloader::spawn(
            move || stop2.load(Ordering::Relaxed),
            move || {
                let n = calls2.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 {
                    let _ = started_tx.send(());
                    let _ = go_rx.recv();
                }
                if n == 3 {
                    Err(ReloadFailure::Refused("line 1: bad".into()))
                } else {
                    Ok(n + 1)
                }
            },
        )
        .expect("spawn");
        let first = {
            let r = reloader.clone();
            std::thread::spawn(move || r.reload())
        };
        started.recv().expect("the first reload started");
        // Five requests and a SIGHUP while it compiles.
        let waiting: Vec<_> = (0..5)
            .map(|_| {
                let r = reloader.clone();
                std::thread::spawn(move || r.reload())
            })
            .collect();
        reloader.request();
        while reloader.tx.len() < 6 {
            std::thread::sleep(Duration::from_millis(5));
        }
        go.send(()).expect("go");
        assert_eq!(first.join().expect("first"), Ok(2));
        for w in waiting {
            assert_eq!(w.join().expect("waiting"), Ok(3), "one reload for all");
        }
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        // A failed reload reaches its caller.
        assert_eq!(
            reloader.reload(),
            Err(ReloadFailure::Refused("line 1: bad".into()))
        );
        stop.store(true, Ordering::Relaxed);
        h.join().expect("the reload thread ends at stop");
        assert_eq!(reloader.reload(), Err(ReloadFailure::Stopping));
    }
}
