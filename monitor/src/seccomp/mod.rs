//! seccomp: each monitor thread confined to the system calls it needs
//! (`docs/security.md` has the table, `lists.rs` the lists with why).
//!
//! A filter is per thread, is inherited by the threads it starts, and
//! filters stack: a thread can only narrow what it has. So every thread
//! either installs its list itself, first thing, while its parent's list
//! still allows what starting it takes (`Control`, `Incoming` and the
//! unfiltered building thread start threads), or is started by a thread
//! whose list is a superset of its own (a unit test checks each such pair).
//! Where each list goes on:
//!
//! * the vCPU thread: just before the guest's first instruction
//!   (`runner.rs`); without `--api` that is the main thread. Building the
//!   guest (image, devices, KVM) happens before, unfiltered: one filter on
//!   the boot path, not two (attaching one costs time);
//! * the main thread with `--api`: right after it started the control and
//!   vCPU threads; the vCPU thread waits for it before entering the guest;
//! * the control thread and its connection threads (`api/`), a
//!   migration's sender (`migration/source.rs`), the GDB thread
//!   (`debug/stub.rs`), every virtio I/O thread (`devices/virtio/worker.rs`):
//!   as each starts;
//! * a migration's destination: once the source is connected, before its
//!   first byte is read; the thread narrows to the vCPU list before the
//!   guest runs;
//! * `--clones`: the parent, once every child runs.
//!
//! A violation traps: `trap.rs` names the thread and the call and ends the
//! monitor with status 159 ([`crate::contract::status::SECCOMP`]).
//! Nothing is filtered until the CLI calls [`enable`] (`--seccomp on`, the
//! default), so the library's unit tests run unfiltered.

mod args;
mod filter;
pub mod ioctls;
pub mod lists;
#[cfg(test)]
mod tests;
mod trap;

pub use trap::STATUS;

use std::sync::atomic::{AtomicBool, Ordering};
use thiserror::Error;

/// A list of allowed calls: one per kind of monitor thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Thread {
    /// The main thread with `--api`, once it has started the others.
    Main,
    /// The thread that runs the guest (the main thread without `--api`).
    Vcpu,
    /// The control socket's thread and its connection threads.
    Control,
    /// A live migration's sender (started by a connection thread).
    Migration,
    /// `run --incoming` while the guest arrives and is built.
    Incoming,
    /// A virtio device's I/O thread.
    Io,
    /// The GDB server's thread.
    Gdb,
    /// The `--clones` parent.
    Clones,
}

impl Thread {
    /// Every list, in the docs' order.
    pub const ALL: [Thread; 8] = [
        Thread::Main,
        Thread::Vcpu,
        Thread::Control,
        Thread::Migration,
        Thread::Incoming,
        Thread::Io,
        Thread::Gdb,
        Thread::Clones,
    ];

    /// Its name in reports, the docs and `DUET_TEST_SECCOMP_PROBE`.
    pub fn name(self) -> &'static str {
        match self {
            Thread::Main => "main",
            Thread::Vcpu => "vcpu",
            Thread::Control => "control",
            Thread::Migration => "migration",
            Thread::Incoming => "incoming",
            Thread::Io => "io",
            Thread::Gdb => "gdb",
            Thread::Clones => "clones",
        }
    }

    fn from_u8(v: u8) -> Option<Thread> {
        Thread::ALL.get(usize::from(v)).copied()
    }

    /// The threads that start under this one's list and then narrow (or
    /// keep it): this list must allow all of theirs.
    pub fn children(self) -> &'static [Thread] {
        match self {
            Thread::Control => &[Thread::Migration, Thread::Gdb],
            Thread::Incoming => &[Thread::Vcpu, Thread::Io, Thread::Gdb],
            _ => &[],
        }
    }
}

/// Why a filter could not be installed.
#[derive(Debug, Error)]
pub enum SeccompError {
    /// The kernel refused (no seccomp filter support, or a limit).
    #[error("cannot install the {thread} thread's seccomp filter: {why}; this kernel needs seccomp filters (CONFIG_SECCOMP_FILTER), or run with --seccomp off (unsafe: for debugging only)")]
    Install {
        /// Which list.
        thread: &'static str,
        /// The kernel's reason.
        why: String,
    },
    /// A list could not be compiled (a monitor bug).
    #[error("cannot compile a seccomp filter: {0}")]
    Compile(String),
}

impl SeccompError {
    fn compile(e: impl std::fmt::Display) -> SeccompError {
        SeccompError::Compile(e.to_string())
    }
}

/// Set once by the CLI: process-wide policy, read by every thread start.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns filtering on for this process (`--seccomp on`): installs the
/// report handler and checks the kernel can filter, so that a thread's
/// later install does not fail half-way through a run.
pub fn enable() -> Result<(), SeccompError> {
    let refuse = |why: String| SeccompError::Install {
        thread: "first",
        why,
    };
    // SAFETY: prctl with constant arguments; no memory involved.
    if unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } < 0 {
        return Err(refuse(std::io::Error::last_os_error().to_string()));
    }
    trap::install_handler().map_err(|e| refuse(e.to_string()))?;
    // One malloc arena: glibc's per-thread arenas, when one shrinks, read
    // /proc/sys/vm/overcommit_memory (openat) from whatever thread freed
    // the memory, which only a few lists allow. The main arena trims with
    // brk, on every list. Small allocations stay in per-thread caches.
    // SAFETY: mallopt with a valid parameter, before any thread starts.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    ENABLED.store(true, Ordering::SeqCst);
    Ok(())
}

/// Whether threads are filtered (`--seccomp on`).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Confines the calling thread to `t`'s list (nothing when filtering is
/// off). The thread keeps it until it ends, and so do threads it starts.
pub fn install(t: Thread) -> Result<(), SeccompError> {
    if !enabled() {
        return Ok(());
    }
    let prog = filter::compile(&lists::list(t), mismatch())?;
    log_mode_name(t);
    seccompiler::apply_filter(&prog).map_err(|e| SeccompError::Install {
        thread: t.name(),
        why: e.to_string(),
    })?;
    trap::set_kind(t);
    probe(t);
    Ok(())
}

/// [`install`] for a thread that has nobody to return an error to: an
/// unconfined thread must not run, so the monitor stops (status 125).
pub fn install_or_exit(t: Thread) {
    if let Err(e) = install(t) {
        eprintln!("duet: error: {e}");
        std::process::exit(i32::from(crate::contract::status::MONITOR_ERROR));
    }
}

/// What a call off the list gets: the trap, or (`test-hooks` builds with
/// `DUET_TEST_SECCOMP_LOG` set, for finding what a list lacks) the
/// kernel's log (`dmesg`) and the call goes through.
fn mismatch() -> seccompiler::SeccompAction {
    #[cfg(feature = "test-hooks")]
    if std::env::var_os("DUET_TEST_SECCOMP_LOG").is_some() {
        return seccompiler::SeccompAction::Log;
    }
    seccompiler::SeccompAction::Trap
}

/// `test-hooks` builds in log mode: the thread is renamed `sc-LIST`, so
/// the kernel's log line (`comm=`) says which list missed the call.
fn log_mode_name(t: Thread) {
    #[cfg(feature = "test-hooks")]
    if std::env::var_os("DUET_TEST_SECCOMP_LOG").is_some() {
        let name = format!("sc-{}\0", t.name());
        // SAFETY: PR_SET_NAME reads a NUL-terminated string we own.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    }
    #[cfg(not(feature = "test-hooks"))]
    let _ = t;
}

/// `test-hooks` builds: with `DUET_TEST_SECCOMP_PROBE` naming `t`, the
/// thread makes a call no list allows (`execve` of nothing, harmless
/// without a filter) right after its filter is in, so a test can see the
/// monitor stop with the documented status and report.
fn probe(t: Thread) {
    #[cfg(feature = "test-hooks")]
    if std::env::var("DUET_TEST_SECCOMP_PROBE").is_ok_and(|v| v == t.name()) {
        // SAFETY: execve with null pointers fails with EFAULT when allowed;
        // nothing is executed.
        unsafe { libc::syscall(libc::SYS_execve, 0usize, 0usize, 0usize) };
    }
    #[cfg(not(feature = "test-hooks"))]
    let _ = t;
}
