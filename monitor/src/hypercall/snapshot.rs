//! The snapshot point: where a template is taken.

use super::{bad_args, Flow};
use crate::vcpu::Outcome;
use crate::vm::Vm;
use duet_abi::hypercall::{
    Hypercall, SnapshotPointArgs, SNAPSHOT_POINT_CONTINUED, SNAPSHOT_POINT_RESTORED,
};
use duet_abi::Gpa;

/// [`Hypercall::SnapshotPoint`]: in template mode, snapshot the guest here
/// and stop it; otherwise carry on.
pub fn snapshot_point(vm: &mut Vm, value: u32) -> Flow {
    let at = Gpa(u64::from(value));
    let mut args: SnapshotPointArgs = match vm.mem.read_plain(at) {
        Ok(a) => a,
        Err(e) => return bad_args(Hypercall::SnapshotPoint, value, e),
    };
    let Some(dir) = vm.snapshot_at_point.take() else {
        args.ret = SNAPSHOT_POINT_CONTINUED;
        return match vm.mem.write_plain(at, &args) {
            Ok(()) => Flow::Continue,
            Err(e) => bad_args(Hypercall::SnapshotPoint, value, e),
        };
    };
    // The saved guest sees the call return "restored".
    args.ret = SNAPSHOT_POINT_RESTORED;
    if let Err(e) = vm.mem.write_plain(at, &args) {
        return bad_args(Hypercall::SnapshotPoint, value, e);
    }
    match crate::snapshot::save(vm, &dir) {
        Ok(_) => Flow::Stop(Outcome::Snapshotted(dir.display().to_string())),
        Err(e) => Flow::Stop(Outcome::Failed(format!(
            "cannot snapshot the guest at its snapshot point: {e}"
        ))),
    }
}
