//! Reading an exception at its stub's exit, and resuming the interrupted
//! ring-3 context afterwards.
//!
//! [`decode`] and [`resume_state`] only look at register structs and guest
//! memory, so they are tested without a vCPU; [`read`] and [`resume`] wrap
//! them in the ioctls.

use super::{has_error_code, port_vector, stub_addr, OUT_LEN};
use crate::cpu::tables;
use crate::layout::{self, selector};
use crate::memory::{GuestMem, MemError};
use duet_abi::Gpa;
use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use thiserror::Error;

/// What the CPU pushed on the IST stack when it took the exception.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The exception vector (from the stub's port).
    pub vector: u8,
    /// The error code, for vectors that push one.
    pub error_code: Option<u64>,
    /// Interrupted instruction pointer: the faulting instruction, or the
    /// one after a trap (`int3`, single-step).
    pub rip: u64,
    /// Interrupted code segment selector (its low two bits: the CPL then).
    pub cs: u64,
    /// Interrupted flags.
    pub rflags: u64,
    /// Interrupted stack pointer.
    pub rsp: u64,
    /// Interrupted stack segment selector.
    pub ss: u64,
}

impl Frame {
    /// Bytes the CPU pushes for `vector`.
    pub const fn size(vector: u8) -> u64 {
        if has_error_code(vector) {
            48
        } else {
            40
        }
    }

    /// Where the frame for `vector` starts: the CPU switches to the IST
    /// stack's top (16-byte aligned) on every exception and pushes there.
    pub const fn addr(vector: u8) -> u64 {
        layout::IST_STACK_TOP - Self::size(vector)
    }

    /// The privilege level the exception interrupted.
    pub fn cpl(&self) -> u8 {
        (self.cs & 3) as u8
    }
}

/// An exception as the monitor saw it at the stub's exit.
#[derive(Clone, Copy, Debug)]
pub struct Exception {
    /// The CPU-pushed frame.
    pub frame: Frame,
    /// The interrupted context's general registers, with `rip`, `rsp` and
    /// `rflags` taken from the frame (the stub changes none of the others).
    pub regs: kvm_regs,
    /// CR2: the faulting address of a page fault.
    pub cr2: u64,
}

/// Why an exit on a stub port is not a readable exception, or a context
/// cannot be resumed.
#[derive(Debug, Error)]
pub enum ExceptionError {
    /// Not the monitor's stub at CPL 0.
    #[error("guest wrote to I/O port {port:#x} from CPL {cpl} at rip {rip:#x}, not from the monitor's exception stub for vector {vector} that owns the port: a stray port access")]
    Stray {
        /// The port.
        port: u16,
        /// CPL at the exit.
        cpl: u8,
        /// RIP at the exit.
        rip: u64,
        /// The vector the port belongs to.
        vector: u8,
    },
    /// The stack pointer is not where the CPU leaves it.
    #[error("exception stub for vector {vector} ran with rsp {rsp:#x}, not {want:#x} where the CPU pushes its frame; the exception state is inconsistent")]
    Stack {
        /// The vector.
        vector: u8,
        /// RSP at the exit.
        rsp: u64,
        /// Where the frame should start.
        want: u64,
    },
    /// The frame could not be read.
    #[error("cannot read the exception frame at {at:#x}: {source}")]
    Frame {
        /// Address of the word that failed.
        at: u64,
        /// Why.
        source: MemError,
    },
    /// The frame does not describe a ring-3 context.
    #[error("cannot resume: the frame's {what} is {value:#x}, not ring 3's {want:#x}; only an interrupted ring-3 context can be resumed")]
    NotRing3 {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u64,
        /// Ring 3's value.
        want: u64,
    },
    /// A non-canonical address.
    #[error("cannot resume with a non-canonical {what} {value:#x}")]
    NonCanonical {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Ioctl {
        /// Which call.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> ExceptionError {
    move |source| ExceptionError::Ioctl { what, source }
}

/// Decodes the exit of an `out` to `port` given the vCPU's registers at
/// that exit. It is an exception only if the vCPU is at CPL 0 in the
/// monitor's code segment at `port`'s stub (before or after its `out`:
/// KVM may complete an emulated `out` before exiting), with RSP where the
/// CPU leaves its frame.
pub fn decode(
    port: u16,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
    mem: &GuestMem,
) -> Result<Exception, ExceptionError> {
    let cpl = (sregs.cs.selector & 3) as u8;
    let stray = |vector| ExceptionError::Stray {
        port,
        cpl,
        rip: regs.rip,
        vector,
    };
    let vector = port_vector(port).ok_or_else(|| stray(u8::MAX))?;
    let stub = stub_addr(vector);
    if sregs.cs.selector != selector::KERNEL_CODE
        || sregs.cs.dpl != 0
        || (regs.rip != stub && regs.rip != stub + OUT_LEN)
    {
        return Err(stray(vector));
    }
    let at = Frame::addr(vector);
    if regs.rsp != at {
        return Err(ExceptionError::Stack {
            vector,
            rsp: regs.rsp,
            want: at,
        });
    }
    let mut words = [0u64; 6];
    let n = (Frame::size(vector) / 8) as usize;
    for (i, w) in words[..n].iter_mut().enumerate() {
        let a = at + 8 * i as u64;
        *w = mem
            .read_plain(Gpa(a))
            .map_err(|source| ExceptionError::Frame { at: a, source })?;
    }
    let (error_code, rest) = if has_error_code(vector) {
        (Some(words[0]), &words[1..6])
    } else {
        (None, &words[..5])
    };
    let frame = Frame {
        vector,
        error_code,
        rip: rest[0],
        cs: rest[1],
        rflags: rest[2],
        rsp: rest[3],
        ss: rest[4],
    };
    let mut interrupted = *regs;
    interrupted.rip = frame.rip;
    interrupted.rsp = frame.rsp;
    interrupted.rflags = frame.rflags;
    Ok(Exception {
        frame,
        regs: interrupted,
        cr2: sregs.cr2,
    })
}

/// Reads the exception behind an exit on stub port `port`
/// (`KVM_GET_REGS`, `KVM_GET_SREGS`, then [`decode`]).
pub fn read(vcpu: &VcpuFd, mem: &GuestMem, port: u16) -> Result<Exception, ExceptionError> {
    let regs = vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
    let sregs = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    decode(port, &regs, &sregs, mem)
}

fn canonical(what: &'static str, value: u64) -> Result<(), ExceptionError> {
    // Bits 63..47 all equal (48-bit virtual addresses).
    let top = value >> 47;
    if top == 0 || top == (1 << 17) - 1 {
        Ok(())
    } else {
        Err(ExceptionError::NonCanonical { what, value })
    }
}

/// Sets `regs` and `sregs` to continue `frame`'s interrupted ring-3
/// context: RIP, RSP and the user-visible RFLAGS from the frame, CS and SS
/// back to ring 3's segments. General registers are left as they are (the
/// stub changed none). Refuses a frame that is not a ring-3 context.
pub fn resume_state(
    frame: &Frame,
    regs: &mut kvm_regs,
    sregs: &mut kvm_sregs,
) -> Result<(), ExceptionError> {
    for (what, value, want) in [
        ("cs", frame.cs, selector::USER_CODE),
        ("ss", frame.ss, selector::USER_DATA),
    ] {
        if value != u64::from(want) {
            return Err(ExceptionError::NotRing3 {
                what,
                value,
                want: u64::from(want),
            });
        }
    }
    canonical("rip", frame.rip)?;
    canonical("rsp", frame.rsp)?;
    regs.rip = frame.rip;
    regs.rsp = frame.rsp;
    regs.rflags = tables::user_rflags(frame.rflags);
    tables::ring3_code_and_stack(sregs);
    Ok(())
}

/// Puts the vCPU back into `frame`'s interrupted ring-3 context
/// (`KVM_GET_*`, [`resume_state`], `KVM_SET_SREGS`, `KVM_SET_REGS`), so the
/// next `KVM_RUN` continues the guest: after an `int3` at the instruction
/// following it, after a fault at the faulting instruction (unless the
/// caller moved `frame.rip`). Call it at the stub's exit, before the next
/// `KVM_RUN`: KVM finishes an emulated `out` before exiting, and skips a
/// fast-path one only while RIP is unchanged, so the new RIP stands.
pub fn resume(vcpu: &VcpuFd, frame: &Frame) -> Result<(), ExceptionError> {
    let mut regs = vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
    let mut sregs = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    resume_state(frame, &mut regs, &mut sregs)?;
    vcpu.set_sregs(&sregs).map_err(ioctl("KVM_SET_SREGS"))?;
    vcpu.set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;
    Ok(())
}
