//! Network devices backed by Linux TAP interfaces (`--net tap=NAME[,mac=MAC]`).
//!
//! The monitor opens `/dev/net/tun` and attaches to the named TAP with
//! `TUNSETIFF` (`IFF_TAP | IFF_NO_PI`): an existing TAP is attached, a missing
//! one is created when the process may (`CAP_NET_ADMIN`). The fd is
//! non-blocking; frames move with one `read(2)`/`write(2)` each, straight
//! between the fd and guest memory (see `hypercall/net.rs`).

use duet_abi::boot::{DeviceInfo, DeviceKind};
use duet_abi::hypercall::ETH_HEADER_LEN;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use thiserror::Error;

const TUN_PATH: &str = "/dev/net/tun";
/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
/// Longest interface name (IFNAMSIZ - 1).
const NAME_MAX: usize = 15;

/// One `--net` option, parsed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetConfig {
    /// The TAP interface name.
    pub tap: String,
    /// The guest's MAC address; `None` picks a locally administered one.
    pub mac: Option<[u8; 6]>,
}

/// Why a network device could not be set up.
#[derive(Debug, Error)]
pub enum NetError {
    /// The option is not `tap=NAME[,mac=MAC]`.
    #[error("--net `{0}` is not tap=NAME[,mac=MAC] (e.g. --net tap=tap0,mac=02:00:00:00:00:01)")]
    BadSpec(String),
    /// The interface name is unusable.
    #[error(
        "`{0}` is not a usable interface name: use 1 to 15 characters, no `/`, whitespace or `:`"
    )]
    BadName(String),
    /// The MAC address is malformed.
    #[error("`{0}` is not a unicast MAC address: use six hex bytes separated by `:`, first byte even (e.g. 02:00:00:00:00:01)")]
    BadMac(String),
    /// The same TAP twice.
    #[error("tap {0} is given twice with --net; each TAP backs one guest NIC")]
    Duplicate(String),
    /// Too many devices for the boot info.
    #[error("too many devices: the boot info holds {0}")]
    TooMany(usize),
    /// `/dev/net/tun` cannot be opened.
    #[error("cannot open {TUN_PATH} for tap {tap}; load the tun module (`modprobe tun`) and check the node's permissions")]
    NoTun {
        /// The TAP name.
        tap: String,
        /// The error.
        source: io::Error,
    },
    /// Not allowed to create or attach.
    #[error("tap {0} does not exist and this process may not create it, or it belongs to another user; create it first as root: `ip tuntap add dev {0} mode tap user $(id -un)`")]
    Permission(String),
    /// In use or of the wrong kind.
    #[error("cannot attach to {0}: it is in use by another process, or it is not a TAP without packet info (create it with `ip tuntap add dev {0} mode tap`)")]
    Busy(String),
    /// Any other attach failure.
    #[error("cannot attach to tap {tap}")]
    Attach {
        /// The TAP name.
        tap: String,
        /// The error.
        source: io::Error,
    },
}

/// Parses `tap=NAME[,mac=MAC]`.
pub fn parse_spec(s: &str) -> Result<NetConfig, NetError> {
    let mut tap = None;
    let mut mac = None;
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("tap", name)) if tap.is_none() => {
                if name.is_empty()
                    || name.len() > NAME_MAX
                    || name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace())
                {
                    return Err(NetError::BadName(name.into()));
                }
                tap = Some(name.to_string());
            }
            Some(("mac", m)) if mac.is_none() => mac = Some(parse_mac(m)?),
            _ => return Err(NetError::BadSpec(s.into())),
        }
    }
    match tap {
        Some(tap) => Ok(NetConfig { tap, mac }),
        None => Err(NetError::BadSpec(s.into())),
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (a unicast address).
pub fn parse_mac(s: &str) -> Result<[u8; 6], NetError> {
    let bad = || NetError::BadMac(s.into());
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() || mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(bad());
    }
    Ok(mac)
}

/// A guest NIC backed by a TAP.
pub struct NetDevice {
    name: String,
    mac: [u8; 6],
    mtu: u32,
    fd: OwnedFd,
    /// Set once the TAP has vanished or failed for good; every later call
    /// gets `Error::Io` without touching the fd.
    failed: bool,
}

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
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        r
    }
}

impl NetDevice {
    /// The configuration that attaches this interface again (for snapshots).
    pub fn config(&self) -> NetConfig {
        NetConfig {
            tap: self.name.clone(),
            mac: Some(self.mac),
        }
    }

    /// Opens (or creates, when allowed) TAP `cfg.tap`, non-blocking.
    pub fn open(cfg: &NetConfig, index: usize) -> Result<NetDevice, NetError> {
        let tap = cfg.tap.clone();
        let file: File = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|source| NetError::NoTun {
                tap: tap.clone(),
                source,
            })?;
        let mut req = IfReq::new(&tap);
        req.data[..2].copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req`
        // is (40 bytes, name NUL-terminated since it is at most 15 bytes).
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => NetError::Permission(tap),
                Some(libc::EBUSY) | Some(libc::EINVAL) => NetError::Busy(tap),
                _ => NetError::Attach { tap, source: e },
            });
        }
        let mtu = read_mtu(&tap).unwrap_or_else(|e| {
            log::warn!("tap {tap}: cannot read its MTU ({e}); assuming 1500");
            1500
        });
        let mac = cfg.mac.unwrap_or_else(|| default_mac(index));
        log::info!("tap {tap}: attached, MTU {mtu}, guest MAC {mac:02x?}");
        Ok(NetDevice {
            name: tap,
            mac,
            mtu,
            fd: file.into(),
            failed: false,
        })
    }

    /// The boot-info entry.
    pub fn info(&self) -> DeviceInfo {
        let mut info = DeviceInfo {
            kind: DeviceKind::Net as u32,
            mtu: self.mtu,
            ..Default::default()
        };
        info.mac[..6].copy_from_slice(&self.mac);
        let n = self.name.len().min(info.name.len());
        info.name[..n].copy_from_slice(&self.name.as_bytes()[..n]);
        info
    }

    /// The TAP fd (readable when a frame waits).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The TAP name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Largest frame in bytes: MTU plus the Ethernet header.
    pub fn max_frame(&self) -> u64 {
        u64::from(self.mtu) + ETH_HEADER_LEN
    }

    /// Whether the TAP has failed for good.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Records a host I/O error on `op`: logs it, and marks the device failed
    /// when the TAP is gone.
    pub fn host_error(&mut self, op: &str, e: &io::Error) {
        let gone = matches!(
            e.raw_os_error(),
            Some(libc::EBADFD) | Some(libc::ENODEV) | Some(libc::ENXIO) | Some(libc::EIO)
        );
        if gone {
            self.failed = true;
            log::warn!(
                "tap {}: {op} failed: {e}; the TAP has vanished, the guest sees I/O errors from now on",
                self.name
            );
        } else {
            log::warn!("tap {}: {op} failed: {e}", self.name);
        }
    }
}

/// A locally administered MAC unique to this process and device.
fn default_mac(index: usize) -> [u8; 6] {
    let pid = std::process::id().to_be_bytes();
    [0x02, 0xd7, pid[1], pid[2], pid[3], index as u8]
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

/// Opens every `--net` device, refusing duplicates first.
pub fn open_all(cfgs: &[NetConfig], first_index: usize) -> Result<Vec<NetDevice>, NetError> {
    for (i, c) in cfgs.iter().enumerate() {
        if cfgs[..i].iter().any(|o| o.tap == c.tap) {
            return Err(NetError::Duplicate(c.tap.clone()));
        }
    }
    if first_index + cfgs.len() > duet_abi::boot::MAX_DEVICES {
        return Err(NetError::TooMany(duet_abi::boot::MAX_DEVICES));
    }
    cfgs.iter()
        .enumerate()
        .map(|(i, c)| NetDevice::open(c, first_index + i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(
            parse_spec("tap=tap0").unwrap(),
            NetConfig {
                tap: "tap0".into(),
                mac: None
            }
        );
        assert_eq!(
            parse_spec("tap=t1,mac=02:aa:bb:cc:dd:0f").unwrap().mac,
            Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 0x0f])
        );
        for bad in [
            "",
            "tap=",
            "mac=02:00:00:00:00:01",
            "tap=a,tap=b",
            "tap=x,foo=1",
        ] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_spec("tap=abcdefghijklmnop"),
            Err(NetError::BadName(_))
        ));
    }

    #[test]
    fn macs() {
        for bad in [
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "02:00:00:00:00:0g",
            "2:0:0:0:0:1",
            "01:00:00:00:00:01",
            "00:00:00:00:00:00",
            "02-00-00-00-00-01",
        ] {
            assert!(matches!(parse_mac(bad), Err(NetError::BadMac(_))), "{bad}");
        }
        assert_eq!(parse_mac("52:54:00:12:34:56").unwrap()[5], 0x56);
    }
}
