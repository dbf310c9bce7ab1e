//! Guest-virtual memory as the guest's page tables map it, for the
//! debugger, core dumps and backtraces.
//!
//! Guests run identity-mapped, but "mapped" and "may be written" are
//! decided by the page tables, not by guest-physical bounds: a debugger
//! must not read through an unmapped page nor write where the guest itself
//! could not. Every access here walks the tables (monitor-owned pages, so
//! the guest cannot change them) and copies through the checked
//! [`GuestMem`] accessors. A table read that fails (a corrupt snapshot's
//! tables pointing outside memory) reads as "not mapped".

use crate::memory::GuestMem;
use crate::paging::PageTables;
use duet_abi::{Gpa, LARGE_PAGE_SIZE, PAGE_SIZE};
use thiserror::Error;

const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const NX: u64 = 1 << 63;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// One present page and what ring 3 may do with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    /// Virtual address of the page's first byte.
    pub start: u64,
    /// 4 KiB or 2 MiB.
    pub size: u64,
    /// Guest-physical address of the page's first byte.
    pub phys: u64,
    /// Ring 3 may access it.
    pub user: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
}

impl Page {
    /// The end of the page (exclusive).
    pub fn end(&self) -> u64 {
        self.start + self.size
    }

    /// The page as ring 3 sees it: readable at all.
    pub fn user_readable(&self) -> bool {
        self.user
    }

    /// Ring 3 may write it.
    pub fn user_writable(&self) -> bool {
        self.user && self.write
    }

    /// Ring 3 may execute it (the image's text).
    pub fn user_text(&self) -> bool {
        self.user && self.exec
    }
}

/// A refused guest-virtual access.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum VmemError {
    /// No present page at `addr`.
    #[error("guest address {0:#x} is not mapped")]
    Unmapped(u64),
    /// Present, but not with the rights asked for.
    #[error("guest address {addr:#x} is mapped without {need} access")]
    Denied {
        /// The address.
        addr: u64,
        /// What was missing.
        need: &'static str,
    },
    /// The range wraps around the address space.
    #[error("guest range {addr:#x}+{len:#x} wraps around")]
    Wraps {
        /// Start.
        addr: u64,
        /// Length.
        len: u64,
    },
}

/// Which pages an access may touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Any present page, supervisor-only ones included (debugger reads).
    Present,
    /// A page ring 3 may read.
    UserRead,
    /// A page ring 3 may write.
    UserWrite,
}

impl Need {
    fn allows(self, p: &Page) -> bool {
        match self {
            Need::Present => true,
            Need::UserRead => p.user_readable(),
            Need::UserWrite => p.user_writable(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Need::Present => "any",
            Need::UserRead => "ring-3 read",
            Need::UserWrite => "ring-3 write",
        }
    }
}

fn entry(mem: &GuestMem, table: u64, idx: u64) -> Option<u64> {
    mem.read_plain::<u64>(Gpa(table.checked_add(idx * 8)?)).ok()
}

/// The page that maps `addr`, if any. Rights are the AND of every level's
/// (execute: no level has NX).
pub fn page(mem: &GuestMem, addr: u64) -> Option<Page> {
    // Bits 63..47 must all be equal; the guest only uses the low half.
    if addr >> 47 != 0 {
        return None;
    }
    let mut table = PageTables::ROOT;
    let (mut user, mut write, mut exec) = (true, true, true);
    for shift in [39u32, 30, 21, 12] {
        let e = entry(mem, table, (addr >> shift) & 511)?;
        if e & P == 0 {
            return None;
        }
        user &= e & US != 0;
        write &= e & RW != 0;
        exec &= e & NX == 0;
        let leaf = shift == 12 || (shift == 21 && e & PS != 0);
        // A PS bit above the page directory would be a 1 GiB page, which
        // the monitor never writes: treat the tables as corrupt.
        if shift > 21 && e & PS != 0 {
            return None;
        }
        if leaf {
            let size = if shift == 21 {
                LARGE_PAGE_SIZE
            } else {
                PAGE_SIZE
            };
            let phys = e & ADDR_MASK & !(size - 1);
            return Some(Page {
                start: addr & !(size - 1),
                size,
                phys,
                user,
                write,
                exec,
            });
        }
        table = e & ADDR_MASK;
    }
    None
}

/// Calls `f(addr, gpa, len)` for each page-sized piece of
/// `[addr, addr + len)`, after checking the page allows `need`. Stops at
/// the first refused page.
fn for_each_piece(
    mem: &GuestMem,
    addr: u64,
    len: u64,
    need: Need,
    mut f: impl FnMut(u64, Gpa, u64) -> Result<(), VmemError>,
) -> Result<(), VmemError> {
    let end = addr
        .checked_add(len)
        .ok_or(VmemError::Wraps { addr, len })?;
    let mut a = addr;
    while a < end {
        let p = page(mem, a).ok_or(VmemError::Unmapped(a))?;
        if !need.allows(&p) {
            return Err(VmemError::Denied {
                addr: a,
                need: need.name(),
            });
        }
        let n = (p.end() - a).min(end - a);
        f(a, Gpa(p.phys + (a - p.start)), n)?;
        a += n;
    }
    Ok(())
}

/// Reads `buf.len()` bytes at guest-virtual `addr`; every page must allow
/// `need`. On a refused page, returns how many bytes were read before it
/// with the error.
pub fn read(
    mem: &GuestMem,
    addr: u64,
    buf: &mut [u8],
    need: Need,
) -> Result<(), (usize, VmemError)> {
    let mut done = 0usize;
    for_each_piece(mem, addr, buf.len() as u64, need, |_, gpa, n| {
        let n = n as usize;
        mem.read_bytes(gpa, &mut buf[done..done + n])
            .map_err(|_| VmemError::Unmapped(gpa.0))?;
        done += n;
        Ok(())
    })
    .map_err(|e| (done, e))
}

/// Reads a little-endian `u64` ring 3 could read at `addr`.
pub fn read_u64(mem: &GuestMem, addr: u64) -> Result<u64, VmemError> {
    let mut b = [0u8; 8];
    read(mem, addr, &mut b, Need::UserRead).map_err(|(_, e)| e)?;
    Ok(u64::from_le_bytes(b))
}

/// Writes `data` at guest-virtual `addr`, only where ring 3 could write
/// itself; nothing is written unless every page allows it.
pub fn write(mem: &GuestMem, addr: u64, data: &[u8]) -> Result<(), VmemError> {
    for_each_piece(mem, addr, data.len() as u64, Need::UserWrite, |_, _, _| {
        Ok(())
    })?;
    let mut done = 0usize;
    for_each_piece(
        mem,
        addr,
        data.len() as u64,
        Need::UserWrite,
        |_, gpa, n| {
            let n = n as usize;
            mem.write_bytes(gpa, &data[done..done + n])
                .map_err(|_| VmemError::Unmapped(gpa.0))?;
            done += n;
            Ok(())
        },
    )
}

/// Every present page below the end of guest memory, adjacent pages with
/// the same rights merged into one run (`Page::size` is then the run's
/// length). The walk visits only addresses below `mem.size()` (the guest is
/// identity-mapped), which bounds it even for corrupt tables.
pub fn mapped_runs(mem: &GuestMem) -> Vec<Page> {
    let mut out: Vec<Page> = Vec::new();
    let limit = mem.size();
    let mut a = 0u64;
    while a < limit {
        match page(mem, a) {
            Some(p) => {
                let contiguous = out.last().is_some_and(|l| {
                    l.end() == p.start
                        && l.phys + l.size == p.phys
                        && (l.user, l.write, l.exec) == (p.user, p.write, p.exec)
                });
                if contiguous {
                    out.last_mut().expect("checked").size += p.size;
                } else {
                    out.push(p);
                }
                a = p.end();
            }
            // Unmapped: skip to the next 4 KiB page (a missing table above
            // costs one failed walk per page, at most mem.size() / 4 KiB).
            None => a = (a | (PAGE_SIZE - 1)) + 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::Access;

    #[test]
    fn walks_rights_and_refuses_what_ring3_could_not_do() {
        let mem = GuestMem::new(8 << 20).unwrap();
        let mut pt = PageTables::new(&mem).unwrap();
        pt.map_4k(&mem, 0x1000, 0x2000, Access::Supervisor).unwrap();
        pt.map_4k(&mem, 0x20_0000, 0x20_1000, Access::UserExec)
            .unwrap();
        pt.map_4k(&mem, 0x20_1000, 0x20_3000, Access::UserWrite)
            .unwrap();
        pt.map_2m(&mem, 0x40_0000, 0x60_0000, Access::UserRead)
            .unwrap();

        let text = page(&mem, 0x20_0010).unwrap();
        assert!(text.user_text() && !text.write && text.size == PAGE_SIZE);
        let big = page(&mem, 0x41_2345).unwrap();
        assert_eq!(
            (big.start, big.size, big.phys),
            (0x40_0000, LARGE_PAGE_SIZE, 0x40_0000)
        );
        assert!(big.user && !big.write && !big.exec);
        assert_eq!(page(&mem, 0x3000), None);
        assert_eq!(page(&mem, u64::MAX), None);

        mem.write_bytes(Gpa(0x20_1ffc), &[1, 2, 3, 4, 5, 6, 7, 8])
            .unwrap();
        assert_eq!(read_u64(&mem, 0x20_1ffc).unwrap(), 0x0807_0605_0403_0201);
        // Supervisor pages: a debugger may read them, ring 3 may not.
        let mut b = [0u8; 4];
        assert!(read(&mem, 0x1000, &mut b, Need::Present).is_ok());
        assert!(matches!(
            read(&mem, 0x1000, &mut b, Need::UserRead),
            Err((0, VmemError::Denied { .. }))
        ));
        // A read that runs into an unmapped page says how far it got.
        let mut b = [0u8; 0x20];
        assert_eq!(
            read(&mem, 0x20_2ff0, &mut b, Need::Present),
            Err((0x10, VmemError::Unmapped(0x20_3000)))
        );
        // Writes: only ring-3 writable pages, all or nothing.
        assert!(write(&mem, 0x20_1000, &[9; 16]).is_ok());
        assert!(write(&mem, 0x20_0000, &[9]).is_err());
        assert!(write(&mem, 0x20_2ff8, &[7; 16]).is_err());
        let mut b = [0u8; 8];
        read(&mem, 0x20_2ff8, &mut b, Need::Present).unwrap();
        assert_eq!(b, [0; 8], "a refused write wrote nothing");
        assert!(matches!(
            write(&mem, u64::MAX, &[1, 2]),
            Err(VmemError::Wraps { .. }) | Err(VmemError::Unmapped(_))
        ));

        let runs = mapped_runs(&mem);
        let spans: Vec<(u64, u64)> = runs.iter().map(|p| (p.start, p.end())).collect();
        assert_eq!(
            spans,
            [
                (0x1000, 0x2000),
                (0x20_0000, 0x20_1000),
                (0x20_1000, 0x20_3000),
                (0x40_0000, 0x60_0000)
            ]
        );
    }
}
