//! Exercises the heap: vectors, sorting, strings, boxes and maps.
#![no_std]
#![no_main]

extern crate alloc;
use alloc::{boxed::Box, collections::BTreeMap, format, string::String, vec::Vec};

duet::main!(main);

fn main() -> i32 {
    let n: usize = duet::env::args()
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    // xorshift: deterministic pseudo-random input.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v: Vec<u64> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
        .collect();
    let sum: u128 = v.iter().map(|&e| e as u128).sum();
    v.sort_unstable();
    if !v.windows(2).all(|w| w[0] <= w[1]) || v.iter().map(|&e| e as u128).sum::<u128>() != sum {
        duet::println!("alloc: sort verification FAILED");
        return 1;
    }
    let mut map = BTreeMap::new();
    for (i, e) in v.iter().take(1000).enumerate() {
        map.insert(*e, format!("value-{i}"));
    }
    let b: Box<[u8]> = alloc::vec![7u8; 1 << 20].into_boxed_slice();
    let mut s = String::new();
    for i in 0..100 {
        s.push_str(&format!("{i},"));
    }
    if map.len() != 1000.min(n) || b.iter().any(|&e| e != 7) || !s.starts_with("0,1,2,") {
        duet::println!("alloc: collection verification FAILED");
        return 1;
    }
    let (used, total) = duet::allocator::stats();
    duet::println!("alloc ok: sorted {n} numbers, heap {used} of {total} bytes in use");
    0
}
