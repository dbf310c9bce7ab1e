//! The console: guest bytes go to the monitor's stdout.

use crate::call::handle;
use crate::memory::GuestMem;
use crate::outcome::Flow;
use duet_abi::hypercall::{ConsoleWriteArgs, Error, Hypercall, CONSOLE_WRITE_MAX};
use std::io::Write;

/// [`Hypercall::ConsoleWrite`].
pub fn write(mem: &GuestMem, value: u32) -> Flow {
    handle(
        mem,
        Hypercall::ConsoleWrite,
        value,
        |a: &mut ConsoleWriteArgs| {
            if a.len > CONSOLE_WRITE_MAX {
                return Err(Error::TooBig);
            }
            let mut out = std::io::stdout();
            match mem.write_to(a.buf, a.len, &mut out)? {
                Ok(()) => out.flush().map(|()| a.len).map_err(|_| Error::Io),
                Err(_) => Err(Error::Io),
            }
        },
    )
}
