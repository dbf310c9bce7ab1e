//! The guest's page tables, owned and edited only by the monitor.
//!
//! Identity mapping; upper levels are permissive and each leaf carries the
//! real permissions. Bulk memory (the heap) uses 2 MiB pages; the image and
//! the low monitor area use 4 KiB pages so text, rodata and data each get
//! their own protections. Tables live in guest memory between
//! [`layout::PAGE_TABLES`] and [`layout::PAGE_TABLES_END`], supervisor-only.

use crate::layout;
use crate::memory::{GuestMem, MemError};
use duet_abi::{Gpa, LARGE_PAGE_SIZE, PAGE_SIZE};
use thiserror::Error;

const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PS: u64 = 1 << 7;
/// Accessed and dirty, set up front: the CPU (here KVM's shadow MMU, which
/// walks these tables on every first touch of a page) then never has to
/// write them back, a first read of a writable page can map it writable at
/// once instead of faulting again on the first write, and KVM prefetches
/// neighbouring entries only when their accessed bit is set. Nothing in the
/// monitor reads them (dirty tracking is KVM's dirty log). The price: while
/// a migration logs dirty pages, a writable page the guest first only reads
/// is mapped writable and so counted dirty, and sent once more.
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const NX: u64 = 1 << 63;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// What a page may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Not present: any access faults.
    None,
    /// Ring 0 only, read/write, no execute (monitor structures).
    Supervisor,
    /// Ring 0 only, read-only, executable: the monitor's exception stubs,
    /// the only code that runs at CPL 0.
    SupervisorExec,
    /// Ring 3 read-only, no execute.
    UserRead,
    /// Ring 3 read/write, no execute.
    UserWrite,
    /// Ring 3 read + execute.
    UserExec,
}

impl Access {
    fn bits(self) -> u64 {
        match self {
            Access::None => 0,
            Access::Supervisor => P | RW | NX | A | D,
            Access::SupervisorExec => P | A,
            Access::UserRead => P | US | NX | A,
            Access::UserWrite => P | RW | US | NX | A | D,
            Access::UserExec => P | US | A,
        }
    }
}

/// Page-table errors (all are monitor bugs or resource limits, not guest input).
#[derive(Debug, Error)]
pub enum PagingError {
    /// The page-table area is full.
    #[error("out of page-table space (the image needs too many 4 KiB mappings)")]
    OutOfTables,
    /// A guest-memory access failed.
    #[error(transparent)]
    Mem(#[from] MemError),
    /// A range was not aligned.
    #[error("misaligned mapping {0:#x}")]
    Misaligned(u64),
}

/// The page tables and their allocator state.
#[derive(Clone, Debug)]
pub struct PageTables {
    next_table: u64,
}

impl PageTables {
    /// Address of the PML4 (CR3).
    pub const ROOT: u64 = layout::PAGE_TABLES;

    /// Starts empty tables in `mem`: an empty root; every table allocated
    /// later is zeroed first. Whatever the table area held before (a
    /// restored guest's memory comes from a file) is never trusted.
    pub fn new(mem: &GuestMem) -> Result<Self, PagingError> {
        mem.write_bytes(Gpa(Self::ROOT), &[0; PAGE_SIZE as usize])?;
        Ok(PageTables {
            next_table: layout::PAGE_TABLES + PAGE_SIZE,
        })
    }

    /// Where the next table will be allocated.
    pub fn next_table(&self) -> u64 {
        self.next_table
    }

    fn alloc_table(&mut self, mem: &GuestMem) -> Result<u64, PagingError> {
        if self.next_table >= layout::PAGE_TABLES_END {
            return Err(PagingError::OutOfTables);
        }
        let t = self.next_table;
        mem.write_bytes(Gpa(t), &[0; PAGE_SIZE as usize])?;
        self.next_table += PAGE_SIZE;
        Ok(t)
    }

    /// Returns the table that entry `idx` of `table` points to, creating it.
    fn child(&mut self, mem: &GuestMem, table: u64, idx: u64) -> Result<u64, PagingError> {
        let slot = Gpa(table + idx * 8);
        let e: u64 = mem.read_plain(slot)?;
        if e & P != 0 {
            return Ok(e & ADDR_MASK);
        }
        let t = self.alloc_table(mem)?;
        mem.write_monitor_plain(slot, &(t | P | RW | US | A))?;
        Ok(t)
    }

    fn pd(&mut self, mem: &GuestMem, gpa: u64) -> Result<u64, PagingError> {
        let pdpt = self.child(mem, Self::ROOT, (gpa >> 39) & 511)?;
        self.child(mem, pdpt, (gpa >> 30) & 511)
    }

    /// Maps `[start, end)` with 4 KiB pages.
    pub fn map_4k(
        &mut self,
        mem: &GuestMem,
        start: u64,
        end: u64,
        access: Access,
    ) -> Result<(), PagingError> {
        self.map_pages(mem, start, end, access, false)
    }

    /// Maps `[start, end)` with 2 MiB pages.
    pub fn map_2m(
        &mut self,
        mem: &GuestMem,
        start: u64,
        end: u64,
        access: Access,
    ) -> Result<(), PagingError> {
        self.map_pages(mem, start, end, access, true)
    }

    /// Maps `[start, end)` with pages of one size: 2 MiB leaves in the page
    /// directory when `large`, else 4 KiB leaves in page tables.
    fn map_pages(
        &mut self,
        mem: &GuestMem,
        start: u64,
        end: u64,
        access: Access,
        large: bool,
    ) -> Result<(), PagingError> {
        let size = if large { LARGE_PAGE_SIZE } else { PAGE_SIZE };
        if start >= end {
            return Ok(());
        }
        if start % size != 0 || end % size != 0 {
            return Err(PagingError::Misaligned(start));
        }
        let mut a = start;
        while a < end {
            let pd = self.pd(mem, a)?;
            let (slot, leaf) = if large {
                (pd + ((a >> 21) & 511) * 8, a | access.bits() | PS)
            } else {
                let pt = self.child(mem, pd, (a >> 21) & 511)?;
                (pt + ((a >> 12) & 511) * 8, a | access.bits())
            };
            mem.write_monitor_plain(Gpa(slot), &leaf)?;
            a += size;
        }
        Ok(())
    }

    /// Maps `[start, end)` (4 KiB aligned) with the largest pages that fit:
    /// 4 KiB up to the first 2 MiB boundary, 2 MiB pages, then a 4 KiB tail.
    pub fn map_range(
        &mut self,
        mem: &GuestMem,
        start: u64,
        end: u64,
        access: Access,
    ) -> Result<(), PagingError> {
        let big = start.next_multiple_of(LARGE_PAGE_SIZE).min(end);
        self.map_4k(mem, start, big, access)?;
        let big_end = (end & !(LARGE_PAGE_SIZE - 1)).max(big);
        self.map_2m(mem, big, big_end, access)?;
        self.map_4k(mem, big_end, end, access)
    }

    /// Sets the access of already-mapped pages in `[start, end)` (4 KiB
    /// aligned), splitting any 2 MiB page the range cuts into 4 KiB pages.
    /// The caller must flush the guest's TLB afterwards.
    pub fn protect(
        &mut self,
        mem: &GuestMem,
        start: u64,
        end: u64,
        access: Access,
    ) -> Result<(), PagingError> {
        if start % PAGE_SIZE != 0 || end % PAGE_SIZE != 0 {
            return Err(PagingError::Misaligned(start));
        }
        let mut a = start;
        while a < end {
            let pd = self.pd(mem, a)?;
            let slot = Gpa(pd + ((a >> 21) & 511) * 8);
            let e: u64 = mem.read_plain(slot)?;
            let whole = a % LARGE_PAGE_SIZE == 0 && a + LARGE_PAGE_SIZE <= end;
            // A whole 2 MiB page (or one made inaccessible as a whole) stays large.
            if whole && (e & PS != 0 || e == 0) {
                // The whole 2 MiB page changes: keep it large.
                let bits = access.bits();
                let v = if bits == 0 { 0 } else { a | bits | PS };
                mem.write_monitor_plain(slot, &v)?;
                a += LARGE_PAGE_SIZE;
                continue;
            }
            if e & PS != 0 {
                // Split: a page table with the same rights for all 512 pages
                // (PS is PAT in a PTE, so it must not carry over).
                let pt = self.alloc_table(mem)?;
                let base = e & ADDR_MASK & !(LARGE_PAGE_SIZE - 1);
                let flags = e & !ADDR_MASK & !PS;
                for i in 0..512u64 {
                    mem.write_monitor_plain(Gpa(pt + i * 8), &((base + i * PAGE_SIZE) | flags))?;
                }
                mem.write_monitor_plain(slot, &(pt | P | RW | US | A))?;
            }
            let pt = self.child(mem, pd, (a >> 21) & 511)?;
            let bits = access.bits();
            let v = if bits == 0 { 0 } else { a | bits };
            mem.write_monitor_plain(Gpa(pt + ((a >> 12) & 511) * 8), &v)?;
            a += PAGE_SIZE;
        }
        Ok(())
    }

    /// Translates `gpa` through the tables (for tests and diagnostics):
    /// returns the leaf entry, or `None` if unmapped.
    pub fn leaf(&self, mem: &GuestMem, gpa: u64) -> Option<u64> {
        let mut table = Self::ROOT;
        for (shift, last) in [(39, false), (30, false), (21, false), (12, true)] {
            let e: u64 = mem
                .read_plain(Gpa(table + ((gpa >> shift) & 511) * 8))
                .ok()?;
            if e & P == 0 {
                return None;
            }
            if last || (shift == 21 && e & PS != 0) {
                return Some(e);
            }
            table = e & ADDR_MASK;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_and_translates() {
        let mem = GuestMem::new(8 << 20).unwrap();
        let mut pt = PageTables::new(&mem).unwrap();
        pt.map_4k(&mem, 0x1000, 0x3000, Access::Supervisor).unwrap();
        pt.map_4k(&mem, 0x20_0000, 0x20_1000, Access::UserExec)
            .unwrap();
        pt.map_2m(&mem, 0x40_0000, 0x80_0000, Access::UserWrite)
            .unwrap();
        assert_eq!(pt.leaf(&mem, 0), None);
        assert_eq!(pt.leaf(&mem, 0x1000), Some(0x1000 | P | RW | NX | A | D));
        assert_eq!(pt.leaf(&mem, 0x20_0000), Some(0x20_0000 | P | US | A));
        assert_eq!(pt.leaf(&mem, 0x20_1000), None);
        assert_eq!(
            pt.leaf(&mem, 0x60_0000),
            Some(0x60_0000 | P | RW | US | NX | A | D | PS)
        );
        assert!(pt
            .map_2m(&mem, 0x1000, 0x20_0000, Access::UserWrite)
            .is_err());
    }

    #[test]
    fn map_range_mixes_page_sizes_and_protect_splits() {
        let mem = GuestMem::new(16 << 20).unwrap();
        let mut pt = PageTables::new(&mem).unwrap();
        pt.map_range(&mem, 0x30_0000, 0xa0_1000, Access::UserWrite)
            .unwrap();
        assert_eq!(pt.leaf(&mem, 0x30_0000).unwrap() & PS, 0);
        assert_eq!(pt.leaf(&mem, 0x40_0000).unwrap() & PS, PS);
        assert_eq!(pt.leaf(&mem, 0xa0_0000).unwrap() & PS, 0);
        assert_eq!(pt.leaf(&mem, 0xa0_1000), None);
        pt.protect(&mem, 0x40_3000, 0x40_5000, Access::UserRead)
            .unwrap();
        assert_eq!(pt.leaf(&mem, 0x40_3000), Some(0x40_3000 | P | US | NX | A));
        assert_eq!(
            pt.leaf(&mem, 0x40_5000),
            Some(0x40_5000 | P | RW | US | NX | A | D)
        );
        assert_eq!(
            pt.leaf(&mem, 0x40_2000),
            Some(0x40_2000 | P | RW | US | NX | A | D)
        );
        pt.protect(&mem, 0x60_0000, 0x80_0000, Access::None)
            .unwrap();
        assert_eq!(pt.leaf(&mem, 0x60_0000), None);
        pt.protect(&mem, 0x60_0000, 0x80_0000, Access::UserWrite)
            .unwrap();
        assert_eq!(
            pt.leaf(&mem, 0x70_0000),
            Some(0x60_0000 | P | RW | US | NX | A | D | PS)
        );
    }
}
