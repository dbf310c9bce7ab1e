//! Reading a log back: records from the start of a region until the first
//! that does not verify (see `record.rs` for why that is the right end),
//! each applied to the keyspace.

use super::WINDOW;
use crate::db::Db;
use crate::record::{self, Record, HEADER};
use crate::superblock::Super;
use alloc::vec::Vec;
use duet::abi::hypercall::Error;
use duet::block::Disk;

/// Reads a region through an aligned window.
pub(super) struct Reader<'d> {
    pub(super) disk: &'d Disk,
    pub(super) start: u64,
    pub(super) size: u64,
    pub(super) base: u64,
    pub(super) buf: Vec<u8>,
}

impl Reader<'_> {
    /// Region bytes `[pos, pos + len)`, or `None` past the region.
    pub(super) fn get(&mut self, pos: u64, len: usize) -> Result<Option<&[u8]>, Error> {
        let end = pos + len as u64;
        if end > self.size {
            return Ok(None);
        }
        if pos < self.base || end > self.base + self.buf.len() as u64 {
            let ss = u64::from(self.disk.sector_size());
            self.base = pos - pos % ss;
            let want = (end - self.base).next_multiple_of(ss).max(WINDOW);
            let n = want.min(self.size - self.base);
            self.buf.clear();
            self.buf.resize(n as usize, 0);
            self.disk.read_at(self.start + self.base, &mut self.buf)?;
        }
        let at = (pos - self.base) as usize;
        Ok(Some(&self.buf[at..at + len]))
    }
}

/// Free heap: what a record read at replay may take at most (half of it),
/// so a garbage length can never exhaust memory.
pub(super) fn heap_free() -> u64 {
    let limit = duet::rt::boot_info().heap_limit;
    limit.saturating_sub(duet::allocator::stats().0 as u64)
}

/// Replays region `sb.region` into `db`; returns the log's end and chain.
pub(super) fn replay(
    disk: &Disk,
    sb: &Super,
    db: &mut Db,
    now_ms: u64,
) -> Result<(u64, u32, u64), Error> {
    let mut r = Reader {
        disk,
        start: sb.region_offset(sb.region),
        size: sb.region_size,
        base: 0,
        buf: Vec::new(),
    };
    let (mut pos, mut chain, mut n) = (0u64, record::seed(sb.nonce), 0u64);
    while let Some(h) = r.get(pos, HEADER)? {
        let room = (sb.region_size - pos - HEADER as u64).min(heap_free() / 2);
        let Some(len) = Record::payload_len(h, room as usize) else {
            break;
        };
        let Some(rec) = r.get(pos, HEADER + len)? else {
            break;
        };
        let Some((rec, crc)) = Record::verify(rec, chain) else {
            break;
        };
        apply(&rec, db, now_ms);
        chain = crc;
        pos += (HEADER + len) as u64;
        n += 1;
    }
    Ok((pos, chain, n))
}

/// Replays `rec` into `db` (a key already past its time is dropped, as it
/// would have been by now).
pub(super) fn apply(rec: &Record, db: &mut Db, now_ms: u64) {
    match *rec {
        Record::Set {
            key,
            value,
            expire_at,
        } => {
            if expire_at != 0 && expire_at <= now_ms {
                db.del(key, now_ms);
            } else {
                db.set(key, value.into(), expire_at);
            }
        }
        Record::Del { key } => {
            db.del(key, now_ms);
        }
        Record::Expire { key, at } => {
            if at != 0 && at <= now_ms {
                db.del(key, now_ms);
            } else {
                db.set_expire(key, at, now_ms);
            }
        }
        Record::FlushAll => db.flush(),
        Record::Group(body) => {
            for r in record::members(body).flatten() {
                apply(&r, db, now_ms);
            }
        }
    }
}
