//! The memory file: only populated guest pages, page-aligned, so a restore
//! maps it `MAP_PRIVATE` (lazily, copy-on-write) instead of reading it.
//!
//! Layout: one header page ([`MEM_MAGIC`], version, snapshot id, page
//! count, CRC of those fields), then the pages of each [`MemRange`] of the
//! index back to back. The index (in the state file) says where each run of
//! guest pages lives in the file and carries a CRC32 of its bytes.
//!
//! Populated pages are found with `mincore` on the guest mapping (resident
//! pages; plus, for a guest that was itself restored, every range its memory
//! file backs), and all-zero pages are left out: they come back as the
//! anonymous mapping's zero pages.

use super::SnapshotError;
use crate::memory::resident::for_each_resident;
use crate::memory::{GuestMem, Mapping};
use duet_abi::{Gpa, PAGE_SIZE};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Magic at the start of a memory file.
pub const MEM_MAGIC: [u8; 8] = *b"DUETMEM\0";
/// Version of the memory file layout.
pub const MEM_VERSION: u32 = 1;
const PAGE: usize = PAGE_SIZE as usize;

/// One run of guest pages stored contiguously in the memory file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemRange {
    /// First guest-physical address (page-aligned).
    pub gpa: u64,
    /// Number of pages.
    pub pages: u64,
    /// Page number in the memory file where the run starts (page 0 is the
    /// header).
    pub file_page: u64,
    /// CRC32 of the run's bytes.
    pub crc: u32,
}

/// Where every saved page is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemIndex {
    /// Guest memory size in bytes.
    pub size: u64,
    /// Runs, sorted by address, non-overlapping.
    pub ranges: Vec<MemRange>,
}

impl MemIndex {
    /// Pages stored in the file.
    pub fn pages(&self) -> u64 {
        self.ranges.iter().map(|r| r.pages).sum()
    }
}

/// Writes the populated, non-zero pages of `mem` to a new file at `path`.
/// Returns the index. The caller pauses the guest.
pub fn dump(mem: &GuestMem, path: &Path, id: u64) -> Result<MemIndex, SnapshotError> {
    let io = |e| SnapshotError::io("writing", path, e);
    let file = crate::access::new_file().open(path).map_err(io)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(&[0u8; PAGE]).map_err(io)?;
    let mut page = vec![0u8; PAGE];
    let mut ranges: Vec<MemRange> = Vec::new();
    let mut hasher: Option<crc32fast::Hasher> = None;
    let mut file_page = 1u64;
    let mut next_report = 256u64 << 20;
    let close = |ranges: &mut Vec<MemRange>, h: &mut Option<crc32fast::Hasher>| {
        if let (Some(r), Some(h)) = (ranges.last_mut(), h.take()) {
            r.crc = h.finalize();
        }
    };
    for_each_resident(mem, |first, count| {
        for p in first..first + count {
            // A checked copy (the guest is stopped: it is the page as saved).
            mem.read_bytes(Gpa(p * PAGE_SIZE), &mut page)
                .map_err(std::io::Error::other)?;
            let bytes = &page[..];
            if bytes.iter().all(|&b| b == 0) {
                close(&mut ranges, &mut hasher);
                continue;
            }
            let gpa = p * PAGE_SIZE;
            match (ranges.last_mut(), hasher.as_mut()) {
                (Some(r), Some(h)) if r.gpa + r.pages * PAGE_SIZE == gpa => {
                    r.pages += 1;
                    h.update(bytes);
                }
                _ => {
                    ranges.push(MemRange {
                        gpa,
                        pages: 1,
                        file_page,
                        crc: 0,
                    });
                    let mut h = crc32fast::Hasher::new();
                    h.update(bytes);
                    hasher = Some(h);
                }
            }
            w.write_all(bytes)?;
            file_page += 1;
            if (file_page - 1) * PAGE_SIZE >= next_report {
                // Progress for big guests only; small snapshots stay quiet.
                eprintln!(
                    "duet: snapshot: {} MiB of guest memory written",
                    next_report >> 20
                );
                next_report += 256 << 20;
            }
        }
        close(&mut ranges, &mut hasher);
        Ok(())
    })
    .map_err(io)?;
    close(&mut ranges, &mut hasher);
    let mut file = w.into_inner().map_err(|e| io(e.into_error()))?;
    let header = encode_header(id, file_page - 1);
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.write_all(&header).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(MemIndex {
        size: mem.size(),
        ranges,
    })
}

fn encode_header(id: u64, pages: u64) -> [u8; 36] {
    let mut h = [0u8; 36];
    h[..8].copy_from_slice(&MEM_MAGIC);
    h[8..12].copy_from_slice(&MEM_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&id.to_le_bytes());
    h[24..32].copy_from_slice(&pages.to_le_bytes());
    let crc = crc32fast::hash(&h[..32]);
    h[32..36].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks `index` against guest memory `size` and a memory file of `pages`
/// data pages: sorted, aligned, inside guest memory, contiguous in the file.
pub fn validate_index(index: &MemIndex, size: u64, pages: u64) -> Result<(), String> {
    if index.size != size {
        return Err(format!(
            "memory index is for {} bytes of guest memory, the VM has {size}",
            index.size
        ));
    }
    let mut next_gpa = 0u64;
    let mut next_file = 1u64;
    for r in &index.ranges {
        let end = r
            .pages
            .checked_mul(PAGE_SIZE)
            .and_then(|l| r.gpa.checked_add(l));
        match end {
            Some(end)
                if r.pages > 0 && r.gpa % PAGE_SIZE == 0 && r.gpa >= next_gpa && end <= size =>
            {
                next_gpa = end
            }
            _ => {
                return Err(format!(
                    "memory range at {:#x} is out of order or outside guest memory",
                    r.gpa
                ))
            }
        }
        if r.file_page != next_file {
            return Err(format!(
                "memory range at {:#x} is not where the file has it",
                r.gpa
            ));
        }
        next_file += r.pages;
    }
    if next_file - 1 != pages {
        return Err(format!(
            "the index lists {} pages, the memory file holds {pages}",
            next_file - 1
        ));
    }
    Ok(())
}

/// Opens the memory file at `path`, checks it belongs to snapshot `id` and
/// matches `index` (and, when `verify`, the CRC of every range), then maps
/// it under a fresh anonymous guest mapping of `index.size` bytes. Returns
/// the mapping and the guest ranges the file backs.
pub fn map(
    path: &Path,
    index: &MemIndex,
    id: u64,
    verify: bool,
) -> Result<(Mapping, Vec<(u64, u64)>), SnapshotError> {
    let file = File::open(path).map_err(|e| SnapshotError::io("opening", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| SnapshotError::io("reading", path, e))?
        .len();
    let truncated = |detail: String| SnapshotError::Truncated {
        file: path.display().to_string(),
        detail,
    };
    if len < PAGE_SIZE || len % PAGE_SIZE != 0 {
        return Err(truncated(format!(
            "{len} bytes is not a whole number of pages"
        )));
    }
    let mut h = [0u8; 36];
    file.read_exact_at(&mut h, 0)
        .map_err(|e| SnapshotError::io("reading", path, e))?;
    if h[..8] != MEM_MAGIC {
        return Err(SnapshotError::NotSnapshot(format!(
            "{} is not a Duet memory file",
            path.display()
        )));
    }
    if crc32fast::hash(&h[..32]).to_le_bytes() != h[32..36] {
        return Err(SnapshotError::Corrupt {
            file: path.display().to_string(),
            section: "memory file header".into(),
        });
    }
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().expect("8 bytes"));
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if version != MEM_VERSION {
        return Err(SnapshotError::FormatVersion {
            found: version,
            want: MEM_VERSION,
        });
    }
    if u64_at(16) != id {
        return Err(SnapshotError::Invalid(format!(
            "{} belongs to another snapshot than its state file",
            path.display()
        )));
    }
    let pages = u64_at(24);
    if pages != len / PAGE_SIZE - 1 {
        return Err(truncated(format!(
            "the header says {pages} pages, the file holds {}",
            len / PAGE_SIZE - 1
        )));
    }
    validate_index(index, index.size, pages).map_err(SnapshotError::Invalid)?;
    if verify {
        let mut buf = vec![0u8; 1 << 20];
        for r in &index.ranges {
            let mut h = crc32fast::Hasher::new();
            let mut off = r.file_page * PAGE_SIZE;
            let end = off + r.pages * PAGE_SIZE;
            while off < end {
                let n = ((end - off) as usize).min(buf.len());
                file.read_exact_at(&mut buf[..n], off)
                    .map_err(|e| SnapshotError::io("reading", path, e))?;
                h.update(&buf[..n]);
                off += n as u64;
            }
            if h.finalize() != r.crc {
                return Err(SnapshotError::Corrupt {
                    file: path.display().to_string(),
                    section: format!("guest pages at {:#x}", r.gpa),
                });
            }
        }
    }
    let mapping = Mapping::anonymous(index.size as usize)
        .map_err(|e| SnapshotError::io("mapping guest memory for", path, e))?;
    for r in &index.ranges {
        mapping
            .map_file(
                r.gpa as usize,
                (r.pages * PAGE_SIZE) as usize,
                &file,
                r.file_page * PAGE_SIZE,
            )
            .map_err(|e| SnapshotError::io("mapping", path, e))?;
    }
    let ranges = index
        .ranges
        .iter()
        .map(|r| (r.gpa, r.gpa + r.pages * PAGE_SIZE))
        .collect();
    Ok((mapping, ranges))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{Backing, MemState};
    use crate::persist::Persist;

    #[test]
    fn memory_round_trip() {
        let dir = std::env::temp_dir().join(format!("duet-memtest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut mem = GuestMem::new(8 << 20).unwrap();
        mem.set_writable(vec![(0x1000, 0x3000)]);
        mem.write_bytes(Gpa(0x1234), b"hello").unwrap();
        mem.write_bytes(Gpa(0x50_0000), b"world").unwrap();
        let path = dir.join("memory");
        let index = dump(&mem, &path, 7).unwrap();
        assert!(index.pages() >= 2);
        let s: MemState = mem.save().unwrap();
        let restore = |verify| {
            let (m, r) = map(&path, &index, 7, verify).unwrap();
            GuestMem::restore(Backing::Mapped(m, r), &s).unwrap()
        };
        let back = restore(true);
        let mut b = [0u8; 5];
        back.read_bytes(Gpa(0x1234), &mut b).unwrap();
        assert_eq!(&b, b"hello");
        back.read_bytes(Gpa(0x50_0000), &mut b).unwrap();
        assert_eq!(&b, b"world");
        assert_eq!(back.writable(), mem.writable());
        // Copy-on-write: writing the restored memory leaves the file alone.
        back.write_bytes(Gpa(0x1234), b"HELLO").unwrap();
        let again = restore(true);
        again.read_bytes(Gpa(0x1234), &mut b).unwrap();
        assert_eq!(&b, b"hello");
        // A wrong snapshot id is refused.
        assert!(map(&path, &index, 8, false).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
