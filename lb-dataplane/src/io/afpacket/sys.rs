//! Socket and interface system calls shared by the queue halves.

use std::io;
use std::mem::size_of;
use std::os::fd::RawFd;

pub(super) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub(super) fn setsockopt<T: Copy>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(size_of::<T>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `value` points to `len` readable bytes for the whole call; the
    // kernel only reads them.
    cvt(unsafe { libc::setsockopt(fd, level, name, (value as *const T).cast(), len) }).map(drop)
}

/// An `ifreq` for interface `name`, or InvalidInput if it cannot be one.
pub(super) fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is a C struct of byte arrays and a union of integers,
    // sockaddrs and a raw pointer: all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() || name.bytes().any(|b| b == 0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// The Ethernet address of `ifname`, asked through socket `fd`.
pub(crate) fn interface_mac(fd: RawFd, ifname: &str) -> io::Result<[u8; 6]> {
    let mut hw = ifreq(ifname)?;
    ioctl_ifreq(fd, libc::SIOCGIFHWADDR, &mut hw)?;
    // SAFETY: SIOCGIFHWADDR succeeded, so `ifru_hwaddr` is the member the
    // kernel wrote.
    let sa_data = unsafe { hw.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(sa_data.iter()) {
        *dst = *src as u8;
    }
    Ok(mac)
}

pub(super) fn ioctl_ifreq(
    fd: RawFd,
    request: libc::Ioctl,
    req: &mut libc::ifreq,
) -> io::Result<()> {
    // SAFETY: SIOCGIF* requests read the name from and write one union
    // member of the `ifreq` we pass, which is valid and exclusively borrowed.
    cvt(unsafe { libc::ioctl(fd, request, req as *mut libc::ifreq) }).map(drop)
}
