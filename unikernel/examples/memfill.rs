//! Fills MIB (first argument, default 8) MiB of heap with a pattern, marks
//! its ready point, then checks the pattern and prints a checksum: a guest
//! with a lot of populated memory, for snapshot tests and benchmarks. With a
//! second argument `wait`, it then prints `waiting` and spins until
//! snapshotted and killed.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;

duet::main!(main);

fn main() -> i32 {
    let mut args = duet::env::args();
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    let wait = args.next() == Some("wait");
    let words = mib << 17;
    let mut v: Vec<u64> = Vec::with_capacity(words);
    for i in 0..words as u64 {
        v.push(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555);
    }
    duet::println!("filled {mib} MiB");
    duet::snapshot_point();
    let mut sum = 0u64;
    for (i, w) in v.iter().enumerate() {
        if *w != (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555 {
            duet::println!("pattern broken at word {i}");
            return 1;
        }
        sum = sum.wrapping_add(*w);
    }
    duet::println!("memfill ok {mib} MiB sum {sum:016x}");
    if wait {
        duet::println!("waiting");
        loop {
            core::hint::spin_loop();
        }
    }
    0
}
