//! Raw hypercalls: one `out` to the call's port (see [`duet_abi::hypercall`]).

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// `out`s this guest made (hypercalls and virtio doorbells): each is one
/// VM exit (a doorbell on an ioeventfd ends in the kernel, not the monitor).
static EXITS: AtomicU64 = AtomicU64::new(0);

/// VM exits this guest has caused so far (for benchmarks: exits per
/// request).
pub fn exits() -> u64 {
    EXITS.load(Ordering::Relaxed)
}

/// Counts one exit made outside this module (a doorbell).
pub(crate) fn count_exit() {
    EXITS.fetch_add(1, Ordering::Relaxed);
}
use duet_abi::hypercall::{Error, Hypercall};
use duet_abi::Plain;

/// Issues hypercall `nr` with the immediate value `value` in `eax`.
#[inline(always)]
pub fn call_value(nr: Hypercall, value: u32) {
    count_exit();
    // SAFETY: `out` to a hypercall port is allowed by the TSS I/O bitmap and
    // only exits to the monitor; the value is not a pointer the monitor
    // dereferences for calls that take immediates.
    unsafe {
        asm!("out dx, eax", in("dx") nr.port(), in("eax") value, options(nostack, preserves_flags));
    }
}

/// Issues hypercall `nr` with a pointer to its argument struct. The monitor
/// may read and write `*args` during the call.
#[inline(always)]
pub fn call<T: Plain>(nr: Hypercall, args: &mut T) {
    let addr = args as *mut T as u64;
    count_exit();
    // Argument structs live on the stack or in the image, both below 4 GiB;
    // the ABI carries a 32-bit address.
    debug_assert!(addr <= u32::MAX as u64);
    // SAFETY: as in `call_value`. The asm has no `nomem`, so the compiler
    // assumes it reads and writes `*args` (its address escapes into the asm).
    unsafe {
        asm!("out dx, eax", in("dx") nr.port(), in("eax") addr as u32, options(nostack, preserves_flags));
    }
}

/// Decodes a `ret` field.
#[inline]
pub fn result(ret: i64) -> Result<u64, Error> {
    Error::from_ret(ret)
}

/// The null hypercall: one exit and back, for measuring.
#[inline]
pub fn nop() {
    call_value(Hypercall::Nop, 0);
}
