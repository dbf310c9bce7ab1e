//! Waits for the host to ask it to shut down (`SIGTERM` to the monitor),
//! sleeping in the poll hypercall meanwhile, then reports how it noticed
//! and exits 7. `shutdown ignore` never looks, so the monitor has to stop
//! it at the end of its grace period.
#![no_std]
#![no_main]

use duet::abi::poll::READY_SHUTDOWN;
use duet::time::{poll, sleep, Duration, Instant};

duet::main!(main);

fn main() -> i32 {
    if duet::env::args().next() == Some("ignore") {
        duet::println!("shutdown: ignoring requests");
        loop {
            sleep(Duration::from_millis(10));
        }
    }
    duet::println!("shutdown: waiting");
    loop {
        // A long deadline: only the request should wake it.
        let ready = poll(Some(Instant::now() + Duration::from_secs(60)), 0).unwrap_or(0);
        if ready & READY_SHUTDOWN != 0 {
            duet::println!(
                "shutdown: poll woke with READY_SHUTDOWN, requested={}",
                duet::shutdown_requested()
            );
            return 7;
        }
    }
}
