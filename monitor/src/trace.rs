//! `--trace-boot`: a phase breakdown of one boot, host and guest side.

use std::time::Instant;

/// Timestamps of one boot.
pub struct BootTrace {
    start: Instant,
    phases: Vec<(&'static str, Instant)>,
    /// Host instant and guest TSC read together, to place guest stamps.
    anchor: Option<(Instant, u64, u64)>,
}

impl BootTrace {
    /// Starts a trace at `start` (the monitor's `main`).
    pub fn new(start: Instant) -> Self {
        BootTrace {
            start,
            phases: Vec::new(),
            anchor: None,
        }
    }

    /// Marks the end of a phase now.
    pub fn mark(&mut self, phase: &'static str) {
        self.phases.push((phase, Instant::now()));
    }

    /// Records that the guest TSC read `tsc` at host instant `at`, with
    /// frequency `tsc_khz`.
    pub fn anchor(&mut self, at: Instant, tsc: u64, tsc_khz: u64) {
        self.anchor = Some((at, tsc, tsc_khz));
    }

    /// Marks a phase that ended at guest TSC `tsc`.
    pub fn mark_guest(&mut self, phase: &'static str, tsc: u64) {
        if let Some((at, base, khz)) = self.anchor {
            if khz > 0 {
                let ns = (tsc.saturating_sub(base) as u128 * 1_000_000 / khz as u128) as u64;
                self.phases
                    .push((phase, at + std::time::Duration::from_nanos(ns)));
            }
        }
    }

    /// The breakdown as printable lines.
    pub fn render(&self) -> String {
        let mut out = String::from("duet: boot trace (ms since monitor start, phase length)\n");
        let mut prev = self.start;
        let mut phases = self.phases.clone();
        phases.sort_by_key(|(_, t)| *t);
        for (name, t) in phases {
            let since = t.duration_since(self.start).as_secs_f64() * 1e3;
            let len = t.saturating_duration_since(prev).as_secs_f64() * 1e3;
            out.push_str(&format!("  {name:<24} {since:>9.3} ms  (+{len:.3} ms)\n"));
            prev = t;
        }
        out
    }
}
