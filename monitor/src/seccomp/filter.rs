//! A thread's list compiled into a BPF program: an allowed call returns
//! `SECCOMP_RET_ALLOW`; anything else returns the mismatch action
//! (`SECCOMP_RET_TRAP`, whose `SIGSYS` the report handler takes, `trap.rs`).
//!
//! Why not `seccompiler`'s compiler (its installer, `apply_filter`, is used):
//! it emits one comparison after another, and when a filter is attached the
//! kernel runs it once for every system call number to learn which calls
//! it may allow without running it again. Over a linear chain that costs
//! ~0.2 ms here, a tenth of a whole `duet run hello`, paid on the boot path
//! (measured with `strace -T`). Here the call number goes down a balanced
//! tree of comparisons instead, a handful per call: the same verdicts (a
//! unit test checks every number and argument value against the list),
//! ~0.03 ms to attach.

use super::lists::{Allowed, Args};
use super::SeccompError;
use seccompiler::{sock_filter, BpfProgram, SeccompAction};
use std::collections::BTreeMap;

/// `offsetof(struct seccomp_data, nr)`.
const NR: u32 = 0;
/// `offsetof(struct seccomp_data, arch)`.
const ARCH: u32 = 4;
/// `offsetof(struct seccomp_data, args)`: argument `i`'s low 32 bits are at
/// `ARGS + 8 * i` (little endian).
const ARGS: u32 = 16;
/// `AUDIT_ARCH_X86_64`.
const ARCH_X86_64: u32 = 0xc000_003e;

const LD_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JA: u16 = 0x05; // BPF_JMP | BPF_JA
const RET: u16 = 0x06; // BPF_RET | BPF_K

/// What one call may be made with: any arguments, or argument `arg`'s low
/// 32 bits equal to one of `values`.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Any arguments.
    Any,
    /// These values of this argument only.
    Only {
        /// The argument's index.
        arg: u8,
        /// The allowed low 32 bits.
        values: Vec<u32>,
    },
}

/// The list as call number → what it may be made with. A call listed
/// twice gets the union: any arguments if either entry allows any.
pub fn verdicts(list: &[Allowed]) -> Result<BTreeMap<u32, Verdict>, SeccompError> {
    let mut map: BTreeMap<u32, Verdict> = BTreeMap::new();
    for a in list {
        let nr = u32::try_from(a.sys.nr).map_err(|_| compile_err("a negative call number"))?;
        if let Args::Only { arg, .. } = &a.args {
            if *arg >= 6 {
                return Err(compile_err("a call filtered on an argument past the sixth"));
            }
        }
        let v = match &a.args {
            Args::Any => Verdict::Any,
            Args::Ioctl(list) => Verdict::Only {
                arg: 1,
                values: list.iter().map(|i| i.nr).collect(),
            },
            // Requests, options and operations are read by the kernel as
            // 32-bit values: compare the low 32 bits.
            Args::Only { arg, values } => Verdict::Only {
                arg: *arg,
                values: values.iter().map(|(v, _)| *v as u32).collect(),
            },
        };
        let merged = match (map.remove(&nr), v) {
            (None, v) => v,
            (Some(Verdict::Any), _) | (Some(_), Verdict::Any) => Verdict::Any,
            (
                Some(Verdict::Only {
                    arg: a,
                    values: mut x,
                }),
                Verdict::Only { arg: b, values: y },
            ) => {
                if a != b {
                    return Err(compile_err("one call filtered on two different arguments"));
                }
                x.extend(y);
                Verdict::Only { arg: a, values: x }
            }
        };
        map.insert(nr, merged);
    }
    Ok(map)
}

fn compile_err(why: &str) -> SeccompError {
    SeccompError::compile(why)
}

/// A jump target before layout.
#[derive(Clone, Copy)]
enum Label {
    Allow,
    Deny,
    Node(usize),
    Leaf(u32),
}

/// An instruction before layout: jumps name labels.
enum Op {
    Ld(u32),
    /// `jge k`: true → `ja target` (the next instruction), false → the one
    /// after it.
    JgeThenJa(u32, Label),
    /// `jeq k`: true → `ja target`, false → `ja other`.
    JeqJaJa(u32, Label, Label),
    Ja(Label),
    /// A leaf's argument check: `jeq v` to the leaf's own `ret ALLOW`.
    JeqAllowLocal(u32, u8),
    Ret(u32),
    Mark(Label),
}

/// Compiles `list`: allowed calls pass, everything else gets `mismatch`.
pub fn compile(list: &[Allowed], mismatch: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let map = verdicts(list)?;
    let deny = u32::from(mismatch);
    let allow = u32::from(SeccompAction::Allow);
    let nrs: Vec<u32> = map.keys().copied().collect();
    let mut ops = vec![
        Op::Ld(ARCH),
        Op::JeqJaJa(ARCH_X86_64, Label::Node(0), Label::Deny),
        Op::Mark(Label::Node(0)),
        Op::Ld(NR),
    ];
    tree(&nrs, &mut ops, &mut 1);
    // Leaves: one block per call with an argument check.
    for (nr, v) in &map {
        if let Verdict::Only { arg, values } = v {
            if values.len() > 250 {
                return Err(compile_err("more than 250 values for one argument"));
            }
            ops.push(Op::Mark(Label::Leaf(*nr)));
            ops.push(Op::Ld(ARGS + 8 * u32::from(*arg)));
            let n = values.len();
            for (i, val) in values.iter().enumerate() {
                // To the block's `ret ALLOW`, after the remaining checks and
                // the `ret deny`.
                ops.push(Op::JeqAllowLocal(*val, (n - i) as u8));
            }
            ops.push(Op::Ret(deny));
            ops.push(Op::Ret(allow));
        }
    }
    ops.push(Op::Mark(Label::Allow));
    ops.push(Op::Ret(allow));
    ops.push(Op::Mark(Label::Deny));
    ops.push(Op::Ret(deny));
    layout(ops, &map)
}

/// Emits the comparisons for the sorted call numbers `nrs` (the number is
/// in the accumulator). `next` numbers the subtrees emitted out of line.
fn tree(nrs: &[u32], ops: &mut Vec<Op>, next: &mut usize) {
    match nrs {
        [] => ops.push(Op::Ja(Label::Deny)),
        [nr] => ops.push(Op::JeqJaJa(*nr, Label::Leaf(*nr), Label::Deny)),
        _ => {
            let mid = nrs.len() / 2;
            let upper = *next;
            *next += 1;
            ops.push(Op::JgeThenJa(nrs[mid], Label::Node(upper)));
            tree(&nrs[..mid], ops, next);
            ops.push(Op::Mark(Label::Node(upper)));
            tree(&nrs[mid..], ops, next);
        }
    }
}

/// Resolves labels into offsets. A call allowed with any arguments jumps
/// straight to the shared `ret ALLOW`.
fn layout(ops: Vec<Op>, map: &BTreeMap<u32, Verdict>) -> Result<BpfProgram, SeccompError> {
    let size = |op: &Op| match op {
        Op::Mark(_) => 0,
        Op::JgeThenJa(..) => 2,
        Op::JeqJaJa(..) => 3,
        _ => 1,
    };
    let key = |l: Label| -> Option<(u8, u64)> {
        match l {
            Label::Allow => Some((0, 0)),
            Label::Deny => Some((1, 0)),
            Label::Node(n) => Some((2, n as u64)),
            Label::Leaf(nr) => match map.get(&nr) {
                Some(Verdict::Any) | None => None,
                Some(Verdict::Only { .. }) => Some((3, u64::from(nr))),
            },
        }
    };
    let mut at = BTreeMap::new();
    let mut pc = 0usize;
    for op in &ops {
        if let Op::Mark(l) = op {
            if let Some(k) = key(*l) {
                at.insert(k, pc);
            }
        }
        pc += size(op);
    }
    let target = |l: Label| -> Result<usize, SeccompError> {
        let k = match (key(l), l) {
            (Some(k), _) => k,
            // A call allowed with any arguments goes to the shared ALLOW;
            // anything else unresolved is a compiler bug: fail closed.
            (None, Label::Leaf(nr)) if map.get(&nr) == Some(&Verdict::Any) => (0, 0),
            (None, _) => return Err(compile_err("a jump to a call not on the list")),
        };
        at.get(&k)
            .copied()
            .ok_or_else(|| compile_err("a jump to nowhere"))
    };
    let ins = |code: u16, jt: u8, jf: u8, k: u32| sock_filter { code, jt, jf, k };
    let mut prog = Vec::with_capacity(pc);
    let ja = |prog: &Vec<sock_filter>, to: usize| -> Result<sock_filter, SeccompError> {
        let from = prog.len() + 1;
        let off = to
            .checked_sub(from)
            .ok_or_else(|| compile_err("a backward jump"))?;
        Ok(ins(JA, 0, 0, off as u32))
    };
    for op in ops {
        match op {
            Op::Mark(_) => {}
            Op::Ld(off) => prog.push(ins(LD_ABS, 0, 0, off)),
            Op::Ret(k) => prog.push(ins(RET, 0, 0, k)),
            Op::Ja(l) => {
                let j = ja(&prog, target(l)?)?;
                prog.push(j);
            }
            Op::JgeThenJa(k, l) => {
                prog.push(ins(JGE, 0, 1, k));
                let j = ja(&prog, target(l)?)?;
                prog.push(j);
            }
            Op::JeqJaJa(k, yes, no) => {
                prog.push(ins(JEQ, 0, 1, k));
                let j = ja(&prog, target(yes)?)?;
                prog.push(j);
                let j = ja(&prog, target(no)?)?;
                prog.push(j);
            }
            Op::JeqAllowLocal(k, skip) => prog.push(ins(JEQ, skip, 0, k)),
        }
    }
    // The kernel's limit (BPF_MAXINSNS).
    if prog.len() > 4096 {
        return Err(compile_err("the program is too long"));
    }
    Ok(prog)
}
