//! Who this guest is: generation, random seed and clone index, from the
//! identity page the monitor rewrites after every restore.

use core::sync::atomic::{fence, Ordering};
use duet_abi::boot::BOOT_FLAG_IDENTITY;
use duet_abi::hypercall::{Hypercall, SnapshotPointArgs, SNAPSHOT_POINT_RESTORED};
use duet_abi::identity::{IdentityPage, REQUEST_SHUTDOWN};

/// This guest's identity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// 0 at cold boot; bumped by each restore.
    pub generation: u64,
    /// Index among clones started together (0 for a single guest).
    pub clone_index: u32,
    /// Random seed from the host, fresh at boot and after each restore.
    pub seed: [u64; 2],
}

/// Reads the identity page (a seqlock: retries while the monitor writes).
pub fn identity() -> Identity {
    let bi = crate::rt::boot_info();
    if bi.flags & BOOT_FLAG_IDENTITY == 0 {
        return Identity::default();
    }
    let page = bi.identity.0 as *const IdentityPage;
    loop {
        // SAFETY: the monitor maps the identity page read-only for the
        // guest's whole life; volatile reads because it changes under us.
        let seq1 = unsafe { core::ptr::read_volatile(&raw const (*page).seq) };
        fence(Ordering::Acquire);
        // SAFETY: as above.
        let p = unsafe { core::ptr::read_volatile(page) };
        fence(Ordering::Acquire);
        // SAFETY: as above.
        let seq2 = unsafe { core::ptr::read_volatile(&raw const (*page).seq) };
        if seq1 == seq2 && seq1 % 2 == 0 {
            return Identity {
                generation: p.generation,
                clone_index: p.clone_index,
                seed: p.seed,
            };
        }
        core::hint::spin_loop();
    }
}

/// Whether the host asked this guest to shut down (`SIGTERM` to the
/// monitor, `podman stop`, ...). Reading it costs no exit. A guest that
/// wants to stop cleanly checks it in its main loop and exits; blocking
/// network calls return [`crate::net::NetError::Shutdown`] once it is set.
/// The monitor stops the guest anyway after its grace period
/// (`duet run --stop-timeout`).
pub fn shutdown_requested() -> bool {
    let bi = crate::rt::boot_info();
    if bi.flags & BOOT_FLAG_IDENTITY == 0 {
        return false;
    }
    let page = bi.identity.0 as *const IdentityPage;
    // SAFETY: the monitor maps the identity page read-only for the guest's
    // whole life; one aligned u64 that only gains bits is read as a whole.
    let requests = unsafe { core::ptr::read_volatile(&raw const (*page).requests) };
    requests & REQUEST_SHUTDOWN != 0
}

/// Marks the guest's ready point. `duet template create` snapshots the guest
/// here; a guest started from that template resumes from this call, which
/// then returns `true`. Elsewhere it does nothing and returns `false`.
pub fn snapshot_point() -> bool {
    let mut args = SnapshotPointArgs::default();
    crate::console::flush();
    crate::hypercall::call(Hypercall::SnapshotPoint, &mut args);
    args.ret == SNAPSHOT_POINT_RESTORED
}
