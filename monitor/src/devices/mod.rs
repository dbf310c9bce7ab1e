//! The guest's devices: what the boot info's device table lists and what the
//! device hypercalls act on. The guest names a device by its index in the
//! table.
//!
//! Each kind of device lives in its own module (its state, its setup from
//! the command line) with its hypercall handlers in `hypercall/`.

use duet_abi::boot::DeviceInfo;
use serde::{Deserialize, Serialize};
use std::os::fd::RawFd;

/// One device. Each kind of device adds a variant.
pub enum Device {}

/// A device's record in a snapshot. Each kind of device adds a variant
/// holding what it needs to come back (a block device: its disk path,
/// flags, ...); restore fails cleanly when that is gone (e.g. a missing
/// disk file: `SnapshotError::MissingFile`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {}

impl Device {
    /// The device's boot-info entry.
    pub fn info(&self) -> DeviceInfo {
        match *self {}
    }

    /// A file descriptor that becomes readable when the device has input
    /// for the guest, for the poll hypercall; `None` means always ready.
    pub fn ready_fd(&self) -> Option<RawFd> {
        match *self {}
    }

    /// The device's snapshot record.
    pub fn save(&self) -> DeviceState {
        match *self {}
    }

    /// Rebuilds a device from its snapshot record.
    pub fn restore(state: &DeviceState) -> Result<Device, crate::snapshot::SnapshotError> {
        match *state {}
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
}
