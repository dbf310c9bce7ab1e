//! Memory hypercalls: grow the heap, release pages, change protections.

use super::{bad_args, Flow};
use crate::vm::Vm;
use duet_abi::hypercall::{Error, Hypercall};
use duet_abi::mem::{MemGrowArgs, MemRangeArgs};
use duet_abi::Gpa;

/// [`Hypercall::MemGrow`].
pub fn grow(vm: &mut Vm, value: u32) -> Flow {
    let at = Gpa(u64::from(value));
    let mut args: MemGrowArgs = match vm.mem.read_plain(at) {
        Ok(a) => a,
        Err(e) => return bad_args(Hypercall::MemGrow, value, e),
    };
    match vm.heap.grow(&mut vm.pt, &mut vm.mem, args.len) {
        Ok((start, len)) => {
            args.start = Gpa(start);
            args.granted = len;
            args.ret = 0;
        }
        Err(e) => {
            args.granted = 0;
            args.ret = e.to_ret();
        }
    }
    // Newly present entries need no TLB flush: nothing cached them.
    finish(vm, at, &args, Hypercall::MemGrow, value)
}

/// [`Hypercall::MemRelease`].
pub fn release(vm: &mut Vm, value: u32) -> Flow {
    let at = Gpa(u64::from(value));
    let mut args: MemRangeArgs = match vm.mem.read_plain(at) {
        Ok(a) => a,
        Err(e) => return bad_args(Hypercall::MemRelease, value, e),
    };
    args.ret = match (args.prot, args.flags) {
        (0, 0) => ret(vm.heap.release(&vm.mem, args.addr, args.len)),
        _ => Error::Inval.to_ret(),
    };
    finish(vm, at, &args, Hypercall::MemRelease, value)
}

/// [`Hypercall::MemProtect`].
pub fn protect(vm: &mut Vm, value: u32) -> Flow {
    let at = Gpa(u64::from(value));
    let mut args: MemRangeArgs = match vm.mem.read_plain(at) {
        Ok(a) => a,
        Err(e) => return bad_args(Hypercall::MemProtect, value, e),
    };
    args.ret = if args.flags != 0 {
        Error::Inval.to_ret()
    } else {
        let r = vm
            .heap
            .protect(&mut vm.pt, &mut vm.mem, args.addr, args.len, args.prot);
        // A weakened PTE may still be cached by KVM: make it forget these pages.
        match r.map(|()| vm.mem.invalidate_translations(args.addr, args.len)) {
            Ok(Ok(())) => 0,
            Ok(Err(e)) => {
                return Flow::Stop(crate::vcpu::Outcome::Failed(format!(
                    "cannot drop stale translations after a protection change: {e}"
                )))
            }
            Err(e) => e.to_ret(),
        }
    };
    finish(vm, at, &args, Hypercall::MemProtect, value)
}

fn ret(r: Result<(), Error>) -> i64 {
    match r {
        Ok(()) => 0,
        Err(e) => e.to_ret(),
    }
}

fn finish<T: duet_abi::Plain>(vm: &mut Vm, at: Gpa, args: &T, call: Hypercall, value: u32) -> Flow {
    match vm.mem.write_plain(at, args) {
        Ok(()) => Flow::Continue,
        Err(e) => bad_args(call, value, e),
    }
}
