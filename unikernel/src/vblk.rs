//! The virtio side of [`crate::block`]: virtio-drivers' `VirtIOBlk` with
//! non-blocking requests, several in flight, completed in used-ring order.

use crate::virtio::{self, DuetHal, DuetTransport};
use alloc::boxed::Box;
use alloc::vec::Vec;
use duet_abi::boot::MAX_DEVICES;
use duet_abi::hypercall::Error;
use spin::Mutex;
use virtio_drivers::device::blk::{BlkReq, BlkResp, RespStatus, VirtIOBlk};

/// virtio-blk sectors are 512 bytes whatever the disk's.
const SECTOR: u64 = 512;

struct Blk {
    dev: VirtIOBlk<DuetHal, DuetTransport>,
    /// Used entries consumed (the driver's `used_event`).
    seen: u16,
}

static DISKS: [Mutex<Option<Blk>>; MAX_DEVICES] = [const { Mutex::new(None) }; MAX_DEVICES];

/// One request of a list.
pub(crate) struct Op<'a> {
    /// Read (true) or write.
    pub read: bool,
    /// Byte offset.
    pub offset: u64,
    /// The buffer (written into for a read).
    pub buf: &'a mut [u8],
    /// Its result.
    pub ret: Result<(), Error>,
}

fn map(e: virtio_drivers::Error) -> Error {
    match e {
        virtio_drivers::Error::Unsupported => Error::Unsupported,
        virtio_drivers::Error::InvalidParam => Error::Inval,
        _ => Error::Io,
    }
}

fn with<R>(id: u32, f: impl FnOnce(&mut Blk) -> R) -> Result<R, Error> {
    let slot = DISKS.get(id as usize).ok_or(Error::NoDev)?;
    let mut g = slot.lock();
    if g.is_none() {
        let t = virtio::transport(id).ok_or(Error::NoDev)?;
        let dev = VirtIOBlk::new(t).map_err(map)?;
        *g = Some(Blk { dev, seen: 0 });
    }
    match g.as_mut() {
        Some(b) => Ok(f(b)),
        None => Err(Error::NoDev),
    }
}

struct Flight {
    op: usize,
    token: u16,
    req: BlkReq,
    resp: BlkResp,
}

/// Runs `ops` (already checked against the disk's geometry) with as many in
/// flight as the queue holds; each gets its own result.
pub(crate) fn run(id: u32, ops: &mut [Op<'_>]) -> Result<(), Error> {
    with(id, |b| {
        let mut flights: Vec<Box<Flight>> = Vec::new();
        let mut next = 0;
        while next < ops.len() || !flights.is_empty() {
            let exits = crate::hypercall::exits();
            // Submit while the queue takes more.
            while next < ops.len() {
                let op = &mut ops[next];
                if op.buf.is_empty() {
                    op.ret = Ok(());
                    next += 1;
                    continue;
                }
                // Boxed: the device writes `resp` where it is now.
                let mut f = Box::new(Flight {
                    op: next,
                    token: 0,
                    req: BlkReq::default(),
                    resp: BlkResp::default(),
                });
                let block = (op.offset / SECTOR) as usize;
                // SAFETY: `req`, `resp` (boxed below, not moved again) and
                // the buffer stay untouched until completion.
                let r = unsafe {
                    if op.read {
                        b.dev.read_blocks_nb(block, &mut f.req, op.buf, &mut f.resp)
                    } else {
                        b.dev
                            .write_blocks_nb(block, &mut f.req, op.buf, &mut f.resp)
                    }
                };
                match r {
                    Ok(t) => {
                        f.token = t;
                        flights.push(f);
                        next += 1;
                    }
                    Err(virtio_drivers::Error::QueueFull) if !flights.is_empty() => break,
                    Err(e) => {
                        op.ret = Err(map(e));
                        next += 1;
                    }
                }
            }
            if flights.is_empty() {
                continue;
            }
            // Complete what the device has used.
            let seen = b.seen;
            let mut broken = false;
            // A doorbell rang during the submissions: the device was asleep.
            let rang = crate::hypercall::exits() != exits;
            virtio::wait_used(
                id,
                rang,
                || virtio::arm(id, 0, seen),
                || {
                    broken = virtio::needs_reset(id);
                    broken || b.dev.peek_used().is_some()
                },
            );
            if broken && b.dev.peek_used().is_none() {
                // The monitor stopped the device: what is in flight is lost.
                for f in flights.drain(..) {
                    ops[f.op].ret = Err(Error::Io);
                }
                return Err(Error::Io);
            }
            while let Some(t) = b.dev.peek_used() {
                let Some(i) = flights.iter().position(|f| f.token == t) else {
                    return Err(Error::Io);
                };
                let mut f = flights.swap_remove(i);
                let op = &mut ops[f.op];
                // SAFETY: the same buffers as at submission.
                let r = unsafe {
                    if op.read {
                        b.dev.complete_read_blocks(t, &f.req, op.buf, &mut f.resp)
                    } else {
                        b.dev.complete_write_blocks(t, &f.req, op.buf, &mut f.resp)
                    }
                };
                b.seen = b.seen.wrapping_add(1);
                op.ret = match (r, f.resp.status()) {
                    (Ok(()), RespStatus::OK) => Ok(()),
                    (Err(e), _) => Err(map(e)),
                    (Ok(()), RespStatus::UNSUPPORTED) => Err(Error::Unsupported),
                    (Ok(()), _) => Err(Error::Io),
                };
            }
        }
        Ok(())
    })?
}

/// Makes the disk's completed writes durable (every request before it has
/// completed: [`run`] returns only then).
pub(crate) fn flush(id: u32) -> Result<(), Error> {
    with(id, |b| {
        let r = b.dev.flush().map_err(map);
        b.seen = b.seen.wrapping_add(1);
        r
    })?
}
