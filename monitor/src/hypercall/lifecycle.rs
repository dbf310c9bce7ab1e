//! Abort and boot tracing: the calls that end or describe a guest.

use crate::call::bad_args;
use crate::memory::GuestMem;
use crate::outcome::{Flow, Outcome};
use crate::trace::BootTrace;
use duet_abi::hypercall::{AbortArgs, BootTraceArgs, Hypercall, ABORT_MSG_MAX};
use duet_abi::Gpa;

/// [`Hypercall::Abort`]: the guest panicked.
pub fn abort(mem: &GuestMem, value: u32) -> Flow {
    let args: AbortArgs = match mem.read_plain(Gpa(u64::from(value))) {
        Ok(a) => a,
        Err(e) => return bad_args(Hypercall::Abort, value, e),
    };
    let mut buf = vec![0u8; args.len.min(ABORT_MSG_MAX) as usize];
    let msg = match mem.read_bytes(args.msg, &mut buf) {
        Ok(()) => String::from_utf8_lossy(&buf).into_owned(),
        Err(e) => format!("(abort message unreadable: {e})"),
    };
    Flow::Stop(Outcome::Aborted(msg))
}

/// [`Hypercall::BootTrace`]: guest-side boot timestamps.
pub fn boot_trace(mem: &GuestMem, trace: Option<&mut BootTrace>, value: u32) -> Flow {
    let args: BootTraceArgs = match mem.read_plain(Gpa(u64::from(value))) {
        Ok(a) => a,
        Err(e) => return bad_args(Hypercall::BootTrace, value, e),
    };
    if let Some(t) = trace {
        t.mark_guest("guest first instruction", args.entry_tsc);
        t.mark_guest("guest main", args.main_tsc);
    }
    Flow::Continue
}
