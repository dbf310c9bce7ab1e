//! Memory hypercalls: grow the heap, release pages, change protections.
//! They change guest memory's own bookkeeping, so they read their
//! arguments ([`take`]), do the work, then answer ([`reply`]).

use crate::call::{reply, take};
use crate::heap::Heap;
use crate::memory::GuestMem;
use crate::outcome::{Flow, Outcome};
use crate::paging::PageTables;
use duet_abi::hypercall::{Error, Hypercall};
use duet_abi::mem::{MemGrowArgs, MemRangeArgs};

/// [`Hypercall::MemGrow`].
pub fn grow(heap: &mut Heap, pt: &mut PageTables, mem: &mut GuestMem, value: u32) -> Flow {
    let call = Hypercall::MemGrow;
    let mut a: MemGrowArgs = match take(mem, call, value) {
        Ok(a) => a,
        Err(f) => return f,
    };
    // Newly present entries need no TLB flush: nothing cached them.
    let r = heap.grow(pt, mem, a.len).map(|(start, granted)| {
        a.start = duet_abi::Gpa(start);
        a.granted = granted;
        0
    });
    if r.is_err() {
        a.granted = 0;
    }
    reply(mem, call, value, a, r)
}

/// [`Hypercall::MemRelease`].
pub fn release(heap: &Heap, mem: &mut GuestMem, value: u32) -> Flow {
    let call = Hypercall::MemRelease;
    let a: MemRangeArgs = match take(mem, call, value) {
        Ok(a) => a,
        Err(f) => return f,
    };
    let r = if (a.prot, a.flags) != (0, 0) {
        Err(Error::Inval)
    } else {
        heap.release(mem, a.addr, a.len).map(|()| 0)
    };
    reply(mem, call, value, a, r)
}

/// [`Hypercall::MemProtect`].
pub fn protect(heap: &mut Heap, pt: &mut PageTables, mem: &mut GuestMem, value: u32) -> Flow {
    let call = Hypercall::MemProtect;
    let a: MemRangeArgs = match take(mem, call, value) {
        Ok(a) => a,
        Err(f) => return f,
    };
    let r = if a.flags != 0 {
        Err(Error::Inval)
    } else {
        heap.protect(pt, mem, a.addr, a.len, a.prot).map(|()| 0)
    };
    if r.is_ok() {
        // A weakened PTE may still be cached by KVM: make it forget these
        // pages.
        if let Err(e) = mem.invalidate_translations(a.addr, a.len) {
            return Flow::Stop(Outcome::Failed(format!(
                "cannot drop stale translations after a protection change: {e}"
            )));
        }
    }
    reply(mem, call, value, a, r)
}
