//! The state file: a fixed, versioned header, then checksummed sections.
//!
//! ```text
//! header (80 bytes, little-endian)
//!   0  magic "DUETSNAP"         8  format version u32   12 ABI version u32
//!   16 CPU vendor [12]          28 CPU features [u32; 6]
//!   52 pad u32                  56 TSC kHz u64          64 snapshot id u64
//!   72 section count u32        76 CRC32 of bytes 0..76
//! each section
//!   tag u32, reserved u32, length u64, CRC32 u32, reserved u32, payload
//! ```
//!
//! Payloads are postcard-encoded serde structs (see `persist.rs`): a compact,
//! stable, well-kept binary format; the header and the per-section CRCs are
//! ours so that versioning and corruption checks do not depend on it.

use super::SnapshotError;
use std::path::Path;

/// Magic at the start of a state file.
pub const MAGIC: [u8; 8] = *b"DUETSNAP";
/// Version of this layout (header, sections, payload structs).
pub const FORMAT_VERSION: u32 = 1;
/// Header size.
pub const HEADER_SIZE: usize = 80;
const SECTION_HEADER: usize = 24;
const MAX_SECTIONS: u32 = 64;

/// Section tags.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// vCPU state.
    Vcpu = 1,
    /// KVM clock.
    KvmClock = 2,
    /// The guest clock page.
    Clock = 3,
    /// The monitor's own state.
    Monitor = 4,
    /// The image file's bytes.
    Image = 5,
    /// Device records.
    Devices = 6,
    /// The memory index.
    Memory = 7,
}

/// The fixed header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// `duet_abi::ABI_VERSION` of the writer.
    pub abi_version: u32,
    /// CPUID vendor string.
    pub vendor: [u8; 12],
    /// Feature words: CPUID 1 ECX/EDX, 7.0 EBX/ECX/EDX, 0x8000_0001 ECX.
    pub features: [u32; 6],
    /// Guest TSC frequency.
    pub tsc_khz: u64,
    /// Random id shared with the memory file.
    pub snapshot_id: u64,
}

/// A decoded state file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateFile {
    /// The header.
    pub header: Header,
    /// `(tag, payload)` in file order.
    pub sections: Vec<(u32, Vec<u8>)>,
}

/// CRC32 of a section: its tag, length and payload.
fn section_crc(tag: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&tag.to_le_bytes());
    h.update(&(payload.len() as u64).to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

impl StateFile {
    /// Encodes the file.
    pub fn encode(&self) -> Vec<u8> {
        let h = &self.header;
        let mut out = Vec::with_capacity(HEADER_SIZE);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&h.format_version.to_le_bytes());
        out.extend_from_slice(&h.abi_version.to_le_bytes());
        out.extend_from_slice(&h.vendor);
        for f in h.features {
            out.extend_from_slice(&f.to_le_bytes());
        }
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&h.tsc_khz.to_le_bytes());
        out.extend_from_slice(&h.snapshot_id.to_le_bytes());
        out.extend_from_slice(&(self.sections.len() as u32).to_le_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(out.len(), HEADER_SIZE);
        for (tag, payload) in &self.sections {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            out.extend_from_slice(&section_crc(*tag, payload).to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(payload);
        }
        out
    }

    /// Decodes and checks a state file (`name` names it in errors).
    pub fn decode(b: &[u8], name: &str) -> Result<StateFile, SnapshotError> {
        let truncated = |detail: String| SnapshotError::Truncated {
            file: name.to_string(),
            detail,
        };
        if b.len() < MAGIC.len() || b[..MAGIC.len()] != MAGIC {
            return Err(SnapshotError::NotSnapshot(format!(
                "{name} is not a Duet snapshot state file (bad magic)"
            )));
        }
        if b.len() < HEADER_SIZE {
            return Err(truncated(format!(
                "{} bytes, shorter than the header",
                b.len()
            )));
        }
        if crc32fast::hash(&b[..76]) != u32_at(b, 76) {
            return Err(SnapshotError::Corrupt {
                file: name.to_string(),
                section: "header".into(),
            });
        }
        let format_version = u32_at(b, 8);
        if format_version != FORMAT_VERSION {
            return Err(SnapshotError::FormatVersion {
                found: format_version,
                want: FORMAT_VERSION,
            });
        }
        let abi_version = u32_at(b, 12);
        if abi_version != duet_abi::ABI_VERSION {
            return Err(SnapshotError::AbiVersion {
                found: abi_version,
                want: duet_abi::ABI_VERSION,
            });
        }
        let mut features = [0u32; 6];
        for (i, f) in features.iter_mut().enumerate() {
            *f = u32_at(b, 28 + 4 * i);
        }
        let header = Header {
            format_version,
            abi_version,
            vendor: b[16..28].try_into().expect("12 bytes"),
            features,
            tsc_khz: u64_at(b, 56),
            snapshot_id: u64_at(b, 64),
        };
        let count = u32_at(b, 72);
        if count > MAX_SECTIONS {
            return Err(SnapshotError::Invalid(format!(
                "{name}: {count} sections is too many"
            )));
        }
        let mut sections = Vec::new();
        let mut off = HEADER_SIZE;
        for i in 0..count {
            if b.len() - off < SECTION_HEADER {
                return Err(truncated(format!("section {i} header cut off")));
            }
            let tag = u32_at(b, off);
            let len = u64_at(b, off + 8);
            let crc = u32_at(b, off + 16);
            if u32_at(b, off + 4) != 0 || u32_at(b, off + 20) != 0 {
                return Err(SnapshotError::Corrupt {
                    file: name.to_string(),
                    section: format!("section {i} header"),
                });
            }
            off += SECTION_HEADER;
            if len > (b.len() - off) as u64 {
                return Err(truncated(format!("section {i} (tag {tag}) cut off")));
            }
            let payload = &b[off..off + len as usize];
            if section_crc(tag, payload) != crc {
                return Err(SnapshotError::Corrupt {
                    file: name.to_string(),
                    section: format!("section {i} (tag {tag})"),
                });
            }
            sections.push((tag, payload.to_vec()));
            off += len as usize;
        }
        if off != b.len() {
            return Err(SnapshotError::Invalid(format!(
                "{name}: {} stray bytes after the last section",
                b.len() - off
            )));
        }
        Ok(StateFile { header, sections })
    }

    /// Adds a section holding `value`.
    pub fn put<T: serde::Serialize>(&mut self, tag: Tag, value: &T) -> Result<(), SnapshotError> {
        let bytes = postcard::to_stdvec(value)
            .map_err(|e| SnapshotError::Invalid(format!("cannot encode section {tag:?}: {e}")))?;
        self.sections.push((tag as u32, bytes));
        Ok(())
    }

    /// Decodes section `tag`.
    pub fn get<T: serde::de::DeserializeOwned>(&self, tag: Tag) -> Result<T, SnapshotError> {
        let (_, bytes) = self
            .sections
            .iter()
            .find(|(t, _)| *t == tag as u32)
            .ok_or_else(|| {
                SnapshotError::Invalid(format!("the state file has no {tag:?} section"))
            })?;
        postcard::from_bytes(bytes)
            .map_err(|e| SnapshotError::Invalid(format!("section {tag:?} does not decode: {e}")))
    }

    /// The raw bytes of section `tag`.
    pub fn raw(&self, tag: Tag) -> Result<&[u8], SnapshotError> {
        self.sections
            .iter()
            .find(|(t, _)| *t == tag as u32)
            .map(|(_, b)| b.as_slice())
            .ok_or_else(|| SnapshotError::Invalid(format!("the state file has no {tag:?} section")))
    }
}

/// Creates directory `dir` atomically: `fill` writes into a temporary
/// sibling, whose files are then fsynced, and which is renamed to `dir`
/// only if `dir` still does not exist. On any error the temporary is
/// removed and nothing appears at `dir`.
pub fn write_dir<T>(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<T, SnapshotError>,
) -> Result<T, SnapshotError> {
    if dir.symlink_metadata().is_ok() {
        return Err(SnapshotError::Exists(dir.display().to_string()));
    }
    let name = dir
        .file_name()
        .ok_or_else(|| SnapshotError::Invalid(format!("{} names no directory", dir.display())))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    let tmp = parent.join(format!(
        ".{}.tmp-{}-{:x}",
        name.to_string_lossy(),
        std::process::id(),
        crate::bootinfo::random_seed()[0]
    ));
    std::fs::create_dir(&tmp).map_err(|e| SnapshotError::io("creating", &tmp, e))?;
    let result = fill(&tmp).and_then(|v| {
        sync_path(&tmp)?;
        rename_noreplace(&tmp, dir)?;
        sync_path(&parent)?;
        Ok(v)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn sync_path(p: &Path) -> Result<(), SnapshotError> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(|e| SnapshotError::io("syncing", p, e))
}

fn rename_noreplace(from: &Path, to: &Path) -> Result<(), SnapshotError> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes());
    let (Ok(f), Ok(t)) = (c(from), c(to)) else {
        return Err(SnapshotError::Invalid("path contains NUL".into()));
    };
    // SAFETY: both are valid NUL-terminated paths.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EEXIST) {
            return Err(SnapshotError::Exists(to.display().to_string()));
        }
        return Err(SnapshotError::io("renaming into place", to, e));
    }
    Ok(())
}

/// Writes `bytes` to a new file at `path` and fsyncs it.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    use std::io::Write;
    let mut f = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| SnapshotError::io("creating", path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| SnapshotError::io("writing", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StateFile {
        StateFile {
            header: Header {
                format_version: FORMAT_VERSION,
                abi_version: duet_abi::ABI_VERSION,
                vendor: *b"AuthenticAMD",
                features: [1, 2, 3, 4, 5, 6],
                tsc_khz: 2_000_000,
                snapshot_id: 42,
            },
            sections: vec![(1, vec![1, 2, 3]), (7, vec![])],
        }
    }

    #[test]
    fn round_trip() {
        let s = sample();
        assert_eq!(StateFile::decode(&s.encode(), "t").unwrap(), s);
    }

    #[test]
    fn every_truncation_and_bit_flip_is_caught() {
        let b = sample().encode();
        for n in 0..b.len() {
            assert!(StateFile::decode(&b[..n], "t").is_err(), "cut at {n}");
        }
        for i in 0..b.len() * 8 {
            let mut c = b.clone();
            c[i / 8] ^= 1 << (i % 8);
            assert!(StateFile::decode(&c, "t").is_err(), "bit {i}");
        }
    }
}
