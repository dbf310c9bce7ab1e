//! Guest memory for the I/O threads of virtio devices: the same checked
//! access as [`GuestMem`], usable from another thread. Every write the
//! thread makes is marked in the migration's [`HostDirty`] set (KVM's dirty
//! log sees only the guest's own writes), and buffers the device fills must
//! lie in the guest-writable ranges as they are now (the heap grows and
//! pages change protection while the thread runs).

use super::{GuestMem, HostDirty, Mapping, MemError};
use std::sync::{Arc, RwLock};
use vm_memory::GuestMemoryMmap;

/// The guest-writable ranges, republished by [`GuestMem::set_writable`].
pub type SharedRanges = Arc<RwLock<Arc<Vec<(u64, u64)>>>>;

/// A thread's handle on guest memory.
#[derive(Clone)]
pub struct IoMem {
    mem: GuestMemoryMmap<()>,
    size: u64,
    base: u64,
    writable: SharedRanges,
    dirty: Arc<HostDirty>,
    _mapping: Option<Arc<Mapping>>,
}

/// The writable ranges at one moment (taken once per batch of requests).
pub struct Writable(Arc<Vec<(u64, u64)>>);

impl Writable {
    /// Whether `[gpa, gpa + len)` lies in one guest-writable range.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        let i = self.0.partition_point(|&(s, _)| s <= gpa);
        matches!(i.checked_sub(1).map(|i| self.0[i]), Some((_, e)) if end <= e)
    }
}

impl IoMem {
    pub(super) fn new(m: &GuestMem) -> IoMem {
        IoMem {
            mem: m.mem.clone(),
            size: m.size,
            base: m.host_base(),
            writable: m.shared_writable.clone(),
            dirty: m.host_dirty.clone(),
            _mapping: m.mapping.clone(),
        }
    }

    /// The vm-memory object (for virtio-queue).
    pub fn inner(&self) -> &GuestMemoryMmap<()> {
        &self.mem
    }

    /// The writable ranges now.
    pub fn writable(&self) -> Writable {
        Writable(
            self.writable
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }

    /// Checks `[gpa, gpa + len)` lies in guest memory (overflow included).
    pub fn check(&self, gpa: u64, len: u64) -> Result<(), MemError> {
        match gpa.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(MemError::OutOfRange { gpa, len }),
        }
    }

    /// The host address of `gpa`, for an iovec handed to the kernel.
    /// Only after [`IoMem::check`] of the whole range (the pointer is never
    /// dereferenced by the monitor itself).
    pub fn host_addr(&self, gpa: u64) -> *mut libc::c_void {
        (self.base + gpa) as *mut libc::c_void
    }

    /// Records a device write of `len` bytes at `gpa`, after it happened.
    #[inline]
    pub fn mark(&self, gpa: u64, len: u64) {
        self.dirty.mark(gpa, len as usize);
    }

    /// Writes `bytes` at `gpa` (a checked volatile copy) and marks them.
    pub fn write(&self, gpa: u64, bytes: &[u8]) -> Result<(), MemError> {
        use vm_memory::Bytes;
        self.check(gpa, bytes.len() as u64)?;
        let r = self
            .mem
            .write_slice(bytes, vm_memory::GuestAddress(gpa))
            .map_err(|_| MemError::OutOfRange {
                gpa,
                len: bytes.len() as u64,
            });
        self.mark(gpa, bytes.len() as u64);
        r
    }
}
