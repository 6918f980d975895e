//! The control socket's file: created with its final mode and group
//! whatever the umask, never in place of anything but a stale socket, and
//! removed at exit only while it is still this process's socket.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Why the control socket's file could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketFileError {
    /// A system call failed; `context` says what lbd was doing.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Something that is not a socket is at the path: left alone.
    #[error(
        "{} exists and is {kind}, not a socket: lbd replaces only a stale socket of its own; \
         remove it or choose another --control path",
        path.display()
    )]
    NotASocket { path: PathBuf, kind: &'static str },
    /// A running `lbd` answers on the socket at the path.
    #[error(
        "{} is in use by a running lbd{}: stop it first, or give this one another --control path",
        path.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    InUse { path: PathBuf, pid: Option<i32> },
}

type Result<T> = std::result::Result<T, SocketFileError>;

/// Attaches what lbd was doing to an I/O error.
trait Context<T> {
    fn with_context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::io::Result<T> {
    fn with_context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| SocketFileError::Io {
            context: context(),
            source,
        })
    }
}

/// A socket file this process created; removed on drop if the path still
/// names it.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds a listening socket at `path` with permissions `mode` and, if
/// given, group `group`.
///
/// A socket already at `path` that a process answers on means another
/// `lbd` runs there: refused. One nobody answers on is stale and replaced.
/// Anything else at `path` (a file, a directory, a symbolic link) is
/// refused and left alone.
///
/// The socket is bound inside a private directory (mode 0700) next to
/// `path`, given its mode and group there, then linked to `path`: nobody
/// can connect to it before it has its final permissions.
pub fn bind(path: &Path, mode: u32, group: Option<u32>) -> Result<(UnixListener, SocketFile)> {
    claim(path)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let private = parent.join(format!(".lbd-{}.tmp", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| {
            format!(
                "creating {} to set up the control socket in",
                private.display()
            )
        })?;
    let inner = private.join("s");
    let bound = bind_private(&inner, path, mode, group);
    let _ = std::fs::remove_file(&inner);
    let _ = std::fs::remove_dir(&private);
    let listener = bound?;
    let m = std::fs::symlink_metadata(path).with_context(|| format!("{}", path.display()))?;
    Ok((
        listener,
        SocketFile {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
        },
    ))
}

fn bind_private(inner: &Path, path: &Path, mode: u32, group: Option<u32>) -> Result<UnixListener> {
    let listener = UnixListener::bind(inner)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(inner, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(inner, None, Some(gid)).with_context(|| {
            format!(
                "giving {} to group {gid} (lbd must run as root or be a member of the group)",
                path.display()
            )
        })?;
    }
    // A link never replaces an existing file.
    std::fs::hard_link(inner, path).with_context(|| {
        format!(
            "creating the control socket {} (did something appear there while lbd was starting?)",
            path.display()
        )
    })?;
    Ok(listener)
}

/// Makes sure `path` is free: nothing there, or a stale socket (removed).
fn claim(path: &Path) -> Result<()> {
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    };
    let ft = m.file_type();
    if !ft.is_socket() {
        let kind = if ft.is_file() {
            "a regular file"
        } else if ft.is_dir() {
            "a directory"
        } else if ft.is_symlink() {
            "a symbolic link"
        } else {
            "not a socket"
        };
        return Err(SocketFileError::NotASocket {
            path: path.to_path_buf(),
            kind,
        });
    }
    match UnixStream::connect(path) {
        Ok(s) => Err(SocketFileError::InUse {
            path: path.to_path_buf(),
            pid: crate::access::peer(&s).ok().map(|p| p.pid),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!("removing the stale control socket {}", path.display());
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| {
            format!(
                "{} is a socket lbd cannot connect to, so cannot tell whether it is in use",
                path.display()
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lbd-sockfile-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn mode_is_exact_whatever_the_umask() {
        let d = dir("mode");
        let p = d.join("c.sock");
        // SAFETY: umask has no preconditions; the old mask is put back.
        let old = unsafe { libc::umask(0) };
        let bound = bind(&p, 0o600, None);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let (_l, f) = bound.expect("bind");
        let m = std::fs::symlink_metadata(&p).expect("stat");
        assert!(m.file_type().is_socket());
        assert_eq!(m.mode() & 0o7777, 0o600);
        assert!(
            std::fs::read_dir(&d).expect("list").count() == 1,
            "no private directory left behind"
        );
        drop(f);
        assert!(!p.exists(), "removed at exit");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_live_socket_is_refused_a_stale_one_replaced() {
        let d = dir("live");
        let p = d.join("c.sock");
        let (l, f) = bind(&p, 0o600, None).expect("bind");
        let e = bind(&p, 0o600, None).expect_err("in use");
        assert!(
            format!("{e:#}").contains("in use by a running lbd"),
            "{e:#}"
        );
        // Stale: the listener is gone but the file stays.
        drop(l);
        std::mem::forget(f);
        let (_l2, _f2) = bind(&p, 0o600, None).expect("stale socket replaced");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn anything_else_is_left_alone() {
        let d = dir("file");
        let p = d.join("c.sock");
        std::fs::write(&p, "keep me").expect("write");
        let e = bind(&p, 0o600, None).expect_err("a regular file");
        assert!(
            format!("{e:#}").contains("is a regular file, not a socket"),
            "{e:#}"
        );
        assert_eq!(std::fs::read_to_string(&p).expect("still there"), "keep me");
        let link = d.join("l.sock");
        std::os::unix::fs::symlink(&p, &link).expect("symlink");
        let e = bind(&link, 0o600, None).expect_err("a symbolic link");
        assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
        assert!(link.exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn dropping_leaves_a_replacement_alone() {
        let d = dir("replaced");
        let p = d.join("c.sock");
        let (_l, f) = bind(&p, 0o600, None).expect("bind");
        std::fs::remove_file(&p).expect("remove");
        std::fs::write(&p, "someone else's").expect("write");
        drop(f);
        assert!(p.exists(), "not ours any more: kept");
        let _ = std::fs::remove_dir_all(&d);
    }
}
