//! The run loop: `KVM_RUN`, then one decision per exit.
//!
//! The hot path is a hypercall: an `IoOut` exit on a hypercall port whose
//! 4-byte data is the argument address, read straight from the shared
//! `kvm_run` page (no extra ioctl). An `out` to an exception stub's port is
//! a CPU exception. Anything else ends the VM with a report. Between exits
//! the loop looks at two flags: a signal (`SIGTERM`/`SIGINT`) and a job from
//! another thread (see [`super::control`]); a paused guest (by `duet ctl
//! pause`, or stopped in GDB) serves jobs until it may run. An attached
//! debugger hears of exceptions, hypercalls and the end ([`super::hooks`]).

use super::report;
use super::Vmm;
use crate::cpu::exception;
use crate::outcome::{Flow, Outcome};
use crate::signals::{self, Signal};
use duet_abi::hypercall::{PORT_BASE, PORT_COUNT};
use kvm_ioctls::VcpuExit;
use std::time::Duration;

/// What a single exit turned into, with borrows of the vCPU released.
enum Exit {
    Hypercall(u16, u32),
    /// An exception stub reported vector on this port.
    Exception(u16),
    /// `KVM_EXIT_DEBUG`.
    Debug,
    /// KVM_RUN was interrupted by a signal: just run again.
    Retry,
    Stop(Outcome),
}

impl Vmm {
    /// Runs the guest until it ends, on the calling thread (the vCPU
    /// thread), serving jobs from other threads at exits.
    pub fn run(&mut self) -> Outcome {
        let ie = self.vcpus[0].immediate_exit();
        self.ctl.attach(ie);
        if let Some(t) = &mut self.trace {
            t.mark("enter guest");
        }
        let outcome = self.run_loop();
        self.with_debugger(|d, v| d.on_end(v, &outcome));
        if matches!(outcome, Outcome::Terminated(_)) {
            // What the guest wrote must survive the stop it did not choose.
            if let Err(e) = self.devices.flush() {
                log::error!("stopping the guest: {e}");
            }
        }
        self.ctl.finish();
        outcome
    }

    fn run_loop(&mut self) -> Outcome {
        loop {
            // One relaxed load: a SIGTERM/SIGINT interrupted KVM_RUN or a poll.
            if let Some(sig) = signals::take() {
                if let Some(o) = self.on_signal(sig) {
                    return o;
                }
            }
            // A job waits, or the guest is paused (by a job, or stopped
            // in a debugger): serve jobs until it may run.
            if self.ctl.pending() || self.life.paused {
                if let Some(o) = self.serve_jobs() {
                    return o;
                }
            }
            let exit = self.run_once();
            self.exits += 1;
            match exit {
                Exit::Hypercall(nr, value) => match self.hypercall(nr, value) {
                    Flow::Continue if self.debugger.is_some() => {
                        self.with_debugger(|d, v| d.after_hypercall(v));
                    }
                    Flow::Continue => {}
                    Flow::Stop(o) => return o,
                },
                Exit::Exception(port) => {
                    if let Some(o) = self.exception(port) {
                        return o;
                    }
                }
                Exit::Debug => {
                    if self.with_debugger(|d, v| d.on_debug_exit(v)) != Some(true) {
                        return Outcome::Failed(report::with_regs(
                            self,
                            "KVM_EXIT_DEBUG without a debugger that asked KVM for it",
                        ));
                    }
                }
                Exit::Retry => {
                    // A requester may kick after its job was already run
                    // (it raises `pending` first, then kicks): with nothing
                    // pending, clear the stale `immediate_exit` or every
                    // KVM_RUN returns EINTR at once.
                    if !self.ctl.pending() {
                        self.ctl.set_immediate_exit(false);
                    }
                }
                Exit::Stop(o) => return o,
            }
        }
    }

    /// An exception stub's exit. An attached debugger may take it (`None`:
    /// the guest runs on, or waits stopped in the debugger); otherwise the
    /// guest's fault report (a #BP too) and, with `--core`, a core file. A
    /// stray access to such a port ends it as a VM failure.
    fn exception(&mut self, port: u16) -> Option<Outcome> {
        let e = match exception::frame::read(&self.vcpus[0], self.vm.mem(), port) {
            Ok(e) => e,
            Err(e) => return Some(Outcome::Failed(report::with_regs(self, &e.to_string()))),
        };
        if self.with_debugger(|d, v| d.on_exception(v, &e)) == Some(true) {
            return None;
        }
        let mut report = report::fault(self, &e);
        report.extend(self.with_debugger(|d, v| d.on_death(v, Some(&e))).flatten());
        Some(Outcome::Faulted(report))
    }

    /// The first `SIGTERM` asks a running guest to shut down and starts the
    /// grace period; anything else (`SIGINT`, a second `SIGTERM`, the grace
    /// period's end, any signal while paused) stops the guest now.
    fn on_signal(&mut self, sig: Signal) -> Option<Outcome> {
        if sig != Signal::Term || self.life.shutdown_requested || self.life.paused {
            return Some(Outcome::Terminated(sig));
        }
        self.life.shutdown_requested = true;
        self.life.shutdown_unreported = true;
        if let Err(e) = crate::identity::Identity::request_shutdown(self.vm.mem()) {
            log::error!("cannot post the shutdown request: {e}");
            return Some(Outcome::Terminated(sig));
        }
        log::info!(
            "SIGTERM: asked the guest to shut down; stopping it in {:?} otherwise",
            self.life.stop_timeout
        );
        signals::arm_grace(self.life.stop_timeout);
        None
    }

    /// Runs queued jobs; blocks while paused (a signal then stops the
    /// guest: it cannot shut down by itself while paused).
    fn serve_jobs(&mut self) -> Option<Outcome> {
        self.ctl.take_pending();
        if let Err(e) = self.vcpus[0].complete_io() {
            return Some(Outcome::Failed(e));
        }
        loop {
            let wait = self.life.paused.then_some(Duration::from_millis(50));
            match self.ctl.next(wait) {
                Some(job) => job(self),
                None if self.life.paused => {
                    if let Some(sig) = signals::take() {
                        return Some(Outcome::Terminated(sig));
                    }
                }
                None => return None,
            }
            if let Some(to) = self.life.migrated_to.take() {
                return Some(Outcome::Migrated(to));
            }
            if let Some(o) = self.life.ended.take() {
                return Some(o);
            }
        }
    }

    fn run_once(&mut self) -> Exit {
        match self.vcpus[0].run() {
            Ok(VcpuExit::IoOut(port, _)) if exception::is_stub_port(port) => {
                Exit::Exception(port)
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if !(PORT_BASE..PORT_BASE + PORT_COUNT).contains(&port) {
                    return Exit::Stop(Outcome::Failed(format!(
                        "guest wrote to I/O port {port:#x}, which is not a hypercall port; Duet emulates no devices"
                    )));
                }
                match <[u8; 4]>::try_from(data) {
                    Ok(b) => Exit::Hypercall(port - PORT_BASE, u32::from_le_bytes(b)),
                    Err(_) => Exit::Stop(Outcome::Failed(format!(
                        "guest made hypercall {} with a {}-byte `out`; hypercalls are 32-bit `out dx, eax`",
                        port - PORT_BASE,
                        data.len()
                    ))),
                }
            }
            Ok(VcpuExit::Debug(_)) => Exit::Debug,
            Ok(VcpuExit::IoIn(port, _)) => Exit::Stop(Outcome::Failed(format!(
                "guest read from I/O port {port:#x}; Duet emulates no devices"
            ))),
            Ok(VcpuExit::MmioRead(addr, _)) | Ok(VcpuExit::MmioWrite(addr, _)) => {
                Exit::Stop(Outcome::Failed(format!(
                    "guest touched address {addr:#x}, outside its memory (no MMIO devices are emulated)"
                )))
            }
            Ok(VcpuExit::Hlt) => Exit::Stop(Outcome::Failed(report::with_regs(
                self,
                "guest executed HLT; a Duet guest ends with the exit hypercall",
            ))),
            Ok(VcpuExit::Shutdown) => Exit::Stop(Outcome::Failed(report::with_regs(
                self,
                "guest triple-faulted (an exception could not be delivered: broken IDT/stack or a fault inside an exception stub)",
            ))),
            Ok(VcpuExit::InternalError) => Exit::Stop(Outcome::Failed(report::with_regs(
                self,
                "KVM internal error (the instruction emulator failed; ring-0 SSE is a known cause on nested hosts)",
            ))),
            Ok(VcpuExit::FailEntry(reason, _)) => Exit::Stop(Outcome::Failed(format!(
                "KVM refused to enter the guest (hardware entry failure reason {reason:#x}); the vCPU state is invalid"
            ))),
            Ok(other) => Exit::Stop(Outcome::Failed(format!("unexpected VM exit: {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Retry,
            Err(e) => Exit::Stop(Outcome::Failed(format!("KVM_RUN failed: {e}"))),
        }
    }
}
