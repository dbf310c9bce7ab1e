//! The run loop's hooks for a debugger.
//!
//! The debugger (`crate::debug`: GDB, core files) sits above the `Vmm`,
//! like snapshots: it reaches the guest through the `Vmm`'s methods. The
//! run loop still has to tell it about exceptions, hypercalls and the
//! guest's end, so the `Vmm` owns it as a [`DebugHooks`] object and calls
//! these methods; it knows nothing else about it. Without a debugger (no
//! `--gdb`, `--core` or `ctl gdb`) each hook costs the run loop one test
//! of an `Option`.

use super::Vmm;
use crate::cpu::exception::Exception;
use crate::outcome::Outcome;
use std::any::Any;

/// What a debugger attached to a guest is told by its run loop.
///
/// While a hook runs, the debugger is taken out of the `Vmm` (so it can
/// be handed `&mut Vmm`): [`Vmm::with_debugger`] inside a hook finds none.
pub trait DebugHooks: Send {
    /// The guest took CPU exception `e` (the vCPU is at the stub's exit).
    /// `true`: the debugger took it (the vCPU is back in the interrupted
    /// context and the guest stopped for the debugger, or runs on);
    /// `false`: the guest dies of it as without a debugger.
    fn on_exception(&mut self, vmm: &mut Vmm, e: &Exception) -> bool;

    /// A hypercall was handled and the guest goes on.
    fn after_hypercall(&mut self, vmm: &mut Vmm);

    /// `KVM_EXIT_DEBUG`: whether the debugger asked for it.
    fn on_debug_exit(&mut self, vmm: &mut Vmm) -> bool;

    /// The guest dies of exception `fault` (`None`: it panicked, and the
    /// vCPU stands at its abort hypercall). Returns a line for the report
    /// (a core file written).
    fn on_death(&mut self, vmm: &mut Vmm, fault: Option<&Exception>) -> Option<String>;

    /// The run loop ended with `outcome` (the debugger tells GDB).
    fn on_end(&mut self, vmm: &mut Vmm, outcome: &Outcome);

    /// Whether the debugger holds the guest stopped: a `resume` from the
    /// control socket would pull it from under GDB.
    fn holds(&self) -> bool;

    /// The debugger itself, for its own jobs.
    fn as_any(&mut self) -> &mut dyn Any;
}

impl Vmm {
    /// Attaches `d` as this guest's debugger (replacing any).
    pub fn set_debugger(&mut self, d: Box<dyn DebugHooks>) {
        self.debugger = Some(d);
    }

    /// Runs `f` with the debugger taken out of the `Vmm`, then puts it back;
    /// `None` when there is none.
    #[inline]
    pub fn with_debugger<R>(
        &mut self,
        f: impl FnOnce(&mut dyn DebugHooks, &mut Vmm) -> R,
    ) -> Option<R> {
        let mut d = self.debugger.take()?;
        let r = f(d.as_mut(), self);
        // `f` may have attached another one; that one wins.
        if self.debugger.is_none() {
            self.debugger = Some(d);
        }
        Some(r)
    }

    /// Whether a debugger holds the guest stopped.
    pub(super) fn debugger_holds(&self) -> bool {
        self.debugger.as_ref().is_some_and(|d| d.holds())
    }
}
