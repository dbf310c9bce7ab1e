//! The image loader: validates a static ELF64 x86_64 Duet image and copies
//! its segments into guest memory.
//!
//! Why not linux-loader: it loads kernels but does not tell per-segment
//! permissions, RELRO or the Duet image header, and the monitor needs all of
//! them to build the guest's page tables; the parsing itself is goblin's.
//! Every check runs before KVM is touched, so a bad image costs nothing.

use crate::memory::GuestMem;
use duet_abi::boot::{IMAGE_BASE, IMAGE_HEADER_SECTION};
use duet_abi::{Gpa, PAGE_SIZE};
use goblin::elf::{header, program_header, Elf};
use thiserror::Error;

/// How much of a writable segment's zero-filled tail [`Image::load`]
/// touches up front (the rest is touched by the guest as it needs it).
const BSS_PREFAULT: u64 = 16 * PAGE_SIZE;

mod image_header;
mod symbols;

use image_header::read_header;
use symbols::read_symbols;
pub use symbols::{symbolize, Symbol};

/// Why an image was refused.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file is empty.
    #[error("the image file is empty; pass a Duet image built with `cargo xtask build`")]
    Empty,
    /// The file does not start with the ELF magic.
    #[error("not an ELF file (bad magic); pass a Duet image built with `cargo xtask build`")]
    NotElf,
    /// ELF32.
    #[error("32-bit ELF image; Duet images are ELF64 x86_64 executables")]
    Not64Bit,
    /// Wrong `e_machine`.
    #[error(
        "image is for machine {0} ({1}), not x86_64; build for the x86_64-unknown-none target"
    )]
    WrongMachine(u16, &'static str),
    /// Not `ET_EXEC`.
    #[error("image is not a static executable (ELF type {0}); link with `-C relocation-model=static` as `cargo xtask build` does")]
    NotExecutable(&'static str),
    /// goblin could not parse it.
    #[error("malformed ELF image: {0}")]
    Malformed(String),
    /// No `PT_LOAD` segments.
    #[error("image has no loadable segments")]
    NoSegments,
    /// A segment's file range lies outside the file.
    #[error("segment {index} claims file bytes {offset:#x}+{size:#x} beyond the end of the {file_len}-byte file (truncated image?)")]
    SegmentPastFile {
        /// Segment index.
        index: usize,
        /// File offset.
        offset: u64,
        /// File size.
        size: u64,
        /// File length.
        file_len: usize,
    },
    /// `p_filesz > p_memsz`.
    #[error("segment {0} has more file bytes than memory bytes")]
    FileLargerThanMem(usize),
    /// A segment does not fit in guest memory or below the image base.
    #[error("segment {index} at {start:#x}..{end:#x} lies outside guest memory {lo:#x}..{hi:#x}; link at {lo:#x} or raise --mem")]
    SegmentOutside {
        /// Segment index.
        index: usize,
        /// Start.
        start: u64,
        /// End.
        end: u64,
        /// Lowest allowed.
        lo: u64,
        /// Highest allowed.
        hi: u64,
    },
    /// `p_memsz` is absurd (overflows or larger than guest memory).
    #[error("segment {index} has an impossible size of {memsz:#x} bytes (guest memory is {mem:#x}); raise --mem or fix the image")]
    HugeSegment {
        /// Segment index.
        index: usize,
        /// Its memsz.
        memsz: u64,
        /// Guest memory size.
        mem: u64,
    },
    /// Two segments share a page.
    #[error("segments {0} and {1} overlap (at page granularity); link with page-aligned segments as `cargo xtask build` does")]
    Overlap(usize, usize),
    /// The entry point is not in an executable segment.
    #[error("entry point {0:#x} is not inside an executable segment")]
    EntryOutsideText(u64),
    /// A segment is writable and executable.
    #[error("segment {0} is both writable and executable; Duet maps text read-only")]
    WritableText(usize),
    /// No Duet image header.
    #[error("not a Duet image: no `{IMAGE_HEADER_SECTION}` section (link the application against the `duet` crate)")]
    NoHeader,
    /// Bad header magic.
    #[error("the `{IMAGE_HEADER_SECTION}` section has a bad magic; the image is corrupt")]
    BadHeader,
    /// ABI mismatch.
    #[error("image was built for Duet ABI version {image}, but this duet speaks ABI version {monitor}; rebuild the image against this duet (its `duet` crate and duet-abi, e.g. with `cargo xtask build`)")]
    AbiMismatch {
        /// Image's version.
        image: u32,
        /// Monitor's version.
        monitor: u32,
    },
}

/// Page permissions of a loaded range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perms {
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
}

/// One loadable segment, page-rounded.
#[derive(Clone, Debug)]
pub struct Segment {
    /// First page.
    pub start: u64,
    /// End of last page (exclusive).
    pub end: u64,
    /// Permissions.
    pub perms: Perms,
    file_offset: u64,
    file_size: u64,
    vaddr: u64,
}

/// A validated image, ready to copy into guest memory.
pub struct Image {
    bytes: Vec<u8>,
    /// Entry point.
    pub entry: u64,
    /// Loadable segments, sorted by address, page-rounded, non-overlapping.
    pub segments: Vec<Segment>,
    /// Function symbols sorted by address.
    pub symbols: Vec<Symbol>,
}

fn machine_name(m: u16) -> &'static str {
    match m {
        header::EM_386 => "i386",
        header::EM_ARM => "arm",
        header::EM_AARCH64 => "aarch64",
        header::EM_RISCV => "riscv",
        header::EM_PPC64 => "ppc64",
        _ => "unknown",
    }
}

fn round_up(v: u64) -> Option<u64> {
    v.checked_add(PAGE_SIZE - 1).map(|v| v & !(PAGE_SIZE - 1))
}

impl Image {
    /// The image file's bytes (snapshots embed them so a restore can
    /// symbolize fault reports without the original file).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Parses and validates `bytes` as an image for a guest of `mem_size` bytes.
    pub fn parse(bytes: Vec<u8>, mem_size: u64) -> Result<Image, LoadError> {
        if bytes.is_empty() {
            return Err(LoadError::Empty);
        }
        if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
            return Err(LoadError::NotElf);
        }
        if bytes.get(4) != Some(&header::ELFCLASS64) {
            return Err(LoadError::Not64Bit);
        }
        let elf = Elf::parse(&bytes).map_err(|e| LoadError::Malformed(e.to_string()))?;
        if elf.header.e_machine != header::EM_X86_64 {
            return Err(LoadError::WrongMachine(
                elf.header.e_machine,
                machine_name(elf.header.e_machine),
            ));
        }
        if elf.header.e_type != header::ET_EXEC {
            let kind = match elf.header.e_type {
                header::ET_DYN => "DYN: shared object or position-independent executable",
                header::ET_REL => "REL: relocatable object",
                header::ET_CORE => "CORE: core dump",
                _ => "unknown",
            };
            return Err(LoadError::NotExecutable(kind));
        }

        let mut segments = Vec::new();
        for (index, ph) in elf.program_headers.iter().enumerate() {
            if ph.p_type != program_header::PT_LOAD || ph.p_memsz == 0 {
                continue;
            }
            let file_end = ph.p_offset.checked_add(ph.p_filesz);
            if file_end.is_none_or(|e| e > bytes.len() as u64) {
                return Err(LoadError::SegmentPastFile {
                    index,
                    offset: ph.p_offset,
                    size: ph.p_filesz,
                    file_len: bytes.len(),
                });
            }
            if ph.p_filesz > ph.p_memsz {
                return Err(LoadError::FileLargerThanMem(index));
            }
            let vend = ph.p_vaddr.checked_add(ph.p_memsz).and_then(round_up);
            let Some(vend) = vend.filter(|_| ph.p_memsz <= mem_size) else {
                return Err(LoadError::HugeSegment {
                    index,
                    memsz: ph.p_memsz,
                    mem: mem_size,
                });
            };
            let start = ph.p_vaddr & !(PAGE_SIZE - 1);
            if start < IMAGE_BASE || vend > mem_size {
                return Err(LoadError::SegmentOutside {
                    index,
                    start: ph.p_vaddr,
                    end: ph.p_vaddr + ph.p_memsz,
                    lo: IMAGE_BASE,
                    hi: mem_size,
                });
            }
            let perms = Perms {
                write: ph.is_write(),
                exec: ph.is_executable(),
            };
            if perms.write && perms.exec {
                return Err(LoadError::WritableText(index));
            }
            segments.push((
                index,
                Segment {
                    start,
                    end: vend,
                    perms,
                    file_offset: ph.p_offset,
                    file_size: ph.p_filesz,
                    vaddr: ph.p_vaddr,
                },
            ));
        }
        if segments.is_empty() {
            return Err(LoadError::NoSegments);
        }
        segments.sort_by_key(|(_, s)| s.start);
        for w in segments.windows(2) {
            if w[1].1.start < w[0].1.end {
                return Err(LoadError::Overlap(w[0].0, w[1].0));
            }
        }
        let segments: Vec<Segment> = segments.into_iter().map(|(_, s)| s).collect();

        let entry = elf.entry;
        if !segments
            .iter()
            .any(|s| s.perms.exec && entry >= s.vaddr && entry < s.end)
        {
            return Err(LoadError::EntryOutsideText(entry));
        }

        read_header(&elf, &bytes)?;
        let symbols = read_symbols(&elf);
        Ok(Image {
            bytes,
            entry,
            segments,
            symbols,
        })
    }

    /// Lowest image address.
    pub fn start(&self) -> u64 {
        self.segments[0].start
    }

    /// End of the last image page.
    pub fn end(&self) -> u64 {
        self.segments.last().map_or(IMAGE_BASE, |s| s.end)
    }

    /// Copies the segments' file bytes into guest memory (the rest of each
    /// segment, its BSS, is already zero: guest memory starts zeroed).
    pub fn load(&self, mem: &GuestMem) -> Result<(), crate::memory::MemError> {
        for s in &self.segments {
            let data = &self.bytes[s.file_offset as usize..(s.file_offset + s.file_size) as usize];
            mem.write_bytes(Gpa(s.vaddr), data)?;
            if s.perms.write {
                // Make the first zero-filled (.bss) pages present on the host:
                // KVM's shadow MMU then maps them writable on the guest's first
                // touch, or with a neighbour's fault, instead of a read fault
                // to the zero page and a second fault on the first write.
                let zero_from = s.vaddr + s.file_size;
                let zero_to = s.end.min(zero_from + BSS_PREFAULT);
                let zeros = [0u8; PAGE_SIZE as usize];
                let mut a = zero_from;
                while a < zero_to {
                    let n = (zero_to - a).min(PAGE_SIZE - a % PAGE_SIZE);
                    mem.write_bytes(Gpa(a), &zeros[..n as usize])?;
                    a += n;
                }
            }
        }
        Ok(())
    }

    /// Describes `addr` as `function+offset`, if a symbol covers it.
    pub fn symbolize(&self, addr: u64) -> Option<String> {
        symbolize(&self.symbols, addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Image::parse(vec![], 1 << 26),
            Err(LoadError::Empty)
        ));
        assert!(matches!(
            Image::parse(b"hello world".to_vec(), 1 << 26),
            Err(LoadError::NotElf)
        ));
        let mut elf32 = b"\x7fELF".to_vec();
        elf32.extend_from_slice(&[1; 60]);
        assert!(matches!(
            Image::parse(elf32, 1 << 26),
            Err(LoadError::Not64Bit)
        ));
        let mut trunc = b"\x7fELF\x02\x01\x01".to_vec();
        trunc.extend_from_slice(&[0; 9]);
        assert!(matches!(
            Image::parse(trunc, 1 << 26),
            Err(LoadError::Malformed(_))
        ));
    }
}
