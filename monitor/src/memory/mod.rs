//! Guest memory: one mapping registered as KVM memory slot 0, and the
//! bounds-checked accessors every hypercall goes through.
//!
//! The monitor never holds a Rust reference into guest memory: every access
//! is a checked volatile copy (vm-memory) or hands the kernel a checked
//! range, so a hostile guest can at worst get an error.
//!
//! The bottom layer of the monitor: nothing here knows about snapshots,
//! migrations or devices. [`dirty`] tracks the monitor's own writes (for a
//! migration's dirty set), [`resident`] finds populated pages, [`mapping`]
//! holds mappings the monitor builds itself (a restored guest).

mod access;
pub mod dirty;
mod fileio;
pub mod mapping;
mod persist;
pub mod resident;
pub mod shared;

pub use dirty::{DirtySet, HostDirty};
pub use fileio::{FileIo, Frame};
pub use mapping::Mapping;
pub use persist::{Backing, MemState};
pub use shared::{IoMem, Writable};

use duet_abi::Gpa;
use std::sync::Arc;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// A bad guest access.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum MemError {
    /// The range is not inside guest memory (or its end overflows).
    #[error("guest range {gpa:#x}+{len:#x} lies outside guest memory")]
    OutOfRange {
        /// Start.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// The range is inside guest memory but the guest may not have the
    /// monitor write there (monitor-owned pages, the image's text).
    #[error("guest range {gpa:#x}+{len:#x} is not writable by the guest")]
    NotWritable {
        /// Start.
        gpa: u64,
        /// Length.
        len: u64,
    },
}

impl From<MemError> for duet_abi::hypercall::Error {
    fn from(_: MemError) -> Self {
        duet_abi::hypercall::Error::Fault
    }
}

/// Guest memory plus the ranges the guest may have the monitor write into.
pub struct GuestMem {
    mem: GuestMemoryMmap<()>,
    size: u64,
    /// Sorted, non-overlapping, non-adjacent `[start, end)` ranges of
    /// guest-writable memory (a binary search checks a buffer).
    writable: Vec<(u64, u64)>,
    /// Ranges backed by a snapshot's memory file (populated even when not
    /// resident), sorted.
    file_ranges: Vec<(u64, u64)>,
    /// Our own mapping when vm-memory does not own it (a restore); shared
    /// with readers ([`GuestMem::reader`]) so it outlives them. Declared
    /// after `mem`, so it is unmapped after it.
    mapping: Option<Arc<Mapping>>,
    /// Pages the monitor writes while a migration tracks them.
    host_dirty: Arc<HostDirty>,
    /// `writable` as published to I/O threads ([`IoMem`]).
    shared_writable: shared::SharedRanges,
}

/// A read-only view of guest memory for another thread (a migration's
/// sender): reads race with the guest, which only changes what is read.
#[derive(Clone)]
pub struct MemReader {
    mem: GuestMemoryMmap<()>,
    size: u64,
    _mapping: Option<Arc<Mapping>>,
}

impl MemReader {
    /// Guest memory size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Copies `buf.len()` bytes at `gpa` into `buf`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let bad = MemError::OutOfRange {
            gpa,
            len: buf.len() as u64,
        };
        match gpa.checked_add(buf.len() as u64) {
            Some(end) if end <= self.size => {}
            _ => return Err(bad),
        }
        self.mem.read_slice(buf, GuestAddress(gpa)).map_err(|_| bad)
    }
}

impl GuestMem {
    /// Maps `size` bytes of zeroed anonymous memory at guest address 0.
    pub fn new(size: u64) -> std::io::Result<Self> {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)]).map_err(
            |e| std::io::Error::other(format!("cannot map {size} bytes of guest memory: {e}")),
        )?;
        Ok(GuestMem {
            mem,
            size,
            writable: Vec::new(),
            file_ranges: Vec::new(),
            mapping: None,
            host_dirty: Default::default(),
            shared_writable: Default::default(),
        })
    }

    /// Wraps a mapping the monitor built (a restore): `file_ranges` are
    /// backed by a snapshot's memory file.
    pub fn from_mapping(mapping: Mapping, file_ranges: Vec<(u64, u64)>) -> std::io::Result<Self> {
        let size = mapping.len() as u64;
        // SAFETY: `mapping` is a live read/write private mapping of `size`
        // bytes that this `GuestMem` (and every reader) keeps alive through
        // the `Arc` below, unmapping it only after `mem`.
        let region = unsafe {
            vm_memory::MmapRegion::<()>::build_raw(
                mapping.ptr(),
                mapping.len(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE,
            )
        }
        .map_err(|e| std::io::Error::other(format!("cannot wrap guest memory: {e}")))?;
        let region = vm_memory::GuestRegionMmap::new(region, GuestAddress(0))
            .ok_or_else(|| std::io::Error::other("guest memory region overflows"))?;
        let mem = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| std::io::Error::other(format!("cannot build guest memory: {e}")))?;
        Ok(GuestMem {
            mem,
            size,
            writable: Vec::new(),
            file_ranges,
            mapping: Some(Arc::new(mapping)),
            host_dirty: Default::default(),
            shared_writable: Default::default(),
        })
    }

    /// A view for reading guest memory from another thread.
    pub fn reader(&self) -> MemReader {
        MemReader {
            mem: self.mem.clone(),
            size: self.size,
            _mapping: self.mapping.clone(),
        }
    }

    /// The guest-writable ranges.
    pub fn writable(&self) -> &[(u64, u64)] {
        &self.writable
    }

    /// Ranges backed by a snapshot's memory file.
    pub fn file_ranges(&self) -> &[(u64, u64)] {
        &self.file_ranges
    }

    /// The monitor's own writes, for a migration's dirty set.
    pub fn host_dirty(&self) -> &Arc<HostDirty> {
        &self.host_dirty
    }

    /// Bytes of guest memory the host has populated (resident pages).
    pub fn resident_bytes(&self) -> u64 {
        let mut n = 0;
        let _ = resident::for_each_resident(self, |_, pages| {
            n += pages;
            Ok(())
        });
        n * duet_abi::PAGE_SIZE
    }

    /// Guest memory size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The vm-memory object (bulk transfers within this module, and a
    /// migration destination filling memory).
    pub(crate) fn inner(&self) -> &GuestMemoryMmap<()> {
        &self.mem
    }

    /// Host address of guest address 0 (slot registration only).
    pub fn host_base(&self) -> u64 {
        let region = self.mem.iter().next().expect("one region");
        region.as_ptr() as u64
    }

    /// The KVM memory slot covering guest memory, with `flags`
    /// (`KVM_MEM_LOG_DIRTY_PAGES` while a migration runs).
    pub fn slot(&self, flags: u32) -> kvm_bindings::kvm_userspace_memory_region {
        kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            flags,
            guest_phys_addr: 0,
            memory_size: self.size,
            userspace_addr: self.host_base(),
        }
    }

    /// Makes KVM forget the translations it holds for `[gpa, gpa + len)`.
    ///
    /// The monitor edits guest page tables from the host side, which KVM
    /// does not see, so a weakened PTE could stay cached. Briefly making the
    /// host pages read-only (and back) runs the kernel's MMU notifiers, and
    /// KVM drops exactly its mappings of those pages; the next guest access
    /// walks the new tables.
    pub fn invalidate_translations(&self, gpa: Gpa, len: u64) -> std::io::Result<()> {
        self.check(gpa, len).map_err(std::io::Error::other)?;
        let host = (self.host_base() + gpa.0) as *mut libc::c_void;
        for prot in [libc::PROT_READ, libc::PROT_READ | libc::PROT_WRITE] {
            // SAFETY: the range is inside our own mapping (checked above);
            // the vCPU is stopped and nothing else writes guest memory between
            // the two calls, the second of which restores the mapping's
            // original protection.
            if unsafe { libc::mprotect(host, len as usize, prot) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Declares the ranges the guest may have the monitor write into.
    pub fn set_writable(&mut self, mut ranges: Vec<(u64, u64)>) {
        ranges.retain(|&(s, e)| s < e);
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (s, e) in ranges {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        *self
            .shared_writable
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(merged.clone());
        self.writable = merged;
    }

    /// A handle for a device's I/O thread.
    pub fn io_mem(&self) -> IoMem {
        IoMem::new(self)
    }

    /// Drops the host pages behind `[gpa, gpa + len)`: the guest reads
    /// zeros there afterwards and the host's RSS shrinks. Pages a snapshot's
    /// memory file backs are replaced by fresh zero pages (`MADV_DONTNEED`
    /// would bring the file's bytes back).
    pub fn discard(&mut self, gpa: Gpa, len: u64) -> std::io::Result<()> {
        self.check(gpa, len).map_err(std::io::Error::other)?;
        let (start, end) = (gpa.0, gpa.0 + len);
        if let Some(m) = &self.mapping {
            let mut kept = Vec::with_capacity(self.file_ranges.len() + 1);
            for &(s, e) in &self.file_ranges {
                let (a, b) = (s.max(start), e.min(end));
                if a < b {
                    m.zero(a as usize, (b - a) as usize)?;
                }
                if s < start {
                    kept.push((s, e.min(start)));
                }
                if e > end {
                    kept.push((s.max(end), e));
                }
            }
            self.file_ranges = kept;
        }
        let host = self.host_base() + gpa.0;
        // SAFETY: the range is inside our own mapping (checked above);
        // MADV_DONTNEED on anonymous private pages replaces them with zero pages.
        let rc =
            unsafe { libc::madvise(host as *mut libc::c_void, len as usize, libc::MADV_DONTNEED) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The pages now read as zero: a migration must send them again.
        self.host_dirty.mark(gpa.0, len as usize);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_ranges_merge_and_check_by_binary_search() {
        let mut mem = GuestMem::new(4 << 20).unwrap();
        mem.set_writable(vec![
            (0x3000, 0x4000),
            (0x1000, 0x2000),
            (0x2000, 0x2800),
            (0, 0),
        ]);
        assert_eq!(mem.writable(), &[(0x1000, 0x2800), (0x3000, 0x4000)]);
        assert!(mem.check_writable(Gpa(0x1ff0), 0x20).is_ok());
        assert!(mem.check_writable(Gpa(0x27f0), 0x20).is_err());
        assert!(mem.check_writable(Gpa(0x3000), 0x1000).is_ok());
        assert!(mem.check_writable(Gpa(0x0fff), 2).is_err());
        assert!(mem.check_writable(Gpa(0x5000), 1).is_err());
        assert!(mem.check_writable(Gpa(u64::MAX), 2).is_err());
    }

    #[test]
    fn discarded_file_backed_pages_read_as_zero() {
        let dir = std::env::temp_dir().join(format!("duet-discard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pages");
        std::fs::write(&path, vec![0xabu8; 0x4000]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let m = Mapping::anonymous(4 << 20).unwrap();
        m.map_file(0x10000, 0x4000, &file, 0).unwrap();
        let mut mem = GuestMem::from_mapping(m, vec![(0x10000, 0x14000)]).unwrap();
        let mut b = [0u8; 4];
        mem.read_bytes(Gpa(0x11000), &mut b).unwrap();
        assert_eq!(b, [0xab; 4]);
        mem.discard(Gpa(0x11000), 0x2000).unwrap();
        mem.read_bytes(Gpa(0x11000), &mut b).unwrap();
        assert_eq!(b, [0; 4], "a released page came back with the file's bytes");
        mem.read_bytes(Gpa(0x12ffc), &mut b).unwrap();
        assert_eq!(b, [0; 4]);
        mem.read_bytes(Gpa(0x13000), &mut b).unwrap();
        assert_eq!(b, [0xab; 4]);
        assert_eq!(mem.file_ranges(), &[(0x10000, 0x11000), (0x13000, 0x14000)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
