//! Editing a snapshot's state file from its documented layout
//! (`docs/snapshots.md`, `duet_monitor::contract::statefile`), to craft
//! damaged snapshots without the monitor's internals.

use duet_monitor::contract::statefile::{CRC_OFFSET, HEADER_SIZE, MAGIC};
use std::path::Path;

/// Rewrites the header of the state file at `path` with `f`, then fixes the
/// header's CRC32 so only the edited field is wrong.
pub fn edit_header(path: &Path, f: impl FnOnce(&mut [u8])) {
    let mut b = std::fs::read(path).expect("read the state file");
    assert!(
        b.len() >= HEADER_SIZE && b[..8] == MAGIC,
        "not a state file"
    );
    f(&mut b[..HEADER_SIZE]);
    let crc = crc32fast::hash(&b[..CRC_OFFSET]);
    b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(path, b).expect("write the state file");
}

/// Reads a little-endian `u32` at `off`.
pub fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

/// Reads a little-endian `u64` at `off`.
pub fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Writes a little-endian `u32` at `off`.
pub fn set_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Writes a little-endian `u64` at `off`.
pub fn set_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}
