//! Hypercall dispatch: one match from number to handler.
//!
//! Each handler reads its argument struct through the bounds-checked
//! guest-memory accessors, does its work, and writes `ret` back. A guest
//! that passes garbage gets an error code; a guest whose arguments cannot
//! even be read (or whose `ret` cannot be written) is stopped with a report.

mod blk;
mod console;
mod lifecycle;
mod mem;
mod net;
mod poll;
mod snapshot;

use crate::vcpu::Outcome;
use crate::vm::Vm;
use duet_abi::hypercall::Hypercall;

/// What the run loop does after a hypercall.
pub enum Flow {
    /// Resume the guest.
    Continue,
    /// End the VM.
    Stop(Outcome),
}

/// Handles hypercall number `nr` with `eax` = `value`.
#[inline]
pub fn dispatch(vm: &mut Vm, nr: u16, value: u32) -> Flow {
    let Some(call) = Hypercall::from_number(nr) else {
        return Flow::Stop(Outcome::Failed(format!(
            "guest made unknown hypercall {nr} (port {:#x}); it was built for a different Duet ABI or is corrupt",
            duet_abi::hypercall::PORT_BASE + nr
        )));
    };
    match call {
        Hypercall::Nop => Flow::Continue,
        Hypercall::ConsoleWrite => console::write(vm, value),
        Hypercall::Exit => Flow::Stop(Outcome::Exited((value & 0xff) as u8)),
        Hypercall::Abort => lifecycle::abort(vm, value),
        Hypercall::BootTrace => lifecycle::boot_trace(vm, value),
        Hypercall::Poll => poll::poll(vm, value),
        Hypercall::MemGrow => mem::grow(vm, value),
        Hypercall::MemRelease => mem::release(vm, value),
        Hypercall::MemProtect => mem::protect(vm, value),
        Hypercall::BlkRead => blk::io(vm, value, false),
        Hypercall::BlkWrite => blk::io(vm, value, true),
        Hypercall::BlkFlush => blk::flush(vm, value),
        Hypercall::BlkBatch => blk::batch(vm, value),
        Hypercall::NetSend => net::send(vm, value),
        Hypercall::NetRecv => net::recv(vm, value),
        Hypercall::NetSendBatch => net::send_batch(vm, value),
        Hypercall::NetRecvBatch => net::recv_batch(vm, value),
        Hypercall::SnapshotPoint => snapshot::snapshot_point(vm, value),
    }
}

/// Stops the guest because its argument struct at `gpa` is unusable.
pub(crate) fn bad_args(call: Hypercall, gpa: u32, err: crate::memory::MemError) -> Flow {
    Flow::Stop(Outcome::Failed(format!(
        "guest passed an unusable argument struct to hypercall {call:?} at {gpa:#x}: {err}"
    )))
}
