//! The privileged CPU state the monitor owns: GDT, TSS (with the I/O
//! permission bitmap that opens only the hypercall ports), IDT, and the
//! initial registers that start the vCPU directly in 64-bit ring 3.
//!
//! The IDT's gates point at the monitor's own exception stubs
//! ([`crate::cpu::exception`]); the image supplies no ring-0 code.

use crate::layout::{self, selector};
use crate::memory::{GuestMem, MemError};
use crate::paging::PageTables;
use duet_abi::hypercall::{PORT_BASE, PORT_COUNT};
use duet_abi::Gpa;
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use std::mem::size_of;
use x86_64::registers::control::{Cr0Flags, Cr4Flags};
use x86_64::registers::model_specific::EferFlags;
use x86_64::structures::gdt::DescriptorFlags;
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// TSS size without the I/O bitmap.
const TSS_SIZE: u64 = size_of::<TaskStateSegment>() as u64;
const _: () = assert!(TSS_SIZE == 104);
/// Highest port a hypercall's 4-byte `out` touches (its 4 ports are checked).
const LAST_OPEN_PORT: u64 = (PORT_BASE + PORT_COUNT + 3) as u64;
/// I/O bitmap: one bit per port up to the last open one, plus the mandatory
/// trailing 0xff byte. Ports past the TSS limit are denied by the CPU as if
/// their bits were set, so the bitmap stops there: one page written at
/// boot instead of three.
const IOMAP_SIZE: u64 = LAST_OPEN_PORT / 8 + 2;
const _: () = assert!(TSS_SIZE + IOMAP_SIZE <= duet_abi::PAGE_SIZE);
/// TSS limit (last valid byte offset).
pub const TSS_LIMIT: u64 = TSS_SIZE + IOMAP_SIZE - 1;

/// Number of IDT gates: the architectural exceptions. No interrupt is ever
/// delivered, and an `int n` beyond the limit raises #GP.
pub const IDT_GATES: usize = 32;

/// One IDT gate: where it enters ring 0, and the lowest privilege that may
/// reach it with `int n` (3: from ring 3; 0: only the CPU raises it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gate {
    /// Handler address (in the monitor's stub page).
    pub handler: u64,
    /// Descriptor privilege level, 0 or 3.
    pub dpl: u8,
}

/// Writes the GDT, the TSS with its I/O bitmap, and the IDT with `gates`.
pub fn write_tables(mem: &GuestMem, gates: &[Gate; IDT_GATES]) -> Result<(), MemError> {
    // GDT: null, null, kernel code, kernel data, user code32 (unused), user
    // data, user code64, TSS (two slots).
    let mut gdt = [0u64; 10];
    gdt[(selector::KERNEL_CODE / 8) as usize] = DescriptorFlags::KERNEL_CODE64.bits();
    gdt[(selector::KERNEL_DATA / 8) as usize] = DescriptorFlags::KERNEL_DATA.bits();
    gdt[(selector::USER_DATA / 8) as usize] = DescriptorFlags::USER_DATA.bits();
    gdt[(selector::USER_CODE / 8) as usize] = DescriptorFlags::USER_CODE64.bits();
    let base = layout::TSS;
    let tss_lo = (TSS_LIMIT & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x8b << 40) // present, busy 64-bit TSS
        | (((TSS_LIMIT >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    gdt[(selector::TSS / 8) as usize] = tss_lo;
    gdt[(selector::TSS / 8) as usize + 1] = base >> 32;
    for (i, d) in gdt.iter().enumerate() {
        mem.write_monitor_plain(Gpa(layout::GDT + 8 * i as u64), d)?;
    }

    // TSS: IST1 for every exception; I/O bitmap denies all ports but ours.
    let mut tss = TaskStateSegment::new();
    tss.interrupt_stack_table[0] = VirtAddr::new(layout::IST_STACK_TOP);
    tss.iomap_base = TSS_SIZE as u16;
    // SAFETY: `TaskStateSegment` is `repr(C, packed(4))` plain data of
    // exactly TSS_SIZE bytes (asserted above), so viewing it as bytes is sound.
    let tss_bytes = unsafe {
        std::slice::from_raw_parts(
            (&tss as *const TaskStateSegment).cast::<u8>(),
            TSS_SIZE as usize,
        )
    };
    mem.write_bytes(Gpa(layout::TSS), tss_bytes)?;
    let mut bitmap = [0xffu8; IOMAP_SIZE as usize];
    // A 4-byte `out` checks the bits of all four ports it covers, so open
    // three more past the last hypercall port.
    for port in PORT_BASE..PORT_BASE + PORT_COUNT + 3 {
        bitmap[(port / 8) as usize] &= !(1 << (port % 8));
    }
    mem.write_bytes(Gpa(layout::TSS + TSS_SIZE), &bitmap)?;

    // IDT: interrupt gates (IF cleared on entry) on IST1, so the stubs
    // always run on the monitor's stack whatever the guest did to its own.
    for (v, g) in gates.iter().enumerate() {
        let (handler, dpl) = (g.handler, u64::from(g.dpl & 3));
        let lo = (handler & 0xffff)
            | ((selector::KERNEL_CODE as u64) << 16)
            | (1 << 32) // IST1
            | ((0x8e | (dpl << 5)) << 40)
            | (((handler >> 16) & 0xffff) << 48);
        let hi = handler >> 32;
        let at = layout::IDT + 16 * v as u64;
        mem.write_monitor_plain(Gpa(at), &lo)?;
        mem.write_monitor_plain(Gpa(at + 8), &hi)?;
    }
    Ok(())
}

/// A flat 64-bit code or data segment whose DPL is `selector`'s RPL.
fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: (selector & 3) as u8,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        ..Default::default()
    }
}

/// Loads ring 3's code segment into CS and its data segment into SS: CPL 3.
/// (Entering ring 0 through a gate changes only these two.)
pub fn ring3_code_and_stack(sregs: &mut kvm_sregs) {
    sregs.cs = segment(selector::USER_CODE, true);
    sregs.ss = segment(selector::USER_DATA, false);
}

/// RFLAGS bits a ring-3 context may carry (arithmetic flags, TF, DF, RF,
/// AC, ID). IF, IOPL, NT and VM never reach the guest: it runs with
/// interrupts off and IOPL 0, and could not have set them itself.
pub const USER_RFLAGS: u64 =
    0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x400 | 0x800 | (1 << 16) | (1 << 18) | (1 << 21);
/// RFLAGS bit 1 reads as one.
const RFLAGS_FIXED: u64 = 0x2;

/// `rflags` with only what a ring-3 context may carry.
pub fn user_rflags(rflags: u64) -> u64 {
    (rflags & USER_RFLAGS) | RFLAGS_FIXED
}

/// Fills the special registers for 64-bit ring 3 with our tables.
pub fn setup_sregs(sregs: &mut kvm_sregs) {
    ring3_code_and_stack(sregs);
    let ds = segment(selector::USER_DATA, false);
    sregs.ds = ds;
    sregs.es = ds;
    sregs.fs = ds;
    sregs.gs = ds;
    sregs.tr = kvm_segment {
        base: layout::TSS,
        limit: TSS_LIMIT as u32,
        selector: selector::TSS,
        type_: 0xb,
        present: 1,
        ..Default::default()
    };
    sregs.ldt = kvm_segment {
        unusable: 1,
        ..Default::default()
    };
    sregs.gdt.base = layout::GDT;
    sregs.gdt.limit = 10 * 8 - 1;
    sregs.idt.base = layout::IDT;
    sregs.idt.limit = (IDT_GATES * 16 - 1) as u16;
    sregs.cr0 = (Cr0Flags::PROTECTED_MODE_ENABLE
        | Cr0Flags::MONITOR_COPROCESSOR
        | Cr0Flags::EXTENSION_TYPE
        | Cr0Flags::NUMERIC_ERROR
        | Cr0Flags::WRITE_PROTECT
        | Cr0Flags::PAGING)
        .bits();
    sregs.cr3 = PageTables::ROOT;
    sregs.cr4 =
        (Cr4Flags::PHYSICAL_ADDRESS_EXTENSION | Cr4Flags::OSFXSR | Cr4Flags::OSXMMEXCPT_ENABLE)
            .bits();
    sregs.efer =
        (EferFlags::LONG_MODE_ENABLE | EferFlags::LONG_MODE_ACTIVE | EferFlags::NO_EXECUTE_ENABLE)
            .bits();
}

/// Initial general registers: entry point, stack, boot info in `rdi`,
/// interrupts off and IOPL 0 (the TSS bitmap grants the hypercall ports).
pub fn initial_regs(entry: u64, boot_info: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        // As if `call` had pushed a return address: rsp % 16 == 8 at entry.
        rsp: layout::STACK_TOP - 8,
        rdi: boot_info,
        rflags: 0x2,
        ..Default::default()
    }
}
