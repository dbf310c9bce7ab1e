//! Guest memory: one anonymous mapping registered as KVM memory slot 0, and
//! the bounds-checked accessors every hypercall goes through.
//!
//! The monitor never holds a reference into guest memory: every access is a
//! checked copy (vm-memory), so a hostile guest can at worst get an error.

use duet_abi::{Gpa, Plain};
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd};
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
    /// Sorted, non-overlapping `[start, end)` ranges of guest-writable memory.
    writable: Vec<(u64, u64)>,
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
        })
    }

    /// Guest memory size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The vm-memory object (for KVM slot registration and bulk I/O).
    pub fn inner(&self) -> &GuestMemoryMmap<()> {
        &self.mem
    }

    /// Host address of guest address 0 (slot registration only).
    pub fn host_base(&self) -> u64 {
        let region = self.mem.iter().next().expect("one region");
        region.as_ptr() as u64
    }

    /// Declares the ranges the guest may have the monitor write into.
    pub fn set_writable(&mut self, mut ranges: Vec<(u64, u64)>) {
        ranges.sort_unstable();
        self.writable = ranges;
    }

    /// Checks `[gpa, gpa + len)` lies in guest memory (overflow included).
    #[inline]
    pub fn check(&self, gpa: Gpa, len: u64) -> Result<(), MemError> {
        match gpa.0.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(MemError::OutOfRange { gpa: gpa.0, len }),
        }
    }

    /// Checks `[gpa, gpa + len)` lies in one guest-writable range.
    #[inline]
    pub fn check_writable(&self, gpa: Gpa, len: u64) -> Result<(), MemError> {
        self.check(gpa, len)?;
        let end = gpa.0 + len;
        // A handful of ranges: a linear scan beats anything clever.
        if self.writable.iter().any(|&(s, e)| gpa.0 >= s && end <= e) {
            Ok(())
        } else {
            Err(MemError::NotWritable { gpa: gpa.0, len })
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
        self.write_plain_unchecked_policy(gpa, v)
    }

    /// Writes a plain struct anywhere in guest memory (monitor-owned pages
    /// included): for the monitor's own boot-time structures.
    pub fn write_plain_unchecked_policy<T: Plain>(&self, gpa: Gpa, v: &T) -> Result<(), MemError> {
        let len = size_of::<T>();
        // SAFETY: `T: Plain` has no padding bytes, so all `len` bytes are initialized.
        let bytes = unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), len) };
        self.write_bytes(gpa, bytes)
    }

    /// Writes bytes anywhere in guest memory (monitor use only).
    pub fn write_bytes(&self, gpa: Gpa, bytes: &[u8]) -> Result<(), MemError> {
        self.check(gpa, bytes.len() as u64)?;
        self.mem
            .write_slice(bytes, GuestAddress(gpa.0))
            .map_err(|_| MemError::OutOfRange {
                gpa: gpa.0,
                len: bytes.len() as u64,
            })
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

    /// Copies `len` guest bytes at `gpa` into `w` without an intermediate buffer.
    pub fn write_to<W: std::io::Write>(
        &self,
        gpa: Gpa,
        len: u64,
        w: &mut W,
    ) -> Result<std::io::Result<()>, MemError> {
        self.check(gpa, len)?;
        let slice = self
            .mem
            .get_slice(GuestAddress(gpa.0), len as usize)
            .map_err(|_| MemError::OutOfRange { gpa: gpa.0, len })?;
        // SAFETY: the slice is inside our own mapping, which lives as long as
        // `self`; the guest may change the bytes concurrently, which only
        // changes what is written.
        let bytes = unsafe { std::slice::from_raw_parts(slice.ptr_guard().as_ptr(), slice.len()) };
        Ok(w.write_all(bytes))
    }

    /// Reads once from `fd` (one `read(2)`) straight into the guest range
    /// `[gpa, gpa + len)`, which must be guest-writable. Returns the byte
    /// count `read(2)` returned; no bytes pass through a monitor buffer.
    pub fn read_from_fd(
        &self,
        gpa: Gpa,
        len: u64,
        fd: BorrowedFd<'_>,
    ) -> Result<std::io::Result<usize>, MemError> {
        self.check_writable(gpa, len)?;
        let slice = self
            .mem
            .get_slice(GuestAddress(gpa.0), len as usize)
            .map_err(|_| MemError::OutOfRange { gpa: gpa.0, len })?;
        let guard = slice.ptr_guard_mut();
        // SAFETY: the range was checked to lie in our own mapping, which
        // outlives this call; the kernel writes at most `len` bytes there and
        // no Rust reference to those bytes exists.
        let n = unsafe { libc::read(fd.as_raw_fd(), guard.as_ptr().cast(), slice.len()) };
        Ok(if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        })
    }

    /// Writes the guest range `[gpa, gpa + len)` to `fd` with one
    /// `write(2)`, without an intermediate copy. Returns the byte count
    /// `write(2)` returned.
    pub fn write_to_fd(
        &self,
        gpa: Gpa,
        len: u64,
        fd: BorrowedFd<'_>,
    ) -> Result<std::io::Result<usize>, MemError> {
        self.check(gpa, len)?;
        let slice = self
            .mem
            .get_slice(GuestAddress(gpa.0), len as usize)
            .map_err(|_| MemError::OutOfRange { gpa: gpa.0, len })?;
        let guard = slice.ptr_guard();
        // SAFETY: the range was checked to lie in our own mapping, which
        // outlives this call; the kernel only reads it. The guest may change
        // the bytes meanwhile, which only changes what is sent.
        let n = unsafe { libc::write(fd.as_raw_fd(), guard.as_ptr().cast(), slice.len()) };
        Ok(if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        })
    }
}
