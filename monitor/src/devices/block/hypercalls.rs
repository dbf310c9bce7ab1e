//! Block hypercalls: read, write, flush, and batches of them.
//!
//! Geometry and buffers are checked per request ([`BlockDevice::check`],
//! the guest-memory checks); bytes then move straight between the file and
//! guest memory. Host failures become error codes: the VM keeps running.

use super::BlockDevice;
use crate::call::{handle, ret};
use crate::devices::Devices;
use crate::memory::GuestMem;
use crate::outcome::Flow;
use duet_abi::block::{
    BlkBatchArgs, BlkFlushArgs, BlkIoArgs, BlkReq, BLK_BATCH_MAX, BLK_OP_FLUSH, BLK_OP_READ,
    BLK_OP_WRITE,
};
use duet_abi::hypercall::{Error, Hypercall};
use duet_abi::Gpa;
use std::mem::{offset_of, size_of};

fn block(devs: &Devices, id: u32) -> Result<&BlockDevice, Error> {
    devs.get::<BlockDevice>(id).ok_or(Error::NoDev)
}

/// [`Hypercall::BlkRead`] and [`Hypercall::BlkWrite`].
pub fn io(devs: &Devices, mem: &GuestMem, value: u32, write: bool) -> Flow {
    let call = if write {
        Hypercall::BlkWrite
    } else {
        Hypercall::BlkRead
    };
    handle(mem, call, value, |a: &mut BlkIoArgs| {
        if a.flags != 0 {
            return Err(Error::Inval);
        }
        let req = BlkReq {
            op: if write { BLK_OP_WRITE } else { BLK_OP_READ },
            dev: a.dev,
            offset: a.offset,
            buf: a.buf,
            len: a.len,
            ret: 0,
        };
        single(devs, mem, &req)
    })
}

/// [`Hypercall::BlkFlush`].
pub fn flush(devs: &Devices, mem: &GuestMem, value: u32) -> Flow {
    handle(mem, Hypercall::BlkFlush, value, |a: &mut BlkFlushArgs| {
        if a.flags != 0 {
            return Err(Error::Inval);
        }
        block(devs, a.dev)?.sync().map(|()| 0)
    })
}

/// [`Hypercall::BlkBatch`].
pub fn batch(devs: &Devices, mem: &GuestMem, value: u32) -> Flow {
    handle(mem, Hypercall::BlkBatch, value, |a: &mut BlkBatchArgs| {
        run_batch(devs, mem, a)
    })
}

/// A request that passed every check.
enum Checked<'a> {
    Io(&'a BlockDevice, bool),
    Flush(&'a BlockDevice),
}

/// Checks one request: device, op, geometry, buffer.
fn check<'a>(devs: &'a Devices, mem: &GuestMem, r: &BlkReq) -> Result<Checked<'a>, Error> {
    let dev = block(devs, r.dev)?;
    let write = match r.op {
        BLK_OP_READ => false,
        BLK_OP_WRITE => true,
        BLK_OP_FLUSH => return Ok(Checked::Flush(dev)),
        _ => return Err(Error::Unsupported),
    };
    dev.check(write, r.offset, r.len)?;
    if write {
        mem.check(r.buf, r.len)?;
    } else {
        mem.check_writable(r.buf, r.len)?;
    }
    Ok(Checked::Io(dev, write))
}

/// Runs one request on its own.
fn single(devs: &Devices, mem: &GuestMem, r: &BlkReq) -> Result<u64, Error> {
    match check(devs, mem, r)? {
        Checked::Flush(d) => d.sync().map(|()| 0),
        Checked::Io(d, write) => d.io(mem, write, r.offset, &[(r.buf, r.len)]),
    }
}

/// Runs a batch; returns how many entries succeeded.
fn run_batch(devs: &Devices, mem: &GuestMem, args: &BlkBatchArgs) -> Result<u64, Error> {
    if args.flags != 0 {
        return Err(Error::Inval);
    }
    if args.count > BLK_BATCH_MAX {
        return Err(Error::TooBig);
    }
    let n = args.count as usize;
    let entry = size_of::<BlkReq>() as u64;
    // The whole list must be writable: each entry's `ret` is written back.
    mem.check_writable(args.reqs, n as u64 * entry)?;
    let mut reqs = [BlkReq::default(); BLK_BATCH_MAX as usize];
    for (i, r) in reqs[..n].iter_mut().enumerate() {
        *r = mem.read_plain(Gpa(args.reqs.0 + i as u64 * entry))?;
    }
    let mut rets = [0i64; BLK_BATCH_MAX as usize];
    let mut i = 0;
    while i < n {
        let r = &reqs[i];
        let (dev, write) = match check(devs, mem, r) {
            Err(e) => {
                rets[i] = e.to_ret();
                i += 1;
                continue;
            }
            Ok(Checked::Flush(d)) => {
                rets[i] = ret(d.sync().map(|()| 0));
                i += 1;
                continue;
            }
            Ok(Checked::Io(d, w)) => (d, w),
        };
        // Merge the valid entries that continue this one on the same device
        // into one vectored call: a sequential scatter/gather costs one
        // syscall.
        let mut j = i + 1;
        let mut end = r.offset + r.len;
        while j < n {
            let next = &reqs[j];
            if next.op != r.op || next.dev != r.dev || next.offset != end {
                break;
            }
            if check(devs, mem, next).is_err() {
                break;
            }
            end += next.len;
            j += 1;
        }
        let segs: Vec<(Gpa, u64)> = reqs[i..j].iter().map(|q| (q.buf, q.len)).collect();
        match dev.io(mem, write, r.offset, &segs) {
            Ok(_) => {
                for k in i..j {
                    rets[k] = reqs[k].len as i64;
                }
            }
            // Redo a failed merge entry by entry so each gets its own status
            // (reads and writes of the same bytes are idempotent).
            Err(_) if j - i > 1 => {
                for k in i..j {
                    rets[k] = ret(single(devs, mem, &reqs[k]));
                }
            }
            Err(e) => rets[i] = e.to_ret(),
        }
        i = j;
    }
    let mut ok = 0;
    for (i, r) in rets[..n].iter().enumerate() {
        let at = Gpa(args.reqs.0 + i as u64 * entry + offset_of!(BlkReq, ret) as u64);
        mem.write_plain(at, r)?;
        ok += u64::from(*r >= 0);
    }
    Ok(ok)
}
