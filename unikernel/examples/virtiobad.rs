//! Drives the first disk's virtqueue by hand, badly, to show the monitor
//! stops only what the guest broke: a queue size that is not a power of
//! two and an avail index beyond the ring stop the device (`NEEDS_RESET`),
//! a request with a buffer outside guest memory fails alone (status IOERR,
//! the device stays live), and after a reset `duet::block` works again.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::alloc::{alloc_zeroed, Layout};
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use duet::abi::boot::RegionKind;
use duet::abi::hypercall::Hypercall;
use duet::abi::virtio::*;

duet::main!(main);

fn slot(dev: u32) -> *mut VirtioSlot {
    let bi = duet::rt::boot_info();
    let page = bi.regions[..bi.region_count as usize]
        .iter()
        .find(|r| r.kind == RegionKind::Virtio as u32)
        .expect("a transport page");
    (page.start.0 + u64::from(dev) * VIRTIO_SLOT_SIZE) as *mut VirtioSlot
}

/// Writes `status`, tells the monitor, returns what it accepted.
fn set_status(s: *mut VirtioSlot, dev: u32, status: u32) -> u32 {
    // SAFETY: the slot lies in the transport page, read/write for the guest.
    unsafe { write_volatile(addr_of_mut!((*s).status), status) };
    duet::hypercall::call_value(Hypercall::VirtioStatus, dev);
    // SAFETY: as above.
    unsafe { read_volatile(addr_of!((*s).status)) }
}

/// Resets the device and sets queue 0 up at `ring` with `size` entries;
/// returns the accepted status.
fn setup(s: *mut VirtioSlot, dev: u32, ring: u64, size: u16) -> u32 {
    set_status(s, dev, 0);
    // SAFETY: as in `set_status`.
    unsafe {
        let f = read_volatile(addr_of!((*s).device_features));
        write_volatile(
            addr_of_mut!((*s).driver_features),
            f & (VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX),
        );
    }
    let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    set_status(s, dev, ok);
    // SAFETY: as in `set_status`.
    unsafe {
        write_volatile(addr_of_mut!((*s).queues[0].size), size);
        write_volatile(addr_of_mut!((*s).queues[0].desc), ring);
        write_volatile(addr_of_mut!((*s).queues[0].driver), ring + 0x1000);
        write_volatile(addr_of_mut!((*s).queues[0].device), ring + 0x2000);
        write_volatile(addr_of_mut!((*s).queues[0].ready), 1);
    }
    set_status(s, dev, ok | STATUS_DRIVER_OK)
}

fn put16(at: u64, v: u16) {
    // SAFETY: `at` lies in the rings this app allocated.
    unsafe { write_volatile(at as *mut u16, v) }
}

fn desc(ring: u64, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let d = ring + 16 * i;
    // SAFETY: the descriptor table this app allocated.
    unsafe {
        write_volatile(d as *mut u64, addr);
        write_volatile((d + 8) as *mut u32, len);
        write_volatile((d + 12) as *mut u16, flags);
        write_volatile((d + 14) as *mut u16, next);
    }
}

/// Waits up to a second for `f`.
fn until(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..1000 {
        if f() {
            return true;
        }
        duet::time::sleep(duet::time::Duration::from_millis(1));
    }
    false
}

fn main() -> i32 {
    let Some(disk) = duet::block::disks().next() else {
        duet::println!("no disk");
        return 2;
    };
    let dev = disk.id();
    let s = slot(dev);
    let layout = Layout::from_size_align(0x4000, 0x1000).expect("a layout");
    // SAFETY: a non-zero size.
    let ring = unsafe { alloc_zeroed(layout) } as u64;
    let buf = ring + 0x3000;

    let st = setup(s, dev, ring, 3);
    duet::println!("size-3 -> needs reset {}", st & STATUS_NEEDS_RESET != 0);

    let st = setup(s, dev, ring, 16);
    duet::println!("size-16 -> live {}", st & STATUS_NEEDS_RESET == 0);
    // A read whose data buffer lies outside guest memory: IOERR, alone.
    // SAFETY: the header lies in this app's buffer.
    unsafe { write_volatile(buf as *mut [u8; 16], [0; 16]) };
    put16(buf + 0x100, 0xff);
    desc(ring, 0, buf, 16, 1, 1);
    desc(ring, 1, 0xffff_ffff_0000, 512, 1 | 2, 2);
    desc(ring, 2, buf + 0x100, 1, 2, 0);
    put16(ring + 0x1000 + 4, 0);
    put16(ring + 0x1000 + 2, 1);
    duet::virtio::ring(dev, 0);
    // SAFETY: the used ring's index, written by the device.
    let used = || unsafe { read_volatile((ring + 0x2000 + 2) as *const u16) };
    let done = until(|| used() == 1);
    // SAFETY: the status byte, written by the device.
    let status = unsafe { read_volatile((buf + 0x100) as *const u8) };
    // SAFETY: as in `set_status`.
    let st = unsafe { read_volatile(addr_of!((*s).status)) };
    duet::println!(
        "outside-memory -> done {done} status {status} live {}",
        st & STATUS_NEEDS_RESET == 0
    );
    // An avail index far beyond the ring: the device stops.
    put16(ring + 0x1000 + 2, 100);
    duet::virtio::ring(dev, 0);
    let stopped = until(|| {
        // SAFETY: as in `set_status`.
        unsafe { read_volatile(addr_of!((*s).status)) & STATUS_NEEDS_RESET != 0 }
    });
    duet::println!("index-beyond-ring -> needs reset {stopped}");

    // duet::block resets the device and works again.
    let mut b = [0u8; 512];
    duet::println!("after-reset -> {:?}", disk.read_at(0, &mut b));
    0
}
