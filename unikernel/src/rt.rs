//! The entry point and the boot sequence.

use crate::hypercall::{call, call_value};
use duet_abi::boot::{BootInfo, BOOT_FLAG_TRACE, BOOT_MAGIC};
use duet_abi::hypercall::{AbortArgs, BootTraceArgs, Hypercall};
use duet_abi::{Gpa, ABI_VERSION};
use spin::Once;

static BOOT_INFO: Once<&'static BootInfo> = Once::new();

/// The boot info the monitor passed (valid once `_start` has run).
pub fn boot_info() -> &'static BootInfo {
    BOOT_INFO.get().expect("boot info read before _start")
}

/// Reads the time-stamp counter (no exit: `rdtsc` runs natively in ring 3).
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects; CR4.TSD is clear so it is allowed in
    // ring 3.
    unsafe { core::arch::x86_64::_rdtsc() }
}

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
    let entry_tsc = rdtsc();
    // Keep the image header reachable so the linker never drops it.
    // SAFETY: reading a static through a volatile read is always valid.
    unsafe { core::ptr::read_volatile(&crate::header::HEADER.magic) };

    // SAFETY: the monitor maps the boot info read-only for the guest's whole
    // life and passes its address here; we check the magic before trusting it.
    let bi: &'static BootInfo = unsafe { &*boot };
    if bi.magic != BOOT_MAGIC || bi.abi_version != ABI_VERSION {
        abort_str("duet: ABI version mismatch between this image and the monitor; rebuild the image against the monitor's duet-abi");
    }
    BOOT_INFO.call_once(|| bi);
    crate::allocator::init(bi);

    if bi.flags & BOOT_FLAG_TRACE != 0 {
        let mut args = BootTraceArgs {
            entry_tsc,
            main_tsc: rdtsc(),
        };
        call(Hypercall::BootTrace, &mut args);
    }
    // SAFETY: `main` is defined by the application's `duet::main!`.
    let status = unsafe { main() };
    exit(status)
}

/// Flushes the console and ends the guest with `status` (0..=255; the
/// monitor exits with the same status).
pub fn exit(status: i32) -> ! {
    crate::console::flush();
    call_value(Hypercall::Exit, status as u32 & 0xff);
    // The monitor never resumes a guest after Exit.
    loop {
        core::hint::spin_loop();
    }
}

/// Reports `msg` to the monitor and ends the guest (no allocation).
pub fn abort_str(msg: &str) -> ! {
    abort_bytes(msg.as_bytes())
}

/// Reports a UTF-8 (or lossily printed) message and ends the guest.
pub fn abort_bytes(msg: &[u8]) -> ! {
    crate::console::flush();
    let mut args = AbortArgs {
        msg: Gpa(msg.as_ptr() as u64),
        len: msg.len() as u64,
    };
    call(Hypercall::Abort, &mut args);
    loop {
        core::hint::spin_loop();
    }
}

/// What `main` may return.
pub trait Termination {
    /// The exit status.
    fn report(self) -> i32;
}

impl Termination for () {
    fn report(self) -> i32 {
        0
    }
}

impl Termination for i32 {
    fn report(self) -> i32 {
        self
    }
}

impl<E: core::fmt::Debug> Termination for Result<(), E> {
    fn report(self) -> i32 {
        match self {
            Ok(()) => 0,
            Err(e) => {
                crate::println!("Error: {:?}", e);
                1
            }
        }
    }
}
