//! A thread's list compiled into a BPF program with `seccompiler`: an
//! allowed call returns `SECCOMP_RET_ALLOW` (and the kernel caches that
//! verdict per call number when no argument is looked at); anything else
//! returns `SECCOMP_RET_TRAP`, whose `SIGSYS` the report handler takes
//! (`trap.rs`).

use super::lists::{Allowed, Args};
use super::SeccompError;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use std::collections::BTreeMap;

/// One rule per allowed value of an argument (seccompiler ORs a call's
/// rules). Requests are compared on their low 32 bits: `ioctl`'s request,
/// `prctl`'s option and `seccomp`'s operation are all read by the kernel
/// as 32-bit values.
fn rules(args: &Args) -> Result<Vec<SeccompRule>, SeccompError> {
    let one = |arg: u8, v: u64| -> Result<SeccompRule, SeccompError> {
        let c = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)
            .map_err(SeccompError::compile)?;
        SeccompRule::new(vec![c]).map_err(SeccompError::compile)
    };
    match args {
        Args::Any => Ok(Vec::new()),
        Args::Ioctl(list) => list.iter().map(|i| one(1, u64::from(i.nr))).collect(),
        Args::Only { arg, values } => values.iter().map(|(v, _)| one(*arg, *v)).collect(),
    }
}

/// Compiles `list`: allowed calls pass, everything else traps.
pub fn compile(list: &[Allowed], mismatch: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let mut map = BTreeMap::new();
    for a in list {
        map.insert(a.sys.nr, rules(&a.args)?);
    }
    let filter = SeccompFilter::new(
        map,
        mismatch,
        SeccompAction::Allow,
        seccompiler::TargetArch::x86_64,
    )
    .map_err(SeccompError::compile)?;
    filter.try_into().map_err(SeccompError::compile)
}
