//! The vCPU thread's side of a GDB session: serving [`Cmd`]s between two
//! `KVM_RUN`s, and turning traps into stops.

use super::breakpoints::SwBreakpoints;
use super::{regs, Cmd, DebugVm, Reply, Resume, Stop, VmRefs};
use crate::control::Response;
use crate::coredump;
use crate::exception::{self, Exception};
use crate::vcpu::Outcome;
use crate::vmem;
use kvm_bindings::{kvm_guest_debug, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP};
use kvm_ioctls::VcpuFd;

/// RFLAGS.TF: trap after the next instruction.
const TF: u64 = 1 << 8;
/// The #DB vector.
const DEBUG: u8 = 1;
const SIGINT: u8 = 2;
const SIGTRAP: u8 = 5;
const SIGKILL: u8 = 9;
/// Most bytes one memory read may ask for.
const MAX_READ: u64 = 64 << 10;

/// One debugger's hold on the guest.
#[derive(Debug, Default)]
pub(super) struct Session {
    /// The debugger holds the guest stopped.
    stopped: bool,
    /// A single step under way, and the range it goes on in (empty for
    /// one instruction).
    step: Option<(u64, u64)>,
    /// ... through `KVM_SET_GUEST_DEBUG` instead of TF (`DUET_GDB_STEP=kvm`,
    /// kept to measure it: the trap still arrives at the #DB stub here).
    kvm_step: bool,
    /// A fault reported to GDB once: when the guest takes it again at the
    /// same place, it ends the guest as it would without a debugger.
    pass: Option<(u8, u64)>,
    /// The guest was paused by the user before GDB came.
    was_paused: bool,
    /// GDB's `int3`s.
    pub(super) bps: SwBreakpoints,
}

impl Session {
    /// Whether the debugger holds the guest stopped.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Whether a step goes on at `rip` (a range step still in its range).
    fn steps_on(&self, rip: u64) -> bool {
        self.step.is_some_and(|(a, b)| (a..b).contains(&rip))
    }
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> String {
    move |e| format!("KVM {what} failed: {e}")
}

/// Serves one command from the GDB thread.
pub fn handle(vm: &mut impl DebugVm, cmd: Cmd) -> Response {
    let mut r = vm.debug_refs();
    match serve(&mut r, cmd) {
        Ok(reply) => Response {
            debug: Some(reply),
            ..Response::ok()
        },
        Err(e) => Response::err(e),
    }
}

/// Whether the vCPU is in ring 3 (not inside an exception stub).
fn in_ring3(vcpu: &VcpuFd) -> Result<bool, String> {
    let s = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    Ok(s.cs.selector & 3 == 3)
}

fn attach(r: &mut VmRefs) -> Result<Reply, String> {
    if r.debug.session.is_some() {
        return Err("a debugger is already attached".into());
    }
    if !in_ring3(r.vcpu)? {
        return Ok(Reply::NotYet);
    }
    r.debug.session = Some(Session {
        stopped: true,
        was_paused: *r.paused && !r.debug.held_for_gdb,
        ..Default::default()
    });
    r.debug.held_for_gdb = false;
    *r.paused = true;
    Ok(Reply::Stopped(Some(Stop::Signal(SIGTRAP))))
}

fn serve(r: &mut VmRefs, cmd: Cmd) -> Result<Reply, String> {
    if cmd == Cmd::Attach {
        return attach(r);
    }
    let Some(s) = r.debug.session.as_mut() else {
        return Err("no debugger is attached".into());
    };
    let stopped = |s: &Session| match s.stopped {
        true => Ok(()),
        false => Err("the guest is running; interrupt it first".to_string()),
    };
    match cmd {
        Cmd::Attach => unreachable!("served above"),
        Cmd::Interrupt => {
            if s.stopped {
                return Ok(Reply::Stopped(None));
            }
            if !in_ring3(r.vcpu)? {
                return Ok(Reply::NotYet);
            }
            end_step(r.vcpu, s)?;
            s.stopped = true;
            *r.paused = true;
            Ok(Reply::Stopped(Some(Stop::Signal(SIGINT))))
        }
        Cmd::ReadRegs => {
            stopped(s)?;
            let regs = r.vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
            let sregs = r.vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
            let fpu = r.vcpu.get_fpu().ok();
            let g = regs::to_gdb(&regs, &sregs, fpu.as_ref());
            Ok(Reply::Regs(Box::new(g)))
        }
        Cmd::WriteRegs(g) => {
            stopped(s)?;
            let mut regs = r.vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
            let sregs = r.vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
            let fpu = r.vcpu.get_fpu().ok();
            let mut f = fpu.unwrap_or_default();
            regs::from_gdb(&g, &mut regs, &sregs, &mut f)?;
            if fpu.is_some() {
                r.vcpu.set_fpu(&f).map_err(ioctl("KVM_SET_FPU"))?;
            }
            r.vcpu.set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;
            Ok(Reply::Done)
        }
        Cmd::ReadMem { addr, len } => {
            let mut buf = vec![0u8; len.min(MAX_READ) as usize];
            if let Err((done, e)) = vmem::read(r.mem, addr, &mut buf, vmem::Need::Present) {
                if done == 0 {
                    return Err(e.to_string());
                }
                buf.truncate(done);
            }
            s.bps.unpatch(addr, &mut buf);
            Ok(Reply::Mem(buf))
        }
        Cmd::WriteMem { addr, data } => {
            stopped(s)?;
            vmem::write(r.mem, addr, &data).map_err(|e| {
                format!("{e}: GDB may write only memory the guest could write itself")
            })?;
            Ok(Reply::Done)
        }
        Cmd::AddBreak(addr) => Ok(Reply::Bool(s.bps.insert(r.mem, addr)?)),
        Cmd::RemoveBreak(addr) => Ok(Reply::Bool(s.bps.remove(r.mem, addr))),
        Cmd::Resume(how) => {
            stopped(s)?;
            let range = match how {
                Resume::Continue => None,
                Resume::Step => Some((0, 0)),
                Resume::Range { start, end } => Some((start, end)),
            };
            if range.is_some() {
                start_step(r.vcpu, s)?;
            }
            s.step = range;
            s.stopped = false;
            *r.paused = false;
            Ok(Reply::Done)
        }
        Cmd::Detach { resume } => {
            let s = r.debug.session.take().expect("checked above");
            let paused = !resume || s.was_paused;
            cleanup(r, s)?;
            *r.paused = paused;
            Ok(Reply::Done)
        }
        Cmd::Kill => {
            let s = r.debug.session.take().expect("checked above");
            cleanup(r, s)?;
            r.debug.end = Some(Outcome::Failed("the guest was killed from GDB".into()));
            *r.paused = false;
            Ok(Reply::Done)
        }
    }
}

/// Arms a single step: RFLAGS.TF, or `KVM_SET_GUEST_DEBUG` when
/// `DUET_GDB_STEP=kvm`.
fn start_step(vcpu: &VcpuFd, s: &mut Session) -> Result<(), String> {
    if std::env::var_os("DUET_GDB_STEP").is_some_and(|v| v == "kvm") {
        let dbg = kvm_guest_debug {
            control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP,
            ..Default::default()
        };
        vcpu.set_guest_debug(&dbg)
            .map_err(ioctl("KVM_SET_GUEST_DEBUG"))?;
        s.kvm_step = true;
    } else {
        let mut regs = vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
        regs.rflags |= TF;
        vcpu.set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;
    }
    Ok(())
}

/// Ends a single step (finished, or overtaken by another stop): TF off,
/// `KVM_SET_GUEST_DEBUG` off.
fn end_step(vcpu: &VcpuFd, s: &mut Session) -> Result<(), String> {
    if s.step.is_some() && !s.kvm_step {
        let mut regs = vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
        regs.rflags &= !TF;
        vcpu.set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;
    }
    if s.kvm_step {
        vcpu.set_guest_debug(&kvm_guest_debug::default())
            .map_err(ioctl("KVM_SET_GUEST_DEBUG"))?;
    }
    s.step = None;
    s.kvm_step = false;
    Ok(())
}

/// Takes every trace of a session out of the guest.
fn cleanup(r: &mut VmRefs, mut s: Session) -> Result<(), String> {
    s.bps.clear(r.mem);
    end_step(r.vcpu, &mut s)
}

/// Stops the guest for the debugger and tells the GDB thread why.
fn stop(r: &mut VmRefs, why: Stop) {
    if let Some(s) = r.debug.session.as_mut() {
        s.stopped = true;
    }
    *r.paused = true;
    if let Some(l) = &r.debug.link {
        l.post(why);
    }
}

/// The exception hook: with a debugger attached, a breakpoint or single
/// step stops the guest (the vCPU goes back to the ring-3 context, RIP on
/// the breakpoint) and is reported to GDB; so is a fault, once. Returns
/// whether the debugger took the exception; if not, it ends the guest as
/// usual.
pub fn on_exception(vm: &mut impl DebugVm, e: &Exception) -> bool {
    let mut r = vm.debug_refs();
    let Some(s) = r.debug.session.as_mut() else {
        return false;
    };
    if e.frame.cpl() != 3 {
        return false;
    }
    let mut frame = e.frame;
    let why = match frame.vector {
        exception::BREAKPOINT => {
            let at = frame.rip.wrapping_sub(1);
            if s.bps.contains(at) {
                frame.rip = at;
                Stop::SwBreak
            } else {
                Stop::Signal(SIGTRAP)
            }
        }
        DEBUG if s.steps_on(frame.rip) => {
            // A range step still in its range: on to the next instruction.
            return exception::resume(r.vcpu, &frame).is_ok();
        }
        DEBUG if s.step.is_some() => Stop::Step,
        DEBUG => Stop::Signal(SIGTRAP),
        v => {
            if s.pass == Some((v, frame.rip)) {
                return false;
            }
            s.pass = Some((v, frame.rip));
            Stop::Signal(coredump::signal_for_vector(v) as u8)
        }
    };
    if s.step.is_some() && !s.kvm_step {
        frame.rflags &= !TF;
    }
    if exception::resume(r.vcpu, &frame).is_err() || end_step(r.vcpu, s).is_err() {
        return false;
    }
    log::debug!("debugger stop at {:#x}: {why:?}", frame.rip);
    stop(&mut r, why);
    true
}

/// The hypercall hook: a single step over the `out` of a hypercall ends
/// right after it. (On this project's hosts KVM completes the `out` without
/// the trap TF asks for, so the step would otherwise run one instruction on.)
#[inline]
pub fn after_hypercall(vm: &mut impl DebugVm) {
    let stepping = vm.debug_refs().debug.session.as_ref().map(|s| s.step);
    if !matches!(stepping, Some(Some(_))) {
        return;
    }
    if let Err(e) = vm.complete_io() {
        log::warn!("single step over a hypercall: {e}");
        return;
    }
    let mut r = vm.debug_refs();
    let Ok(rip) = r.vcpu.get_regs().map(|g| g.rip) else {
        return;
    };
    let Some(s) = r.debug.session.as_mut() else {
        return;
    };
    if s.steps_on(rip) || end_step(r.vcpu, s).is_err() {
        return;
    }
    stop(&mut r, Stop::Step);
}

/// The hook for `KVM_EXIT_DEBUG`, which only `DUET_GDB_STEP=kvm` could
/// cause (measured: it does not here; the trap reaches the #DB stub).
/// Returns whether the debugger took it.
pub fn on_debug_exit(vm: &mut impl DebugVm) -> bool {
    let mut r = vm.debug_refs();
    let Some(s) = r.debug.session.as_mut().filter(|s| s.kvm_step) else {
        return false;
    };
    log::info!("single step reported by KVM_EXIT_DEBUG");
    if end_step(r.vcpu, s).is_err() {
        return false;
    }
    stop(&mut r, Stop::Step);
    true
}

/// Runs `f` (a snapshot) with GDB's `int3`s taken out of the text, so a
/// guest restored from it without a debugger does not trip over them.
pub fn without_breakpoints<V: DebugVm, T>(vm: &mut V, f: impl FnOnce(&mut V) -> T) -> T {
    let r = vm.debug_refs();
    let lifted = r
        .debug
        .session
        .as_ref()
        .map(|s| s.bps.set_planted(r.mem, false))
        .is_some();
    let out = f(vm);
    if lifted {
        let r = vm.debug_refs();
        if let Some(s) = &r.debug.session {
            s.bps.set_planted(r.mem, true);
        }
    }
    out
}

/// The run loop's end: a debugger waiting for the guest hears how it ended
/// (GDB prints the exit status) before the monitor exits.
pub fn on_end(vm: &mut impl DebugVm, outcome: &Outcome) {
    let r = vm.debug_refs();
    let Some(s) = r.debug.session.take() else {
        return;
    };
    let why = match outcome {
        Outcome::Exited(st) => Stop::Exited(*st),
        Outcome::Snapshotted(_) | Outcome::Migrated(_) => Stop::Exited(outcome.status()),
        Outcome::Faulted(_) => {
            let sig = s.pass.map_or(11, |(v, _)| coredump::signal_for_vector(v));
            Stop::Terminated(sig as u8)
        }
        Outcome::Aborted(_) => Stop::Terminated(coredump::SIGABRT as u8),
        Outcome::Terminated(sig) => Stop::Terminated(sig.number() as u8),
        Outcome::Failed(_) => Stop::Terminated(SIGKILL),
    };
    // A stopped session has GDB at its prompt, not waiting for a stop: it
    // learns from the closed connection.
    if let (Some(l), false) = (&r.debug.link, s.stopped) {
        l.post(why);
        l.wait_reported();
    }
}
