//! What the spinning I/O thread and the poll hypercall look at without the
//! device's lock: each live queue's ring addresses and the device's
//! position in it, republished under the lock whenever they change. A
//! thread preempted while it holds the lock (two busy threads on a loaded
//! host) then stalls nobody who only wanted to know whether there is work.

use crate::memory::IoMem;
use duet_abi::virtio::VIRTIO_MAX_QUEUES;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU16, AtomicU64, Ordering};

#[derive(Default)]
struct QueueHint {
    avail: AtomicU64,
    used: AtomicU64,
    /// 0: no live queue.
    size: AtomicU16,
    next_avail: AtomicU16,
    /// Its buffers wait for outside input (a receive queue).
    waits: AtomicBool,
}

/// A live queue as the hints publish it.
pub struct QueueView {
    /// Guest address of the avail ring.
    pub avail: u64,
    /// Guest address of the used ring.
    pub used: u64,
    /// The device's next avail index.
    pub next_avail: u16,
    /// Queue size (non-zero).
    pub size: u16,
    /// Its buffers wait for outside input (a receive queue).
    pub waits: bool,
}

/// The lock-free view of a device's queues.
#[derive(Default)]
pub struct Hints {
    q: [QueueHint; VIRTIO_MAX_QUEUES],
    event_idx: AtomicBool,
    failed: AtomicBool,
    /// The device's own input fd (a TAP), or -1.
    input: AtomicI32,
}

fn load16(mem: &IoMem, at: u64) -> Option<u16> {
    use vm_memory::Bytes;
    let mut b = [0u8; 2];
    mem.check(at, 2).ok()?;
    mem.inner()
        .read_slice(&mut b, vm_memory::GuestAddress(at))
        .ok()?;
    Some(u16::from_le_bytes(b))
}

impl Hints {
    /// Republishes the device's queues (`None`: not live), its features
    /// and state; called with the device's lock held, after any change.
    pub fn publish(
        &self,
        queues: impl Iterator<Item = Option<QueueView>>,
        event_idx: bool,
        failed: bool,
        input: Option<RawFd>,
    ) {
        let mut queues = queues.fuse();
        for h in &self.q {
            match queues.next().flatten() {
                Some(q) => {
                    h.avail.store(q.avail, Ordering::Relaxed);
                    h.used.store(q.used, Ordering::Relaxed);
                    h.next_avail.store(q.next_avail, Ordering::Relaxed);
                    h.waits.store(q.waits, Ordering::Relaxed);
                    h.size.store(q.size, Ordering::Release);
                }
                None => h.size.store(0, Ordering::Release),
            }
        }
        self.event_idx.store(event_idx, Ordering::Relaxed);
        self.failed.store(failed, Ordering::Release);
        self.input.store(input.unwrap_or(-1), Ordering::Relaxed);
    }

    /// Whether the device has work: a queue's avail index moved, or (for a
    /// receive queue with buffers) its input fd is readable.
    pub fn work(&self, mem: &IoMem) -> bool {
        let mut input_wanted = false;
        for h in &self.q {
            if h.size.load(Ordering::Acquire) == 0 {
                continue;
            }
            let Some(avail) = load16(mem, h.avail.load(Ordering::Relaxed) + 2) else {
                return true;
            };
            if avail != h.next_avail.load(Ordering::Relaxed) {
                if !h.waits.load(Ordering::Relaxed) {
                    return true;
                }
                input_wanted = true;
            }
        }
        input_wanted && readable(self.input.load(Ordering::Relaxed))
    }

    /// Whether the driver asked to hear of a used buffer that is there
    /// already (the used index passed its `used_event`), or the device
    /// failed: the poll hypercall's look before it sleeps.
    pub fn pending(&self, mem: &IoMem) -> bool {
        if self.failed.load(Ordering::Acquire) {
            return true;
        }
        if !self.event_idx.load(Ordering::Relaxed) {
            return false;
        }
        self.q.iter().any(|h| {
            let size = h.size.load(Ordering::Acquire);
            if size == 0 {
                return false;
            }
            let used = load16(mem, h.used.load(Ordering::Relaxed) + 2);
            let event = load16(mem, h.avail.load(Ordering::Relaxed) + 4 + 2 * u64::from(size));
            // As virtio's `vring_need_event`: the index moved past the event.
            matches!((used, event), (Some(u), Some(e)) if u.wrapping_sub(e).wrapping_sub(1) < 0x8000)
        })
    }
}

/// Whether `fd` has input now (no wait).
fn readable(fd: RawFd) -> bool {
    if fd < 0 {
        return false;
    }
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one initialised pollfd we own, no wait.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
}
