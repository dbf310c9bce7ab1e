//! The vCPU run loop: `KVM_RUN`, then one decision per exit.
//!
//! The hot path is a hypercall: an `IoOut` exit on a hypercall port whose
//! 4-byte data is the argument address, read straight from the shared
//! `kvm_run` page (no extra ioctl). Anything else ends the VM with a report.

use crate::hypercall::{self, Flow};
use crate::report;
use crate::vm::Vm;
use duet_abi::hypercall::{PORT_BASE, PORT_COUNT};
use kvm_ioctls::VcpuExit;

/// How a guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest called exit with this status.
    Exited(u8),
    /// The guest aborted (panicked) with this message.
    Aborted(String),
    /// The guest took a CPU exception; the report says which and where.
    Faulted(String),
    /// The VM stopped for another reason (triple fault, bad port, ...).
    Failed(String),
}

impl Outcome {
    /// The monitor's exit status for this outcome.
    pub fn status(&self) -> u8 {
        match self {
            Outcome::Exited(s) => *s,
            Outcome::Aborted(_) => crate::status::GUEST_ABORT,
            Outcome::Faulted(_) => crate::status::GUEST_FAULT,
            Outcome::Failed(_) => crate::status::VM_FAILURE,
        }
    }
}

/// What a single exit turned into, with borrows of the vCPU released.
enum Exit {
    Hypercall(u16, u32),
    /// KVM_RUN was interrupted by a signal: just run again.
    Retry,
    Stop(Outcome),
}

impl Vm {
    /// Runs the guest until it ends.
    pub fn run(&mut self) -> Outcome {
        if let Some(t) = &mut self.trace {
            t.mark("enter guest");
        }
        loop {
            let exit = self.run_once();
            self.exits += 1;
            match exit {
                Exit::Hypercall(nr, value) => match hypercall::dispatch(self, nr, value) {
                    Flow::Continue => {}
                    Flow::Stop(o) => return o,
                },
                Exit::Retry => {}
                Exit::Stop(o) => return o,
            }
        }
    }

    fn run_once(&mut self) -> Exit {
        match self.vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                if !(PORT_BASE..PORT_BASE + PORT_COUNT).contains(&port) {
                    return Exit::Stop(Outcome::Failed(format!(
                        "guest wrote to I/O port {port:#x}, which is not a hypercall port; Duet emulates no devices"
                    )));
                }
                match <[u8; 4]>::try_from(data) {
                    Ok(b) => Exit::Hypercall(port - PORT_BASE, u32::from_le_bytes(b)),
                    Err(_) => Exit::Stop(Outcome::Failed(format!(
                        "guest made hypercall {} with a {}-byte `out`; hypercalls are 32-bit `out dx, eax`",
                        port - PORT_BASE,
                        data.len()
                    ))),
                }
            }
            Ok(VcpuExit::IoIn(port, _)) => Exit::Stop(Outcome::Failed(format!(
                "guest read from I/O port {port:#x}; Duet emulates no devices"
            ))),
            Ok(VcpuExit::MmioRead(addr, _)) | Ok(VcpuExit::MmioWrite(addr, _)) => Exit::Stop(Outcome::Failed(
                format!("guest touched address {addr:#x}, outside its memory (no MMIO devices are emulated)"),
            )),
            Ok(VcpuExit::Hlt) => Exit::Stop(Outcome::Failed(report::with_regs(
                self,
                "guest executed HLT; a Duet guest ends with the exit hypercall",
            ))),
            Ok(VcpuExit::Shutdown) => Exit::Stop(Outcome::Failed(report::with_regs(
                self,
                "guest triple-faulted (an exception could not be delivered: broken IDT/stack or a fault inside an exception stub)",
            ))),
            Ok(VcpuExit::InternalError) => Exit::Stop(Outcome::Failed(report::with_regs(
                self,
                "KVM internal error (the instruction emulator failed; ring-0 SSE is a known cause on nested hosts)",
            ))),
            Ok(VcpuExit::FailEntry(reason, _)) => Exit::Stop(Outcome::Failed(format!(
                "KVM refused to enter the guest (hardware entry failure reason {reason:#x}); the vCPU state is invalid"
            ))),
            Ok(other) => Exit::Stop(Outcome::Failed(format!("unexpected VM exit: {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Retry,
            Err(e) => Exit::Stop(Outcome::Failed(format!("KVM_RUN failed: {e}"))),
        }
    }
}
