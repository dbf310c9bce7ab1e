//! The identity page: who this guest is (and what the host asks of it), rewritten by the monitor after every
//! restore, read by the guest without exits.
//!
//! A snapshot freezes a guest's memory, so every guest restored from it
//! starts with the same random state. The monitor therefore gives each
//! restored guest (and each clone) a fresh seed, a clone index and a bumped
//! generation here. Like the clock page it is a seqlock: [`IdentityPage::seq`]
//! is odd while the monitor writes; the guest retries until it reads the same
//! even value before and after the fields.

use crate::plain;
use core::mem::size_of;

/// The identity page.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentityPage {
    /// Seqlock counter: odd while the monitor is writing.
    pub seq: u32,
    /// Index of this guest among the clones started together (0 for a
    /// single guest).
    pub clone_index: u32,
    /// 0 at cold boot; bumped by each restore.
    pub generation: u64,
    /// Random seed from the host, fresh at boot and after each restore.
    pub seed: [u64; 2],
    /// What the host asks of the guest ([`REQUEST_SHUTDOWN`]); 0 after boot
    /// and after each restore. Read on its own (no seqlock needed: the
    /// monitor only ever sets bits until the next restore).
    pub requests: u64,
}

/// [`IdentityPage::requests`] bit: the host asks the guest to shut down
/// (`SIGTERM` to the monitor, `podman stop`, ...). The guest should finish
/// what it is doing and exit; the monitor stops it anyway after its grace
/// period. The guest's next poll hypercall also returns at once with
/// [`crate::poll::READY_SHUTDOWN`] set.
pub const REQUEST_SHUTDOWN: u64 = 1 << 0;

plain!(IdentityPage = 40);
const _: () = assert!(size_of::<IdentityPage>() as u64 <= crate::PAGE_SIZE);
