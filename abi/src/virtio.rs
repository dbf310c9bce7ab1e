//! The virtio transport: how a guest drives a device through virtqueues in
//! its own memory instead of one hypercall per request.
//!
//! A device-table entry with [`crate::boot::DEVICE_FLAG_VIRTIO`] is a virtio
//! device (virtio 1.x, split virtqueues). Its registers live in a
//! [`VirtioSlot`] of the transport page (the memory-map region of kind
//! [`crate::boot::RegionKind::Virtio`]): slot `i` belongs to device `i` and
//! sits at `region start + i * VIRTIO_SLOT_SIZE`. The guest reads and
//! writes the slot as plain memory (no exit); the monitor looks at it only
//! when the guest makes [`crate::hypercall::Hypercall::VirtioStatus`] after
//! changing `status`, and then checks everything before acting.
//!
//! Notifications, both directions without interrupts:
//! * driver → device: one `out dx, eax` (any value; `eax` = queue index by
//!   convention) to [`doorbell_port`] of the device. The monitor's I/O
//!   thread sleeps on it only after spinning a bounded time; with
//!   `VIRTIO_RING_F_EVENT_IDX` the guest rings only when the device asked
//!   to be woken (`avail_event`).
//! * device → driver: the guest sees completions by reading the used ring.
//!   When it has nothing to do it writes `used_event` (the used index it
//!   has consumed) in the avail ring and blocks in the poll hypercall with
//!   the device in its wait set; the monitor wakes it when a used buffer
//!   arrives past `used_event`.
//!
//! Feature bits offered are the `VIRTIO_*` constants below; everything else
//! is refused (`FEATURES_OK` is cleared on a status call with unknown bits).

use crate::plain;

/// Bytes per device in the transport page.
pub const VIRTIO_SLOT_SIZE: u64 = 256;
/// Most virtqueues a device has (virtio-net: receive 0, transmit 1).
pub const VIRTIO_MAX_QUEUES: usize = 2;
/// Largest queue size the monitor offers (`max_size`); sizes must be
/// powers of two.
pub const VIRTIO_QUEUE_MAX: u16 = 256;
/// Bytes of device-specific configuration space in a slot.
pub const VIRTIO_CONFIG_SIZE: usize = 64;

/// Hypercall numbers from which the doorbells start: device `i` rings port
/// [`crate::hypercall::PORT_BASE`] + `DOORBELL_BASE` + `i`.
pub const DOORBELL_BASE: u16 = 48;

/// The doorbell port of device `dev`.
pub const fn doorbell_port(dev: u32) -> u16 {
    crate::hypercall::PORT_BASE + DOORBELL_BASE + dev as u16
}

/// virtio device type: network card.
pub const VIRTIO_ID_NET: u32 = 1;
/// virtio device type: block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;

/// Status bit: the guest saw the device.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// Status bit: the guest has a driver.
pub const STATUS_DRIVER: u32 = 2;
/// Status bit: the driver is ready; the monitor starts the queues.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Status bit: features accepted (the monitor clears it on bad features).
pub const STATUS_FEATURES_OK: u32 = 8;
/// Status bit set by the monitor: the device met a fatal error (a bad
/// queue); the guest must reset it (write 0) to use it again.
pub const STATUS_NEEDS_RESET: u32 = 64;
/// Status bit: the guest gave up on the device.
pub const STATUS_FAILED: u32 = 128;

/// Feature: block device is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Feature: block `blk_size` is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
/// Feature: block flush command.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// Feature: network `mtu` is valid.
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
/// Feature: network `mac` is valid.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Feature: network `status` is valid.
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// Feature: indirect descriptors.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// Feature: `used_event` / `avail_event` notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Feature: virtio 1.x (modern) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Length of the `virtio_net_hdr` (version 1) before each frame.
pub const VIRTIO_NET_HDR_LEN: u64 = 12;

/// One virtqueue's registers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtioQueueRegs {
    /// OUT (monitor): largest size the device accepts; 0 = no such queue.
    pub max_size: u16,
    /// IN: size the driver chose (a power of two, at most `max_size`).
    pub size: u16,
    /// IN: 1 once the addresses are set.
    pub ready: u32,
    /// IN: descriptor table address (16-byte aligned).
    pub desc: u64,
    /// IN: driver area (avail ring, 2-byte aligned).
    pub driver: u64,
    /// IN: device area (used ring, 4-byte aligned).
    pub device: u64,
}

/// A device's registers in the transport page.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VirtioSlot {
    /// OUT: [`VIRTIO_ID_NET`] or [`VIRTIO_ID_BLOCK`].
    pub device_id: u32,
    /// OUT: incremented whenever the monitor rewrites `config`.
    pub config_generation: u32,
    /// OUT: features the device offers.
    pub device_features: u64,
    /// IN: features the driver accepts (a subset of `device_features`).
    pub driver_features: u64,
    /// IN/OUT: `STATUS_*` bits. The guest writes it, then makes the
    /// `VirtioStatus` hypercall; the monitor writes back what it accepted.
    pub status: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The queues.
    pub queues: [VirtioQueueRegs; VIRTIO_MAX_QUEUES],
    /// OUT: the device's configuration space (virtio-blk: capacity in
    /// 512-byte sectors at 0, `blk_size` at 20; virtio-net: `mac` at 0,
    /// `status` at 6, `mtu` at 10), little-endian as the spec lays it out.
    pub config: [u8; VIRTIO_CONFIG_SIZE],
    /// Reserved, zero.
    pub tail: [u8; 96],
}

impl Default for VirtioSlot {
    fn default() -> Self {
        VirtioSlot {
            device_id: 0,
            config_generation: 0,
            device_features: 0,
            driver_features: 0,
            status: 0,
            reserved: 0,
            queues: [VirtioQueueRegs::default(); VIRTIO_MAX_QUEUES],
            config: [0; VIRTIO_CONFIG_SIZE],
            tail: [0; 96],
        }
    }
}

plain!(VirtioQueueRegs = 32, VirtioSlot = VIRTIO_SLOT_SIZE as usize);
const _: () = assert!(
    crate::boot::MAX_DEVICES as u64 * VIRTIO_SLOT_SIZE <= crate::PAGE_SIZE,
    "one transport page holds every device's slot"
);
const _: () = assert!(DOORBELL_BASE as usize + crate::boot::MAX_DEVICES <= 64);
