//! Dirties memory at a steady rate, for live-migration tests and benchmarks.
//!
//! `dirty [MIB] [MIB_PER_S] [MS] [FILL]`: allocates MIB MiB (default 16),
//! writes all of it once first when FILL is 1 (a guest with its memory in
//! use), then for
//! MS milliseconds (default 2000) rewrites pages round-robin at MIB_PER_S
//! MiB/s (default 64; 0 = as fast as it can), every word of a page holding
//! that page's write count. Prints `dirty tick N` every 100 ms and at the end
//! checks every page still holds what it last wrote: `dirty ok` (exit 0) or
//! `dirty CORRUPT page P` (exit 1). A lost page in a migration shows here.
#![no_std]
#![no_main]

extern crate alloc;
use alloc::vec;

duet::main!(main);

const PAGE: usize = 4096;
const WORDS: usize = PAGE / 8;

fn main() -> i32 {
    let mut args = duet::env::args();
    let mut arg = |d: u64| args.next().and_then(|a| a.parse().ok()).unwrap_or(d);
    let (mib, rate, total_ms, fill) = (arg(16).max(1), arg(64), arg(2000), arg(0));
    let khz = duet::rt::boot_info().tsc_khz.max(1);
    let pages = (mib as usize) << 8;
    let mut buf = vec![0u64; pages * WORDS];
    let mut count = vec![0u64; pages];
    if fill == 1 {
        for (p, c) in count.iter_mut().enumerate() {
            *c = 1;
            buf[p * WORDS..(p + 1) * WORDS].fill(1);
        }
        duet::println!("dirty filled");
    }
    let start = duet::rt::rdtsc();
    let ms_now = || duet::rt::rdtsc().wrapping_sub(start) / khz;
    let (mut written, mut next, mut ticks) = (0u64, 0usize, 0u64);
    loop {
        let now = ms_now();
        if now >= total_ms {
            break;
        }
        if now / 100 >= ticks {
            duet::println!("dirty tick {ticks}");
            ticks += 1;
        }
        // Pace: bytes written so far must not run ahead of rate × time.
        if rate != 0 && written * 1000 >= rate * (1 << 20) * now.max(1) {
            core::hint::spin_loop();
            continue;
        }
        count[next] += 1;
        let v = count[next];
        for w in &mut buf[next * WORDS..(next + 1) * WORDS] {
            // Volatile: the writes must really reach memory now.
            // SAFETY: `w` is a valid, aligned `&mut u64`.
            unsafe { core::ptr::write_volatile(w, v) };
        }
        written += PAGE as u64;
        next = (next + 1) % pages;
    }
    for (p, &c) in count.iter().enumerate() {
        if buf[p * WORDS..(p + 1) * WORDS].iter().any(|&w| w != c) {
            duet::println!("dirty CORRUPT page {p}");
            return 1;
        }
    }
    duet::println!("dirty ok ({} MiB written)", written >> 20);
    0
}
