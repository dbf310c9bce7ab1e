//! Memory hypercalls: the monitor owns the page tables; the guest asks it to
//! grow the heap, give pages back to the host, or change their protection.
//!
//! The heap is [`crate::boot::BootInfo::heap_start`] ..
//! `heap_start + heap_size` at boot and grows at its end up to
//! `heap_start + heap_limit`. Every range must be page-aligned.
//!
//! Errors: `Inval` (misaligned, zero length, unknown protection bits),
//! `Fault` (range overflows or leaves guest memory), `Perm` (range is not
//! mapped heap: text, data, stack, boot info, clock page, monitor pages; or
//! a request for execute permission), `NoMem` (grow beyond the limit).

use crate::{plain, Gpa};

/// Protection: no access.
pub const PROT_NONE: u32 = 0;
/// Protection: read.
pub const PROT_READ: u32 = 1;
/// Protection: write (requires [`PROT_READ`]).
pub const PROT_WRITE: u32 = 2;
/// Protection: execute. Always refused: the heap is never executable.
pub const PROT_EXEC: u32 = 4;

/// Args of [`crate::hypercall::Hypercall::MemGrow`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MemGrowArgs {
    /// IN: bytes to add (rounded up to a page).
    pub len: u64,
    /// OUT: start of the new range (the old end of the heap).
    pub start: Gpa,
    /// OUT: bytes added; 0 with a negated error in `ret` otherwise.
    pub granted: u64,
    /// OUT: 0, or a negated error.
    pub ret: i64,
}

/// Args of [`crate::hypercall::Hypercall::MemRelease`] and
/// [`crate::hypercall::Hypercall::MemProtect`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MemRangeArgs {
    /// IN: first byte (page-aligned).
    pub addr: Gpa,
    /// IN: length in bytes (page-aligned, non-zero).
    pub len: u64,
    /// IN: `PROT_*` bits (protect only; zero for release).
    pub prot: u32,
    /// IN: reserved, zero.
    pub flags: u32,
    /// OUT: 0, or a negated error.
    pub ret: i64,
}

plain!(MemGrowArgs = 32, MemRangeArgs = 32);
