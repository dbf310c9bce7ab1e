//! The `Vmm`: one guest, owning its components — the [`Vm`] (KVM side and
//! guest memory), the vCPUs, the devices, the page tables, the heap, the
//! clock, the identity and the monitor's own counters — and running it.
//!
//! * [`boot`]: building a guest from an image (the boot path);
//! * [`run`]: the run loop, exits, signals and jobs from [`control`];
//! * [`dispatch`]: the one `match` from hypercall number to handler;
//! * [`state`]: [`Vmm::capture`] and [`Vmm::assemble`], the only door for
//!   snapshots and migrations, built on each component's `Persist`;
//! * [`report`]: how a guest died, in words (with a backtrace);
//! * [`hooks`]: what the run loop tells an attached debugger.

mod boot;
pub mod control;
mod dispatch;
pub(crate) mod guest;
pub mod hooks;
pub mod report;
mod run;
pub(crate) mod state;

pub use boot::BootError;
pub use control::{Control, Exited};
pub use hooks::DebugHooks;
pub use state::{Parts, VmmState, MAX_VCPUS};

use crate::clock::GuestClock;
use crate::cpu::vcpu::Vcpu;
use crate::devices::Devices;
use crate::heap::Heap;
use crate::identity::Identity;
use crate::loader::Image;
use crate::outcome::Outcome;
use crate::paging::PageTables;
use crate::trace::BootTrace;
use crate::vm::Vm;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a guest's life stands, as the run loop and the control plane see it.
#[derive(Debug)]
struct Life {
    /// Paused by the control API (or held by a migration).
    paused: bool,
    /// A migration holds the guest paused: `resume` is refused.
    held: bool,
    /// Making a template: stop at the guest's snapshot point.
    template: bool,
    /// A `SIGTERM` asked the guest to shut down.
    shutdown_requested: bool,
    /// ... and its next poll has not yet been told (`READY_SHUTDOWN`).
    shutdown_unreported: bool,
    /// How long a guest asked to shut down may take before it is stopped.
    stop_timeout: Duration,
    /// A migration is in progress (one at a time).
    migrating: bool,
    /// A migration committed: the guest runs there now.
    migrated_to: Option<String>,
    /// A job ended the guest (GDB's `kill`): the run loop ends with this.
    ended: Option<Outcome>,
}

/// One guest and everything that runs it.
pub struct Vmm {
    // Drop order: vCPUs and devices before the VM (whose own order closes
    // the VM fd before unmapping guest memory).
    vcpus: Vec<Vcpu>,
    devices: Devices,
    image: Image,
    pt: PageTables,
    heap: Heap,
    clock: GuestClock,
    identity: Identity,
    /// Exits handled so far (carried across snapshots).
    exits: u64,
    /// When this monitor started or restored the guest.
    started: Instant,
    ctl: Arc<Control>,
    trace: Option<BootTrace>,
    life: Life,
    /// GDB, core files (see [`hooks`]).
    debugger: Option<Box<dyn DebugHooks>>,
    vm: Vm,
}

/// The guest as `duet ctl status` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// `running` or `paused`.
    pub state: &'static str,
    /// Seconds since the guest was booted or restored here.
    pub uptime_s: f64,
    /// VM exits handled (carried across snapshots).
    pub exits: u64,
    /// Guest memory size.
    pub memory_bytes: u64,
    /// Guest memory the host has populated.
    pub memory_resident_bytes: u64,
    /// One line per device-table entry.
    pub devices: Vec<String>,
    /// Restores so far.
    pub generation: u64,
    /// This guest's index among clones.
    pub clone_index: u32,
}

impl Vmm {
    /// `running` or `paused`.
    pub fn state_name(&self) -> &'static str {
        if self.life.paused {
            "paused"
        } else {
            "running"
        }
    }

    /// What `status` reports.
    pub fn status(&self) -> Status {
        Status {
            state: self.state_name(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            exits: self.exits,
            memory_bytes: self.vm.mem().size(),
            memory_resident_bytes: self.vm.mem().resident_bytes(),
            devices: self
                .devices
                .iter()
                .enumerate()
                .map(|(i, d)| format!("{i}: {}", d.describe()))
                .collect(),
            generation: self.identity.generation,
            clone_index: self.identity.clone_index,
        }
    }

    /// Stops running the guest (idempotent).
    pub fn pause(&mut self) {
        self.life.paused = true;
    }

    /// Runs the guest again; refused while a migration holds it, or a
    /// debugger (one that calls this from its own hook is not in the way:
    /// see [`Vmm::with_debugger`]).
    pub fn resume(&mut self) -> Result<(), &'static str> {
        if self.life.held {
            return Err("the guest is paused for a migration in progress; it resumes if the migration fails");
        }
        if self.debugger_holds() {
            return Err("the guest is held for GDB (waiting for it, or stopped in it); continue it from GDB, or detach");
        }
        self.life.paused = false;
        // Device threads held after a capture (a migration whose end is
        // unknown) go on with the guest.
        self.devices.resume();
        Ok(())
    }

    /// Ends the guest with `outcome` once the current job is done (GDB's
    /// `kill`).
    pub fn end(&mut self, outcome: Outcome) {
        self.life.ended = Some(outcome);
    }

    /// Whether a migration is in progress.
    pub fn migrating(&self) -> bool {
        self.life.migrating
    }

    /// Whether the guest is paused.
    pub fn paused(&self) -> bool {
        self.life.paused
    }

    /// A migration holds the guest paused (`resume` refused) until it ends;
    /// `None` when it ends: back to `paused` as it was.
    pub fn hold(&mut self, was_paused: Option<bool>) {
        match was_paused {
            None => {
                self.life.held = true;
                self.life.paused = true;
            }
            Some(p) => {
                self.life.held = false;
                self.life.paused = p;
            }
        }
    }

    /// Marks a migration as started; refused while one runs.
    pub fn begin_migration(&mut self) -> Result<(), &'static str> {
        if self.life.migrating {
            return Err("a migration is already in progress");
        }
        self.life.migrating = true;
        Ok(())
    }

    /// Marks the migration as over (whatever its end).
    pub fn end_migration(&mut self) {
        self.life.migrating = false;
    }

    /// A migration committed: the run loop ends with `Migrated(to)`.
    pub fn migrated(&mut self, to: String) {
        self.life.held = false;
        self.life.paused = true;
        self.life.migrated_to = Some(to);
    }

    /// Makes this a template run: the guest stops at its snapshot point.
    pub fn set_template(&mut self, on: bool) {
        self.life.template = on;
    }

    /// Sets the grace period a guest gets after `SIGTERM` (`--stop-timeout`).
    pub fn set_stop_timeout(&mut self, d: Duration) {
        self.life.stop_timeout = d;
    }

    /// Takes the boot trace, if tracing.
    pub fn take_trace(&mut self) -> Option<BootTrace> {
        self.trace.take()
    }

    /// The first vCPU (the only one today).
    pub fn vcpu(&self) -> &Vcpu {
        &self.vcpus[0]
    }

    /// The first vCPU, to finish its last exit (`Vcpu::complete_io`).
    pub fn vcpu_mut(&mut self) -> &mut Vcpu {
        &mut self.vcpus[0]
    }

    /// The image the guest runs (its symbols).
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// The KVM side and guest memory.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The KVM side, to switch dirty logging (a migration).
    pub fn vm_mut(&mut self) -> &mut Vm {
        &mut self.vm
    }

    /// The devices, through their trait.
    pub fn devices(&self) -> &Devices {
        &self.devices
    }

    /// The control block.
    pub fn control(&self) -> &Arc<Control> {
        &self.ctl
    }

    /// The boot info's device table.
    pub fn device_infos(&self) -> Vec<duet_abi::boot::DeviceInfo> {
        self.devices.infos()
    }

    /// The CPU the guest sees (for a migration's handshake).
    pub fn guest_cpu(&self) -> Result<crate::compat::GuestCpu, crate::persist::StateError> {
        let v = &self.vcpus[0];
        let (vendor, features) = crate::compat::signature(v.cpuid());
        let tsc_khz = v
            .get_tsc_khz()
            .map_err(crate::persist::kvm_err("KVM_GET_TSC_KHZ"))?;
        Ok(crate::compat::GuestCpu {
            vendor,
            features,
            tsc_khz: u64::from(tsc_khz),
        })
    }
}

impl Life {
    fn new() -> Self {
        Life {
            paused: false,
            held: false,
            template: false,
            shutdown_requested: false,
            shutdown_unreported: false,
            stop_timeout: crate::signals::DEFAULT_STOP_TIMEOUT,
            migrating: false,
            migrated_to: None,
            ended: None,
        }
    }
}
