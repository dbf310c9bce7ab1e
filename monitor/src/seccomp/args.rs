//! The calls a list allows only with certain arguments, as entries for
//! `lists.rs`: `ioctl` requests, `prctl` options, the `seccomp`
//! operation, `tgkill`'s signal, `fcntl`'s command, and the two signals
//! glibc's first `pthread_create` takes a handler for; and the types a
//! list is made of.

use super::ioctls::{self, Ioctl};

/// One system call: its number, its libc name (`SYS_read`) and why.
#[derive(Clone, Copy, Debug)]
pub struct Sys {
    /// The x86_64 number.
    pub nr: i64,
    /// `SYS_` + the name.
    pub id: &'static str,
    /// Why the thread makes it.
    pub why: &'static str,
}

impl Sys {
    /// The name, as `man 2` spells it.
    pub fn name(&self) -> &'static str {
        self.id.strip_prefix("SYS_").unwrap_or(self.id)
    }
}

/// Which values of one argument a call is allowed with.
#[derive(Clone, Copy, Debug)]
pub enum Args {
    /// Any arguments.
    Any,
    /// `ioctl`: these requests only (argument 1).
    Ioctl(&'static [Ioctl]),
    /// Argument `arg` equal to one of these (value, name).
    Only {
        /// The argument's index.
        arg: u8,
        /// The values allowed, with their names.
        values: &'static [(u64, &'static str)],
    },
}

/// One entry of a thread's list.
#[derive(Clone, Copy, Debug)]
pub struct Allowed {
    /// The call.
    pub sys: Sys,
    /// What it may be called with.
    pub args: Args,
}

pub(super) const PR_NAME: (u64, &str) = (libc::PR_SET_NAME as u64, "PR_SET_NAME");
pub(super) const PR_NNP: (u64, &str) = (libc::PR_SET_NO_NEW_PRIVS as u64, "PR_SET_NO_NEW_PRIVS");
const SET_FILTER: (u64, &str) = (
    libc::SECCOMP_SET_MODE_FILTER as u64,
    "SECCOMP_SET_MODE_FILTER",
);

/// `tgkill`: `abort()` raising `SIGABRT` on its own thread (so a monitor
/// abort still ends as one, core file and all), and for threads that send
/// the vCPU thread jobs, the kick signal (`SIGRTMIN`, a run-time value in
/// glibc).
pub(super) fn tgkill(kick: bool) -> Allowed {
    static ABORT: [(u64, &str); 1] = [(libc::SIGABRT as u64, "SIGABRT (abort)")];
    static BOTH: std::sync::OnceLock<[(u64, &str); 2]> = std::sync::OnceLock::new();
    let values: &'static [(u64, &str)] = if kick {
        BOTH.get_or_init(|| {
            [
                ABORT[0],
                (
                    libc::SIGRTMIN() as u64,
                    "SIGRTMIN (kicks the vCPU thread to a job)",
                ),
            ]
        })
    } else {
        &ABORT
    };
    Allowed {
        sys: sys(
            libc::SYS_tgkill,
            "SYS_tgkill",
            "abort(); kicking the vCPU thread to a job",
        ),
        args: Args::Only { arg: 2, values },
    }
}

pub(super) const F_GETFL: (u64, &str) = (libc::F_GETFL as u64, "F_GETFL");
pub(super) const F_SETFD: (u64, &str) = (libc::F_SETFD as u64, "F_SETFD");
pub(super) const F_DUP: (u64, &str) = (libc::F_DUPFD_CLOEXEC as u64, "F_DUPFD_CLOEXEC");

/// `fcntl`: only `F_DUPFD_CLOEXEC` (`try_clone` of a socket) and, where
/// directories are read, `F_GETFL` and `F_SETFD` (glibc's `fdopendir`
/// checks the fd and marks it close-on-exec).
pub(super) fn fcntl(values: &'static [(u64, &'static str)]) -> Allowed {
    Allowed {
        sys: sys(
            libc::SYS_fcntl,
            "SYS_fcntl",
            "try_clone of a socket; fdopendir",
        ),
        args: Args::Only { arg: 1, values },
    }
}

fn sys(nr: i64, id: &'static str, why: &'static str) -> Sys {
    Sys { nr, id, why }
}

pub(super) fn ioctl(allowed: &'static [Ioctl], why: &'static str) -> Allowed {
    Allowed {
        sys: sys(libc::SYS_ioctl, "SYS_ioctl", why),
        args: Args::Ioctl(allowed),
    }
}

/// `prctl`: naming new threads, and (for threads whose children narrow
/// themselves) the no-new-privileges bit a filter needs.
pub(super) fn prctl(values: &'static [(u64, &'static str)]) -> Allowed {
    Allowed {
        sys: sys(
            libc::SYS_prctl,
            "SYS_prctl",
            "a new thread's name; no_new_privs before a filter",
        ),
        args: Args::Only { arg: 0, values },
    }
}

/// `rt_sigaction`: only glibc's own `SIGCANCEL` and `SIGSETXID` (32, 33),
/// whose handlers its first `pthread_create` installs: a destination
/// without `--api` starts its first thread (an I/O thread) under its list.
pub(super) fn glibc_sigaction() -> Allowed {
    Allowed {
        sys: sys(
            libc::SYS_rt_sigaction,
            "SYS_rt_sigaction",
            "glibc's first pthread_create",
        ),
        args: Args::Only {
            arg: 0,
            values: &[(32, "SIGCANCEL"), (33, "SIGSETXID")],
        },
    }
}

/// `seccomp`: installing a filter (threads whose children narrow themselves).
pub(super) fn seccomp() -> Allowed {
    Allowed {
        sys: sys(
            libc::SYS_seccomp,
            "SYS_seccomp",
            "a new thread installs its own list",
        ),
        args: Args::Only {
            arg: 0,
            values: &[SET_FILTER],
        },
    }
}

/// The destination's requests: building, then everything the vCPU and the
/// GDB thread ask (they start under its filter).
pub(super) fn incoming_ioctls() -> &'static [Ioctl] {
    static ALL: std::sync::OnceLock<Vec<Ioctl>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let mut v: Vec<Ioctl> = ioctls::INCOMING.to_vec();
        for i in ioctls::VCPU.iter().chain(ioctls::GDB) {
            if !v.iter().any(|x| x.nr == i.nr) {
                v.push(*i);
            }
        }
        v
    })
}
