//! The image's entry point and the boot sequence: check the ABI, record the
//! boot info, set up the heap, run the app's `main`, exit with its status.

use crate::hypercall::call;
use crate::rt;
use duet_abi::boot::{BootInfo, BOOT_FLAG_TRACE, BOOT_MAGIC};
use duet_abi::hypercall::{BootTraceArgs, Hypercall};
use duet_abi::ABI_VERSION;

extern "Rust" {
    /// The application's entry, defined by its `duet::main!`.
    fn main() -> i32;
}

/// The image's entry point: the monitor starts the vCPU here in ring 3 with
/// `rdi` = boot info address and a 16-byte aligned stack.
///
/// # Safety
/// Only the monitor calls this, once, with a valid boot info.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _start(boot: *const BootInfo) -> ! {
    let entry_tsc = rt::rdtsc();
    // Keep the image header reachable so the linker never drops it.
    // SAFETY: reading a static through a volatile read is always valid.
    unsafe { core::ptr::read_volatile(&crate::header::HEADER.magic) };

    // SAFETY: the monitor maps the boot info read-only for the guest's whole
    // life and passes its address here; we check the magic before trusting it.
    let bi: &'static BootInfo = unsafe { &*boot };
    if bi.magic != BOOT_MAGIC || bi.abi_version != ABI_VERSION {
        rt::abort_str("duet: ABI version mismatch between this image and the monitor; rebuild the image against the monitor's duet-abi");
    }
    rt::set_boot_info(bi);
    crate::allocator::init(bi);

    if bi.flags & BOOT_FLAG_TRACE != 0 {
        let mut args = BootTraceArgs {
            entry_tsc,
            main_tsc: rt::rdtsc(),
        };
        call(Hypercall::BootTrace, &mut args);
    }
    // SAFETY: `main` is defined by the application's `duet::main!`.
    let status = unsafe { main() };
    rt::exit(status)
}
