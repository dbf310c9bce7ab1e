//! Who this guest is: generation, random seed and clone index, from the
//! identity page the monitor rewrites after every restore.

use core::sync::atomic::{fence, Ordering};
use duet_abi::boot::BOOT_FLAG_IDENTITY;
use duet_abi::hypercall::{Hypercall, SnapshotPointArgs, SNAPSHOT_POINT_RESTORED};
use duet_abi::identity::IdentityPage;

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

/// Marks the guest's ready point. `duet template create` snapshots the guest
/// here; a guest started from that template resumes from this call, which
/// then returns `true`. Elsewhere it does nothing and returns `false`.
pub fn snapshot_point() -> bool {
    let mut args = SnapshotPointArgs::default();
    crate::console::flush();
    crate::hypercall::call(Hypercall::SnapshotPoint, &mut args);
    args.ret == SNAPSHOT_POINT_RESTORED
}
