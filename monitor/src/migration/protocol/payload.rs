//! Page-run and disk-run payloads: encoding and bounds-checked decoding.

use super::{DISK_ALIGN, DISK_HEADER, MAX_DISK_RUN, MAX_PAGES_PER_FRAME, PAGES_HEADER};
use crate::migration::MigrateError;

/// Encodes the header of a run of `count` pages starting at page `first`.
pub fn pages_header(first: u64, count: u64) -> [u8; PAGES_HEADER] {
    let mut h = [0u8; PAGES_HEADER];
    h[..8].copy_from_slice(&first.to_le_bytes());
    h[8..].copy_from_slice(&count.to_le_bytes());
    h
}

/// Validates a page-run payload against guest memory of `mem_pages` pages:
/// returns `(first, count, data)`. `zero` runs carry no data.
pub fn decode_pages(
    payload: &[u8],
    mem_pages: u64,
    zero: bool,
) -> Result<(u64, u64, &[u8]), MigrateError> {
    let bad = |why: &str| MigrateError::Protocol(format!("bad page run: {why}"));
    if payload.len() < PAGES_HEADER {
        return Err(bad("short header"));
    }
    let first = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
    let count = u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes"));
    let data = &payload[PAGES_HEADER..];
    match first.checked_add(count) {
        Some(end) if end <= mem_pages && count > 0 => {}
        _ => return Err(bad("pages outside guest memory")),
    }
    let ok = count <= MAX_PAGES_PER_FRAME
        && if zero {
            data.is_empty()
        } else {
            data.len() as u64 == count * 4096
        };
    if !ok {
        return Err(bad("length does not match the page count"));
    }
    Ok((first, count, data))
}

/// A disk run's header: disk index, byte offset, byte length.
pub fn disk_header(disk: u32, offset: u64, len: u64) -> [u8; DISK_HEADER] {
    let mut h = [0u8; DISK_HEADER];
    h[..4].copy_from_slice(&disk.to_le_bytes());
    h[8..16].copy_from_slice(&offset.to_le_bytes());
    h[16..24].copy_from_slice(&len.to_le_bytes());
    h
}

/// Checks a [`Kind::Disk`] / [`Kind::DiskZero`] payload against the disks'
/// capacities: returns (disk, offset, length, data). Every number comes
/// from the network: index in range, aligned, at most [`MAX_DISK_RUN`],
/// inside the disk, and the data exactly as long as said (none for zero).
pub fn decode_disk<'a>(
    payload: &'a [u8],
    capacities: &[u64],
    zero: bool,
) -> Result<(usize, u64, u64, &'a [u8]), MigrateError> {
    let bad = |why: &str| MigrateError::Protocol(format!("bad disk run: {why}"));
    if payload.len() < DISK_HEADER {
        return Err(bad("short header"));
    }
    let disk = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes")) as usize;
    if payload[4..8] != [0; 4] {
        return Err(bad("reserved bytes set"));
    }
    let offset = u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(payload[16..24].try_into().expect("8 bytes"));
    let data = &payload[DISK_HEADER..];
    let cap = *capacities.get(disk).ok_or_else(|| bad("no such disk"))?;
    if offset % DISK_ALIGN != 0 || len % DISK_ALIGN != 0 || len == 0 || len > MAX_DISK_RUN {
        return Err(bad("unaligned or oversized run"));
    }
    match offset.checked_add(len) {
        Some(end) if end <= cap => {}
        _ => return Err(bad("run outside the disk")),
    }
    let want = if zero { 0 } else { len };
    if data.len() as u64 != want {
        return Err(bad("length does not match the run"));
    }
    Ok((disk, offset, len, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_runs_are_bounded() {
        let caps = [8192u64];
        let mut p = disk_header(0, 512, 1024).to_vec();
        p.extend_from_slice(&[1; 1024]);
        assert_eq!(decode_disk(&p, &caps, false).unwrap().1, 512);
        assert!(decode_disk(&p, &caps, true).is_err());
        assert!(decode_disk(&p, &[1024], false).is_err());
        assert!(decode_disk(&p, &[], false).is_err());
        let z = disk_header(0, 0, 8192);
        assert!(decode_disk(&z, &caps, true).is_ok());
        for h in [
            disk_header(1, 0, 512),
            disk_header(0, 100, 512),
            disk_header(0, 0, 0),
            disk_header(0, u64::MAX - 511, 512),
            disk_header(0, 0, MAX_DISK_RUN + 512),
        ] {
            assert!(decode_disk(&h, &caps, true).is_err(), "{h:?}");
        }
        let mut r = z.to_vec();
        r[5] = 1;
        assert!(decode_disk(&r, &caps, true).is_err());
    }

    #[test]
    fn page_runs_are_bounded() {
        let mut p = pages_header(2, 1).to_vec();
        p.extend_from_slice(&[7; 4096]);
        assert!(decode_pages(&p, 3, false).is_ok());
        assert!(decode_pages(&p, 2, false).is_err());
        assert!(decode_pages(&p[..100], 3, false).is_err());
        let mut big = pages_header(u64::MAX, 2).to_vec();
        big.extend_from_slice(&[0; 8192]);
        assert!(decode_pages(&big, 10, false).is_err());
        assert!(decode_pages(&pages_header(0, 5), 10, true).is_ok());
        assert!(decode_pages(&pages_header(8, 5), 10, true).is_err());
    }
}
