//! Boot: the image header (guest → monitor, read from the ELF file before
//! boot) and the boot info (monitor → guest, written into guest memory).
//!
//! Boot info only ever grows at its end; new fields are announced by a bit
//! in [`BootInfo::flags`].

use crate::{plain, Gpa};
use core::mem::{offset_of, size_of};

/// Magic at the start of [`BootInfo`] ("DUETBOOT").
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"DUETBOOT");
/// Magic at the start of [`ImageHeader`] ("DUETIMG\0").
pub const IMAGE_MAGIC: u64 = u64::from_le_bytes(*b"DUETIMG\0");
/// Name of the ELF section holding the [`ImageHeader`].
pub const IMAGE_HEADER_SECTION: &str = ".duet.header";

/// Lowest address an image may be linked at. Everything below belongs to
/// the monitor (descriptor tables, page tables, boot info, clock page) and
/// to the guest's stack.
pub const IMAGE_BASE: u64 = 0x20_0000;

/// Header every Duet image carries in its [`IMAGE_HEADER_SECTION`] section.
///
/// The monitor reads it from the ELF file before touching KVM and refuses
/// an image whose magic or ABI version is not its own. Only these fields
/// are read, so images of any ABI version are recognised (version 1 images
/// followed them with exception entry points; from version 2 the monitor
/// owns all ring-0 code and an image supplies none).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ImageHeader {
    /// [`IMAGE_MAGIC`].
    pub magic: u64,
    /// The [`crate::ABI_VERSION`] the image was built against.
    pub abi_version: u32,
    /// Reserved, zero.
    pub flags: u32,
}

plain!(ImageHeader = 16);
/// Size of [`ImageHeader`] in bytes.
pub const IMAGE_HEADER_SIZE: usize = size_of::<ImageHeader>();
/// Byte offset of [`ImageHeader::abi_version`] (the monitor parses the
/// header as raw little-endian bytes).
pub const IMAGE_HEADER_VERSION_OFFSET: usize = offset_of!(ImageHeader, abi_version);
const _: () = assert!(IMAGE_HEADER_VERSION_OFFSET == 8);

/// Boot-info flag: the monitor wants boot-phase timestamps
/// ([`crate::hypercall::Hypercall::BootTrace`]).
pub const BOOT_FLAG_TRACE: u32 = 1 << 0;

/// Boot-info flag: [`BootInfo::identity`] points at the identity page
/// ([`crate::identity::IdentityPage`]).
pub const BOOT_FLAG_IDENTITY: u32 = 1 << 1;

/// Maximum number of [`MemRegion`]s in the boot info.
pub const MAX_REGIONS: usize = 16;
/// Maximum number of devices in the boot info's device table.
pub const MAX_DEVICES: usize = 16;

/// What a region of guest memory is used for.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// Owned by the monitor (page tables, GDT, IDT, TSS, exception stack and
    /// exception stubs): not accessible from ring 3.
    Monitor = 1,
    /// The boot info, argv and env strings: read-only to the guest.
    BootInfo = 2,
    /// The clock page: read-only to the guest.
    Clock = 3,
    /// The guest's stack (a guard page sits just below it).
    Stack = 4,
    /// The loaded image.
    Image = 5,
    /// Heap: mapped read/write, grown on request up to the memory size.
    Heap = 6,
    /// The identity page: read-only to the guest.
    Identity = 7,
    /// The virtio transport page ([`crate::virtio::VirtioSlot`]s):
    /// read/write for the guest.
    Virtio = 8,
}

impl RegionKind {
    /// Decodes a raw region kind.
    pub const fn from_raw(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Monitor,
            2 => Self::BootInfo,
            3 => Self::Clock,
            4 => Self::Stack,
            5 => Self::Image,
            6 => Self::Heap,
            7 => Self::Identity,
            8 => Self::Virtio,
            _ => return None,
        })
    }
}

/// One region of the guest memory map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MemRegion {
    /// First byte.
    pub start: Gpa,
    /// Length in bytes.
    pub len: u64,
    /// A [`RegionKind`] as `u32`.
    pub kind: u32,
    /// Reserved, zero.
    pub flags: u32,
}

/// A string in guest memory (UTF-8, not NUL-terminated).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Str {
    /// First byte.
    pub ptr: Gpa,
    /// Length in bytes.
    pub len: u64,
}

/// Kinds of device in the device table.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// A block device (see the block hypercalls).
    Block = 1,
    /// A network interface (see the network hypercalls).
    Net = 2,
}

/// Device flag: the device is read-only.
pub const DEVICE_FLAG_READONLY: u32 = 1 << 0;
/// Device flag: the device is driven through virtqueues ([`crate::virtio`])
/// instead of its hypercalls.
pub const DEVICE_FLAG_VIRTIO: u32 = 1 << 1;

/// One entry of the device table. Fields that do not apply to a kind are 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceInfo {
    /// A [`DeviceKind`] as `u32`.
    pub kind: u32,
    /// `DEVICE_FLAG_*` bits.
    pub flags: u32,
    /// Block: capacity in bytes.
    pub capacity: u64,
    /// Block: sector size in bytes (512 or 4096).
    pub sector_size: u32,
    /// Net: MTU in bytes.
    pub mtu: u32,
    /// Net: MAC address in bytes 0..6.
    pub mac: [u8; 8],
    /// Name given on the command line, NUL-padded UTF-8.
    pub name: [u8; 32],
}

/// The boot info. The monitor writes it into guest memory and starts the
/// guest with its address in `rdi`. It is read-only to the guest.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// The monitor's [`crate::ABI_VERSION`].
    pub abi_version: u32,
    /// `BOOT_FLAG_*` bits.
    pub flags: u32,
    /// Total guest memory in bytes (`--mem`).
    pub mem_size: u64,
    /// TSC frequency in kHz.
    pub tsc_khz: u64,
    /// The clock page ([`crate::clock::ClockPage`]).
    pub clock: Gpa,
    /// Number of valid entries in `regions`.
    pub region_count: u32,
    /// Number of valid entries in `devices`.
    pub device_count: u32,
    /// The memory map.
    pub regions: [MemRegion; MAX_REGIONS],
    /// The device table.
    pub devices: [DeviceInfo; MAX_DEVICES],
    /// Number of arguments.
    pub argc: u32,
    /// Number of environment entries (`KEY=VALUE`).
    pub envc: u32,
    /// Array of `argc` [`Str`]s.
    pub argv: Gpa,
    /// Array of `envc` [`Str`]s.
    pub envp: Gpa,
    /// Start of the heap (2 MiB aligned).
    pub heap_start: Gpa,
    /// Bytes of heap mapped at boot.
    pub heap_size: u64,
    /// Bytes the heap may grow to (up to the end of guest memory).
    pub heap_limit: u64,
    /// The identity page ([`crate::identity::IdentityPage`]), valid when
    /// [`BOOT_FLAG_IDENTITY`] is set.
    pub identity: Gpa,
}

plain!(
    MemRegion = 24,
    Str = 16,
    DeviceInfo = 64,
    BootInfo = 48 + 24 * MAX_REGIONS + 64 * MAX_DEVICES + 56,
);
const _: () = assert!(offset_of!(BootInfo, regions) == 48);
const _: () = assert!(offset_of!(BootInfo, argc) == 48 + 24 * MAX_REGIONS + 64 * MAX_DEVICES);
const _: () = assert!(size_of::<BootInfo>() as u64 <= crate::PAGE_SIZE);
