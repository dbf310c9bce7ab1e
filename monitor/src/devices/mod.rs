//! The guest's devices: what the boot info's device table lists and what the
//! device hypercalls act on. The guest names a device by its index in the
//! table.
//!
//! Each kind of device lives in its own folder (its state, its command-line
//! option, its hypercall handlers, its `Persist` impl) and implements
//! [`Device`], the one door through which the rest of the monitor — the run
//! loop's poll, snapshots, migrations — reaches it. This file is the
//! registry: the only place that names every kind ([`reattach`]).

pub mod block;
pub mod net;
mod relocate;
pub mod virtio;

pub use relocate::relocate;

use crate::memory::HostDirty;
use crate::persist::{Persist, StateError};
use duet_abi::boot::{DeviceInfo, MAX_DEVICES};
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::os::fd::RawFd;
use std::sync::Arc;
use thiserror::Error;
use virtio::{StartCtx, VirtioPort};

/// Why a device operation failed at run time.
#[derive(Debug, Error)]
pub enum DeviceError {
    /// Making writes durable failed.
    #[error("flushing {name} failed: {source}")]
    Flush {
        /// The device.
        name: String,
        /// The host error.
        source: std::io::Error,
    },
    /// A disk's lock is held elsewhere.
    #[error(transparent)]
    Block(#[from] block::BlockError),
    /// A virtio device's I/O thread or doorbell could not be set up.
    #[error("starting {name}: {source}")]
    Start {
        /// The device.
        name: String,
        /// The host error.
        source: std::io::Error,
    },
}

/// How the guest reaches a device: through virtqueues (no exit per
/// request while busy) or one hypercall per request or batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transport {
    /// virtio-blk / virtio-net over shared queues (the default: fewer
    /// exits, see `cargo xtask bench block|net`).
    #[default]
    Virtio,
    /// The block and network hypercalls.
    Hypercall,
}

impl Transport {
    /// Parses `virtio` or `hypercall`.
    pub fn parse(s: &str) -> Option<Transport> {
        match s {
            "virtio" => Some(Transport::Virtio),
            "hypercall" => Some(Transport::Hypercall),
            _ => None,
        }
    }
}

/// What a migration that copies a device's contents reads (`--copy-disks`).
pub struct CopySource {
    /// A second descriptor of the backing file, read with `pread`.
    pub file: std::fs::File,
    /// Its size in bytes.
    pub capacity: u64,
    /// The 4 KiB units the guest writes while tracking is on.
    pub dirty: Arc<HostDirty>,
}

/// One device of the guest's device table.
pub trait Device: Send + Any {
    /// The device's boot-info entry.
    fn info(&self) -> DeviceInfo;
    /// A file descriptor that becomes readable when the device has input for
    /// the guest, for the poll hypercall; `None` means always ready.
    fn ready_fd(&self) -> Option<RawFd> {
        None
    }
    /// The device's record in a snapshot or a migration.
    fn save(&self) -> DeviceState;
    /// One line for `duet ctl status`.
    fn describe(&self) -> String;
    /// Makes the guest's writes durable (before a migration's state leaves,
    /// and when the monitor stops a guest).
    fn flush(&self) -> Result<(), DeviceError> {
        Ok(())
    }
    /// Takes the device's host lock (a migration destination after commit,
    /// a source after an abort).
    fn lock(&self) -> Result<(), DeviceError> {
        Ok(())
    }
    /// Drops the host lock (a migrating source, guest paused and flushed).
    fn unlock(&self) {}
    /// What a migration copying the device's contents reads, if it has any.
    fn copy_source(&self) -> Option<std::io::Result<CopySource>> {
        None
    }
    /// Stops tracking writes for a copy.
    fn stop_copy_tracking(&self) {}
    /// Starts what the device runs beside the vCPU (a virtio device's I/O
    /// thread), once guest memory exists.
    fn start(&mut self, _ctx: &StartCtx<'_>) -> Result<(), DeviceError> {
        Ok(())
    }
    /// Whether the device has news for the guest already; the poll
    /// hypercall asks before it sleeps on [`Device::ready_fd`].
    fn ready_now(&self) -> bool {
        false
    }
    /// An fd whose input [`Device::ready_now`] serves on the spot (a virtio
    /// NIC's TAP): the poll hypercall waits on it too, and asks again when
    /// it fires.
    fn input_fd(&self) -> Option<RawFd> {
        None
    }
    /// Stops the device's own thread between two requests (before a
    /// capture: its queue state and guest memory then hold still).
    fn quiesce(&self) {}
    /// Lets it go on after [`Device::quiesce`].
    fn resume(&self) {}
    /// The virtio side of a virtio device.
    fn virtio(&self) -> Option<&dyn VirtioPort> {
        None
    }
    /// For the device's own hypercall handlers.
    fn as_any(&self) -> &dyn Any;
    /// For the device's own hypercall handlers.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// A device's saved record: each kind of device adds a variant holding its
/// own `Persist` state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// A disk: reopened from its path.
    Block(block::BlockState),
    /// A network interface: its TAP is reattached (or created).
    Net(net::NetConfig),
    /// A virtio disk: the disk, and its queues (served on after restore).
    VirtioBlock(block::BlockState, virtio::VirtioState),
    /// A virtio NIC: the interface, and its queues.
    VirtioNet(net::NetConfig, virtio::VirtioState),
}

/// Rebuilds device `id` from its record; `lock` false leaves a disk
/// unlocked (a migration destination locks after commit).
pub fn reattach(state: &DeviceState, id: usize, lock: bool) -> Result<Box<dyn Device>, StateError> {
    Ok(match state {
        DeviceState::Block(s) => Box::new(block::BlockDevice::restore((id, lock), s)?),
        DeviceState::Net(s) => Box::new(net::NetDevice::restore(id, s)?),
        DeviceState::VirtioBlock(b, t) => Box::new(virtio::restore_block(id, lock, b, t)?),
        DeviceState::VirtioNet(c, t) => Box::new(virtio::restore_net(id, c, t)?),
    })
}

/// All devices of a VM, in device-table order.
#[derive(Default)]
pub struct Devices {
    list: Vec<Box<dyn Device>>,
}

impl Devices {
    /// Opens the command line's devices, disks first, then NICs, checking
    /// everything before anything starts.
    pub fn open(
        disks: &[block::DiskSpec],
        nets: &[net::NetConfig],
    ) -> Result<Devices, DeviceOpenError> {
        let mut list: Vec<Box<dyn Device>> = Vec::new();
        let start = |name: String| move |source| DeviceOpenError::Start { name, source };
        for (d, spec) in block::open_all(disks, 0)?.into_iter().zip(disks) {
            let id = list.len();
            list.push(match spec.transport {
                Transport::Hypercall => Box::new(d),
                Transport::Virtio => Box::new(
                    virtio::VirtioBlock::new(id, d, None).map_err(start(format!("disk {id}")))?,
                ),
            });
        }
        let first = list.len();
        for (n, cfg) in net::open_all(nets, first)?.into_iter().zip(nets) {
            let id = list.len();
            list.push(match cfg.transport {
                Transport::Hypercall => Box::new(n),
                Transport::Virtio => Box::new(
                    virtio::VirtioNet::new(id, n, None).map_err(start(format!("nic {id}")))?,
                ),
            });
        }
        Ok(Devices { list })
    }

    /// How many devices.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The devices, in table order.
    pub fn iter(&self) -> impl Iterator<Item = &dyn Device> {
        self.list.iter().map(|d| d.as_ref())
    }

    /// The boot info's device table.
    pub fn infos(&self) -> Vec<DeviceInfo> {
        self.iter().map(Device::info).collect()
    }

    /// Device `id` as its concrete kind `T`, if it is one.
    pub fn get<T: Device>(&self, id: u32) -> Option<&T> {
        self.list.get(id as usize)?.as_any().downcast_ref()
    }

    /// Device `id` as its concrete kind `T`, mutably.
    pub fn get_mut<T: Device>(&mut self, id: u32) -> Option<&mut T> {
        self.list.get_mut(id as usize)?.as_any_mut().downcast_mut()
    }

    /// Makes every device's writes durable; the first failure is returned.
    pub fn flush(&self) -> Result<(), DeviceError> {
        self.iter().try_for_each(Device::flush)
    }

    /// Takes every device's host lock.
    pub fn lock(&self) -> Result<(), DeviceError> {
        self.iter().try_for_each(Device::lock)
    }

    /// Drops every device's host lock.
    pub fn unlock(&self) {
        self.iter().for_each(Device::unlock)
    }

    /// Starts every device's own thread (guest memory exists now).
    pub fn start(&mut self, ctx: &StartCtx<'_>) -> Result<(), DeviceError> {
        self.list.iter_mut().try_for_each(|d| d.start(ctx))
    }

    /// Holds every device's thread still (before a capture).
    pub fn quiesce(&self) {
        self.iter().for_each(Device::quiesce)
    }

    /// Lets them go on.
    pub fn resume(&self) {
        self.iter().for_each(Device::resume)
    }

    /// Device `id`'s virtio side, if it is a virtio device.
    pub fn virtio(&self, id: u32) -> Option<&dyn VirtioPort> {
        self.list.get(id as usize)?.virtio()
    }
}

/// Why the command line's devices could not be opened.
#[derive(Debug, Error)]
pub enum DeviceOpenError {
    /// A `--disk`.
    #[error(transparent)]
    Disk(#[from] block::BlockError),
    /// A `--net`.
    #[error(transparent)]
    Net(#[from] net::NetError),
    /// A virtio device's eventfds.
    #[error("setting up {name}: {source}")]
    Start {
        /// The device.
        name: String,
        /// The host error.
        source: std::io::Error,
    },
}

/// How devices come back: whether disks take their locks now.
#[derive(Clone, Copy, Debug)]
pub struct Reattach {
    /// Take the disks' advisory locks now (a migration destination waits
    /// for commit).
    pub lock: bool,
}

impl Persist for Devices {
    type State = Vec<DeviceState>;
    type ConstructorArgs<'a> = Reattach;
    type Error = StateError;

    fn save(&self) -> Result<Vec<DeviceState>, StateError> {
        Ok(self.iter().map(Device::save).collect())
    }

    fn restore(how: Reattach, s: &Vec<DeviceState>) -> Result<Devices, StateError> {
        if s.len() > MAX_DEVICES {
            return Err(StateError::Invalid(format!(
                "{} devices is too many (at most {MAX_DEVICES})",
                s.len()
            )));
        }
        let list = s
            .iter()
            .enumerate()
            .map(|(id, d)| reattach(d, id, how.lock))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Devices { list })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_of_no_devices_and_too_many_refused() {
        let d = Devices::default();
        let s = d.save().unwrap();
        let back = Devices::restore(Reattach { lock: true }, &s).unwrap();
        assert!(back.is_empty());
        let many = vec![
            DeviceState::Net(net::NetConfig {
                tap: "x".into(),
                mac: None,
                transport: Transport::Hypercall,
            });
            17
        ];
        assert!(Devices::restore(Reattach { lock: true }, &many).is_err());
    }
}
