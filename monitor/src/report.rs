//! One-paragraph reports of how a guest died, with RIP symbolized.

use crate::layout;
use crate::vm::Vm;
use duet_abi::hypercall::{vector_name, FaultFrame};
use duet_abi::PAGE_SIZE;
use std::fmt::Write;

/// Names the part of guest memory `addr` falls in.
pub fn describe(vm: &Vm, addr: u64) -> String {
    let image = &vm.image;
    let what = if addr < PAGE_SIZE {
        "the null page (a null pointer dereference)".to_string()
    } else if addr < layout::IST_STACK_TOP
        || (layout::PAGE_TABLES..layout::PAGE_TABLES_END).contains(&addr)
    {
        "monitor-owned memory (descriptor tables, fault stack or page tables)".to_string()
    } else if (layout::CLOCK_PAGE..layout::CLOCK_PAGE + PAGE_SIZE).contains(&addr) {
        "the clock page (read-only)".to_string()
    } else if (layout::BOOT_INFO..layout::BOOT_INFO_END).contains(&addr) {
        "the boot info (read-only)".to_string()
    } else if (layout::STACK_GUARD..layout::STACK_BOTTOM).contains(&addr) {
        "the stack guard page: the stack overflowed".to_string()
    } else if (layout::STACK_BOTTOM..layout::STACK_TOP).contains(&addr) {
        "the stack".to_string()
    } else if let Some(s) = image
        .segments
        .iter()
        .find(|s| (s.start..s.end).contains(&addr))
    {
        let kind = match (s.perms.write, s.perms.exec) {
            (_, true) => "text (read + execute)",
            (true, false) => "data (read/write, no execute)",
            (false, false) => "read-only data (no execute)",
        };
        format!("the image's {kind}")
    } else if addr >= vm.heap.start() && addr < vm.heap.end() {
        "the heap".to_string()
    } else if addr >= vm.heap.end() && addr < vm.mem.size() {
        "the heap beyond its mapped end (not grown yet: allocate through the allocator or duet::mem::grow)".to_string()
    } else if addr >= vm.mem.size() {
        "no memory at all (beyond the end of guest memory)".to_string()
    } else {
        "unmapped memory".to_string()
    };
    match image.symbolize(addr) {
        Some(sym) => format!("{what}, <{sym}>"),
        None => what,
    }
}

fn pf_cause(err: u64) -> String {
    let access = if err & 0x10 != 0 {
        "instruction fetch"
    } else if err & 0x2 != 0 {
        "write"
    } else {
        "read"
    };
    let why = if err & 0x8 != 0 {
        "reserved bit set in a page-table entry"
    } else if err & 0x1 != 0 {
        "page present but access not permitted"
    } else {
        "page not mapped"
    };
    let mode = if err & 0x4 != 0 {
        "user mode"
    } else {
        "kernel mode"
    };
    format!("{access}, {why}, {mode}")
}

fn sym(vm: &Vm, rip: u64) -> String {
    vm.image
        .symbolize(rip)
        .map_or_else(|| "<no symbol>".to_string(), |s| format!("<{s}>"))
}

/// Formats the report for a fault frame a guest stub sent.
pub fn fault(vm: &Vm, f: &FaultFrame) -> String {
    let mut s = format!(
        "guest fault: {} (vector {}",
        vector_name(f.vector),
        f.vector
    );
    if duet_abi::hypercall::vector_has_error_code(f.vector as usize) {
        let _ = write!(s, ", error code {:#x}", f.error_code);
    }
    let _ = write!(s, ") at rip {:#x} {}", f.rip, sym(vm, f.rip));
    if f.vector == 14 {
        let _ = write!(
            s,
            "\n  {} at {:#x}: {}",
            pf_cause(f.error_code),
            f.cr2,
            describe(vm, f.cr2)
        );
    }
    let _ = write!(
        s,
        "\n  rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}\n  rsi {:#018x} rdi {:#018x} rbp {:#018x} rsp {:#018x}\n  r8  {:#018x} r9  {:#018x} r10 {:#018x} r11 {:#018x}\n  r12 {:#018x} r13 {:#018x} r14 {:#018x} r15 {:#018x}\n  rflags {:#x} cs {:#x} ss {:#x}",
        f.rax, f.rbx, f.rcx, f.rdx, f.rsi, f.rdi, f.rbp, f.rsp, f.r8, f.r9, f.r10, f.r11, f.r12, f.r13, f.r14, f.r15,
        f.rflags, f.cs, f.ss
    );
    s
}

/// Formats `msg` with the vCPU's current registers (for exits without a
/// guest-supplied frame).
pub fn with_regs(vm: &Vm, msg: &str) -> String {
    let mut s = msg.to_string();
    if let (Ok(r), Ok(sr)) = (vm.vcpu.get_regs(), vm.vcpu.get_sregs()) {
        let _ = write!(
            s,
            "\n  rip {:#x} {} rsp {:#x} cr2 {:#x} cpl {}",
            r.rip,
            sym(vm, r.rip),
            r.rsp,
            sr.cr2,
            sr.cs.selector & 3
        );
    }
    s
}
