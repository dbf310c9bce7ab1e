//! Hypercalls: numbers, argument structs and error codes.
//!
//! # Calling convention
//! The guest executes one `out dx, eax` with `dx = PORT_BASE + number` and
//! `eax` = the 32-bit guest-physical address of the call's argument struct
//! (or the immediate value the call documents). The monitor reads `eax` from
//! the `kvm_run` I/O data, so a hypercall costs exactly one exit and no extra
//! ioctl. Results come back in the struct's `ret` field: `>= 0` is success,
//! `< 0` is `-(Error as i64)`.
//!
//! Argument structs must therefore live below 4 GiB (the stack and image
//! always do); buffers they point to may live anywhere in guest memory.
//! Never use `vmcall`/`vmmcall`: they livelock KVM on nested PVM hosts.
//!
//! Number ranges: 1..16 core, 16..24 block, 24..32 network, 32..40
//! snapshot/identity, 40..48 virtio, 48..64 virtio doorbells (one port per
//! device, see [`crate::virtio::doorbell_port`]). Number 0 is reserved and always invalid; number 4
//! is retired (ABI version 1's fault report) and stays unused.

use crate::{plain, Gpa};

/// First hypercall port; hypercall `n` is port `PORT_BASE + n`.
pub const PORT_BASE: u16 = 0x500;
/// Number of hypercall ports (the TSS I/O bitmap opens exactly these).
pub const PORT_COUNT: u16 = 64;

/// Hypercall numbers.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypercall {
    /// Ends the guest. `eax` = exit status (0..=255). Does not return.
    Exit = 1,
    /// Writes bytes to the console. Args: [`ConsoleWriteArgs`].
    ConsoleWrite = 2,
    /// Reports a fatal error (panic) and ends the guest. Args: [`AbortArgs`].
    /// Does not return.
    Abort = 3,
    // 4 is reserved: ABI version 1's `Fault`, through which the image's own
    // ring-0 exception stubs reported. The monitor owns those stubs now and
    // learns of exceptions without a hypercall; do not reuse the number.
    /// Does nothing and returns at once (`eax` ignored): measures the cost
    /// of a hypercall.
    Nop = 5,
    /// Reports guest-side boot timestamps when [`crate::boot::BOOT_FLAG_TRACE`]
    /// is set. Args: [`BootTraceArgs`].
    BootTrace = 6,
    /// Blocks until a deadline or device readiness. Args: [`crate::poll::PollArgs`].
    Poll = 7,
    /// Grows the heap. Args: [`crate::mem::MemGrowArgs`].
    MemGrow = 8,
    /// Gives heap pages back to the host (they read as zero afterwards).
    /// Args: [`crate::mem::MemRangeArgs`].
    MemRelease = 9,
    /// Changes the protection of heap pages. Args: [`crate::mem::MemRangeArgs`].
    MemProtect = 10,
    /// Reads from a block device. Args: [`crate::block::BlkIoArgs`].
    BlkRead = 16,
    /// Writes to a block device. Args: [`crate::block::BlkIoArgs`].
    BlkWrite = 17,
    /// Makes a block device's writes durable. Args: [`crate::block::BlkFlushArgs`].
    BlkFlush = 18,
    /// Runs a list of block requests in one exit. Args: [`crate::block::BlkBatchArgs`].
    BlkBatch = 19,
    /// Sends one Ethernet frame on a network device. Args: [`NetFrameArgs`]
    /// (`len` = frame length). `ret` = bytes sent.
    NetSend = 24,
    /// Receives one Ethernet frame without blocking. Args: [`NetFrameArgs`]
    /// (`len` = buffer capacity). `ret` = frame length, or
    /// [`Error::Again`] when no frame is waiting.
    NetRecv = 25,
    /// Sends up to [`NET_BATCH_MAX`] frames in one exit. Args:
    /// [`NetBatchArgs`]; each [`NetFrameDesc::len`] is IN (frame length).
    /// `ret` = frames sent (stops at the first failing frame, whose error is
    /// returned when it is the first).
    NetSendBatch = 26,
    /// Receives up to [`NET_BATCH_MAX`] frames in one exit without blocking.
    /// Args: [`NetBatchArgs`]; each [`NetFrameDesc::len`] is IN (buffer
    /// capacity) and OUT (frame length). `ret` = frames received, or
    /// [`Error::Again`] when none is waiting.
    NetRecvBatch = 27,
    /// Marks the guest's ready point (`duet::snapshot_point()`). When the
    /// monitor is creating a template it snapshots the guest here and stops
    /// it; otherwise the call does nothing. Args: [`SnapshotPointArgs`].
    SnapshotPoint = 32,
    /// The guest changed a virtio device's `status` in its transport slot
    /// ([`crate::virtio::VirtioSlot`]); `eax` = device id. The monitor
    /// checks the slot, starts or resets the device, and writes back the
    /// status it accepted (the guest reads it from the slot).
    VirtioStatus = 40,
}

impl Hypercall {
    /// Every hypercall, for tables and tests.
    pub const ALL: &'static [Hypercall] = &[
        Self::Exit,
        Self::ConsoleWrite,
        Self::Abort,
        Self::Nop,
        Self::BootTrace,
        Self::Poll,
        Self::MemGrow,
        Self::MemRelease,
        Self::MemProtect,
        Self::BlkRead,
        Self::BlkWrite,
        Self::BlkFlush,
        Self::BlkBatch,
        Self::NetSend,
        Self::NetRecv,
        Self::NetSendBatch,
        Self::NetRecvBatch,
        Self::SnapshotPoint,
        Self::VirtioStatus,
    ];

    /// The I/O port the guest writes to for this call.
    pub const fn port(self) -> u16 {
        PORT_BASE + self as u16
    }

    /// Decodes a hypercall number.
    pub fn from_number(nr: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|h| *h as u16 == nr)
    }
}

impl TryFrom<u16> for Hypercall {
    type Error = Error;
    fn try_from(nr: u16) -> Result<Self, Error> {
        Self::from_number(nr).ok_or(Error::Unsupported)
    }
}

/// Error codes returned (negated) in an argument struct's `ret` field.
#[repr(i64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// An argument is invalid (bad flag, misaligned, zero where not allowed).
    Inval = 1,
    /// An address or length lies outside guest memory, or overflows.
    Fault = 2,
    /// No such device.
    NoDev = 3,
    /// Nothing to do now; try again later (non-blocking calls).
    Again = 4,
    /// The host reported an I/O error.
    Io = 5,
    /// The host is out of space.
    NoSpace = 6,
    /// The device or region is read-only.
    ReadOnly = 7,
    /// Out of guest memory (the `--mem` limit).
    NoMem = 8,
    /// Not allowed (e.g. touching monitor-owned pages).
    Perm = 9,
    /// Unknown hypercall or operation.
    Unsupported = 10,
    /// A length exceeds the call's bound.
    TooBig = 11,
    /// An offset is outside the device.
    Range = 12,
}

impl Error {
    /// Every error code.
    pub const ALL: &'static [Error] = &[
        Self::Inval,
        Self::Fault,
        Self::NoDev,
        Self::Again,
        Self::Io,
        Self::NoSpace,
        Self::ReadOnly,
        Self::NoMem,
        Self::Perm,
        Self::Unsupported,
        Self::TooBig,
        Self::Range,
    ];

    /// The value stored in `ret` for this error.
    pub const fn to_ret(self) -> i64 {
        -(self as i64)
    }

    /// Decodes a `ret` value: `Ok(v)` for `v >= 0`, the error otherwise
    /// (an unknown negative code decodes as [`Error::Inval`]).
    pub fn from_ret(ret: i64) -> Result<u64, Error> {
        if ret >= 0 {
            return Ok(ret as u64);
        }
        let code = ret.unsigned_abs() as i64;
        Err(Self::ALL
            .iter()
            .copied()
            .find(|e| *e as i64 == code)
            .unwrap_or(Error::Inval))
    }

    /// A short description.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Inval => "invalid argument",
            Self::Fault => "address outside guest memory",
            Self::NoDev => "no such device",
            Self::Again => "try again",
            Self::Io => "host I/O error",
            Self::NoSpace => "no space left on host",
            Self::ReadOnly => "read-only",
            Self::NoMem => "out of guest memory",
            Self::Perm => "not permitted",
            Self::Unsupported => "unsupported",
            Self::TooBig => "too big",
            Self::Range => "out of range",
        }
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Largest console write the monitor accepts in one call.
pub const CONSOLE_WRITE_MAX: u64 = 64 * 1024;
/// Largest abort message the monitor prints.
pub const ABORT_MSG_MAX: u64 = 4096;

/// Args of [`Hypercall::ConsoleWrite`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConsoleWriteArgs {
    /// IN: bytes to write.
    pub buf: Gpa,
    /// IN: number of bytes (at most [`CONSOLE_WRITE_MAX`]).
    pub len: u64,
    /// OUT: bytes written, or a negated [`Error`].
    pub ret: i64,
}

/// Args of [`Hypercall::Abort`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AbortArgs {
    /// IN: UTF-8 message.
    pub msg: Gpa,
    /// IN: message length (longer than [`ABORT_MSG_MAX`] is cut).
    pub len: u64,
}

/// Args of [`Hypercall::BootTrace`]: guest TSC readings.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BootTraceArgs {
    /// IN: TSC at the guest's first instruction.
    pub entry_tsc: u64,
    /// IN: TSC just before the application's `main`.
    pub main_tsc: u64,
}

/// [`SnapshotPointArgs::ret`]: the guest went on from a cold boot (no
/// snapshot was taken, or this is the original after one).
pub const SNAPSHOT_POINT_CONTINUED: i64 = 0;
/// [`SnapshotPointArgs::ret`]: the guest was restored from the snapshot
/// taken at this point (a template start or a clone).
pub const SNAPSHOT_POINT_RESTORED: i64 = 1;

/// Args of [`Hypercall::SnapshotPoint`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SnapshotPointArgs {
    /// OUT: [`SNAPSHOT_POINT_CONTINUED`] or [`SNAPSHOT_POINT_RESTORED`], or a
    /// negated [`Error`].
    pub ret: i64,
}

/// Length of the Ethernet header a network frame starts with (no VLAN tag,
/// no FCS). The largest frame a network device accepts or delivers is its
/// MTU (from [`crate::boot::DeviceInfo::mtu`]) plus this.
pub const ETH_HEADER_LEN: u64 = 14;
/// Most frames one [`Hypercall::NetSendBatch`] or [`Hypercall::NetRecvBatch`]
/// moves; a larger `count` gets [`Error::TooBig`].
pub const NET_BATCH_MAX: u32 = 32;

/// Args of [`Hypercall::NetSend`] and [`Hypercall::NetRecv`].
///
/// Errors: [`Error::NoDev`] (no such device, or not a network device),
/// [`Error::Inval`] (send: zero length or shorter than the Ethernet header;
/// receive: a buffer smaller than MTU + header), [`Error::TooBig`] (send: frame longer
/// than MTU + [`ETH_HEADER_LEN`]), [`Error::Fault`] (buffer outside guest
/// memory, or not guest-writable for a receive), [`Error::Again`] (nothing
/// to receive, or the host queue is full), [`Error::Io`] (the host device
/// failed or vanished; the monitor logs why and keeps running).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetFrameArgs {
    /// IN: device id (index in the boot info's device table).
    pub device: u32,
    /// IN: reserved, zero.
    pub flags: u32,
    /// IN: the frame (send) or the buffer to receive into.
    pub buf: Gpa,
    /// IN: frame length (send) or buffer capacity (receive; it must hold
    /// MTU + [`ETH_HEADER_LEN`] bytes, so no frame is ever cut).
    pub len: u64,
    /// OUT: bytes sent or received, or a negated [`Error`].
    pub ret: i64,
}

/// One frame of a batch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetFrameDesc {
    /// IN: the frame (send) or the buffer to receive into.
    pub buf: Gpa,
    /// IN: frame length (send) or buffer capacity (receive).
    /// OUT (receive): the received frame's length.
    pub len: u64,
}

/// Args of [`Hypercall::NetSendBatch`] and [`Hypercall::NetRecvBatch`].
/// Errors as for [`NetFrameArgs`], plus [`Error::TooBig`] for a `count`
/// above [`NET_BATCH_MAX`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetBatchArgs {
    /// IN: device id.
    pub device: u32,
    /// IN: number of [`NetFrameDesc`]s at `frames` (1..=[`NET_BATCH_MAX`]).
    pub count: u32,
    /// IN: array of `count` [`NetFrameDesc`]s (guest-writable for a receive).
    pub frames: Gpa,
    /// OUT: frames sent or received, or a negated [`Error`].
    pub ret: i64,
}

plain!(NetFrameArgs = 32, NetFrameDesc = 16, NetBatchArgs = 24,);

plain!(
    ConsoleWriteArgs = 24,
    AbortArgs = 16,
    BootTraceArgs = 16,
    SnapshotPointArgs = 8,
);
