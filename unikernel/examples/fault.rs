//! Takes the CPU exception named by its first argument, so tests can check
//! the monitor's report for each kind.
#![no_std]
#![no_main]

use core::arch::asm;

duet::main!(main);

static DATA: [u8; 16] = [0xc3; 16]; // `ret` instructions in a non-executable page
static mut SCRATCH: [u8; 16] = [0xc3; 16];

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let buf = core::hint::black_box([n; 64]);
    recurse(buf[3] + 1) + buf[5]
}

/// Three frames deep, then a null read: the report's backtrace names all.
#[inline(never)]
fn level1(p: *const u64) -> u64 {
    core::hint::black_box(level2(p)) + 1
}

#[inline(never)]
fn level2(p: *const u64) -> u64 {
    core::hint::black_box(level3(p)) + 1
}

#[inline(never)]
fn level3(p: *const u64) -> u64 {
    // SAFETY: deliberately unsound: `p` is null, the read faults.
    unsafe { core::ptr::read_volatile(p) }
}

/// Overwrites its saved frame pointer with garbage, then faults.
#[inline(never)]
fn smash() {
    // SAFETY: deliberately unsound: the caller's frame link is destroyed
    // and `ud2` faults before anything could use it.
    unsafe {
        asm!(
            "mov qword ptr [rbp], {bad}",
            "ud2",
            bad = in(reg) 0x4141_4141_4141_4141u64,
            options(noreturn)
        )
    }
}

fn main() -> i32 {
    let kind = duet::env::args().next().unwrap_or("");
    duet::println!("fault: {kind}");
    // SAFETY: none of this is safe; each arm deliberately faults so the
    // monitor's report can be checked.
    unsafe {
        match kind {
            "divide" => {
                asm!("xor edx, edx", "xor ecx, ecx", "mov eax, 1", "div ecx", out("eax") _, out("edx") _, out("ecx") _)
            }
            "ud" => asm!("ud2"),
            "breakpoint" => asm!("int3"),
            "debug" => asm!("pushfq", "or qword ptr [rsp], 0x100", "popfq", "nop"),
            "gp" => asm!("cli"),
            "port" => asm!("out dx, al", in("dx") 0x80u16, in("al") 0u8),
            "null" => {
                core::ptr::read_volatile(core::hint::black_box(
                    core::ptr::without_provenance::<u64>(8),
                ));
            }
            "write-text" => core::ptr::write_volatile(main as *const () as *mut u8, 0),
            "write-rodata" => core::ptr::write_volatile(DATA.as_ptr() as *mut u8, 0),
            "exec-data" => {
                let p = core::ptr::addr_of_mut!(SCRATCH) as *mut u8;
                core::ptr::write_volatile(p, 0xc3); // keep it in writable data
                let f: extern "C" fn() = core::mem::transmute(p);
                f()
            }
            "nested" => {
                core::hint::black_box(level1(core::hint::black_box(core::ptr::null())));
            }
            "smash" => smash(),
            "stack-overflow" => {
                core::hint::black_box(recurse(1));
            }
            "monitor-page" => {
                core::ptr::read_volatile(0x1000 as *const u64);
            }
            "beyond-memory" => {
                core::ptr::read_volatile(0x7000_0000_0000 as *const u64);
            }
            "clock-write" => {
                let clock = duet::rt::boot_info().clock.0 as *mut u64;
                core::ptr::write_volatile(clock, 1);
            }
            _ => {
                duet::println!("unknown fault kind");
                return 2;
            }
        }
    }
    duet::println!("fault: survived (unexpected)");
    1
}
