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
