//! Network devices backed by Linux TAP interfaces (`--net tap=NAME[,mac=MAC]`,
//! [`spec`]). The monitor attaches to the named TAP ([`tap`]): an existing
//! one is attached, a missing one is created when the process may
//! (`CAP_NET_ADMIN`). Frames move with one `readv(2)`/`write(2)` each,
//! straight between the fd and guest memory ([`hypercalls`]).

pub mod hypercalls;
mod spec;
mod tap;

pub use spec::{parse_mac, parse_spec, NetConfig, NetError};

use super::{Device, DeviceState};
use crate::persist::{Persist, StateError};
use duet_abi::boot::{DeviceInfo, DeviceKind, MAX_DEVICES};
use duet_abi::hypercall::ETH_HEADER_LEN;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// A guest NIC backed by a TAP.
pub struct NetDevice {
    name: String,
    mac: [u8; 6],
    mtu: u32,
    fd: OwnedFd,
    /// Set once the TAP has vanished or failed for good; every later call
    /// gets `Error::Io` without touching the fd.
    failed: bool,
    /// Frames dropped because they did not fit the guest's buffer (the
    /// host raised the TAP's MTU after boot).
    oversized: u64,
    transport: crate::devices::Transport,
}

impl NetDevice {
    /// Opens (or creates, when allowed) TAP `cfg.tap`, non-blocking; `index`
    /// is its place in the device table (for a default MAC).
    pub fn open(cfg: &NetConfig, index: usize) -> Result<NetDevice, NetError> {
        let (fd, mtu) = tap::attach(&cfg.tap)?;
        let mac = cfg.mac.unwrap_or_else(|| default_mac(index));
        log::info!("tap {}: attached, MTU {mtu}, guest MAC {mac:02x?}", cfg.tap);
        Ok(NetDevice {
            name: cfg.tap.clone(),
            mac,
            mtu,
            fd,
            failed: false,
            oversized: 0,
            transport: cfg.transport,
        })
    }

    /// The configuration that attaches this interface again.
    pub fn config(&self) -> NetConfig {
        NetConfig {
            tap: self.name.clone(),
            mac: Some(self.mac),
            transport: self.transport,
        }
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

    /// Counts a frame dropped for not fitting the guest's buffer; logs the
    /// first (and every 1000th) so the host learns its MTU is too big.
    pub fn dropped_oversized(&mut self, len: usize, cap: u64) {
        if self.oversized % 1000 == 0 {
            log::warn!(
                "tap {}: dropped a {len}-byte frame, longer than the guest's {cap}-byte buffer (MTU {} at boot); keep the TAP's MTU at its boot value ({} dropped so far)",
                self.name,
                self.mtu,
                self.oversized + 1
            );
        }
        self.oversized += 1;
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

impl Device for NetDevice {
    fn info(&self) -> DeviceInfo {
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

    fn ready_fd(&self) -> Option<RawFd> {
        // A vanished TAP polls as an error, which wakes the guest too.
        Some(self.fd.as_raw_fd())
    }

    fn save(&self) -> DeviceState {
        DeviceState::Net(self.config())
    }

    fn describe(&self) -> String {
        format!(
            "nic on tap {} (MTU {}, MAC {}{})",
            self.name,
            self.mtu,
            self.mac.map(|b| format!("{b:02x}")).join(":"),
            if self.failed { ", failed" } else { "" }
        )
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

impl Persist for NetDevice {
    type State = NetConfig;
    /// The device's place in the table.
    type ConstructorArgs<'a> = usize;
    type Error = StateError;

    fn save(&self) -> Result<NetConfig, StateError> {
        Ok(self.config())
    }

    fn restore(id: usize, s: &NetConfig) -> Result<Self, StateError> {
        NetDevice::open(s, id).map_err(|e| StateError::Device(e.to_string()))
    }
}

/// A locally administered MAC unique to this process and device.
fn default_mac(index: usize) -> [u8; 6] {
    let pid = std::process::id().to_be_bytes();
    [0x02, 0xd7, pid[1], pid[2], pid[3], index as u8]
}

/// Opens every `--net` device, refusing duplicates first.
pub fn open_all(cfgs: &[NetConfig], first_index: usize) -> Result<Vec<NetDevice>, NetError> {
    for (i, c) in cfgs.iter().enumerate() {
        if cfgs[..i].iter().any(|o| o.tap == c.tap) {
            return Err(NetError::Duplicate(c.tap.clone()));
        }
    }
    if first_index + cfgs.len() > MAX_DEVICES {
        return Err(NetError::TooMany(MAX_DEVICES));
    }
    cfgs.iter()
        .enumerate()
        .map(|(i, c)| NetDevice::open(c, first_index + i))
        .collect()
}
