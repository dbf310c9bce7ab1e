//! Descriptor chains as the devices use them: walked once, every buffer
//! checked (inside guest memory, buffers the device fills inside the
//! guest-writable ranges, device-readable ones before device-writable
//! ones, at most [`MAX_CHAIN`] of them, properly terminated) before a single
//! byte moves. A chain that fails costs only its own request.

use crate::memory::{IoMem, Writable};
use std::num::Wrapping;
use std::sync::atomic::Ordering;
use thiserror::Error;
use virtio_queue::{Queue, QueueOwnedT, QueueT};

/// Longest chain accepted, in descriptors (indirect tables included).
pub const MAX_CHAIN: usize = duet_abi::virtio::VIRTIO_QUEUE_MAX as usize;

/// Why one request was refused.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ChainError {
    /// The head descriptor could not be read, or the chain is empty.
    #[error("an empty or unreadable descriptor chain")]
    Empty,
    /// The chain does not end: a loop, a `next` beyond the table, a bad
    /// indirect table, or more than [`MAX_CHAIN`] descriptors.
    #[error("a descriptor chain that loops, leaves its table or exceeds {MAX_CHAIN} descriptors")]
    Unterminated,
    /// A buffer lies outside guest memory.
    #[error("a buffer at {0:#x}+{1:#x} outside guest memory")]
    OutOfMemory(u64, u64),
    /// A buffer the device would write lies outside guest-writable memory.
    #[error("a device-writable buffer at {0:#x}+{1:#x} in memory the guest may not have written")]
    NotWritable(u64, u64),
    /// A device-readable buffer after a device-writable one.
    #[error("a device-readable buffer after a device-writable one")]
    WrongDirection,
    /// The request's shape is wrong for the device.
    #[error("{0}")]
    Shape(&'static str),
}

/// Why a whole queue stops.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum QueueError {
    /// The driver's avail index ran more than a queue ahead.
    #[error("the avail index {avail} is {ahead} entries ahead of the device, beyond the {size}-entry ring")]
    IndexBeyondRing {
        /// The guest's index.
        avail: u16,
        /// How far ahead.
        ahead: u16,
        /// Queue size.
        size: u16,
    },
    /// A ring could not be read or written.
    #[error("the rings are unreadable or the used ring unwritable")]
    Rings,
    /// The host side of the device failed for good (a vanished TAP).
    #[error("the host side of the device failed")]
    Backend,
}

/// One guest buffer: address and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    /// Guest address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A chain that passed every check.
#[derive(Debug, Default)]
pub struct Chain {
    /// The head index (what goes back in the used ring).
    pub head: u16,
    /// Buffers the device reads, in order.
    pub readable: Vec<Seg>,
    /// Buffers the device writes, in order.
    pub writable: Vec<Seg>,
}

impl Chain {
    /// Bytes the device may read.
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|s| s.len).sum()
    }

    /// Bytes the device may write.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|s| s.len).sum()
    }
}

/// A popped chain: its head, and the chain or why it is refused.
pub type Popped = (u16, Result<Chain, ChainError>);

/// The next available chain of `q`: `Ok(None)` when none waits,
/// `Err(QueueError)` when the queue itself is broken, `Ok(Some(Err))` for a
/// chain that is refused (its head is still known, to give it back).
pub fn pop(q: &mut Queue, mem: &IoMem, w: &Writable) -> Result<Option<Popped>, QueueError> {
    let avail = q
        .avail_idx(mem.inner(), Ordering::Acquire)
        .map_err(|_| QueueError::Rings)?;
    let ahead = (avail - Wrapping(q.next_avail())).0;
    if ahead == 0 {
        return Ok(None);
    }
    if ahead > q.size() {
        return Err(QueueError::IndexBeyondRing {
            avail: avail.0,
            ahead,
            size: q.size(),
        });
    }
    let Some(chain) = q.iter(mem.inner()).map_err(|_| QueueError::Rings)?.next() else {
        return Err(QueueError::Rings);
    };
    let head = chain.head_index();
    if head >= q.size() {
        // Cannot even be given back: the used ring takes only real heads.
        return Err(QueueError::Rings);
    }
    Ok(Some((head, walk(head, chain, mem, w))))
}

fn walk<M>(
    head: u16,
    chain: virtio_queue::DescriptorChain<M>,
    mem: &IoMem,
    w: &Writable,
) -> Result<Chain, ChainError>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut out = Chain {
        head,
        ..Default::default()
    };
    let mut last_has_next = false;
    let mut n = 0;
    for d in chain {
        n += 1;
        if n > MAX_CHAIN {
            return Err(ChainError::Unterminated);
        }
        last_has_next = d.has_next();
        let seg = Seg {
            gpa: d.addr().0,
            len: u64::from(d.len()),
        };
        if seg.len == 0 {
            continue;
        }
        mem.check(seg.gpa, seg.len)
            .map_err(|_| ChainError::OutOfMemory(seg.gpa, seg.len))?;
        if d.is_write_only() {
            if !w.contains(seg.gpa, seg.len) {
                return Err(ChainError::NotWritable(seg.gpa, seg.len));
            }
            out.writable.push(seg);
        } else {
            if !out.writable.is_empty() {
                return Err(ChainError::WrongDirection);
            }
            out.readable.push(seg);
        }
    }
    if n == 0 {
        return Err(ChainError::Empty);
    }
    // The iterator stops quietly at a loop's end (its time to live), at a
    // `next` beyond the table or at a bad indirect table: the last
    // descriptor it gave then still points onwards.
    if last_has_next {
        return Err(ChainError::Unterminated);
    }
    Ok(out)
}

/// Copies `len` bytes from the start of `segs` (device-readable buffers)
/// into `buf`; false when they hold fewer.
pub fn read_prefix(mem: &IoMem, segs: &[Seg], buf: &mut [u8]) -> bool {
    use vm_memory::Bytes;
    let mut done = 0;
    for s in segs {
        if done == buf.len() {
            break;
        }
        let n = (s.len as usize).min(buf.len() - done);
        if mem
            .inner()
            .read_slice(&mut buf[done..done + n], vm_memory::GuestAddress(s.gpa))
            .is_err()
        {
            return false;
        }
        done += n;
    }
    done == buf.len()
}

/// `segs` without their first `skip` bytes.
pub fn skip(segs: &[Seg], mut skip: u64) -> Vec<Seg> {
    let mut out = Vec::with_capacity(segs.len());
    for s in segs {
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        out.push(Seg {
            gpa: s.gpa + skip,
            len: s.len - skip,
        });
        skip = 0;
    }
    out
}

/// `segs` cut to their first `len` bytes.
pub fn take(segs: &[Seg], mut len: u64) -> Vec<Seg> {
    let mut out = Vec::with_capacity(segs.len());
    for s in segs {
        if len == 0 {
            break;
        }
        let n = s.len.min(len);
        out.push(Seg { gpa: s.gpa, len: n });
        len -= n;
    }
    out
}

/// The iovecs of checked segments (host addresses of guest memory).
pub fn iovecs(mem: &IoMem, segs: &[Seg]) -> Vec<libc::iovec> {
    segs.iter()
        .map(|s| libc::iovec {
            iov_base: mem.host_addr(s.gpa),
            iov_len: s.len as usize,
        })
        .collect()
}

/// Marks the segments as written by the device (migration dirty set).
pub fn mark(mem: &IoMem, segs: &[Seg], mut len: u64) {
    for s in segs {
        if len == 0 {
            break;
        }
        let n = s.len.min(len);
        mem.mark(s.gpa, n);
        len -= n;
    }
}
