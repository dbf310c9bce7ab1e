//! Exercises time: `sleep MS`, `idle MS` (markers around a sleep, for CPU
//! accounting), `monotonic N` (N reads never decrease), `wall` (prints the
//! wall clock), `poll` (poll edge cases and their error codes).
#![no_std]
#![no_main]

use duet::time::{poll, poll_raw, sleep, Duration, Instant, SystemTime, UNIX_EPOCH};

duet::main!(main);

fn arg(i: usize) -> u64 {
    duet::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0)
}

fn main() -> i32 {
    match duet::env::args().next().unwrap_or("") {
        "sleep" => {
            let t = Instant::now();
            sleep(Duration::from_millis(arg(1)));
            duet::println!("slept_ns {}", t.elapsed().as_nanos());
        }
        "idle" => {
            duet::println!("sleeping");
            sleep(Duration::from_millis(arg(1)));
            duet::println!("woke");
        }
        "monotonic" => {
            let n = arg(1);
            let mut last = Instant::now();
            for i in 0..n {
                let now = Instant::now();
                if now < last {
                    duet::println!(
                        "monotonic went backwards at read {i}: {} < {}",
                        now.as_nanos(),
                        last.as_nanos()
                    );
                    return 1;
                }
                last = now;
            }
            duet::println!("monotonic ok: {n} reads, last {} ns", last.as_nanos());
        }
        "wall" => {
            let d = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            duet::println!("wall_ns {}", d.as_nanos());
        }
        "poll" => {
            let t = Instant::now();
            duet::println!("past-deadline -> {:?}", poll_raw(0, 0));
            duet::println!(
                "past-deadline-fast -> {}",
                t.elapsed() < Duration::from_secs(1)
            );
            let ndev = duet::rt::boot_info().device_count;
            duet::println!("no-such-device -> {:?}", poll(None, 1 << ndev));
            duet::println!("bit-63 -> {:?}", poll(None, 1 << 63));
            if ndev > 0 {
                // A block device is always ready: even a deadline far in the
                // future returns at once.
                duet::println!("absurd-deadline-ready -> {:?}", poll_raw(u64::MAX - 1, 1));
            }
            let t = Instant::now();
            duet::println!(
                "absurd-deadline-short -> {:?}",
                poll(Some(t + Duration::from_millis(5)), 0)
            );
        }
        "" => {
            duet::println!("clock: no command given; usage: clock sleep MS | idle MS | monotonic N | wall | poll");
            return 2;
        }
        other => {
            duet::println!("clock: unknown command `{other}`; usage: clock sleep MS | idle MS | monotonic N | wall | poll");
            return 2;
        }
    }
    0
}
