//! The Duet image header (`.duet.header`): magic and ABI version.

use super::LoadError;
use duet_abi::boot::{
    IMAGE_HEADER_SECTION, IMAGE_HEADER_SIZE, IMAGE_HEADER_VERSION_OFFSET, IMAGE_MAGIC,
};
use duet_abi::ABI_VERSION;
use goblin::elf::Elf;

/// Checks the image header's magic and ABI version. Only the fields every
/// version shares are read, so an image of another version is recognised
/// and refused by name rather than called corrupt.
pub(super) fn read_header(elf: &Elf<'_>, bytes: &[u8]) -> Result<(), LoadError> {
    let sh = elf
        .section_headers
        .iter()
        .find(|sh| elf.shdr_strtab.get_at(sh.sh_name) == Some(IMAGE_HEADER_SECTION))
        .ok_or(LoadError::NoHeader)?;
    let off = usize::try_from(sh.sh_offset).map_err(|_| LoadError::BadHeader)?;
    let data = off
        .checked_add(IMAGE_HEADER_SIZE)
        .and_then(|end| bytes.get(off..end))
        .filter(|_| sh.sh_size >= IMAGE_HEADER_SIZE as u64)
        .ok_or(LoadError::BadHeader)?;
    let magic = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    if magic != IMAGE_MAGIC {
        return Err(LoadError::BadHeader);
    }
    let v = IMAGE_HEADER_VERSION_OFFSET;
    let version = u32::from_le_bytes(data[v..v + 4].try_into().expect("4 bytes"));
    if version != ABI_VERSION {
        return Err(LoadError::AbiMismatch {
            image: version,
            monitor: ABI_VERSION,
        });
    }
    Ok(())
}
