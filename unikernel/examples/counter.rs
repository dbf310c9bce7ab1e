//! Prints `count N` for N = 0, 1, 2, ... up to the first argument (default
//! 200) with a short pause between values, then exits 0. The pause is a
//! busy-wait on the TSC (the sleep hypercall is not there yet); the second
//! argument sets it in microseconds (default 2000). It marks its ready point
//! (`duet::snapshot_point()`) before counting, so it can be a template.
#![no_std]
#![no_main]

duet::main!(main);

fn pause(us: u64) {
    let khz = duet::rt::boot_info().tsc_khz.max(1);
    let start = duet::rt::rdtsc();
    let ticks = us * khz / 1000;
    while duet::rt::rdtsc().wrapping_sub(start) < ticks {
        core::hint::spin_loop();
    }
}

fn main() {
    let mut args = duet::env::args();
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let us: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    duet::snapshot_point();
    for i in 0..n {
        duet::println!("count {i}");
        pause(us);
    }
    duet::println!("counter done");
}
