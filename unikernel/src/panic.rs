//! The panic handler: message and location go to the monitor through the
//! abort hypercall. It formats into a fixed buffer so it works even when the
//! heap is broken.

use core::fmt::Write;
use core::panic::PanicInfo;

struct FixedBuf {
    buf: [u8; 1024],
    len: usize,
}

impl Write for FixedBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let mut out = FixedBuf {
        buf: [0; 1024],
        len: 0,
    };
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
    // A cut message may end inside a UTF-8 sequence; the monitor prints it lossily.
    crate::rt::abort_bytes(&out.buf[..out.len])
}
