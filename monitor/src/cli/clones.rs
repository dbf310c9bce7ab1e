//! `--clones N`: N child monitors restoring one snapshot, and a parent that
//! waits for them, forwarding `SIGTERM` and `SIGINT` so that stopping the
//! parent stops every clone the documented way (each gets its own grace
//! period after `SIGTERM`).
//!
//! The parent blocks the signals it acts on (`SIGTERM`, `SIGINT`,
//! `SIGCHLD`) before it starts a child and takes them with `sigwaitinfo`:
//! no handler, and no window in which a signal could arrive unseen between
//! two waits. Children start with an empty signal mask (std resets it), in
//! the parent's process group (so a group kill reaches them all, and tools
//! that watch the group see them), with `SIGTERM` as their parent-death
//! signal, so a parent killed outright still stops them.

use super::args::Common;
use anyhow::{bail, Context};
use duet_monitor::contract::status;
use duet_monitor::outcome::Outcome;
use duet_monitor::snapshot::Snapshot;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// The signals the parent waits for.
fn wait_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise a sigset_t we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// One clone's command line; `netns`, an open network namespace, is
/// entered before the monitor starts.
fn clone_cmd(exe: &Path, dir: &Path, i: u32, c: &Common, netns: Option<RawFd>) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("restore")
        .arg(dir)
        .args(["--no-verify", "--clone-index", &i.to_string()])
        .arg("--kvm-device")
        .arg(&c.kvm_device)
        .arg("--stop-timeout")
        .arg(c.stop_timeout.as_secs_f64().to_string());
    if let Some(api) = &c.api {
        cmd.arg("--api").arg(format!("{}.{i}", api.display()));
    }
    if !c.seccomp.on {
        cmd.args(["--seccomp", "off"]);
    }
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes async-signal-safe system calls (setns, prctl, getppid); `netns`
    // stays open in the parent until the child has been spawned.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = netns {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl took effect.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("the parent monitor has ended"));
            }
            Ok(())
        });
    }
    cmd
}

/// The clones still running: pid → clone index.
type Live = std::collections::HashMap<libc::pid_t, usize>;

/// Sends `sig` to every clone still running.
fn forward(live: &Live, sig: libc::c_int) {
    for pid in live.keys() {
        // SAFETY: kill(2) on a child we started and have not reaped, so the
        // pid cannot have been reused.
        unsafe { libc::kill(*pid, sig) };
    }
}

/// The exit status a wait status stands for (128 + signal if killed).
fn exit_status(wstatus: libc::c_int) -> u8 {
    if libc::WIFEXITED(wstatus) {
        libc::WEXITSTATUS(wstatus) as u8
    } else {
        status::terminated(libc::WTERMSIG(wstatus))
    }
}

/// Reaps the clones that have ended (all of them, waiting, if `block`):
/// returns (clone index, exit status) for each and forgets its pid.
fn reap(live: &mut Live, block: bool) -> Vec<(usize, u8)> {
    let mut out = Vec::new();
    while !live.is_empty() {
        let mut ws = 0;
        let flags = if block { 0 } else { libc::WNOHANG };
        // SAFETY: waitpid for any child of ours, into a local.
        let pid = unsafe { libc::waitpid(-1, &mut ws, flags) };
        if pid > 0 {
            if let Some(i) = live.remove(&pid) {
                out.push((i, exit_status(ws)));
            }
            continue;
        }
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if pid < 0 {
            // ECHILD: nothing left to wait for (cannot happen while `live`
            // holds pids); report the rest as failed rather than hang.
            out.extend(live.drain().map(|(_, i)| (i, status::VM_FAILURE)));
        }
        break;
    }
    out
}

/// Starts `n` clones of snapshot `dir` as child monitors and waits for all;
/// the outcome is the first failing clone's status (0 if none failed).
pub fn run(
    dir: &Path,
    n: u32,
    c: &Common,
    start: Instant,
    verify: bool,
    netns: Option<&str>,
) -> anyhow::Result<Outcome> {
    // Check once here; each clone then maps the files without re-reading them.
    Snapshot::open(dir)
        .and_then(|s| if verify { s.verify_memory() } else { Ok(()) })
        .context("cannot restore the snapshot")?;
    let exe = std::env::current_exe().context("cannot find the duet binary")?;
    let set = wait_set();
    // SAFETY: changes this (single-threaded) process's signal mask only.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    let mut live = Live::new();
    // Every namespace must exist before the first clone starts.
    let spaces = match netns {
        None => Vec::new(),
        Some(prefix) => (0..n)
            .map(|i| {
                let path = format!("/run/netns/{prefix}{i}");
                std::fs::File::open(&path).with_context(|| {
                    format!("--clone-netns: cannot open {path}; create the namespace first (`ip netns add {prefix}{i}`, with the template's TAP in it)")
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
    };
    for i in 0..n {
        let ns = spaces.get(i as usize).map(|f| f.as_raw_fd());
        match clone_cmd(&exe, dir, i, c, ns).spawn() {
            Ok(child) => {
                live.insert(child.id() as libc::pid_t, i as usize);
            }
            Err(e) => {
                forward(&live, libc::SIGTERM);
                reap(&mut live, true);
                // setns(CLONE_NEWNET) needs CAP_SYS_ADMIN: the one part of
                // a template start that needs root.
                let why = match (netns, e.raw_os_error()) {
                    (Some(_), Some(libc::EPERM)) => format!(
                        "{e}; --clone-netns enters a network namespace per clone, which needs root (CAP_SYS_ADMIN): run this command as root (everything else about clones does not need it)"
                    ),
                    _ => e.to_string(),
                };
                bail!("cannot start clone {i}: {why}; the clones already started were stopped");
            }
        }
    }
    // Every child runs (each installs its own lists): from here the parent
    // only waits, forwards signals and reports. Filters survive exec, so
    // this comes after the last child started, never before.
    if let Err(e) = duet_monitor::seccomp::install(duet_monitor::seccomp::Thread::Clones) {
        forward(&live, libc::SIGTERM);
        reap(&mut live, true);
        bail!("{e}; the clones were stopped");
    }
    if c.trace_boot {
        eprintln!(
            "duet: started {n} clones in {:.3} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
    }
    let mut statuses = vec![0u8; n as usize];
    loop {
        for (i, st) in reap(&mut live, false) {
            statuses[i] = st;
        }
        if live.is_empty() {
            break;
        }
        // SAFETY: waits for one of the signals of `set`, which are blocked.
        let sig = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if sig == libc::SIGTERM || sig == libc::SIGINT {
            forward(&live, sig);
        }
    }
    let mut result = Outcome::Exited(0);
    for (i, st) in statuses.into_iter().enumerate() {
        if st != 0 {
            eprintln!("duet: clone {i} exited with status {st}");
            if result == Outcome::Exited(0) {
                result = Outcome::Exited(st);
            }
        }
    }
    Ok(result)
}
