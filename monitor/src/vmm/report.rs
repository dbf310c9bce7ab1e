//! One-paragraph reports of how a guest died, with RIP symbolized and
//! the call chain walked by frame pointers ([`crate::backtrace`]).

use super::Vmm as Vm;
use crate::cpu::exception::{self, Exception};
use crate::layout;
use duet_abi::{Gpa, PAGE_SIZE};
use std::fmt::Write;

/// The monitor-owned areas, by name.
const MONITOR_AREAS: &[(u64, u64, &str)] = &[
    (layout::GDT, layout::IDT, "the GDT"),
    (layout::IDT, layout::TSS, "the IDT"),
    (layout::TSS, layout::IST_STACK, "the TSS and its I/O bitmap"),
    (
        layout::IST_STACK,
        layout::IST_STACK_TOP,
        "the exception stack",
    ),
    (
        layout::EXCEPTION_STUBS,
        layout::MONITOR_END,
        "the exception stubs",
    ),
    (
        layout::PAGE_TABLES,
        layout::PAGE_TABLES_END,
        "the page tables",
    ),
];

/// Names the part of guest memory `addr` falls in.
pub fn describe(vm: &Vm, addr: u64) -> String {
    let image = &vm.image;
    let monitor = MONITOR_AREAS
        .iter()
        .find(|(start, end, _)| (*start..*end).contains(&addr));
    let what = if addr < PAGE_SIZE {
        "the null page (a null pointer dereference)".to_string()
    } else if let Some((_, _, area)) = monitor {
        format!("monitor-owned memory ({area}, ring 0 only)")
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
    } else if addr >= vm.heap.end() && addr < vm.vm.mem().size() {
        "the heap beyond its mapped end (not grown yet: allocate through the allocator or duet::mem::grow)".to_string()
    } else if addr >= vm.vm.mem().size() {
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

/// Where the `int3` (or `int 3`) before `rip` starts: a #BP frame holds
/// the address after the instruction.
fn breakpoint_addr(vm: &Vm, rip: u64) -> u64 {
    let byte = |a: u64| vm.vm.mem().read_plain::<u8>(Gpa(a)).ok();
    match (
        rip.checked_sub(2).and_then(byte),
        rip.checked_sub(1).and_then(byte),
    ) {
        (_, Some(0xcc)) => rip - 1,
        (Some(0xcd), Some(3)) => rip - 2,
        _ => rip,
    }
}

/// Formats the report for an exception the monitor's stubs caught.
pub fn fault(vm: &Vm, e: &Exception) -> String {
    let f = &e.frame;
    let mut s = if f.vector == exception::BREAKPOINT {
        let at = breakpoint_addr(vm, f.rip);
        format!(
            "guest fault: #BP breakpoint (vector 3): breakpoint (int3) at rip {at:#x} {}, and no debugger is attached",
            sym(vm, at)
        )
    } else {
        let mut s = format!(
            "guest fault: {} (vector {}",
            exception::name(f.vector),
            f.vector
        );
        if let Some(code) = f.error_code {
            let _ = write!(s, ", error code {code:#x}");
        }
        let _ = write!(s, ") at rip {:#x} {}", f.rip, sym(vm, f.rip));
        s
    };
    if f.cpl() != 3 {
        let _ = write!(
            s,
            "\n  in ring {}: the exception interrupted the monitor's own stubs (a monitor bug)",
            f.cpl()
        );
    }
    if f.vector == 14 {
        let err = f.error_code.unwrap_or(0);
        let _ = write!(
            s,
            "\n  {} at {:#x}: {}",
            pf_cause(err),
            e.cr2,
            describe(vm, e.cr2)
        );
    }
    let r = &e.regs;
    let _ = write!(
        s,
        "\n  rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}\n  rsi {:#018x} rdi {:#018x} rbp {:#018x} rsp {:#018x}\n  r8  {:#018x} r9  {:#018x} r10 {:#018x} r11 {:#018x}\n  r12 {:#018x} r13 {:#018x} r14 {:#018x} r15 {:#018x}\n  rflags {:#x} cs {:#x} ss {:#x}",
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15,
        r.rflags, f.cs, f.ss
    );
    if f.cpl() == 3 {
        s.push_str(&backtrace(vm, r.rip, r.rbp));
    }
    s
}

/// The guest's call chain from `rip` and frame pointer `rbp`, for a report.
pub fn backtrace(vm: &Vm, rip: u64, rbp: u64) -> String {
    let bt = crate::backtrace::walk(vm.vm.mem(), &vm.image.symbols, rip, rbp);
    format!("\n  backtrace:{}", bt.render("    "))
}

/// Formats `msg` with the vCPU's current registers (for exits without a
/// guest-supplied frame).
pub fn with_regs(vm: &Vm, msg: &str) -> String {
    let mut s = msg.to_string();
    if let (Ok(r), Ok(sr)) = (vm.vcpus[0].get_regs(), vm.vcpus[0].get_sregs()) {
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
