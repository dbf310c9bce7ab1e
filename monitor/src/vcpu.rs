//! The vCPU run loop: `KVM_RUN`, then one decision per exit.
//!
//! The hot path is a hypercall: an `IoOut` exit on a hypercall port whose
//! 4-byte data is the argument address, read straight from the shared
//! `kvm_run` page (no extra ioctl). Anything else ends the VM with a report.

use crate::control::{Request, Response};
use crate::exception;
use crate::hypercall::{self, Flow};
use crate::report;
use crate::vm::{ioctl, Vm, VmError};
use duet_abi::hypercall::{PORT_BASE, PORT_COUNT};
use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use std::ops::{Deref, DerefMut};
use std::path::Path;

/// The vCPU: its fd plus what saving its state needs.
pub struct Vcpu {
    fd: VcpuFd,
    /// MSRs KVM can save and restore (`KVM_GET_MSR_INDEX_LIST`).
    pub(crate) msr_index: Vec<u32>,
    /// The CPUID the guest sees.
    pub(crate) cpuid: Vec<kvm_cpuid_entry2>,
}

impl Vcpu {
    /// Creates vCPU 0 of `vm` and gives it `cpuid`.
    pub fn create(kvm: &Kvm, vm: &VmFd, cpuid: &CpuId) -> Result<Self, VmError> {
        let fd = vm.create_vcpu(0).map_err(ioctl("KVM_CREATE_VCPU"))?;
        fd.set_cpuid2(cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
        Self::new(kvm, fd, cpuid)
    }

    /// Wraps vCPU `fd`, which already has `cpuid` set.
    pub fn new(kvm: &Kvm, fd: VcpuFd, cpuid: &CpuId) -> Result<Self, VmError> {
        let msr_index = kvm
            .get_msr_index_list()
            .map_err(ioctl("KVM_GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec();
        Ok(Vcpu {
            fd,
            msr_index,
            cpuid: cpuid.as_slice().to_vec(),
        })
    }
}

impl Deref for Vcpu {
    type Target = VcpuFd;
    fn deref(&self) -> &VcpuFd {
        &self.fd
    }
}

impl DerefMut for Vcpu {
    fn deref_mut(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }
}

/// How a guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest called exit with this status.
    Exited(u8),
    /// The guest aborted (panicked) with this message.
    Aborted(String),
    /// The guest took a CPU exception; the report says which and where.
    Faulted(String),
    /// The VM stopped for another reason (triple fault, bad port, ...).
    Failed(String),
    /// Template mode: the guest reached its snapshot point and was saved
    /// into this directory, then stopped.
    Snapshotted(String),
    /// The guest was live-migrated to this address and runs there now.
    Migrated(String),
    /// The monitor stopped the guest on a signal (`SIGINT`, or `SIGTERM`
    /// after the grace period).
    Terminated(crate::signals::Signal),
}

impl Outcome {
    /// The monitor's exit status for this outcome.
    pub fn status(&self) -> u8 {
        match self {
            Outcome::Exited(s) => *s,
            Outcome::Aborted(_) => crate::status::GUEST_ABORT,
            Outcome::Faulted(_) => crate::status::GUEST_FAULT,
            Outcome::Failed(_) => crate::status::VM_FAILURE,
            Outcome::Snapshotted(_) => 0,
            Outcome::Migrated(_) => crate::status::MIGRATED,
            Outcome::Terminated(sig) => crate::status::terminated(sig.number()),
        }
    }
}

/// What a single exit turned into, with borrows of the vCPU released.
enum Exit {
    Hypercall(u16, u32),
    /// KVM_RUN was interrupted by a signal: just run again.
    Retry,
    /// A debugger took the exit: run on, or wait if it stopped the guest.
    Debugger,
    Stop(Outcome),
}

impl Vm {
    /// Runs the guest until it ends, on the calling thread (the vCPU
    /// thread), serving control requests at exits.
    pub fn run(&mut self) -> Outcome {
        let run: *mut kvm_bindings::kvm_run = self.vcpu.get_kvm_run();
        self.ctl.attach_vcpu(run);
        if let Some(t) = &mut self.trace {
            t.mark("enter guest");
        }
        let outcome = self.run_loop();
        crate::debug::on_end(self, &outcome);
        if matches!(outcome, Outcome::Terminated(_)) {
            // What the guest wrote must survive the stop it did not choose.
            if let Err(e) = self.devices.flush_disks() {
                log::error!("stopping the guest: {e}");
            }
        }
        self.ctl.finish();
        // A migration thread may still read guest memory: let it stop first.
        self.ctl.migration.wait_idle();
        outcome
    }

    fn run_loop(&mut self) -> Outcome {
        loop {
            // One relaxed load: a SIGTERM/SIGINT interrupted KVM_RUN or a poll.
            if let Some(sig) = crate::signals::take() {
                if let Some(o) = self.on_signal(sig) {
                    return o;
                }
            }
            // A request waits, or the guest is paused (by a request, or
            // stopped by a debugger): serve requests until it may run.
            if self.ctl.pending() || self.paused {
                if let Some(o) = self.serve_control() {
                    return o;
                }
            }
            let exit = self.run_once();
            self.exits += 1;
            match exit {
                Exit::Hypercall(nr, value) => match hypercall::dispatch(self, nr, value) {
                    Flow::Continue => crate::debug::after_hypercall(self),
                    Flow::Stop(o) => return o,
                },
                Exit::Retry => {
                    // A requester may kick after its request was already
                    // served (it raises `pending` first, then kicks): with
                    // nothing pending, clear the stale `immediate_exit` or
                    // every KVM_RUN returns EINTR at once and the guest
                    // never runs again. `pending` is checked below, after.
                    if !self.ctl.pending() {
                        self.ctl.set_immediate_exit(false);
                    }
                }
                Exit::Debugger => {}
                Exit::Stop(o) => return o,
            }
        }
    }

    /// Runs `KVM_RUN` with `immediate_exit` set: KVM finishes the exit in
    /// progress (the `out` of the last hypercall) without entering the
    /// guest, so the saved registers point past it.
    pub(crate) fn complete_io(&mut self) -> Result<(), String> {
        if !self.ctl.set_immediate_exit(true) {
            return Err("the vCPU is not running (no kvm_run page attached)".into());
        }
        let r = match self.vcpu.run() {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(format!("KVM_RUN (completing I/O) failed: {e}")),
            Ok(exit) => Err(format!(
                "KVM_RUN with immediate_exit entered the guest ({exit:?})"
            )),
        };
        let _ = self.ctl.set_immediate_exit(false);
        r
    }

    /// The first `SIGTERM` asks a running guest to shut down and starts the
    /// grace period; anything else (`SIGINT`, a second `SIGTERM`, the grace
    /// period's end, any signal while paused) stops the guest now.
    fn on_signal(&mut self, sig: crate::signals::Signal) -> Option<Outcome> {
        use crate::signals::Signal;
        if sig != Signal::Term || self.shutdown_requested || self.paused {
            return Some(Outcome::Terminated(sig));
        }
        self.shutdown_requested = true;
        self.shutdown_unreported = true;
        let at = duet_abi::Gpa(
            crate::layout::IDENTITY_PAGE
                + std::mem::offset_of!(duet_abi::identity::IdentityPage, requests) as u64,
        );
        if let Err(e) = self
            .mem
            .write_plain_unchecked_policy(at, &duet_abi::identity::REQUEST_SHUTDOWN)
        {
            log::error!("cannot post the shutdown request: {e}");
            return Some(Outcome::Terminated(sig));
        }
        log::info!(
            "SIGTERM: asked the guest to shut down; stopping it in {:?} otherwise",
            self.stop_timeout
        );
        crate::signals::arm_grace(self.stop_timeout);
        None
    }

    /// Serves queued control requests; blocks while paused (a signal then
    /// stops the guest: it cannot shut down by itself while paused).
    fn serve_control(&mut self) -> Option<Outcome> {
        self.ctl.take_pending();
        if let Err(e) = self.complete_io() {
            return Some(Outcome::Failed(e));
        }
        loop {
            let msg = if self.paused {
                self.ctl.next_timeout(std::time::Duration::from_millis(50))
            } else {
                self.ctl.next(false)
            };
            let Some((req, tx)) = msg else {
                if !self.paused {
                    return None;
                }
                if let Some(sig) = crate::signals::take() {
                    return Some(Outcome::Terminated(sig));
                }
                continue;
            };
            let resp = self.handle_request(req);
            let _ = tx.send(resp);
            if let Some(to) = self.ctl.migration.migrated() {
                return Some(Outcome::Migrated(to));
            }
            if let Some(o) = self.debug.take_end() {
                return Some(o);
            }
        }
    }

    fn state_name(&self) -> String {
        if self.paused { "paused" } else { "running" }.to_string()
    }

    fn handle_request(&mut self, req: Request) -> Response {
        match req {
            Request::Pause => {
                self.paused = true;
                Response {
                    state: Some(self.state_name()),
                    ..Response::ok()
                }
            }
            Request::Resume if self.ctl.migration.held() => {
                Response::err("the guest is paused for a migration in progress; it resumes if the migration fails")
            }
            Request::Resume if self.debug.holds() => {
                Response::err("the guest is held for GDB (waiting for it, or stopped in it); continue it from GDB, or detach")
            }
            Request::Resume => {
                self.paused = false;
                Response {
                    state: Some(self.state_name()),
                    ..Response::ok()
                }
            }
            Request::Status => Response {
                state: Some(self.state_name()),
                uptime_s: Some(self.started.elapsed().as_secs_f64()),
                exits: Some(self.exits),
                memory_bytes: Some(self.mem.size()),
                memory_resident_bytes: Some(self.mem.resident_bytes()),
                devices: Some(
                    self.devices
                        .infos()
                        .iter()
                        .enumerate()
                        .map(|(i, d)| format!("{i}: kind {} flags {:#x}", d.kind, d.flags))
                        .collect(),
                ),
                generation: Some(self.generation),
                clone_index: Some(self.clone_index),
                ..Response::ok()
            },
            Request::Snapshot { dir } => match crate::debug::without_breakpoints(self, |vm| {
                crate::snapshot::save(vm, Path::new(&dir))
            }) {
                Ok(stats) => Response {
                    state: Some(self.state_name()),
                    snapshot_ms: Some(stats.elapsed.as_secs_f64() * 1e3),
                    snapshot_memory_bytes: Some(stats.memory_bytes),
                    ..Response::ok()
                },
                Err(e) => Response::err(e.to_string()),
            },
            Request::Migration(step) => crate::migration::source::on_request(self, step),
            Request::Gdb { addr } => crate::debug::listen(self, &addr),
            Request::Core { path } => crate::debug::dump(self, Path::new(&path)),
            Request::Debug(cmd) => crate::debug::handle(self, cmd),
            Request::Migrate(_) => Response::err("migrate is served by the API thread"),
        }
    }

    fn run_once(&mut self) -> Exit {
        match self.vcpu.run() {
            Ok(VcpuExit::IoOut(port, _)) if exception::is_stub_port(port) => {
                match exception::on_exit(self, port) {
                    Some(o) => Exit::Stop(o),
                    None => Exit::Debugger,
                }
            }
            Ok(VcpuExit::Debug(_)) => match crate::debug::on_debug_exit(self) {
                true => Exit::Debugger,
                false => Exit::Stop(Outcome::Failed(report::with_regs(
                    self,
                    "KVM_EXIT_DEBUG without a single step asked of KVM",
                ))),
            },
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
            Ok(VcpuExit::IoIn(port, _)) => Exit::Stop(Outcome::Failed(format!(
                "guest read from I/O port {port:#x}; Duet emulates no devices"
            ))),
            Ok(VcpuExit::MmioRead(addr, _)) | Ok(VcpuExit::MmioWrite(addr, _)) => Exit::Stop(Outcome::Failed(
                format!("guest touched address {addr:#x}, outside its memory (no MMIO devices are emulated)"),
            )),
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
