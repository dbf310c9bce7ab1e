//! Exercises the memory hypercalls: `grow MIB` (allocate and touch MIB MiB
//! through the global allocator), `oom` (allocate until the limit), `release`
//! (grow, touch, release, with markers for RSS sampling), `protect-write`,
//! `protect-none` (each faults on purpose), `refusals` (error codes).
#![no_std]
#![no_main]

extern crate alloc;
use alloc::vec::Vec;
use duet::mem::{grow, protect, release, PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE};
use duet::time::{sleep, Duration};

duet::main!(main);

const MIB: usize = 1 << 20;

fn touch(p: *mut u8, len: usize) {
    for off in (0..len).step_by(4096) {
        // SAFETY: the caller owns [p, p + len).
        unsafe { core::ptr::write_volatile(p.add(off), 0xa5) };
    }
}

fn main() -> i32 {
    let bi = duet::rt::boot_info();
    let arg = |i: usize| {
        duet::env::args()
            .nth(i)
            .and_then(|a| a.parse::<usize>().ok())
            .unwrap_or(0)
    };
    match duet::env::args().next().unwrap_or("") {
        "grow" => {
            let mut chunks: Vec<Vec<u8>> = Vec::new();
            for _ in 0..arg(1) {
                let mut v = Vec::with_capacity(MIB);
                v.resize(MIB, 0x5a);
                chunks.push(v);
            }
            let ok = chunks
                .iter()
                .all(|c| c.iter().step_by(4096).all(|&b| b == 0x5a));
            let (used, total) = duet::allocator::stats();
            duet::println!(
                "grew: {} MiB in use, heap {} MiB mapped (started at {} KiB), ok={ok}",
                used / MIB,
                total / MIB,
                bi.heap_size / 1024
            );
        }
        "oom" => {
            let mut chunks: Vec<Vec<u8>> = Vec::new();
            loop {
                chunks.push(Vec::with_capacity(4 * MIB));
                if chunks.len().is_multiple_of(8) {
                    duet::println!("allocated {} MiB", chunks.len() * 4);
                }
            }
        }
        "release" => {
            let len = (arg(1) * MIB) as u64;
            let (start, len) = grow(len).expect("grow");
            touch(start as *mut u8, len as usize);
            duet::println!("touched");
            sleep(Duration::from_millis(400));
            release(start, len).expect("release");
            duet::println!("released");
            // SAFETY: still mapped; released pages read as zero.
            let b = unsafe { core::ptr::read_volatile(start as *const u8) };
            duet::println!("after release reads {b}");
            sleep(Duration::from_millis(400));
        }
        "protect-write" | "protect-none" => {
            let (start, len) = grow(4 * MIB as u64).expect("grow");
            touch(start as *mut u8, len as usize);
            let page = start + 2 * MIB as u64 + 4096; // inside a 2 MiB page: forces a split
            let none = duet::env::args().next() == Some("protect-none");
            protect(page, 4096, if none { PROT_NONE } else { PROT_READ }).expect("protect");
            // SAFETY: deliberately touching a page we just protected.
            let v = unsafe { core::ptr::read_volatile(page as *const u8) };
            duet::println!("read after protect: {v}");
            // Pages next to it are still writable.
            touch((page + 4096) as *mut u8, 4096);
            duet::println!("neighbour still writable; touching the protected page");
            // SAFETY: deliberately faults.
            unsafe { core::ptr::write_volatile(page as *mut u8, 1) };
            duet::println!("survived (unexpected)");
            return 1;
        }
        "protect-restore" => {
            let (start, len) = grow(4 * MIB as u64).expect("grow");
            touch(start as *mut u8, len as usize);
            protect(start, len, PROT_READ).expect("protect read-only");
            protect(start, len, PROT_READ | PROT_WRITE).expect("protect read-write");
            touch(start as *mut u8, len as usize);
            duet::println!("writable again");
        }
        "beyond-heap" => {
            let end = bi.heap_start.0 + bi.heap_limit - 4096;
            // SAFETY: deliberately touches heap that was never grown.
            unsafe { core::ptr::write_volatile(end as *mut u8, 1) };
            return 1;
        }
        "refusals" => {
            let heap = bi.heap_start.0;
            let text = duet::start::_start as *const () as u64 & !0xfff;
            let clock = bi.clock.0;
            duet::println!("grow-zero -> {:?}", grow(0));
            duet::println!("grow-too-much -> {:?}", grow(bi.mem_size));
            duet::println!("grow-overflow -> {:?}", grow(u64::MAX));
            duet::println!("release-misaligned -> {:?}", release(heap + 1, 4096));
            duet::println!("release-zero -> {:?}", release(heap, 0));
            duet::println!("release-text -> {:?}", release(text, 4096));
            duet::println!("release-beyond -> {:?}", release(bi.mem_size, 4096));
            duet::println!("release-overflow -> {:?}", release(!0xfff, 0x2000));
            duet::println!(
                "protect-text-writable -> {:?}",
                protect(text, 4096, PROT_READ | PROT_WRITE)
            );
            duet::println!(
                "protect-heap-exec -> {:?}",
                protect(heap, 4096, PROT_READ | PROT_EXEC)
            );
            duet::println!(
                "protect-clock -> {:?}",
                protect(clock, 4096, PROT_READ | PROT_WRITE)
            );
            duet::println!(
                "protect-page-tables -> {:?}",
                protect(0x40000, 4096, PROT_READ | PROT_WRITE)
            );
            duet::println!("protect-stack -> {:?}", protect(0x150000, 4096, PROT_NONE));
            duet::println!("protect-bad-bits -> {:?}", protect(heap, 4096, 0x80));
            duet::println!(
                "protect-write-only -> {:?}",
                protect(heap, 4096, PROT_WRITE)
            );
            duet::println!(
                "protect-beyond-heap -> {:?}",
                protect(bi.mem_size - 4096, 4096, PROT_READ)
            );
        }
        "" => {
            duet::println!("memory: no command given; usage: memory grow MIB | oom | release | protect-write | protect-none | protect-restore | beyond-heap | refusals");
            return 2;
        }
        other => {
            duet::println!("memory: unknown command `{other}`; usage: memory grow MIB | oom | release | protect-write | protect-none | protect-restore | beyond-heap | refusals");
            return 2;
        }
    }
    0
}
