//! The lists as data: every one compiles, allows what the report needs,
//! lets its children start and narrow, and matches docs/security.md.

use super::lists::{self, Allowed, Args};
use super::{filter, trap, Thread};

fn has(list: &[Allowed], nr: i64) -> bool {
    list.iter().any(|a| a.sys.nr == nr)
}

/// Whether `parent` allows every call (and every argument) `child` does.
fn covers(parent: &[Allowed], child: &[Allowed]) -> Result<(), String> {
    for c in child {
        let Some(p) = parent.iter().find(|p| p.sys.nr == c.sys.nr) else {
            return Err(format!("{} is missing", c.sys.name()));
        };
        let ok = match (&p.args, &c.args) {
            (Args::Any, _) => true,
            (Args::Ioctl(p), Args::Ioctl(c)) => c.iter().all(|i| p.iter().any(|x| x.nr == i.nr)),
            (
                Args::Only {
                    arg: pa,
                    values: pv,
                },
                Args::Only {
                    arg: ca,
                    values: cv,
                },
            ) => pa == ca && cv.iter().all(|v| pv.contains(v)),
            _ => false,
        };
        if !ok {
            return Err(format!("{} with {:?} is narrower", c.sys.name(), c.args));
        }
    }
    Ok(())
}

#[test]
fn every_list_compiles_and_allows_the_report() {
    for t in Thread::ALL {
        let l = lists::list(t);
        filter::compile(&l, seccompiler::SeccompAction::Trap).unwrap();
        // The SIGSYS handler writes one line and exits; a thread's end and
        // a signal handler's return are everyday events everywhere.
        for nr in [
            libc::SYS_write,
            libc::SYS_exit_group,
            libc::SYS_exit,
            libc::SYS_rt_sigreturn,
        ] {
            assert!(has(&l, nr), "the {} list lacks call {nr}", t.name());
        }
        // What an attacker wants, and what the test probe makes.
        for nr in [
            libc::SYS_execve,
            libc::SYS_fork,
            libc::SYS_ptrace,
            libc::SYS_clone,
        ] {
            assert!(!has(&l, nr), "the {} list allows call {nr}", t.name());
        }
        let mut nrs: Vec<i64> = l.iter().map(|a| a.sys.nr).collect();
        nrs.sort();
        nrs.dedup();
        assert_eq!(nrs.len(), l.len(), "the {} list repeats a call", t.name());
        assert!(l.iter().all(|a| !a.sys.why.is_empty()));
    }
}

#[test]
fn a_thread_started_under_a_list_can_narrow_to_its_own() {
    for t in Thread::ALL {
        let parent = lists::list(t);
        for c in t.children() {
            if let Err(e) = covers(&parent, &lists::list(*c)) {
                panic!(
                    "the {} thread starts {} threads, but its list does not cover theirs: {e}",
                    t.name(),
                    c.name()
                );
            }
        }
        // Starting a thread that then installs its own list.
        if !t.children().is_empty() {
            for nr in [
                libc::SYS_clone3,
                libc::SYS_set_robust_list,
                libc::SYS_rseq,
                libc::SYS_prctl,
                libc::SYS_seccomp,
            ] {
                assert!(has(&parent, nr), "the {} list lacks call {nr}", t.name());
            }
        }
    }
}

#[test]
fn the_report_names_the_thread_and_the_call() {
    let r = trap::report_text(libc::SYS_execve, 0, Some(Thread::Vcpu));
    assert!(
        r.starts_with("duet: seccomp: the vcpu thread made system call 59 (execve)"),
        "{r}"
    );
    assert!(r.contains("status 159"), "{r}");
    assert!(r.ends_with('\n'));
    let r = trap::report_text(100_000, 0, None);
    assert!(r.contains("system call 100000 (unknown)"), "{r}");
    let r = trap::report_text(libc::SYS_ioctl, 0xc008_ae05, Some(Thread::Io));
    assert!(
        r.contains("system call 16 (ioctl request KVM_GET_SUPPORTED_CPUID)"),
        "{r}"
    );
    let r = trap::report_text(libc::SYS_ioctl, 0x5401_0000_1234, Some(Thread::Io));
    assert!(r.contains("(ioctl request 0x540100001234)"), "{r}");
    assert_eq!(trap::name(libc::SYS_ioctl), Some("ioctl"));
    assert_eq!(trap::name(libc::SYS_ppoll), Some("ppoll"));
}

/// docs/security.md's table: list, calls allowed, calls with argument
/// filters (and the requests or values allowed).
#[test]
fn the_docs_table_matches_the_lists() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md");
    let text = std::fs::read_to_string(path).expect("docs/security.md");
    let mut rows = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("| list | calls |") {
            inside = true;
            continue;
        }
        if inside && line.starts_with("|---") {
            continue;
        }
        if inside && line.starts_with('|') {
            let cells: Vec<String> = line
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().replace('`', ""))
                .collect();
            rows.push(cells);
        } else if inside {
            break;
        }
    }
    let want: Vec<Vec<String>> = Thread::ALL
        .iter()
        .map(|t| {
            let l = lists::list(*t);
            let filtered: Vec<&Allowed> =
                l.iter().filter(|a| !matches!(a.args, Args::Any)).collect();
            let values: usize = filtered
                .iter()
                .map(|a| match a.args {
                    Args::Ioctl(v) => v.len(),
                    Args::Only { values, .. } => values.len(),
                    Args::Any => 0,
                })
                .sum();
            vec![
                t.name().to_string(),
                l.len().to_string(),
                filtered.len().to_string(),
                values.to_string(),
            ]
        })
        .collect();
    let got: Vec<Vec<String>> = rows.iter().map(|r| r[..4.min(r.len())].to_vec()).collect();
    assert_eq!(
        got, want,
        "docs/security.md's table (list, calls, with argument filters, values allowed) is not the lists'"
    );
}

/// Runs a seccomp BPF program the way the kernel does, for the few
/// instructions `filter.rs` emits.
fn run(prog: &[seccompiler::sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
    let word = |off: u32| -> u32 {
        match off {
            0 => nr,
            4 => arch,
            o if (16..64).contains(&o) && (o - 16) % 8 == 0 => args[((o - 16) / 8) as usize] as u32,
            o => panic!("load at {o}"),
        }
    };
    let (mut pc, mut acc) = (0usize, 0u32);
    loop {
        let i = &prog[pc];
        pc += 1;
        match i.code {
            0x20 => acc = word(i.k),
            0x15 => pc += usize::from(if acc == i.k { i.jt } else { i.jf }),
            0x35 => pc += usize::from(if acc >= i.k { i.jt } else { i.jf }),
            0x05 => pc += i.k as usize,
            0x06 => return i.k,
            c => panic!("opcode {c:#x}"),
        }
    }
}

#[test]
fn the_tree_gives_every_call_and_argument_the_lists_verdict() {
    use seccompiler::SeccompAction;
    let allow = u32::from(SeccompAction::Allow);
    let deny = u32::from(SeccompAction::Trap);
    for t in Thread::ALL {
        let list = lists::list(t);
        let map = filter::verdicts(&list).unwrap();
        for a in &list {
            let v = map.get(&(a.sys.nr as u32));
            assert!(v.is_some(), "{t:?}: {} lost", a.sys.name());
            if matches!(a.args, Args::Any) {
                assert_eq!(v, Some(&filter::Verdict::Any), "{t:?}: {}", a.sys.name());
            }
        }
        let prog = filter::compile(&list, SeccompAction::Trap).unwrap();
        // Another architecture's calls, and x32's, never pass.
        assert_eq!(run(&prog, 0, 0x4000_0003, [0; 6]), deny, "{t:?}: i386");
        assert_eq!(
            run(&prog, 0x4000_0000, 0xc000_003e, [0; 6]),
            deny,
            "{t:?}: x32"
        );
        for nr in 0..1024u32 {
            let got = |args| run(&prog, nr, 0xc000_003e, args);
            match map.get(&nr) {
                None => assert_eq!(got([0; 6]), deny, "{t:?}: call {nr}"),
                Some(filter::Verdict::Any) => {
                    assert_eq!(got([0; 6]), allow, "{t:?}: call {nr}");
                    assert_eq!(got([u64::MAX; 6]), allow, "{t:?}: call {nr}");
                }
                Some(filter::Verdict::Only { arg, values }) => {
                    for &v in values {
                        let mut a = [0u64; 6];
                        a[usize::from(*arg)] = u64::from(v) | 0xdead_0000_0000;
                        assert_eq!(got(a), allow, "{t:?}: call {nr} arg {arg} = {v:#x}");
                    }
                    for v in [0u32, 1, 0x4000_0000, u32::MAX] {
                        if !values.contains(&v) {
                            let mut a = [0u64; 6];
                            a[usize::from(*arg)] = u64::from(v);
                            assert_eq!(got(a), deny, "{t:?}: call {nr} arg {arg} = {v:#x}");
                        }
                    }
                }
            }
        }
    }
}
