//! The debugger's one binding to the guest.
//!
//! Everything under `debug/` reaches the guest through [`DebugVm`], which
//! the [`Vmm`] implements here with its public methods: the first vCPU,
//! guest memory, the control block, the pause state and the end. Porting
//! the debugger to another guest structure means implementing this trait
//! for it, here, and the `Vmm`'s run-loop hooks
//! ([`crate::vmm::DebugHooks`]).

use crate::memory::GuestMem;
use crate::outcome::Outcome;
use crate::vmm::{Control, Vmm};
use kvm_ioctls::VcpuFd;
use std::sync::Arc;

/// A guest the debugger can work on.
pub trait DebugVm {
    /// The (only) vCPU.
    fn vcpu(&self) -> &VcpuFd;

    /// Guest memory (its page tables live in it).
    fn mem(&self) -> &GuestMem;

    /// The control block (the GDB thread sends its jobs through it).
    fn control(&self) -> &Arc<Control>;

    /// Whether the guest is paused (a stopped guest is a paused guest).
    fn paused(&self) -> bool;

    /// Stops running the guest.
    fn pause(&mut self);

    /// Runs the guest again (refused while a migration holds it).
    fn resume(&mut self) -> Result<(), String>;

    /// Finishes the `out` of the last exit without entering the guest
    /// (`KVM_RUN` with `immediate_exit`), so RIP moves past it.
    fn complete_io(&mut self) -> Result<(), String>;

    /// Ends the guest with `outcome` once the current job is done.
    fn end(&mut self, outcome: Outcome);

    /// Whether a migration is in progress.
    fn migrating(&self) -> bool;
}

impl DebugVm for Vmm {
    fn vcpu(&self) -> &VcpuFd {
        Vmm::vcpu(self)
    }

    fn mem(&self) -> &GuestMem {
        self.vm().mem()
    }

    fn control(&self) -> &Arc<Control> {
        Vmm::control(self)
    }

    fn paused(&self) -> bool {
        Vmm::paused(self)
    }

    fn pause(&mut self) {
        Vmm::pause(self)
    }

    fn resume(&mut self) -> Result<(), String> {
        Vmm::resume(self).map_err(String::from)
    }

    fn complete_io(&mut self) -> Result<(), String> {
        self.vcpu_mut().complete_io()
    }

    fn end(&mut self, outcome: Outcome) {
        Vmm::end(self, outcome)
    }

    fn migrating(&self) -> bool {
        Vmm::migrating(self)
    }
}
