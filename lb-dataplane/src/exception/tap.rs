//! The TAP interface of a port's exception path: created through
//! `/dev/net/tun` (`IFF_TAP | IFF_NO_PI`, not persistent, so it goes when
//! its descriptor closes: when `lbd` exits or dies), given the port's MAC
//! address and MTU by ioctl, its addresses by one rtnetlink request each,
//! and brought up.

use std::ffi::CString;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use ipnet::IpNet;

/// A TAP interface this process created; removed by the kernel when it
/// is dropped (and with the process).
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

/// An `ifreq` naming `name`, the rest zero.
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid interface name"),
        ));
    }
    // SAFETY: ifreq is plain old data (a name and a union of integers,
    // addresses and a pointer); all zeroes is a valid value of each.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// An `AF_INET` datagram socket: what interface ioctls go through.
fn ioctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call with constant arguments.
    let raw =
        cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Runs interface ioctl `op` on `req` through `fd`.
fn ifreq_ioctl(fd: RawFd, op: libc::Ioctl, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: `req` is a valid, exclusively borrowed ifreq for the call;
    // every `op` used here reads or writes one ifreq.
    cvt(unsafe { libc::ioctl(fd, op, req as *mut libc::ifreq) }).map(|_| ())
}

impl Tap {
    /// Creates the TAP interface `name`; fails if an interface of that name
    /// exists already (it is never taken over: `IFF_TUN_EXCL`).
    pub fn create(name: &str) -> io::Result<Tap> {
        let mut req = ifreq(name)?;
        let path = c"/dev/net/tun";
        // SAFETY: `path` is a valid NUL-terminated string.
        let raw = cvt(unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        req.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_TUN_EXCL) as libc::c_short;
        ifreq_ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req).map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("an interface {name} exists already"),
                )
            } else {
                e
            }
        })?;
        Ok(Tap {
            fd,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The descriptor frames are read from and written to (non-blocking).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Gives the interface `mac`, `mtu` and `addresses` (and, when one of
    /// them is IPv6, the link-local address `link_local` and no other:
    /// no SLAAC, no router advertisements, no duplicate address detection),
    /// and brings it up.
    pub fn configure(
        &self,
        mac: [u8; 6],
        mtu: u32,
        addresses: &[IpNet],
        link_local: Option<Ipv6Addr>,
    ) -> io::Result<()> {
        let sock = ioctl_socket()?;
        let mut req = ifreq(&self.name)?;
        // SAFETY: writing the `sockaddr` member of the zeroed union.
        unsafe {
            req.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
            for (d, s) in req.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(mac) {
                *d = s as libc::c_char;
            }
        }
        ifreq_ioctl(sock.as_raw_fd(), libc::SIOCSIFHWADDR, &mut req)?;
        set_mtu(&self.name, mtu)?;
        let v6 = addresses.iter().any(|a| a.addr().is_ipv6());
        let conf = |key: &str, value: &str| {
            let path = format!("/proc/sys/net/ipv6/conf/{}/{key}", self.name);
            std::fs::write(&path, value)
                .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
        };
        if v6 {
            conf("disable_ipv6", "0")?;
            // The kernel's own addresses would be none of the port's: only
            // the configured ones and the link-local one lbd gives it.
            conf("addr_gen_mode", "1")?;
            conf("accept_dad", "0")?;
            conf("accept_ra", "0")?;
            conf("autoconf", "0")?;
        } else {
            match conf("disable_ipv6", "1") {
                // A kernel without IPv6 has nothing to turn off.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                r => r?,
            }
        }
        let mut req = ifreq(&self.name)?;
        ifreq_ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member.
        unsafe {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        }
        ifreq_ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req)?;
        let index = self.index()?;
        let rtnl = Rtnetlink::open()?;
        let ll = link_local
            .filter(|_| v6)
            .map(|a| IpNet::new(IpAddr::V6(a), 64));
        for net in addresses.iter().copied().chain(ll.into_iter().flatten()) {
            rtnl.add_address(index, net).map_err(|e| {
                io::Error::new(e.kind(), format!("adding {net} to {}: {e}", self.name))
            })?;
        }
        Ok(())
    }

    fn index(&self) -> io::Result<u32> {
        let name = CString::new(self.name.as_str())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))?;
        // SAFETY: `name` is a valid NUL-terminated string for the call.
        match unsafe { libc::if_nametoindex(name.as_ptr()) } {
            0 => Err(io::Error::last_os_error()),
            i => Ok(i),
        }
    }

    /// Reads one frame the kernel sent through the interface into `buf`;
    /// `WouldBlock` when there is none.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let n = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Hands one frame to the kernel as if it arrived on the interface.
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: `frame` is valid for reads of `frame.len()` bytes.
        let n = unsafe { libc::write(self.fd(), frame.as_ptr().cast(), frame.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

/// Sets the MTU of interface `name`.
pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let sock = ioctl_socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_mtu = libc::c_int::try_from(mtu)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "MTU out of range"))?;
    ifreq_ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU, &mut req)
}

/// A `NETLINK_ROUTE` socket for address requests.
struct Rtnetlink {
    fd: OwnedFd,
}

const NLMSG_ERROR: u16 = 2;
const RTM_NEWADDR: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;

/// The `RTM_NEWADDR` request adding `net` to interface `index`: the
/// address as both local and peer address, no duplicate address detection
/// (the port owns it already), link scope for a link-local address.
pub fn new_address_request(seq: u32, index: u32, net: IpNet) -> Vec<u8> {
    let (family, octets, scope): (u8, Vec<u8>, u8) = match net.addr() {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec(), RT_SCOPE_UNIVERSE),
        IpAddr::V6(a) => {
            let link = a.segments()[0] & 0xffc0 == 0xfe80;
            let scope = if link {
                RT_SCOPE_LINK
            } else {
                RT_SCOPE_UNIVERSE
            };
            (libc::AF_INET6 as u8, a.octets().to_vec(), scope)
        }
    };
    let mut m = vec![0u8; 16];
    // struct ifaddrmsg
    m.extend_from_slice(&[family, net.prefix_len(), IFA_F_NODAD as u8, scope]);
    m.extend_from_slice(&index.to_ne_bytes());
    let attr = |m: &mut Vec<u8>, kind: u16, data: &[u8]| {
        let len = u16::try_from(4 + data.len()).expect("small attribute");
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(data);
        while !m.len().is_multiple_of(4) {
            m.push(0);
        }
    };
    attr(&mut m, IFA_LOCAL, &octets);
    attr(&mut m, IFA_ADDRESS, &octets);
    attr(&mut m, IFA_FLAGS, &IFA_F_NODAD.to_ne_bytes());
    let len = u32::try_from(m.len()).expect("small message");
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m[4..6].copy_from_slice(&RTM_NEWADDR.to_ne_bytes());
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m
}

/// The errno of a netlink acknowledgement (0: success); `None` if `reply`
/// is not one.
pub fn ack_errno(reply: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    if kind != NLMSG_ERROR {
        return None;
    }
    let err = i32::from_ne_bytes(reply.get(16..20)?.try_into().ok()?);
    Some(-err)
}

impl Rtnetlink {
    fn open() -> io::Result<Rtnetlink> {
        // SAFETY: plain socket(2) call with constant arguments.
        let raw = cvt(unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        })?;
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let timeout = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: `timeout` outlives the call and we pass its exact size.
        cvt(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        })?;
        Ok(Rtnetlink { fd })
    }

    fn add_address(&self, index: u32, net: IpNet) -> io::Result<()> {
        let req = new_address_request(1, index, net);
        // SAFETY: sockaddr_nl is plain old data; zero is the kernel as peer.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `req` and `to` are valid for the call, with their sizes.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&to as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut reply = [0u8; 1024];
        // SAFETY: `reply` is valid for writes of its length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                reply.as_mut_ptr().cast(),
                reply.len(),
                0,
            )
        };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        match ack_errno(&reply[..n]) {
            Some(0) => Ok(()),
            Some(e) => Err(io::Error::from_raw_os_error(e)),
            None => Err(io::Error::other("no netlink acknowledgement")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_request_is_laid_out_as_the_kernel_reads_it() {
        let net: IpNet = "198.18.10.11/24".parse().expect("net");
        let m = new_address_request(7, 9, net);
        let mut want = Vec::new();
        want.extend_from_slice(&48u32.to_ne_bytes());
        want.extend_from_slice(&20u16.to_ne_bytes());
        want.extend_from_slice(&0x505u16.to_ne_bytes());
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[2, 24, 2, 0]);
        want.extend_from_slice(&9u32.to_ne_bytes());
        for kind in [2u16, 1] {
            want.extend_from_slice(&8u16.to_ne_bytes());
            want.extend_from_slice(&kind.to_ne_bytes());
            want.extend_from_slice(&[198, 18, 10, 11]);
        }
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&2u32.to_ne_bytes());
        assert_eq!(m, want);

        let ll: IpNet = "fe80::1/64".parse().expect("net");
        let m = new_address_request(1, 3, ll);
        assert_eq!(m.len(), 16 + 8 + 20 + 20 + 8);
        assert_eq!(
            &m[16..20],
            &[10, 64, 2, 253],
            "AF_INET6, /64, NODAD, link scope"
        );
        let global: IpNet = "2001:db8:10::11/64".parse().expect("net");
        assert_eq!(new_address_request(1, 3, global)[19], 0, "universe scope");
    }

    #[test]
    fn acknowledgements_carry_the_errno() {
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&2u16.to_ne_bytes());
        assert_eq!(ack_errno(&ack), Some(0));
        ack[16..20].copy_from_slice(&(-17i32).to_ne_bytes());
        assert_eq!(ack_errno(&ack), Some(17));
        ack[4..6].copy_from_slice(&20u16.to_ne_bytes());
        assert_eq!(ack_errno(&ack), None);
        assert_eq!(ack_errno(&[0; 4]), None);
    }
}
