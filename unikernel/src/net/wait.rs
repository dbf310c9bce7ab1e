//! Time and waiting for the network stack.
//!
//! THE ONE PLACE TO SWITCH TO THE POLL HYPERCALL: [`wait_io`]. Until
//! `Hypercall::Poll` exists it spins on non-blocking batched receives (one
//! exit each) and the exitless clock; with poll it becomes one hypercall
//! that sleeps in the monitor until a device in `wait_mask` is readable or
//! the deadline passes, followed by `dev.refill()` when the device is
//! ready. [`now_ns`] likewise becomes `duet::time::Instant::now()`.

use super::device::NetDev;
use duet_abi::clock::ClockPage;

/// Guest monotonic time in ns, from `rdtsc` and the clock page (no exit).
pub(crate) fn now_ns() -> u64 {
    let page = crate::rt::boot_info().clock.0 as *const ClockPage;
    loop {
        // SAFETY: the monitor maps the clock page read-only for the guest's
        // whole life at the address the boot info gives; it may rewrite it
        // concurrently, hence volatile reads and the seqlock check.
        let (s1, p) = unsafe {
            (
                core::ptr::read_volatile(&(*page).seq),
                core::ptr::read_volatile(page),
            )
        };
        // SAFETY: as above.
        let s2 = unsafe { core::ptr::read_volatile(&(*page).seq) };
        if s1 == s2 && s1 % 2 == 0 && p.seq == s1 {
            return p.mono_ns(crate::rt::rdtsc());
        }
        core::hint::spin_loop();
    }
}

/// Waits until a device in `wait_mask` (bit `i` = device id `i`) has
/// frames, or until `deadline_ns` (guest monotonic) passes. Returns the
/// mask of ready devices (0 on timeout). Frames that arrived are already in
/// `dev`'s receive queue when it returns.
///
/// Interim implementation, to be replaced by the poll hypercall (number 7,
/// `PollArgs { deadline_ns, wait: wait_mask, ready, ret }`) followed by
/// `if ready & bit != 0 { dev.refill(); }`.
pub(crate) fn wait_io(
    dev: &mut NetDev,
    dev_id: u32,
    deadline_ns: Option<u64>,
    wait_mask: u64,
) -> u64 {
    let bit = 1u64 << dev_id;
    if wait_mask & bit == 0 {
        // Nothing to wait for but time.
        while deadline_ns.is_some_and(|d| now_ns() < d) {
            core::hint::spin_loop();
        }
        return 0;
    }
    loop {
        if dev.refill() > 0 || dev.error().is_some() {
            return bit;
        }
        if deadline_ns.is_some_and(|d| now_ns() >= d) {
            return 0;
        }
        core::hint::spin_loop();
    }
}
