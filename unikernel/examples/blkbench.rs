//! Block benchmark: per-request latency and sequential throughput on the
//! first disk, single requests against batches. Prints machine-readable
//! lines `BENCH <name> <value> <unit>`; `cargo xtask bench block` compares
//! them with the host's own `pread`/`pwrite` on the same file.
//!
//! Args: `[MiB]`, the span of the disk the sequential tests cover (default:
//! the whole disk, at most 32 MiB). The disk should hold data (not holes).
#![no_std]
#![no_main]

extern crate alloc;
use alloc::vec;
use duet::abi::block::BLK_BATCH_MAX;
use duet::block::{Batch, Disk};

duet::main!(main);

/// Request sizes of the sequential tests.
const SIZES: [(usize, &str); 5] = [
    (4 << 10, "4k"),
    (16 << 10, "16k"),
    (64 << 10, "64k"),
    (256 << 10, "256k"),
    (1 << 20, "1m"),
];
/// Requests per latency test.
const LAT_N: u64 = 2000;

fn ns(ticks: u64) -> u64 {
    let khz = duet::rt::boot_info().tsc_khz.max(1);
    (ticks as u128 * 1_000_000 / khz as u128) as u64
}

fn bench(name: &str, value: u64, unit: &str) {
    duet::println!("BENCH {name} {value} {unit}");
}

/// Mean latency of `LAT_N` requests of `size` bytes at successive offsets.
fn latency(d: Disk, size: usize, write: bool) -> u64 {
    let mut buf = vec![0x5au8; size];
    let span = d.capacity() / size as u64;
    let t = duet::rt::rdtsc();
    for i in 0..LAT_N {
        let off = (i % span) * size as u64;
        let r = if write {
            d.write_at(off, &buf)
        } else {
            d.read_at(off, &mut buf)
        };
        r.expect("latency request");
    }
    ns(duet::rt::rdtsc() - t) / LAT_N
}

/// MB/s moving `span` bytes with `size`-byte requests, `per_exit` per exit.
fn throughput(
    d: Disk,
    span: u64,
    size: usize,
    per_exit: usize,
    write: bool,
    buf: &mut [u8],
) -> u64 {
    let group = size * per_exit;
    let t = duet::rt::rdtsc();
    let mut off = 0;
    while off + group as u64 <= span {
        if per_exit == 1 {
            let r = if write {
                d.write_at(off, &buf[..size])
            } else {
                d.read_at(off, &mut buf[..size])
            };
            r.expect("sequential request");
        } else {
            let mut b = Batch::new();
            let mut o = off;
            if write {
                for c in buf[..group].chunks(size) {
                    b.write(d, o, c).expect("batch room");
                    o += size as u64;
                }
            } else {
                for c in buf[..group].chunks_mut(size) {
                    b.read(d, o, c).expect("batch room");
                    o += size as u64;
                }
            }
            b.submit_all().expect("sequential batch");
        }
        off += group as u64;
    }
    let elapsed = ns(duet::rt::rdtsc() - t).max(1);
    off * 1000 / elapsed
}

fn main() -> i32 {
    let Some(d) = duet::block::disks().next() else {
        duet::println!("blkbench: no disk; run with --disk FILE");
        return 2;
    };
    let span = duet::env::args()
        .next()
        .and_then(|a| a.parse::<u64>().ok())
        .map_or(32 << 20, |m| m << 20)
        .min(d.capacity());
    for (size, tag) in [(512usize, "512"), (4096, "4k")] {
        let e0 = duet::hypercall::exits();
        bench(
            &alloc::format!("lat_read_{tag}"),
            latency(d, size, false),
            "ns",
        );
        bench(
            &alloc::format!("lat_read_{tag}_exits_milli"),
            (duet::hypercall::exits() - e0) * 1000 / LAT_N,
            "exits/1000req",
        );
        bench(
            &alloc::format!("lat_write_{tag}"),
            latency(d, size, true),
            "ns",
        );
    }
    // Queue depth 32: 4 KiB reads, 32 in flight (one batch).
    let exits0 = duet::hypercall::exits();
    let t = duet::rt::rdtsc();
    let mut qd = vec![0u8; 32 * 4096];
    let slots = (d.capacity() / (32 * 4096)).max(1);
    for i in 0..LAT_N / 32 {
        let base = (i % slots) * 32 * 4096;
        let mut b = Batch::new();
        for (k, c) in qd.chunks_mut(4096).enumerate() {
            b.read(d, base + k as u64 * 4096, c).expect("batch room");
        }
        b.submit_all().expect("qd32 batch");
    }
    let n = (LAT_N / 32) * 32;
    bench("qd32_read_4k", ns(duet::rt::rdtsc() - t) / n, "ns");
    bench(
        "qd32_exits_milli",
        (duet::hypercall::exits() - exits0) * 1000 / n,
        "exits/1000req",
    );
    let mut buf = vec![0xa5u8; span as usize];
    for (size, tag) in SIZES {
        let per_batch = (BLK_BATCH_MAX as usize).min(span as usize / size).max(1);
        for (write, op) in [(false, "read"), (true, "write")] {
            let single = throughput(d, span, size, 1, write, &mut buf);
            bench(&alloc::format!("seq_{op}_single_{tag}"), single, "MB/s");
            let batched = throughput(d, span, size, per_batch, write, &mut buf);
            bench(&alloc::format!("seq_{op}_batch_{tag}"), batched, "MB/s");
        }
    }
    0
}
