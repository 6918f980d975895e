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

use anyhow::{Context, Result};
use crossbeam::channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};

use crate::daemon::Shared;

/// A reload's outcome: the new generation, or why the running
/// configuration stays.
pub type Outcome = std::result::Result<u64, String>;

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
    pub fn start(shared: Arc<Shared>) -> Result<(Arc<Reloader>, JoinHandle<()>)> {
        let (tx, rx) = unbounded();
        let h = std::thread::Builder::new()
            .name("lbd-reload".into())
            .spawn(move || run(&shared, &rx))
            .context("starting the reload thread")?;
        Ok((Arc::new(Reloader { tx }), h))
    }

    /// Reloads and waits for the outcome.
    pub fn reload(&self) -> Outcome {
        let (tx, rx) = bounded(1);
        if self.tx.send(Some(tx)).is_err() {
            return Err("lbd is stopping".into());
        }
        rx.recv().unwrap_or_else(|_| Err("lbd is stopping".into()))
    }

    /// Asks for a reload without waiting (SIGHUP); the outcome is logged.
    pub fn request(&self) {
        let _ = self.tx.send(None);
    }
}

fn run(shared: &Arc<Shared>, rx: &Receiver<Request>) {
    while !shared.stop.load(Ordering::Relaxed) {
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
        let outcome = shared.reload();
        for w in waiting {
            let _ = w.send(outcome.clone());
        }
    }
}
