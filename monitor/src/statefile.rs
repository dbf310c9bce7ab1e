//! The state file: a guest's [`VmmState`] as bytes, for snapshots (the
//! `state` file) and migrations (the stream's state blob). A fixed,
//! versioned header, then one checksummed section per component.
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
//!
//! Sections: one [`Tag::Vcpu`] per vCPU in order, then the KVM clock, the
//! guest clock, the monitor's state, the image, the devices and the memory
//! state; a snapshot adds [`Tag::MemoryIndex`] (where its memory file keeps
//! each page).

use crate::compat::GuestCpu;
use crate::vmm::VmmState;
use thiserror::Error;

/// Why a state file cannot be read.
#[derive(Debug, Error)]
pub enum StateFileError {
    /// Not a state file at all.
    #[error("{0} is not a Duet state file (bad magic)")]
    NotStateFile(String),
    /// Shorter than it says.
    #[error("{file} is truncated ({detail}); the state is incomplete, take it again")]
    Truncated {
        /// The file.
        file: String,
        /// What is missing.
        detail: String,
    },
    /// A checksum does not match.
    #[error("{file}: checksum mismatch in {section}; the state is corrupt, take it again")]
    Corrupt {
        /// The file.
        file: String,
        /// Which part.
        section: String,
    },
    /// Written by another format version.
    #[error("state format version {found}, this duet reads version {want}; it was written by another duet: restore it with that one, or take the snapshot again with this one")]
    FormatVersion {
        /// In the file.
        found: u32,
        /// Ours.
        want: u32,
    },
    /// Written for another guest ABI.
    #[error("the guest was built for ABI version {found}, this duet speaks version {want}; use a matching duet")]
    AbiVersion {
        /// In the file.
        found: u32,
        /// Ours.
        want: u32,
    },
    /// A section is missing or does not decode.
    #[error("{0}")]
    Invalid(String),
}

use crate::contract::statefile::SECTION_HEADER;
pub use crate::contract::statefile::{FORMAT_VERSION, HEADER_SIZE, MAGIC};
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
    /// Guest memory's size and writable ranges.
    Memory = 7,
    /// Where a snapshot's memory file keeps each page.
    MemoryIndex = 8,
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
    pub fn decode(b: &[u8], name: &str) -> Result<StateFile, StateFileError> {
        let truncated = |detail: String| StateFileError::Truncated {
            file: name.to_string(),
            detail,
        };
        if b.len() < MAGIC.len() || b[..MAGIC.len()] != MAGIC {
            return Err(StateFileError::NotStateFile(name.to_string()));
        }
        if b.len() < HEADER_SIZE {
            return Err(truncated(format!(
                "{} bytes, shorter than the header",
                b.len()
            )));
        }
        if crc32fast::hash(&b[..76]) != u32_at(b, 76) {
            return Err(StateFileError::Corrupt {
                file: name.to_string(),
                section: "header".into(),
            });
        }
        let format_version = u32_at(b, 8);
        if format_version != FORMAT_VERSION {
            return Err(StateFileError::FormatVersion {
                found: format_version,
                want: FORMAT_VERSION,
            });
        }
        let abi_version = u32_at(b, 12);
        if abi_version != duet_abi::ABI_VERSION {
            return Err(StateFileError::AbiVersion {
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
            return Err(StateFileError::Invalid(format!(
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
                return Err(StateFileError::Corrupt {
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
                return Err(StateFileError::Corrupt {
                    file: name.to_string(),
                    section: format!("section {i} (tag {tag})"),
                });
            }
            sections.push((tag, payload.to_vec()));
            off += len as usize;
        }
        if off != b.len() {
            return Err(StateFileError::Invalid(format!(
                "{name}: {} stray bytes after the last section",
                b.len() - off
            )));
        }
        Ok(StateFile { header, sections })
    }

    /// Adds a section holding `value`.
    pub fn put<T: serde::Serialize>(&mut self, tag: Tag, value: &T) -> Result<(), StateFileError> {
        let bytes = postcard::to_stdvec(value)
            .map_err(|e| StateFileError::Invalid(format!("cannot encode section {tag:?}: {e}")))?;
        self.sections.push((tag as u32, bytes));
        Ok(())
    }

    /// Decodes section `tag`.
    pub fn get<T: serde::de::DeserializeOwned>(&self, tag: Tag) -> Result<T, StateFileError> {
        let (_, bytes) = self
            .sections
            .iter()
            .find(|(t, _)| *t == tag as u32)
            .ok_or_else(|| {
                StateFileError::Invalid(format!("the state file has no {tag:?} section"))
            })?;
        postcard::from_bytes(bytes)
            .map_err(|e| StateFileError::Invalid(format!("section {tag:?} does not decode: {e}")))
    }

    /// The raw bytes of section `tag`.
    pub fn raw(&self, tag: Tag) -> Result<&[u8], StateFileError> {
        self.sections
            .iter()
            .find(|(t, _)| *t == tag as u32)
            .map(|(_, b)| b.as_slice())
            .ok_or_else(|| {
                StateFileError::Invalid(format!("the state file has no {tag:?} section"))
            })
    }
}

impl Header {
    /// The CPU the guest saw.
    pub fn cpu(&self) -> GuestCpu {
        GuestCpu {
            vendor: self.vendor,
            features: self.features,
            tsc_khz: self.tsc_khz,
        }
    }
}

impl StateFile {
    /// Lays `st` out as sections (`id` ties a snapshot's two files).
    pub fn from_state(st: &VmmState, id: u64) -> Result<StateFile, StateFileError> {
        let mut f = StateFile {
            header: Header {
                format_version: FORMAT_VERSION,
                abi_version: duet_abi::ABI_VERSION,
                vendor: st.cpu.vendor,
                features: st.cpu.features,
                tsc_khz: st.cpu.tsc_khz,
                snapshot_id: id,
            },
            sections: Vec::new(),
        };
        for v in &st.vcpus {
            f.put(Tag::Vcpu, v)?;
        }
        f.put(Tag::KvmClock, &st.kvm_clock)?;
        f.put(Tag::Clock, &st.clock)?;
        f.put(Tag::Monitor, &st.monitor)?;
        f.sections.push((Tag::Image as u32, st.image.clone()));
        f.put(Tag::Devices, &st.devices)?;
        f.put(Tag::Memory, &st.memory)?;
        Ok(f)
    }

    /// The guest's state from the sections.
    pub fn to_state(&self) -> Result<VmmState, StateFileError> {
        let vcpus = self
            .sections
            .iter()
            .filter(|(t, _)| *t == Tag::Vcpu as u32)
            .map(|(_, b)| {
                postcard::from_bytes(b).map_err(|e| {
                    StateFileError::Invalid(format!("section Vcpu does not decode: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VmmState {
            cpu: self.header.cpu(),
            vcpus,
            kvm_clock: self.get(Tag::KvmClock)?,
            clock: self.get(Tag::Clock)?,
            monitor: self.get(Tag::Monitor)?,
            image: self.raw(Tag::Image)?.to_vec(),
            devices: self.get(Tag::Devices)?,
            memory: self.get(Tag::Memory)?,
        })
    }
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
