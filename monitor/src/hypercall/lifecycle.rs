//! Abort and boot tracing: the calls that end or describe a guest.

use super::{bad_args, Flow};
use crate::vcpu::Outcome;
use crate::vm::Vm;
use duet_abi::hypercall::{AbortArgs, BootTraceArgs, Hypercall, ABORT_MSG_MAX};
use duet_abi::Gpa;

/// [`Hypercall::Abort`]: the guest panicked.
pub fn abort(vm: &mut Vm, value: u32) -> Flow {
    let args: AbortArgs = match vm.mem.read_plain(Gpa(u64::from(value))) {
        Ok(a) => a,
        Err(e) => return bad_args(Hypercall::Abort, value, e),
    };
    let mut buf = vec![0u8; args.len.min(ABORT_MSG_MAX) as usize];
    let mut msg = match vm.mem.read_bytes(args.msg, &mut buf) {
        Ok(()) => String::from_utf8_lossy(&buf).into_owned(),
        Err(e) => format!("(abort message unreadable: {e})"),
    };
    // Where it panicked: the vCPU still stands at the abort call.
    if let Ok(r) = vm.vcpu.get_regs() {
        msg.push_str(&crate::report::backtrace(vm, r.rip, r.rbp));
    }
    msg.extend(crate::debug::core_on_abort(vm));
    Flow::Stop(Outcome::Aborted(msg))
}

/// [`Hypercall::BootTrace`]: guest-side boot timestamps.
pub fn boot_trace(vm: &mut Vm, value: u32) -> Flow {
    let args: BootTraceArgs = match vm.mem.read_plain(Gpa(u64::from(value))) {
        Ok(a) => a,
        Err(e) => return bad_args(Hypercall::BootTrace, value, e),
    };
    if let Some(t) = &mut vm.trace {
        t.mark_guest("guest first instruction", args.entry_tsc);
        t.mark_guest("guest main", args.main_tsc);
    }
    Flow::Continue
}
