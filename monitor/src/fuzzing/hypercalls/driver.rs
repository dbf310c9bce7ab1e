//! Virtio driver steps for the hypercall target: what the guest's driver
//! does (reset, feature negotiation, a queue's registers, `DRIVER_OK`;
//! descriptors and avail entries, then the doorbell), with fuzzer-chosen
//! values. Random words alone almost never bring a queue up, so the
//! descriptor checks behind it would go untested.

use super::gen::{Addr, Len};
use super::{Guest, LAYOUT, VIRTIO_DEV};
use crate::devices::virtio::slot_of;
use crate::outcome::Flow;
use arbitrary::Arbitrary;
use duet_abi::hypercall::Hypercall;
use duet_abi::virtio::{
    VirtioSlot, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use duet_abi::{Gpa, Plain};

/// Bringing queue 0 up.
#[derive(Arbitrary, Clone, Debug)]
pub struct Setup {
    /// Driver features (`None`: what a driver takes of the offer).
    pub features: Option<u64>,
    /// Queue size: `1 << (n % 9)`, or any.
    pub size: Result<u8, u16>,
    /// Descriptor table, avail ring, used ring (aligned unless `raw`).
    pub rings: (Addr, Addr, Addr),
    /// Leave the addresses as they are.
    pub raw: bool,
    /// `ready` (`None`: 1).
    pub ready: Option<u32>,
}

/// One descriptor.
#[derive(Arbitrary, Clone, Debug)]
pub struct Desc {
    /// Buffer.
    pub addr: Addr,
    /// Length.
    pub len: Len,
    /// Flags (NEXT 1, WRITE 2, INDIRECT 4).
    pub flags: u8,
    /// Next.
    pub next: u16,
}

/// Requests put on the live queue, then the doorbell.
#[derive(Arbitrary, Clone, Debug)]
pub struct Kick {
    /// Descriptors from slot 0 on (an offset into the table first).
    pub descs: Vec<Desc>,
    /// Where the descriptors start.
    pub first: u8,
    /// Request headers (type, sector) written at descriptor buffers.
    pub headers: Vec<(Addr, u32, u64)>,
    /// Avail entries (head indices).
    pub heads: Vec<u16>,
    /// The avail index moves by this much beyond the entries (hostile).
    pub skew: u16,
}

fn slot(g: &Guest) -> VirtioSlot {
    g.mem()
        .read_plain(Gpa(slot_of(VIRTIO_DEV as usize)))
        .expect("the slot is in guest memory")
}

fn put<T: Plain>(g: &Guest, at: u64, v: &T) {
    // SAFETY: `T: Plain` has no padding bytes.
    let b = unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) };
    g.guest_write(at, b);
}

fn status(g: &mut Guest, status: u32) -> Flow {
    let mut s = slot(g);
    s.status = status;
    put(g, slot_of(VIRTIO_DEV as usize), &s);
    g.hypercall(Hypercall::VirtioStatus as u16, VIRTIO_DEV)
}

/// The driver's set-up of queue 0.
pub fn setup(g: &mut Guest, v: &Setup) -> Flow {
    if let f @ Flow::Stop(_) = status(g, 0) {
        return f;
    }
    let mut s = slot(g);
    let take = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC;
    s.driver_features = v.features.unwrap_or(s.device_features & take);
    put(g, slot_of(VIRTIO_DEV as usize), &s);
    let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    if let f @ Flow::Stop(_) = status(g, ok) {
        return f;
    }
    let mut s = slot(g);
    let (d, a, u) = v.rings;
    let l = &LAYOUT;
    let (d, a, u) = (d.at(l), a.at(l), u.at(l));
    let q = &mut s.queues[0];
    q.size = match v.size {
        Ok(n) => 1 << (n % 9),
        Err(n) => n,
    };
    (q.desc, q.driver, q.device) = if v.raw {
        (d, a, u)
    } else {
        (d & !15, a & !1, u & !3)
    };
    q.ready = v.ready.unwrap_or(1);
    put(g, slot_of(VIRTIO_DEV as usize), &s);
    status(g, ok | STATUS_DRIVER_OK)
}

/// Descriptors and avail entries on queue 0 as the slot has it, then the
/// doorbell.
pub fn kick(g: &mut Guest, k: &Kick) -> Flow {
    let q = slot(g).queues[0];
    let size = u64::from(q.size.max(1));
    let l = &LAYOUT;
    for &(at, kind, sector) in k.headers.iter().take(8) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        g.guest_write(at.at(l), &h);
    }
    for (i, d) in k.descs.iter().take(64).enumerate() {
        let idx = (u64::from(k.first) + i as u64) % size;
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&d.addr.at(l).to_le_bytes());
        b[8..12].copy_from_slice(&(d.len.get() as u32).to_le_bytes());
        b[12..14].copy_from_slice(&u16::from(d.flags & 7).to_le_bytes());
        b[14..].copy_from_slice(&d.next.to_le_bytes());
        g.guest_write(q.desc.wrapping_add(16 * idx), &b);
    }
    let avail = q.driver;
    let mut idx = [0u8; 2];
    let _ = g.mem().read_bytes(Gpa(avail.wrapping_add(2)), &mut idx);
    let mut idx = u16::from_le_bytes(idx);
    for h in k.heads.iter().take(64) {
        let at = avail.wrapping_add(4 + 2 * (u64::from(idx) % size));
        g.guest_write(at, &h.to_le_bytes());
        idx = idx.wrapping_add(1);
    }
    // Mostly a few entries more than written; with the top bit, anything.
    let skew = if k.skew & 0x8000 != 0 {
        k.skew
    } else {
        k.skew % 4
    };
    idx = idx.wrapping_add(skew);
    g.guest_write(avail.wrapping_add(2), &idx.to_le_bytes());
    g.hypercall(duet_abi::virtio::DOORBELL_BASE + VIRTIO_DEV as u16, 0)
}
