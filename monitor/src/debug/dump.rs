//! Core files of this guest: on a fault or panic (`--core`), and on request
//! (`duet ctl SOCKET core PATH`). The writing itself is [`coredump`]'s;
//! this picks the registers and puts GDB's breakpoint bytes back.

use super::{DebugVm, VmRefs};
use crate::control::Response;
use crate::coredump::{self, CoreRegs};
use crate::exception::Exception;
use kvm_bindings::kvm_regs;
use std::path::Path;

fn core_regs(r: &VmRefs, regs: kvm_regs, cs: u16, ss: u16, signal: u32) -> CoreRegs {
    let sregs = r.vcpu.get_sregs().unwrap_or_default();
    CoreRegs {
        regs,
        cs,
        ss,
        ds: sregs.ds.selector,
        fs_base: sregs.fs.base,
        gs_base: sregs.gs.base,
        fpu: r.vcpu.get_fpu().ok(),
        signal,
    }
}

fn write(r: &VmRefs, path: &Path, regs: &CoreRegs) -> Result<coredump::Written, String> {
    let bps = r.debug.session.as_ref().map(|s| &s.bps);
    let patch = |a: u64, page: &mut [u8]| {
        if let Some(b) = bps {
            b.unpatch(a, page)
        }
    };
    coredump::write(path, r.mem, regs, &patch)
        .map_err(|e| format!("cannot write core file {}: {e}", path.display()))
}

/// Writes the `--core` file, if asked for; returns the report's line.
fn on_death(r: &VmRefs, regs: &CoreRegs) -> Option<String> {
    let path = r.debug.core.as_deref()?;
    Some(match write(r, path, regs) {
        Ok(w) => format!("\n  core dumped to {} ({} bytes)", path.display(), w.bytes),
        Err(e) => format!("\n  {e}"),
    })
}

/// `--core`: the core file of a guest that took exception `e`, with the
/// interrupted context's registers. Returns a line for the report.
pub fn core_on_fault(vm: &mut impl DebugVm, e: &Exception) -> Option<String> {
    let r = vm.debug_refs();
    r.debug.core.as_ref()?;
    let signal = coredump::signal_for_vector(e.frame.vector);
    let regs = core_regs(&r, e.regs, e.frame.cs as u16, e.frame.ss as u16, signal);
    on_death(&r, &regs)
}

/// `--core`: the core file of a guest that panicked (the vCPU stands at its
/// abort hypercall). Returns a line for the report.
pub fn core_on_abort(vm: &mut impl DebugVm) -> Option<String> {
    let r = vm.debug_refs();
    r.debug.core.as_ref()?;
    let regs = r.vcpu.get_regs().ok()?;
    let s = r.vcpu.get_sregs().ok()?;
    let regs = core_regs(&r, regs, s.cs.selector, s.ss.selector, coredump::SIGABRT);
    on_death(&r, &regs)
}

/// `duet ctl SOCKET core PATH`: a core file of the live guest, which keeps
/// running (or stays paused).
pub fn dump(vm: &mut impl DebugVm, path: &Path) -> Response {
    let r = vm.debug_refs();
    let (regs, s) = match (r.vcpu.get_regs(), r.vcpu.get_sregs()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            return Response::err(format!("cannot read the vCPU's registers: {e}"))
        }
    };
    if s.cs.selector & 3 != 3 {
        return Response::err("the vCPU is inside an exception stub this instant; try again");
    }
    let regs = core_regs(&r, regs, s.cs.selector, s.ss.selector, 0);
    match write(&r, path, &regs) {
        Ok(w) => Response {
            core_bytes: Some(w.bytes),
            ..Response::ok()
        },
        Err(e) => Response::err(e),
    }
}
