//! Compaction: the live keys as a new log in the other region, then the
//! switch recorded by the next superblock (see the module docs of `aof`
//! for the steps and the crash points between them).

use super::{crash_point, Log, LogError, CHUNK};
use crate::db::Db;
use crate::record::{self, Record};
use crate::superblock::{self, Super};
use alloc::vec::Vec;

impl Log {
    /// Rewrites the log as the live keys of `db` in the other region and
    /// switches to it (see the module docs). Queued records are dropped:
    /// `db` already holds their effect. On error the old log stays current.
    pub fn compact(&mut self, db: &Db, now_ms: u64, now_ns: u64) -> Result<(), LogError> {
        let at = self.crash_at;
        crash_point(at, "compact-begin");
        let ss = self.ss as usize;
        let next = Super {
            generation: self.sb.generation + 1,
            region: 1 - self.sb.region,
            nonce: duet::rand::u64(),
            region_size: self.sb.region_size,
        };
        let start = next.region_offset(next.region);
        let mut chain = record::seed(next.nonce);
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK + ss);
        // Region bytes written so far (whole sectors).
        let mut done = 0u64;
        let full = LogError::Full(next.region_size);
        for (key, e) in db.iter(now_ms) {
            let rec = Record::Set {
                key,
                value: &e.value,
                expire_at: e.expire_at,
            };
            chain = rec.append(&mut buf, chain);
            if done + buf.len() as u64 > next.region_size {
                return Err(full);
            }
            if buf.len() >= CHUNK {
                let n = buf.len() - buf.len() % ss;
                self.disk.write_at(start + done, &buf[..n])?;
                buf.drain(..n);
                done += n as u64;
            }
        }
        let end = done + buf.len() as u64;
        let tail = buf.len() % ss;
        let keep = buf[buf.len() - tail..].to_vec();
        buf.resize(buf.len().next_multiple_of(ss), 0);
        if done + buf.len() as u64 > next.region_size {
            return Err(full);
        }
        if at == Some("compact-partial") {
            let half = (buf.len() / 2).next_multiple_of(ss).min(buf.len());
            self.disk.write_at(start + done, &buf[..half])?;
            crash_point(at, "compact-partial");
        }
        if !buf.is_empty() {
            self.disk.write_at(start + done, &buf)?;
        }
        crash_point(at, "compact-written");
        self.disk.flush()?;
        crash_point(at, "compact-flushed");
        if at == Some("compact-super-torn") {
            superblock::write(&self.disk, &next, true)?;
            crash_point(at, "compact-super-torn");
        }
        superblock::write(&self.disk, &next, false)?;
        crash_point(at, "compact-super");
        self.disk.flush()?;
        crash_point(at, "compact-done");
        self.sb = next;
        self.wbase = end - tail as u64;
        self.wbuf = keep;
        self.wdone = self.wbuf.len();
        self.chain = chain;
        self.dirty = false;
        self.last_flush_ns = now_ns;
        self.base = end;
        self.stats.rewrites += 1;
        self.stats.flushes += 2;
        Ok(())
    }
}
