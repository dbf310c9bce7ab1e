//! Clock and poll costs for `cargo xtask bench clock`: ns per
//! `Instant::now()`, per raw `rdtsc`, and per poll hypercall with a deadline
//! in the past, measured in the same run. Prints `BENCH name value unit`.
#![no_std]
#![no_main]

use duet::rt::rdtsc;
use duet::time::{poll_raw, Instant};

duet::main!(main);

fn ns_per(ticks: u64, n: u64) -> f64 {
    let khz = duet::rt::boot_info().tsc_khz as f64;
    ticks as f64 * 1e6 / khz / n as f64
}

fn main() {
    let n: u64 = duet::env::args()
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let polls = (n / 100).max(100);
    // Warm up.
    for _ in 0..1000 {
        core::hint::black_box(Instant::now());
    }
    let t = rdtsc();
    for _ in 0..n {
        core::hint::black_box(Instant::now());
    }
    let clock = rdtsc() - t;
    let t = rdtsc();
    for _ in 0..n {
        core::hint::black_box(rdtsc());
    }
    let raw = rdtsc() - t;
    let t = rdtsc();
    for _ in 0..polls {
        let _ = core::hint::black_box(poll_raw(0, 0));
    }
    let poll = rdtsc() - t;
    let t = rdtsc();
    for _ in 0..polls {
        duet::hypercall::nop();
    }
    let nop = rdtsc() - t;
    duet::println!("BENCH clock_read_ns {:.2} ns", ns_per(clock, n));
    duet::println!("BENCH rdtsc_ns {:.2} ns", ns_per(raw, n));
    duet::println!("BENCH poll0_ns {:.0} ns", ns_per(poll, polls));
    duet::println!("BENCH nop_ns {:.0} ns", ns_per(nop, polls));
}
