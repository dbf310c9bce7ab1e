//! The contract between a Duet guest and the Duet monitor.
//!
//! Both sides compile this crate; it is the single source of truth for every
//! number and structure they share. It is `no_std` and has no dependencies.
//!
//! * [`boot`]: the boot info the monitor writes into guest memory, the image
//!   header the monitor reads out of the guest's ELF file, and the memory
//!   layout facts both sides rely on.
//! * [`hypercall`]: hypercall numbers, their argument structs and error codes.
//!   A hypercall is one `out` to port [`hypercall::PORT_BASE`] + number, with
//!   the 32-bit guest-physical address of its argument struct in `eax`.
//! * [`block`]: block-device request structs (read, write, flush, batch).
//! * [`clock`]: the clock page the monitor writes and the guest only reads.
//! * [`identity`]: the identity page (generation, random seed, clone index)
//!   the monitor rewrites after every restore.
//! * [`virtio`]: the virtio transport (registers in a shared page, doorbell
//!   ports) for devices driven through virtqueues.
//!
//! The interface version ([`ABI_VERSION`]) is independent of the crate's
//! semver: it changes whenever a layout or a meaning here changes.
#![no_std]
#![deny(missing_docs)]

pub mod block;
pub mod boot;
pub mod clock;
pub mod hypercall;
pub mod identity;
pub mod mem;
pub mod poll;
pub mod virtio;

/// Version of the guest/monitor interface. The monitor reads it from the
/// image header before boot and the guest checks it in the boot info; both
/// refuse a mismatch.
///
/// * 1: the image supplied its exception entry stubs (header `vectors`,
///   hypercall 4 `Fault`).
/// * 2: the monitor owns every ring-0 instruction; the header is magic,
///   version and flags only, and hypercall 4 is reserved; the identity page
///   gains `requests` (shutdown) and poll's `ready` gains
///   [`poll::READY_SHUTDOWN`].
/// * 3: virtio devices ([`virtio`]): device flag
///   [`boot::DEVICE_FLAG_VIRTIO`], memory-map region
///   [`boot::RegionKind::Virtio`] (the transport page), hypercall 40
///   `VirtioStatus`, doorbell ports `PORT_BASE + 48 + device`.
pub const ABI_VERSION: u32 = 3;

/// Size of a small page.
pub const PAGE_SIZE: u64 = 0x1000;
/// Size of a large page (the monitor maps bulk memory with these; this host
/// has no 1 GiB pages).
pub const LARGE_PAGE_SIZE: u64 = 0x20_0000;

/// A guest-physical address.
///
/// Duet guests run identity-mapped, so inside the guest this is also the
/// virtual address. On the host it is only a number: the monitor can reach
/// the memory behind it only through its bounds-checked guest-memory
/// accessors, never by dereferencing.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gpa(pub u64);

impl Gpa {
    /// The null address (page 0 is never mapped).
    pub const NULL: Gpa = Gpa(0);

    /// `self + off`, or `None` on overflow.
    pub const fn checked_add(self, off: u64) -> Option<Gpa> {
        match self.0.checked_add(off) {
            Some(v) => Some(Gpa(v)),
            None => None,
        }
    }

    /// The address as a raw number.
    pub const fn raw(self) -> u64 {
        self.0
    }
}

/// Marker for `#[repr(C)]` ABI structs that have no padding and for which
/// every bit pattern is a valid value, so either side may build one from raw
/// guest bytes.
///
/// # Safety
/// Implement only for `#[repr(C)]` types made of integers (or arrays and
/// other `Plain` types) with no implicit padding bytes.
pub unsafe trait Plain: Copy + 'static {}

/// Implements [`Plain`] for ABI structs and checks their size at compile time.
macro_rules! plain {
    ($($t:ty = $size:expr),* $(,)?) => {
        $(
            // SAFETY: every type listed here is `#[repr(C)]`, made only of
            // integers, and its size is asserted below to be the sum of its
            // fields (so it has no padding).
            unsafe impl $crate::Plain for $t {}
            const _: () = assert!(core::mem::size_of::<$t>() == $size);
        )*
    };
}
pub(crate) use plain;

plain!(Gpa = 8, u8 = 1, u16 = 2, u32 = 4, u64 = 8, i64 = 8);
