//! virtio for Duet: virtio-drivers' devices over a Duet [`Transport`]
//! (registers in the monitor's transport page, a doorbell port) and
//! [`DuetHal`] (DMA buffers from the heap: guest memory is identity-mapped,
//! so a buffer's address is its physical address).
//!
//! No interrupts: the guest sees completions in the used ring. While it
//! waits it spins a bounded time ([`SPIN_NS`]), then writes `used_event`
//! and sleeps in the poll hypercall with the device in its wait set
//! ([`wait_used`]); the monitor wakes it when a used buffer arrives.
//! [`crate::block`] and [`crate::net`] pick this transport for devices
//! flagged [`DEVICE_FLAG_VIRTIO`].

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use core::ptr::{addr_of, addr_of_mut, NonNull};
use duet_abi::boot::{RegionKind, DEVICE_FLAG_VIRTIO};
use duet_abi::hypercall::Hypercall;
use duet_abi::virtio::{doorbell_port, VirtioSlot, VIRTIO_CONFIG_SIZE, VIRTIO_SLOT_SIZE};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Error, Hal, PhysAddr, PAGE_SIZE};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// How long a disk waiter spins on the used ring before it sleeps in the
/// monitor (about the cost of sleeping and being woken), unless the
/// guest's environment says `VIRTIO_SPIN_US` (for measurements).
pub const SPIN_NS: u64 = 50_000;
/// The same for the NIC: request/response traffic has gaps longer than a
/// spin, and spinning takes a core from the peer (`docs/benchmarks.md`).
pub const NET_SPIN_NS: u64 = 10_000;

static SPIN: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(u64::MAX);

/// The spin budget in force, in ns: `default_ns` unless the environment
/// says `VIRTIO_SPIN_US`.
pub fn spin_ns(default_ns: u64) -> u64 {
    use core::sync::atomic::Ordering::Relaxed;
    let mut v = SPIN.load(Relaxed);
    if v == u64::MAX {
        v = crate::env::var("VIRTIO_SPIN_US")
            .and_then(|s| s.parse::<u64>().ok())
            .map_or(u64::MAX - 1, |us| us * 1000);
        SPIN.store(v, Relaxed);
    }
    if v == u64::MAX - 1 {
        default_ns
    } else {
        v
    }
}

/// DMA for virtio-drivers: zeroed pages from the heap.
pub struct DuetHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned memory that nothing else
// uses until `dma_dealloc`; physical and virtual addresses are the same
// (identity mapping), so sharing a buffer is taking its address.
unsafe impl Hal for DuetHal {
    fn dma_alloc(pages: usize, _dir: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let Ok(layout) = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE) else {
            return (0, NonNull::dangling());
        };
        // SAFETY: the layout has a non-zero size (pages >= 1 for queues).
        let p = unsafe { alloc_zeroed(layout) };
        match NonNull::new(p) {
            Some(p) => (p.as_ptr() as PhysAddr, p),
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        match Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE) {
            Ok(layout) => {
                // SAFETY: allocated by `dma_alloc` with this very layout.
                unsafe { dealloc(vaddr.as_ptr(), layout) };
                0
            }
            Err(_) => -1,
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _dir: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _dir: BufferDirection) {}
}

/// A virtio device's transport: its slot in the transport page.
pub struct DuetTransport {
    dev: u32,
    /// The slot's address (an integer, so the transport is `Send`).
    slot: usize,
    /// Per queue, the device's `avail_event` when the guest last rang: a
    /// ring the device has not answered yet (it rewrites `avail_event` once
    /// awake) need not be repeated. virtio-drivers asks to notify after
    /// every request the device is past `avail_event`, so a burst would
    /// otherwise ring once per request until the I/O thread runs.
    rung: [Option<u16>; duet_abi::virtio::VIRTIO_MAX_QUEUES],
}

/// The transport of device `dev`, if it is a virtio device.
pub fn transport(dev: u32) -> Option<DuetTransport> {
    let bi = crate::rt::boot_info();
    let info = bi.devices.get(dev as usize)?;
    if dev >= bi.device_count || info.flags & DEVICE_FLAG_VIRTIO == 0 {
        return None;
    }
    let n = (bi.region_count as usize).min(bi.regions.len());
    let page = bi.regions[..n]
        .iter()
        .find(|r| r.kind == RegionKind::Virtio as u32)?;
    Some(DuetTransport {
        dev,
        slot: (page.start.0 + u64::from(dev) * VIRTIO_SLOT_SIZE) as usize,
        rung: [None; duet_abi::virtio::VIRTIO_MAX_QUEUES],
    })
}

impl DuetTransport {
    fn slot(&self) -> *mut VirtioSlot {
        self.slot as *mut VirtioSlot
    }
}

/// Reads a slot field. The monitor may rewrite the slot (status) at any
/// time, hence volatile.
macro_rules! get {
    ($t:expr, $($f:tt)+) => {
        // SAFETY: the slot lies in the transport page, mapped read/write
        // for the guest for its whole life.
        unsafe { core::ptr::read_volatile(addr_of!((*$t.slot()).$($f)+)) }
    };
}
macro_rules! set {
    ($t:expr, $v:expr, $($f:tt)+) => {
        // SAFETY: as for `get!`.
        unsafe { core::ptr::write_volatile(addr_of_mut!((*$t.slot()).$($f)+), $v) }
    };
}

impl Transport for DuetTransport {
    fn device_type(&self) -> DeviceType {
        match get!(self, device_id) {
            duet_abi::virtio::VIRTIO_ID_NET => DeviceType::Network,
            _ => DeviceType::Block,
        }
    }

    fn read_device_features(&mut self) -> u64 {
        get!(self, device_features)
    }

    fn write_driver_features(&mut self, f: u64) {
        set!(self, f, driver_features);
    }

    fn max_queue_size(&mut self, q: u16) -> u32 {
        match q {
            0 => u32::from(get!(self, queues[0].max_size)),
            1 => u32::from(get!(self, queues[1].max_size)),
            _ => 0,
        }
    }

    fn notify(&mut self, q: u16) {
        let qi = usize::from(q).min(duet_abi::virtio::VIRTIO_MAX_QUEUES - 1);
        let event = avail_event(self, qi);
        if event.is_some() && self.rung[qi] == event {
            return;
        }
        self.rung[qi] = event;
        let port = doorbell_port(self.dev);
        crate::hypercall::count_exit();
        // SAFETY: `out` to a doorbell port is open in the TSS I/O bitmap and
        // only tells the monitor's I/O thread (or the run loop) to look.
        unsafe {
            core::arch::asm!("out dx, eax", in("dx") port, in("eax") u32::from(q), options(nostack, preserves_flags));
        }
    }

    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_truncate(get!(self, status))
    }

    fn set_status(&mut self, s: DeviceStatus) {
        set!(self, s.bits(), status);
        crate::hypercall::call_value(Hypercall::VirtioStatus, self.dev);
    }

    fn set_guest_page_size(&mut self, _size: u32) {}

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(&mut self, q: u16, size: u32, desc: PhysAddr, driver: PhysAddr, device: PhysAddr) {
        let q = usize::from(q).min(duet_abi::virtio::VIRTIO_MAX_QUEUES - 1);
        set!(self, size as u16, queues[q].size);
        set!(self, desc, queues[q].desc);
        set!(self, driver, queues[q].driver);
        set!(self, device, queues[q].device);
        set!(self, 1, queues[q].ready);
    }

    fn queue_unset(&mut self, q: u16) {
        let q = usize::from(q).min(duet_abi::virtio::VIRTIO_MAX_QUEUES - 1);
        set!(self, 0, queues[q].ready);
    }

    fn queue_used(&mut self, q: u16) -> bool {
        let q = usize::from(q).min(duet_abi::virtio::VIRTIO_MAX_QUEUES - 1);
        get!(self, queues[q].ready) != 0
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::empty()
    }

    fn read_config_generation(&self) -> u32 {
        get!(self, config_generation)
    }

    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, Error> {
        let size = core::mem::size_of::<T>();
        if offset + size > VIRTIO_CONFIG_SIZE {
            return Err(Error::ConfigSpaceTooSmall);
        }
        let cfg: [u8; VIRTIO_CONFIG_SIZE] = get!(self, config);
        T::read_from_bytes(&cfg[offset..offset + size]).map_err(|_| Error::ConfigSpaceTooSmall)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        _o: usize,
        _v: T,
    ) -> Result<(), Error> {
        Err(Error::Unsupported)
    }
}

/// Rings device `dev`'s doorbell for queue `q` whatever `avail_event`
/// says (for tests that drive a queue by hand).
pub fn ring(dev: u32, q: u16) {
    if let Some(mut t) = transport(dev) {
        t.rung = [None; duet_abi::virtio::VIRTIO_MAX_QUEUES];
        t.notify(q);
    }
}

/// Queue `q`'s `avail_event` (the used ring's last field), if it is set up.
fn avail_event(t: &DuetTransport, q: usize) -> Option<u16> {
    let used = get!(t, queues[q].device);
    let size = u64::from(get!(t, queues[q].size));
    if used == 0 || get!(t, queues[q].ready) == 0 {
        return None;
    }
    // SAFETY: the used ring the driver set up (heap memory it owns); the
    // device writes `avail_event`, hence volatile.
    Some(unsafe { core::ptr::read_volatile((used + 4 + 8 * size) as *const u16) })
}

/// Whether the monitor stopped device `dev` (a broken queue or a failed
/// host side): it needs a reset, and its requests fail meanwhile.
pub fn needs_reset(dev: u32) -> bool {
    transport(dev).is_some_and(|t| get!(t, status) & duet_abi::virtio::STATUS_NEEDS_RESET != 0)
}

/// Asks the monitor to wake the guest once queue `q` of device `dev` has
/// used entries past `seen` (the driver's `used_event`).
pub fn arm(dev: u32, q: usize, seen: u16) {
    let Some(t) = transport(dev) else { return };
    let q = q.min(duet_abi::virtio::VIRTIO_MAX_QUEUES - 1);
    let driver = get!(t, queues[q].driver);
    let size = u64::from(get!(t, queues[q].size));
    if driver == 0 {
        return;
    }
    // SAFETY: the avail ring the driver set up (heap memory it owns);
    // `used_event` is its last field.
    unsafe { core::ptr::write_volatile((driver + 4 + 2 * size) as *mut u16, seen) };
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

/// How long a waiter that just rang a sleeping device spins: the device
/// thread may not be scheduled soon on a busy host, and the poll
/// hypercall serves the queue on the vCPU thread itself.
pub const SPIN_AFTER_RING_NS: u64 = 10_000;

/// Waits until `done()` holds: spins up to [`SPIN_NS`] ([`SPIN_AFTER_RING_NS`]
/// when `rang`), then sleeps in the monitor with the device in the wait set
/// after `arm_all` has written each queue's `used_event`, and looks again
/// after every wake-up.
pub fn wait_used(dev: u32, rang: bool, mut arm_all: impl FnMut(), mut done: impl FnMut() -> bool) {
    let spin = if rang {
        SPIN_AFTER_RING_NS.min(spin_ns(SPIN_NS))
    } else {
        spin_ns(SPIN_NS)
    };
    let until = crate::time::monotonic_ns().saturating_add(spin);
    while crate::time::monotonic_ns() < until {
        if done() {
            return;
        }
        core::hint::spin_loop();
    }
    loop {
        arm_all();
        if done() {
            return;
        }
        let _ = crate::time::poll_raw(duet_abi::poll::POLL_FOREVER, 1 << dev);
        if done() {
            return;
        }
    }
}
