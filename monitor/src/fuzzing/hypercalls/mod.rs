//! Hypercall dispatch against real guest memory, with no VM and no vCPU.
//!
//! Each input builds a fresh 4 MiB guest as the boot path lays one out
//! (stack, an image's text and data, a heap with its page tables, the
//! clock page) with two disks on unlinked temporary files: device 0 on the
//! hypercall transport, device 1 a virtio disk whose queues are served on
//! this thread (the I/O thread's own step, [`crate::devices::virtio::worker::serve`],
//! so runs are repeatable). Then it plays a sequence of guest steps: write
//! argument words where the guest could write them, make a hypercall with
//! a fuzzer-chosen number and argument pointer. The sequence ends where the
//! guest would end (exit, abort, a report).
//!
//! The handlers are the monitor's own; only the `match` from number to
//! handler is repeated here, because the real one lives on a `Vmm`, which
//! needs KVM. A new hypercall makes this `match` fail to compile.
//!
//! Checked besides "no panic": the monitor's pages and the image's text
//! hold what they held (a hypercall never writes where the guest may not).

mod disks;
pub mod driver;
mod input;

use super::gen::{self, Layout};
use crate::clock::GuestClock;
use crate::devices::block;
use crate::devices::virtio::blk::BlkEngine;
use crate::devices::virtio::{worker, VirtioDevice};
use crate::devices::Devices;
use crate::heap::{Heap, INITIAL_HEAP};
use crate::hypercall::poll::Waker;
use crate::hypercall::{console, lifecycle, mem as memcalls, poll, snapshot};
use crate::layout;
use crate::memory::GuestMem;
use crate::outcome::{Flow, Outcome};
use crate::paging::{Access, PageTables};
use disks::devices;
use duet_abi::boot::IMAGE_BASE;
use duet_abi::hypercall::Hypercall;
use duet_abi::virtio::DOORBELL_BASE;
use duet_abi::{Gpa, PAGE_SIZE};
pub use input::{GuestWrite, Input, Nr, Step, Value};
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::time::Instant;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest memory of every run (the smallest `--mem`).
const MEM: u64 = layout::MIN_MEM;
/// The pretend image: 32 KiB of text, then 32 KiB of data.
const TEXT: (u64, u64) = (IMAGE_BASE, IMAGE_BASE + 0x8000);
const DATA: (u64, u64) = (TEXT.1, TEXT.1 + 0x8000);
/// The virtio disk's device number.
pub const VIRTIO_DEV: u32 = 1;
/// Bytes per disk.
const DISK_BYTES: u64 = 64 << 10;
/// What the harness fills read-only memory with, to see it stays so.
const FILL: u8 = 0xa5;

/// The guest layout of every run.
pub const LAYOUT: Layout = Layout {
    mem: MEM,
    heap: (DATA.1, MEM),
    stack: (layout::STACK_BOTTOM, layout::STACK_TOP),
    text: TEXT,
    data: DATA,
};

/// One guest, as the harness built it.
pub struct Guest {
    /// The page tables' bytes, their allocator and the heap as built.
    fresh: (Vec<u8>, PageTables, Heap),
    mem: GuestMem,
    heap: Heap,
    pt: PageTables,
    devices: Devices,
    /// `None` only while the disks are reopened.
    virtio: Option<VirtioDevice<BlkEngine>>,
    clock: GuestClock,
    /// Always readable: a poll never sleeps.
    wake: EventFd,
    shutdown_unreported: bool,
    template: bool,
    /// The FILL is in place.
    filled: bool,
    /// The check's buffer, kept (a fresh one costs page faults each run).
    scratch: std::cell::RefCell<Vec<u8>>,
}

impl Guest {
    /// Builds the guest the first time: memory, page tables, heap.
    fn build() -> Guest {
        let mut mem = GuestMem::new(MEM).expect("mapping fuzzed guest memory");
        let heap_size = INITIAL_HEAP.min(MEM - DATA.1);
        let heap = Heap::new(
            DATA.1,
            heap_size,
            MEM,
            vec![(layout::STACK_BOTTOM, layout::STACK_TOP), DATA],
        );
        let mut pt = PageTables::new(&mem).expect("page tables");
        let maps = [
            (layout::VIRTIO_PAGE, PAGE_SIZE, Access::UserWrite),
            (layout::CLOCK_PAGE, PAGE_SIZE, Access::UserRead),
            (
                layout::STACK_BOTTOM,
                layout::STACK_TOP - layout::STACK_BOTTOM,
                Access::UserWrite,
            ),
            (TEXT.0, TEXT.1 - TEXT.0, Access::UserExec),
            (DATA.0, DATA.1 - DATA.0, Access::UserWrite),
        ];
        for (start, len, access) in maps {
            pt.map_4k(&mem, start, start + len, access)
                .expect("mapping");
        }
        pt.map_range(&mem, heap.start(), heap.end(), Access::UserWrite)
            .expect("mapping the heap");
        let mut tables = vec![0u8; (pt.next_table() - layout::PAGE_TABLES) as usize];
        mem.read_bytes(Gpa(layout::PAGE_TABLES), &mut tables)
            .expect("reading the tables");
        mem.set_writable(heap.writable_ranges());
        let wake = EventFd::new(EFD_NONBLOCK).expect("an eventfd");
        wake.write(1).expect("arming the eventfd");
        let (devices, virtio) = devices(&mem);
        let virtio = Some(virtio);
        let clock = GuestClock::start(&mem, 2_000_000, 0, Instant::now()).expect("clock page");
        Guest {
            fresh: (tables, pt.clone(), heap.clone()),
            mem,
            heap,
            pt,
            devices,
            virtio,
            clock,
            wake,
            shutdown_unreported: false,
            template: false,
            filled: false,
            scratch: Default::default(),
        }
    }

    /// Makes the guest as new: memory zero but for the tables, the heap as
    /// built, the disks reopened (cheaper than building it all again: the
    /// heap's page tables cost most).
    fn reset(&mut self, template: bool) {
        // The monitor's pages below the page tables and the image's text
        // hold FILL (they are read-only to the guest, and checked after
        // every run: see `check_untouched`); everything else starts zero.
        if !self.filled {
            let f = filled();
            self.mem.write_bytes(Gpa(0), f).expect("filling");
            self.mem
                .write_bytes(Gpa(TEXT.0), &f[..(TEXT.1 - TEXT.0) as usize])
                .expect("filling");
            self.filled = true;
        }
        for (start, end) in [
            (layout::VIRTIO_PAGE, layout::VIRTIO_PAGE + PAGE_SIZE),
            (layout::PAGE_TABLES, TEXT.0),
            (TEXT.1, MEM),
        ] {
            self.mem
                .discard(Gpa(start), end - start)
                .expect("dropping guest memory");
        }
        let (tables, pt, heap) = &self.fresh;
        self.mem
            .write_bytes(Gpa(layout::PAGE_TABLES), tables)
            .expect("writing the tables");
        self.pt = pt.clone();
        self.heap = heap.clone();
        self.mem.set_writable(self.heap.writable_ranges());
        self.clock = GuestClock::start(&self.mem, 2_000_000, 0, Instant::now()).expect("clock");
        // The old devices go before the new ones lock the files.
        self.devices = Devices::default();
        self.virtio = None;
        let (devices, virtio) = devices(&self.mem);
        (self.devices, self.virtio) = (devices, Some(virtio));
        self.shutdown_unreported = false;
        self.template = template;
    }

    /// Guest memory.
    pub fn mem(&self) -> &GuestMem {
        &self.mem
    }

    /// Writes `bytes` at `at` if the guest could: in its writable memory or
    /// its virtio slot page (otherwise it would fault, not call).
    pub fn guest_write(&self, at: u64, bytes: &[u8]) {
        let len = bytes.len() as u64;
        let virtio = (layout::VIRTIO_PAGE, layout::VIRTIO_PAGE + PAGE_SIZE);
        let in_virtio = at >= virtio.0 && at.checked_add(len).is_some_and(|e| e <= virtio.1);
        if in_virtio || self.mem.check_writable(Gpa(at), len).is_ok() {
            let _ = self.mem.write_bytes(Gpa(at), bytes);
        }
    }

    /// Hypercall `nr` with `eax` = `value`: `vmm::dispatch` for the parts
    /// of a guest built here.
    pub fn hypercall(&mut self, nr: u16, value: u32) -> Flow {
        if nr >= DOORBELL_BASE {
            return self.doorbell(u32::from(nr - DOORBELL_BASE));
        }
        let Some(call) = Hypercall::from_number(nr) else {
            return Flow::Stop(Outcome::Failed(format!("unknown hypercall {nr}")));
        };
        let mem = &mut self.mem;
        match call {
            Hypercall::Nop => Flow::Continue,
            Hypercall::ConsoleWrite => console::write(mem, value),
            Hypercall::Exit => Flow::Stop(Outcome::Exited((value & 0xff) as u8)),
            Hypercall::Abort => lifecycle::abort(mem, value),
            Hypercall::BootTrace => lifecycle::boot_trace(mem, None, value),
            Hypercall::Poll => {
                let waker = Waker {
                    wake_fd: self.wake.as_raw_fd(),
                    shutdown_unreported: &mut self.shutdown_unreported,
                };
                poll::poll(mem, &self.devices, &self.clock, waker, value)
            }
            Hypercall::MemGrow => memcalls::grow(&mut self.heap, &mut self.pt, mem, value),
            Hypercall::MemRelease => memcalls::release(&self.heap, mem, value),
            Hypercall::MemProtect => memcalls::protect(&mut self.heap, &mut self.pt, mem, value),
            Hypercall::BlkRead => block::hypercalls::io(&self.devices, mem, value, false),
            Hypercall::BlkWrite => block::hypercalls::io(&self.devices, mem, value, true),
            Hypercall::BlkFlush => block::hypercalls::flush(&self.devices, mem, value),
            Hypercall::BlkBatch => block::hypercalls::batch(&self.devices, mem, value),
            Hypercall::NetSend | Hypercall::NetRecv => {
                crate::devices::net::hypercalls::frame(&mut self.devices, mem, value, call)
            }
            Hypercall::NetSendBatch | Hypercall::NetRecvBatch => {
                crate::devices::net::hypercalls::batch(&mut self.devices, mem, value, call)
            }
            Hypercall::SnapshotPoint => snapshot::snapshot_point(mem, self.template, value),
            Hypercall::VirtioStatus if value == VIRTIO_DEV => {
                let v = self.virtio.as_ref().expect("the virtio disk");
                match v.status_call(mem) {
                    Ok(()) => Flow::Continue,
                    Err(e) => Flow::Stop(Outcome::Failed(format!("virtio slot unusable: {e}"))),
                }
            }
            Hypercall::VirtioStatus => Flow::Stop(Outcome::Failed(format!(
                "VirtioStatus for device {value}, not a virtio device"
            ))),
        }
    }

    /// A doorbell exit: the virtio disk's queues are served here, as the
    /// run loop has the vCPU thread do.
    fn doorbell(&mut self, dev: u32) -> Flow {
        if dev != VIRTIO_DEV {
            return Flow::Stop(Outcome::Failed(format!("doorbell of device {dev}")));
        }
        let sh = self.virtio.as_ref().expect("the virtio disk").shared();
        worker::serve(sh, sh.lock());
        Flow::Continue
    }

    /// Panics if the monitor wrote where the guest may not have it write:
    /// its own pages below the page tables (bar the clock page, which it
    /// keeps itself, and the virtio page, which the guest writes) and the
    /// image's text.
    pub fn check_untouched(&self) {
        let ranges = [
            (0, layout::CLOCK_PAGE),
            (layout::IDENTITY_PAGE, layout::VIRTIO_PAGE),
            (layout::VIRTIO_PAGE + PAGE_SIZE, layout::PAGE_TABLES),
            TEXT,
        ];
        let filled = filled();
        let mut buf = std::mem::take(&mut *self.scratch.borrow_mut());
        buf.resize(filled.len(), 0);
        for (start, end) in ranges {
            let b = &mut buf[..(end - start) as usize];
            self.mem.read_bytes(Gpa(start), b).expect("reading");
            // One comparison (not a loop the coverage pass instruments).
            if b != &filled[..b.len()] {
                let i = b.iter().position(|x| *x != FILL).unwrap_or(0);
                panic!(
                    "the monitor wrote guest-read-only memory at {:#x}",
                    start + i as u64
                );
            }
        }
        *self.scratch.borrow_mut() = buf;
    }
}

/// [`FILL`] bytes, as many as the largest range checked.
fn filled() -> &'static [u8] {
    static F: OnceLock<Vec<u8>> = OnceLock::new();
    F.get_or_init(|| vec![FILL; layout::PAGE_TABLES as usize])
}

thread_local! {
    static GUEST: std::cell::RefCell<Option<Guest>> = const { std::cell::RefCell::new(None) };
}

/// Plays `input` on a fresh guest.
pub fn run(input: &Input) {
    run_then(input, |_| ())
}

/// Plays `input` on a fresh guest, then hands the guest to `f`.
pub fn run_then<R>(input: &Input, f: impl FnOnce(&Guest) -> R) -> R {
    GUEST.with(|g| {
        let mut g = g.borrow_mut();
        let g = g.get_or_insert_with(Guest::build);
        g.reset(input.template);
        play(g, input);
        f(g)
    })
}

fn play(g: &mut Guest, input: &Input) {
    for step in &input.steps {
        let flow = match step {
            Step::Call { writes, nr, value } => call(g, writes, *nr, *value),
            Step::Setup(v) => driver::setup(g, v),
            Step::Kick(k) => driver::kick(g, k),
        };
        if matches!(flow, Flow::Stop(_)) {
            break;
        }
    }
    g.check_untouched();
}

/// Writes, then hypercall `nr` with its pointer.
fn call(g: &mut Guest, writes: &[GuestWrite], nr: Nr, value: Value) -> Flow {
    let mut at = Vec::with_capacity(writes.len());
    for w in writes {
        let a = w.at.at(&LAYOUT);
        g.guest_write(a, &gen::bytes(&w.words, &LAYOUT));
        at.push(a);
    }
    let value = match value {
        Value::Write(i) if !at.is_empty() => at[usize::from(i) % at.len()] as u32,
        Value::Write(i) => u32::from(i),
        Value::At(a) => a.at(&LAYOUT) as u32,
        Value::Raw(v) => v,
    };
    let nr = match nr {
        Nr::Call(i) => Hypercall::ALL[usize::from(i) % Hypercall::ALL.len()] as u16,
        Nr::Doorbell(d) => DOORBELL_BASE + u16::from(d % 16),
        Nr::Raw(n) => n % duet_abi::hypercall::PORT_COUNT,
    };
    g.hypercall(nr, value)
}
