//! The global allocator: a buddy allocator over the heap, which starts
//! small and grows through the MemGrow hypercall when an allocation does not
//! fit. When the `--mem` limit is reached the guest aborts with a clear
//! out-of-memory report.
//!
//! The boot-time heap is handed to the allocator piece by piece, on demand:
//! a buddy allocator writes a free-list node into every block it is given,
//! and on these hosts each first touch of a page costs the guest a shadow
//! page fault (~20 µs), so handing it all over at boot cost a tenth of a
//! millisecond before `main` even when nothing is allocated.

use buddy_system_allocator::Heap;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::AtomicU64;
use core::sync::atomic::Ordering::Relaxed;
use duet_abi::boot::BootInfo;
use duet_abi::LARGE_PAGE_SIZE;
use spin::Mutex;

/// Smallest step the heap grows by: fewer exits, and 2 MiB pages.
const GROW_STEP: u64 = LARGE_PAGE_SIZE * 2;

struct GrowingHeap {
    heap: Mutex<Heap<33>>,
}

#[global_allocator]
static HEAP: GrowingHeap = GrowingHeap {
    heap: Mutex::new(Heap::empty()),
};

/// End of the mapped heap (only touched under the heap lock).
static HEAP_END: AtomicU64 = AtomicU64::new(0);

/// The part of the boot-time heap not yet handed to the allocator:
/// `[BOOT_NEXT, BOOT_END)` (only touched under the heap lock).
static BOOT_NEXT: AtomicU64 = AtomicU64::new(0);
static BOOT_END: AtomicU64 = AtomicU64::new(0);

/// Hands the allocator the next blocks of the boot-time heap, the ones it
/// would have cut the whole range into (the largest power of two aligned
/// at the cursor that fits), until one of at least `block` bytes is in or
/// nothing is left; `false` when nothing was left. Each block costs the
/// allocator one free-list node: one page touched.
fn take_boot(h: &mut Heap<33>, block: u64) -> bool {
    let (mut next, end) = (BOOT_NEXT.load(Relaxed), BOOT_END.load(Relaxed));
    if next >= end {
        return false;
    }
    while next < end {
        let aligned = 1u64 << next.trailing_zeros().min(63);
        let fits = 1u64 << (63 - (end - next).leading_zeros());
        let size = aligned.min(fits);
        // SAFETY: the monitor mapped the boot-time heap read/write for the
        // guest, and each block is handed over once.
        unsafe { h.add_to_heap(next as usize, (next + size) as usize) };
        next += size;
        if size >= block {
            break;
        }
    }
    BOOT_NEXT.store(next, Relaxed);
    true
}

/// Grows the heap so that it gains a `size`-aligned block of `size` bytes
/// (buddy blocks must be aligned to their size); the padding before it is
/// handed to the allocator too. Returns the new range.
fn grow_aligned(size: u64) -> Result<(u64, u64), duet_abi::hypercall::Error> {
    let end = HEAP_END.load(Relaxed);
    let pad = end.next_multiple_of(size) - end;
    let (start, len) = crate::mem::grow(pad + size)?;
    HEAP_END.store(start + len, Relaxed);
    Ok((start, len))
}

/// Notes the boot-time heap (handed to the allocator when first needed).
pub(crate) fn init(bi: &BootInfo) {
    let _h = HEAP.heap.lock();
    let (start, end) = (bi.heap_start.0, bi.heap_start.0 + bi.heap_size);
    BOOT_NEXT.store(start, Relaxed);
    BOOT_END.store(end, Relaxed);
    HEAP_END.store(end, Relaxed);
}

/// Bytes currently allocated and bytes of heap mapped (handed to the
/// allocator or still to be handed).
pub fn stats() -> (usize, usize) {
    let h = HEAP.heap.lock();
    let unhanded = BOOT_END.load(Relaxed) - BOOT_NEXT.load(Relaxed);
    (
        h.stats_alloc_actual(),
        h.stats_total_bytes() + unhanded as usize,
    )
}

fn out_of_memory(layout: Layout) -> ! {
    let bi = crate::rt::boot_info();
    let (used, total) = stats();
    let mut buf = [0u8; 192];
    let mut w = crate::fmtbuf::FmtBuf::new(&mut buf);
    let _ = core::fmt::write(
        &mut w,
        format_args!(
            "out of memory: asked {} bytes, limit {} bytes of heap ({} in use of {} mapped); raise --mem",
            layout.size(),
            bi.heap_limit,
            used,
            total
        ),
    );
    let n = w.written();
    crate::rt::abort_bytes(&buf[..n])
}

// SAFETY: allocation is delegated to the buddy allocator under a lock; memory
// added to it comes from MemGrow, which maps fresh guest memory for us alone.
unsafe impl GlobalAlloc for GrowingHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut h = self.heap.lock();
        loop {
            if let Ok(p) = h.alloc(layout) {
                return p.as_ptr();
            }
            let block = layout.size().max(layout.align()).next_power_of_two() as u64;
            if take_boot(&mut h, block) {
                continue;
            }
            // A buddy block of size 2^k sits at a 2^k-aligned address: grow
            // so such a block exists, in steps of at least GROW_STEP.
            let grown = grow_aligned(block.max(GROW_STEP)).or_else(|_| grow_aligned(block));
            match grown {
                // SAFETY: the monitor just mapped this range for the guest.
                Ok((start, len)) => unsafe {
                    h.add_to_heap(start as usize, (start + len) as usize)
                },
                Err(_) => {
                    drop(h);
                    out_of_memory(layout)
                }
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(p) = NonNull::new(ptr) {
            self.heap.lock().dealloc(p, layout);
        }
    }
}
