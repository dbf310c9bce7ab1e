//! Block devices: raw image files (or host block devices) given with
//! `--disk` ([`spec`]). Everything about the file is checked when the VM is
//! created, before KVM is touched. At run time the device checks each
//! request against its geometry and moves bytes straight between the file
//! and guest memory ([`GuestMem::file_io`]); a flush is an `fdatasync`.
//! The guest reaches it through [`hypercalls`].

pub mod hypercalls;
mod spec;

pub use spec::{open_all, parse_spec, BlockError, DiskSpec, DEFAULT_SECTOR, NAME_MAX};

use super::{CopySource, Device, DeviceError, DeviceState};
use crate::memory::{FileIo, GuestMem, HostDirty, MemError};
use crate::persist::{Persist, StateError};
use duet_abi::boot::{DeviceInfo, DeviceKind, DEVICE_FLAG_READONLY};
use duet_abi::hypercall::Error;
use duet_abi::Gpa;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::Arc;

/// An attached disk.
pub struct BlockDevice {
    /// Where the guest wrote while a migration copies the disk
    /// (`--copy-disks`), in 4 KiB units of the disk; off otherwise.
    dirty: Arc<HostDirty>,
    file: File,
    path: String,
    name: String,
    readonly: bool,
    capacity: u64,
    sector_size: u32,
    /// How the guest reaches it (recorded in its spec).
    pub(crate) transport: crate::devices::Transport,
}

/// A disk's saved record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// The disk's spec as it was attached (an absolute path).
    pub spec: DiskSpec,
    /// Its capacity then (a disk that changed size is refused).
    pub capacity: u64,
}

impl BlockDevice {
    fn new(
        file: File,
        path: String,
        name: String,
        readonly: bool,
        capacity: u64,
        sector_size: u32,
    ) -> Self {
        BlockDevice {
            dirty: Default::default(),
            file,
            path,
            name,
            readonly,
            capacity,
            sector_size,
            transport: Default::default(),
        }
    }

    /// The disk's path as given.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The name the guest sees.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the guest may only read.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// The spec that attaches this disk again; the path made absolute (the
    /// record may be used from another directory or host).
    pub fn spec(&self) -> DiskSpec {
        let path = PathBuf::from(&self.path);
        DiskSpec {
            path: std::path::absolute(&path).unwrap_or(path),
            readonly: self.readonly,
            name: Some(self.name.clone()),
            sector_size: self.sector_size,
            transport: self.transport,
        }
    }

    /// Takes an advisory lock on the file (after the duplicate check: a
    /// second lock from this process would conflict with the first), so two
    /// monitors never write one image at once. Taking it again while held
    /// succeeds.
    pub fn lock_file(&self) -> Result<(), BlockError> {
        let op = if self.readonly {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(self.file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            // Only EWOULDBLOCK means someone holds it; anything else (no
            // lock records left, a file system without locks) is said as is.
            return Err(match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => BlockError::Locked(self.path.clone()),
                _ => BlockError::Open {
                    path: self.path.clone(),
                    source: std::io::Error::new(e.kind(), format!("cannot lock it: {e}")),
                },
            });
        }
        Ok(())
    }

    /// Checks a request's geometry: aligned, at most
    /// [`duet_abi::block::BLK_IO_MAX`], inside the device, and not a write to
    /// a read-only device.
    pub fn check(&self, write: bool, offset: u64, len: u64) -> Result<(), Error> {
        if write && self.readonly {
            return Err(Error::ReadOnly);
        }
        let sector = u64::from(self.sector_size);
        if offset % sector != 0 || len % sector != 0 {
            return Err(Error::Inval);
        }
        if len > duet_abi::block::BLK_IO_MAX {
            return Err(Error::TooBig);
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.capacity => Ok(()),
            _ => Err(Error::Range),
        }
    }

    /// Moves bytes between the device at `offset` and the guest ranges
    /// `segs` (already checked with [`BlockDevice::check`] as one request).
    /// Returns the byte count.
    pub fn io(
        &self,
        mem: &GuestMem,
        write: bool,
        offset: u64,
        segs: &[(Gpa, u64)],
    ) -> Result<u64, Error> {
        let dir = if write { FileIo::Write } else { FileIo::Read };
        let want: u64 = segs.iter().map(|s| s.1).sum();
        let r = mem.file_io(dir, self.file.as_fd(), offset, segs);
        if write {
            // After the write (even a failed one: some bytes may have
            // landed), so a copy that read the old bytes sends them again.
            self.dirty.mark(offset, want as usize);
        }
        match r {
            Err(MemError::OutOfRange { .. }) | Err(MemError::NotWritable { .. }) => {
                Err(Error::Fault)
            }
            Ok(Ok(n)) if n == want => Ok(n),
            // The file shrank under us: its end is gone.
            Ok(Ok(_)) => {
                log::debug!("disk {}: short read at {offset}", self.path);
                Err(Error::Io)
            }
            Ok(Err(e)) => Err(self.host_error("I/O", e)),
        }
    }

    /// Size in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes per sector.
    pub fn sector_size(&self) -> u32 {
        self.sector_size
    }

    /// The backing file, for an I/O thread's vectored calls.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }

    /// Records a write of `len` bytes at `offset` done outside
    /// [`BlockDevice::io`] (a virtio request), for a copying migration.
    pub fn mark_written(&self, offset: u64, len: u64) {
        self.dirty.mark(offset, len as usize);
    }

    /// Makes every write so far durable: returns once `fdatasync` has.
    pub fn sync(&self) -> Result<(), Error> {
        if self.readonly {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| self.host_error("flush", e))
    }

    /// Maps a host error to the guest's error code.
    pub fn host_error(&self, what: &str, e: std::io::Error) -> Error {
        log::debug!("disk {}: {what} failed: {e}", self.path);
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => Error::NoSpace,
            Some(libc::EROFS) | Some(libc::EBADF) => Error::ReadOnly,
            _ => Error::Io,
        }
    }
}

impl Device for BlockDevice {
    fn info(&self) -> DeviceInfo {
        let mut name = [0u8; NAME_MAX];
        let n = self.name.len().min(NAME_MAX);
        name[..n].copy_from_slice(&self.name.as_bytes()[..n]);
        DeviceInfo {
            kind: DeviceKind::Block as u32,
            flags: if self.readonly {
                DEVICE_FLAG_READONLY
            } else {
                0
            },
            capacity: self.capacity,
            sector_size: self.sector_size,
            name,
            ..Default::default()
        }
    }

    fn save(&self) -> DeviceState {
        DeviceState::Block(BlockState {
            spec: self.spec(),
            capacity: self.capacity,
        })
    }

    fn describe(&self) -> String {
        format!(
            "disk {} ({}, {} bytes{})",
            self.name,
            self.path,
            self.capacity,
            if self.readonly { ", read-only" } else { "" }
        )
    }

    fn flush(&self) -> Result<(), DeviceError> {
        if self.readonly {
            return Ok(());
        }
        self.file.sync_data().map_err(|source| DeviceError::Flush {
            name: format!("disk {}", self.path),
            source,
        })
    }

    fn lock(&self) -> Result<(), DeviceError> {
        Ok(self.lock_file()?)
    }

    fn unlock(&self) {
        // SAFETY: flock on a descriptor we own; no memory is involved.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }

    fn copy_source(&self) -> Option<std::io::Result<CopySource>> {
        let file = match self.file.try_clone() {
            Ok(f) => f,
            Err(e) => return Some(Err(e)),
        };
        // Tracking starts before the copy reads its first byte.
        self.dirty.set(true);
        Some(Ok(CopySource {
            file,
            capacity: self.capacity,
            dirty: self.dirty.clone(),
        }))
    }

    fn stop_copy_tracking(&self) {
        self.dirty.set(false);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

impl Persist for BlockDevice {
    type State = BlockState;
    /// The device's id, and whether to take the lock now.
    type ConstructorArgs<'a> = (usize, bool);
    type Error = StateError;

    fn save(&self) -> Result<BlockState, StateError> {
        Ok(BlockState {
            spec: self.spec(),
            capacity: self.capacity,
        })
    }

    fn restore((id, lock): (usize, bool), s: &BlockState) -> Result<Self, StateError> {
        let spec = &s.spec;
        if !spec.path.exists() {
            return Err(StateError::MissingFile(spec.path.display().to_string()));
        }
        let mut disks = spec::open_checked(std::slice::from_ref(spec), id, lock)
            .map_err(|e| StateError::Device(e.to_string()))?;
        let disk = disks.pop().expect("one disk opened");
        if disk.capacity != s.capacity {
            return Err(StateError::Invalid(format!(
                "disk {} is now {} bytes but was {} bytes when the state was saved; use the same disk",
                spec.path.display(),
                disk.capacity,
                s.capacity
            )));
        }
        Ok(disk)
    }
}
