//! Telling a Duet guest from any other executable: an ELF file with a
//! `.duet.header` section that starts with the image magic. Only the section
//! and the magic are checked; the monitor validates the rest when it loads
//! the image.

use duet_abi::boot::{IMAGE_HEADER_SECTION, IMAGE_MAGIC};
use std::io::Read;
use std::path::Path;

/// Images larger than this are not read (no Duet guest comes near it).
const MAX_IMAGE: u64 = 1 << 30;

/// What a container's executable is.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    /// A Duet guest image.
    Duet,
    /// Something else (why, for the log).
    Other(String),
}

/// Classifies the file at `path`.
pub fn classify(path: &Path) -> Kind {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return Kind::Other(format!("cannot open {}: {e}", path.display())),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX_IMAGE {
        return Kind::Other(format!("{} is larger than any Duet image", path.display()));
    }
    let mut magic = [0u8; 4];
    if f.read_exact(&mut magic).is_err() || &magic != b"\x7fELF" {
        return Kind::Other(format!("{} is not an ELF file", path.display()));
    }
    let mut bytes = magic.to_vec();
    if let Err(e) = f.read_to_end(&mut bytes) {
        return Kind::Other(format!("cannot read {}: {e}", path.display()));
    }
    classify_bytes(&bytes)
}

/// Classifies an ELF file's contents.
pub fn classify_bytes(bytes: &[u8]) -> Kind {
    let elf = match goblin::elf::Elf::parse(bytes) {
        Ok(e) => e,
        Err(e) => return Kind::Other(format!("not a valid ELF file: {e}")),
    };
    let Some(sh) = elf
        .section_headers
        .iter()
        .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(IMAGE_HEADER_SECTION))
    else {
        return Kind::Other(format!("no {IMAGE_HEADER_SECTION} section"));
    };
    let magic = usize::try_from(sh.sh_offset)
        .ok()
        .and_then(|off| bytes.get(off..off.checked_add(8)?));
    if sh.sh_type == goblin::elf::section_header::SHT_NOBITS
        || magic != Some(&IMAGE_MAGIC.to_le_bytes()[..])
    {
        return Kind::Other(format!("{IMAGE_HEADER_SECTION} lacks the Duet magic"));
    }
    Kind::Duet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_binaries_are_not_duet() {
        let me = std::env::current_exe().unwrap();
        assert!(matches!(classify(&me), Kind::Other(m) if m.contains(".duet.header")));
        assert!(matches!(
            classify(Path::new("/nonexistent")),
            Kind::Other(_)
        ));
    }

    #[test]
    fn non_elf_and_truncated() {
        assert!(matches!(classify_bytes(b"#!/bin/sh\n"), Kind::Other(_)));
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(matches!(classify_bytes(&me[..100]), Kind::Other(_)));
    }
}
