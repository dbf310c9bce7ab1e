//! The runtime's services to the rest of the library and the app: the boot
//! info, the TSC, exit and abort. The entry point that sets them up is
//! [`crate::start`].

use crate::hypercall::{call, call_value};
use duet_abi::boot::BootInfo;
use duet_abi::hypercall::{AbortArgs, Hypercall};
use duet_abi::Gpa;
use spin::Once;

static BOOT_INFO: Once<&'static BootInfo> = Once::new();

/// The boot info the monitor passed (valid once `_start` has run).
pub fn boot_info() -> &'static BootInfo {
    BOOT_INFO.get().expect("boot info read before _start")
}

/// Records the checked boot info (once, from `_start`).
pub(crate) fn set_boot_info(bi: &'static BootInfo) {
    BOOT_INFO.call_once(|| bi);
}

/// Reads the time-stamp counter (no exit: `rdtsc` runs natively in ring 3).
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects; CR4.TSD is clear so it is allowed in
    // ring 3.
    unsafe { core::arch::x86_64::_rdtsc() }
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
