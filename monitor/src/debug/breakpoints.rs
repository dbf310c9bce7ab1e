//! Breakpoints the monitor plants for GDB: `int3` bytes patched into the
//! guest's text.
//!
//! The text is read-only to the guest; the monitor writes the `int3`
//! through its own access to guest memory, only into pages ring 3 may
//! execute, and keeps the byte it replaced. Everything that reads guest
//! memory for someone else (GDB's memory reads, core dumps) gets those
//! bytes back through [`SwBreakpoints::unpatch`].

use crate::memory::GuestMem;
use crate::vmem;
use duet_abi::Gpa;
use std::collections::BTreeMap;

/// `int3`.
pub const INT3: u8 = 0xcc;
/// Most software breakpoints at once (GDB asks for a few; a hostile
/// client must not grow the table without bound).
pub const MAX_SW: usize = 4096;

/// Planted `int3`s by address, with the byte each replaced.
#[derive(Debug, Default)]
pub struct SwBreakpoints {
    planted: BTreeMap<u64, u8>,
}

impl SwBreakpoints {
    /// Plants an `int3` at `addr`, which must be in ring-3 text. `Ok(false)`
    /// when the table is full.
    pub fn insert(&mut self, mem: &GuestMem, addr: u64) -> Result<bool, String> {
        if self.planted.contains_key(&addr) {
            return Ok(true);
        }
        if self.planted.len() >= MAX_SW {
            return Ok(false);
        }
        let page = vmem::page(mem, addr).ok_or_else(|| format!("{addr:#x} is not mapped"))?;
        if !page.user_text() {
            return Err(format!(
                "{addr:#x} is not in the guest's text; software breakpoints go on instructions"
            ));
        }
        let gpa = Gpa(page.phys + (addr - page.start));
        let mut orig = [0u8];
        mem.read_bytes(gpa, &mut orig).map_err(|e| e.to_string())?;
        mem.write_bytes(gpa, &[INT3]).map_err(|e| e.to_string())?;
        self.planted.insert(addr, orig[0]);
        Ok(true)
    }

    /// Puts back the byte at `addr`; `false` if no breakpoint is there.
    pub fn remove(&mut self, mem: &GuestMem, addr: u64) -> bool {
        let Some(orig) = self.planted.remove(&addr) else {
            return false;
        };
        // Mapped when planted; the monitor never unmaps text.
        if let Some(p) = vmem::page(mem, addr) {
            let _ = mem.write_bytes(Gpa(p.phys + (addr - p.start)), &[orig]);
        }
        true
    }

    /// Removes every breakpoint.
    pub fn clear(&mut self, mem: &GuestMem) {
        let addrs: Vec<u64> = self.planted.keys().copied().collect();
        for a in addrs {
            self.remove(mem, a);
        }
    }

    /// Puts the original bytes back (`false`) or the `int3`s again
    /// (`true`), keeping the table: for a snapshot, which must not keep them.
    pub fn set_planted(&self, mem: &GuestMem, planted: bool) {
        for (&a, &orig) in &self.planted {
            if let Some(p) = vmem::page(mem, a) {
                let b = if planted { INT3 } else { orig };
                let _ = mem.write_bytes(Gpa(p.phys + (a - p.start)), &[b]);
            }
        }
    }

    /// Whether an `int3` of ours is at `addr`.
    pub fn contains(&self, addr: u64) -> bool {
        self.planted.contains_key(&addr)
    }

    /// Replaces our `int3`s in `buf` (guest bytes from `addr` on) with the
    /// bytes they hide.
    pub fn unpatch(&self, addr: u64, buf: &mut [u8]) {
        let Some(end) = addr.checked_add(buf.len() as u64) else {
            return;
        };
        for (&a, &orig) in self.planted.range(addr..end) {
            buf[(a - addr) as usize] = orig;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::{Access, PageTables};

    #[test]
    fn plants_only_in_text_and_hides_itself() {
        let mem = GuestMem::new(8 << 20).unwrap();
        let mut pt = PageTables::new(&mem).unwrap();
        pt.map_4k(&mem, 0x20_0000, 0x20_1000, Access::UserExec)
            .unwrap();
        pt.map_4k(&mem, 0x20_1000, 0x20_2000, Access::UserWrite)
            .unwrap();
        mem.write_bytes(Gpa(0x20_0010), &[0x55, 0x48, 0x89])
            .unwrap();
        let mut bps = SwBreakpoints::default();
        assert_eq!(bps.insert(&mem, 0x20_0011), Ok(true));
        assert_eq!(bps.insert(&mem, 0x20_0011), Ok(true));
        assert!(bps
            .insert(&mem, 0x20_1000)
            .unwrap_err()
            .contains("not in the guest's text"));
        assert!(bps
            .insert(&mem, 0x30_0000)
            .unwrap_err()
            .contains("not mapped"));
        let mut b = [0u8; 3];
        mem.read_bytes(Gpa(0x20_0010), &mut b).unwrap();
        assert_eq!(b, [0x55, INT3, 0x89]);
        bps.unpatch(0x20_0010, &mut b);
        assert_eq!(b, [0x55, 0x48, 0x89]);
        bps.unpatch(u64::MAX - 1, &mut b);
        bps.set_planted(&mem, false);
        mem.read_bytes(Gpa(0x20_0010), &mut b).unwrap();
        assert_eq!(b, [0x55, 0x48, 0x89]);
        bps.set_planted(&mem, true);
        mem.read_bytes(Gpa(0x20_0010), &mut b).unwrap();
        assert_eq!(b, [0x55, INT3, 0x89]);
        assert!(bps.remove(&mem, 0x20_0011));
        assert!(!bps.remove(&mem, 0x20_0011));
        mem.read_bytes(Gpa(0x20_0010), &mut b).unwrap();
        assert_eq!(b, [0x55, 0x48, 0x89]);
    }
}
