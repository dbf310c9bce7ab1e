//! Asking the monitor for memory: grow the heap, give pages back, change
//! protections. The global allocator grows the heap by itself; these are for
//! applications that manage memory directly (guard pages, large buffers).

use crate::hypercall::{call, result};
use duet_abi::hypercall::{Error, Hypercall};
use duet_abi::mem::{MemGrowArgs, MemRangeArgs};
pub use duet_abi::mem::{PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE};
use duet_abi::Gpa;

/// Maps `len` more bytes at the end of the heap; returns `(start, len)` of
/// the new range. The allocator does not know about it: it is the caller's.
pub fn grow(len: u64) -> Result<(u64, u64), Error> {
    let mut a = MemGrowArgs {
        len,
        start: Gpa(0),
        granted: 0,
        ret: 0,
    };
    call(Hypercall::MemGrow, &mut a);
    result(a.ret).map(|_| (a.start.0, a.granted))
}

/// Gives page-aligned heap memory back to the host; it reads as zero after.
pub fn release(addr: u64, len: u64) -> Result<(), Error> {
    let mut a = MemRangeArgs {
        addr: Gpa(addr),
        len,
        prot: 0,
        flags: 0,
        ret: 0,
    };
    call(Hypercall::MemRelease, &mut a);
    result(a.ret).map(|_| ())
}

/// Changes the protection of page-aligned heap memory (`PROT_*` bits).
pub fn protect(addr: u64, len: u64, prot: u32) -> Result<(), Error> {
    let mut a = MemRangeArgs {
        addr: Gpa(addr),
        len,
        prot,
        flags: 0,
        ret: 0,
    };
    call(Hypercall::MemProtect, &mut a);
    result(a.ret).map(|_| ())
}
