//! Prints `count N` for N = 0, 1, 2, ... up to the first argument (default
//! 200), sleeping between values (the second argument, in microseconds,
//! default 2000), then exits 0; the static `COUNT` holds the last value.
//! It marks its ready point (`duet::snapshot_point()`) before counting, so
//! it can be a template.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use duet::time::{sleep, Duration};

duet::main!(main);

/// The last value printed (a static for debuggers to read and watch).
static COUNT: AtomicU64 = AtomicU64::new(0);

fn main() {
    let mut args = duet::env::args();
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let us: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    duet::snapshot_point();
    for i in 0..n {
        COUNT.store(i, Ordering::Relaxed);
        duet::println!("count {i}");
        sleep(Duration::from_micros(us));
    }
    duet::println!("counter done");
}
