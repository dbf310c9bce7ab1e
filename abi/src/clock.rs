//! The clock page: written by the monitor, read by the guest without exits.
//!
//! The guest turns a `rdtsc` reading into nanoseconds with the scale here.
//! The monitor may rewrite the page while the guest runs (after a restore or
//! a migration), so it is a seqlock: [`ClockPage::seq`] is odd while the
//! monitor writes; the guest retries until it reads the same even value
//! before and after the fields.

use crate::plain;
use core::mem::size_of;

/// Right shift applied after multiplying a TSC delta by [`ClockPage::mult`].
pub const CLOCK_SHIFT: u32 = 32;

/// The clock page.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ClockPage {
    /// Seqlock counter: odd while the monitor is writing.
    pub seq: u32,
    /// Bumped by the monitor each time the guest is restored or migrated.
    pub generation: u32,
    /// TSC frequency in kHz.
    pub tsc_khz: u64,
    /// `ns = base_* + ((tsc - base_tsc) * mult) >> CLOCK_SHIFT`.
    pub mult: u64,
    /// TSC value at which `base_mono_ns` and `base_wall_ns` were taken.
    pub base_tsc: u64,
    /// Guest monotonic time in ns at `base_tsc` (0 at boot).
    pub base_mono_ns: u64,
    /// Wall-clock time (ns since the UNIX epoch) at `base_tsc`.
    pub base_wall_ns: u64,
}

plain!(ClockPage = 48);
const _: () = assert!(size_of::<ClockPage>() as u64 <= crate::PAGE_SIZE);

impl ClockPage {
    /// The `mult` for a TSC frequency: ns per tick in 32.32 fixed point.
    pub const fn mult_for(tsc_khz: u64) -> u64 {
        if tsc_khz == 0 {
            return 0;
        }
        (1_000_000u64 << CLOCK_SHIFT) / tsc_khz
    }

    /// Nanoseconds elapsed over `ticks` TSC ticks.
    pub const fn ticks_to_ns(&self, ticks: u64) -> u64 {
        ((ticks as u128 * self.mult as u128) >> CLOCK_SHIFT) as u64
    }

    /// Monotonic ns at TSC value `tsc` (saturating at `base_mono_ns` for a
    /// TSC earlier than `base_tsc`).
    pub const fn mono_ns(&self, tsc: u64) -> u64 {
        self.base_mono_ns
            .saturating_add(self.ticks_to_ns(tsc.saturating_sub(self.base_tsc)))
    }

    /// Wall-clock ns since the UNIX epoch at TSC value `tsc`.
    pub const fn wall_ns(&self, tsc: u64) -> u64 {
        self.base_wall_ns
            .saturating_add(self.ticks_to_ns(tsc.saturating_sub(self.base_tsc)))
    }
}
