//! Debugging a guest with GDB, and core files of a guest.
//!
//! The debugger sits above the [`Vmm`], like snapshots: it reaches the
//! guest only through the `Vmm`'s methods ([`DebugVm`], `adapter.rs`). The
//! `Vmm` owns it as a [`DebugHooks`] object and its run loop calls the
//! hooks (exceptions, hypercalls, `KVM_EXIT_DEBUG`, a death, the end);
//! that trait is all the `Vmm` knows of it.
//!
//! Two threads share the work:
//!
//! * The GDB thread (`stub.rs`) owns the TCP connection and the `gdbstub`
//!   protocol state. Its target (`target.rs`) owns nothing of the guest:
//!   each register or memory access, breakpoint or resume is a [`Cmd`] run
//!   as a job on the vCPU thread ([`crate::vmm::Control::on_vcpu`]).
//! * The vCPU thread serves those commands between two `KVM_RUN`s
//!   ([`session`]) and posts stops ([`Stop`]) back over a channel.
//!
//! A guest stopped by the debugger is a paused guest: the run loop waits
//! for jobs exactly as after `duet ctl pause`, and other control requests
//! (status, snapshot, core) are still served.
//!
//! Breakpoints and single steps use no guest code and no
//! `KVM_SET_GUEST_DEBUG` (which does not report ring-3 traps to the host on
//! this project's hosts): GDB's `int3`s are patched into the text by the
//! monitor ([`breakpoints`]), single steps set RFLAGS.TF, and both trap
//! into the monitor's own #BP/#DB stubs ([`crate::cpu::exception`]); the
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
//! The control plane calls [`setup`] (`--gdb`, `--core`), [`start`] and
//! [`attach`] (`duet ctl gdb`), [`dump()`] (`duet ctl core`) and
//! [`without_breakpoints`] (snapshots).

mod adapter;
pub mod breakpoints;
pub mod dump;
pub mod regs;
pub mod session;
mod stub;
mod target;

pub use adapter::DebugVm;
pub use dump::dump;
pub use session::without_breakpoints;
pub use stub::{DebugError, Link, Listener};

use crate::cpu::exception::Exception;
use crate::outcome::Outcome;
use crate::vmm::{DebugHooks, Vmm};
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use std::any::Any;
use std::net::SocketAddr;
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

/// The debugger's state, owned by the `Vmm` (as its [`DebugHooks`]).
#[derive(Debug, Default)]
pub struct Debugger {
    core: Option<PathBuf>,
    link: Option<stub::Link>,
    session: Option<session::Session>,
    /// Paused only to wait for GDB before the first instruction.
    held_for_gdb: bool,
}

impl DebugHooks for Debugger {
    fn on_exception(&mut self, vmm: &mut Vmm, e: &Exception) -> bool {
        session::on_exception(self, vmm, e)
    }

    #[inline]
    fn after_hypercall(&mut self, vmm: &mut Vmm) {
        session::after_hypercall(self, vmm)
    }

    fn on_debug_exit(&mut self, vmm: &mut Vmm) -> bool {
        session::on_debug_exit(self, vmm)
    }

    fn on_death(&mut self, vmm: &mut Vmm, fault: Option<&Exception>) -> Option<String> {
        dump::on_death(self, vmm, fault)
    }

    fn on_end(&mut self, _vmm: &mut Vmm, outcome: &Outcome) {
        session::on_end(self, outcome)
    }

    fn holds(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.stopped()) || self.held_for_gdb
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// Runs `f` with this guest's [`Debugger`] (taken out of the `Vmm`
/// meanwhile); `None` when it has none.
fn with<R>(vmm: &mut Vmm, f: impl FnOnce(&mut Debugger, &mut Vmm) -> R) -> Option<R> {
    vmm.with_debugger(|d, v| d.as_any().downcast_mut::<Debugger>().map(|d| f(d, v)))
        .flatten()
}

/// Applies `duet run`/`restore`'s debugger options to a built guest: the
/// core path, and the GDB server (the guest then waits for GDB unless told
/// not to).
pub fn setup(vmm: &mut Vmm, opts: DebugOptions) -> Result<(), DebugError> {
    if opts.gdb.is_none() && opts.core.is_none() {
        return Ok(());
    }
    let mut d = Debugger {
        core: opts.core,
        ..Default::default()
    };
    if let Some(l) = opts.gdb {
        d.link = Some(stub::start(l, vmm.control().clone())?);
        if opts.wait {
            vmm.pause();
            d.held_for_gdb = true;
        }
    }
    vmm.set_debugger(Box::new(d));
    Ok(())
}

/// The address this guest's GDB server listens on, if it has one.
pub fn served(vmm: &mut Vmm) -> Option<SocketAddr> {
    with(vmm, |d, _| d.link.as_ref().map(|l| l.addr)).flatten()
}

/// Starts a GDB thread on `l` for the guest behind `ctl` (`duet ctl
/// SOCKET gdb ADDR`, on the control connection's thread); [`attach`] then
/// gives it to the guest.
pub fn start(l: Listener, ctl: std::sync::Arc<crate::vmm::Control>) -> Result<Link, DebugError> {
    stub::start(l, ctl)
}

/// vCPU thread: makes `link` this guest's GDB server; returns its address.
/// If another one got there first, `link` is refused (its thread keeps
/// its port until the monitor ends, serving nothing).
pub fn attach(vmm: &mut Vmm, link: Link) -> Result<SocketAddr, DebugError> {
    if let Some(at) = served(vmm) {
        return Err(DebugError::Served(at));
    }
    let at = link.addr;
    let have = with(vmm, |_, _| ()).is_some();
    if have {
        with(vmm, |d, _| d.link = Some(link));
    } else {
        // No --gdb or --core at start: this guest's first debugger.
        vmm.set_debugger(Box::new(Debugger {
            link: Some(link),
            ..Default::default()
        }));
    }
    Ok(at)
}

/// Whether a GDB session is attached (its breakpoints may be planted).
pub fn attached(vmm: &mut Vmm) -> bool {
    with(vmm, |d, _| d.session.is_some()).unwrap_or(false)
}
