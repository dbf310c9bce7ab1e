//! The guest's clock: the clock page the guest reads without exits, and the
//! anchor that turns guest monotonic deadlines into host timeouts (the poll
//! hypercall). Saved through [`Persist`]: a restore keeps monotonic time
//! going from where it was and takes wall time from the host.

use crate::bootinfo;
use crate::memory::{GuestMem, MemError};
use crate::persist::{Persist, StateError};
use duet_abi::clock::ClockPage;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The guest's clock page as last written, and a host instant with the
/// guest's monotonic ns at that instant.
#[derive(Clone, Copy, Debug)]
pub struct GuestClock {
    page: ClockPage,
    anchor: (Instant, u64),
}

fn wall_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl GuestClock {
    /// Starts the clock at boot: monotonic time 0 at guest TSC `tsc` (read
    /// at host instant `now`), wall time from the host; publishes the page.
    pub fn start(mem: &GuestMem, tsc_khz: u64, tsc: u64, now: Instant) -> Result<Self, MemError> {
        let page = ClockPage {
            seq: 0,
            generation: 0,
            tsc_khz,
            mult: ClockPage::mult_for(tsc_khz),
            base_tsc: tsc,
            base_mono_ns: 0,
            base_wall_ns: wall_now_ns(),
        };
        bootinfo::write_clock(mem, &page)?;
        Ok(GuestClock {
            page,
            anchor: (now, 0),
        })
    }

    /// The page as last written.
    pub fn page(&self) -> &ClockPage {
        &self.page
    }

    /// How long from now until the guest's monotonic clock reads
    /// `deadline_ns`: zero for a past deadline, `None` when it lies beyond
    /// what the host can represent (never).
    pub fn until(&self, deadline_ns: u64) -> Option<Duration> {
        let (anchor, anchor_ns) = self.anchor;
        if deadline_ns <= anchor_ns {
            return Some(Duration::ZERO);
        }
        anchor
            .checked_add(Duration::from_nanos(deadline_ns - anchor_ns))
            .map(|t| t.saturating_duration_since(Instant::now()))
    }
}

/// Saved clock page fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockState {
    /// Restores so far.
    pub generation: u32,
    /// TSC frequency.
    pub tsc_khz: u64,
    /// Scale.
    pub mult: u64,
    /// Base TSC.
    pub base_tsc: u64,
    /// Monotonic ns at `base_tsc`.
    pub base_mono_ns: u64,
    /// Wall ns at `base_tsc`.
    pub base_wall_ns: u64,
}

/// What a clock restore needs: guest memory to publish the page in, the
/// guest TSC when it was saved and now (at host instant `now`), and the
/// host's wall time now.
pub struct ClockArgs<'a> {
    /// Guest memory.
    pub mem: &'a GuestMem,
    /// Guest TSC at save.
    pub tsc_at_save: u64,
    /// Guest TSC now.
    pub tsc_now: u64,
    /// The host instant `tsc_now` was read at.
    pub now: Instant,
    /// Host wall clock now (ns since the epoch).
    pub wall_now_ns: u64,
}

impl<'a> ClockArgs<'a> {
    /// Args with the host's wall clock read now.
    pub fn now(mem: &'a GuestMem, tsc_at_save: u64, tsc_now: u64, now: Instant) -> Self {
        ClockArgs {
            mem,
            tsc_at_save,
            tsc_now,
            now,
            wall_now_ns: wall_now_ns(),
        }
    }
}

impl Persist for GuestClock {
    type State = ClockState;
    type ConstructorArgs<'a> = ClockArgs<'a>;
    type Error = StateError;

    fn save(&self) -> Result<ClockState, StateError> {
        let p = &self.page;
        Ok(ClockState {
            generation: p.generation,
            tsc_khz: p.tsc_khz,
            mult: p.mult,
            base_tsc: p.base_tsc,
            base_mono_ns: p.base_mono_ns,
            base_wall_ns: p.base_wall_ns,
        })
    }

    /// Monotonic time goes on from where it was at save; wall time is the
    /// host's now; the generation goes up.
    fn restore(a: ClockArgs<'_>, s: &ClockState) -> Result<GuestClock, StateError> {
        if s.tsc_khz == 0 || s.mult != ClockPage::mult_for(s.tsc_khz) {
            return Err(StateError::Invalid(
                "the clock's TSC frequency and scale disagree".into(),
            ));
        }
        let old = ClockPage {
            seq: 0,
            generation: s.generation,
            tsc_khz: s.tsc_khz,
            mult: s.mult,
            base_tsc: s.base_tsc,
            base_mono_ns: s.base_mono_ns,
            base_wall_ns: s.base_wall_ns,
        };
        let page = ClockPage {
            generation: s.generation.wrapping_add(1),
            base_tsc: a.tsc_now,
            base_mono_ns: old.mono_ns(a.tsc_at_save),
            base_wall_ns: a.wall_now_ns,
            ..old
        };
        bootinfo::write_clock(a.mem, &page)
            .map_err(|e| StateError::Invalid(format!("writing the clock page: {e}")))?;
        Ok(GuestClock {
            page,
            anchor: (a.now, page.base_mono_ns),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_monotonic_time() {
        let mem = GuestMem::new(8 << 20).unwrap();
        let page = ClockPage {
            seq: 0,
            generation: 3,
            tsc_khz: 1_000_000,
            mult: ClockPage::mult_for(1_000_000),
            base_tsc: 1_000,
            base_mono_ns: 5_000,
            base_wall_ns: 77,
        };
        let c = GuestClock {
            page,
            anchor: (Instant::now(), 5_000),
        };
        let s: ClockState =
            postcard::from_bytes(&postcard::to_stdvec(&c.save().unwrap()).unwrap()).unwrap();
        let args = ClockArgs {
            mem: &mem,
            tsc_at_save: 3_000,
            tsc_now: 10,
            now: Instant::now(),
            wall_now_ns: 999,
        };
        let c = GuestClock::restore(args, &s).unwrap();
        assert_eq!(c.page.generation, 4);
        assert_eq!(c.page.base_mono_ns, 7_000);
        assert_eq!(c.page.base_wall_ns, 999);
        let seen: ClockPage = mem
            .read_plain(duet_abi::Gpa(crate::layout::CLOCK_PAGE))
            .unwrap();
        assert_eq!(seen.base_mono_ns, 7_000);
        assert_eq!(seen.seq % 2, 0);
        assert_eq!(c.until(6_000), Some(Duration::ZERO));
        assert!(c.until(u64::MAX - 1).is_none() || c.until(u64::MAX - 1).is_some());
        let bad = ClockState { mult: 1, ..s };
        assert!(GuestClock::restore(ClockArgs::now(&mem, 0, 0, Instant::now()), &bad).is_err());
    }
}
