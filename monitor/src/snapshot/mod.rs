//! Snapshots: capture a stopped guest to a directory, restore it lazily.
//!
//! A snapshot is a directory with two files (see `docs/snapshots.md`):
//! `state` (the guest's [`VmmState`] as a [`StateFile`], plus the memory
//! index) and `memory` ([`memfile`]: only populated pages, page-aligned,
//! mapped `MAP_PRIVATE` on restore so restore cost does not grow with guest
//! memory). The guest is reached only through [`Vmm::capture`] and
//! [`Vmm::assemble`].

mod dir;
pub mod memfile;

use crate::compat::{self, CompatError, TscCheck};
use crate::devices::{Devices, Reattach};
use crate::memory::{Backing, GuestMem};
use crate::persist::{Persist, StateError};
use crate::statefile::{StateFile, StateFileError, Tag};
use crate::trace::BootTrace;
use crate::vm::{Vm, VmError};
use crate::vmm::{Control, Parts, Vmm, VmmState};
use memfile::MemIndex;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

pub use crate::contract::{MEMORY_FILE, STATE_FILE};

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
    #[error("{what} {path}: {source}{hint}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
        /// The remedy when the file was refused to this user (or nothing).
        hint: String,
    },
    /// Not a snapshot at all.
    #[error("{0}")]
    NotSnapshot(String),
    /// The memory file is shorter than it says.
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
    /// The memory file's format version.
    #[error("memory file format version {found}, this duet reads version {want}; restore it with the duet that wrote it")]
    FormatVersion {
        /// In the file.
        found: u32,
        /// Ours.
        want: u32,
    },
    /// The state file.
    #[error("snapshot {path}: {source}")]
    State {
        /// The state file.
        path: String,
        /// Why.
        source: StateFileError,
    },
    /// This host cannot run the guest.
    #[error("this host cannot restore the snapshot: {0}")]
    Incompatible(#[from] CompatError),
    /// A component refused its state.
    #[error("restoring the snapshot: {0}")]
    Component(#[from] StateError),
    /// A value in the snapshot is impossible.
    #[error("invalid snapshot: {0}")]
    Invalid(String),
    /// KVM.
    #[error(transparent)]
    Vm(#[from] VmError),
}

impl SnapshotError {
    /// An I/O error on `path`.
    pub fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        let need = match what {
            "opening" | "reading" | "mapping" => crate::access::READABLE,
            _ => crate::access::WRITABLE,
        };
        SnapshotError::Io {
            what,
            path: path.display().to_string(),
            hint: crate::access::denied_hint(&source, need),
            source,
        }
    }
}

/// What a save did.
#[derive(Clone, Copy, Debug)]
pub struct SaveStats {
    /// Wall time it took.
    pub elapsed: Duration,
    /// Bytes of guest memory written.
    pub memory_bytes: u64,
}

/// Snapshots `vmm` into a new directory `dir`. Runs on the vCPU thread with
/// the guest stopped; the guest can go on afterwards.
pub fn save(vmm: &mut Vmm, dir: &Path) -> Result<SaveStats, SnapshotError> {
    let t0 = Instant::now();
    if dir.symlink_metadata().is_ok() {
        return Err(SnapshotError::Exists(dir.display().to_string()));
    }
    let id = crate::bootinfo::random_seed()[0];
    let st = vmm.capture();
    // Device threads were quiesced for the capture; whatever happens to the
    // snapshot, the guest goes on with them once its memory is on disk.
    let st = match st {
        Ok(st) => st,
        Err(e) => {
            vmm.resume_devices();
            return Err(e.into());
        }
    };
    let state_err = |source| SnapshotError::State {
        path: dir.join(STATE_FILE).display().to_string(),
        source,
    };
    let written = (|| {
        let mut file = StateFile::from_state(&st, id).map_err(state_err)?;
        let mem = vmm.vm().mem();
        dir::write_dir(dir, |tmp| {
            let index = memfile::dump(mem, &tmp.join(MEMORY_FILE), id)?;
            file.put(Tag::MemoryIndex, &index).map_err(state_err)?;
            dir::write_file(&tmp.join(STATE_FILE), &file.encode())?;
            Ok(index)
        })
    })();
    vmm.resume_devices();
    let index = written?;
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
    state: VmmState,
    id: u64,
    index: MemIndex,
}

impl Snapshot {
    /// Reads and checks `dir/state` (header, versions, every section's CRC,
    /// every section's contents).
    pub fn open(dir: &Path) -> Result<Snapshot, SnapshotError> {
        let not = |why: &str| {
            SnapshotError::NotSnapshot(format!("{} is not a Duet snapshot: {why}", dir.display()))
        };
        match dir.metadata() {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(not("not a directory")),
            Err(e) => {
                let hint = crate::access::denied_hint(&e, crate::access::READABLE);
                return Err(not(&format!("{e}{hint}")));
            }
        }
        let path = dir.join(STATE_FILE);
        let meta = path.metadata().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => not(&format!("it has no `{STATE_FILE}` file")),
            _ => SnapshotError::io("opening", &path, e),
        })?;
        if meta.len() > MAX_STATE_FILE {
            return Err(SnapshotError::Invalid(format!(
                "{} is too large",
                path.display()
            )));
        }
        let bytes = std::fs::read(&path).map_err(|e| SnapshotError::io("reading", &path, e))?;
        let name = path.display().to_string();
        let state_err = |source| SnapshotError::State {
            path: name.clone(),
            source,
        };
        let file = StateFile::decode(&bytes, &name).map_err(state_err)?;
        let index: MemIndex = file.get(Tag::MemoryIndex).map_err(state_err)?;
        #[allow(unused_mut)]
        let mut state = file.to_state().map_err(state_err)?;
        #[cfg(feature = "test-hooks")]
        tamper::state(&mut state);
        if index.size != state.memory.size {
            return Err(SnapshotError::Invalid(
                "memory index and memory size disagree".into(),
            ));
        }
        Ok(Snapshot {
            dir: dir.to_path_buf(),
            id: file.header.snapshot_id,
            state,
            index,
        })
    }

    /// Reads the memory file and checks every range's CRC, without
    /// starting anything (done once before starting clones).
    pub fn verify_memory(&self) -> Result<(), SnapshotError> {
        self.map_memory(true).map(drop)
    }

    fn map_memory(&self, verify: bool) -> Result<GuestMem, SnapshotError> {
        let (mapping, ranges) =
            memfile::map(&self.dir.join(MEMORY_FILE), &self.index, self.id, verify)?;
        Ok(GuestMem::restore(
            Backing::Mapped(mapping, ranges),
            &self.state.memory,
        )?)
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

fn mark(t: &mut Option<BootTrace>, p: &'static str) {
    if let Some(t) = t {
        t.mark(p)
    }
}

/// Builds a guest from `snap`, ready for [`Vmm::run`] to resume it.
pub fn restore(
    snap: &Snapshot,
    mut opts: RestoreOptions,
    ctl: Arc<Control>,
) -> Result<Vmm, SnapshotError> {
    let st = &snap.state;
    mark(&mut opts.trace, "read + check snapshot");
    let kvm = Arc::new(crate::kvm::open(&opts.kvm_device).map_err(VmError::from)?);
    compat::check(&kvm, &st.cpu, st.memory.size, TscCheck::AtRestore)?;
    let mem = snap.map_memory(opts.verify)?;
    mark(&mut opts.trace, "map guest memory");
    #[cfg(feature = "test-hooks")]
    tamper::memory(&mem);
    let vm = Vm::with_kvm(kvm, mem)?;
    mark(&mut opts.trace, "open KVM + create VM");
    let devices = Devices::restore(Reattach { lock: true }, &st.devices)?;
    let mut vmm = Vmm::assemble(
        Parts {
            vm,
            devices,
            ctl,
            trace: opts.trace,
            clone_index: Some(opts.clone_index),
        },
        st,
    )?;
    if let Some(t) = vmm.trace_mut() {
        t.mark("clock + identity");
    }
    Ok(vmm)
}

/// Test hook (`test-hooks` builds, `DUET_TEST_TAMPER=1`): a snapshot that
/// claims ring 0 for the guest and its own CR3, IDT and GDT, with garbage
/// in the monitor's pages; the restore must not care.
#[cfg(feature = "test-hooks")]
mod tamper {
    use crate::layout;
    use crate::memory::GuestMem;
    use crate::vmm::VmmState;

    fn on() -> bool {
        std::env::var_os("DUET_TEST_TAMPER").is_some()
    }

    pub(super) fn state(st: &mut VmmState) {
        if !on() {
            return;
        }
        log::warn!("DUET_TEST_TAMPER: restoring a tampered state (test hook)");
        for v in &mut st.vcpus {
            let s = &mut v.sregs;
            s.cs.selector = layout::selector::KERNEL_CODE;
            s.cs.dpl = 0;
            s.ss.selector = layout::selector::KERNEL_DATA;
            s.ss.dpl = 0;
            s.cr3 = 0x20_0000;
            s.idt.base = 0x20_0000;
            s.gdt.base = 0x20_0000;
            v.regs.rflags |= 3 << 12; // IOPL 3
        }
    }

    pub(super) fn memory(mem: &GuestMem) {
        if !on() {
            return;
        }
        let junk = [0x5au8; 4096];
        for at in [layout::GDT, layout::IDT, layout::PAGE_TABLES] {
            let _ = mem.write_bytes(duet_abi::Gpa(at), &junk);
        }
    }
}
