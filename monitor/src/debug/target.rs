//! The `gdbstub` target on the GDB thread: every operation is a [`Cmd`]
//! run as a job on the vCPU thread (through the control block), between
//! two `KVM_RUN`s.

use super::{session, Cmd, Reply, Resume, Stop};
use crate::vmm::Control;
use gdbstub::common::Signal;
use gdbstub::stub::SingleThreadStopReason;
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadRangeStepping, SingleThreadRangeSteppingOps, SingleThreadResume,
    SingleThreadResumeOps, SingleThreadSingleStep, SingleThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, SwBreakpoint, SwBreakpointOps,
};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use gdbstub_arch::x86::X86_64_SSE;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;

/// Why a command got no answer worth having.
#[derive(Debug)]
pub(super) enum Gone {
    /// The guest has ended.
    Exited,
    /// The vCPU thread refused it (the text says why).
    Refused(String),
}

/// The target GDB talks to: a proxy for the vCPU thread.
pub(super) struct RemoteTarget {
    ctl: Arc<Control>,
    stops: Receiver<Stop>,
    wake: Arc<EventFd>,
    exited: bool,
}

impl RemoteTarget {
    pub fn new(ctl: Arc<Control>, stops: Receiver<Stop>, wake: Arc<EventFd>) -> Self {
        RemoteTarget {
            ctl,
            stops,
            wake,
            exited: false,
        }
    }

    /// Runs `cmd` on the vCPU thread and waits for its reply.
    pub fn call(&mut self, cmd: Cmd) -> Result<Reply, Gone> {
        match self.ctl.on_vcpu(move |vmm| session::handle(vmm, cmd)) {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(Gone::Refused(e)),
            Err(_) => {
                self.exited = true;
                Err(Gone::Exited)
            }
        }
    }

    /// [`call`](Self::call), asking again while the vCPU is inside an
    /// exception stub (a few microseconds).
    pub fn call_until_ready(&mut self, cmd: Cmd) -> Result<Reply, Gone> {
        for _ in 0..1000 {
            match self.call(cmd.clone())? {
                Reply::NotYet => std::thread::sleep(Duration::from_millis(1)),
                r => return Ok(r),
            }
        }
        Err(Gone::Refused(
            "the vCPU did not leave its exception stub".into(),
        ))
    }

    /// Whether the guest has ended.
    pub fn exited(&self) -> bool {
        self.exited
    }

    /// Drops stops a previous session left unread.
    pub fn forget_stops(&mut self) {
        while self.stops.try_recv().is_ok() {}
        self.clear_wake();
    }

    /// The next stop the vCPU thread posted, if any.
    pub fn next_stop(&mut self) -> Option<SingleThreadStopReason<u64>> {
        let stop = self.stops.try_recv().ok()?;
        if matches!(stop, Stop::Exited(_) | Stop::Terminated(_)) {
            self.exited = true;
        }
        Some(reason(stop))
    }

    /// The descriptor that becomes readable when a stop is posted.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Consumes the wake-up.
    pub fn clear_wake(&self) {
        let _ = self.wake.read();
    }

    /// GDB's Ctrl-C: stops the guest. A stop that happened meanwhile (a
    /// breakpoint, the guest's end) is what GDB hears.
    pub fn interrupt(&mut self) -> Result<SingleThreadStopReason<u64>, String> {
        let r = self.call_until_ready(Cmd::Interrupt);
        if let Some(stop) = self.next_stop() {
            return Ok(stop);
        }
        match r {
            Ok(Reply::Stopped(Some(stop))) => Ok(reason(stop)),
            Ok(_) => Ok(SingleThreadStopReason::Signal(Signal::SIGINT)),
            Err(Gone::Exited) => {
                // The guest ended as the interrupt came: its end is posted.
                match self.stops.recv_timeout(Duration::from_secs(1)) {
                    Ok(stop) => Ok(reason(stop)),
                    Err(_) => Err("the guest has exited".into()),
                }
            }
            Err(Gone::Refused(e)) => Err(e),
        }
    }

    fn nonfatal<T>(
        &mut self,
        cmd: Cmd,
        f: impl FnOnce(Reply) -> Option<T>,
    ) -> TargetResult<T, Self> {
        match self.call(cmd) {
            Ok(r) => f(r).ok_or(TargetError::NonFatal),
            Err(Gone::Exited) => Err(TargetError::Fatal("the guest has exited".into())),
            Err(Gone::Refused(e)) => {
                log::debug!("GDB request refused: {e}");
                Err(TargetError::NonFatal)
            }
        }
    }

    fn resume_with(&mut self, how: Resume) -> Result<(), String> {
        match self.call(Cmd::Resume(how)) {
            Ok(_) => Ok(()),
            Err(Gone::Exited) => Err("the guest has exited".into()),
            Err(Gone::Refused(e)) => Err(e),
        }
    }

    fn breakpoint(&mut self, cmd: Cmd) -> TargetResult<bool, Self> {
        self.nonfatal(cmd, |r| match r {
            Reply::Bool(v) => Some(v),
            _ => None,
        })
    }
}

fn reason(stop: Stop) -> SingleThreadStopReason<u64> {
    match stop {
        Stop::Signal(s) => SingleThreadStopReason::Signal(Signal(s)),
        Stop::SwBreak => SingleThreadStopReason::SwBreak(()),
        Stop::Step => SingleThreadStopReason::DoneStep,
        Stop::Exited(s) => SingleThreadStopReason::Exited(s),
        Stop::Terminated(s) => SingleThreadStopReason::Terminated(Signal(s)),
    }
}

impl Target for RemoteTarget {
    type Arch = X86_64_SSE;
    type Error = String;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadBase for RemoteTarget {
    fn read_registers(&mut self, regs: &mut X86_64CoreRegs) -> TargetResult<(), Self> {
        *regs = self.nonfatal(Cmd::ReadRegs, |r| match r {
            Reply::Regs(g) => Some(*g),
            _ => None,
        })?;
        Ok(())
    }

    fn write_registers(&mut self, regs: &X86_64CoreRegs) -> TargetResult<(), Self> {
        self.nonfatal(Cmd::WriteRegs(Box::new(regs.clone())), |_| Some(()))
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
        let cmd = Cmd::ReadMem {
            addr: start,
            len: data.len() as u64,
        };
        let bytes = self.nonfatal(cmd, |r| match r {
            Reply::Mem(b) => Some(b),
            _ => None,
        })?;
        let n = bytes.len().min(data.len());
        data[..n].copy_from_slice(&bytes[..n]);
        Ok(n)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8]) -> TargetResult<(), Self> {
        let cmd = Cmd::WriteMem {
            addr: start,
            data: data.to_vec(),
        };
        self.nonfatal(cmd, |_| Some(()))
    }

    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadResume for RemoteTarget {
    fn resume(&mut self, _signal: Option<Signal>) -> Result<(), String> {
        self.resume_with(Resume::Continue)
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_range_step(&mut self) -> Option<SingleThreadRangeSteppingOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadSingleStep for RemoteTarget {
    fn step(&mut self, _signal: Option<Signal>) -> Result<(), String> {
        self.resume_with(Resume::Step)
    }
}

impl SingleThreadRangeStepping for RemoteTarget {
    fn resume_range_step(&mut self, start: u64, end: u64) -> Result<(), String> {
        self.resume_with(Resume::Range { start, end })
    }
}

impl Breakpoints for RemoteTarget {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for RemoteTarget {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.breakpoint(Cmd::AddBreak(addr))
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.breakpoint(Cmd::RemoveBreak(addr))
    }
}
