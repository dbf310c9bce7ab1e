//! The skeleton every hypercall handler shares: the argument struct is
//! checked (whole, guest-writable: its `ret` comes back in it) before the
//! call does anything, read once, handed to the handler, and written back
//! with `ret` set. A struct that cannot be read or written stops the guest
//! with a report; everything else becomes an error code.

use crate::memory::{GuestMem, MemError};
use crate::outcome::{Flow, Outcome};
use duet_abi::block::{BlkBatchArgs, BlkFlushArgs, BlkIoArgs};
use duet_abi::hypercall::{
    ConsoleWriteArgs, Error, Hypercall, NetBatchArgs, NetFrameArgs, SnapshotPointArgs,
};
use duet_abi::mem::{MemGrowArgs, MemRangeArgs};
use duet_abi::poll::PollArgs;
use duet_abi::{Gpa, Plain};

/// An ABI argument struct with a `ret` field.
pub trait Args: Plain {
    /// Sets `ret`.
    fn set_ret(&mut self, ret: i64);
}

macro_rules! args {
    ($($t:ty),* $(,)?) => {
        $(impl Args for $t {
            #[inline]
            fn set_ret(&mut self, ret: i64) {
                self.ret = ret;
            }
        })*
    };
}

args!(
    ConsoleWriteArgs,
    SnapshotPointArgs,
    NetFrameArgs,
    NetBatchArgs,
    MemGrowArgs,
    MemRangeArgs,
    PollArgs,
    BlkIoArgs,
    BlkFlushArgs,
    BlkBatchArgs,
);

/// `ret` for a result: the count, or the negated error.
#[inline]
pub fn ret(r: Result<u64, Error>) -> i64 {
    match r {
        Ok(n) => n as i64,
        Err(e) => e.to_ret(),
    }
}

/// Stops the guest because its argument struct at `gpa` is unusable.
pub fn bad_args(call: Hypercall, gpa: u32, err: MemError) -> Flow {
    Flow::Stop(Outcome::Failed(format!(
        "guest passed an unusable argument struct to hypercall {call:?} at {gpa:#x}: {err}"
    )))
}

/// Reads the argument struct `A` at `value`, which must be guest-writable
/// as a whole (its `ret` comes back in it) before the call does anything.
/// `Err` is the flow that stops the guest.
#[inline]
pub fn take<A: Args>(mem: &GuestMem, call: Hypercall, value: u32) -> Result<A, Flow> {
    let at = Gpa(u64::from(value));
    mem.check_writable(at, std::mem::size_of::<A>() as u64)
        .and_then(|()| mem.read_plain(at))
        .map_err(|e| bad_args(call, value, e))
}

/// Writes `a` back with `ret` set from `r`.
#[inline]
pub fn reply<A: Args>(
    mem: &GuestMem,
    call: Hypercall,
    value: u32,
    mut a: A,
    r: Result<u64, Error>,
) -> Flow {
    a.set_ret(ret(r));
    match mem.write_plain(Gpa(u64::from(value)), &a) {
        Ok(()) => Flow::Continue,
        Err(e) => bad_args(call, value, e),
    }
}

/// [`take`], then `f`, then [`reply`]; `f` may also stop the guest.
#[inline]
pub fn handle_or_stop<A: Args>(
    mem: &GuestMem,
    call: Hypercall,
    value: u32,
    f: impl FnOnce(&mut A) -> Result<Result<u64, Error>, Outcome>,
) -> Flow {
    let mut a: A = match take(mem, call, value) {
        Ok(a) => a,
        Err(flow) => return flow,
    };
    match f(&mut a) {
        Ok(r) => reply(mem, call, value, a, r),
        Err(o) => Flow::Stop(o),
    }
}

/// [`handle_or_stop`] for a handler that never stops the guest.
#[inline]
pub fn handle<A: Args>(
    mem: &GuestMem,
    call: Hypercall,
    value: u32,
    f: impl FnOnce(&mut A) -> Result<u64, Error>,
) -> Flow {
    handle_or_stop(mem, call, value, |a| Ok(f(a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_side_effect_when_the_answer_cannot_be_written() {
        let mut mem = GuestMem::new(4 << 20).unwrap();
        mem.set_writable(vec![(0x10000, 0x11000)]);
        // Readable but not writable: the handler must not run.
        let mut ran = false;
        let f = handle::<ConsoleWriteArgs>(&mem, Hypercall::ConsoleWrite, 0x2000, |_| {
            ran = true;
            Ok(0)
        });
        assert!(matches!(f, Flow::Stop(Outcome::Failed(_))));
        assert!(!ran);
        // Straddling the end of the writable range: refused too.
        let f = handle::<ConsoleWriteArgs>(&mem, Hypercall::ConsoleWrite, 0x10ff8, |_| {
            ran = true;
            Ok(0)
        });
        assert!(matches!(f, Flow::Stop(_)) && !ran);
        // A good struct gets `ret` back.
        let f = handle::<ConsoleWriteArgs>(&mem, Hypercall::ConsoleWrite, 0x10000, |_| {
            Err(Error::TooBig)
        });
        assert!(matches!(f, Flow::Continue));
        let back: ConsoleWriteArgs = mem.read_plain(Gpa(0x10000)).unwrap();
        assert_eq!(back.ret, Error::TooBig.to_ret());
    }
}
