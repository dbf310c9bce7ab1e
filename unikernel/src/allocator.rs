//! The global allocator: a buddy allocator over the heap region the monitor
//! mapped (see [`duet_abi::boot::BootInfo::heap_start`]).

use buddy_system_allocator::LockedHeap;
use duet_abi::boot::BootInfo;

#[global_allocator]
static HEAP: LockedHeap<33> = LockedHeap::empty();

/// Hands the boot-time heap to the allocator.
pub(crate) fn init(bi: &BootInfo) {
    if bi.heap_size == 0 {
        return;
    }
    // SAFETY: the monitor mapped [heap_start, heap_start + heap_size)
    // read/write for the guest and nothing else uses it.
    unsafe {
        HEAP.lock()
            .init(bi.heap_start.0 as usize, bi.heap_size as usize)
    };
}

/// Bytes currently allocated and bytes available to the allocator.
pub fn stats() -> (usize, usize) {
    let h = HEAP.lock();
    (h.stats_alloc_actual(), h.stats_total_bytes())
}
