//! Block devices: the disks the monitor attached with `--disk`.
//!
//! [`disks`] lists them from the boot info's device table. A [`Disk`] reads
//! and writes whole sectors at byte offsets ([`Disk::read_at`],
//! [`Disk::write_at`]); writes are durable once [`Disk::flush`] returns.
//! On a virtio disk (the default, `--disk ...,transport=virtio`) requests go
//! through a virtqueue the monitor's I/O thread serves, with no exit while
//! it is busy; on a hypercall disk every call is one exit to the monitor,
//! which costs tens of microseconds, and a [`Batch`] submits up to
//! [`BLK_BATCH_MAX`] requests in one exit (on virtio it keeps that many in
//! flight). The API is the same either way.
//!
//! [`BlockIo`] is the small trait a filesystem or database can sit on.
//!
//! ```ignore
//! let disk = duet::block::disks().next().ok_or(Error::NoDev)?;
//! let mut sector = [0u8; 512];
//! disk.read_at(0, &mut sector)?;
//! disk.write_at(512, &sector)?;
//! disk.flush()?;
//! ```

use crate::hypercall::{call, result};
use core::marker::PhantomData;
use duet_abi::block::{
    BlkBatchArgs, BlkFlushArgs, BlkIoArgs, BlkReq, BLK_BATCH_MAX, BLK_IO_MAX, BLK_OP_FLUSH,
    BLK_OP_READ, BLK_OP_WRITE,
};
use duet_abi::boot::{DeviceInfo, DeviceKind, DEVICE_FLAG_READONLY, DEVICE_FLAG_VIRTIO};
use duet_abi::hypercall::{Error, Hypercall};
use duet_abi::Gpa;

/// What a filesystem or database needs from a disk: sector-aligned
/// positional reads and writes, and a durability barrier.
///
/// Offsets and lengths must be multiples of [`BlockIo::sector_size`] and lie
/// inside [`BlockIo::capacity`]; violations return [`Error::Inval`] or
/// [`Error::Range`].
pub trait BlockIo {
    /// Bytes per sector (512 or 4096).
    fn sector_size(&self) -> u32;
    /// Size of the device in bytes.
    fn capacity(&self) -> u64;
    /// Fills `buf` from byte `offset` of the device.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error>;
    /// Writes `buf` at byte `offset` of the device.
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), Error>;
    /// Returns once every earlier write is durable.
    fn flush(&self) -> Result<(), Error>;
}

/// A block device of the guest.
#[derive(Clone, Copy, Debug)]
pub struct Disk {
    id: u32,
    info: &'static DeviceInfo,
}

/// Every block device, in device-table order.
pub fn disks() -> impl Iterator<Item = Disk> {
    let bi = crate::rt::boot_info();
    let n = (bi.device_count as usize).min(bi.devices.len());
    bi.devices[..n]
        .iter()
        .enumerate()
        .filter(|(_, d)| d.kind == DeviceKind::Block as u32)
        .map(|(i, info)| Disk { id: i as u32, info })
}

/// The block device called `name` (`--disk ...,name=NAME`; `diskN` by default).
pub fn disk(name: &str) -> Option<Disk> {
    disks().find(|d| d.name() == name)
}

impl Disk {
    /// Index in the device table (the id hypercalls take).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The name given on the monitor's command line.
    pub fn name(&self) -> &'static str {
        let raw = &self.info.name;
        let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        core::str::from_utf8(&raw[..len]).unwrap_or("")
    }

    /// Size in bytes.
    pub fn capacity(&self) -> u64 {
        self.info.capacity
    }

    /// Bytes per sector.
    pub fn sector_size(&self) -> u32 {
        self.info.sector_size
    }

    /// Whether the monitor refuses writes.
    pub fn is_read_only(&self) -> bool {
        self.info.flags & DEVICE_FLAG_READONLY != 0
    }

    /// Whether the disk is driven through virtio.
    pub fn is_virtio(&self) -> bool {
        self.info.flags & DEVICE_FLAG_VIRTIO != 0
    }

    /// The hypercall path's checks, for the virtio path: aligned, inside the
    /// disk, writable.
    fn check(&self, write: bool, offset: u64, len: u64) -> Result<(), Error> {
        if write && self.is_read_only() {
            return Err(Error::ReadOnly);
        }
        let sector = u64::from(self.sector_size().max(1));
        if !offset.is_multiple_of(sector) || !len.is_multiple_of(sector) {
            return Err(Error::Inval);
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.capacity() => Ok(()),
            _ => Err(Error::Range),
        }
    }

    /// A long request as [`BLK_IO_MAX`] pieces on the virtio queue.
    fn virtio_io(&self, read: bool, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.check(!read, offset, buf.len() as u64)?;
        let mut ops: alloc::vec::Vec<crate::vblk::Op<'_>> = alloc::vec::Vec::new();
        let mut off = offset;
        for chunk in buf.chunks_mut(BLK_IO_MAX as usize) {
            let len = chunk.len() as u64;
            ops.push(crate::vblk::Op {
                read,
                offset: off,
                buf: chunk,
                ret: Ok(()),
            });
            off += len;
        }
        crate::vblk::run(self.id, &mut ops)?;
        ops.into_iter().try_for_each(|o| o.ret)
    }

    /// Fills `buf` from byte `offset`. Requests over [`BLK_IO_MAX`] go out
    /// as batches.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        if self.is_virtio() {
            return self.virtio_io(true, offset, buf);
        }
        if buf.len() as u64 <= BLK_IO_MAX {
            return self.one(
                Hypercall::BlkRead,
                offset,
                buf.as_mut_ptr() as u64,
                buf.len(),
            );
        }
        let mut off = offset;
        for group in buf.chunks_mut((BLK_IO_MAX * u64::from(BLK_BATCH_MAX)) as usize) {
            let mut b = Batch::new();
            for chunk in group.chunks_mut(BLK_IO_MAX as usize) {
                let len = chunk.len() as u64;
                b.read(*self, off, chunk)?;
                off += len;
            }
            b.submit_all()?;
        }
        Ok(())
    }

    /// Writes `buf` at byte `offset` (durable after [`Disk::flush`]).
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), Error> {
        if self.is_virtio() {
            // SAFETY: a write only reads the buffer; the mutable view is for
            // the request list's one type and nothing writes through it.
            let b = unsafe { core::slice::from_raw_parts_mut(buf.as_ptr() as *mut u8, buf.len()) };
            return self.virtio_io(false, offset, b);
        }
        if buf.len() as u64 <= BLK_IO_MAX {
            return self.one(Hypercall::BlkWrite, offset, buf.as_ptr() as u64, buf.len());
        }
        let mut off = offset;
        for group in buf.chunks((BLK_IO_MAX * u64::from(BLK_BATCH_MAX)) as usize) {
            let mut b = Batch::new();
            for chunk in group.chunks(BLK_IO_MAX as usize) {
                b.write(*self, off, chunk)?;
                off += chunk.len() as u64;
            }
            b.submit_all()?;
        }
        Ok(())
    }

    /// Returns once every earlier write to this disk is durable (the
    /// monitor's `fdatasync` returned).
    pub fn flush(&self) -> Result<(), Error> {
        if self.is_virtio() {
            return crate::vblk::flush(self.id);
        }
        let mut a = BlkFlushArgs {
            dev: self.id,
            flags: 0,
            ret: 0,
        };
        call(Hypercall::BlkFlush, &mut a);
        result(a.ret).map(|_| ())
    }

    fn one(&self, nr: Hypercall, offset: u64, buf: u64, len: usize) -> Result<(), Error> {
        let mut a = BlkIoArgs {
            dev: self.id,
            flags: 0,
            offset,
            buf: Gpa(buf),
            len: len as u64,
            ret: 0,
        };
        call(nr, &mut a);
        result(a.ret).map(|_| ())
    }
}

impl BlockIo for Disk {
    fn sector_size(&self) -> u32 {
        Disk::sector_size(self)
    }
    fn capacity(&self) -> u64 {
        Disk::capacity(self)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        Disk::read_at(self, offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), Error> {
        Disk::write_at(self, offset, buf)
    }
    fn flush(&self) -> Result<(), Error> {
        Disk::flush(self)
    }
}

/// Up to [`BLK_BATCH_MAX`] requests submitted in one exit.
///
/// The batch borrows each buffer until it is dropped, so read buffers can be
/// looked at only after it is gone (read the statuses first). The monitor
/// runs entries in order and each on its own: one bad entry fails alone.
pub struct Batch<'a> {
    reqs: [BlkReq; BLK_BATCH_MAX as usize],
    len: usize,
    _bufs: PhantomData<&'a mut [u8]>,
}

impl Default for Batch<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> Batch<'a> {
    /// An empty batch.
    pub const fn new() -> Self {
        const EMPTY: BlkReq = BlkReq {
            op: 0,
            dev: 0,
            offset: 0,
            buf: Gpa(0),
            len: 0,
            ret: 0,
        };
        Batch {
            reqs: [EMPTY; BLK_BATCH_MAX as usize],
            len: 0,
            _bufs: PhantomData,
        }
    }

    /// Number of requests.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no requests.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(
        &mut self,
        op: u32,
        disk: Disk,
        offset: u64,
        buf: u64,
        len: usize,
    ) -> Result<usize, Error> {
        if self.len == BLK_BATCH_MAX as usize {
            return Err(Error::TooBig);
        }
        self.reqs[self.len] = BlkReq {
            op,
            dev: disk.id,
            offset,
            buf: Gpa(buf),
            len: len as u64,
            ret: 0,
        };
        self.len += 1;
        Ok(self.len - 1)
    }

    /// Adds a read of `buf.len()` bytes at `offset`; returns its index, or
    /// [`Error::TooBig`] when the batch is full.
    pub fn read(&mut self, disk: Disk, offset: u64, buf: &'a mut [u8]) -> Result<usize, Error> {
        self.push(
            BLK_OP_READ,
            disk,
            offset,
            buf.as_mut_ptr() as u64,
            buf.len(),
        )
    }

    /// Adds a write of `buf` at `offset`; returns its index.
    pub fn write(&mut self, disk: Disk, offset: u64, buf: &'a [u8]) -> Result<usize, Error> {
        self.push(BLK_OP_WRITE, disk, offset, buf.as_ptr() as u64, buf.len())
    }

    /// Adds a flush of `disk` (covers the writes before it); returns its index.
    pub fn flush(&mut self, disk: Disk) -> Result<usize, Error> {
        self.push(BLK_OP_FLUSH, disk, 0, 0, 0)
    }

    /// Submits every request in one exit. Returns how many succeeded; see
    /// [`Batch::status`] for each. An `Err` means the list itself was refused.
    pub fn submit(&mut self) -> Result<usize, Error> {
        if self.reqs[..self.len].iter().any(|r| is_virtio(r.dev)) {
            return self.submit_virtio();
        }
        let mut a = BlkBatchArgs {
            reqs: Gpa(self.reqs.as_mut_ptr() as u64),
            count: self.len as u32,
            flags: 0,
            ret: 0,
        };
        // The list's address escapes into the asm (which has no `nomem`), so
        // the compiler sees the monitor's writes to each entry's `ret`.
        call(Hypercall::BlkBatch, &mut a);
        result(a.ret).map(|n| n as usize)
    }

    /// The batch on virtio disks: runs of reads and writes go to the queue
    /// together (all in flight), a flush waits for what came before it.
    /// Entries for hypercall disks in a mixed batch go one by one.
    fn submit_virtio(&mut self) -> Result<usize, Error> {
        let n = self.len;
        let mut i = 0;
        while i < n {
            let r = self.reqs[i];
            let disk = disks().find(|d| d.id == r.dev);
            let Some(disk) = disk.filter(|d| d.is_virtio()) else {
                self.reqs[i].ret = match disk {
                    None => Error::NoDev.to_ret(),
                    Some(d) => single(d, &r).map_or_else(|e| e.to_ret(), |n| n as i64),
                };
                i += 1;
                continue;
            };
            if r.op == BLK_OP_FLUSH {
                self.reqs[i].ret = disk.flush().map_or_else(|e| e.to_ret(), |_| 0);
                i += 1;
                continue;
            }
            // A run of reads and writes on this disk.
            let mut j = i;
            let mut ops = alloc::vec::Vec::new();
            while j < n && self.reqs[j].dev == r.dev && self.reqs[j].op != BLK_OP_FLUSH {
                let q = self.reqs[j];
                let read = q.op == BLK_OP_READ;
                let checked = match q.op {
                    BLK_OP_READ | BLK_OP_WRITE if q.len > BLK_IO_MAX => Err(Error::TooBig),
                    BLK_OP_READ | BLK_OP_WRITE => disk.check(!read, q.offset, q.len),
                    _ => Err(Error::Unsupported),
                };
                // SAFETY: the batch borrows each buffer for `'a` (it was
                // pushed with its length); a write's buffer is only read.
                let buf: &mut [u8] = match checked {
                    Ok(()) => unsafe {
                        core::slice::from_raw_parts_mut(q.buf.0 as *mut u8, q.len as usize)
                    },
                    Err(_) => &mut [],
                };
                ops.push((
                    j,
                    checked,
                    crate::vblk::Op {
                        read,
                        offset: q.offset,
                        buf,
                        ret: Ok(()),
                    },
                ));
                j += 1;
            }
            let mut list: alloc::vec::Vec<crate::vblk::Op<'_>> = alloc::vec::Vec::new();
            let mut idx = alloc::vec::Vec::new();
            for (k, checked, op) in ops {
                match checked {
                    Ok(()) => {
                        idx.push(k);
                        list.push(op);
                    }
                    Err(e) => self.reqs[k].ret = e.to_ret(),
                }
            }
            let whole = crate::vblk::run(r.dev, &mut list);
            for (k, op) in idx.into_iter().zip(list) {
                self.reqs[k].ret = match whole.and(op.ret) {
                    Ok(()) => self.reqs[k].len as i64,
                    Err(e) => e.to_ret(),
                };
            }
            i = j;
        }
        Ok(self.reqs[..n].iter().filter(|r| r.ret >= 0).count())
    }

    /// Submits, then returns the first failed entry's error, if any.
    pub fn submit_all(&mut self) -> Result<(), Error> {
        self.submit()?;
        (0..self.len).try_for_each(|i| self.status(i).map(|_| ()))
    }

    /// Result of request `i` after [`Batch::submit`]: bytes moved (0 for a
    /// flush) or its error.
    pub fn status(&self, i: usize) -> Result<u64, Error> {
        match self.reqs[..self.len].get(i) {
            Some(r) => result(r.ret),
            None => Err(Error::Inval),
        }
    }

    /// Empties the batch for reuse (with buffers of the same lifetime).
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// Whether device `id` is a virtio disk.
fn is_virtio(id: u32) -> bool {
    disks().any(|d| d.id == id && d.is_virtio())
}

/// One hypercall-disk entry of a mixed batch.
fn single(d: Disk, r: &BlkReq) -> Result<u64, Error> {
    // SAFETY: as in `submit_virtio`: the batch borrows the buffer.
    let buf = unsafe { core::slice::from_raw_parts_mut(r.buf.0 as *mut u8, r.len as usize) };
    match r.op {
        BLK_OP_READ => d.read_at(r.offset, buf).map(|()| r.len),
        BLK_OP_WRITE => d.write_at(r.offset, buf).map(|()| r.len),
        BLK_OP_FLUSH => d.flush().map(|()| 0),
        _ => Err(Error::Unsupported),
    }
}
