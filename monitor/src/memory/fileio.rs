//! Moving bytes between host file descriptors and guest memory with no
//! copy through the monitor: the kernel reads or writes the checked guest
//! range directly (`read`/`write`/`readv`, `preadv`/`pwritev`).

use super::{GuestMem, MemError};
use duet_abi::Gpa;
use std::os::fd::{AsRawFd, BorrowedFd};
use vm_memory::GuestMemoryBackend;

/// Which way [`GuestMem::file_io`] moves bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileIo {
    /// From the file into guest memory.
    Read,
    /// From guest memory into the file.
    Write,
}

/// What one [`GuestMem::read_frame`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A frame of this many bytes, all in the guest's buffer.
    Whole(usize),
    /// A frame longer than the guest's buffer (this many bytes, or more):
    /// the guest's buffer holds only its start, so it must be dropped.
    Oversized(usize),
}

/// Spare room after the guest's buffer: a longer frame spills into it, so
/// the monitor learns it was cut (64 KiB covers any TAP frame).
const SPILL: usize = 64 << 10;

impl GuestMem {
    fn iovec(&self, gpa: Gpa, len: u64) -> Result<libc::iovec, MemError> {
        let slice = self
            .inner()
            .get_slice(vm_memory::GuestAddress(gpa.0), len as usize)
            .map_err(|_| MemError::OutOfRange { gpa: gpa.0, len })?;
        Ok(libc::iovec {
            iov_base: slice.ptr_guard_mut().as_ptr().cast(),
            iov_len: slice.len(),
        })
    }

    /// Reads one frame from `fd` (one `readv(2)`) into the guest-writable
    /// range `[gpa, gpa + cap)`. Returns the syscall's own error inside.
    pub fn read_frame(
        &self,
        gpa: Gpa,
        cap: u64,
        fd: BorrowedFd<'_>,
    ) -> Result<std::io::Result<Frame>, MemError> {
        self.check_writable(gpa, cap)?;
        if cap == 0 {
            return Ok(Ok(Frame::Whole(0)));
        }
        let mut spill = [0u8; SPILL];
        let iov = [
            self.iovec(gpa, cap)?,
            libc::iovec {
                iov_base: spill.as_mut_ptr().cast(),
                iov_len: spill.len(),
            },
        ];
        // SAFETY: the first iovec lies in our own guest mapping (checked
        // above, outliving this call, no Rust reference into it), the second
        // in our stack buffer; the kernel writes at most their lengths.
        let n = unsafe { libc::readv(fd.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            return Ok(Err(std::io::Error::last_os_error()));
        }
        let n = n as usize;
        // Written behind KVM's back: tell a migration's dirty log.
        self.host_dirty().mark(gpa.0, n.min(cap as usize));
        Ok(Ok(if n as u64 > cap {
            Frame::Oversized(n)
        } else {
            Frame::Whole(n)
        }))
    }

    /// Writes the guest range `[gpa, gpa + len)` to `fd` with one
    /// `write(2)`. Returns the byte count `write(2)` returned.
    pub fn write_to_fd(
        &self,
        gpa: Gpa,
        len: u64,
        fd: BorrowedFd<'_>,
    ) -> Result<std::io::Result<usize>, MemError> {
        self.check(gpa, len)?;
        let iov = self.iovec(gpa, len)?;
        // SAFETY: the range lies in our own mapping (checked) and outlives
        // the call; the kernel only reads it. The guest may change the bytes
        // meanwhile, which only changes what is sent.
        let n = unsafe { libc::write(fd.as_raw_fd(), iov.iov_base, iov.iov_len) };
        Ok(if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        })
    }

    /// Positional I/O between the host file `fd` and guest memory:
    /// `preadv`/`pwritev` from byte `offset` of the file into (or out of)
    /// the guest ranges `segs`, in order, as if they were one buffer.
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
            if len > 0 {
                iov.push(self.iovec(gpa, len)?);
            }
        }
        let moved = transfer(dir, fd, offset, &mut iov);
        if dir == FileIo::Read {
            for &(gpa, len) in segs {
                self.host_dirty().mark(gpa.0, len as usize);
            }
        }
        Ok(moved)
    }
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
        // SAFETY: every iovec points into our own guest mapping, checked by
        // the caller to hold its whole length; the mapping outlives this call
        // and the monitor holds no Rust reference into it.
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
        let mut f = tempfile();
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
    }

    #[test]
    fn a_frame_longer_than_the_buffer_is_reported_not_cut() {
        let mut mem = GuestMem::new(4 << 20).unwrap();
        mem.set_writable(vec![(0x10000, 0x20000)]);
        let mut fds = [0; 2];
        // SAFETY: socketpair fills two fds we then own.
        let rc =
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0);
        // SAFETY: fresh fds from socketpair, owned here.
        let (a, b) = unsafe {
            use std::os::fd::FromRawFd;
            (
                std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            )
        };
        let send = |len: usize| {
            let buf = vec![7u8; len];
            // SAFETY: write from our own buffer.
            let n = unsafe { libc::write(b.as_raw_fd(), buf.as_ptr().cast(), len) };
            assert_eq!(n, len as isize);
        };
        send(100);
        let r = mem
            .read_frame(Gpa(0x10000), 1514, a.as_fd())
            .unwrap()
            .unwrap();
        assert_eq!(r, Frame::Whole(100));
        send(3000);
        let r = mem
            .read_frame(Gpa(0x10000), 1514, a.as_fd())
            .unwrap()
            .unwrap();
        assert_eq!(r, Frame::Oversized(3000));
        assert!(matches!(
            mem.read_frame(Gpa(0x1000), 1514, a.as_fd()),
            Err(MemError::NotWritable { .. })
        ));
    }

    fn tempfile() -> std::fs::File {
        let path = std::env::temp_dir().join(format!(
            "duet-fileio-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let _ = std::fs::remove_file(path);
        f
    }
}
