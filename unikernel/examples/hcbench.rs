//! Hypercall benchmark: times `N` (first argument, default 10000) null
//! hypercalls and console writes of 1 and 64 bytes with the TSC, then
//! prints one `BENCH <name> <ns per call> ns` line per kind.
//!
//! The console writes put newlines and spaces on stdout (so lines stay
//! short); the BENCH lines come only after every timed loop has finished.
#![no_std]
#![no_main]

use duet::rt::{boot_info, rdtsc};

duet::main!(main);

/// Times `n` calls of `f` after a short warm-up; returns ns per call.
fn time_per_call(n: u64, mut f: impl FnMut()) -> u64 {
    for _ in 0..(n / 10).max(10) {
        f();
    }
    let start = rdtsc();
    for _ in 0..n {
        f();
    }
    let ticks = rdtsc().wrapping_sub(start);
    let khz = boot_info().tsc_khz.max(1);
    // ticks / (khz * 1000) s = ticks * 1e6 / khz ns.
    (u128::from(ticks) * 1_000_000 / u128::from(khz) / u128::from(n)) as u64
}

fn main() -> i32 {
    let n: u64 = match duet::env::args().next().map(str::parse) {
        None => 10_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            duet::println!("usage: hcbench [CALLS]");
            return 2;
        }
    };
    let one = b"\n";
    let mut line = [b' '; 64];
    line[63] = b'\n';

    let nop = time_per_call(n, duet::hypercall::nop);
    let w1 = time_per_call(n, || duet::console::write_bytes(one));
    let w64 = time_per_call(n, || duet::console::write_bytes(&line));

    duet::println!("BENCH hypercall_nop_ns {nop} ns");
    duet::println!("BENCH console_write_1_ns {w1} ns");
    duet::println!("BENCH console_write_64_ns {w64} ns");
    0
}
