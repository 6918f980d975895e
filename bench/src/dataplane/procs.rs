//! The processes of a run and its working directory, stopped and
//! removed on every way out.

use super::*;

/// A child process killed (its whole process group) and reaped on drop.
pub(super) struct Proc {
    pub(super) name: String,
    child: Child,
}

impl Proc {
    pub(super) fn spawn(name: &str, cmd: &mut Command) -> Result<Proc> {
        use std::os::unix::process::CommandExt as _;
        let child = cmd
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Proc {
            name: name.to_string(),
            child,
        })
    }

    pub(super) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).unwrap_or(0);
        if pid > 0 {
            // SAFETY: kill has no memory-safety preconditions; the group
            // is the child's own (process_group(0)), not yet reaped.
            unsafe { libc::kill(-pid, sig) };
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub(super) fn stop(&mut self, grace: Duration) {
        if !self.alive() {
            return;
        }
        self.signal(libc::SIGTERM);
        let by = Instant::now() + grace;
        while Instant::now() < by {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// Waits for exit until `by`; kills it then. Returns its stdout.
    pub(super) fn output_by(mut self, by: Instant) -> Result<String> {
        let mut out = self.child.stdout.take();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(o) = out.as_mut() {
                let _ = o.read_to_string(&mut s);
            }
            s
        });
        let mut status = None;
        while Instant::now() < by {
            if let Ok(Some(s)) = self.child.try_wait() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if status.is_none() {
            self.stop(Duration::from_millis(500));
        }
        let text = reader.join().unwrap_or_default();
        match status {
            Some(s) if s.success() => Ok(text),
            Some(s) => bail!("{} failed ({s}):\n{text}", self.name),
            None => bail!("{} did not finish in time; killed:\n{text}", self.name),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// The working directory (sockets, configuration, logs) and the EAL
/// runtime directories of the run's processes, removed on drop.
pub(super) struct Scratch {
    pub(super) dir: PathBuf,
    prefixes: Vec<String>,
    keep: bool,
}

impl Scratch {
    pub(super) fn new(keep: bool) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("lb-dpbench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch {
            dir,
            prefixes: Vec::new(),
            keep,
        })
    }

    /// A fresh EAL file prefix, removed with the scratch.
    pub(super) fn prefix(&mut self, what: &str) -> String {
        let p = format!("lbdpb{}{what}{}", std::process::id(), self.prefixes.len());
        self.prefixes.push(p.clone());
        p
    }

    pub(super) fn clean_run(&self) {
        for p in &self.prefixes {
            let _ = std::fs::remove_dir_all(Path::new("/var/run/dpdk").join(p));
        }
        for s in ["ext.sock", "int.sock", "lbd.sock"] {
            let _ = std::fs::remove_file(self.dir.join(s));
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.clean_run();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Waits until `paths` exist, while `p` lives, until `by`.
pub(super) fn wait_for(paths: &[PathBuf], p: &mut Proc, by: Instant, log: &Path) -> Result<()> {
    while !paths.iter().all(|s| s.exists()) {
        if !p.alive() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            bail!(
                "{} exited before creating its memif sockets:\n{log}",
                p.name
            );
        }
        if Instant::now() > by {
            bail!("{} did not create its memif sockets in time", p.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
