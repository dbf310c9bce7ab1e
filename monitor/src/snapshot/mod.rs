//! Snapshots: capture a paused guest to a directory, restore it lazily.
//!
//! A snapshot is a directory with two files (see `docs/snapshots.md`):
//! `state` ([`format`]: a versioned header, then one checksummed section per
//! component, each saved through [`persist::Persist`]) and `memory`
//! ([`memfile`]: only populated pages, page-aligned, mapped `MAP_PRIVATE`
//! on restore so restore cost does not grow with guest memory).
//!
//! Saving runs on the vCPU thread between two `KVM_RUN`s, so it never splits
//! a hypercall. Restoring builds a fresh VM from the files, then bumps the
//! generation, rewrites the clock page (monotonic time continues, wall time
//! is the host's) and gives the guest a new identity (seed, clone index).

pub mod format;
pub mod memfile;
pub mod persist;

use crate::control::Control;
use crate::loader::{Image, LoadError};
use crate::trace::BootTrace;
use crate::vm::Vm;
use format::{Header, StateFile, Tag};
use kvm_bindings::kvm_cpuid_entry2;
use memfile::MemIndex;
use persist::{ClockArgs, GuestClock, MemArgs, MemState, Persist, VcpuState};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Name of the state file in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// Name of the memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// Largest state file accepted (it holds registers, the image and indexes).
const MAX_STATE_FILE: u64 = 256 << 20;

/// Why a snapshot could not be taken or restored.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// The target exists.
    #[error(
        "{0} already exists; snapshots never overwrite: pick a new directory or remove the old one"
    )]
    Exists(String),
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Not a snapshot at all.
    #[error("{0}")]
    NotSnapshot(String),
    /// A file is shorter than it says.
    #[error("{file} is truncated ({detail}); the snapshot is incomplete, take it again")]
    Truncated {
        /// The file.
        file: String,
        /// What is missing.
        detail: String,
    },
    /// A checksum does not match.
    #[error("{file}: checksum mismatch in {section}; the snapshot is corrupt, take it again")]
    Corrupt {
        /// The file.
        file: String,
        /// Which part.
        section: String,
    },
    /// Written by another snapshot format.
    #[error("snapshot format version {found}, this duet reads version {want}; restore it with the duet that wrote it")]
    FormatVersion {
        /// In the file.
        found: u32,
        /// Ours.
        want: u32,
    },
    /// Written for another guest ABI.
    #[error("snapshot is of a guest built for ABI version {found}, this duet speaks version {want}; restore it with a matching duet")]
    AbiVersion {
        /// In the file.
        found: u32,
        /// Ours.
        want: u32,
    },
    /// Another CPU vendor.
    #[error("snapshot was taken on a {snap} CPU, this host has a {host} CPU; restore it on a host like the one that took it")]
    CpuVendor {
        /// In the file.
        snap: String,
        /// The host's.
        host: String,
    },
    /// The host lacks CPU features the guest saw.
    #[error("snapshot's guest saw CPU features this host lacks (CPUID {leaf}: bits {missing:#x}); restore it on a host with at least the same CPU")]
    CpuFeatures {
        /// Which CPUID word.
        leaf: &'static str,
        /// Missing bits.
        missing: u32,
    },
    /// The TSC frequency cannot be matched.
    #[error("snapshot's guest TSC runs at {snap} kHz and this host's at {host} kHz, which KVM cannot match ({why}); restore it on a host with the same or a faster TSC")]
    Tsc {
        /// In the file.
        snap: u64,
        /// The host's.
        host: u64,
        /// KVM's answer.
        why: String,
    },
    /// A file the snapshot refers to is gone (a disk image).
    #[error("the snapshot refers to {0}, which does not exist; put the file back where it was")]
    MissingFile(String),
    /// A value in the snapshot is impossible.
    #[error("invalid snapshot: {0}")]
    Invalid(String),
    /// The embedded image is invalid.
    #[error("invalid snapshot: its image: {0}")]
    Image(#[from] LoadError),
    /// KVM refused an operation.
    #[error("KVM: {0}")]
    Kvm(String),
}

impl SnapshotError {
    /// An I/O error on `path`.
    pub fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        SnapshotError::Io {
            what,
            path: path.display().to_string(),
            source,
        }
    }
}

/// The monitor's own state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorState {
    /// Exits handled so far.
    pub exits: u64,
    /// The heap: bounds, protected pages.
    pub heap: crate::heap::Heap,
    /// Page-table allocator position.
    pub page_tables: u64,
    /// Restores so far.
    pub generation: u64,
    /// Clone index of the guest that was saved.
    pub clone_index: u32,
}

#[derive(Serialize, Deserialize)]
struct MemSection {
    state: MemState,
    index: MemIndex,
}

/// What a save did.
#[derive(Clone, Copy, Debug)]
pub struct SaveStats {
    /// Wall time it took.
    pub elapsed: Duration,
    /// Bytes of guest memory written.
    pub memory_bytes: u64,
}

/// The vendor string and feature words of a CPUID table.
pub fn cpu_signature(cpuid: &[kvm_cpuid_entry2]) -> ([u8; 12], [u32; 6]) {
    let leaf = |f: u32, i: u32| cpuid.iter().find(|e| e.function == f && e.index == i);
    let mut vendor = [0u8; 12];
    if let Some(e) = leaf(0, 0) {
        vendor[..4].copy_from_slice(&e.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&e.edx.to_le_bytes());
        vendor[8..].copy_from_slice(&e.ecx.to_le_bytes());
    }
    let (l1, l7, lx) = (leaf(1, 0), leaf(7, 0), leaf(0x8000_0001, 0));
    let features = [
        l1.map_or(0, |e| e.ecx),
        l1.map_or(0, |e| e.edx),
        l7.map_or(0, |e| e.ebx),
        l7.map_or(0, |e| e.ecx),
        l7.map_or(0, |e| e.edx),
        lx.map_or(0, |e| e.ecx),
    ];
    (vendor, features)
}

const FEATURE_NAMES: [&str; 6] = [
    "1 ECX",
    "1 EDX",
    "7 EBX",
    "7 ECX",
    "7 EDX",
    "0x80000001 ECX",
];

/// Captures every component's state except guest memory, with the guest
/// stopped between two `KVM_RUN`s (the last hypercall's `out` completed
/// first). Snapshots add the memory file; migration streams the pages.
/// Disk paths are made absolute: the state may be used from another
/// directory or on another host.
pub(crate) fn capture_state(vm: &mut Vm, id: u64) -> Result<StateFile, SnapshotError> {
    vm.complete_io().map_err(SnapshotError::Kvm)?;
    let vcpu = vm.vcpu.save()?;
    let kvm_clock = vm
        ._vm
        .get_clock()
        .map_err(|e| SnapshotError::Kvm(format!("KVM_GET_CLOCK failed: {e}")))?;
    let (vendor, features) = cpu_signature(&vcpu.cpuid);
    let monitor = MonitorState {
        exits: vm.exits,
        heap: vm.heap.clone(),
        page_tables: vm.pt.save()?,
        generation: vm.generation,
        clone_index: vm.clone_index,
    };
    let mut state = StateFile {
        header: Header {
            format_version: format::FORMAT_VERSION,
            abi_version: duet_abi::ABI_VERSION,
            vendor,
            features,
            tsc_khz: u64::from(vcpu.tsc_khz),
            snapshot_id: id,
        },
        sections: Vec::new(),
    };
    state.put(Tag::Vcpu, &vcpu)?;
    state.put(Tag::KvmClock, &kvm_clock)?;
    state.put(Tag::Clock, &GuestClock { page: vm.clock }.save()?)?;
    state.put(Tag::Monitor, &monitor)?;
    state
        .sections
        .push((Tag::Image as u32, vm.image.bytes().to_vec()));
    let mut devices = vm.devices.save()?;
    for d in &mut devices {
        if let crate::devices::DeviceState::Block { spec, .. } = d {
            if let Ok(p) = std::path::absolute(&spec.path) {
                spec.path = p;
            }
        }
    }
    state.put(Tag::Devices, &devices)?;
    Ok(state)
}

/// Snapshots `vm` into a new directory `dir`. Runs on the vCPU thread with
/// the guest stopped; the guest can go on afterwards.
pub fn save(vm: &mut Vm, dir: &Path) -> Result<SaveStats, SnapshotError> {
    let t0 = Instant::now();
    if dir.symlink_metadata().is_ok() {
        return Err(SnapshotError::Exists(dir.display().to_string()));
    }
    let id = crate::bootinfo::random_seed()[0];
    let mut state = capture_state(vm, id)?;
    let mem = &vm.mem;
    let index = format::write_dir(dir, |tmp| {
        let index = memfile::dump(mem, &tmp.join(MEMORY_FILE), id)?;
        state.put(
            Tag::Memory,
            &MemSection {
                state: mem.save()?,
                index: index.clone(),
            },
        )?;
        format::write_file(&tmp.join(STATE_FILE), &state.encode())?;
        Ok(index)
    })?;
    let stats = SaveStats {
        elapsed: t0.elapsed(),
        memory_bytes: index.pages() * duet_abi::PAGE_SIZE,
    };
    log::info!(
        "snapshot {}: {} KiB of guest memory in {:.1} ms",
        dir.display(),
        stats.memory_bytes >> 10,
        stats.elapsed.as_secs_f64() * 1e3
    );
    Ok(stats)
}

/// A snapshot directory whose state file has been read and checked.
pub struct Snapshot {
    dir: PathBuf,
    state: StateFile,
}

impl Snapshot {
    /// Reads and checks `dir/state` (header, versions, every section's CRC).
    pub fn open(dir: &Path) -> Result<Snapshot, SnapshotError> {
        let not = |why: &str| {
            SnapshotError::NotSnapshot(format!("{} is not a Duet snapshot: {why}", dir.display()))
        };
        match dir.metadata() {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(not("not a directory")),
            Err(e) => return Err(not(&e.to_string())),
        }
        let path = dir.join(STATE_FILE);
        let meta = path
            .metadata()
            .map_err(|_| not(&format!("it has no `{STATE_FILE}` file")))?;
        if meta.len() > MAX_STATE_FILE {
            return Err(SnapshotError::Invalid(format!(
                "{} is too large",
                path.display()
            )));
        }
        let bytes = std::fs::read(&path).map_err(|e| SnapshotError::io("reading", &path, e))?;
        let state = StateFile::decode(&bytes, &path.display().to_string())?;
        Ok(Snapshot {
            dir: dir.to_path_buf(),
            state,
        })
    }

    /// The decoded state file.
    pub fn state(&self) -> &StateFile {
        &self.state
    }

    /// Reads the memory file and checks every range's CRC, without
    /// starting anything (done once before starting clones).
    pub fn verify_memory(&self) -> Result<(), SnapshotError> {
        let mem: MemSection = self.state.get(Tag::Memory)?;
        let args = MemArgs {
            path: &self.dir.join(MEMORY_FILE),
            index: &mem.index,
            id: self.state.header.snapshot_id,
            verify: true,
        };
        crate::memory::GuestMem::restore(args, &mem.state).map(drop)
    }
}

/// How to restore.
pub struct RestoreOptions {
    /// The KVM device node.
    pub kvm_device: PathBuf,
    /// The clone index the guest gets.
    pub clone_index: u32,
    /// Check memory CRCs (skip when a parent already did, for clones).
    pub verify: bool,
    /// Phase timing.
    pub trace: Option<BootTrace>,
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |e| SnapshotError::Kvm(format!("{what} failed: {e}"))
}

/// Everything [`assemble`] needs besides the state: a VM with guest memory
/// registered, the image and the reattached devices.
pub(crate) struct Parts {
    /// The open KVM device.
    pub kvm: kvm_ioctls::Kvm,
    /// A new VM whose memory slot is registered.
    pub vm_fd: kvm_ioctls::VmFd,
    /// Guest memory, filled (mapped from a file, or received).
    pub mem: crate::memory::GuestMem,
    /// The guest's image (symbols, segments).
    pub image: Image,
    /// The devices, reopened on this host.
    pub devices: crate::devices::Devices,
    /// The control block.
    pub ctl: Arc<Control>,
    /// Boot trace, if tracing.
    pub trace: Option<BootTrace>,
    /// This guest's clone index.
    pub clone_index: u32,
}

/// Builds a runnable [`Vm`] from a captured state (snapshot restore and
/// migration share it): the vCPU, the KVM clock, page tables, the guest
/// clock rebased on the TSC now (monotonic time continues, wall time is
/// this host's), and a new identity (generation + 1, fresh seed).
pub(crate) fn assemble(st: &StateFile, p: Parts) -> Result<Vm, SnapshotError> {
    let vcpu_state: VcpuState = st.get(Tag::Vcpu)?;
    let kvm_clock: kvm_bindings::kvm_clock_data = st.get(Tag::KvmClock)?;
    let clock: persist::ClockState = st.get(Tag::Clock)?;
    let monitor: MonitorState = st.get(Tag::Monitor)?;
    let Some(tsc_at_save) = vcpu_state.tsc() else {
        return Err(SnapshotError::Invalid("the vCPU state has no TSC".into()));
    };
    if cpu_signature(&vcpu_state.cpuid) != (st.header.vendor, st.header.features) {
        return Err(SnapshotError::Invalid(
            "the header and the vCPU state disagree on the CPU".into(),
        ));
    }
    let Parts {
        kvm,
        vm_fd,
        mem,
        image,
        devices,
        ctl,
        mut trace,
        clone_index,
    } = p;
    let vcpu = crate::vcpu::Vcpu::restore((&kvm, &vm_fd), &vcpu_state)?;
    let mut kc = kvm_clock;
    kc.flags = 0;
    vm_fd.set_clock(&kc).map_err(kvm_err("KVM_SET_CLOCK"))?;
    let pt = crate::paging::PageTables::restore((), &monitor.page_tables)?;
    if let Some(t) = &mut trace {
        t.mark("restore vCPU + devices");
    }

    // The guest TSC now (KVM set it from the saved MSR), to rebase the clock.
    let mut msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
        index: persist::MSR_IA32_TSC,
        ..Default::default()
    }])
    .map_err(|e| SnapshotError::Kvm(format!("{e:?}")))?;
    let now = Instant::now();
    vcpu.get_msrs(&mut msrs).map_err(kvm_err("KVM_GET_MSRS"))?;
    let tsc_now = msrs.as_slice()[0].data;
    let wall_now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let clock = GuestClock::restore(
        ClockArgs {
            mem: &mem,
            tsc_at_save,
            tsc_now,
            wall_now_ns,
        },
        &clock,
    )?;
    if let Some(t) = &mut trace {
        t.anchor(now, tsc_now, st.header.tsc_khz);
    }
    let mut vm = Vm {
        _kvm: kvm,
        _vm: vm_fd,
        vcpu,
        mem,
        image,
        devices,
        trace,
        exits: monitor.exits,
        pt,
        clock: clock.page,
        heap: monitor.heap,
        clock_anchor: (now, clock.page.base_mono_ns),
        generation: monitor.generation.wrapping_add(1),
        clone_index,
        ctl,
        started: Instant::now(),
        snapshot_at_point: None,
        paused: false,
        shutdown_requested: false,
        shutdown_unreported: false,
        stop_timeout: crate::signals::DEFAULT_STOP_TIMEOUT,
        debug: Default::default(),
    };
    vm.write_identity()
        .map_err(|e| SnapshotError::Invalid(format!("writing the identity page: {e}")))?;
    Ok(vm)
}

/// Builds a VM from `snap`, ready for [`Vm::run`] to resume it.
pub fn restore(
    snap: &Snapshot,
    mut opts: RestoreOptions,
    ctl: Arc<Control>,
) -> Result<Vm, SnapshotError> {
    let mark = |t: &mut Option<BootTrace>, p| {
        if let Some(t) = t {
            t.mark(p)
        }
    };
    let st = &snap.state;
    let vcpu_state: VcpuState = st.get(Tag::Vcpu)?;
    let devices_state: Vec<crate::devices::DeviceState> = st.get(Tag::Devices)?;
    let mem_section: MemSection = st.get(Tag::Memory)?;
    let image_bytes = st.raw(Tag::Image)?.to_vec();
    let image = Image::parse(image_bytes, mem_section.state.size)?;
    mark(&mut opts.trace, "read + check snapshot");

    let kvm = crate::kvm::open(&opts.kvm_device).map_err(|e| SnapshotError::Kvm(e.to_string()))?;
    let host_cpuid = crate::cpuid::supported(&kvm).map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let (vendor, features) = cpu_signature(host_cpuid.as_slice());
    if vendor != st.header.vendor {
        return Err(SnapshotError::CpuVendor {
            snap: String::from_utf8_lossy(&st.header.vendor).into_owned(),
            host: String::from_utf8_lossy(&vendor).into_owned(),
        });
    }
    for (i, (&snap_f, &host_f)) in st.header.features.iter().zip(&features).enumerate() {
        if snap_f & !host_f != 0 {
            return Err(SnapshotError::CpuFeatures {
                leaf: FEATURE_NAMES[i],
                missing: snap_f & !host_f,
            });
        }
    }
    if cpu_signature(&vcpu_state.cpuid) != (st.header.vendor, st.header.features)
        || u64::from(vcpu_state.tsc_khz) != st.header.tsc_khz
    {
        return Err(SnapshotError::Invalid(
            "the header and the vCPU state disagree on the CPU".into(),
        ));
    }
    let vm_fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    mark(&mut opts.trace, "open KVM + create VM");

    let mem = crate::memory::GuestMem::restore(
        MemArgs {
            path: &snap.dir.join(MEMORY_FILE),
            index: &mem_section.index,
            id: st.header.snapshot_id,
            verify: opts.verify,
        },
        &mem_section.state,
    )?;
    crate::vm::register_memory(&vm_fd, &mem).map_err(|e| SnapshotError::Kvm(e.to_string()))?;
    mark(&mut opts.trace, "map guest memory");

    let devices = crate::devices::Devices::restore((), &devices_state)?;
    let mut vm = assemble(
        st,
        Parts {
            kvm,
            vm_fd,
            mem,
            image,
            devices,
            ctl,
            trace: opts.trace,
            clone_index: opts.clone_index,
        },
    )?;
    mark(&mut vm.trace, "clock + identity");
    Ok(vm)
}
