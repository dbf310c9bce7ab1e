//! The disk's layout and its two superblock slots.
//!
//! ```text
//! 0       4 KiB    8 KiB          8 KiB + R       8 KiB + 2R
//! | slot 0 | slot 1 | region 0      | region 1      |
//! ```
//!
//! The log lives in one region; compaction writes the live data as a new
//! log into the other, then records the switch by writing the superblock
//! of the next generation into the slot the current one is not in. A
//! superblock is one sector with a CRC, so a torn write leaves the older
//! slot in charge, and its region is untouched until a later compaction.
//! The valid slot with the highest generation is the current one.

use crate::crc::crc32;
use duet::abi::hypercall::Error;
use duet::block::Disk;

/// Disk bytes per slot (a 512- or 4096-byte sector is written in it).
pub const SLOT_BYTES: u64 = 4096;
/// Where region 0 starts.
pub const DATA_START: u64 = 2 * SLOT_BYTES;
const MAGIC: &[u8; 8] = b"KVDSUPR1";
const VERSION: u32 = 1;
/// Bytes covered by the CRC (which follows them).
const BODY: usize = 40;

/// The current log: which region, which generation, and the nonce its
/// record chain starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Super {
    /// Bumped by every compaction.
    pub generation: u64,
    /// 0 or 1.
    pub region: u32,
    /// Fresh for every log written (see `record::seed`).
    pub nonce: u64,
    /// Bytes per region.
    pub region_size: u64,
}

/// What a slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// A superblock whose CRC checks.
    Valid(Super),
    /// All zeros: never written.
    Blank,
    /// Our magic with a bad CRC: a torn write.
    Torn,
    /// Something else: not a kvd disk.
    Foreign,
}

fn le<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

impl Super {
    /// Where this superblock's slot is.
    pub fn slot_offset(&self) -> u64 {
        (self.generation % 2) * SLOT_BYTES
    }

    /// Where region `r` starts on the disk.
    pub fn region_offset(&self, r: u32) -> u64 {
        DATA_START + u64::from(r) * self.region_size
    }

    /// Fills `sector` (zeroed first) with the superblock.
    pub fn encode(&self, sector: &mut [u8]) {
        sector.fill(0);
        sector[..8].copy_from_slice(MAGIC);
        sector[8..12].copy_from_slice(&VERSION.to_le_bytes());
        sector[12..16].copy_from_slice(&self.region.to_le_bytes());
        sector[16..24].copy_from_slice(&self.generation.to_le_bytes());
        sector[24..32].copy_from_slice(&self.nonce.to_le_bytes());
        sector[32..40].copy_from_slice(&self.region_size.to_le_bytes());
        let crc = crc32(&[&sector[..BODY]]);
        sector[BODY..BODY + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// Reads a slot's sector.
    pub fn decode(sector: &[u8]) -> Slot {
        if sector.iter().all(|&b| b == 0) {
            return Slot::Blank;
        }
        if &sector[..8] != MAGIC {
            return Slot::Foreign;
        }
        let crc = u32::from_le_bytes(le(sector, BODY));
        let s = Super {
            region: u32::from_le_bytes(le(sector, 12)),
            generation: u64::from_le_bytes(le(sector, 16)),
            nonce: u64::from_le_bytes(le(sector, 24)),
            region_size: u64::from_le_bytes(le(sector, 32)),
        };
        let version = u32::from_le_bytes(le(sector, 8));
        if crc32(&[&sector[..BODY]]) != crc || version != VERSION || s.region > 1 {
            return Slot::Torn;
        }
        Slot::Valid(s)
    }
}

/// Reads both slots.
pub fn read(disk: &Disk) -> Result<[Slot; 2], Error> {
    let ss = disk.sector_size() as usize;
    let mut b = alloc::vec![0u8; ss];
    let mut out = [Slot::Blank; 2];
    for (i, slot) in out.iter_mut().enumerate() {
        disk.read_at(i as u64 * SLOT_BYTES, &mut b)?;
        *slot = Super::decode(&b);
    }
    Ok(out)
}

/// The current superblock: the valid slot of the highest generation.
pub fn current(slots: &[Slot; 2]) -> Option<Super> {
    slots
        .iter()
        .filter_map(|s| match s {
            Slot::Valid(s) => Some(*s),
            _ => None,
        })
        .max_by_key(|s| s.generation)
}

/// Writes `s` into its slot. `torn` writes a damaged copy instead (the
/// `compact-super-torn` crash point: what a write cut short leaves).
pub fn write(disk: &Disk, s: &Super, torn: bool) -> Result<(), Error> {
    let ss = disk.sector_size() as usize;
    let mut b = alloc::vec![0u8; ss];
    s.encode(&mut b);
    if torn {
        b[BODY / 2..].fill(0);
    }
    disk.write_at(s.slot_offset(), &b)
}
