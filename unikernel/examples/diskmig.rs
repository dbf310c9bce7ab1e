//! A guest that writes its first disk while it is migrated: `diskmig [N]`
//! keeps rewriting N sectors (default 64), each with the number of the
//! write that last touched it, and remembers what it wrote. Once its
//! identity generation changes (it was moved) it reads every sector back
//! and prints `disk intact after W writes` or `disk corrupt at sector S`;
//! intact, it first writes `moved` into sector N (so a test can tell which
//! file the migrated guest writes). It prints `writing` once every sector
//! was written once.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;

duet::main!(main);

/// Writes at most this many times, then gives up (never migrated).
const MAX_WRITES: u64 = 50_000_000;

fn sector_of(value: u64, len: usize) -> alloc::vec::Vec<u8> {
    let mut s = vec![0u8; len];
    for (i, c) in s.chunks_mut(8).enumerate() {
        c.copy_from_slice(&(value ^ i as u64).to_le_bytes()[..c.len()]);
    }
    s
}

fn main() -> i32 {
    let Some(disk) = duet::block::disks().next() else {
        duet::println!("no disk");
        return 2;
    };
    let n: usize = duet::env::args()
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    let sz = disk.sector_size() as usize;
    if ((n + 1) * sz) as u64 > disk.capacity() {
        duet::println!("disk too small");
        return 2;
    }
    let gen0 = duet::identity().generation;
    let mut last = vec![0u64; n];
    let mut w: u64 = 0;
    while duet::identity().generation == gen0 {
        if w >= MAX_WRITES {
            duet::println!("never migrated");
            return 1;
        }
        w += 1;
        let slot = (w % n as u64) as usize;
        if disk
            .write_at((slot * sz) as u64, &sector_of(w, sz))
            .is_err()
        {
            duet::println!("write failed at {w}");
            return 1;
        }
        last[slot] = w;
        if w == n as u64 {
            duet::println!("writing");
        }
    }
    let mut back = vec![0u8; sz];
    for (slot, &v) in last.iter().enumerate() {
        if v == 0 {
            continue;
        }
        if disk.read_at((slot * sz) as u64, &mut back).is_err() {
            duet::println!("read failed at sector {slot}");
            return 1;
        }
        if back != sector_of(v, sz) {
            duet::println!("disk corrupt at sector {slot}");
            return 1;
        }
    }
    let mut marker = vec![0u8; sz];
    marker[..5].copy_from_slice(b"moved");
    if disk
        .write_at((n * sz) as u64, &marker)
        .and_then(|_| disk.flush())
        .is_err()
    {
        duet::println!("marker write failed");
        return 1;
    }
    duet::println!("disk intact after {w} writes");
    0
}
