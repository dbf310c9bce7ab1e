//! The append-only log on the disk: replay at start, group commit of each
//! loop's writes, `APPENDFSYNC` flushing, and crash-safe compaction.
//!
//! The server applies a write to memory, appends its record here, and
//! replies only after [`Log::commit`] at the end of the loop iteration:
//! with `always` that commit flushes (one exit for the write and the flush
//! of every command the iteration served, Redis's group commit), so a reply
//! means the write is on disk. `everysec` writes every iteration and
//! flushes once a second on the exitless clock; `no` never flushes.
//!
//! Compaction writes the live keys as a new log (fresh nonce) into the
//! other region, flushes it, then writes and flushes the next superblock
//! (see `superblock.rs`). A crash before the superblock is durable leaves
//! the old log current and whole; after, the new one. `KVD_CRASH_AT=STEP`
//! stops the guest at a step (it prints `kvd: crash point STEP` and sleeps)
//! so tests can kill it there: `compact-begin`, `compact-partial` (half the
//! new log written), `compact-written`, `compact-flushed`,
//! `compact-super-torn` (a damaged superblock written), `compact-super`
//! (written, not flushed), `compact-done`.

mod compact;
mod replay;

use crate::db::Db;
use crate::record::{Record, HEADER};
use crate::superblock::{self, Slot, Super, DATA_START};
use alloc::vec::Vec;
use duet::abi::block::BLK_IO_MAX;
use duet::abi::hypercall::Error;
use duet::block::{Batch, Disk};
use replay::{heap_free, replay, Reader};

/// Replay reads the log in windows of this size (one exit each).
const WINDOW: u64 = 1 << 20;
/// Compaction writes the new log in chunks of about this size.
const CHUNK: usize = 1 << 20;
/// The smallest region worth having.
const MIN_REGION: u64 = 64 * 1024;
const NS_PER_SEC: u64 = 1_000_000_000;

/// `APPENDFSYNC`, with Redis's meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// Flush before replying to any write.
    Always,
    /// Write every loop iteration, flush once a second.
    EverySec,
    /// Write every loop iteration, leave flushing to the host.
    No,
}

impl Fsync {
    /// The name `CONFIG GET appendfsync` gives.
    pub fn name(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::EverySec => "everysec",
            Fsync::No => "no",
        }
    }
}

/// Why the log cannot be used.
#[derive(Debug)]
pub enum LogError {
    /// The disk failed a request.
    Disk(Error),
    /// The disk is too small for two superblocks and two regions.
    TooSmall(u64),
    /// The disk holds something other than a kvd log.
    NotKvd,
    /// The disk is smaller than the log it holds says.
    Shrunk,
    /// The live data does not fit a region.
    Full(u64),
}

impl From<Error> for LogError {
    fn from(e: Error) -> LogError {
        LogError::Disk(e)
    }
}

impl core::fmt::Display for LogError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LogError::Disk(e) => write!(f, "disk error: {e}"),
            LogError::TooSmall(c) => write!(
                f,
                "the disk has {c} bytes; kvd needs at least {} (use a larger --disk)",
                DATA_START + 2 * MIN_REGION
            ),
            LogError::NotKvd => f.write_str(
                "the disk holds something that is not a kvd log; give kvd a blank (zeroed) disk",
            ),
            LogError::Shrunk => {
                f.write_str("the disk is smaller than the log on it says; attach the whole disk")
            }
            LogError::Full(r) => write!(
                f,
                "the live data does not fit the log's region of {r} bytes (use a larger --disk)"
            ),
        }
    }
}

/// Counters for `INFO`.
#[derive(Clone, Copy, Default)]
pub struct LogStats {
    /// Records replayed at start.
    pub replayed: u64,
    /// Write exits.
    pub writes: u64,
    /// Flushes (`fdatasync` on the host).
    pub flushes: u64,
    /// Compactions done.
    pub rewrites: u64,
}

/// The open log.
pub struct Log {
    disk: Disk,
    ss: u64,
    sb: Super,
    /// Region offset of `wbuf[0]`, a sector boundary.
    wbase: u64,
    /// The log from `wbase` on: the written part of the last sector, then
    /// records not yet written.
    wbuf: Vec<u8>,
    /// How much of `wbuf` is on the disk.
    wdone: usize,
    /// CRC of the last record (the chain).
    chain: u32,
    /// Written since the last flush.
    dirty: bool,
    last_flush_ns: u64,
    fsync: Fsync,
    /// Size after the last compaction (or at start).
    pub base: u64,
    crash_at: Option<&'static str>,
    /// Counters.
    pub stats: LogStats,
}

/// The store at start: the log when the disk is writable.
pub enum Opened {
    /// A writable log.
    Log(Log),
    /// A read-only disk: replayed, then served from memory.
    ReadOnly(u64),
}

/// Stops here (sleeping) when `KVD_CRASH_AT` names `step`.
fn crash_point(at: Option<&str>, step: &str) {
    if at == Some(step) {
        duet::println!("kvd: crash point {step}");
        loop {
            duet::time::sleep(duet::time::Duration::from_secs(1));
        }
    }
}

impl Log {
    /// Opens the log on `disk` (formatting a blank disk) and replays it into
    /// `db`.
    pub fn open(
        disk: Disk,
        fsync: Fsync,
        crash_at: Option<&'static str>,
        db: &mut Db,
        now_ms: u64,
        now_ns: u64,
    ) -> Result<Opened, LogError> {
        let (ss, cap) = (u64::from(disk.sector_size()), disk.capacity());
        let region_size = ((cap.saturating_sub(DATA_START)) / 2) / SLOT_ALIGN * SLOT_ALIGN;
        if region_size < MIN_REGION {
            return Err(LogError::TooSmall(cap));
        }
        let slots = superblock::read(&disk)?;
        let sb = match superblock::current(&slots) {
            Some(sb) => sb,
            None if slots.contains(&Slot::Foreign) => return Err(LogError::NotKvd),
            // Blank, or a first superblock torn before anything was logged.
            None if disk.is_read_only() => return Ok(Opened::ReadOnly(0)),
            None => {
                let sb = Super {
                    generation: 1,
                    region: 0,
                    nonce: duet::rand::u64(),
                    region_size,
                };
                superblock::write(&disk, &sb, false)?;
                disk.flush()?;
                sb
            }
        };
        if sb.region_offset(2) > cap {
            return Err(LogError::Shrunk);
        }
        let (end, chain, n) = replay(&disk, &sb, db, now_ms)?;
        if disk.is_read_only() {
            return Ok(Opened::ReadOnly(n));
        }
        let wbase = end - end % ss;
        let mut wbuf = alloc::vec![0u8; ss as usize];
        if end > wbase {
            disk.read_at(sb.region_offset(sb.region) + wbase, &mut wbuf)?;
        }
        wbuf.truncate((end - wbase) as usize);
        Ok(Opened::Log(Log {
            disk,
            ss,
            sb,
            wbase,
            wdone: wbuf.len(),
            wbuf,
            chain,
            dirty: false,
            last_flush_ns: now_ns,
            fsync,
            base: end,
            crash_at,
            stats: LogStats {
                replayed: n,
                ..LogStats::default()
            },
        }))
    }

    /// Bytes in the log, records not yet written included.
    pub fn len(&self) -> u64 {
        self.wbase + self.wbuf.len() as u64
    }

    /// Bytes per region: the most the log can hold.
    pub fn capacity(&self) -> u64 {
        self.sb.region_size
    }

    /// The fsync policy.
    pub fn fsync(&self) -> Fsync {
        self.fsync
    }

    /// Whether `bytes` more of records fit the region.
    pub fn has_room(&self, bytes: u64) -> bool {
        self.len() + bytes <= self.sb.region_size
    }

    /// Queues a record (written at the next [`Log::commit`]).
    pub fn append(&mut self, rec: &Record) {
        self.chain = rec.append(&mut self.wbuf, self.chain);
    }

    /// Queues records as one group (written at the next [`Log::commit`]).
    pub fn append_group(&mut self, recs: &[Record]) {
        self.chain = Record::append_group(recs, &mut self.wbuf, self.chain);
    }

    /// Whether records are waiting to be written.
    pub fn pending(&self) -> bool {
        self.wbuf.len() > self.wdone
    }

    /// When the next everysec flush is due (guest monotonic ns), if one is.
    pub fn flush_due(&self) -> Option<u64> {
        (self.fsync == Fsync::EverySec && self.dirty).then_some(self.last_flush_ns + NS_PER_SEC)
    }

    fn flush(&mut self, now_ns: u64) -> Result<(), Error> {
        self.disk.flush()?;
        self.stats.flushes += 1;
        self.dirty = false;
        self.last_flush_ns = now_ns;
        Ok(())
    }

    /// Writes the queued records (and flushes, as the policy says); replies
    /// to the writes they log may go out once this returns.
    pub fn commit(&mut self, now_ns: u64) -> Result<(), Error> {
        if self.pending() {
            let ss = self.ss as usize;
            let len = self.wbuf.len();
            // Rewrite from the sector the unwritten part starts in; the
            // part already written is rewritten with the same bytes.
            let from = self.wdone - self.wdone % ss;
            self.wbuf.resize(len.next_multiple_of(ss), 0);
            let off = self.sb.region_offset(self.sb.region) + self.wbase + from as u64;
            let data = &self.wbuf[from..];
            let always = self.fsync == Fsync::Always;
            let r = if always && data.len() as u64 <= BLK_IO_MAX {
                // One exit for the write and its flush.
                let mut b = Batch::new();
                let _ = b.write(self.disk, off, data);
                let _ = b.flush(self.disk);
                b.submit_all()
            } else {
                self.disk.write_at(off, data).and_then(|()| {
                    if always {
                        self.disk.flush()
                    } else {
                        Ok(())
                    }
                })
            };
            self.wbuf.truncate(len);
            r?;
            self.stats.writes += 1;
            if always {
                self.stats.flushes += 1;
                self.last_flush_ns = now_ns;
            } else {
                self.dirty = true;
            }
            // Keep only the last, partial sector.
            let keep = len - len % ss;
            self.wbuf.drain(..keep);
            self.wbase += keep as u64;
            self.wdone = self.wbuf.len();
        }
        if self.flush_due().is_some_and(|t| now_ns >= t) {
            self.flush(now_ns)?;
        }
        Ok(())
    }

    /// Whether the log has outgrown the live data by `percent` % (and is
    /// over `min` bytes): Redis's `auto-aof-rewrite-*` rule.
    pub fn wants_compaction(&self, live: u64, percent: u64, min: u64) -> bool {
        let len = self.len();
        len >= min && len > live.saturating_mul(100 + percent) / 100
    }

    /// After a restore from a template: whether the disk still holds
    /// exactly this log (same superblock, nothing appended past our end by
    /// another run since the snapshot).
    pub fn still_current(&mut self) -> Result<bool, Error> {
        if superblock::current(&superblock::read(&self.disk)?) != Some(self.sb) {
            return Ok(false);
        }
        let mut r = Reader {
            disk: &self.disk,
            start: self.sb.region_offset(self.sb.region),
            size: self.sb.region_size,
            base: 0,
            buf: Vec::new(),
        };
        let pos = self.len();
        let Some(h) = r.get(pos, HEADER)? else {
            return Ok(true);
        };
        let room = self.sb.region_size - pos - HEADER as u64;
        let Some(len) = Record::payload_len(h, room.min(heap_free() / 2) as usize) else {
            return Ok(true);
        };
        let chain = self.chain;
        Ok(match r.get(pos, HEADER + len)? {
            Some(rec) => Record::verify(rec, chain).is_none(),
            None => true,
        })
    }
}

/// Regions are multiples of this (the largest sector size).
const SLOT_ALIGN: u64 = 4096;
