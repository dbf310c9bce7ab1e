//! virtio-blk: requests from the queue go straight between the disk file
//! and guest memory with `preadv`/`pwritev` (no copy in the monitor), a
//! flush is an `fdatasync`. The device model — geometry checks, the file,
//! its lock, write tracking for a copying migration — is the same
//! [`BlockDevice`] the block hypercalls use.

use super::chain::{self, Chain, ChainError, QueueError, Seg};
use super::core::{give_back, Engine};
use super::LogLimit;
use crate::devices::block::BlockDevice;
use crate::memory::{IoMem, Writable};
use duet_abi::virtio::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_CONFIG_SIZE,
    VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use std::sync::Arc;
use virtio_queue::Queue;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// virtio-blk counts in 512-byte sectors whatever the disk's sector size.
const VIRTIO_SECTOR: u64 = 512;
/// Most requests served per batch (the lock is held for a batch).
const BATCH: usize = 64;

/// The block engine.
pub struct BlkEngine {
    /// The device model, shared with the vCPU thread (flush, lock).
    pub dev: Arc<BlockDevice>,
    bad: LogLimit,
}

impl BlkEngine {
    /// An engine over `dev`.
    pub fn new(dev: Arc<BlockDevice>) -> Self {
        BlkEngine {
            dev,
            bad: LogLimit::default(),
        }
    }

    /// Serves one checked chain; returns the status and the bytes written
    /// into the chain, or why its shape is refused.
    fn request(&self, c: &Chain, mem: &IoMem) -> Result<(u8, u64, Seg), ChainError> {
        let mut hdr = [0u8; 16];
        if !chain::read_prefix(mem, &c.readable, &mut hdr) {
            return Err(ChainError::Shape("no 16-byte request header"));
        }
        let status = status_seg(c).ok_or(ChainError::Shape("no status byte"))?;
        let kind = u32::from_le_bytes(hdr[0..4].try_into().unwrap_or_default());
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
        let wlen = c.writable_len() - 1;
        let data_in = chain::take(&c.writable, wlen);
        let data_out = chain::skip(&c.readable, 16);
        let out_len = c.readable_len() - 16;
        let done = |s: u8, written: u64| Ok((s, written, status));
        match kind {
            T_IN => {
                if out_len != 0 {
                    return Err(ChainError::Shape("a read with device-readable data"));
                }
                let Some(off) = sector.checked_mul(VIRTIO_SECTOR) else {
                    return done(S_IOERR, 0);
                };
                if let Err(e) = self.dev.check(false, off, wlen) {
                    log::debug!("{}: read refused: {e}", self.name());
                    return done(S_IOERR, 0);
                }
                match vectored(self.dev.raw_fd(), &chain::iovecs(mem, &data_in), off, false) {
                    Ok(()) => {
                        chain::mark(mem, &data_in, wlen);
                        done(S_OK, wlen)
                    }
                    Err(e) => {
                        self.dev.host_error("read", e);
                        // Some bytes may have landed.
                        chain::mark(mem, &data_in, wlen);
                        done(S_IOERR, wlen)
                    }
                }
            }
            T_OUT => {
                if wlen != 0 {
                    return Err(ChainError::Shape("a write with device-writable data"));
                }
                let Some(off) = sector.checked_mul(VIRTIO_SECTOR) else {
                    return done(S_IOERR, 0);
                };
                if let Err(e) = self.dev.check(true, off, out_len) {
                    log::debug!("{}: write refused: {e}", self.name());
                    return done(S_IOERR, 0);
                }
                let r = vectored(self.dev.raw_fd(), &chain::iovecs(mem, &data_out), off, true);
                self.dev.mark_written(off, out_len);
                match r {
                    Ok(()) => done(S_OK, 0),
                    Err(e) => {
                        self.dev.host_error("write", e);
                        done(S_IOERR, 0)
                    }
                }
            }
            T_FLUSH => done(
                if self.dev.sync().is_ok() {
                    S_OK
                } else {
                    S_IOERR
                },
                0,
            ),
            T_GET_ID => {
                let mut id = [0u8; 20];
                let name = self.dev.name().as_bytes();
                let n = name.len().min(20);
                id[..n].copy_from_slice(&name[..n]);
                let mut left = wlen.min(20);
                let mut at = 0usize;
                for s in &data_in {
                    let k = s.len.min(left);
                    if k == 0 {
                        break;
                    }
                    let _ = mem.write(s.gpa, &id[at..at + k as usize]);
                    at += k as usize;
                    left -= k;
                }
                done(S_OK, at as u64)
            }
            _ => done(S_UNSUPP, 0),
        }
    }
}

/// The last device-writable byte: where the status goes.
fn status_seg(c: &Chain) -> Option<Seg> {
    let last = c.writable.last()?;
    Some(Seg {
        gpa: last.gpa + last.len - 1,
        len: 1,
    })
}

/// `preadv`/`pwritev` of the whole of `iov` at `off`, resuming after short
/// transfers; a read that meets the end of the file is an error.
fn vectored(fd: i32, iov: &[libc::iovec], mut off: u64, write: bool) -> std::io::Result<()> {
    let mut iov = iov.to_vec();
    let mut first = 0;
    while first < iov.len() {
        let rest = &iov[first..];
        // SAFETY: every iovec is a checked range of guest memory (inside
        // the mapping, device-writable ones inside guest-writable ranges),
        // and the kernel copies into or out of it; nothing here holds a
        // reference into it.
        let n = unsafe {
            if write {
                libc::pwritev(fd, rest.as_ptr(), rest.len() as i32, off as i64)
            } else {
                libc::preadv(fd, rest.as_ptr(), rest.len() as i32, off as i64)
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
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        off += n as u64;
        let mut n = n as usize;
        while n > 0 && first < iov.len() {
            let l = iov[first].iov_len;
            if n >= l {
                n -= l;
                first += 1;
            } else {
                iov[first].iov_base = (iov[first].iov_base as usize + n) as *mut libc::c_void;
                iov[first].iov_len -= n;
                n = 0;
            }
        }
    }
    Ok(())
}

impl Engine for BlkEngine {
    const DEVICE_ID: u32 = VIRTIO_ID_BLOCK;
    const QUEUES: usize = 1;

    fn features(&self) -> u64 {
        let ro = if self.dev.readonly() {
            VIRTIO_BLK_F_RO
        } else {
            0
        };
        VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_BLK_F_FLUSH
            | VIRTIO_BLK_F_BLK_SIZE
            | ro
    }

    fn config(&self) -> [u8; VIRTIO_CONFIG_SIZE] {
        let mut c = [0u8; VIRTIO_CONFIG_SIZE];
        c[0..8].copy_from_slice(&(self.dev.capacity() / VIRTIO_SECTOR).to_le_bytes());
        c[20..24].copy_from_slice(&self.dev.sector_size().to_le_bytes());
        c
    }

    fn process(&mut self, q: &mut [Queue], mem: &IoMem, w: &Writable) -> Result<bool, QueueError> {
        let q = &mut q[0];
        let mut served = false;
        for _ in 0..BATCH {
            let Some((head, c)) = chain::pop(q, mem, w)? else {
                break;
            };
            served = true;
            let refused = match c {
                Err(e) => Err((e, None)),
                Ok(c) => match self.request(&c, mem) {
                    Ok(r) => Ok(r),
                    Err(e) => Err((e, status_seg(&c))),
                },
            };
            let written = match refused {
                Ok((status, n, at)) => {
                    let _ = mem.write(at.gpa, &[status]);
                    n + 1
                }
                Err((e, status)) => {
                    let name = self.name();
                    self.bad.warn(|| format!("{name}: request refused: {e}"));
                    match status {
                        Some(at) => {
                            let _ = mem.write(at.gpa, &[S_IOERR]);
                            1
                        }
                        None => 0,
                    }
                }
            };
            give_back(q, mem, head, written as u32)?;
        }
        Ok(served)
    }

    fn name(&self) -> String {
        format!("virtio disk {}", self.dev.name())
    }
}
