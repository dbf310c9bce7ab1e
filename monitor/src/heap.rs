//! The guest's heap as the monitor sees it: where it is, how far it is
//! mapped, which pages the guest made read-only or inaccessible, and the
//! checks behind the memory hypercalls.

use crate::memory::GuestMem;
use crate::paging::{Access, PageTables, PagingError};
use crate::persist::{Persist, StateError};
use duet_abi::hypercall::Error;
use duet_abi::mem::{PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE};
use duet_abi::{Gpa, PAGE_SIZE};

/// Bytes of heap mapped at boot; the guest grows it on demand.
pub const INITIAL_HEAP: u64 = 2 << 20;
/// Most separate non-writable ranges a guest may keep (guard pages and the
/// like); past it `MemProtect` answers `NoMem`. Bounds the monitor's own
/// memory and every later check.
pub const MAX_PROTECTED_RANGES: usize = 4096;

/// What the guest made a heap range: read-only or inaccessible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Prot {
    /// `PROT_NONE`.
    None,
    /// `PROT_READ`.
    Read,
}

impl Prot {
    /// The page-table access for it.
    pub fn access(self) -> Access {
        match self {
            Prot::None => Access::None,
            Prot::Read => Access::UserRead,
        }
    }
}

/// Heap bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Heap {
    start: u64,
    end: u64,
    limit: u64,
    /// Heap ranges the guest made non-writable (the monitor must not write
    /// there on its behalf either), with what they are: sorted, disjoint
    /// `[start, end)`, neighbours of one kind merged, at most
    /// [`MAX_PROTECTED_RANGES`]. With the bounds, enough to rebuild the
    /// heap's page tables.
    no_write: Vec<(u64, u64, Prot)>,
    /// Other guest-writable ranges (stack, the image's data).
    fixed_writable: Vec<(u64, u64)>,
}

impl Heap {
    /// A heap at `start` with `initial` bytes mapped, growable to `limit`
    /// (exclusive end address).
    pub fn new(start: u64, initial: u64, limit: u64, fixed_writable: Vec<(u64, u64)>) -> Self {
        Heap {
            start,
            end: start + initial,
            limit,
            no_write: Vec::new(),
            fixed_writable,
        }
    }

    /// First heap byte.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// End of the mapped heap.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Largest end the heap may grow to.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The ranges the guest may have the monitor write into.
    pub fn writable_ranges(&self) -> Vec<(u64, u64)> {
        let mut out = self.fixed_writable.clone();
        let mut from = self.start;
        for &(s, e, _) in &self.no_write {
            if s > from {
                out.push((from, s));
            }
            from = e;
        }
        if self.end > from {
            out.push((from, self.end));
        }
        out
    }

    /// The writable ranges besides the heap (stack, the image's data).
    pub fn fixed_writable(&self) -> &[(u64, u64)] {
        &self.fixed_writable
    }

    /// The protected ranges, in order.
    pub fn protections(&self) -> impl Iterator<Item = (u64, u64, Prot)> + '_ {
        self.no_write.iter().copied()
    }

    /// Records `[start, end)` as `prot` (or writable again when `None`) in
    /// the interval list; refuses (changing nothing) when that would exceed
    /// [`MAX_PROTECTED_RANGES`].
    fn set_protection(&mut self, start: u64, end: u64, prot: Option<Prot>) -> Result<(), Error> {
        let mut out = Vec::with_capacity(self.no_write.len() + 2);
        for &(s, e, p) in &self.no_write {
            // Keep the parts of each range outside [start, end).
            if s < start {
                out.push((s, e.min(start), p));
            }
            if e > end {
                out.push((s.max(end), e, p));
            }
        }
        if let Some(p) = prot {
            out.push((start, end, p));
        }
        out.sort_unstable_by_key(|r| r.0);
        let mut merged: Vec<(u64, u64, Prot)> = Vec::with_capacity(out.len());
        for (s, e, p) in out {
            match merged.last_mut() {
                Some(last) if s <= last.1 && last.2 == p => last.1 = last.1.max(e),
                _ => merged.push((s, e, p)),
            }
        }
        if merged.len() > MAX_PROTECTED_RANGES {
            return Err(Error::NoMem);
        }
        self.no_write = merged;
        Ok(())
    }

    /// Maps `len` more bytes (rounded up to a page) at the heap's end.
    /// Returns the new range's start and length.
    pub fn grow(
        &mut self,
        pt: &mut PageTables,
        mem: &mut GuestMem,
        len: u64,
    ) -> Result<(u64, u64), Error> {
        if len == 0 {
            return Err(Error::Inval);
        }
        let len = len
            .checked_next_multiple_of(PAGE_SIZE)
            .ok_or(Error::NoMem)?;
        if len > self.limit - self.end {
            return Err(Error::NoMem);
        }
        let start = self.end;
        pt.map_range(mem, start, start + len, Access::UserWrite)
            .map_err(paging_error)?;
        self.end += len;
        mem.set_writable(self.writable_ranges());
        Ok((start, len))
    }

    /// Checks a release/protect range: page-aligned, non-empty, inside the
    /// mapped heap.
    pub fn check_range(&self, mem: &GuestMem, addr: Gpa, len: u64) -> Result<(u64, u64), Error> {
        if len == 0 || addr.0 % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
            return Err(Error::Inval);
        }
        mem.check(addr, len).map_err(|_| Error::Fault)?;
        let end = addr.0 + len;
        if addr.0 < self.start || end > self.end {
            return Err(Error::Perm);
        }
        Ok((addr.0, end))
    }

    /// Gives `[addr, addr + len)` back to the host: the pages read as zero
    /// afterwards and no longer count in the monitor's RSS.
    pub fn release(&self, mem: &mut GuestMem, addr: Gpa, len: u64) -> Result<(), Error> {
        let (start, end) = self.check_range(mem, addr, len)?;
        mem.discard(Gpa(start), end - start).map_err(|_| Error::Io)
    }

    /// Changes the protection of `[addr, addr + len)`. The caller flushes
    /// the guest's TLB.
    pub fn protect(
        &mut self,
        pt: &mut PageTables,
        mem: &mut GuestMem,
        addr: Gpa,
        len: u64,
        prot: u32,
    ) -> Result<(), Error> {
        if prot & !(PROT_READ | PROT_WRITE | PROT_EXEC) != 0 {
            return Err(Error::Inval);
        }
        if prot & PROT_EXEC != 0 {
            return Err(Error::Perm);
        }
        let kind = match prot {
            PROT_NONE => Some(Prot::None),
            PROT_READ => Some(Prot::Read),
            p if p == PROT_READ | PROT_WRITE => None,
            _ => return Err(Error::Inval), // write without read
        };
        let access = kind.map_or(Access::UserWrite, Prot::access);
        let (start, end) = self.check_range(mem, addr, len)?;
        // The bookkeeping first: a refusal must leave the tables untouched.
        let before = self.no_write.clone();
        self.set_protection(start, end, kind)?;
        if let Err(e) = pt.protect(mem, start, end, access) {
            self.no_write = before;
            return Err(paging_error(e));
        }
        mem.set_writable(self.writable_ranges());
        Ok(())
    }
}

impl Persist for Heap {
    type State = Heap;
    type ConstructorArgs<'a> = ();
    type Error = StateError;

    fn save(&self) -> Result<Heap, StateError> {
        Ok(self.clone())
    }

    /// Refuses a heap that could not have come from a monitor: out of
    /// order, unaligned, or with more protected ranges than allowed.
    fn restore((): (), h: &Heap) -> Result<Heap, StateError> {
        let aligned = |v: u64| v % PAGE_SIZE == 0;
        let ranges_ok = h.no_write.len() <= MAX_PROTECTED_RANGES
            && h.no_write.windows(2).all(|w| w[0].1 <= w[1].0)
            && h.no_write
                .iter()
                .all(|&(s, e, _)| s < e && s >= h.start && e <= h.end && aligned(s) && aligned(e));
        if !(h.start <= h.end
            && h.end <= h.limit
            && aligned(h.start)
            && aligned(h.end)
            && ranges_ok)
        {
            return Err(StateError::Invalid(
                "the heap's bounds or protected ranges are impossible".into(),
            ));
        }
        Ok(h.clone())
    }
}

fn paging_error(e: PagingError) -> Error {
    log::warn!("page-table update failed: {e}");
    match e {
        PagingError::OutOfTables => Error::NoMem,
        PagingError::Mem(_) | PagingError::Misaligned(_) => Error::Inval,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_ranges_skip_protected_pages() {
        let mut mem = GuestMem::new(16 << 20).unwrap();
        let mut pt = PageTables::new(&mem).unwrap();
        pt.map_range(&mem, 0x40_0000, 0x60_0000, Access::UserWrite)
            .unwrap();
        let mut h = Heap::new(0x40_0000, 0x20_0000, 0x100_0000, vec![(0x1000, 0x2000)]);
        h.protect(&mut pt, &mut mem, Gpa(0x40_1000), 0x2000, PROT_READ)
            .unwrap();
        assert_eq!(
            h.writable_ranges(),
            vec![
                (0x1000, 0x2000),
                (0x40_0000, 0x40_1000),
                (0x40_3000, 0x60_0000)
            ]
        );
        assert_eq!(
            h.protect(
                &mut pt,
                &mut mem,
                Gpa(0x40_1000),
                0x1000,
                PROT_EXEC | PROT_READ
            ),
            Err(Error::Perm)
        );
        assert_eq!(
            h.protect(&mut pt, &mut mem, Gpa(0x40_1000), 0x1000, PROT_WRITE),
            Err(Error::Inval)
        );
        assert_eq!(
            h.protect(&mut pt, &mut mem, Gpa(0x40_1001), 0x1000, PROT_READ),
            Err(Error::Inval)
        );
        assert_eq!(
            h.protect(&mut pt, &mut mem, Gpa(0x20_0000), 0x1000, PROT_READ),
            Err(Error::Perm)
        );
        assert_eq!(
            h.protect(&mut pt, &mut mem, Gpa(u64::MAX - 0xfff), 0x1000, PROT_READ),
            Err(Error::Fault)
        );
        assert_eq!(h.grow(&mut pt, &mut mem, 0x100_0000), Err(Error::NoMem));
        assert_eq!(h.grow(&mut pt, &mut mem, u64::MAX), Err(Error::NoMem));
        assert_eq!(h.grow(&mut pt, &mut mem, 0), Err(Error::Inval));
        assert_eq!(h.grow(&mut pt, &mut mem, 1), Ok((0x60_0000, 0x1000)));
        // Writable again in the middle: the interval splits.
        h.protect(
            &mut pt,
            &mut mem,
            Gpa(0x40_1000),
            0x1000,
            PROT_READ | PROT_WRITE,
        )
        .unwrap();
        assert_eq!(h.no_write, vec![(0x40_2000, 0x40_3000, Prot::Read)]);
        assert_eq!(Heap::restore((), &h.save().unwrap()).unwrap(), h);
    }

    #[test]
    fn protected_ranges_are_intervals_with_a_bound() {
        let mut mem = GuestMem::new(128 << 20).unwrap();
        let mut pt = PageTables::new(&mem).unwrap();
        let (start, end) = (0x40_0000, 0x40_0000 + 0x300_0000);
        pt.map_range(&mem, start, end, Access::UserWrite).unwrap();
        let mut h = Heap::new(start, end - start, 128 << 20, vec![]);
        // One range for 4096 pages protected at once, not 4096 entries.
        h.protect(&mut pt, &mut mem, Gpa(start), 0x100_0000, PROT_READ)
            .unwrap();
        assert_eq!(h.no_write.len(), 1);
        h.protect(
            &mut pt,
            &mut mem,
            Gpa(start),
            0x100_0000,
            PROT_READ | PROT_WRITE,
        )
        .unwrap();
        assert!(h.no_write.is_empty());
        // Every other page: one range each, until the bound.
        let mut refused = false;
        for i in 0..(MAX_PROTECTED_RANGES as u64 + 10) {
            let at = start + 2 * i * PAGE_SIZE;
            if at + PAGE_SIZE > end {
                break;
            }
            match h.protect(&mut pt, &mut mem, Gpa(at), PAGE_SIZE, PROT_NONE) {
                Ok(()) => {}
                Err(e) => {
                    assert_eq!(e, Error::NoMem);
                    refused = true;
                    break;
                }
            }
        }
        assert!(refused, "no bound on protected ranges");
        assert_eq!(h.no_write.len(), MAX_PROTECTED_RANGES);
        assert_eq!(mem.writable().len(), MAX_PROTECTED_RANGES);
        let bad = Heap {
            no_write: vec![(start + PAGE_SIZE, start, Prot::None)],
            ..h.clone()
        };
        assert!(Heap::restore((), &bad).is_err());
    }
}
