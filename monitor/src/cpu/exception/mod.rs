//! CPU exceptions: the monitor's own ring-0 entry stubs, and what the
//! monitor does when one of them runs.
//!
//! The guest never runs code of its own at CPL 0. Every IDT gate enters a
//! stub the monitor wrote into a page that is supervisor-only, read-only and
//! executable ([`layout::EXCEPTION_STUBS`]). A stub is one instruction,
//! `out imm8, al` to port [`STUB_PORT_BASE`] + vector, because ring-0 code is
//! emulated one instruction at a time on this project's hosts and because
//! that instruction reads AL but writes no register: at the resulting
//! `KVM_EXIT_IO` every general register still holds its value at the fault.
//! The monitor then reads the rest itself ([`frame`]): CR2 and CPL from the
//! special registers, and the frame the CPU pushed (error code, RIP, CS,
//! RFLAGS, RSP, SS) from the IST stack, through the checked accessors.
//!
//! Those ports stay closed to ring 3 (the TSS I/O bitmap opens only the
//! hypercall ports), and an exit on one counts as an exception only from
//! CPL 0 at this vector's stub; anything else is a stray port access.
//!
//! Only #BP is reachable with `int3` from ring 3 (gate DPL 3), for a
//! debugger; every other gate has DPL 0, so `int n` from the guest raises #GP.

pub mod frame;
#[cfg(test)]
mod tests;

use crate::cpu::tables::{Gate, IDT_GATES};
use crate::layout;
use crate::memory::GuestMem;
use crate::paging::{Access, PageTables, PagingError};
use duet_abi::{Gpa, PAGE_SIZE};

pub use frame::{resume, Exception, ExceptionError, Frame};

/// The #BP (breakpoint, `int3`) vector: the only gate ring 3 may use.
pub const BREAKPOINT: u8 = 3;
/// Port of vector 0's stub; vector `v` reports on `STUB_PORT_BASE + v`.
pub const STUB_PORT_BASE: u16 = 0xE0;
/// Bytes between two stubs.
const STUB_STRIDE: u64 = 8;
/// `out imm8, al`.
const OUT_IMM8_AL: u8 = 0xE6;
/// Length of a stub's `out imm8, al`.
pub(crate) const OUT_LEN: u64 = 2;
/// Filler between and after the stubs: should execution ever run past an
/// `out`, it stops at a HLT exit (reported with registers) instead of
/// sliding into the next stub.
const HLT: u8 = 0xF4;

const _: () = assert!(STUB_PORT_BASE as usize + IDT_GATES - 1 <= 0xFF);
const _: () = assert!(STUB_STRIDE * IDT_GATES as u64 <= PAGE_SIZE);
const _: () = assert!(layout::MONITOR_END - layout::EXCEPTION_STUBS == PAGE_SIZE);

/// Address of `vector`'s stub.
pub const fn stub_addr(vector: u8) -> u64 {
    layout::EXCEPTION_STUBS + vector as u64 * STUB_STRIDE
}

/// The port `vector`'s stub writes to.
pub const fn stub_port(vector: u8) -> u16 {
    STUB_PORT_BASE + vector as u16
}

/// The vector whose stub writes to `port`, if any.
pub fn port_vector(port: u16) -> Option<u8> {
    port.checked_sub(STUB_PORT_BASE)
        .filter(|v| usize::from(*v) < IDT_GATES)
        .map(|v| v as u8)
}

/// Whether `port` belongs to an exception stub (the run loop's test).
#[inline]
pub fn is_stub_port(port: u16) -> bool {
    port_vector(port).is_some()
}

/// The stub page's bytes: `out imm8, al` at each stub, HLT everywhere else.
pub fn stub_page() -> Vec<u8> {
    let mut page = vec![HLT; PAGE_SIZE as usize];
    for v in 0..IDT_GATES as u8 {
        let at = (stub_addr(v) - layout::EXCEPTION_STUBS) as usize;
        page[at] = OUT_IMM8_AL;
        page[at + 1] = stub_port(v) as u8;
    }
    page
}

/// Writes the stub page (the caller maps it with [`map_stubs`]).
pub fn write_stubs(mem: &GuestMem) -> Result<(), crate::memory::MemError> {
    mem.write_bytes(Gpa(layout::EXCEPTION_STUBS), &stub_page())
}

/// Maps the stub page supervisor-only, read-only, executable.
pub fn map_stubs(mem: &GuestMem, pt: &mut PageTables) -> Result<(), PagingError> {
    pt.map_4k(
        mem,
        layout::EXCEPTION_STUBS,
        layout::MONITOR_END,
        Access::SupervisorExec,
    )
}

/// The IDT: every gate enters its vector's stub; only #BP has DPL 3.
pub fn gates() -> [Gate; IDT_GATES] {
    std::array::from_fn(|v| Gate {
        handler: stub_addr(v as u8),
        dpl: if v as u8 == BREAKPOINT { 3 } else { 0 },
    })
}

/// Vectors for which the CPU pushes an error code.
pub const fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// Conventional name of an exception vector.
pub const fn name(vector: u8) -> &'static str {
    match vector {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range exceeded",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack-segment fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 floating-point",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD floating-point",
        20 => "#VE virtualization",
        21 => "#CP control protection",
        _ => "reserved vector",
    }
}
