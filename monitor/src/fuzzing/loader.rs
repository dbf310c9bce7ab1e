//! The image loader ([`crate::loader`]): parse, validate, load into guest
//! memory and symbolize, as `duet run` and every restore do with an image
//! file nobody vouches for.

use super::elf::ElfSpec;
use crate::loader::Image;
use crate::memory::GuestMem;
use arbitrary::Arbitrary;

/// Guest memory sizes the image is checked against.
const MEM_SIZES: [u64; 4] = [4 << 20, 8 << 20, 16 << 20, 64 << 20];

/// An image file.
#[derive(Arbitrary, Clone, Debug)]
pub enum File {
    /// Bytes as they come.
    Raw(Vec<u8>),
    /// An ELF file written from a description.
    Elf(ElfSpec),
}

impl File {
    /// The file's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            File::Raw(b) => b.clone(),
            File::Elf(e) => e.build(),
        }
    }
}

/// A fuzz input.
#[derive(Arbitrary, Clone, Debug)]
pub struct Input {
    /// The image.
    pub file: File,
    /// Which `--mem` (index into a few sizes), or any size at all.
    pub mem: Result<u8, u64>,
    /// Addresses to symbolize.
    pub lookups: Vec<u64>,
}

/// Parses the image; a good one is loaded into guest memory of its size
/// and checked against what the loader promised.
pub fn run(input: &Input) {
    let mem_size = match input.mem {
        Ok(i) => MEM_SIZES[usize::from(i) % MEM_SIZES.len()],
        Err(n) => n,
    };
    check(input.file.bytes(), mem_size, &input.lookups);
}

/// [`run`] on bytes (the unit tests' way in).
pub fn check(bytes: Vec<u8>, mem_size: u64, lookups: &[u64]) {
    let Ok(image) = Image::parse(bytes, mem_size) else {
        return;
    };
    // What the boot path relies on: segments inside guest memory above the
    // image base, page-aligned, sorted, disjoint, the entry in text.
    let mut prev = duet_abi::boot::IMAGE_BASE;
    for s in &image.segments {
        assert!(s.start >= prev && s.start < s.end && s.end <= mem_size);
        assert!(s.start % duet_abi::PAGE_SIZE == 0 && s.end % duet_abi::PAGE_SIZE == 0);
        prev = s.end;
    }
    assert!(
        image
            .segments
            .iter()
            .any(|s| s.perms.exec && (s.start..s.end).contains(&image.entry)),
        "the entry point {:#x} is not in a text segment",
        image.entry
    );
    for &a in lookups.iter().take(16) {
        let _ = image.symbolize(a);
    }
    if MEM_SIZES.contains(&mem_size) {
        let mem = GuestMem::new(mem_size).expect("mapping guest memory");
        image.load(&mem).expect("a validated image loads");
    }
}
