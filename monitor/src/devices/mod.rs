//! The guest's devices: what the boot info's device table lists and what the
//! device hypercalls act on. The guest names a device by its index in the
//! table.
//!
//! Each kind of device lives in its own module (its state, its setup from
//! the command line) with its hypercall handlers in `hypercall/`.

pub mod block;
pub mod net;

use duet_abi::boot::DeviceInfo;
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, RawFd};

/// One device. Each kind of device adds a variant.
pub enum Device {
    /// A disk (`--disk`).
    Block(block::BlockDevice),
    /// A TAP-backed network interface.
    Net(net::NetDevice),
}

/// A device's record in a snapshot. Each kind of device adds a variant
/// holding what it needs to come back (a block device: its disk path,
/// flags, ...); restore fails cleanly when that is gone (e.g. a missing
/// disk file: `SnapshotError::MissingFile`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// A disk: reopened from its path on restore.
    Block {
        /// The disk's spec as it was attached.
        spec: block::DiskSpec,
        /// Its capacity then (a disk that changed size is refused).
        capacity: u64,
    },
    /// A network interface: its TAP is reattached (or created) on restore.
    Net(net::NetConfig),
}

impl Device {
    /// The device's boot-info entry.
    pub fn info(&self) -> DeviceInfo {
        match self {
            Device::Block(b) => b.info(),
            Device::Net(n) => n.info(),
        }
    }

    /// A file descriptor that becomes readable when the device has input
    /// for the guest, for the poll hypercall; `None` means always ready.
    pub fn ready_fd(&self) -> Option<RawFd> {
        match self {
            // Block requests complete within the hypercall.
            Device::Block(_) => None,
            // A vanished TAP polls as an error, which wakes the guest too.
            Device::Net(n) => Some(n.fd().as_raw_fd()),
        }
    }

    /// The device's snapshot record.
    pub fn save(&self) -> DeviceState {
        match self {
            Device::Block(b) => DeviceState::Block {
                spec: b.spec(),
                capacity: b.info().capacity,
            },
            Device::Net(n) => DeviceState::Net(n.config()),
        }
    }

    /// Rebuilds a device from its snapshot record; `id` is its place in the
    /// device table.
    pub fn restore(
        state: &DeviceState,
        id: usize,
    ) -> Result<Device, crate::snapshot::SnapshotError> {
        Self::reattach(state, id, true)
    }

    /// As [`Device::restore`]; `lock` false leaves disks unlocked (a
    /// migration destination locks them after commit: [`Devices::lock_disks`]).
    pub fn reattach(
        state: &DeviceState,
        id: usize,
        lock: bool,
    ) -> Result<Device, crate::snapshot::SnapshotError> {
        use crate::snapshot::SnapshotError;
        match state {
            DeviceState::Block { spec, capacity } => {
                if !spec.path.exists() {
                    return Err(SnapshotError::MissingFile(spec.path.display().to_string()));
                }
                let one = std::slice::from_ref(spec);
                let opened = if lock {
                    block::open_all(one, id)
                } else {
                    block::open_all_unlocked(one, id)
                };
                let mut disks = opened
                    .map_err(|e| SnapshotError::Invalid(format!("reattaching a disk: {e}")))?;
                let disk = disks.pop().expect("one disk opened");
                if disk.info().capacity != *capacity {
                    return Err(SnapshotError::Invalid(format!(
                        "disk {} is now {} bytes but was {} bytes when the snapshot was taken; restore it with the same disk",
                        spec.path.display(),
                        disk.info().capacity,
                        capacity
                    )));
                }
                Ok(Device::Block(disk))
            }
            DeviceState::Net(cfg) => net::NetDevice::open(cfg, id)
                .map(Device::Net)
                .map_err(|e| SnapshotError::Invalid(format!("reattaching a network device: {e}"))),
        }
    }
}

/// All devices of a VM, in device-table order.
#[derive(Default)]
pub struct Devices {
    /// The devices; a device's index here is its id in the guest.
    pub list: Vec<Device>,
}

impl Devices {
    /// The boot info's device table.
    pub fn infos(&self) -> Vec<DeviceInfo> {
        self.list.iter().map(Device::info).collect()
    }

    /// The device with id `id`.
    pub fn get_mut(&mut self, id: u32) -> Option<&mut Device> {
        self.list.get_mut(id as usize)
    }

    /// Makes every disk's writes durable (`fdatasync`), e.g. before a
    /// migration's state leaves; the first failure names the disk.
    pub fn flush_disks(&self) -> Result<(), String> {
        for d in &self.list {
            if let Device::Block(b) = d {
                b.flush().map_err(|e| {
                    format!("flushing disk {} failed ({e:?})", b.spec().path.display())
                })?;
            }
        }
        Ok(())
    }

    /// Takes every disk's advisory lock (see [`block::BlockDevice::lock`]).
    pub fn lock_disks(&self) -> Result<(), block::BlockError> {
        for d in &self.list {
            if let Device::Block(b) = d {
                b.lock()?;
            }
        }
        Ok(())
    }

    /// Drops every disk's advisory lock.
    pub fn unlock_disks(&self) {
        for d in &self.list {
            if let Device::Block(b) = d {
                b.unlock();
            }
        }
    }

    /// The block device with id `id`, or [`duet_abi::hypercall::Error::NoDev`].
    pub fn block(&self, id: u32) -> Result<&block::BlockDevice, duet_abi::hypercall::Error> {
        match self.list.get(id as usize) {
            Some(Device::Block(b)) => Ok(b),
            _ => Err(duet_abi::hypercall::Error::NoDev),
        }
    }
}
