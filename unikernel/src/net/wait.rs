//! Time and waiting for the network stack: the exitless clock, and the
//! poll hypercall, which sleeps in the monitor until a frame arrives or the
//! deadline passes (no spinning).

use super::device::NetDev;
use duet_abi::poll::POLL_FOREVER;

/// Guest monotonic time in ns (no exit).
pub(crate) fn now_ns() -> u64 {
    crate::time::monotonic_ns()
}

/// Waits until a device in `wait_mask` (bit `i` = device id `i`) has
/// frames, or until `deadline_ns` (guest monotonic) passes. Returns the
/// mask of ready devices (0 on timeout). Frames that arrived are already in
/// `dev`'s receive queue when it returns.
pub(crate) fn wait_io(
    dev: &mut NetDev,
    dev_id: u32,
    deadline_ns: Option<u64>,
    wait_mask: u64,
) -> u64 {
    let bit = 1u64 << dev_id;
    if let Some(v) = dev.virtio() {
        return if v.wait(deadline_ns) { bit } else { 0 };
    }
    // Frames may already be waiting: take them without sleeping.
    if wait_mask & bit != 0 && (dev.refill() > 0 || dev.error().is_some()) {
        return bit;
    }
    let generation = crate::identity().generation;
    loop {
        let ready = match crate::time::poll_raw(deadline_ns.unwrap_or(POLL_FOREVER), wait_mask) {
            Ok(r) => r,
            Err(_) => return 0,
        };
        if ready & bit != 0 {
            // Readable, or failed (a vanished TAP polls as an error): either
            // way the device has news for the stack.
            dev.refill();
            return bit;
        }
        if ready != 0 {
            return ready;
        }
        if deadline_ns.is_some_and(|d| now_ns() >= d) {
            return 0;
        }
        // Woken early (e.g. the monitor paused us): wait again, unless
        // the guest moved meanwhile (a migration or restore): then the
        // stack must announce itself first (see `Stack::poll`).
        if crate::identity().generation != generation {
            return 0;
        }
    }
}
