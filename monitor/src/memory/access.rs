//! The bounds-checked accessors every hypercall goes through: a range
//! check (overflow included), the guest-writable check, and volatile copies.

use super::{GuestMem, MemError};
use duet_abi::{Gpa, Plain};
use std::mem::{size_of, MaybeUninit};
use vm_memory::{Bytes, GuestAddress};

impl GuestMem {
    /// Checks `[gpa, gpa + len)` lies in guest memory (overflow included).
    #[inline]
    pub fn check(&self, gpa: Gpa, len: u64) -> Result<(), MemError> {
        match gpa.0.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(MemError::OutOfRange { gpa: gpa.0, len }),
        }
    }

    /// Checks `[gpa, gpa + len)` lies in one guest-writable range
    /// (O(log ranges)).
    #[inline]
    pub fn check_writable(&self, gpa: Gpa, len: u64) -> Result<(), MemError> {
        self.check(gpa, len)?;
        let end = gpa.0 + len;
        let i = self.writable.partition_point(|&(s, _)| s <= gpa.0);
        match i.checked_sub(1).map(|i| self.writable[i]) {
            Some((_, e)) if end <= e => Ok(()),
            _ => Err(MemError::NotWritable { gpa: gpa.0, len }),
        }
    }

    /// Reads a plain ABI struct.
    #[inline]
    pub fn read_plain<T: Plain>(&self, gpa: Gpa) -> Result<T, MemError> {
        let len = size_of::<T>();
        self.check(gpa, len as u64)?;
        let mut v = MaybeUninit::<T>::zeroed();
        // SAFETY: `T: Plain` has no padding and accepts any bit pattern, and the
        // zeroed `MaybeUninit` is `len` initialized bytes we own.
        let bytes = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), len) };
        self.mem
            .read_slice(bytes, GuestAddress(gpa.0))
            .map_err(|_| MemError::OutOfRange {
                gpa: gpa.0,
                len: len as u64,
            })?;
        // SAFETY: every byte was written by `read_slice`, and any pattern is a valid `T`.
        Ok(unsafe { v.assume_init() })
    }

    /// Writes a plain ABI struct into guest-writable memory.
    #[inline]
    pub fn write_plain<T: Plain>(&self, gpa: Gpa, v: &T) -> Result<(), MemError> {
        self.check_writable(gpa, size_of::<T>() as u64)?;
        self.write_monitor_plain(gpa, v)
    }

    /// Writes a plain struct anywhere in guest memory (monitor-owned pages
    /// included): for the monitor's own structures.
    pub fn write_monitor_plain<T: Plain>(&self, gpa: Gpa, v: &T) -> Result<(), MemError> {
        let len = size_of::<T>();
        // SAFETY: `T: Plain` has no padding bytes, so all `len` bytes are initialized.
        let bytes = unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), len) };
        self.write_bytes(gpa, bytes)
    }

    /// Writes bytes anywhere in guest memory (monitor use only).
    pub fn write_bytes(&self, gpa: Gpa, bytes: &[u8]) -> Result<(), MemError> {
        self.check(gpa, bytes.len() as u64)?;
        let r = self
            .mem
            .write_slice(bytes, GuestAddress(gpa.0))
            .map_err(|_| MemError::OutOfRange {
                gpa: gpa.0,
                len: bytes.len() as u64,
            });
        // After the write: a migration that takes the mark then reads the
        // page must see the new bytes.
        self.host_dirty.mark(gpa.0, bytes.len());
        r
    }

    /// Reads bytes into `buf`.
    pub fn read_bytes(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), MemError> {
        self.check(gpa, buf.len() as u64)?;
        self.mem
            .read_slice(buf, GuestAddress(gpa.0))
            .map_err(|_| MemError::OutOfRange {
                gpa: gpa.0,
                len: buf.len() as u64,
            })
    }

    /// Copies `len` guest bytes at `gpa` into `w` (volatile reads, no
    /// reference into guest memory). Returns the writer's own error inside.
    pub fn write_to<W: vm_memory::WriteVolatile>(
        &self,
        gpa: Gpa,
        len: u64,
        w: &mut W,
    ) -> Result<std::io::Result<()>, MemError> {
        self.check(gpa, len)?;
        Ok(self
            .mem
            .write_all_volatile_to(GuestAddress(gpa.0), w, len as usize)
            .map_err(std::io::Error::other))
    }
}
