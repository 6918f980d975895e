//! A send-only AF_PACKET socket: how the health checker and the control
//! path put a frame on a port without taking part in the workers' fanout.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A raw socket bound to one interface, never reading.
#[derive(Debug)]
pub struct RawSender {
    fd: OwnedFd,
    ifindex: i32,
    mac: [u8; 6],
}

impl RawSender {
    pub fn open(ifname: &str) -> io::Result<RawSender> {
        let name = CString::new(ifname).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL byte")
        })?;
        // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface {ifname}"),
            ));
        }
        // Protocol 0: the socket receives nothing.
        // SAFETY: plain socket(2) call with constant arguments.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Straight to the driver: no qdisc, and no copy to the packet taps,
        // so the workers' sockets on this port never read our own frames.
        let one: libc::c_int = 1;
        // SAFETY: `one` outlives the call and we pass its exact size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let mac = super::afpacket::interface_mac(fd.as_raw_fd(), ifname)?;
        let ifindex =
            i32::try_from(ifindex).map_err(|_| io::Error::other("interface index out of range"))?;
        Ok(RawSender { fd, ifindex, mac })
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Sends one complete Ethernet frame.
    pub fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(
            frame
                .get(..6)
                .ok_or_else(|| io::Error::other("frame too short"))?,
        );
        // SAFETY: `frame` is valid for `frame.len()` bytes and `addr` is a properly
        // initialised sockaddr_ll whose size we pass.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}
