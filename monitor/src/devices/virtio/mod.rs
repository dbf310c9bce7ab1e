//! The virtio transport for the guest's disks and NICs: the guest drives
//! them with virtio-drivers through split virtqueues in its own memory, and
//! an I/O thread per device serves the queues ([`worker`]) with
//! rust-vmm's virtio-queue, so a request costs no VM exit while both sides
//! are busy. The device models are the ones the hypercall transport uses
//! ([`crate::devices::block::BlockDevice`], [`crate::devices::net::NetDevice`]).
//!
//! * [`transport`]: the slot in the transport page and the `VirtioStatus`
//!   hypercall (vCPU thread);
//! * [`core`]: what the vCPU thread and the I/O thread share;
//! * [`chain`]: descriptor chains, checked;
//! * [`blk`], [`net`]: the engines;
//! * [`worker`]: the I/O thread (spin, sleep, doorbell) and its syscalls.
//!
//! The doorbell is a KVM ioeventfd on the device's port (no exit to user
//! space; the I/O thread wakes), unless `DUET_VIRTIO_DOORBELL=exit`: then
//! it is a port exit to the run loop, which serves the queues on the vCPU
//! thread at once and kicks the I/O thread. The benchmarks compare the two
//! in one run (`docs/benchmarks.md`).

pub mod blk;
pub mod chain;
pub mod core;
mod hints;
mod kinds;
pub mod net;
#[cfg(test)]
mod tests;
pub mod transport;
pub mod worker;

use self::core::{Core, Engine, Shared};
use crate::memory::{GuestMem, MemError};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use transport::{Change, TransportState};

/// The virtio side of a device, for the run loop and the hypercall.
pub trait VirtioPort {
    /// The guest rang the doorbell through a port exit.
    fn doorbell(&self);
    /// The `VirtioStatus` hypercall.
    fn status_call(&self, mem: &GuestMem) -> Result<(), MemError>;
}
use vmm_sys_util::eventfd::EventFd;

pub use kinds::{restore_block, restore_net, VirtioBlock, VirtioNet};
pub use transport::{slot_of, QueueRecord, TransportState as VirtioState};

/// How the guest's doorbell reaches the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Doorbell {
    /// A KVM ioeventfd: the `out` is completed in the kernel, no exit to
    /// the monitor; the I/O thread wakes (the default: measured faster).
    IoEventFd,
    /// A port exit to the run loop, which serves the queues on the vCPU
    /// thread and kicks the I/O thread.
    Exit,
}

impl Doorbell {
    /// The mode in force (`DUET_VIRTIO_DOORBELL=exit|ioeventfd`).
    pub fn from_env() -> Doorbell {
        match std::env::var("DUET_VIRTIO_DOORBELL").as_deref() {
            Ok("exit") => Doorbell::Exit,
            _ => Doorbell::IoEventFd,
        }
    }
}

/// What starting a device's I/O thread needs from the VM.
pub struct StartCtx<'a> {
    /// Guest memory.
    pub mem: &'a GuestMem,
    /// Registers `fd` as the ioeventfd of PIO port `port`.
    pub ioeventfd: &'a dyn Fn(u16, &EventFd) -> std::io::Result<()>,
}

/// Warnings about a hostile guest, without flooding the log: the first ten,
/// then one in a thousand.
#[derive(Default)]
pub struct LogLimit(u64);

impl LogLimit {
    /// Logs `msg()` if its turn has come.
    pub fn warn(&mut self, msg: impl FnOnce() -> String) {
        if self.0 < 10 || self.0 % 1000 == 0 {
            log::warn!("{} ({} so far)", msg(), self.0 + 1);
        }
        self.0 += 1;
    }
}

/// A virtio device: the shared core and its I/O thread.
pub struct VirtioDevice<E: Engine> {
    id: usize,
    shared: Arc<Shared<E>>,
    thread: Option<JoinHandle<()>>,
    /// Queue records of a restored device, rebuilt at [`VirtioDevice::start`].
    restored: Option<TransportState>,
    /// Guest memory, once started.
    mem: Option<crate::memory::IoMem>,
}

impl<E: Engine> VirtioDevice<E> {
    /// Device `id` around `engine`; its thread starts with
    /// [`VirtioDevice::start`]. `saved` is a restored device's transport.
    pub fn new(id: usize, engine: E, saved: Option<TransportState>) -> std::io::Result<Self> {
        let core = Core {
            engine,
            queues: Vec::new(),
            features: saved.as_ref().map_or(0, |s| s.features),
            status: saved.as_ref().map_or(0, |s| s.status),
            mem: None,
            slot: slot_of(id),
        };
        Ok(VirtioDevice {
            id,
            shared: Arc::new(Shared::new(core)?),
            thread: None,
            restored: saved,
            mem: None,
        })
    }

    /// The shared core (for the device's own `Device` impl).
    pub fn shared(&self) -> &Arc<Shared<E>> {
        &self.shared
    }

    /// Publishes the slot, rebuilds restored queues, wires the doorbell and
    /// starts the I/O thread.
    pub fn start(&mut self, ctx: &StartCtx<'_>) -> std::io::Result<()> {
        let io = ctx.mem.io_mem();
        {
            let mut c = self.shared.lock();
            c.mem = Some(io.clone());
            transport::publish(ctx.mem, c.slot, &c.engine).map_err(std::io::Error::other)?;
            if let Some(st) = self.restored.take() {
                match transport::restore_queues(&st, E::QUEUES, &io) {
                    Ok(q) => c.queues = q,
                    Err(why) => c.fail_restore(&why),
                }
            }
            self.shared.publish(&c);
        }
        self.mem = Some(io.clone());
        if Doorbell::from_env() == Doorbell::IoEventFd {
            (ctx.ioeventfd)(
                duet_abi::virtio::doorbell_port(self.id as u32),
                &self.shared.kick,
            )?;
        }
        let sh = self.shared.clone();
        let spin = worker::spin_budget(E::SPIN_US);
        let name = format!("duet-io{}", self.id);
        let io = io.clone();
        self.thread = Some(worker::spawn_io_thread(name, move || {
            worker::run(sh, io, spin)
        })?);
        Ok(())
    }

    /// The guest rang the doorbell through a port exit: the vCPU thread is
    /// here anyway, so it serves the queues itself (no wait for the I/O
    /// thread to be scheduled), then lets the I/O thread spin for what
    /// follows.
    pub fn doorbell(&self) {
        self.serve_here();
        let _ = self.shared.kick.write(1);
    }

    /// Serves the queues on the calling (vCPU) thread, unless the I/O
    /// thread is at it already or a capture holds the device still.
    fn serve_here(&self) {
        if self.thread.is_none() || self.shared.pause_wanted() {
            return;
        }
        if let Some(c) = self.shared.try_lock() {
            worker::serve(&self.shared, c);
        }
    }

    /// The `VirtioStatus` hypercall.
    pub fn status_call(&self, mem: &GuestMem) -> Result<(), MemError> {
        let mut c = self.shared.lock();
        let slot = c.slot;
        let change = transport::status_call(&mut c, mem, slot)?;
        self.shared.publish(&c);
        if change == Change::Started {
            drop(c);
            let _ = self.shared.ctl.write(1);
        }
        Ok(())
    }

    /// The transport's record (the thread must be quiesced).
    pub fn transport_state(&self) -> TransportState {
        let c = self.shared.lock();
        TransportState {
            features: c.features,
            status: c.status,
            queues: transport::save_queues(&c.queues),
        }
    }

    /// Stops the I/O thread between batches (before a capture).
    pub fn quiesce(&self) {
        self.shared.quiesce(self.thread.is_some());
    }

    /// Lets the I/O thread go on.
    pub fn resume(&self) {
        self.shared.resume();
    }

    /// The poll hypercall's look before sleeping: a used buffer the guest
    /// has not consumed waits already. Drains the call eventfd first, so a
    /// later write means a new buffer.
    pub fn ready_now(&self) -> bool {
        let _ = self.shared.call.read();
        let Some(mem) = &self.mem else {
            return false;
        };
        if self.shared.hints.work(mem) {
            self.serve_here();
        }
        self.shared.hints.pending(mem)
    }

    /// An fd whose input the poll hypercall may serve itself
    /// ([`VirtioDevice::ready_now`]): a TAP while the receive queue has
    /// buffers.
    pub fn input_fd(&self) -> Option<RawFd> {
        let mut c = self.shared.lock();
        if !c.active() {
            return None;
        }
        let self::core::Core {
            engine,
            queues,
            mem,
            ..
        } = &mut *c;
        engine.wait_fd(queues, mem.as_ref()?)
    }

    /// The fd the poll hypercall sleeps on.
    pub fn call_fd(&self) -> RawFd {
        self.shared.call.as_raw_fd()
    }

    /// A status line's virtio part.
    pub fn describe_transport(&self) -> String {
        let c = self.shared.lock();
        let state = if c.active() {
            "live"
        } else if c.status & duet_abi::virtio::STATUS_NEEDS_RESET != 0 {
            "needs reset"
        } else {
            "not started"
        };
        let held = if self.shared.pause_wanted() {
            ", held for a capture"
        } else {
            ""
        };
        format!(
            "virtio {state}{held}, {} batches, {} sleeps",
            self.shared
                .served
                .load(std::sync::atomic::Ordering::Relaxed),
            self.shared
                .sleeps
                .load(std::sync::atomic::Ordering::Relaxed)
        )
    }
}

impl<E: Engine> Core<E> {
    fn fail_restore(&mut self, why: &str) {
        log::warn!(
            "{}: the saved queues are unusable ({why}); the device stops until the guest resets it",
            self.engine.name()
        );
        self.status |= duet_abi::virtio::STATUS_NEEDS_RESET;
        if let Some(mem) = &self.mem {
            let at = self.slot + std::mem::offset_of!(duet_abi::virtio::VirtioSlot, status) as u64;
            let _ = mem.write(at, &self.status.to_le_bytes());
        }
    }
}

impl<E: Engine> Drop for VirtioDevice<E> {
    fn drop(&mut self) {
        self.shared.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
