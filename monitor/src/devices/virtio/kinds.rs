//! The two virtio devices as the rest of the monitor sees them: a disk and
//! a NIC behind the [`Device`] trait, their records in snapshots and
//! migrations ([`DeviceState::VirtioBlock`], [`DeviceState::VirtioNet`]).

use super::blk::BlkEngine;
use super::net::NetEngine;
use super::transport::TransportState;
use super::{StartCtx, VirtioDevice, VirtioPort};
use crate::devices::block::{BlockDevice, BlockState};
use crate::devices::net::{NetConfig, NetDevice};
use crate::devices::{CopySource, Device, DeviceError, DeviceState};
use crate::memory::{GuestMem, MemError};
use duet_abi::boot::{DeviceInfo, DEVICE_FLAG_VIRTIO};
use std::os::fd::RawFd;
use std::sync::Arc;

/// A virtio disk.
pub struct VirtioBlock {
    dev: Arc<BlockDevice>,
    v: VirtioDevice<BlkEngine>,
}

impl VirtioBlock {
    /// Disk `dev` as device `id`; `saved` for a restored one.
    pub fn new(
        id: usize,
        dev: BlockDevice,
        saved: Option<TransportState>,
    ) -> std::io::Result<Self> {
        let dev = Arc::new(dev);
        let v = VirtioDevice::new(id, BlkEngine::new(dev.clone()), saved)?;
        Ok(VirtioBlock { dev, v })
    }
}

/// A virtio NIC.
pub struct VirtioNet {
    info: DeviceInfo,
    cfg: NetConfig,
    v: VirtioDevice<NetEngine>,
}

impl VirtioNet {
    /// NIC `dev` as device `id`; `saved` for a restored one.
    pub fn new(id: usize, dev: NetDevice, saved: Option<TransportState>) -> std::io::Result<Self> {
        let mut info = dev.info();
        info.flags |= DEVICE_FLAG_VIRTIO;
        let cfg = dev.config();
        let v = VirtioDevice::new(id, NetEngine::new(dev), saved)?;
        Ok(VirtioNet { info, cfg, v })
    }
}

macro_rules! common {
    () => {
        fn start(&mut self, ctx: &StartCtx<'_>) -> Result<(), DeviceError> {
            self.v.start(ctx).map_err(|source| DeviceError::Start {
                name: self.describe(),
                source,
            })
        }

        fn ready_fd(&self) -> Option<RawFd> {
            Some(self.v.call_fd())
        }

        fn ready_now(&self) -> bool {
            self.v.ready_now()
        }

        fn input_fd(&self) -> Option<RawFd> {
            self.v.input_fd()
        }

        fn quiesce(&self) {
            self.v.quiesce()
        }

        fn resume(&self) {
            self.v.resume()
        }

        fn virtio(&self) -> Option<&dyn VirtioPort> {
            Some(self)
        }

        fn as_any(&self) -> &dyn std::any::Any {
            self
        }

        fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
            self
        }
    };
}

macro_rules! port {
    ($t:ty) => {
        impl VirtioPort for $t {
            fn doorbell(&self) {
                self.v.doorbell()
            }

            fn status_call(&self, mem: &GuestMem) -> Result<(), MemError> {
                self.v.status_call(mem)
            }
        }
    };
}
port!(VirtioBlock);
port!(VirtioNet);

impl Device for VirtioBlock {
    fn info(&self) -> DeviceInfo {
        let mut i = self.dev.info();
        i.flags |= DEVICE_FLAG_VIRTIO;
        i
    }

    fn save(&self) -> DeviceState {
        let DeviceState::Block(b) = Device::save(&*self.dev) else {
            unreachable!("a block device saves a block record")
        };
        DeviceState::VirtioBlock(b, self.v.transport_state())
    }

    fn describe(&self) -> String {
        format!("{}, {}", self.dev.describe(), self.v.describe_transport())
    }

    fn flush(&self) -> Result<(), DeviceError> {
        self.dev.flush()
    }

    fn lock(&self) -> Result<(), DeviceError> {
        self.dev.lock()
    }

    fn unlock(&self) {
        self.dev.unlock()
    }

    fn copy_source(&self) -> Option<std::io::Result<CopySource>> {
        self.dev.copy_source()
    }

    fn stop_copy_tracking(&self) {
        self.dev.stop_copy_tracking()
    }

    common!();
}

impl Device for VirtioNet {
    fn info(&self) -> DeviceInfo {
        self.info
    }

    fn save(&self) -> DeviceState {
        DeviceState::VirtioNet(self.cfg.clone(), self.v.transport_state())
    }

    fn describe(&self) -> String {
        let mac = self.cfg.mac.unwrap_or_default();
        format!(
            "nic on tap {} (MAC {}), {}",
            self.cfg.tap,
            mac.map(|b| format!("{b:02x}")).join(":"),
            self.v.describe_transport()
        )
    }

    common!();
}

/// Rebuilds a virtio disk from its record.
pub fn restore_block(
    id: usize,
    lock: bool,
    b: &BlockState,
    t: &TransportState,
) -> Result<VirtioBlock, crate::persist::StateError> {
    use crate::persist::Persist;
    let dev = BlockDevice::restore((id, lock), b)?;
    VirtioBlock::new(id, dev, Some(t.clone()))
        .map_err(|e| crate::persist::StateError::Device(e.to_string()))
}

/// Rebuilds a virtio NIC from its record.
pub fn restore_net(
    id: usize,
    c: &NetConfig,
    t: &TransportState,
) -> Result<VirtioNet, crate::persist::StateError> {
    use crate::persist::Persist;
    let dev = NetDevice::restore(id, c)?;
    VirtioNet::new(id, dev, Some(t.clone()))
        .map_err(|e| crate::persist::StateError::Device(e.to_string()))
}
