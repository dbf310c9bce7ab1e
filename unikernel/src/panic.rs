//! The panic handler: message and location go to the monitor through the
//! abort hypercall. It formats into a fixed buffer so it works even when the
//! heap is broken or exhausted.

use crate::fmtbuf::FmtBuf;
use core::fmt::Write;
use core::panic::PanicInfo;

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let mut buf = [0u8; 1024];
    let mut out = FmtBuf::new(&mut buf);
    let _ = match info.location() {
        Some(loc) => write!(
            out,
            "panicked at {}:{}:{}:\n{}",
            loc.file(),
            loc.line(),
            loc.column(),
            info.message()
        ),
        None => write!(out, "panicked:\n{}", info.message()),
    };
    let n = out.written();
    // A cut message may end inside a UTF-8 sequence; the monitor prints it lossily.
    crate::rt::abort_bytes(&buf[..n])
}
