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

/// What a checked request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Flush,
    GetId,
    /// An unknown type: status UNSUPP.
    Unsupported,
    /// Outside the disk, misaligned, too big, or a write to a read-only
    /// disk: status IOERR without touching the file.
    Refused,
}

/// A request whose chain has the right shape.
struct Req {
    head: u16,
    op: Op,
    /// Byte offset on the disk.
    off: u64,
    /// The data buffers (device-writable for a read).
    data: Vec<Seg>,
    /// Their length.
    len: u64,
    /// The status byte.
    status: Seg,
}

/// What came of a request: status and bytes written into the chain.
type Outcome = Result<(u8, u64), ChainError>;

/// A popped request: parsed, or refused (its head, why, its status byte).
type Popped = Result<Req, (u16, ChainError, Option<Seg>)>;

impl BlkEngine {
    /// An engine over `dev`.
    pub fn new(dev: Arc<BlockDevice>) -> Self {
        BlkEngine {
            dev,
            bad: LogLimit::default(),
        }
    }

    /// Reads the header and sorts the buffers of a checked chain.
    fn parse(&self, c: Chain, mem: &IoMem) -> Result<Req, ChainError> {
        let mut hdr = [0u8; 16];
        if !chain::read_prefix(mem, &c.readable, &mut hdr) {
            return Err(ChainError::Shape("no 16-byte request header"));
        }
        let status = status_seg(&c).ok_or(ChainError::Shape("no status byte"))?;
        let kind = u32::from_le_bytes(hdr[0..4].try_into().unwrap_or_default());
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
        let wlen = c.writable_len() - 1;
        let out_len = c.readable_len() - 16;
        let (op, data, len) = match kind {
            T_IN if out_len != 0 => {
                return Err(ChainError::Shape("a read with device-readable data"))
            }
            T_OUT if wlen != 0 => {
                return Err(ChainError::Shape("a write with device-writable data"))
            }
            T_IN => (Op::Read, chain::take(&c.writable, wlen), wlen),
            T_OUT => (Op::Write, chain::skip(&c.readable, 16), out_len),
            T_FLUSH => (Op::Flush, Vec::new(), 0),
            T_GET_ID => (Op::GetId, chain::take(&c.writable, wlen), wlen),
            _ => (Op::Unsupported, Vec::new(), 0),
        };
        let off = sector.checked_mul(VIRTIO_SECTOR);
        let op = match (op, off) {
            (Op::Read | Op::Write, None) => Op::Refused,
            (Op::Read | Op::Write, Some(o)) => match self.dev.check(op == Op::Write, o, len) {
                Ok(()) => op,
                Err(e) => {
                    log::debug!("{}: request refused: {e}", self.name());
                    Op::Refused
                }
            },
            (op, _) => op,
        };
        Ok(Req {
            head: c.head,
            op,
            off: off.unwrap_or(0),
            data,
            len,
            status,
        })
    }

    /// Moves the data of reads or writes `reqs` (contiguous on the disk,
    /// same direction) with one vectored call.
    fn transfer(&self, reqs: &[&Req], mem: &IoMem) -> std::io::Result<()> {
        let write = reqs[0].op == Op::Write;
        let mut iov = Vec::new();
        for r in reqs {
            iov.extend(chain::iovecs(mem, &r.data));
        }
        let r = vectored(self.dev.raw_fd(), &iov, reqs[0].off, write);
        for q in reqs {
            if write {
                self.dev.mark_written(q.off, q.len);
            } else {
                // After the read (even a failed one: some bytes may have
                // landed), for a migration's dirty set.
                chain::mark(mem, &q.data, q.len);
            }
        }
        r
    }

    /// Serves one request on its own.
    fn one(&self, r: &Req, mem: &IoMem) -> (u8, u64) {
        match r.op {
            Op::Read | Op::Write => match self.transfer(&[r], mem) {
                Ok(()) if r.op == Op::Read => (S_OK, r.len),
                Ok(()) => (S_OK, 0),
                Err(e) => {
                    self.dev.host_error("I/O", e);
                    (S_IOERR, 0)
                }
            },
            Op::Flush => (
                if self.dev.sync().is_ok() {
                    S_OK
                } else {
                    S_IOERR
                },
                0,
            ),
            Op::GetId => {
                let mut id = [0u8; 20];
                let name = self.dev.name().as_bytes();
                let n = name.len().min(20);
                id[..n].copy_from_slice(&name[..n]);
                let mut left = r.len.min(20);
                let mut at = 0usize;
                for s in &r.data {
                    let k = s.len.min(left);
                    if k == 0 {
                        break;
                    }
                    let _ = mem.write(s.gpa, &id[at..at + k as usize]);
                    at += k as usize;
                    left -= k;
                }
                (S_OK, at as u64)
            }
            Op::Unsupported => (S_UNSUPP, 0),
            Op::Refused => (S_IOERR, 0),
        }
    }

    /// Serves `reqs` in order; runs of reads (or writes) that continue each
    /// other on the disk go out as one `preadv` (`pwritev`), as the batch
    /// hypercall merges them. A failed merged call is redone request by
    /// request, so each gets its own status.
    fn serve(&self, reqs: &[Popped], mem: &IoMem) -> Vec<Outcome> {
        let mut out: Vec<Outcome> = Vec::with_capacity(reqs.len());
        let mut i = 0;
        while i < reqs.len() {
            let r = match &reqs[i] {
                Err((_, e, _)) => {
                    out.push(Err(*e));
                    i += 1;
                    continue;
                }
                Ok(r) => r,
            };
            if !matches!(r.op, Op::Read | Op::Write) {
                out.push(Ok(self.one(r, mem)));
                i += 1;
                continue;
            }
            let mut run = vec![r];
            let mut end = r.off + r.len;
            let mut iovs = r.data.len();
            let mut j = i + 1;
            while let Some(Ok(n)) = reqs.get(j) {
                if n.op != r.op || n.off != end || iovs + n.data.len() > MAX_IOV {
                    break;
                }
                end += n.len;
                iovs += n.data.len();
                run.push(n);
                j += 1;
            }
            match self.transfer(&run, mem) {
                Ok(()) => out.extend(
                    run.iter()
                        .map(|q| Ok((S_OK, if q.op == Op::Read { q.len } else { 0 }))),
                ),
                Err(_) if run.len() > 1 => out.extend(run.iter().map(|q| Ok(self.one(q, mem)))),
                Err(e) => {
                    self.dev.host_error("I/O", e);
                    out.push(Ok((S_IOERR, 0)));
                }
            }
            i = j;
        }
        out
    }
}

/// Most buffers one vectored call takes (the kernel's `IOV_MAX`).
const MAX_IOV: usize = 1024;

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
    /// Back-to-back requests keep the thread awake: a doorbell and a
    /// wake-up cost more than 50 µs of spinning on a loaded host.
    const SPIN_US: u64 = 50;

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
        let mut reqs = Vec::new();
        while reqs.len() < BATCH {
            let Some((head, c)) = chain::pop(q, mem, w)? else {
                break;
            };
            reqs.push(match c {
                Err(e) => Err((head, e, None)),
                Ok(c) => {
                    let status = status_seg(&c);
                    self.parse(c, mem).map_err(|e| (head, e, status))
                }
            });
        }
        if reqs.is_empty() {
            return Ok(false);
        }
        let outcomes = self.serve(&reqs, mem);
        for (r, o) in reqs.iter().zip(outcomes) {
            let (head, written) = match (r, o) {
                (Ok(r), Ok((status, n))) => {
                    let _ = mem.write(r.status.gpa, &[status]);
                    (r.head, n + 1)
                }
                (Err((head, e, status)), _) => {
                    let name = self.name();
                    self.bad.warn(|| format!("{name}: request refused: {e}"));
                    match status {
                        Some(at) => {
                            let _ = mem.write(at.gpa, &[S_IOERR]);
                            (*head, 1)
                        }
                        None => (*head, 0),
                    }
                }
                (Ok(r), Err(_)) => (r.head, 0),
            };
            give_back(q, mem, head, written as u32)?;
        }
        Ok(true)
    }

    fn name(&self) -> String {
        format!("virtio disk {}", self.dev.name())
    }
}
