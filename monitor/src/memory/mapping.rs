//! Host mappings the monitor owns itself (rather than vm-memory): guest
//! memory rebuilt from a snapshot's memory file, whose ranges are private
//! copy-on-write mappings of that file laid over an anonymous mapping.

use std::fs::File;
use std::os::fd::AsRawFd;

/// A private mapping we own (unmapped on drop).
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; every access goes through vm-memory's
// volatile accessors or the kernel (mmap, madvise), never a Rust reference.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of zeroed memory, reserving no swap up front.
    pub fn anonymous(len: usize) -> std::io::Result<Self> {
        // SAFETY: a fresh anonymous mapping at an address of the kernel's
        // choosing touches no existing memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Start of the mapping.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: mappings have a size).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, off: usize, len: usize) -> std::io::Result<()> {
        match off.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(std::io::Error::other(format!(
                "range {off:#x}+{len:#x} lies outside a {:#x}-byte mapping",
                self.len
            ))),
        }
    }

    fn replace(&self, off: usize, len: usize, flags: i32, fd: i32, at: u64) -> std::io::Result<()> {
        self.check(off, len)?;
        let at = libc::off_t::try_from(at).map_err(std::io::Error::other)?;
        // SAFETY: the target range lies inside our own mapping (checked),
        // which no Rust reference points into; MAP_FIXED replaces it.
        let p = unsafe {
            libc::mmap(
                self.ptr.add(off).cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | flags,
                fd,
                at,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Replaces `[off, off + len)` with a private copy-on-write mapping of
    /// `file` at `file_off`.
    pub fn map_file(
        &self,
        off: usize,
        len: usize,
        file: &File,
        file_off: u64,
    ) -> std::io::Result<()> {
        self.replace(off, len, 0, file.as_raw_fd(), file_off)
    }

    /// Replaces `[off, off + len)` with fresh zero pages: the way to drop
    /// pages backed by a file (`MADV_DONTNEED` on a private file mapping
    /// would bring the file's bytes back).
    pub fn zero(&self, off: usize, len: usize) -> std::io::Result<()> {
        self.replace(off, len, libc::MAP_ANONYMOUS | libc::MAP_NORESERVE, -1, 0)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own the mapping and nothing uses it any more.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
