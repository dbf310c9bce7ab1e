//! The snapshot point: where a template is taken.

use crate::call::{reply, take};
use crate::memory::GuestMem;
use crate::outcome::{Flow, Outcome};
use duet_abi::hypercall::{
    Hypercall, SnapshotPointArgs, SNAPSHOT_POINT_CONTINUED, SNAPSHOT_POINT_RESTORED,
};

/// [`Hypercall::SnapshotPoint`]: when making a template (`template`), stop
/// the guest here for its caller to save it (the saved guest sees the call
/// return "restored"); otherwise carry on.
pub fn snapshot_point(mem: &GuestMem, template: bool, value: u32) -> Flow {
    let call = Hypercall::SnapshotPoint;
    let a: SnapshotPointArgs = match take(mem, call, value) {
        Ok(a) => a,
        Err(f) => return f,
    };
    if !template {
        return reply(mem, call, value, a, Ok(SNAPSHOT_POINT_CONTINUED as u64));
    }
    match reply(mem, call, value, a, Ok(SNAPSHOT_POINT_RESTORED as u64)) {
        Flow::Continue => Flow::Stop(Outcome::AtSnapshotPoint),
        stop => stop,
    }
}
