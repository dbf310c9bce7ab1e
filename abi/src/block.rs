//! Block devices: the argument structs of the block hypercalls.
//!
//! A block device is an entry of kind [`crate::boot::DeviceKind::Block`] in
//! the boot info's device table; the guest names it by its index there.
//! Offsets and lengths are in bytes and must be multiples of the device's
//! sector size; a request must lie inside the device's capacity and be at
//! most [`BLK_IO_MAX`] bytes. Buffers may be anywhere in guest memory (a
//! read's buffer must be guest-writable).
//!
//! Errors ([`crate::hypercall::Error`], negated in `ret`):
//! `NoDev` (no such block device), `Inval` (misaligned offset or length,
//! non-zero reserved flags), `Unsupported` (unknown batch op), `TooBig` (length over [`BLK_IO_MAX`], batch over [`BLK_BATCH_MAX`]),
//! `Range` (outside the device, or `offset + len` overflows), `Fault` (the
//! buffer is not in guest memory, or a read's buffer is not writable),
//! `ReadOnly` (write to a read-only device), `Io` and `NoSpace` (the host
//! file failed).
//!
//! Writes reach the host file before the call returns but are durable only
//! after a flush ([`crate::hypercall::Hypercall::BlkFlush`] or a
//! [`BLK_OP_FLUSH`] entry) has returned success: the monitor's `fdatasync`
//! has then returned.

use crate::{plain, Gpa};

/// Largest single request (and batch entry) in bytes.
pub const BLK_IO_MAX: u64 = 1 << 20;
/// Most entries one [`crate::hypercall::Hypercall::BlkBatch`] call carries.
pub const BLK_BATCH_MAX: u32 = 64;

/// Batch op: read from the device into the buffer.
pub const BLK_OP_READ: u32 = 1;
/// Batch op: write the buffer to the device.
pub const BLK_OP_WRITE: u32 = 2;
/// Batch op: make every earlier write to the device durable (`offset`,
/// `buf` and `len` are ignored).
pub const BLK_OP_FLUSH: u32 = 3;

/// Args of [`crate::hypercall::Hypercall::BlkRead`] and
/// [`crate::hypercall::Hypercall::BlkWrite`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlkIoArgs {
    /// IN: device index in the boot info's device table.
    pub dev: u32,
    /// IN: reserved, zero.
    pub flags: u32,
    /// IN: byte offset on the device (a multiple of the sector size).
    pub offset: u64,
    /// IN: guest buffer (read: filled; write: sent).
    pub buf: Gpa,
    /// IN: length in bytes (a multiple of the sector size, at most [`BLK_IO_MAX`]).
    pub len: u64,
    /// OUT: bytes transferred (`len`), or a negated error.
    pub ret: i64,
}

/// Args of [`crate::hypercall::Hypercall::BlkFlush`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlkFlushArgs {
    /// IN: device index.
    pub dev: u32,
    /// IN: reserved, zero.
    pub flags: u32,
    /// OUT: 0 once the device's writes are durable, or a negated error.
    pub ret: i64,
}

/// One entry of a batch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlkReq {
    /// IN: `BLK_OP_*`.
    pub op: u32,
    /// IN: device index.
    pub dev: u32,
    /// IN: byte offset on the device.
    pub offset: u64,
    /// IN: guest buffer.
    pub buf: Gpa,
    /// IN: length in bytes.
    pub len: u64,
    /// OUT: bytes transferred (0 for a flush), or a negated error. Each
    /// entry succeeds or fails on its own.
    pub ret: i64,
}

/// Args of [`crate::hypercall::Hypercall::BlkBatch`].
///
/// The monitor runs the entries in order, each independently: a failed entry
/// does not stop later ones (submit dependent requests in separate batches).
/// Adjacent entries that continue each other on the same device are merged
/// into one vectored host call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlkBatchArgs {
    /// IN: array of `count` [`BlkReq`]s in guest-writable memory.
    pub reqs: Gpa,
    /// IN: number of entries (at most [`BLK_BATCH_MAX`]).
    pub count: u32,
    /// IN: reserved, zero.
    pub flags: u32,
    /// OUT: number of entries that succeeded, or a negated error when the
    /// list itself is unusable (then no entry ran).
    pub ret: i64,
}

plain!(
    BlkIoArgs = 40,
    BlkFlushArgs = 16,
    BlkReq = 40,
    BlkBatchArgs = 24,
);
