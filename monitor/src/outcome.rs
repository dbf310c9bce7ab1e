//! How a guest ended, and what the run loop does after a hypercall.

use crate::signals::Signal;

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
    /// Template mode: the guest reached its snapshot point and stopped
    /// there, to be saved by the caller of the run loop.
    AtSnapshotPoint,
    /// Template mode: the guest was saved into this directory at its
    /// snapshot point, then stopped.
    Snapshotted(String),
    /// The guest was live-migrated to this address and runs there now.
    Migrated(String),
    /// The monitor stopped the guest on a signal (`SIGINT`, or `SIGTERM`
    /// after the grace period).
    Terminated(Signal),
}

impl Outcome {
    /// The monitor's exit status for this outcome (README's table).
    pub fn status(&self) -> u8 {
        use crate::contract::status;
        match self {
            Outcome::Exited(s) => *s,
            Outcome::Aborted(_) => status::GUEST_ABORT,
            Outcome::Faulted(_) => status::GUEST_FAULT,
            Outcome::Failed(_) => status::VM_FAILURE,
            Outcome::AtSnapshotPoint | Outcome::Snapshotted(_) => 0,
            Outcome::Migrated(_) => status::MIGRATED,
            Outcome::Terminated(sig) => status::terminated(sig.number()),
        }
    }
}

/// What the run loop does after a hypercall.
#[derive(Debug)]
pub enum Flow {
    /// Resume the guest.
    Continue,
    /// End the VM.
    Stop(Outcome),
}
