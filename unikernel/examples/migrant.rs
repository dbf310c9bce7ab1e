//! A guest that shows what a live migration looks like from inside:
//! `migrant [N] [US]` prints `tick I gen G mono_us M wall_s W` N times
//! (default 300), US microseconds apart (default 3000, a TSC busy-wait),
//! with its identity generation and the clock page's monotonic and wall
//! time, then `migrant done`.
#![no_std]
#![no_main]

use core::sync::atomic::{fence, Ordering};
use duet_abi::clock::ClockPage;

duet::main!(main);

/// Monotonic and wall nanoseconds now, from the clock page (a seqlock).
fn now() -> (u64, u64) {
    let page = duet::rt::boot_info().clock.0 as *const ClockPage;
    loop {
        // SAFETY: the monitor maps the clock page read-only for the guest's
        // whole life; volatile reads because it rewrites it (after a move).
        let seq1 = unsafe { core::ptr::read_volatile(&raw const (*page).seq) };
        fence(Ordering::Acquire);
        // SAFETY: as above.
        let p = unsafe { core::ptr::read_volatile(page) };
        let tsc = duet::rt::rdtsc();
        fence(Ordering::Acquire);
        // SAFETY: as above.
        let seq2 = unsafe { core::ptr::read_volatile(&raw const (*page).seq) };
        if seq1 == seq2 && seq1 % 2 == 0 {
            return (p.mono_ns(tsc), p.wall_ns(tsc));
        }
        core::hint::spin_loop();
    }
}

fn main() {
    let mut args = duet::env::args();
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(300);
    let us: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3000);
    let khz = duet::rt::boot_info().tsc_khz.max(1);
    for i in 0..n {
        let (mono, wall) = now();
        duet::println!(
            "tick {i} gen {} mono_us {} wall_s {}",
            duet::identity().generation,
            mono / 1000,
            wall / 1_000_000_000
        );
        let start = duet::rt::rdtsc();
        while duet::rt::rdtsc().wrapping_sub(start) < us * khz / 1000 {
            core::hint::spin_loop();
        }
    }
    duet::println!("migrant done");
}
