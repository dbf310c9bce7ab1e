//! The global allocator: a buddy allocator over the heap, which starts
//! small and grows through the MemGrow hypercall when an allocation does not
//! fit. When the `--mem` limit is reached the guest aborts with a clear
//! out-of-memory report.

use buddy_system_allocator::Heap;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
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
static HEAP_END: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Grows the heap so that it gains a `size`-aligned block of `size` bytes
/// (buddy blocks must be aligned to their size); the padding before it is
/// handed to the allocator too. Returns the new range.
fn grow_aligned(size: u64) -> Result<(u64, u64), duet_abi::hypercall::Error> {
    use core::sync::atomic::Ordering::Relaxed;
    let end = HEAP_END.load(Relaxed);
    let pad = end.next_multiple_of(size) - end;
    let (start, len) = crate::mem::grow(pad + size)?;
    HEAP_END.store(start + len, Relaxed);
    Ok((start, len))
}

/// Hands the boot-time heap to the allocator.
pub(crate) fn init(bi: &BootInfo) {
    if bi.heap_size == 0 {
        return;
    }
    // SAFETY: the monitor mapped [heap_start, heap_start + heap_size)
    // read/write for the guest and nothing else uses it.
    unsafe {
        HEAP.heap
            .lock()
            .init(bi.heap_start.0 as usize, bi.heap_size as usize)
    };
    HEAP_END.store(
        bi.heap_start.0 + bi.heap_size,
        core::sync::atomic::Ordering::Relaxed,
    );
}

/// Bytes currently allocated and bytes available to the allocator.
pub fn stats() -> (usize, usize) {
    let h = HEAP.heap.lock();
    (h.stats_alloc_actual(), h.stats_total_bytes())
}

fn out_of_memory(layout: Layout) -> ! {
    let bi = crate::rt::boot_info();
    let (used, total) = {
        let h = HEAP.heap.lock();
        (h.stats_alloc_actual(), h.stats_total_bytes())
    };
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
            // A buddy block of size 2^k sits at a 2^k-aligned address: grow
            // so such a block exists, in steps of at least GROW_STEP.
            let block = layout.size().max(layout.align()).next_power_of_two() as u64;
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
