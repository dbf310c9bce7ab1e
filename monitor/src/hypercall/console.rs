//! The console: guest bytes go to the monitor's stdout.

use super::{bad_args, Flow};
use crate::vm::Vm;
use duet_abi::hypercall::{ConsoleWriteArgs, Error, Hypercall, CONSOLE_WRITE_MAX};
use duet_abi::Gpa;
use std::io::Write;

/// [`Hypercall::ConsoleWrite`].
pub fn write(vm: &mut Vm, value: u32) -> Flow {
    let at = Gpa(u64::from(value));
    let mut args: ConsoleWriteArgs = match vm.mem.read_plain(at) {
        Ok(a) => a,
        Err(e) => return bad_args(Hypercall::ConsoleWrite, value, e),
    };
    args.ret = if args.len > CONSOLE_WRITE_MAX {
        Error::TooBig.to_ret()
    } else {
        let mut out = std::io::stdout().lock();
        match vm.mem.write_to(args.buf, args.len, &mut out) {
            Err(e) => Error::from(e).to_ret(),
            Ok(Err(_)) => Error::Io.to_ret(),
            Ok(Ok(())) => match out.flush() {
                Ok(()) => args.len as i64,
                Err(_) => Error::Io.to_ret(),
            },
        }
    };
    match vm.mem.write_plain(at, &args) {
        Ok(()) => Flow::Continue,
        Err(e) => bad_args(Hypercall::ConsoleWrite, value, e),
    }
}
