//! The monitor's exit statuses (documented in the README).
//!
//! A guest that calls `exit(n)` makes `duet run` exit with `n` (0..=255).
//! The monitor's own outcomes use statuses shells already associate with
//! them.

/// Bad command line (clap's own status for usage errors).
pub const USAGE: u8 = 2;
/// The monitor could not start the guest: bad image, bad option, KVM missing.
pub const MONITOR_ERROR: u8 = 125;
/// The guest aborted (panicked): like SIGABRT, 128 + 6.
pub const GUEST_ABORT: u8 = 134;
/// The guest took a CPU exception: like SIGSEGV, 128 + 11.
pub const GUEST_FAULT: u8 = 139;
/// The VM stopped in a way a well-behaved guest never causes: triple fault,
/// a port or MMIO access that is not a hypercall, HLT, an emulation failure.
pub const VM_FAILURE: u8 = 140;
/// `duet run` whose guest was live-migrated away: it runs elsewhere now
/// (`duet: guest migrated to ADDR` on stderr). Guests should not use it.
pub const MIGRATED: u8 = 120;

/// The monitor stopped the guest because of signal `sig` (`SIGTERM` after
/// the grace period, or `SIGINT`): 128 + `sig`, as a shell reports a process
/// killed by it (143 for `SIGTERM`, 130 for `SIGINT`).
pub fn terminated(sig: i32) -> u8 {
    (128 + sig).clamp(0, 255) as u8
}
