//! What a virtio device's I/O thread and the vCPU thread share: the
//! negotiated state and the queues (under one mutex, held for a batch of
//! requests at a time), the doorbell and call eventfds, and the pause
//! handshake that quiesces the thread before a capture.

use super::chain::QueueError;
use super::hints::{Hints, QueueView};
use crate::memory::{IoMem, Writable};
use duet_abi::virtio::{STATUS_NEEDS_RESET, VIRTIO_RING_F_EVENT_IDX};
use std::num::Wrapping;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// What a kind of virtio device does with its queues (block, net).
pub trait Engine: Send + 'static {
    /// The virtio device type.
    const DEVICE_ID: u32;
    /// How many queues it has.
    const QUEUES: usize;
    /// How long its I/O thread spins after work before sleeping, in µs
    /// (measured: `docs/benchmarks.md`).
    const SPIN_US: u64;
    /// Features the device offers.
    fn features(&self) -> u64;
    /// The configuration space.
    fn config(&self) -> [u8; duet_abi::virtio::VIRTIO_CONFIG_SIZE];
    /// Serves what waits on the queues. Returns whether any request was
    /// served; a broken queue stops the device.
    fn process(&mut self, q: &mut [Queue], mem: &IoMem, w: &Writable) -> Result<bool, QueueError>;
    /// An fd that brings the sleeping thread work of its own (a TAP with
    /// frames), when the queues can take it.
    fn wait_fd(&self, _q: &mut [Queue], _mem: &IoMem) -> Option<RawFd> {
        None
    }
    /// The device's own input fd (a TAP), whatever the queues hold.
    fn input(&self) -> Option<RawFd> {
        None
    }
    /// Whether queue `i`'s buffers wait for outside input (a receive
    /// queue): its available entries are not work by themselves.
    fn buffers_wait(&self, _i: usize) -> bool {
        false
    }
    /// A name for logs.
    fn name(&self) -> String;
}

/// The state the vCPU thread negotiates and the I/O thread serves.
pub struct Core<E> {
    /// The device model.
    pub engine: E,
    /// Active queues (after `DRIVER_OK`), empty otherwise.
    pub queues: Vec<Queue>,
    /// Accepted driver features.
    pub features: u64,
    /// The status the monitor accepted.
    pub status: u32,
    /// Guest memory, once attached.
    pub mem: Option<IoMem>,
    /// Where the slot is (the I/O thread sets `NEEDS_RESET` there).
    pub slot: u64,
}

impl<E: Engine> Core<E> {
    /// Whether the queues are live.
    pub fn active(&self) -> bool {
        !self.queues.is_empty() && self.status & STATUS_NEEDS_RESET == 0
    }

    /// Stops the device after a broken queue: logs it, and tells the guest
    /// through `NEEDS_RESET` in its slot.
    pub fn fail(&mut self, e: QueueError) {
        log::warn!(
            "{}: {e}; the device stops until the guest resets it",
            self.engine.name()
        );
        self.status |= STATUS_NEEDS_RESET;
        if let Some(mem) = &self.mem {
            let at = self.slot + std::mem::offset_of!(duet_abi::virtio::VirtioSlot, status) as u64;
            let _ = mem.write(at, &self.status.to_le_bytes());
        }
    }

    /// Asks the driver to ring on its next request; true when requests
    /// arrived meanwhile (the thread must not sleep then). A queue whose
    /// buffers wait for outside input ([`Engine::buffers_wait`]) needs no
    /// ring while it has buffers.
    pub fn arm(&mut self) -> bool {
        let Some(mem) = self.mem.clone() else {
            return false;
        };
        if !self.active() {
            return false;
        }
        let event_idx = self.features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut work = false;
        for (i, q) in self.queues.iter().enumerate() {
            let pending = |q: &Queue| {
                q.avail_idx(mem.inner(), Ordering::Acquire)
                    .is_ok_and(|a| a != Wrapping(q.next_avail()))
            };
            let waits = self.engine.buffers_wait(i);
            if waits && pending(q) {
                if event_idx {
                    set_avail_event(&mem, q, 0xfffe);
                }
                continue;
            }
            if event_idx {
                set_avail_event(&mem, q, q.next_avail());
            }
            std::sync::atomic::fence(Ordering::SeqCst);
            work |= pending(q) && !waits;
        }
        work
    }
}

/// Writes a queue's `avail_event` (the used ring's last field).
fn set_avail_event(mem: &IoMem, q: &Queue, v: u16) {
    let at = q.used_ring() + 4 + 8 * u64::from(q.size());
    let _ = mem.write(at, &v.to_le_bytes());
}

impl<E> Core<E> {
    /// Tells the driver not to ring while the thread is awake
    /// (`avail_event` far behind its index; one ring per 64 Ki requests at
    /// worst).
    pub fn suppress(&mut self) {
        if self.features & VIRTIO_RING_F_EVENT_IDX == 0 || self.queues.is_empty() {
            return;
        }
        let Some(mem) = &self.mem else { return };
        for q in &self.queues {
            set_avail_event(mem, q, 0xfffe);
        }
    }
}

/// The pause handshake's state.
#[derive(Default)]
struct PauseState {
    /// The vCPU thread wants the I/O thread still.
    want: bool,
    /// The I/O thread is still.
    still: bool,
}

/// Shared by the vCPU thread and the I/O thread.
pub struct Shared<E> {
    core: Mutex<Core<E>>,
    /// The queues, readable without the lock.
    pub hints: Hints,
    /// Driver → device: the doorbell (a KVM ioeventfd, or written by the
    /// run loop on a doorbell exit).
    pub kick: EventFd,
    /// Device → driver: written when a used buffer passes `used_event`;
    /// the poll hypercall waits on it.
    pub call: EventFd,
    /// Wakes the sleeping thread for a pause or a stop.
    pub ctl: EventFd,
    pause: Mutex<PauseState>,
    /// `pause.want`, for the spinning thread's cheap look.
    want: AtomicBool,
    paused: Condvar,
    /// The thread ends.
    pub stop: AtomicBool,
    /// Times the thread went to sleep (for `status` and the benchmarks).
    pub sleeps: AtomicU64,
    /// Requests served.
    pub served: AtomicU64,
}

impl<E: Engine> Shared<E> {
    /// A device's shared state around `core`.
    pub fn new(core: Core<E>) -> std::io::Result<Shared<E>> {
        Ok(Shared {
            core: Mutex::new(core),
            hints: Default::default(),
            kick: EventFd::new(EFD_NONBLOCK)?,
            call: EventFd::new(EFD_NONBLOCK)?,
            ctl: EventFd::new(EFD_NONBLOCK)?,
            pause: Mutex::new(PauseState::default()),
            want: AtomicBool::new(false),
            paused: Condvar::new(),
            stop: AtomicBool::new(false),
            sleeps: AtomicU64::new(0),
            served: AtomicU64::new(0),
        })
    }

    /// The core, locked.
    pub fn lock(&self) -> MutexGuard<'_, Core<E>> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The core, if nobody holds it now.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, Core<E>>> {
        match self.core.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Republishes the lock-free view of `c` (held by the caller).
    pub fn publish(&self, c: &Core<E>) {
        let live = c.active();
        let queues = c.queues.iter().enumerate().map(|(i, q)| {
            live.then(|| QueueView {
                avail: q.avail_ring(),
                used: q.used_ring(),
                next_avail: q.next_avail(),
                size: q.size(),
                waits: c.engine.buffers_wait(i),
            })
        });
        self.hints.publish(
            queues,
            c.features & VIRTIO_RING_F_EVENT_IDX != 0,
            c.status & STATUS_NEEDS_RESET != 0 && !c.queues.is_empty(),
            c.engine.input(),
        );
    }

    /// vCPU thread: stops the I/O thread between two batches and returns
    /// once it is still (`running` false: there is no thread).
    pub fn quiesce(&self, running: bool) {
        let mut p = self.pause.lock().unwrap_or_else(|e| e.into_inner());
        p.want = true;
        self.want.store(true, Ordering::SeqCst);
        if !running {
            return;
        }
        let _ = self.ctl.write(1);
        while !p.still {
            p = self.paused.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// vCPU thread: lets the I/O thread go on.
    pub fn resume(&self) {
        let mut p = self.pause.lock().unwrap_or_else(|e| e.into_inner());
        p.want = false;
        self.want.store(false, Ordering::SeqCst);
        self.paused.notify_all();
        drop(p);
        let _ = self.ctl.write(1);
    }

    /// I/O thread: if a pause is wanted, stays still until it ends.
    pub fn pause_point(&self) {
        let mut p = self.pause.lock().unwrap_or_else(|e| e.into_inner());
        if !p.want {
            return;
        }
        p.still = true;
        self.paused.notify_all();
        while p.want && !self.stop.load(Ordering::SeqCst) {
            p = self.paused.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        p.still = false;
    }

    /// Whether a pause is wanted (checked while spinning).
    pub fn pause_wanted(&self) -> bool {
        self.want.load(Ordering::Relaxed)
    }

    /// Ends the thread's wait for good.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _p = self.pause.lock().unwrap_or_else(|e| e.into_inner());
        self.paused.notify_all();
        let _ = self.ctl.write(1);
    }
}

/// Puts chain `head` in the used ring with `len` bytes written, and marks
/// the ring's changed bytes for a migration.
pub fn give_back(q: &mut Queue, mem: &IoMem, head: u16, len: u32) -> Result<(), QueueError> {
    let slot = u64::from(q.next_used() % q.size());
    q.add_used(mem.inner(), head, len)
        .map_err(|_| QueueError::Rings)?;
    mem.mark(q.used_ring() + 4 + 8 * slot, 8);
    mem.mark(q.used_ring() + 2, 2);
    Ok(())
}
