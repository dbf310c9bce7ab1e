//! The structures the monitor owns inside a guest, built the same way at
//! boot and at every restore: page tables for everything the guest may
//! touch, the descriptor tables and exception stubs, and the privileged
//! half of the vCPU's registers.
//!
//! A restore rebuilds them from the monitor's own bookkeeping (the image,
//! the heap and its protections) rather than trusting the saved memory and
//! registers: a snapshot file or a migration peer is untrusted, and must
//! not be able to hand the guest ring 0, its own page tables or its own IDT.

use crate::cpu::vcpu::Vcpu;
use crate::cpu::{exception, tables};
use crate::heap::Heap;
use crate::layout;
use crate::loader::Image;
use crate::memory::GuestMem;
use crate::paging::{Access, PageTables, PagingError};
use crate::persist::{kvm_err, StateError};
use duet_abi::PAGE_SIZE;

/// The ranges besides the heap the guest may have the monitor write into:
/// the stack and the image's writable segments.
pub(crate) fn fixed_writable(image: &Image) -> Vec<(u64, u64)> {
    let mut fixed = vec![(layout::STACK_BOTTOM, layout::STACK_TOP)];
    fixed.extend(
        image
            .segments
            .iter()
            .filter(|s| s.perms.write)
            .map(|s| (s.start, s.end)),
    );
    fixed
}

/// Fresh page tables for `image` and `heap` (with its protections).
pub(crate) fn map(mem: &GuestMem, image: &Image, heap: &Heap) -> Result<PageTables, PagingError> {
    let mut pt = PageTables::new(mem)?;
    let user = [
        (layout::IDENTITY_PAGE, PAGE_SIZE, Access::UserRead),
        (layout::VIRTIO_PAGE, PAGE_SIZE, Access::UserWrite),
        (layout::CLOCK_PAGE, PAGE_SIZE, Access::UserRead),
        (
            layout::BOOT_INFO,
            layout::BOOT_INFO_END - layout::BOOT_INFO,
            Access::UserRead,
        ),
        (
            layout::STACK_BOTTOM,
            layout::STACK_TOP - layout::STACK_BOTTOM,
            Access::UserWrite,
        ),
    ];
    for (start, len, access) in user {
        pt.map_4k(mem, start, start + len, access)?;
    }
    pt.map_4k(mem, layout::GDT, layout::IST_STACK_TOP, Access::Supervisor)?;
    exception::map_stubs(mem, &mut pt)?;
    for s in &image.segments {
        let access = match (s.perms.write, s.perms.exec) {
            (_, true) => Access::UserExec,
            (true, false) => Access::UserWrite,
            (false, false) => Access::UserRead,
        };
        pt.map_4k(mem, s.start, s.end, access)?;
    }
    pt.map_range(mem, heap.start(), heap.end(), Access::UserWrite)?;
    for (start, end, prot) in heap.protections() {
        pt.protect(mem, start, end, prot.access())?;
    }
    Ok(pt)
}

/// Writes the GDT, the TSS with its I/O bitmap, the IDT and the exception
/// stubs.
pub(crate) fn write_privileged(mem: &GuestMem) -> Result<(), PagingError> {
    exception::write_stubs(mem)?;
    tables::write_tables(mem, &exception::gates())?;
    Ok(())
}

/// Puts the monitor's privileged state into the vCPU: control registers,
/// descriptor-table registers, the TSS, ring-3 segments; flags a ring-3
/// context may carry. Registers the guest owns (general purpose, RIP, RSP,
/// FPU/SSE) stay as saved.
pub(super) fn reset_privileged(vcpu: &Vcpu) -> Result<(), StateError> {
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    tables::setup_sregs(&mut sregs);
    vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    let mut regs = vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
    regs.rflags = tables::user_rflags(regs.rflags);
    vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))
}
