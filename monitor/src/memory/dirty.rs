//! Which guest pages changed: KVM's dirty log (guest writes) merged with
//! the monitor's own writes (hypercall results, clock page), which KVM does
//! not see because they go through the host mapping.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Pages the monitor wrote while tracking is on.
#[derive(Default, Debug)]
pub struct HostDirty {
    on: AtomicBool,
    pages: Mutex<Vec<u64>>,
}

impl HostDirty {
    /// Records a monitor write of `len` bytes at `gpa` (cheap when off).
    #[inline]
    pub fn mark(&self, gpa: u64, len: usize) {
        if !self.on.load(Ordering::Relaxed) || len == 0 {
            return;
        }
        let first = gpa / duet_abi::PAGE_SIZE;
        let last = (gpa + len as u64 - 1) / duet_abi::PAGE_SIZE;
        let mut p = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        p.extend(first..=last);
    }

    /// Starts or stops tracking; either way forgets what was recorded.
    pub fn set(&self, on: bool) {
        self.on.store(on, Ordering::SeqCst);
        self.take();
    }

    /// Takes the pages recorded so far.
    pub fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.pages.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A set of dirty pages as a bitmap over guest memory.
pub struct DirtySet {
    bits: Vec<u64>,
    pages: u64,
}

impl DirtySet {
    /// Starts from KVM's bitmap (`KVM_GET_DIRTY_LOG`) for `pages` pages.
    pub fn from_kvm(mut bits: Vec<u64>, pages: u64) -> Self {
        bits.resize(pages.div_ceil(64) as usize, 0);
        DirtySet { bits, pages }
    }

    /// Adds pages (out-of-range ones are ignored).
    pub fn add(&mut self, pages: impl IntoIterator<Item = u64>) {
        for p in pages {
            if p < self.pages {
                self.bits[(p / 64) as usize] |= 1 << (p % 64);
            }
        }
    }

    /// Adds every page of `other` (same memory size).
    pub fn merge(&mut self, other: &DirtySet) {
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            *a |= b;
        }
    }

    /// How many pages are dirty.
    pub fn count(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Runs `(first, count)` of dirty pages, each at most `max` long.
    pub fn runs(&self, max: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut run: Option<(u64, u64)> = None;
        for (w, &word) in self.bits.iter().enumerate() {
            if word == 0 && run.is_none() {
                continue;
            }
            for b in 0..64 {
                let p = w as u64 * 64 + b;
                if p >= self.pages {
                    break;
                }
                let dirty = word & (1 << b) != 0;
                run = match (run, dirty) {
                    (Some((s, c)), true) if c < max => Some((s, c + 1)),
                    (Some(r), true) => {
                        out.push(r);
                        Some((p, 1))
                    }
                    (None, true) => Some((p, 1)),
                    (Some(r), false) => {
                        out.push(r);
                        None
                    }
                    (None, false) => None,
                };
            }
        }
        out.extend(run);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_and_split() {
        let mut d = DirtySet::from_kvm(vec![0b1110], 130);
        d.add([64, 65, 66, 129, 500]);
        assert_eq!(d.count(), 7);
        assert_eq!(d.runs(2), vec![(1, 2), (3, 1), (64, 2), (66, 1), (129, 1)]);
        let mut e = DirtySet::from_kvm(vec![1], 130);
        e.merge(&d);
        assert_eq!(e.count(), 8);
        let h = HostDirty::default();
        h.mark(0x1000, 4);
        assert!(h.take().is_empty());
        h.set(true);
        h.mark(0x1ffe, 4);
        assert_eq!(h.take(), vec![1, 2]);
    }
}
