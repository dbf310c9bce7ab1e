//! The source side: the jobs the vCPU thread runs for a migration (start,
//! stop, end) and [`migrate`], which drives one attempt from the control
//! thread.
//!
//! The migration thread never touches the guest: it reads guest memory
//! through a [`MemReader`] and the dirty log through a duplicate of the VM
//! fd, both handed over by the start job. Pausing, capturing state and
//! resuming are jobs the vCPU thread runs between two `KVM_RUN`s (so an
//! in-flight hypercall completes first).

use super::protocol;
use super::sender::{Attempt, Handoff, Stopped};
use super::{wall_ns, MigrateError, MigrateRequest, Progress, Summary};
use crate::compat::DeviceSummary;
use crate::devices::Device;
use crate::memory::resident;
use crate::statefile::StateFile;
use crate::vmm::{Control, Vmm};
use std::time::Instant;

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

/// vCPU thread: dirty tracking on, hand over memory access (and the disks'
/// write tracking when their contents are copied).
fn start(vmm: &mut Vmm, copy_disks: bool) -> Result<(Handoff, bool), String> {
    vmm.begin_migration()?;
    let h = handoff(vmm, copy_disks);
    if h.is_err() {
        vmm.devices().iter().for_each(Device::stop_copy_tracking);
        vmm.end_migration();
    }
    h
}

/// The hand-over, and whether the guest was paused before (an abort
/// leaves it so).
fn handoff(vmm: &mut Vmm, copy_disks: bool) -> Result<(Handoff, bool), String> {
    let resident = resident::resident_runs(vmm.vm().mem())
        .map_err(|e| format!("cannot list guest memory: {e}"))?;
    let cpu = vmm.guest_cpu().map_err(|e| e.to_string())?;
    let hello = protocol::Hello {
        magic: protocol::MAGIC,
        protocol: protocol::PROTOCOL_VERSION,
        abi: duet_abi::ABI_VERSION,
        vendor: cpu.vendor,
        features: cpu.features,
        tsc_khz: cpu.tsc_khz,
        mem_size: vmm.vm().mem().size(),
        devices: vmm.device_infos().iter().map(DeviceSummary::of).collect(),
        copy_disks,
        nonce: [0; protocol::NONCE_LEN],
    };
    let dirty = vmm.vm().dirty_log()?;
    let mut disks = Vec::new();
    if copy_disks {
        // Tracking starts as each source is taken, before a byte is read.
        for d in vmm.devices().iter() {
            if let Some(src) = d.copy_source() {
                disks.push(src.map_err(|e| format!("cannot reopen a disk to copy it: {e}"))?);
            }
        }
        if disks.is_empty() {
            return Err("--copy-disks: the guest has no disks to copy".into());
        }
    }
    // Tracking starts before the migration thread reads the first page.
    vmm.vm_mut().set_dirty_logging(true)?;
    let h = Handoff {
        mem: vmm.vm().mem().reader(),
        dirty,
        host_dirty: vmm.vm().mem().host_dirty().clone(),
        resident,
        hello,
        disks,
    };
    Ok((h, vmm.paused()))
}

/// vCPU thread: pause the guest and capture its state; make its disk writes
/// durable and, on shared storage, hand their locks over.
fn stop(vmm: &mut Vmm, copy_disks: bool) -> Result<Stopped, String> {
    let paused_at = Instant::now();
    let paused_wall_ns = wall_ns();
    vmm.hold(None);
    let state = vmm.capture().map_err(|e| e.to_string())?;
    let blob = StateFile::from_state(&state, crate::bootinfo::random_seed()[0])
        .map_err(|e| e.to_string())?
        .encode();
    // Every write the guest made is durable before StateEnd leaves. Then
    // the locks go, so the destination can take them at commit; an abort
    // takes them back ([`finish`]).
    vmm.devices().flush().map_err(|e| e.to_string())?;
    if !copy_disks {
        // Shared storage: the destination opens these very files.
        vmm.devices().unlock();
    }
    Ok(Stopped {
        blob,
        paused_wall_ns,
        paused_at,
    })
}

/// vCPU thread: the attempt ended.
fn finish(vmm: &mut Vmm, end: End, was_paused: bool) -> Result<(), String> {
    vmm.devices().iter().for_each(Device::stop_copy_tracking);
    vmm.end_migration();
    match end {
        End::Committed(to) => {
            vmm.migrated(to);
            return Ok(());
        }
        End::Abort => {
            vmm.hold(Some(was_paused));
            // The guest runs on here: so do its device threads.
            vmm.resume_devices();
        }
        // Commit may have happened: device threads stay still until the
        // guest is resumed by hand (`Vmm::resume`).
        End::Unknown => vmm.hold(Some(true)),
    }
    // The destination locks only after commit, so this fails only if
    // another process took a disk meanwhile (or the destination after a
    // lost ack).
    if let Err(e) = vmm.devices().lock() {
        log::error!("after the failed migration: {e}");
    }
    vmm.vm_mut().set_dirty_logging(false)
}

/// Runs `f` on the vCPU thread; its `Err` becomes a state error.
fn job<R: Send + 'static>(
    ctl: &Control,
    f: impl FnOnce(&mut Vmm) -> Result<R, String> + Send + 'static,
) -> Result<R, MigrateError> {
    ctl.on_vcpu(f)
        .map_err(|_| MigrateError::Exited)?
        .map_err(MigrateError::State)
}

/// Migrates the guest behind `ctl` as `req` says, reporting each round to
/// `progress`. On any failure before commit the guest runs on here.
pub fn migrate(
    ctl: &Control,
    req: &MigrateRequest,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Summary, MigrateError> {
    let key = protocol::read_key(std::path::Path::new(&req.key_file))?;
    // The sender talks to an untrusted peer: it gets a thread of its own,
    // confined to the migration list (no files, no listening sockets, no
    // threads), while this connection thread waits.
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("duet-migrate".into())
            .spawn_scoped(s, || {
                crate::seccomp::install(crate::seccomp::Thread::Migration)
                    .map_err(|e| MigrateError::State(e.to_string()))?;
                send(ctl, req, &key, progress)
            })
            .map_err(|e| MigrateError::State(format!("cannot start the migration thread: {e}")))?
            .join()
            .unwrap_or_else(|_| Err(MigrateError::State("the migration thread panicked".into())))
    })
}

/// One attempt, on the migration thread.
fn send(
    ctl: &Control,
    req: &MigrateRequest,
    key: &[u8],
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Summary, MigrateError> {
    #[cfg(feature = "test-hooks")]
    if let Some(p) = &req.fail_at {
        if !super::FAIL_PHASES.contains(&p.as_str()) {
            return Err(MigrateError::State(format!(
                "DUET_MIGRATE_FAIL={p}: phases are {:?}",
                super::FAIL_PHASES
            )));
        }
    }
    let copy_disks = req.copy_disks;
    let (h, was_paused) = job(ctl, move |vmm| start(vmm, copy_disks))?;
    let stop = || job(ctl, move |vmm| stop(vmm, copy_disks));
    let mut attempt = Attempt::new(&stop, req, key, &h, progress);
    let result = attempt
        .run()
        .map_err(|e| e.lost("destination", attempt.phase()));
    drop(attempt);
    drop(h);
    let end = match &result {
        Ok(s) => End::Committed(s.to.clone()),
        Err(MigrateError::Unknown(_)) => End::Unknown,
        Err(_) => End::Abort,
    };
    let ended = job(ctl, move |vmm| finish(vmm, end, was_paused));
    if let (Ok(_), Err(e)) = (&result, ended) {
        log::warn!("after commit: {e}");
    }
    result
}
