//! The image header: how the monitor knows, before boot, that a file is a
//! Duet image and which ABI version it speaks.
//!
//! The image supplies no code that runs in ring 0: the monitor writes its
//! own exception entry stubs and reports every CPU exception itself.

use duet_abi::boot::{ImageHeader, IMAGE_MAGIC};
use duet_abi::ABI_VERSION;

/// The image header: the monitor reads it from the ELF file before boot.
#[used]
#[unsafe(link_section = ".duet.header")]
pub static HEADER: ImageHeader = ImageHeader {
    magic: IMAGE_MAGIC,
    abi_version: ABI_VERSION,
    flags: 0,
};
