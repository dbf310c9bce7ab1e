//! Debugging a guest with GDB, and core files of a guest.
//!
//! Two threads share the work, like every other control request:
//!
//! * The GDB thread (`stub.rs`) owns the TCP connection and the `gdbstub`
//!   protocol state. Its target (`target.rs`) owns nothing of the VM: each
//!   register or memory access, breakpoint or resume becomes a [`Cmd`] sent
//!   through the control block ([`crate::control::Request::Debug`]).
//! * The vCPU thread serves those commands between two `KVM_RUN`s
//!   ([`session`]) and posts stops ([`Stop`]) back over a channel.
//!
//! A guest stopped by the debugger is a paused guest: the run loop waits
//! for requests exactly as after `duet ctl pause`, and other control
//! requests (status, snapshot, core) are still served.
//!
//! Breakpoints and single steps use no guest code and no
//! `KVM_SET_GUEST_DEBUG` (which does not report ring-3 traps to the host on
//! this project's hosts): GDB's `int3`s are patched into the text by the
//! monitor ([`breakpoints`]), single steps set RFLAGS.TF, and both trap
//! into the monitor's own #BP/#DB stubs ([`crate::exception`]); the
//! session then puts the vCPU back into the ring-3 context itself and
//! reports the stop. There are no hardware breakpoints or watchpoints:
//! debug registers set with `KVM_SET_DEBUGREGS` (or `KVM_SET_GUEST_DEBUG`)
//! never fire on these hosts, so GDB is told they are unsupported and its
//! software watchpoints (`set can-use-hw-watchpoints 0`) single-step.
//!
//! Memory access goes through the guest's page tables ([`crate::vmem`]):
//! GDB reads any mapped page and writes only where the guest could write
//! itself; the text changes only through breakpoints.
//!
//! The VM is reached only through [`DebugVm`] (`adapter.rs`); the run loop
//! calls the hooks [`session::on_exception`], [`session::after_hypercall`],
//! [`session::on_debug_exit`] and [`session::on_end`], and the control
//! plane [`listen`], [`session::handle`] and [`dump::dump`].

mod adapter;
pub mod breakpoints;
pub mod dump;
pub mod regs;
pub mod session;
mod stub;
mod target;

pub use adapter::{DebugVm, VmRefs};
pub use dump::{core_on_abort, core_on_fault, dump};
pub use session::{
    after_hypercall, handle, on_debug_exit, on_end, on_exception, without_breakpoints,
};
pub use stub::{DebugError, Listener};

use crate::control::Response;
use crate::vcpu::Outcome;
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use std::path::PathBuf;

/// A command from the GDB thread, served on the vCPU thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cmd {
    /// A debugger connected: stop the guest and start a session.
    Attach,
    /// GDB's Ctrl-C: stop the guest.
    Interrupt,
    /// Read the register file.
    ReadRegs,
    /// Write the register file.
    WriteRegs(Box<X86_64CoreRegs>),
    /// Read guest-virtual memory.
    ReadMem {
        /// Start.
        addr: u64,
        /// Bytes.
        len: u64,
    },
    /// Write guest-virtual memory.
    WriteMem {
        /// Start.
        addr: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Plant an `int3` at this address.
    AddBreak(u64),
    /// Take it out.
    RemoveBreak(u64),
    /// Run the guest again.
    Resume(Resume),
    /// End the session: breakpoints out; the guest runs on when `resume`,
    /// else stays paused (the connection broke).
    Detach {
        /// Let the guest run.
        resume: bool,
    },
    /// End the guest.
    Kill,
}

/// How the guest runs until its next stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Until a breakpoint, a fault or an interrupt.
    Continue,
    /// One instruction.
    Step,
    /// Instruction by instruction while RIP stays in `[start, end)` (GDB's
    /// range stepping: a whole source line for one round trip).
    Range {
        /// First address of the range.
        start: u64,
        /// End of the range (exclusive).
        end: u64,
    },
}

/// The vCPU thread's answer to a [`Cmd`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Done.
    Done,
    /// The register file.
    Regs(Box<X86_64CoreRegs>),
    /// Memory read (possibly fewer bytes than asked: the rest is unmapped).
    Mem(Vec<u8>),
    /// Whether a breakpoint was added or removed.
    Bool(bool),
    /// The guest is stopped; `Some` when this command stopped it.
    Stopped(Option<Stop>),
    /// The vCPU is inside an exception stub this instant; ask again.
    NotYet,
}

/// Why the guest stopped (or ended), as GDB is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A signal (SIGINT for Ctrl-C, SIGTRAP, or the one a fault maps to).
    Signal(u8),
    /// One of GDB's `int3`s; RIP is back on it.
    SwBreak,
    /// A single step (or range step) finished.
    Step,
    /// The guest exited with this status.
    Exited(u8),
    /// The guest ended otherwise (fault, panic, signal): the signal GDB shows.
    Terminated(u8),
}

/// What `duet run`/`restore` ask of the debugger.
#[derive(Debug, Default)]
pub struct DebugOptions {
    /// Serve GDB here (`--gdb`).
    pub gdb: Option<Listener>,
    /// Wait for GDB before the first instruction (`--gdb-wait`, default on).
    pub wait: bool,
    /// Write a core file here if the guest faults or panics (`--core`).
    pub core: Option<PathBuf>,
}

/// The debugger's state, kept in the VM (reached through [`DebugVm`]).
#[derive(Debug, Default)]
pub struct Debugger {
    core: Option<PathBuf>,
    link: Option<stub::Link>,
    session: Option<session::Session>,
    /// Paused only to wait for GDB before the first instruction.
    held_for_gdb: bool,
    /// GDB killed the guest: the run loop ends with this.
    end: Option<Outcome>,
}

impl Debugger {
    /// Whether a debugger holds the guest stopped (a `ctl resume` would
    /// pull it from under GDB).
    pub fn holds(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.stopped()) || self.held_for_gdb
    }

    /// The outcome GDB asked for (a kill), once.
    pub fn take_end(&mut self) -> Option<Outcome> {
        self.end.take()
    }
}

/// Applies `duet run`/`restore`'s debugger options to a built VM: the core
/// path, and the GDB server (the guest then waits for GDB unless told not).
pub fn setup(vm: &mut impl DebugVm, opts: DebugOptions) -> Result<(), DebugError> {
    let r = vm.debug_refs();
    r.debug.core = opts.core;
    if let Some(l) = opts.gdb {
        r.debug.link = Some(stub::start(l, r.ctl.clone())?);
        if opts.wait {
            *r.paused = true;
            r.debug.held_for_gdb = true;
        }
    }
    Ok(())
}

/// `duet ctl SOCKET gdb ADDR`: serve GDB on `addr` for this running guest.
pub fn listen(vm: &mut impl DebugVm, addr: &str) -> Response {
    let r = vm.debug_refs();
    if let Some(l) = &r.debug.link {
        return Response::err(format!("GDB is already served on {}", l.addr));
    }
    let started = Listener::bind(addr).and_then(|l| stub::start(l, r.ctl.clone()));
    match started {
        Ok(link) => {
            let at = link.addr.to_string();
            r.debug.link = Some(link);
            Response {
                gdb: Some(at),
                ..Response::ok()
            }
        }
        Err(e) => Response::err(e.to_string()),
    }
}
