//! The source side: the vCPU thread's steps ([`on_request`]) and the
//! migration thread that drives the attempt ([`migrate`]).
//!
//! The migration thread never touches the VM: it reads guest memory through
//! a clone of the memory object and reads the dirty log through a duplicate
//! of the VM fd, both handed over by the vCPU thread at [`Step::Start`].
//! Pausing, capturing state and resuming are requests the vCPU thread
//! serves between two `KVM_RUN`s (so an in-flight hypercall completes first).

use super::dirty::HostDirty;
use super::protocol;
use super::{wall_ns, MigrateError, MigrateRequest, Progress, Slot, Summary};
use crate::control::{Control, Request, Response};
use crate::snapshot::format::Tag;
use crate::snapshot::persist::Persist;
use crate::snapshot::{cpu_signature, SnapshotError};
use crate::vm::Vm;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;
use vm_memory::GuestMemoryMmap;

/// A step the vCPU thread performs for the migration thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Start dirty tracking and hand over memory access (and the disks'
    /// write tracking when their contents are copied: `--copy-disks`).
    Start {
        /// Whether the disks' contents are copied.
        copy_disks: bool,
    },
    /// Pause the guest and capture its state.
    Stop,
    /// The attempt ended.
    End(End),
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The destination acknowledged commit: stop this guest for good.
    Committed(String),
    /// Failed before commit: run on as before.
    Abort,
    /// Commit not acknowledged: stay paused.
    Unknown,
}

/// What the vCPU thread hands over at [`Step::Start`].
pub struct Handoff {
    pub(super) mem: GuestMemoryMmap<()>,
    pub(super) vm: VmFd,
    pub(super) size: u64,
    pub(super) host_dirty: Arc<HostDirty>,
    pub(super) resident: Vec<(u64, u64)>,
    pub(super) hello: protocol::Hello,
    /// The disks whose contents are copied (`--copy-disks`), in device order.
    pub(super) disks: Vec<DiskCopy>,
}

/// One disk copied to the destination (`--copy-disks`).
pub(super) struct DiskCopy {
    /// A second descriptor of the disk file, read with `pread`.
    pub(super) file: std::fs::File,
    /// Its size in bytes.
    pub(super) capacity: u64,
    /// The 4 KiB units the guest wrote since tracking started.
    pub(super) dirty: Arc<HostDirty>,
}

/// The state captured at [`Step::Stop`].
pub(super) struct Stopped {
    pub(super) blob: Vec<u8>,
    pub(super) paused_wall_ns: u64,
    pub(super) paused_at: Instant,
}

/// Shared between the two threads (inside [`Slot`]).
#[derive(Default)]
pub struct SlotState {
    pub(super) active: bool,
    pub(super) handoff: Option<Handoff>,
    pub(super) stopped: Option<Stopped>,
    pub(super) was_paused: bool,
    /// The disks' contents are copied: the source keeps its disk locks.
    pub(super) copy_disks: bool,
    /// Paused for migration: `resume` is refused until the attempt ends.
    pub(super) held: bool,
    pub(super) migrated_to: Option<String>,
}

impl Slot {
    /// Whether the guest is held paused by a migration (resume refused).
    pub fn held(&self) -> bool {
        self.lock().held
    }

    /// vCPU thread: the address the guest migrated to, once committed.
    pub fn migrated(&self) -> Option<String> {
        self.lock().migrated_to.take()
    }

    /// vCPU thread, after the guest ended: waits until no migration thread
    /// reads guest memory any more, so the memory can be unmapped.
    pub fn wait_idle(&self) {
        let mut s = self.lock();
        while s.active {
            s = self.idle.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn release(&self) {
        let mut s = self.lock();
        s.active = false;
        s.handoff = None;
        s.stopped = None;
        self.idle.notify_all();
    }
}

fn set_dirty_log(vm: &Vm, on: bool) -> Result<(), String> {
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
        guest_phys_addr: 0,
        memory_size: vm.mem.size(),
        userspace_addr: vm.mem.host_base(),
    };
    // SAFETY: the same region `register_memory` registered (our own mapping,
    // alive as long as the VM); only the flags change.
    unsafe { vm._vm.set_user_memory_region(region) }
        .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION (dirty log {on}) failed: {e}"))?;
    vm.mem.host_dirty.set(on);
    Ok(())
}

/// vCPU thread: serves one migration step.
pub(crate) fn on_request(vm: &mut Vm, step: Step) -> Response {
    let r = match step {
        Step::Start { copy_disks } => start(vm, copy_disks),
        Step::Stop => stop(vm),
        Step::End(end) => finish(vm, end),
    };
    match r {
        Ok(()) => Response {
            state: Some(if vm.paused { "paused" } else { "running" }.into()),
            ..Response::ok()
        },
        Err(e) => Response::err(e),
    }
}

fn start(vm: &mut Vm, copy_disks: bool) -> Result<(), String> {
    if vm.ctl.migration.lock().active {
        return Err("a migration is already in progress".into());
    }
    // SAFETY: dup of our own open VM fd; the new fd is owned by the VmFd below.
    let fd = unsafe { libc::dup(vm._vm.as_raw_fd()) };
    if fd < 0 {
        return Err(format!(
            "cannot duplicate the VM fd: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` is a fresh duplicate of a KVM VM fd, owned by nobody else.
    let vm_fd = unsafe { vm._kvm.create_vmfd_from_rawfd(fd) }
        .map_err(|e| format!("cannot wrap the VM fd: {e}"))?;
    let mut resident = Vec::new();
    crate::snapshot::memfile::for_each_resident(&vm.mem, |p, n| {
        resident.push((p, n));
        Ok(())
    })
    .map_err(|e| format!("cannot list guest memory: {e}"))?;
    let (vendor, features) = cpu_signature(&vm.vcpu.cpuid);
    let tsc_khz = vm
        .vcpu
        .get_tsc_khz()
        .map_err(|e| format!("KVM_GET_TSC_KHZ failed: {e}"))?;
    let hello = protocol::Hello {
        magic: protocol::MAGIC,
        protocol: protocol::PROTOCOL_VERSION,
        abi: duet_abi::ABI_VERSION,
        vendor,
        features,
        tsc_khz: u64::from(tsc_khz),
        mem_size: vm.mem.size(),
        devices: device_lines(vm),
        copy_disks,
        nonce: [0; protocol::NONCE_LEN],
    };
    let mut disks = Vec::new();
    if copy_disks {
        for d in &vm.devices.list {
            if let crate::devices::Device::Block(b) = d {
                let (file, capacity, dirty) = b
                    .copy_source()
                    .map_err(|e| format!("cannot reopen a disk to copy it: {e}"))?;
                disks.push(DiskCopy {
                    file,
                    capacity,
                    dirty,
                });
            }
        }
        if disks.is_empty() {
            return Err("--copy-disks: the guest has no disks to copy".into());
        }
    }
    // Tracking starts before the migration thread reads the first page
    // (or disk byte).
    set_dirty_log(vm, true)?;
    for d in &disks {
        d.dirty.set(true);
    }
    let mut s = vm.ctl.migration.lock();
    s.active = true;
    s.was_paused = vm.paused;
    s.copy_disks = copy_disks;
    s.handoff = Some(Handoff {
        mem: vm.mem.inner().clone(),
        vm: vm_fd,
        size: vm.mem.size(),
        host_dirty: vm.mem.host_dirty.clone(),
        resident,
        hello,
        disks,
    });
    Ok(())
}

fn device_lines(vm: &Vm) -> Vec<String> {
    vm.devices
        .infos()
        .iter()
        .map(|d| {
            if d.kind == duet_abi::boot::DeviceKind::Block as u32 {
                format!(
                    "kind {} flags {:#x} capacity {}",
                    d.kind, d.flags, d.capacity
                )
            } else {
                format!("kind {} flags {:#x}", d.kind, d.flags)
            }
        })
        .collect()
}

/// Captures what a snapshot's state file holds, minus the memory pages
/// (those travel as page frames).
fn capture(vm: &mut Vm) -> Result<Vec<u8>, SnapshotError> {
    let mut state = crate::snapshot::capture_state(vm, crate::bootinfo::random_seed()[0])?;
    state.put(Tag::Memory, &vm.mem.save()?)?;
    Ok(state.encode())
}

fn stop(vm: &mut Vm) -> Result<(), String> {
    if !vm.ctl.migration.lock().active {
        return Err("no migration in progress".into());
    }
    let paused_at = Instant::now();
    let paused_wall_ns = wall_ns();
    vm.paused = true;
    let blob = capture(vm).map_err(|e| e.to_string())?;
    // The disk flush marker: every write the guest made is durable before
    // StateEnd leaves. Then the locks go, so the destination can take them
    // at commit; an abort takes them back ([`finish`]).
    vm.devices.flush_disks()?;
    let mut s = vm.ctl.migration.lock();
    if !s.copy_disks {
        // Shared storage: the destination opens these very files.
        vm.devices.unlock_disks();
    }
    s.held = true;
    s.stopped = Some(Stopped {
        blob,
        paused_wall_ns,
        paused_at,
    });
    Ok(())
}

fn finish(vm: &mut Vm, end: End) -> Result<(), String> {
    // Disk write tracking off, whatever the end.
    for d in &vm.devices.list {
        if let crate::devices::Device::Block(b) = d {
            b.write_tracking().set(false);
        }
    }
    let was_paused = {
        let mut s = vm.ctl.migration.lock();
        s.held = false;
        s.was_paused
    };
    match end {
        End::Committed(to) => {
            vm.paused = true;
            vm.ctl.migration.lock().migrated_to = Some(to);
            Ok(())
        }
        End::Abort => {
            vm.paused = was_paused;
            relock(vm);
            set_dirty_log(vm, false)
        }
        End::Unknown => {
            vm.paused = true;
            relock(vm);
            set_dirty_log(vm, false)
        }
    }
}

/// Takes the disks' locks back after an attempt that did not commit. The
/// destination locks only after commit, so this fails only if another
/// process took a disk meanwhile (or the destination after a lost ack).
fn relock(vm: &Vm) {
    if let Err(e) = vm.devices.lock_disks() {
        log::error!("after the failed migration: {e}");
    }
}

pub(super) fn step(ctl: &Control, s: Step) -> Result<(), MigrateError> {
    let r = ctl.request(Request::Migration(s));
    if r.ok {
        Ok(())
    } else {
        Err(MigrateError::State(
            r.error.unwrap_or_else(|| "the vCPU thread refused".into()),
        ))
    }
}

/// Migrates the guest behind `ctl` as `req` says, reporting each round to
/// `progress`. On any failure before commit the guest runs on here.
pub fn migrate(
    ctl: &Control,
    req: &MigrateRequest,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Summary, MigrateError> {
    let key = protocol::read_key(std::path::Path::new(&req.key_file))?;
    if let Some(p) = &req.fail_at {
        if !super::FAIL_PHASES.contains(&p.as_str()) {
            return Err(MigrateError::State(format!(
                "DUET_MIGRATE_FAIL={p}: phases are {:?}",
                super::FAIL_PHASES
            )));
        }
    }
    step(
        ctl,
        Step::Start {
            copy_disks: req.copy_disks,
        },
    )?;
    let handoff = ctl.migration.lock().handoff.take();
    let result = match handoff {
        Some(h) => {
            let mut a = super::sender::Attempt::new(ctl, req, &key, &h, progress);
            let r = a.run();
            drop(h);
            r
        }
        None => Err(MigrateError::State(
            "the vCPU thread handed over nothing".into(),
        )),
    };
    let end = match &result {
        Ok(s) => End::Committed(s.to.clone()),
        Err(MigrateError::Unknown(_)) => End::Unknown,
        Err(_) => End::Abort,
    };
    let ended = step(ctl, Step::End(end));
    ctl.migration.release();
    if let (Ok(_), Err(e)) = (&result, ended) {
        log::warn!("after commit: {e}");
    }
    result
}
