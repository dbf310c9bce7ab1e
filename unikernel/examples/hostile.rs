//! A misbehaving guest: hands the monitor bad pointers and lengths, and
//! tries privileged instructions and the monitor's own ring-0 pages. Cases
//! the monitor answers with an error code print `CASE -> result`; fatal cases
//! (the monitor stops the VM) are chosen by the first argument, some with an
//! address as the second.
#![no_std]
#![no_main]

use core::arch::asm;

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

/// The second argument as a hex address (`0x...`), or 0.
fn address_arg() -> u64 {
    duet::env::args()
        .nth(1)
        .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0)
}

/// The IDT's base, which `sidt` tells ring 3 (this host has no UMIP).
fn idt_base() -> u64 {
    let mut desc = [0u8; 10];
    // SAFETY: `sidt` stores 10 bytes into `desc` and touches nothing else.
    unsafe { asm!("sidt [{}]", in(reg) desc.as_mut_ptr()) };
    u64::from_le_bytes(desc[2..10].try_into().unwrap())
}

/// Tries one privileged operation from ring 3. Each must stop the guest;
/// returning means the monitor let it through. (Not inlined, so reports
/// name it.)
#[inline(never)]
fn privileged(case: &str) -> bool {
    let desc = [0u64; 2];
    // SAFETY: none of this is safe; each arm deliberately does what a ring-3
    // guest may not, so the monitor's report can be checked.
    unsafe {
        match case {
            "int3" => asm!("int3"),
            // A software `int` to a DPL-0 gate: a page fault without an
            // error code would confuse a naive handler; the CPU refuses it.
            "int-pf" => asm!("int 14"),
            "int-beyond-idt" => asm!("int 0x80"),
            // `into` does not exist in 64-bit mode.
            "into" => asm!(".byte 0xce"),
            "syscall" => asm!("syscall", out("rcx") _, out("r11") _),
            "mov-cr3" => asm!("mov cr3, {}", in(reg) 0x40000u64),
            "lgdt" => asm!("lgdt [{}]", in(reg) desc.as_ptr()),
            "lidt" => asm!("lidt [{}]", in(reg) desc.as_ptr()),
            // EFER: turning off NX or long mode.
            "wrmsr" => asm!("wrmsr", in("ecx") 0xc000_0080u32, in("eax") 0u32, in("edx") 0u32),
            "cli" => asm!("cli"),
            "hlt" => asm!("hlt"),
            "in-port" => asm!("in al, 0x60", out("al") _),
            "out-port" => asm!("out 0x80, al", in("al") 0u8),
            // Past the I/O bitmap's end (the TSS limit): denied all the same.
            "out-high-port" => asm!("out dx, al", in("dx") 0xfff0u16, in("al") 0u8),
            // The port the monitor's #BP stub reports on.
            "out-stub-port" => asm!("out 0xe3, al", in("al") 0u8),
            // `popf` cannot raise IOPL in ring 3, so the port stays closed.
            "popf-iopl" => asm!(
                "pushfq",
                "or qword ptr [rsp], 0x3000",
                "popfq",
                "out 0x80, al",
                in("al") 0u8
            ),
            // Far return into the kernel code segment (selector 0x10).
            "far-return-ring0" => asm!(
                "push 0x10",
                "lea rax, [rip + 2f]",
                "push rax",
                "retfq",
                "2:",
                out("rax") _
            ),
            "load-kernel-data" => asm!("mov ds, {0:x}", in(reg) 0x18u16),
            "write-idt" => core::ptr::write_volatile(idt_base() as *mut u64, 0),
            "write-address" => core::ptr::write_volatile(address_arg() as *mut u8, 0xcc),
            "jump-address" => {
                let f: extern "C" fn() = core::mem::transmute(address_arg() as usize);
                f()
            }
            _ => return false,
        }
    }
    duet::println!("hostile: survived {case}");
    true
}

fn main() -> i32 {
    let mem = duet::rt::boot_info().mem_size;
    let case = duet::env::args().next().unwrap_or("errors");
    if privileged(case) {
        return 1;
    }
    match case {
        // A template point, then a privileged instruction: after any
        // restore the guest must still be in ring 3 (#GP).
        "snapshot-then-cli" => {
            let restored = duet::snapshot_point();
            duet::println!("hostile: restored={restored}, trying cli");
            // SAFETY: deliberately privileged; the monitor stops the guest.
            unsafe { asm!("cli") };
            duet::println!("hostile: survived cli");
            1
        }
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
                asm!("out dx, eax", in("dx") duet::abi::hypercall::PORT_BASE + 63, in("eax") 0u32)
            };
            1
        }
        "byte-out" => {
            // SAFETY: deliberately the wrong operand size.
            unsafe { asm!("out dx, al", in("dx") Hypercall::Nop.port(), in("al") 0u8) };
            1
        }
        "in-hypercall-port" => {
            // SAFETY: deliberately reads a port the monitor only writes.
            unsafe { asm!("in eax, dx", in("dx") Hypercall::Nop.port(), out("eax") _) };
            1
        }
        _ => 2,
    }
}
