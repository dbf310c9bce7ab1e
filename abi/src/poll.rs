//! Waiting: the poll hypercall blocks the guest in the monitor until a
//! deadline or until a device has input, so an idle guest costs the host
//! nothing (no timer interrupts, no spinning).

use crate::plain;

/// `deadline_ns` value meaning "no deadline".
pub const POLL_FOREVER: u64 = u64::MAX;

/// Bit of [`PollArgs::ready`] the monitor sets, once, on the first poll after
/// the host asked the guest to shut down
/// ([`crate::identity::REQUEST_SHUTDOWN`]); never a device (devices are
/// numbered below [`crate::boot::MAX_DEVICES`]).
pub const READY_SHUTDOWN: u64 = 1 << 63;
const _: () = assert!(crate::boot::MAX_DEVICES < 63);

/// Args of [`crate::hypercall::Hypercall::Poll`].
///
/// Returns when the guest's monotonic clock reaches `deadline_ns`, or when a
/// device in `wait` is ready, whichever comes first (a deadline in the past
/// returns at once after checking readiness). It may also return early with
/// `ready == 0` (for example when the monitor pauses the guest); callers
/// re-check their clock and poll again.
///
/// Errors: `NoDev` (a bit in `wait` names no device).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PollArgs {
    /// IN: guest monotonic time (ns since boot, see [`crate::clock`]) to
    /// wake at; [`POLL_FOREVER`] for none. Absurdly far deadlines saturate.
    pub deadline_ns: u64,
    /// IN: bit `i` set = wake when device `i` of the device table is ready
    /// (a hypercall disk always is; a hypercall NIC when a frame waits; a
    /// virtio device when a used buffer passed the `used_event` its driver
    /// wrote, or it needs a reset).
    pub wait: u64,
    /// OUT: the devices of `wait` that are ready, plus [`READY_SHUTDOWN`]
    /// when a shutdown request arrived.
    pub ready: u64,
    /// OUT: 0, or a negated error.
    pub ret: i64,
}

plain!(PollArgs = 32);
