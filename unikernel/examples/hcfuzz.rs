//! Randomized hostile hypercalls from inside a guest: a fixed-seed
//! xorshift generator picks calls, devices, pointers and lengths (often
//! outside guest memory, into the monitor's pages or the image's text,
//! overflowing, misaligned), scribbles over its virtio slots and rings, and
//! rings doorbells. Every call must come back with a result the ABI knows;
//! the run ends with one chosen way out (exit, a hostile abort, an unknown
//! call, the doorbell of no device, an unusable argument struct: by
//! `seed % 5`), which the monitor must report cleanly. Arguments: `seed=N` (default 1), `calls=N` (default 300000).
//! Boot it with disks and NICs on both transports (tests/tests/hcfuzz.rs).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::alloc::{alloc_zeroed, Layout};
use core::arch::asm;
use core::ptr::{read_volatile, write_volatile};
use duet::abi::block::{BLK_OP_FLUSH, BLK_OP_READ, BLK_OP_WRITE};
use duet::abi::boot::{DeviceKind, RegionKind, DEVICE_FLAG_VIRTIO};
use duet::abi::hypercall::{Error, Hypercall, PORT_BASE, PORT_COUNT};
use duet::abi::virtio::{doorbell_port, VIRTIO_SLOT_SIZE};
use duet::abi::PAGE_SIZE;

duet::main!(main);

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// One `out` to `port` with `eax` = `value`.
fn out(port: u16, value: u32) {
    // SAFETY: an `out` to a port the TSS allows exits to the monitor (any
    // other port faults, which this app never uses); the asm may read and
    // write memory (no `nomem`): the monitor writes argument structs.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags))
    };
}

/// Memory this app owns: argument structs (never protected), virtio
/// rings (never protected), and an arena that I/O, releases and
/// protection changes aim at.
struct World {
    rng: Rng,
    mem: u64,
    args: u64,
    rings: u64,
    arena: u64,
    arena_len: u64,
    text: u64,
    virtio_page: u64,
    /// Device numbers by kind: (disks, NICs, virtio devices).
    disks: [u32; 16],
    nics: [u32; 16],
    virtio: [u32; 16],
    counts: (usize, usize, usize),
    /// Results the ABI does not know.
    unknown: u64,
    /// Calls that succeeded, and that the monitor refused with an error.
    ok: u64,
    refused: u64,
}

const ARGS_WORDS: u64 = 2048;
/// For [`World::call`]: the struct has no `ret`.
const NO_RET: usize = usize::MAX;
/// What the console gets when it gets valid bytes.
static DOTS: [u8; 8] = *b"........";

impl World {
    fn word(&self, i: u64, v: u64) {
        // SAFETY: `args` is this app's buffer of ARGS_WORDS words.
        unsafe { write_volatile((self.args as *mut u64).add((i % ARGS_WORDS) as usize), v) }
    }

    fn read(&self, i: u64) -> u64 {
        // SAFETY: as in `word`.
        unsafe { read_volatile((self.args as *const u64).add((i % ARGS_WORDS) as usize)) }
    }

    /// A pointer: mostly into the arena, often somewhere hostile.
    fn addr(&mut self) -> u64 {
        let r = &mut self.rng;
        match r.below(16) {
            0..=5 => self.arena + r.below(self.arena_len),
            6 => self.arena + self.arena_len - r.below(64),
            7 => r.below(0x10_0000),
            8 => self.text + r.below(0x1000),
            9 => self.mem + r.below(1 << 20),
            10 => self.mem - r.below(8),
            11 => u64::MAX - r.below(4096),
            12 => r.next(),
            13 => self.args + 8 * r.below(ARGS_WORDS),
            14 => self.virtio_page + r.below(PAGE_SIZE),
            _ => (self.arena + r.below(self.arena_len)) & !(PAGE_SIZE - 1),
        }
    }

    /// A length: mostly modest, sometimes absurd.
    fn len(&mut self) -> u64 {
        let r = &mut self.rng;
        match r.below(10) {
            0 => 0,
            1..=3 => r.below(64),
            4..=5 => 512 * r.below(64),
            6 => PAGE_SIZE * r.below(300),
            7 => u64::MAX - r.below(16),
            8 => 1 << r.below(64),
            _ => r.next(),
        }
    }

    /// A device number: mostly one that exists.
    fn dev(&mut self, of: &[u32]) -> u32 {
        if !of.is_empty() && !self.rng.one_in(5) {
            of[self.rng.below(of.len() as u64) as usize]
        } else {
            self.rng.below(20) as u32
        }
    }

    /// Calls `nr` with the struct of `words` at a random spot of the args
    /// area; checks `ret` (word `ret_at`) is a result the ABI knows.
    fn call(&mut self, nr: Hypercall, words: &[u64], ret_at: usize) {
        let base = self.rng.below(ARGS_WORDS - 64);
        for (i, w) in words.iter().enumerate() {
            self.word(base + i as u64, *w);
        }
        let at = self.args + 8 * base;
        out(nr.port(), at as u32);
        if ret_at == NO_RET {
            return;
        }
        let ret = self.read(base + ret_at as u64) as i64;
        if ret >= 0 {
            self.ok += 1;
        } else if Error::ALL.iter().any(|e| e.to_ret() == ret) {
            self.refused += 1;
        } else {
            self.unknown += 1;
        }
    }

    /// Another hostile call.
    fn step(&mut self) {
        let (nd, nn, nv) = self.counts;
        let (disks, nics, virtio) = (self.disks, self.nics, self.virtio);
        match self.rng.below(22) {
            0 => {
                // Console: a short valid buffer now and then, else a refusal.
                let (buf, len) = if self.rng.one_in(50) {
                    (DOTS.as_ptr() as u64, self.rng.below(8))
                } else {
                    (self.addr(), CONSOLE_MAX + 1 + self.rng.below(u64::MAX / 2))
                };
                self.call(Hypercall::ConsoleWrite, &[buf, len, 0], 2);
            }
            1 => {
                let w = [self.rng.next(), self.rng.next()];
                self.call(Hypercall::BootTrace, &w, NO_RET);
            }
            2 => {
                // Never a future deadline: a poll must not sleep.
                let w = [self.rng.below(2), self.rng.next(), 0, 0];
                self.call(Hypercall::Poll, &w, 3);
            }
            3 => {
                let len = if self.rng.one_in(4) {
                    self.len()
                } else {
                    PAGE_SIZE * self.rng.below(4)
                };
                self.call(Hypercall::MemGrow, &[len, 0, 0, 0], 3);
            }
            4 | 5 => {
                let (addr, len) = self.range();
                let nr = if self.rng.one_in(2) {
                    Hypercall::MemRelease
                } else {
                    Hypercall::MemProtect
                };
                let prot = self.rng.below(9) | (u64::from(self.rng.one_in(20)) << 32);
                self.call(nr, &[addr, len, prot, 0], 3);
            }
            6..=8 => {
                let nr = if self.rng.one_in(2) {
                    Hypercall::BlkRead
                } else {
                    Hypercall::BlkWrite
                };
                let dev =
                    u64::from(self.dev(&disks[..nd])) | (u64::from(self.rng.one_in(20)) << 32);
                let w = [dev, self.len(), self.addr(), self.len(), 0];
                self.call(nr, &w, 4);
            }
            9 => {
                let dev = u64::from(self.dev(&disks[..nd]));
                self.call(Hypercall::BlkFlush, &[dev, 0], 1);
            }
            10 | 11 => {
                // A batch: requests in the args area, or anywhere.
                let count = self.rng.below(80);
                let reqs = self.rng.below(ARGS_WORDS - 5 * 80);
                for i in 0..count {
                    let op =
                        [BLK_OP_READ, BLK_OP_WRITE, BLK_OP_FLUSH, 9][self.rng.below(4) as usize];
                    let dev = self.dev(&disks[..nd]);
                    let w = [
                        u64::from(op) | u64::from(dev) << 32,
                        self.len(),
                        self.addr(),
                        self.len(),
                        0,
                    ];
                    for (j, v) in w.iter().enumerate() {
                        self.word(reqs + 5 * i + j as u64, *v);
                    }
                }
                let at = if self.rng.one_in(8) {
                    self.addr()
                } else {
                    self.args + 8 * reqs
                };
                self.call(Hypercall::BlkBatch, &[at, count, 0], 2);
            }
            12..=14 => {
                let nr = [Hypercall::NetSend, Hypercall::NetRecv][self.rng.below(2) as usize];
                let dev = u64::from(self.dev(&nics[..nn])) | (u64::from(self.rng.one_in(20)) << 32);
                let len = if self.rng.one_in(2) {
                    14 + self.rng.below(1600)
                } else {
                    self.len()
                };
                let buf = self.addr();
                self.call(nr, &[dev, buf, len, 0], 3);
            }
            15 | 16 => {
                let nr =
                    [Hypercall::NetSendBatch, Hypercall::NetRecvBatch][self.rng.below(2) as usize];
                let count = self.rng.below(40);
                let frames = self.rng.below(ARGS_WORDS - 2 * 40);
                for i in 0..count {
                    let len = if self.rng.one_in(2) {
                        60 + self.rng.below(1500)
                    } else {
                        self.len()
                    };
                    let buf = self.addr();
                    self.word(frames + 2 * i, buf);
                    self.word(frames + 2 * i + 1, len);
                }
                let dev = u64::from(self.dev(&nics[..nn]));
                let at = if self.rng.one_in(8) {
                    self.addr()
                } else {
                    self.args + 8 * frames
                };
                self.call(nr, &[dev | count << 32, at, 0], 2);
            }
            17 => self.call(Hypercall::SnapshotPoint, &[0], 0),
            18 | 19 if nv > 0 => {
                // Scribble over a virtio slot, then tell the monitor.
                let dev = virtio[self.rng.below(nv as u64) as usize];
                let slot = self.virtio_page + u64::from(dev) * VIRTIO_SLOT_SIZE;
                self.scribble(slot);
                out(Hypercall::VirtioStatus.port(), dev);
            }
            20 | 21 if nv > 0 => {
                // Hostile descriptors and avail entries in the rings, and
                // the doorbell.
                let dev = virtio[self.rng.below(nv as u64) as usize];
                for _ in 0..self.rng.below(16) {
                    let at = self.rings + 8 * self.rng.below(4 * PAGE_SIZE / 8);
                    let v = if self.rng.one_in(2) {
                        self.addr()
                    } else {
                        self.rng.next()
                    };
                    // SAFETY: inside this app's ring pages.
                    unsafe { write_volatile(at as *mut u64, v) };
                }
                out(doorbell_port(dev), 0);
            }
            _ => out(Hypercall::Nop.port(), 0),
        }
    }

    /// A release/protect range: the arena's pages mostly, or something
    /// the monitor must refuse (never the app's own heap outside it).
    fn range(&mut self) -> (u64, u64) {
        let pages = self.arena_len / PAGE_SIZE;
        match self.rng.below(8) {
            0..=4 => {
                let first = self.rng.below(pages);
                let n = 1 + self.rng.below(pages - first);
                (self.arena + first * PAGE_SIZE, n * PAGE_SIZE)
            }
            5 => (self.arena + 1 + self.rng.below(100), PAGE_SIZE),
            6 => (
                self.rng.below(0x10_0000) & !(PAGE_SIZE - 1),
                PAGE_SIZE * (1 + self.rng.below(8)),
            ),
            _ => (
                self.mem - PAGE_SIZE * self.rng.below(4),
                self.len() & !(PAGE_SIZE - 1),
            ),
        }
    }

    /// Random status, features and queue registers in a slot (addresses
    /// mostly in the rings, so a queue may come up).
    fn scribble(&mut self, slot: u64) {
        let w = |off: u64, v: u64| {
            // SAFETY: inside the transport page, read/write for the guest.
            unsafe { write_volatile((slot + off) as *mut u64, v) }
        };
        for _ in 0..1 + self.rng.below(6) {
            let off = 8 * self.rng.below(VIRTIO_SLOT_SIZE / 8);
            let v = match self.rng.below(4) {
                0 => self.rings + PAGE_SIZE * self.rng.below(4),
                1 => self.addr(),
                2 => self.rng.below(16) | self.rng.below(300) << 16 | 1 << 32,
                _ => self.rng.next(),
            };
            w(off, v);
        }
    }

    /// The way out this seed takes (after printing the summary).
    fn end(&mut self, seed: u64) -> ! {
        let hostile = self.mem + 0x1000;
        match seed % 5 {
            0 => duet::rt::exit(0),
            1 => {
                // An abort whose message lies outside guest memory.
                self.word(0, hostile);
                self.word(1, u64::MAX);
                out(Hypercall::Abort.port(), self.args as u32);
            }
            // A number no call has.
            2 => out(PORT_BASE + 4, 0),
            // The doorbell of a device that is not there.
            3 => out(PORT_BASE + PORT_COUNT - 1, 0),
            // An argument struct outside guest memory.
            _ => out(Hypercall::ConsoleWrite.port(), hostile as u32),
        }
        duet::rt::exit(99)
    }
}

/// The console's limit (the monitor refuses more).
const CONSOLE_MAX: u64 = duet::abi::hypercall::CONSOLE_WRITE_MAX;

fn arg(name: &str, default: u64) -> u64 {
    duet::env::args()
        .filter_map(|a| a.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        .next()
        .unwrap_or(default)
}

fn main() -> i32 {
    let seed = arg("seed", 1);
    let calls = arg("calls", 300_000);
    let bi = duet::rt::boot_info();
    let page = |n| {
        let l = Layout::from_size_align(n * PAGE_SIZE as usize, PAGE_SIZE as usize).unwrap();
        // SAFETY: a non-zero size; never freed.
        unsafe { alloc_zeroed(l) as u64 }
    };
    let (arena, arena_len) = duet::mem::grow(1 << 20).expect("an arena");
    let virtio_page = bi.regions[..bi.region_count as usize]
        .iter()
        .find(|r| r.kind == RegionKind::Virtio as u32)
        .map_or(0, |r| r.start.0);
    let mut w = World {
        rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
        mem: bi.mem_size,
        args: page(4),
        rings: page(4),
        arena,
        arena_len,
        text: main as *const () as u64,
        virtio_page,
        disks: [0; 16],
        nics: [0; 16],
        virtio: [0; 16],
        counts: (0, 0, 0),
        unknown: 0,
        ok: 0,
        refused: 0,
    };
    for (i, d) in bi.devices[..bi.device_count as usize].iter().enumerate() {
        let (nd, nn, nv) = &mut w.counts;
        if d.kind == DeviceKind::Block as u32 {
            w.disks[*nd] = i as u32;
            *nd += 1;
        } else if d.kind == DeviceKind::Net as u32 {
            w.nics[*nn] = i as u32;
            *nn += 1;
        }
        if d.flags & DEVICE_FLAG_VIRTIO != 0 {
            w.virtio[*nv] = i as u32;
            *nv += 1;
        }
    }
    for i in 0..calls {
        w.step();
        if i % 4096 == 0 {
            // The arena writable again now and then, so I/O reaches it.
            let _ = duet::mem::protect(
                arena,
                arena_len,
                duet::mem::PROT_READ | duet::mem::PROT_WRITE,
            );
        }
    }
    duet::println!(
        "hcfuzz: seed {seed}: {calls} calls, {} unknown results, devices {:?}",
        w.unknown,
        w.counts
    );
    duet::println!("hcfuzz: {} succeeded, {} refused", w.ok, w.refused);
    w.end(seed)
}
