//! Linux TAP interfaces: attaching (or creating) one with `TUNSETIFF`
//! (`IFF_TAP | IFF_NO_PI`, non-blocking) and reading its MTU.

use super::spec::{NetError, NAME_MAX, TUN_PATH};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;

/// `struct ifreq` with the fields TUNSETIFF and SIOCGIFMTU use.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    /// `ifr_flags` (TUNSETIFF) or the low half of `ifr_mtu` (SIOCGIFMTU).
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> IfReq {
        let mut r = IfReq {
            name: [0; 16],
            data: [0; 24],
        };
        let n = name.len().min(NAME_MAX);
        r.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        r
    }
}

/// Attaches to (or creates, when the process may) TAP `tap`; returns its
/// non-blocking fd and MTU.
pub(super) fn attach(tap: &str) -> Result<(OwnedFd, u32), NetError> {
    let file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_PATH)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => NetError::TunDenied(tap.into()),
            _ => NetError::NoTun {
                tap: tap.into(),
                source,
            },
        })?;
    let mut req = IfReq::new(tap);
    req.data[..2].copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req`
    // is (40 bytes, name NUL-terminated since it is at most 15 bytes).
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        let tap = tap.to_string();
        return Err(match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => NetError::Permission(tap),
            Some(libc::EBUSY) | Some(libc::EINVAL) => NetError::Busy(tap),
            _ => NetError::Attach { tap, source: e },
        });
    }
    let mtu = read_mtu(tap).unwrap_or_else(|e| {
        log::warn!("tap {tap}: cannot read its MTU ({e}); assuming 1500");
        1500
    });
    Ok((file.into(), mtu))
}

/// The interface's MTU (SIOCGIFMTU on a throwaway socket).
fn read_mtu(name: &str) -> io::Result<u32> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `s` is a fresh fd we own.
    let sock = unsafe { OwnedFd::from_raw_fd(s) };
    let mut req = IfReq::new(name);
    // SAFETY: SIOCGIFMTU fills the `int ifr_mtu` of one `struct ifreq`.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU as _, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let mtu = i32::from_ne_bytes([req.data[0], req.data[1], req.data[2], req.data[3]]);
    u32::try_from(mtu)
        .ok()
        .filter(|&m| (68..=65535).contains(&m))
        .ok_or_else(|| io::Error::other(format!("implausible MTU {mtu}")))
}
