//! Page runs and disk runs: reading what changed and sending it sealed in
//! place, zero runs as counts only.

use super::link::Link;
use super::Attempt;
use crate::memory::DirtySet;
use crate::migration::protocol::{self, Kind, FRAME_HEADER, PAGES_HEADER, TAG_LEN};
use crate::migration::MigrateError;
use duet_abi::PAGE_SIZE;

/// Disks are tracked and copied in units of this many bytes.
pub(super) const DISK_UNIT: u64 = 4096;
/// Room before the first page read into the page buffer: a page run is
/// sealed where it lies, its frame and run headers written just before it
/// (here, or over the tail of the zero page before it, which is not sent).
const PAGES_FRONT: usize = FRAME_HEADER + PAGES_HEADER;
/// The same for disk runs.
const DISK_FRONT: usize = FRAME_HEADER + protocol::DISK_HEADER;

impl Attempt<'_> {
    /// The disk units written since the last call, one set per copied disk.
    pub(super) fn collect_disks(&self) -> Vec<DirtySet> {
        self.h
            .disks
            .iter()
            .map(|d| {
                let units = d.capacity.div_ceil(DISK_UNIT);
                let mut set = DirtySet::from_kvm(Vec::new(), units);
                set.add(d.dirty.take());
                set
            })
            .collect()
    }

    pub(super) fn send_disk_sets(
        &mut self,
        s: &mut Link,
        sets: &[DirtySet],
    ) -> Result<(), MigrateError> {
        for (i, set) in sets.iter().enumerate() {
            for (first, count) in set.runs(protocol::MAX_DISK_RUN / DISK_UNIT) {
                self.send_disk_run(s, i, first, count)?;
            }
        }
        Ok(())
    }

    /// Sends disk `i`'s units `first..first+count` (at most
    /// [`protocol::MAX_DISK_RUN`] bytes, cut at the disk's end): zero
    /// sub-runs as [`Kind::DiskZero`], the rest as [`Kind::Disk`].
    pub(super) fn send_disk_run(
        &mut self,
        s: &mut Link,
        i: usize,
        first: u64,
        count: u64,
    ) -> Result<(), MigrateError> {
        use std::os::unix::fs::FileExt;
        let d = &self.h.disks[i];
        let offset = first * DISK_UNIT;
        let end = ((first + count) * DISK_UNIT).min(d.capacity);
        if offset >= end {
            return Ok(());
        }
        let len = (end - offset) as usize;
        // [room | the run's bytes | tag room]: each non-zero sub-run is
        // sealed where it lies (see `send_pages`).
        let mut buf = std::mem::take(&mut self.dbuf);
        buf.resize(DISK_FRONT + len + TAG_LEN, 0);
        let data = &mut buf[DISK_FRONT..DISK_FRONT + len];
        if let Err(e) = d.file.read_exact_at(data, offset) {
            self.dbuf = buf;
            return Err(MigrateError::State(format!("reading disk {i}: {e}")));
        }
        let zero: Vec<bool> = data
            .chunks(DISK_UNIT as usize)
            .map(|u| u.iter().all(|&b| b == 0))
            .collect();
        let mut r = Ok(());
        let mut a = 0;
        while a < zero.len() && r.is_ok() {
            let mut b = a + 1;
            while b < zero.len() && zero[b] == zero[a] {
                b += 1;
            }
            let lo = a * DISK_UNIT as usize;
            let hi = (b * DISK_UNIT as usize).min(len);
            let head = protocol::disk_header(i as u32, offset + lo as u64, (hi - lo) as u64);
            r = if zero[a] {
                self.frame(s, Kind::DiskZero, &head)
            } else {
                let (lo, hi) = (DISK_FRONT + lo, DISK_FRONT + hi);
                buf[lo - head.len()..lo].copy_from_slice(&head);
                let frame = &mut buf[lo - DISK_FRONT..hi + TAG_LEN];
                self.bytes += frame.len() as u64;
                s.write_sealed(Kind::Disk, frame)
            };
            a = b;
        }
        self.dbuf = buf;
        r
    }

    /// Sends pages `first..first+count` (at most a frame's worth): non-zero
    /// sub-runs as pages, zero ones as zero runs (skipped when `fresh`: the
    /// destination's memory starts zeroed).
    pub(super) fn send_run(
        &mut self,
        s: &mut Link,
        first: u64,
        count: u64,
        fresh: bool,
    ) -> Result<(), MigrateError> {
        // One buffer for the whole attempt (taken out so `self` stays free).
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(
            PAGES_FRONT + (protocol::MAX_PAGES_PER_FRAME * PAGE_SIZE) as usize + TAG_LEN,
            0,
        );
        let r = self.send_pages(s, first, count, fresh, &mut buf);
        self.buf = buf;
        r
    }

    /// Reads pages into `buf` after [`PAGES_FRONT`] bytes of room and seals
    /// each non-zero sub-run where it lies: its frame and run headers go in
    /// the 32 bytes before it (the room, or the tail of a zero page: a run
    /// is as long as it can be, so the page before it is zero and only its
    /// count is sent) and its tag in the 16 after (the head of the next,
    /// zero, page, or the room at the end). Guest bytes are copied once,
    /// from guest memory, and encrypted in place.
    fn send_pages(
        &mut self,
        s: &mut Link,
        first: u64,
        count: u64,
        fresh: bool,
        buf: &mut [u8],
    ) -> Result<(), MigrateError> {
        let mut at = first;
        let end = first + count;
        while at < end {
            let n = (end - at).min(protocol::MAX_PAGES_PER_FRAME);
            let data = &mut buf[PAGES_FRONT..PAGES_FRONT + (n * PAGE_SIZE) as usize];
            self.h
                .mem
                .read(at * PAGE_SIZE, data)
                .map_err(|e| MigrateError::State(format!("reading guest memory: {e}")))?;
            let zero: Vec<bool> = data
                .chunks(PAGE_SIZE as usize)
                .map(|p| p.iter().all(|&b| b == 0))
                .collect();
            let mut i = 0u64;
            while i < n {
                let z = zero[i as usize];
                let mut j = i + 1;
                while j < n && zero[j as usize] == z {
                    j += 1;
                }
                if z && !fresh {
                    let h = protocol::pages_header(at + i, j - i);
                    self.frame(s, Kind::ZeroPages, &h)?;
                } else if !z {
                    let lo = PAGES_FRONT + (i * PAGE_SIZE) as usize;
                    let hi = PAGES_FRONT + (j * PAGE_SIZE) as usize;
                    let head = protocol::pages_header(at + i, j - i);
                    buf[lo - PAGES_HEADER..lo].copy_from_slice(&head);
                    let frame = &mut buf[lo - PAGES_FRONT..hi + TAG_LEN];
                    self.bytes += frame.len() as u64;
                    s.write_sealed(Kind::Pages, frame)?;
                }
                i = j;
            }
            at += n;
        }
        Ok(())
    }
}
