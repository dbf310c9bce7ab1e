//! Exercises the block hypercalls for the end-to-end tests. The first
//! argument picks a case; each prints `name -> result` lines the tests check.
#![no_std]
#![no_main]

extern crate alloc;
use alloc::{vec, vec::Vec};
use duet::abi::block::{
    BlkBatchArgs, BlkFlushArgs, BlkIoArgs, BlkReq, BLK_BATCH_MAX, BLK_IO_MAX, BLK_OP_READ,
};
use duet::abi::hypercall::{Error, Hypercall};
use duet::abi::Gpa;
use duet::block::{Batch, Disk};
use duet::hypercall::{call, result};

duet::main!(main);

/// xorshift64: the tests regenerate the same stream on the host.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// FNV-1a, to compare the disk's final contents with the host's view.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn raw(nr: Hypercall, dev: u32, offset: u64, buf: u64, len: u64) -> Result<u64, Error> {
    let mut a = BlkIoArgs {
        dev,
        flags: 0,
        offset,
        buf: Gpa(buf),
        len,
        ret: 0,
    };
    call(nr, &mut a);
    result(a.ret)
}

static RODATA: [u8; 512] = [0; 512];

fn disk0() -> Disk {
    duet::block::disks().next().expect("no disk attached")
}

fn info() -> i32 {
    for d in duet::block::disks() {
        duet::println!(
            "disk {} {} capacity={} sector={} {}",
            d.id(),
            d.name(),
            d.capacity(),
            d.sector_size(),
            if d.is_read_only() { "ro" } else { "rw" }
        );
    }
    0
}

/// Random writes of random aligned ranges, checked against a shadow copy.
fn roundtrip(seed: u64, count: u32) -> i32 {
    let d = disk0();
    let ss = u64::from(d.sector_size());
    let sectors = d.capacity() / ss;
    let mut shadow = vec![0u8; d.capacity() as usize];
    d.read_at(0, &mut shadow).expect("initial read");
    let mut rng = Rng(seed);
    for i in 0..count {
        // Mostly small requests, every eighth one over BLK_IO_MAX (split
        // into a batch by the library).
        let max = if i % 8 == 7 {
            (3 * BLK_IO_MAX / 2) / ss
        } else {
            64
        };
        let n = 1 + rng.next() % max.min(sectors);
        let off = (rng.next() % (sectors - n + 1)) * ss;
        let data: Vec<u8> = (0..n * ss).map(|_| rng.next() as u8).collect();
        d.write_at(off, &data).expect("write");
        shadow[off as usize..(off + n * ss) as usize].copy_from_slice(&data);
        // Read back a random range and compare.
        let m = 1 + rng.next() % 64.min(sectors);
        let roff = (rng.next() % (sectors - m + 1)) * ss;
        let mut back = vec![0u8; (m * ss) as usize];
        d.read_at(roff, &mut back).expect("read");
        if back[..] != shadow[roff as usize..(roff + m * ss) as usize] {
            duet::println!("roundtrip MISMATCH at {roff}+{}", m * ss);
            return 1;
        }
    }
    d.flush().expect("flush");
    let mut all = vec![0u8; d.capacity() as usize];
    d.read_at(0, &mut all).expect("final read");
    if all != shadow {
        duet::println!("roundtrip MISMATCH in final read");
        return 1;
    }
    duet::println!("roundtrip ok count={count} fnv={:016x}", fnv(&all));
    0
}

/// Bad requests made with raw hypercalls: each must get an error code.
fn errors() -> i32 {
    let d = disk0();
    let (id, cap) = (d.id(), d.capacity());
    let mem = duet::rt::boot_info().mem_size;
    let mut buf = vec![0u8; 2 * BLK_IO_MAX as usize];
    let b = buf.as_mut_ptr() as u64;
    let r = Hypercall::BlkRead;
    let cases: [(&str, Result<u64, Error>); 14] = [
        ("misaligned-offset", raw(r, id, 100, b, 512)),
        ("misaligned-len", raw(r, id, 0, b, 100)),
        ("past-end", raw(r, id, cap, b, 512)),
        ("straddles-end", raw(r, id, cap - 512, b, 1024)),
        ("overflowing", raw(r, id, u64::MAX - 511, b, 1024)),
        ("too-big", raw(r, id, 0, b, BLK_IO_MAX + 512)),
        ("no-device", raw(r, 99, 0, b, 512)),
        ("buffer-outside-memory", raw(r, id, 0, mem, 512)),
        ("buffer-overflowing", raw(r, id, 0, u64::MAX - 10, 512)),
        (
            "read-into-rodata",
            raw(r, id, 0, RODATA.as_ptr() as u64, 512),
        ),
        (
            "write-from-outside-memory",
            raw(Hypercall::BlkWrite, id, 0, mem - 256, 512),
        ),
        ("flags", {
            let mut a = BlkIoArgs {
                dev: id,
                flags: 1,
                offset: 0,
                buf: Gpa(b),
                len: 512,
                ret: 0,
            };
            call(r, &mut a);
            result(a.ret)
        }),
        ("flush-no-device", {
            let mut a = BlkFlushArgs {
                dev: 7,
                flags: 0,
                ret: 0,
            };
            call(Hypercall::BlkFlush, &mut a);
            result(a.ret)
        }),
        ("ok", raw(r, id, cap - 512, b, 512)),
    ];
    for (name, res) in cases {
        duet::println!("{name} -> {res:?}");
    }
    let mut reqs = [BlkReq::default(); BLK_BATCH_MAX as usize + 1];
    let batch = |reqs: u64, count: u32| {
        let mut a = BlkBatchArgs {
            reqs: Gpa(reqs),
            count,
            flags: 0,
            ret: 0,
        };
        call(Hypercall::BlkBatch, &mut a);
        result(a.ret)
    };
    let p = reqs.as_mut_ptr() as u64;
    duet::println!("batch-too-long -> {:?}", batch(p, BLK_BATCH_MAX + 1));
    duet::println!("batch-outside-memory -> {:?}", batch(mem - 40, 2));
    duet::println!("batch-in-rodata -> {:?}", batch(RODATA.as_ptr() as u64, 1));
    duet::println!("batch-empty -> {:?}", batch(p, 0));
    0
}

/// One batch with bad entries among good ones: only those fail.
fn batch() -> i32 {
    let d = disk0();
    let ones = [1u8; 512];
    let threes = [3u8; 512];
    let mut b = Batch::new();
    b.write(d, 0, &ones).unwrap();
    b.write(d, 700, &ones).unwrap(); // misaligned
    b.write(d, 1024, &threes).unwrap();
    b.write(d, d.capacity(), &threes).unwrap(); // past the end
    b.flush(d).unwrap();
    let ok = b.submit();
    duet::println!("write-batch -> {ok:?}");
    for i in 0..b.len() {
        duet::println!("entry {i} -> {:?}", b.status(i));
    }

    // Contiguous reads are merged into one host call; a bad buffer in the
    // middle must fail alone.
    let mut s0 = [9u8; 512];
    let mut s1 = [9u8; 512];
    let mut s2 = [9u8; 512];
    let bufs = [
        s0.as_mut_ptr() as u64,
        RODATA.as_ptr() as u64, // not writable: this entry must fail
        s1.as_mut_ptr() as u64,
        s2.as_mut_ptr() as u64,
    ];
    let mut reqs = [BlkReq::default(); 5];
    for (i, (r, buf)) in reqs.iter_mut().zip(bufs).enumerate() {
        *r = BlkReq {
            op: BLK_OP_READ,
            dev: d.id(),
            offset: i as u64 * 512,
            buf: Gpa(buf),
            len: 512,
            ret: 0,
        };
    }
    reqs[4] = BlkReq {
        op: 99, // no such op
        dev: d.id(),
        ..reqs[0]
    };
    let mut a = BlkBatchArgs {
        reqs: Gpa(reqs.as_mut_ptr() as u64),
        count: 5,
        flags: 0,
        ret: 0,
    };
    call(Hypercall::BlkBatch, &mut a);
    duet::println!("read-batch -> {:?}", result(a.ret));
    for (i, r) in reqs.iter().enumerate() {
        duet::println!("read {i} -> {:?}", result(r.ret));
    }
    // s0 = sector 0 (ones), s1 = sector 2 (threes), s2 = sector 3 (zeros).
    let good =
        s0.iter().all(|&x| x == 1) && s1.iter().all(|&x| x == 3) && s2.iter().all(|&x| x == 0);
    duet::println!("contents -> {}", if good { "ok" } else { "WRONG" });
    0
}

fn readonly() -> i32 {
    let d = disk0();
    let mut buf = [0u8; 512];
    duet::println!("read -> {:?}", d.read_at(0, &mut buf));
    duet::println!("first-byte -> {}", buf[0]);
    duet::println!("write -> {:?}", d.write_at(0, &buf));
    let mut b = Batch::new();
    b.write(d, 0, &buf).unwrap();
    let _ = b.submit();
    duet::println!("batch-write -> {:?}", b.status(0));
    duet::println!("flush -> {:?}", d.flush());
    0
}

/// Writes until the host runs out of space; the error must reach us and
/// the monitor must keep serving requests.
fn fill() -> i32 {
    let d = disk0();
    let block = vec![0xabu8; 4096];
    let mut off = 0;
    let err = loop {
        if off + 4096 > d.capacity() {
            break Ok(());
        }
        if let Err(e) = d.write_at(off, &block).and_then(|()| d.flush()) {
            break Err(e);
        }
        off += 4096;
    };
    duet::println!("fill stopped at {off} -> {err:?}");
    let mut back = vec![0u8; 4096];
    duet::println!("read-after -> {:?}", d.read_at(0, &mut back));
    0
}

/// Requests aligned to 512 but not to the disk's sector size.
fn align() -> i32 {
    let d = disk0();
    let mut buf = vec![0u8; 8192];
    let b = buf.as_mut_ptr() as u64;
    let r = Hypercall::BlkRead;
    duet::println!("len-512 -> {:?}", raw(r, d.id(), 0, b, 512));
    duet::println!("offset-512 -> {:?}", raw(r, d.id(), 512, b, 4096));
    duet::println!("aligned -> {:?}", raw(r, d.id(), 4096, b, 4096));
    0
}

/// The same through `duet::block` (either transport).
fn align_api() -> i32 {
    let d = disk0();
    let mut buf = vec![0u8; 8192];
    duet::println!("len-512 -> {:?}", d.read_at(0, &mut buf[..512]));
    duet::println!("offset-512 -> {:?}", d.read_at(512, &mut buf[..4096]));
    duet::println!("aligned -> {:?}", d.read_at(4096, &mut buf[..4096]));
    0
}

fn main() -> i32 {
    let args: Vec<&str> = duet::env::args().collect();
    match args.as_slice() {
        ["info"] => info(),
        ["roundtrip", seed, count] => {
            roundtrip(seed.parse().unwrap_or(1), count.parse().unwrap_or(100))
        }
        ["errors"] => errors(),
        ["batch"] => batch(),
        ["readonly"] => readonly(),
        ["fill"] => fill(),
        ["align"] => align(),
        ["align-api"] => align_api(),
        _ => 2,
    }
}
