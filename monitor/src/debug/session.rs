//! The vCPU thread's side of a GDB session: serving [`Cmd`]s between two
//! `KVM_RUN`s, and turning traps into stops.

use super::breakpoints::SwBreakpoints;
use super::{regs, Cmd, DebugVm, Debugger, Reply, Resume, Stop};
use crate::coredump;
use crate::cpu::exception::{self, Exception};
use crate::outcome::Outcome;
use crate::vmem;
use crate::vmm::Vmm;
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

/// Serves one command from the GDB thread (a job on the vCPU thread).
pub(super) fn handle(vmm: &mut Vmm, cmd: Cmd) -> Result<Reply, String> {
    super::with(vmm, |d, v| serve(d, v, cmd))
        .unwrap_or_else(|| Err("this guest has no debugger".into()))
}

/// Whether the vCPU is in ring 3 (not inside an exception stub).
fn in_ring3(vcpu: &VcpuFd) -> Result<bool, String> {
    let s = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    Ok(s.cs.selector & 3 == 3)
}

fn attach(d: &mut Debugger, vm: &mut impl DebugVm) -> Result<Reply, String> {
    if d.session.is_some() {
        return Err("a debugger is already attached".into());
    }
    if vm.migrating() {
        return Err("the guest is being migrated; attach GDB once the migration is over".into());
    }
    if !in_ring3(vm.vcpu())? {
        return Ok(Reply::NotYet);
    }
    d.session = Some(Session {
        stopped: true,
        was_paused: vm.paused() && !d.held_for_gdb,
        ..Default::default()
    });
    d.held_for_gdb = false;
    vm.pause();
    Ok(Reply::Stopped(Some(Stop::Signal(SIGTRAP))))
}

fn serve(d: &mut Debugger, vm: &mut impl DebugVm, cmd: Cmd) -> Result<Reply, String> {
    if cmd == Cmd::Attach {
        return attach(d, vm);
    }
    let Some(s) = d.session.as_mut() else {
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
            if !in_ring3(vm.vcpu())? {
                return Ok(Reply::NotYet);
            }
            end_step(vm.vcpu(), s)?;
            s.stopped = true;
            vm.pause();
            Ok(Reply::Stopped(Some(Stop::Signal(SIGINT))))
        }
        Cmd::ReadRegs => {
            stopped(s)?;
            let regs = vm.vcpu().get_regs().map_err(ioctl("KVM_GET_REGS"))?;
            let sregs = vm.vcpu().get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
            let fpu = vm.vcpu().get_fpu().ok();
            let g = regs::to_gdb(&regs, &sregs, fpu.as_ref());
            Ok(Reply::Regs(Box::new(g)))
        }
        Cmd::WriteRegs(g) => {
            stopped(s)?;
            let mut regs = vm.vcpu().get_regs().map_err(ioctl("KVM_GET_REGS"))?;
            let sregs = vm.vcpu().get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
            let fpu = vm.vcpu().get_fpu().ok();
            let mut f = fpu.unwrap_or_default();
            regs::from_gdb(&g, &mut regs, &sregs, &mut f)?;
            if fpu.is_some() {
                vm.vcpu().set_fpu(&f).map_err(ioctl("KVM_SET_FPU"))?;
            }
            vm.vcpu().set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;
            Ok(Reply::Done)
        }
        Cmd::ReadMem { addr, len } => {
            let mut buf = vec![0u8; len.min(MAX_READ) as usize];
            if let Err((done, e)) = vmem::read(vm.mem(), addr, &mut buf, vmem::Need::Present) {
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
            vmem::write(vm.mem(), addr, &data).map_err(|e| {
                format!("{e}: GDB may write only memory the guest could write itself")
            })?;
            Ok(Reply::Done)
        }
        Cmd::AddBreak(addr) => Ok(Reply::Bool(s.bps.insert(vm.mem(), addr)?)),
        Cmd::RemoveBreak(addr) => Ok(Reply::Bool(s.bps.remove(vm.mem(), addr))),
        Cmd::Resume(how) => {
            stopped(s)?;
            let range = match how {
                Resume::Continue => None,
                Resume::Step => Some((0, 0)),
                Resume::Range { start, end } => Some((start, end)),
            };
            if range.is_some() {
                start_step(vm.vcpu(), s)?;
            }
            s.step = range;
            s.stopped = false;
            if let Err(e) = vm.resume() {
                s.stopped = true;
                end_step(vm.vcpu(), s)?;
                return Err(e);
            }
            Ok(Reply::Done)
        }
        Cmd::Detach { resume } => {
            let s = d.session.take().expect("checked above");
            let run_on = resume && !s.was_paused;
            cleanup(vm, s)?;
            if run_on {
                vm.resume()?;
            } else {
                // A broken session leaves the guest paused for the next one.
                vm.pause();
            }
            Ok(Reply::Done)
        }
        Cmd::Kill => {
            let s = d.session.take().expect("checked above");
            cleanup(vm, s)?;
            vm.end(Outcome::Failed("the guest was killed from GDB".into()));
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
fn cleanup(vm: &impl DebugVm, mut s: Session) -> Result<(), String> {
    s.bps.clear(vm.mem());
    end_step(vm.vcpu(), &mut s)
}

/// Stops the guest for the debugger and tells the GDB thread why.
fn stop(d: &mut Debugger, vm: &mut impl DebugVm, why: Stop) {
    if let Some(s) = d.session.as_mut() {
        s.stopped = true;
    }
    vm.pause();
    if let Some(l) = &d.link {
        l.post(why);
    }
}

/// The exception hook: with a debugger attached, a breakpoint or single
/// step stops the guest (the vCPU goes back to the ring-3 context, RIP on
/// the breakpoint) and is reported to GDB; so is a fault, once. Returns
/// whether the debugger took the exception; if not, it ends the guest as
/// usual.
pub(super) fn on_exception(d: &mut Debugger, vm: &mut impl DebugVm, e: &Exception) -> bool {
    let Some(s) = d.session.as_mut() else {
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
            return exception::resume(vm.vcpu(), &frame).is_ok();
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
    if exception::resume(vm.vcpu(), &frame).is_err() || end_step(vm.vcpu(), s).is_err() {
        return false;
    }
    log::debug!("debugger stop at {:#x}: {why:?}", frame.rip);
    stop(d, vm, why);
    true
}

/// The hypercall hook: a single step over the `out` of a hypercall ends
/// right after it. (On this project's hosts KVM completes the `out` without
/// the trap TF asks for, so the step would otherwise run one instruction on.)
#[inline]
pub(super) fn after_hypercall(d: &mut Debugger, vm: &mut impl DebugVm) {
    if d.session.as_ref().is_none_or(|s| s.step.is_none()) {
        return;
    }
    if let Err(e) = vm.complete_io() {
        log::warn!("single step over a hypercall: {e}");
        return;
    }
    let Ok(rip) = vm.vcpu().get_regs().map(|g| g.rip) else {
        return;
    };
    let Some(s) = d.session.as_mut() else {
        return;
    };
    if s.steps_on(rip) || end_step(vm.vcpu(), s).is_err() {
        return;
    }
    stop(d, vm, Stop::Step);
}

/// The hook for `KVM_EXIT_DEBUG`, which only `DUET_GDB_STEP=kvm` could
/// cause (measured: it does not here; the trap reaches the #DB stub).
/// Returns whether the debugger took it.
pub(super) fn on_debug_exit(d: &mut Debugger, vm: &mut impl DebugVm) -> bool {
    let Some(s) = d.session.as_mut().filter(|s| s.kvm_step) else {
        return false;
    };
    log::info!("single step reported by KVM_EXIT_DEBUG");
    if end_step(vm.vcpu(), s).is_err() {
        return false;
    }
    stop(d, vm, Stop::Step);
    true
}

/// Runs `f` (a snapshot) with GDB's `int3`s taken out of the text, so a
/// guest restored from it without a debugger does not trip over them.
pub fn without_breakpoints<T>(vmm: &mut Vmm, f: impl FnOnce(&mut Vmm) -> T) -> T {
    let planted = |vmm: &mut Vmm, on: bool| {
        super::with(vmm, |d, v| {
            d.session
                .as_ref()
                .map(|s| s.bps.set_planted(v.vm().mem(), on))
                .is_some()
        })
        .unwrap_or(false)
    };
    let lifted = planted(vmm, false);
    let out = f(vmm);
    if lifted {
        planted(vmm, true);
    }
    out
}

/// The run loop's end: a debugger waiting for the guest hears how it ended
/// (GDB prints the exit status) before the monitor exits.
pub(super) fn on_end(d: &mut Debugger, outcome: &Outcome) {
    let Some(s) = d.session.take() else {
        return;
    };
    let why = match outcome {
        Outcome::Exited(st) => Stop::Exited(*st),
        Outcome::AtSnapshotPoint | Outcome::Snapshotted(_) | Outcome::Migrated(_) => {
            Stop::Exited(outcome.status())
        }
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
    if let (Some(l), false) = (&d.link, s.stopped) {
        l.post(why);
        l.wait_reported();
    }
}
