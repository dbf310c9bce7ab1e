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
    /// Ranges mapped from a snapshot's memory file (populated even when
    /// not resident).
    file_ranges: Vec<(u64, u64)>,
    /// Our own mapping when vm-memory does not own it (restore); dropped
    /// after `mem`.
    _mapping: Option<crate::snapshot::memfile::Mapping>,
    /// Pages the monitor writes while a migration tracks them.
    pub(crate) host_dirty: std::sync::Arc<crate::migration::dirty::HostDirty>,
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
            _mapping: None,
            host_dirty: Default::default(),
        })
    }

    /// Wraps a mapping built by a restore: `file_ranges` are backed by the
    /// snapshot's memory file.
    pub(crate) fn from_mapping(
        mapping: crate::snapshot::memfile::Mapping,
        file_ranges: Vec<(u64, u64)>,
    ) -> std::io::Result<Self> {
        let size = mapping.len() as u64;
        // SAFETY: `mapping` is a live read/write private mapping of `size`
        // bytes that this `GuestMem` keeps (and unmaps only after `mem`).
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
            _mapping: Some(mapping),
            host_dirty: Default::default(),
        })
    }

    /// The guest-writable ranges.
    pub fn writable(&self) -> &[(u64, u64)] {
        &self.writable
    }

    /// Ranges backed by a snapshot's memory file.
    pub fn file_ranges(&self) -> &[(u64, u64)] {
        &self.file_ranges
    }

    /// Bytes of guest memory the host has populated (resident pages).
    pub fn resident_bytes(&self) -> u64 {
        let mut n = 0;
        let _ = crate::snapshot::memfile::for_each_resident(self, |_, pages| {
            n += pages;
            Ok(())
        });
        n * duet_abi::PAGE_SIZE
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

    /// The KVM memory slot covering guest memory.
    pub fn slot(&self) -> kvm_bindings::kvm_userspace_memory_region {
        kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
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
            // SAFETY: the range is inside our own anonymous mapping (checked
            // above); the vCPU is stopped and nothing else writes guest memory
            // between the two calls, the second of which restores the mapping's
            // original protection.
            if unsafe { libc::mprotect(host, len as usize, prot) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
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

    /// Drops the host pages behind `[gpa, gpa + len)` (`MADV_DONTNEED`): the
    /// guest reads zeros there afterwards and the host's RSS shrinks.
    pub fn discard(&self, gpa: Gpa, len: u64) -> std::io::Result<()> {
        self.check(gpa, len).map_err(std::io::Error::other)?;
        let host = self.host_base() + gpa.0;
        // SAFETY: the range is inside our own anonymous mapping (checked
        // above); MADV_DONTNEED on it only replaces its pages with zero pages.
        let rc =
            unsafe { libc::madvise(host as *mut libc::c_void, len as usize, libc::MADV_DONTNEED) };
        if rc == 0 {
            // The pages now read as zero: a migration must send them again.
            self.host_dirty.mark(gpa.0, len as usize);
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
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
        if n > 0 {
            // Written behind KVM's back: tell a migration's dirty log.
            self.host_dirty.mark(gpa.0, n as usize);
        }
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

    /// Positional I/O between the host file `fd` and guest memory, with no
    /// copy through the monitor: `preadv`/`pwritev` from byte `offset` of the
    /// file into (or out of) the guest ranges `segs`, in order, as if they
    /// were one buffer.
    ///
    /// Every range is checked first (a read into the guest needs
    /// guest-writable memory). Returns the bytes moved, fewer than asked
    /// only when a read hits the end of the file; a host error is the inner
    /// `Err`.
    pub fn file_io(
        &self,
        dir: FileIo,
        fd: BorrowedFd<'_>,
        offset: u64,
        segs: &[(Gpa, u64)],
    ) -> Result<std::io::Result<u64>, MemError> {
        let mut iov = Vec::with_capacity(segs.len());
        for &(gpa, len) in segs {
            match dir {
                FileIo::Read => self.check_writable(gpa, len)?,
                FileIo::Write => self.check(gpa, len)?,
            }
            if len == 0 {
                continue;
            }
            let slice = self
                .mem
                .get_slice(GuestAddress(gpa.0), len as usize)
                .map_err(|_| MemError::OutOfRange { gpa: gpa.0, len })?;
            iov.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
        let moved = transfer(dir, fd, offset, &mut iov);
        if dir == FileIo::Read {
            // The kernel wrote guest memory behind KVM's back: a migration's
            // dirty log must hear of it.
            for &(gpa, len) in segs {
                self.host_dirty.mark(gpa.0, len as usize);
            }
        }
        Ok(moved)
    }
}

/// Which way [`GuestMem::file_io`] moves bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileIo {
    /// From the file into guest memory.
    Read,
    /// From guest memory into the file.
    Write,
}

/// Runs `preadv`/`pwritev` until `iov` is consumed (or a read hits EOF).
fn transfer(
    dir: FileIo,
    fd: BorrowedFd<'_>,
    mut offset: u64,
    mut iov: &mut [libc::iovec],
) -> std::io::Result<u64> {
    let mut done = 0u64;
    while !iov.is_empty() {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let cnt = iov.len().min(1024) as libc::c_int;
        // SAFETY: every iovec points into our own guest mapping, checked above
        // to hold its whole length; the mapping outlives this call and the
        // monitor holds no Rust reference into it, so the kernel may read or
        // write those bytes.
        let n = unsafe {
            match dir {
                FileIo::Read => libc::preadv(fd.as_raw_fd(), iov.as_ptr(), cnt, off),
                FileIo::Write => libc::pwritev(fd.as_raw_fd(), iov.as_ptr(), cnt, off),
            }
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            if dir == FileIo::Write {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            break;
        }
        let mut n = n as usize;
        done += n as u64;
        offset += n as u64;
        // Drop the iovecs that are complete and trim the partial one.
        while let Some(first) = iov.first_mut() {
            if n < first.iov_len {
                // SAFETY: `n < iov_len`, so the new base stays inside the range.
                first.iov_base = unsafe { first.iov_base.cast::<u8>().add(n) }.cast();
                first.iov_len -= n;
                break;
            }
            n -= first.iov_len;
            iov = &mut std::mem::take(&mut iov)[1..];
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};
    use std::os::fd::AsFd;

    #[test]
    fn file_io_scatters_and_gathers_and_checks_ranges() {
        let mut mem = GuestMem::new(4 << 20).unwrap();
        mem.set_writable(vec![(0x10000, 0x20000)]);
        let path = std::env::temp_dir().join(format!("duet-fileio-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        mem.write_bytes(Gpa(0x1000), &[1; 100]).unwrap();
        mem.write_bytes(Gpa(0x3000), &[2; 50]).unwrap();
        let segs = [(Gpa(0x1000), 100), (Gpa(0x3000), 50)];
        let n = mem
            .file_io(FileIo::Write, f.as_fd(), 10, &segs)
            .unwrap()
            .unwrap();
        assert_eq!(n, 150);
        f.seek(std::io::SeekFrom::End(0)).unwrap();
        f.write_all(&[0; 10]).unwrap();
        // Read back split differently, into guest-writable memory.
        let back = [(Gpa(0x10000), 60), (Gpa(0x18000), 100)];
        let n = mem
            .file_io(FileIo::Read, f.as_fd(), 0, &back)
            .unwrap()
            .unwrap();
        assert_eq!(n, 160);
        let mut a = [0u8; 60];
        let mut b = [0u8; 100];
        mem.read_bytes(Gpa(0x10000), &mut a).unwrap();
        mem.read_bytes(Gpa(0x18000), &mut b).unwrap();
        assert_eq!(&a[..10], &[0; 10]);
        assert_eq!(&a[10..], &[1; 50]);
        assert_eq!(&b[..50], &[1; 50]);
        assert_eq!(&b[50..], &[2; 50]);
        // Reads into non-writable memory and ranges past the end are refused.
        let bad = mem.file_io(FileIo::Read, f.as_fd(), 0, &[(Gpa(0x1000), 10)]);
        assert!(matches!(bad, Err(MemError::NotWritable { .. })));
        let bad = mem.file_io(FileIo::Write, f.as_fd(), 0, &[(Gpa(u64::MAX), 2)]);
        assert!(matches!(bad, Err(MemError::OutOfRange { .. })));
        // A read past the end of the file (170 bytes) comes up short.
        let n = mem
            .file_io(FileIo::Read, f.as_fd(), 150, &back)
            .unwrap()
            .unwrap();
        assert_eq!(n, 20);
        drop(f);
        let _ = std::fs::remove_file(path);
    }
}
