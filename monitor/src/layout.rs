//! Where the monitor puts things in guest-physical memory.
//!
//! Guests run identity-mapped, so these are also guest-virtual addresses.
//! Everything below [`duet_abi::boot::IMAGE_BASE`] belongs to the monitor,
//! except the stack. The guest learns what it needs of this through the
//! boot info's memory map; nothing here is part of the ABI.

use duet_abi::boot::IMAGE_BASE;

/// The GDT (one page).
pub const GDT: u64 = 0x1000;
/// The IDT (one page).
pub const IDT: u64 = 0x2000;
/// The TSS, followed by its I/O permission bitmap (three pages).
pub const TSS: u64 = 0x3000;
/// Bottom of the stack exception stubs run on (IST1).
pub const IST_STACK: u64 = 0x6000;
/// Top of the IST stack.
pub const IST_STACK_TOP: u64 = 0xA000;
/// The monitor's exception entry stubs (one page: supervisor-only,
/// read-only, executable; the only executable page that is not the image's).
pub const EXCEPTION_STUBS: u64 = 0xA000;
/// End of the monitor-owned area that starts at [`GDT`].
pub const MONITOR_END: u64 = EXCEPTION_STUBS + duet_abi::PAGE_SIZE;
/// The clock page (read-only to the guest).
pub const CLOCK_PAGE: u64 = 0x10000;
/// The identity page (read-only to the guest): generation, seed, clone index.
pub const IDENTITY_PAGE: u64 = 0x11000;
/// The virtio transport page (one 256-byte slot per device), guest read/write.
pub const VIRTIO_PAGE: u64 = 0x12000;
/// Boot info, then argv/env arrays and strings (read-only to the guest).
pub const BOOT_INFO: u64 = 0x20000;
/// End of the boot-info area.
pub const BOOT_INFO_END: u64 = 0x40000;
/// Page tables (PML4 first), up to [`PAGE_TABLES_END`].
pub const PAGE_TABLES: u64 = 0x40000;
/// End of the page-table area.
pub const PAGE_TABLES_END: u64 = 0x100000;
/// Unmapped guard page under the stack.
pub const STACK_GUARD: u64 = 0x100000;
/// Lowest stack byte.
pub const STACK_BOTTOM: u64 = 0x101000;
/// Top of the stack (exclusive).
pub const STACK_TOP: u64 = IMAGE_BASE;

/// GDT selectors (Linux-like, which this host's PVM handles best).
pub mod selector {
    /// Ring-0 64-bit code (the monitor's exception stubs).
    pub const KERNEL_CODE: u16 = 0x10;
    /// Ring-0 data.
    pub const KERNEL_DATA: u16 = 0x18;
    /// Ring-3 data (and stack), RPL 3.
    pub const USER_DATA: u16 = 0x2b;
    /// Ring-3 64-bit code, RPL 3.
    pub const USER_CODE: u16 = 0x33;
    /// The TSS (a 16-byte system descriptor).
    pub const TSS: u16 = 0x40;
}

/// Smallest `--mem` accepted.
pub const MIN_MEM: u64 = 4 << 20;
/// Largest `--mem` accepted (64 GiB: one PDPT, 64 page directories).
pub const MAX_MEM: u64 = 64 << 30;

const _: () = assert!(STACK_TOP % 16 == 0 && IST_STACK_TOP % 16 == 0);
const _: () = assert!(PAGE_TABLES_END <= STACK_GUARD);
const _: () = assert!(IST_STACK_TOP <= EXCEPTION_STUBS && MONITOR_END <= CLOCK_PAGE);
const _: () = assert!(VIRTIO_PAGE + duet_abi::PAGE_SIZE <= BOOT_INFO);
