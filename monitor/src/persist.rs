//! [`Persist`]: how a component saves and restores its own state.
//!
//! A component turns itself into a serde `State` and is rebuilt from one
//! plus whatever it needs from outside (`ConstructorArgs`). Each impl lives
//! beside its component; snapshots and migrations only store the states
//! (`vmm::VmmState`), so a new component never touches them.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Save and restore one component's state.
pub trait Persist: Sized {
    /// The saved state.
    type State: Serialize + DeserializeOwned;
    /// What a restore needs besides the state.
    type ConstructorArgs<'a>;
    /// Why saving or restoring failed.
    type Error;
    /// Captures the component's state.
    fn save(&self) -> Result<Self::State, Self::Error>;
    /// Rebuilds the component from `state`.
    fn restore(args: Self::ConstructorArgs<'_>, state: &Self::State) -> Result<Self, Self::Error>;
}

/// Why a component's state could not be saved or restored. Every impl of
/// [`Persist`] uses it, so the layers above wrap one error type.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A value in the state is impossible (or does not fit this host).
    #[error("invalid state: {0}")]
    Invalid(String),
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// Which call.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// The guest's TSC frequency cannot be matched here.
    #[error("the guest's TSC runs at {saved} kHz and this host's at {host} kHz, which KVM cannot match ({why}); use a host with the same or a faster TSC")]
    Tsc {
        /// In the state.
        saved: u64,
        /// The host's.
        host: u64,
        /// KVM's answer.
        why: String,
    },
    /// A file the state refers to is gone (a disk image).
    #[error("the guest's state refers to {0}, which does not exist; put the file back where it was (or map it to another path)")]
    MissingFile(String),
    /// A device could not be reattached.
    #[error("reattaching a device: {0}")]
    Device(String),
    /// A host operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// Maps a KVM error from `what`.
pub fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    move |source| StateError::Kvm { what, source }
}
