//! The guest's heap as the monitor sees it: where it is, how far it is
//! mapped, which pages the guest made read-only or inaccessible, and the
//! checks behind the memory hypercalls.

use crate::memory::GuestMem;
use crate::paging::{Access, PageTables, PagingError};
use duet_abi::hypercall::Error;
use duet_abi::mem::{PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE};
use duet_abi::{Gpa, PAGE_SIZE};
use std::collections::BTreeSet;

/// Bytes of heap mapped at boot; the guest grows it on demand.
pub const INITIAL_HEAP: u64 = 2 << 20;

/// Heap bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Heap {
    start: u64,
    end: u64,
    limit: u64,
    /// Heap pages the guest made non-writable (the monitor must not write
    /// there on its behalf either).
    no_write: BTreeSet<u64>,
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
            no_write: BTreeSet::new(),
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
        for &p in &self.no_write {
            if p > from {
                out.push((from, p));
            }
            from = p + PAGE_SIZE;
        }
        if self.end > from {
            out.push((from, self.end));
        }
        out
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
    pub fn release(&self, mem: &GuestMem, addr: Gpa, len: u64) -> Result<(), Error> {
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
        let access = match prot {
            PROT_NONE => Access::None,
            PROT_READ => Access::UserRead,
            p if p == PROT_READ | PROT_WRITE => Access::UserWrite,
            _ => return Err(Error::Inval), // write without read
        };
        let (start, end) = self.check_range(mem, addr, len)?;
        pt.protect(mem, start, end, access).map_err(paging_error)?;
        for p in (start..end).step_by(PAGE_SIZE as usize) {
            if access == Access::UserWrite {
                self.no_write.remove(&p);
            } else {
                self.no_write.insert(p);
            }
        }
        mem.set_writable(self.writable_ranges());
        Ok(())
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
        let mut pt = PageTables::new();
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
    }
}
