//! Core files of this guest: on a fault or panic (`--core`), and on request
//! (`duet ctl SOCKET core PATH`). The writing itself is [`coredump`]'s;
//! this picks the registers and puts GDB's breakpoint bytes back.

use super::{DebugVm, Debugger};
use crate::coredump::{self, CoreRegs};
use crate::cpu::exception::Exception;
use crate::vmm::Vmm;
use kvm_bindings::kvm_regs;
use std::path::Path;

fn core_regs(vm: &impl DebugVm, regs: kvm_regs, cs: u16, ss: u16, signal: u32) -> CoreRegs {
    let sregs = vm.vcpu().get_sregs().unwrap_or_default();
    CoreRegs {
        regs,
        cs,
        ss,
        ds: sregs.ds.selector,
        fs_base: sregs.fs.base,
        gs_base: sregs.gs.base,
        fpu: vm.vcpu().get_fpu().ok(),
        signal,
    }
}

/// Writes a core file of `vm` to `path`, GDB's breakpoint bytes (`d`'s
/// session's) put back.
fn write(
    d: Option<&Debugger>,
    vm: &impl DebugVm,
    path: &Path,
    regs: &CoreRegs,
) -> Result<coredump::Written, String> {
    let bps = d.and_then(|d| d.session.as_ref()).map(|s| &s.bps);
    let patch = |a: u64, page: &mut [u8]| {
        if let Some(b) = bps {
            b.unpatch(a, page)
        }
    };
    coredump::write(path, vm.mem(), regs, &patch).map_err(|e| {
        let hint = crate::access::denied_hint(&e, crate::access::WRITABLE);
        format!("cannot write core file {}: {e}{hint}", path.display())
    })
}

/// `--core`: the core file of a guest that dies of exception `fault`, with
/// the interrupted context's registers, or that panicked (`None`: the vCPU
/// stands at its abort hypercall). Returns a line for the report.
pub(super) fn on_death(
    d: &mut Debugger,
    vm: &mut impl DebugVm,
    fault: Option<&Exception>,
) -> Option<String> {
    let path = d.core.as_deref()?;
    let regs = match fault {
        Some(e) => {
            let signal = coredump::signal_for_vector(e.frame.vector);
            core_regs(vm, e.regs, e.frame.cs as u16, e.frame.ss as u16, signal)
        }
        None => {
            let regs = vm.vcpu().get_regs().ok()?;
            let s = vm.vcpu().get_sregs().ok()?;
            core_regs(vm, regs, s.cs.selector, s.ss.selector, coredump::SIGABRT)
        }
    };
    Some(match write(Some(d), vm, path, &regs) {
        Ok(w) => format!("\n  core dumped to {} ({} bytes)", path.display(), w.bytes),
        Err(e) => format!("\n  {e}"),
    })
}

/// `duet ctl SOCKET core PATH`: a core file of the live guest, which keeps
/// running (or stays paused). Returns the file's size.
pub fn dump(vmm: &mut Vmm, path: &Path) -> Result<u64, String> {
    super::with(vmm, |d, v| live(Some(d), v, path)).unwrap_or_else(|| live(None, vmm, path))
}

fn live(d: Option<&Debugger>, vm: &impl DebugVm, path: &Path) -> Result<u64, String> {
    let (regs, s) = match (vm.vcpu().get_regs(), vm.vcpu().get_sregs()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return Err(format!("cannot read the vCPU's registers: {e}")),
    };
    if s.cs.selector & 3 != 3 {
        return Err("the vCPU is inside an exception stub this instant; try again".into());
    }
    let regs = core_regs(vm, regs, s.cs.selector, s.ss.selector, 0);
    write(d, vm, path, &regs).map(|w| w.bytes)
}
