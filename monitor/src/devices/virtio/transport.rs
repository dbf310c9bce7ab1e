//! The transport slot, vCPU side: what the monitor writes into it (device
//! type, features, queue limits, configuration), what it does on the
//! `VirtioStatus` hypercall (feature check, queue set-up, reset), and the
//! queues' saved records. Everything the guest wrote is checked before the
//! I/O thread sees it; a bad slot costs the device (`NEEDS_RESET`), never
//! the monitor.

use super::core::{Core, Engine};
use crate::memory::{GuestMem, IoMem, MemError};
use duet_abi::virtio::{
    VirtioQueueRegs, VirtioSlot, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_FAILED, STATUS_FEATURES_OK, STATUS_NEEDS_RESET, VIRTIO_F_VERSION_1, VIRTIO_QUEUE_MAX,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_SLOT_SIZE,
};
use duet_abi::Gpa;
use serde::{Deserialize, Serialize};
use std::mem::offset_of;
use virtio_queue::{Queue, QueueT};

/// The transport page's guest address (see `layout`).
pub const TRANSPORT_PAGE: u64 = crate::layout::VIRTIO_PAGE;

/// Device `id`'s slot.
pub fn slot_of(id: usize) -> u64 {
    TRANSPORT_PAGE + id as u64 * VIRTIO_SLOT_SIZE
}

/// One queue's saved record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRecord {
    /// Size the driver chose.
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Avail ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
    /// The device's next avail entry (the ones after it are served after a
    /// restore: requests in flight at the capture are replayed).
    pub next_avail: u16,
    /// The device's next used entry.
    pub next_used: u16,
}

/// A virtio device's saved transport state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// Accepted driver features.
    pub features: u64,
    /// Accepted status.
    pub status: u32,
    /// Live queues (empty before `DRIVER_OK`).
    pub queues: Vec<QueueRecord>,
}

/// Writes the device's side of its slot (type, features, limits, config);
/// the driver's fields are left alone (a restored guest keeps them).
pub fn publish<E: Engine>(mem: &GuestMem, slot: u64, engine: &E) -> Result<(), MemError> {
    let mut s: VirtioSlot = mem.read_plain(Gpa(slot))?;
    s.device_id = E::DEVICE_ID;
    s.device_features = engine.features();
    s.config = engine.config();
    s.config_generation = s.config_generation.wrapping_add(1);
    for (i, q) in s.queues.iter_mut().enumerate() {
        q.max_size = if i < E::QUEUES { VIRTIO_QUEUE_MAX } else { 0 };
    }
    mem.write_monitor_plain(Gpa(slot), &s)
}

/// Builds a live queue from the driver's registers, checking size and
/// alignment (virtio-queue) and that the rings lie in guest memory, the
/// used ring in guest-writable memory.
fn build(
    size: u16,
    (desc, avail, used): (u64, u64, u64),
    event_idx: bool,
    mem: &IoMem,
) -> Result<Queue, String> {
    if size == 0 || !size.is_power_of_two() || size > VIRTIO_QUEUE_MAX {
        return Err(format!(
            "queue size {size} is not a power of two from 1 to {VIRTIO_QUEUE_MAX}"
        ));
    }
    let mut q = Queue::new(VIRTIO_QUEUE_MAX).map_err(|e| e.to_string())?;
    q.try_set_size(size).map_err(|e| e.to_string())?;
    let misaligned = |what| format!("the {what} is misaligned");
    q.try_set_desc_table_address(vm_memory::GuestAddress(desc))
        .map_err(|_| misaligned("descriptor table"))?;
    q.try_set_avail_ring_address(vm_memory::GuestAddress(avail))
        .map_err(|_| misaligned("avail ring"))?;
    q.try_set_used_ring_address(vm_memory::GuestAddress(used))
        .map_err(|_| misaligned("used ring"))?;
    let n = u64::from(size);
    let outside =
        |what, at, len| format!("the {what} at {at:#x}+{len:#x} lies outside guest memory");
    mem.check(desc, 16 * n)
        .map_err(|_| outside("descriptor table", desc, 16 * n))?;
    mem.check(avail, 6 + 2 * n)
        .map_err(|_| outside("avail ring", avail, 6 + 2 * n))?;
    if !mem.writable().contains(used, 6 + 8 * n) {
        return Err(format!(
            "the used ring at {used:#x}+{:#x} is not in guest-writable memory",
            6 + 8 * n
        ));
    }
    q.set_event_idx(event_idx);
    q.set_ready(true);
    Ok(q)
}

fn from_regs(r: &VirtioQueueRegs, event_idx: bool, mem: &IoMem) -> Result<Queue, String> {
    if r.ready != 1 {
        return Err("a queue is not ready".into());
    }
    build(r.size, (r.desc, r.driver, r.device), event_idx, mem)
}

/// Rebuilds the queues of a restored device (checked like new ones: the
/// record comes from a file or the network).
pub fn restore_queues(
    st: &TransportState,
    queues: usize,
    mem: &IoMem,
) -> Result<Vec<Queue>, String> {
    if st.queues.is_empty() {
        return Ok(Vec::new());
    }
    if st.queues.len() != queues {
        return Err(format!(
            "{} queues saved, the device has {queues}",
            st.queues.len()
        ));
    }
    let event_idx = st.features & VIRTIO_RING_F_EVENT_IDX != 0;
    st.queues
        .iter()
        .map(|r| {
            let mut q = build(r.size, (r.desc, r.avail, r.used), event_idx, mem)?;
            q.set_next_avail(r.next_avail);
            q.set_next_used(r.next_used);
            Ok(q)
        })
        .collect()
}

/// The saved records of live queues.
pub fn save_queues(q: &[Queue]) -> Vec<QueueRecord> {
    q.iter()
        .map(|q| QueueRecord {
            size: q.size(),
            desc: q.desc_table(),
            avail: q.avail_ring(),
            used: q.used_ring(),
            next_avail: q.next_avail(),
            next_used: q.next_used(),
        })
        .collect()
}

/// What a status call did.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing for the I/O thread.
    None,
    /// Queues started: wake the thread.
    Started,
}

/// [`duet_abi::hypercall::Hypercall::VirtioStatus`] for the device whose
/// core is `c`: reads the slot, acts, writes back the accepted status.
/// `Err` means the slot itself is unreadable (the guest is stopped).
pub fn status_call<E: Engine>(
    c: &mut Core<E>,
    mem: &GuestMem,
    slot: u64,
) -> Result<Change, MemError> {
    let s: VirtioSlot = mem.read_plain(Gpa(slot))?;
    let name = c.engine.name();
    let mut change = Change::None;
    let known =
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK | STATUS_FAILED;
    if s.status == 0 {
        // Reset: the queues stop and their registers clear (as a virtio
        // reset does); the guest sets the device up again.
        c.queues.clear();
        c.features = 0;
        c.status = 0;
        let mut clean = s;
        for q in clean.queues.iter_mut() {
            *q = VirtioQueueRegs {
                max_size: q.max_size,
                ..Default::default()
            };
        }
        clean.driver_features = 0;
        mem.write_monitor_plain(Gpa(slot), &clean)?;
    } else if s.status & STATUS_FAILED != 0 {
        log::info!("{name}: the guest gave up on the device (FAILED)");
        c.queues.clear();
        c.status = s.status & known;
    } else {
        let mut st = s.status & known;
        if st & STATUS_FEATURES_OK != 0 && c.status & STATUS_FEATURES_OK == 0 {
            let offered = c.engine.features();
            let want = s.driver_features;
            if want & !offered != 0 || want & VIRTIO_F_VERSION_1 == 0 {
                log::warn!(
                    "{name}: the driver asked for features {want:#x}, the device offers {offered:#x} and needs VERSION_1; refused (FEATURES_OK cleared)"
                );
                st &= !(STATUS_FEATURES_OK | STATUS_DRIVER_OK);
            } else {
                c.features = want;
            }
        }
        if st & STATUS_FEATURES_OK == 0 {
            st &= !STATUS_DRIVER_OK;
        }
        if st & STATUS_DRIVER_OK != 0 && c.queues.is_empty() && c.status & STATUS_NEEDS_RESET == 0 {
            let io = c.mem.clone();
            let event_idx = c.features & VIRTIO_RING_F_EVENT_IDX != 0;
            let built: Result<Vec<Queue>, String> = match &io {
                None => Err("the device has no I/O thread".into()),
                Some(io) => s.queues[..E::QUEUES]
                    .iter()
                    .map(|r| from_regs(r, event_idx, io))
                    .collect(),
            };
            match built {
                Ok(q) => {
                    c.queues = q;
                    change = Change::Started;
                }
                Err(why) => {
                    log::warn!("{name}: {why}; the device stops until the guest resets it");
                    st |= STATUS_NEEDS_RESET;
                }
            }
        }
        c.status = st | (c.status & STATUS_NEEDS_RESET);
    }
    mem.write_monitor_plain(Gpa(slot + offset_of!(VirtioSlot, status) as u64), &c.status)?;
    Ok(change)
}
