//! Who may use the control socket, and for what: each connection's peer
//! credentials (`SO_PEERCRED`, `SO_PEERGROUPS`, taken by the kernel at
//! `connect`) give it a level, and each command needs one.
//!
//! - root and `lbd`'s own user: `admin`;
//! - members of the control group (`--control-group`): `user` (read-only),
//!   or `admin` with `--control-group-level admin`;
//! - anyone else: refused, whatever the socket file's mode.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// What a control client may do, as HAProxy's `level user|admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Level {
    /// Read-only queries (`stats`).
    User,
    /// Everything, including what changes the running state (`reload`).
    Admin,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::User => "user",
            Level::Admin => "admin",
        }
    }
}

/// A connected client, as the kernel saw it at `connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// The policy: whose connections get which level.
#[derive(Debug, Clone)]
pub struct Access {
    /// `lbd`'s own effective user: admin, like root.
    pub own_uid: u32,
    /// The control group, if any.
    pub group: Option<u32>,
    /// The level of the control group's members.
    pub group_level: Level,
}

impl Access {
    /// The policy for this process: its effective user, and `group` (if
    /// any) at `group_level`.
    pub fn new(group: Option<u32>, group_level: Level) -> Access {
        Access {
            // SAFETY: geteuid has no preconditions and cannot fail.
            own_uid: unsafe { libc::geteuid() },
            group,
            group_level,
        }
    }

    /// The level `peer` gets, or `None` when it may not use the socket.
    pub fn level(&self, peer: &Peer) -> Option<Level> {
        if peer.uid == 0 || peer.uid == self.own_uid {
            return Some(Level::Admin);
        }
        let g = self.group?;
        (peer.gid == g || peer.groups.contains(&g)).then_some(self.group_level)
    }
}

/// The credentials of the process at the other end of `s`.
pub fn peer(s: &UnixStream) -> std::io::Result<Peer> {
    let fd = s.as_raw_fd();
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket for the duration of the call; `cred`
    // and `len` are valid for writes and `len` is `cred`'s exact size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Peer {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
        groups: peer_groups(fd)?,
    })
}

/// The supplementary groups of the peer of `fd` (Linux 4.13 and later).
fn peer_groups(fd: i32) -> std::io::Result<Vec<u32>> {
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * std::mem::size_of::<libc::gid_t>())
            .unwrap_or(libc::socklen_t::MAX);
        // SAFETY: `fd` is an open socket; `groups` is valid for writes of
        // `len` bytes, and `len` is writable.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let e = std::io::Error::last_os_error();
        // ERANGE: `len` says how much room the list needs.
        if e.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= 1 << 16 {
            groups.resize(n, 0);
            continue;
        }
        // Before Linux 4.13: only the primary group counts.
        if e.raw_os_error() == Some(libc::ENOPROTOOPT) {
            return Ok(Vec::new());
        }
        return Err(e);
    }
}

/// Why a group name could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("group name {0:?} contains a NUL byte")]
    Nul(String),
    #[error("looking up group {name:?}")]
    Lookup {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no group named {0:?} (give a group name or a numeric gid)")]
    NotFound(String),
}

/// A group given by name or number.
pub fn resolve_group(name: &str) -> Result<u32, GroupError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let Ok(cname) = std::ffi::CString::new(name) else {
        return Err(GroupError::Nul(name.to_owned()));
    };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    loop {
        // SAFETY: all-zero is a valid `group` (null pointers, gid 0); it is
        // only read after getgrnam_r fills it.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: `cname` is NUL-terminated; `grp`, `buf` (of `buf.len()`
        // bytes) and `found` are valid for writes for the call.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 22 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(GroupError::Lookup {
                name: name.to_owned(),
                source: std::io::Error::from_raw_os_error(rc),
            });
        }
        if found.is_null() {
            return Err(GroupError::NotFound(name.to_owned()));
        }
        return Ok(grp.gr_gid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            pid: 1,
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn levels() {
        let a = Access {
            own_uid: 998,
            group: Some(4242),
            group_level: Level::User,
        };
        assert_eq!(a.level(&peer(0, 0, &[])), Some(Level::Admin), "root");
        assert_eq!(
            a.level(&peer(998, 5, &[])),
            Some(Level::Admin),
            "lbd's user"
        );
        assert_eq!(a.level(&peer(1000, 4242, &[])), Some(Level::User));
        assert_eq!(a.level(&peer(1000, 100, &[7, 4242])), Some(Level::User));
        assert_eq!(a.level(&peer(1000, 100, &[7])), None, "not a member");
        let admins = Access {
            group_level: Level::Admin,
            ..a.clone()
        };
        assert_eq!(admins.level(&peer(1000, 4242, &[])), Some(Level::Admin));
        let no_group = Access { group: None, ..a };
        assert_eq!(no_group.level(&peer(1000, 4242, &[4242])), None);
    }

    #[test]
    fn own_credentials_over_a_socket_pair() {
        let (a, _b) = UnixStream::pair().expect("socketpair");
        let p = super::peer(&a).expect("peer credentials");
        // SAFETY: these have no preconditions.
        let (pid, uid, gid) = unsafe { (libc::getpid(), libc::geteuid(), libc::getegid()) };
        assert_eq!((p.pid, p.uid, p.gid), (pid, uid, gid));
        let access = Access::new(None, Level::User);
        assert_eq!(access.level(&p), Some(Level::Admin), "lbd's own user");
    }

    #[test]
    fn groups_by_number_and_name() {
        assert_eq!(resolve_group("4242").expect("numeric"), 4242);
        assert_eq!(resolve_group("root").expect("root exists"), 0);
        let e = resolve_group("no-such-group-lbd").expect_err("unknown");
        assert!(e.to_string().contains("no group named"), "{e}");
    }
}
