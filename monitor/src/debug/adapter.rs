//! The debugger's one binding to the VM type.
//!
//! Everything under `debug/` (and the core-dump and backtrace hooks) reaches
//! the VM only through [`DebugVm::debug_refs`], which hands out split
//! borrows of the few parts it needs. Porting the debugger to another VM
//! structure means implementing this trait for it, here, and nothing else.

use super::Debugger;
use crate::control::Control;
use crate::loader::Symbol;
use crate::memory::GuestMem;
use kvm_ioctls::VcpuFd;
use std::sync::Arc;

/// What the debugger works with, borrowed from the VM at once.
pub struct VmRefs<'a> {
    /// The (only) vCPU.
    pub vcpu: &'a VcpuFd,
    /// Guest memory (its page tables live in it).
    pub mem: &'a GuestMem,
    /// The image's function symbols, sorted (for backtraces).
    pub symbols: &'a [Symbol],
    /// The control block (the GDB thread sends its requests through it).
    pub ctl: &'a Arc<Control>,
    /// The run loop's pause flag: a stopped guest is a paused guest.
    pub paused: &'a mut bool,
    /// The debugger's own state, kept in the VM.
    pub debug: &'a mut Debugger,
}

/// A VM the debugger can work on.
pub trait DebugVm {
    /// Borrows the parts the debugger needs.
    fn debug_refs(&mut self) -> VmRefs<'_>;

    /// Finishes the `out` of the last exit without entering the guest
    /// (`KVM_RUN` with `immediate_exit`), so RIP moves past it.
    fn complete_io(&mut self) -> Result<(), String>;
}

impl DebugVm for crate::vm::Vm {
    fn complete_io(&mut self) -> Result<(), String> {
        crate::vm::Vm::complete_io(self)
    }

    fn debug_refs(&mut self) -> VmRefs<'_> {
        VmRefs {
            vcpu: &self.vcpu,
            mem: &self.mem,
            symbols: &self.image.symbols,
            ctl: &self.ctl,
            paused: &mut self.paused,
            debug: &mut self.debug,
        }
    }
}
