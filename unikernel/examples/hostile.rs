//! A misbehaving guest: hands the monitor bad pointers and lengths. Cases
//! the monitor answers with an error code print `CASE -> result`; fatal cases
//! (the monitor stops the VM) are chosen by the first argument.
#![no_std]
#![no_main]

use duet::abi::hypercall::{AbortArgs, ConsoleWriteArgs, Error, Hypercall, CONSOLE_WRITE_MAX};
use duet::abi::Gpa;
use duet::hypercall::{call, call_value, result};

duet::main!(main);

fn console(buf: u64, len: u64) -> Result<u64, Error> {
    let mut a = ConsoleWriteArgs {
        buf: Gpa(buf),
        len,
        ret: 0,
    };
    call(Hypercall::ConsoleWrite, &mut a);
    result(a.ret)
}

static RODATA_ARGS: ConsoleWriteArgs = ConsoleWriteArgs {
    buf: Gpa(0),
    len: 0,
    ret: 0,
};

fn main() -> i32 {
    let mem = duet::rt::boot_info().mem_size;
    match duet::env::args().next().unwrap_or("errors") {
        "errors" => {
            duet::println!("beyond-memory -> {:?}", console(mem + 4096, 8));
            duet::println!("straddles-end -> {:?}", console(mem - 4, 8));
            duet::println!("overflowing-len -> {:?}", console(mem - 4, u64::MAX - 2));
            duet::println!("huge-address -> {:?}", console(u64::MAX, 1));
            duet::println!("too-big -> {:?}", console(0x20_0000, CONSOLE_WRITE_MAX + 1));
            duet::println!("ok -> {:?}", console(b"x\n".as_ptr() as u64, 2));
            0
        }
        "args-beyond-memory" => {
            call_value(Hypercall::ConsoleWrite, (mem as u32).wrapping_add(16));
            1
        }
        "args-straddle" => {
            call_value(Hypercall::ConsoleWrite, (mem - 8) as u32);
            1
        }
        "args-readonly" => {
            // The monitor cannot write `ret` into read-only data.
            call_value(
                Hypercall::ConsoleWrite,
                &RODATA_ARGS as *const _ as u64 as u32,
            );
            1
        }
        "abort-bad-message" => {
            let mut a = AbortArgs {
                msg: Gpa(mem - 2),
                len: 100,
            };
            call(Hypercall::Abort, &mut a);
            1
        }
        "unknown-call" => {
            // SAFETY: deliberately a port in the hypercall range with no call behind it.
            unsafe {
                core::arch::asm!("out dx, eax", in("dx") duet::abi::hypercall::PORT_BASE + 63, in("eax") 0u32)
            };
            1
        }
        "byte-out" => {
            // SAFETY: deliberately the wrong operand size.
            unsafe { core::arch::asm!("out dx, al", in("dx") Hypercall::Nop.port(), in("al") 0u8) };
            1
        }
        _ => 2,
    }
}
