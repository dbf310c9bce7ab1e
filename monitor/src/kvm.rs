//! Opening the KVM device, with errors that say how to fix the host.

use kvm_ioctls::Kvm;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// KVM could not be used.
#[derive(Debug, Error)]
pub enum KvmError {
    /// The device node does not exist.
    #[error("{0}: no such device; KVM is not available. Enable virtualization in firmware and load the kvm module (modprobe kvm_intel or kvm_amd), or point --kvm-device / DUET_KVM_DEVICE at the right node")]
    Missing(PathBuf),
    /// Permission denied.
    #[error("{0}: permission denied; add your user to the `kvm` group (then log in again) or run as root")]
    Denied(PathBuf),
    /// Exists but is not KVM.
    #[error("{0}: not a KVM device ({1}); point --kvm-device / DUET_KVM_DEVICE at /dev/kvm")]
    NotKvm(PathBuf, String),
    /// Another error.
    #[error("{0}: cannot open KVM: {1}; point --kvm-device / DUET_KVM_DEVICE at /dev/kvm")]
    Other(PathBuf, std::io::Error),
}

/// Opens the KVM device at `path` and checks it speaks the stable KVM API.
pub fn open(path: &Path) -> Result<Kvm, KvmError> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| KvmError::Other(path.into(), std::io::Error::other("path contains NUL")))?;
    let kvm = Kvm::new_with_path(&c).map_err(|e| match e.errno() {
        libc::ENOENT => KvmError::Missing(path.into()),
        libc::EACCES | libc::EPERM => KvmError::Denied(path.into()),
        libc::EISDIR => KvmError::NotKvm(path.into(), "a directory".into()),
        _ => KvmError::Other(path.into(), std::io::Error::from_raw_os_error(e.errno())),
    })?;
    match kvm.get_api_version() {
        12 => Ok(kvm),
        v if v < 0 => Err(KvmError::NotKvm(
            path.into(),
            format!(
                "KVM_GET_API_VERSION failed: {}",
                std::io::Error::from_raw_os_error(-v)
            ),
        )),
        v => Err(KvmError::NotKvm(
            path.into(),
            format!("API version {v}, expected 12"),
        )),
    }
}
