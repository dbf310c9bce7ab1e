//! Console output: line-buffered writes through the console hypercall.

use core::fmt::{self, Write};
use duet_abi::hypercall::{ConsoleWriteArgs, Hypercall, CONSOLE_WRITE_MAX};
use duet_abi::Gpa;
use spin::Mutex;

const LINE: usize = 512;

struct LineBuffer {
    buf: [u8; LINE],
    len: usize,
}

// One vCPU and no interrupts: the lock is never contended, it only makes the
// buffer a safe `static`.
static CONSOLE: Mutex<LineBuffer> = Mutex::new(LineBuffer {
    buf: [0; LINE],
    len: 0,
});

/// Writes raw bytes to the console now, bypassing the line buffer.
pub fn write_bytes(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let n = bytes.len().min(CONSOLE_WRITE_MAX as usize);
        let mut args = ConsoleWriteArgs {
            buf: Gpa(bytes.as_ptr() as u64),
            len: n as u64,
            ret: 0,
        };
        crate::hypercall::call(Hypercall::ConsoleWrite, &mut args);
        match crate::hypercall::result(args.ret) {
            Ok(0) | Err(_) => return,
            Ok(w) => bytes = &bytes[(w as usize).min(n)..],
        }
    }
}

impl LineBuffer {
    fn flush(&mut self) {
        if self.len > 0 {
            write_bytes(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl Write for LineBuffer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s.as_bytes();
        while !rest.is_empty() {
            if self.len == 0 && rest.len() >= LINE {
                // Large writes go straight out: no point copying them.
                let cut = rest
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(rest.len(), |p| p + 1);
                write_bytes(&rest[..cut]);
                rest = &rest[cut..];
                continue;
            }
            let n = rest.len().min(LINE - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&rest[..n]);
            self.len += n;
            let had_newline = rest[..n].contains(&b'\n');
            rest = &rest[n..];
            if had_newline || self.len == LINE {
                self.flush();
            }
        }
        Ok(())
    }
}

/// Flushes buffered console output.
pub fn flush() {
    CONSOLE.lock().flush();
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let _ = CONSOLE.lock().write_fmt(args);
}

/// Prints to the console (line-buffered).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
