//! Time without exits: `Instant` and `SystemTime` read the TSC and scale it
//! with the clock page the monitor publishes (a seqlock, so a concurrent
//! update after a restore or migration is never seen torn). `sleep` and
//! [`poll`] block in the monitor, so an idle guest costs the host nothing.

use crate::hypercall::{call, result};
use crate::rt::{boot_info, rdtsc};
use core::ops::{Add, AddAssign, Sub};
use core::sync::atomic::{compiler_fence, Ordering};
pub use core::time::Duration;
use duet_abi::clock::ClockPage;
use duet_abi::hypercall::{Error, Hypercall};
use duet_abi::poll::{PollArgs, POLL_FOREVER};

/// Reads a consistent copy of the clock page and a TSC value taken inside
/// the same read section.
#[inline]
fn read_clock() -> (ClockPage, u64) {
    let page = boot_info().clock.0 as *const ClockPage;
    loop {
        // SAFETY: the monitor maps the clock page read-only for the guest's
        // whole life at the address in the boot info; volatile reads because
        // the monitor may rewrite it at any time.
        let seq = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*page).seq)) };
        if seq & 1 != 0 {
            core::hint::spin_loop();
            continue;
        }
        compiler_fence(Ordering::Acquire);
        // SAFETY: as above.
        let copy = unsafe { core::ptr::read_volatile(page) };
        let tsc = rdtsc();
        compiler_fence(Ordering::Acquire);
        // SAFETY: as above.
        let again = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*page).seq)) };
        if again == seq {
            return (copy, tsc);
        }
    }
}

/// Nanoseconds on the monotonic clock (0 at boot, never goes backwards).
#[inline]
pub fn monotonic_ns() -> u64 {
    let (c, tsc) = read_clock();
    c.mono_ns(tsc)
}

/// Nanoseconds since the UNIX epoch.
#[inline]
pub fn wall_ns() -> u64 {
    let (c, tsc) = read_clock();
    c.wall_ns(tsc)
}

/// A point on the monotonic clock, as in `std::time::Instant`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// Now.
    #[inline]
    pub fn now() -> Instant {
        Instant(monotonic_ns())
    }

    /// Nanoseconds since boot.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time since `earlier` (zero if `earlier` is later).
    pub fn duration_since(&self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// Time since this instant.
    pub fn elapsed(&self) -> Duration {
        Instant::now().duration_since(*self)
    }

    /// `self + d`, or `None` on overflow.
    pub fn checked_add(&self, d: Duration) -> Option<Instant> {
        u64::try_from(d.as_nanos())
            .ok()
            .and_then(|n| self.0.checked_add(n))
            .map(Instant)
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        self.checked_add(d).unwrap_or(Instant(u64::MAX))
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, other: Instant) -> Duration {
        self.duration_since(other)
    }
}

/// Wall-clock time, as in `std::time::SystemTime`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SystemTime(u64);

/// The UNIX epoch.
pub const UNIX_EPOCH: SystemTime = SystemTime(0);

impl SystemTime {
    /// Now.
    pub fn now() -> SystemTime {
        SystemTime(wall_ns())
    }

    /// Time since `earlier`, or how far `earlier` is ahead.
    pub fn duration_since(&self, earlier: SystemTime) -> Result<Duration, Duration> {
        if self.0 >= earlier.0 {
            Ok(Duration::from_nanos(self.0 - earlier.0))
        } else {
            Err(Duration::from_nanos(earlier.0 - self.0))
        }
    }
}

/// Blocks until `deadline` (or forever when `None`) or until a device whose
/// bit is set in `wait` is ready; returns the ready devices. May return
/// early with nothing ready: callers re-check their condition.
pub fn poll(deadline: Option<Instant>, wait: u64) -> Result<u64, Error> {
    poll_raw(deadline.map_or(POLL_FOREVER, |d| d.0), wait)
}

/// [`poll`] with a raw deadline in monotonic ns.
pub fn poll_raw(deadline_ns: u64, wait: u64) -> Result<u64, Error> {
    let mut a = PollArgs {
        deadline_ns,
        wait,
        ready: 0,
        ret: 0,
    };
    call(Hypercall::Poll, &mut a);
    result(a.ret).map(|_| a.ready)
}

/// Sleeps for at least `d` without spinning.
pub fn sleep(d: Duration) {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        let _ = poll(Some(deadline), 0);
    }
}
