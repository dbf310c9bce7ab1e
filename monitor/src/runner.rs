//! Running a guest: the vCPU on its own thread while a control socket is
//! served (`--api`), or on the calling thread when there is none (one
//! thread fewer to start on the boot path).

use crate::outcome::Outcome;
use crate::seccomp::Thread;
use crate::trace::BootTrace;
use crate::vmm::{Control, Vmm};
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use thiserror::Error;

/// Why a guest could not be started.
#[derive(Debug, Error)]
pub enum RunError {
    /// The control block could not be set up.
    #[error("cannot set up guest control: {0}")]
    Control(std::io::Error),
    /// The `--api` socket could not be opened.
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    /// Building the VM failed.
    #[error("{0}")]
    Start(String),
    /// The vCPU thread died (a monitor bug).
    #[error("the vCPU thread failed: {0}")]
    Thread(String),
    /// A thread could not be confined (`--seccomp`).
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

/// How to run a guest besides what builds it.
#[derive(Debug)]
pub struct RunOptions {
    /// Serve the control socket at this path (`--api`).
    pub api: Option<PathBuf>,
    /// Once the VM is built, open this path for writing (a FIFO: blocks
    /// until a reader opens it), write one byte, and only then enter the
    /// guest (`--wait-start`, for container runtimes: `create` then `start`).
    pub wait_start: Option<PathBuf>,
    /// Grace period after `SIGTERM` (`--stop-timeout`).
    pub stop_timeout: std::time::Duration,
    /// Template mode: at the guest's `duet::snapshot_point()`, snapshot it
    /// into this new directory and stop it.
    pub snapshot_at_point: Option<PathBuf>,
    /// GDB (`--gdb`, `--gdb-wait`) and core files (`--core`).
    pub debug: crate::debug::DebugOptions,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            api: None,
            wait_start: None,
            stop_timeout: crate::signals::DEFAULT_STOP_TIMEOUT,
            snapshot_at_point: None,
            debug: Default::default(),
        }
    }
}

/// Opens `path` for writing (blocking until a reader opens it) and writes
/// one byte. A signal ends the wait: then the guest never starts.
fn wait_start(path: &std::path::Path) -> Result<(), Outcome> {
    use std::os::unix::ffi::OsStrExt;
    let fail = |e: std::io::Error| {
        Outcome::Failed(format!(
            "--wait-start {}: {e}; create it first (`mkfifo PATH`)",
            path.display()
        ))
    };
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| fail(std::io::Error::other("path contains NUL")))?;
    loop {
        // Raw open(2): std retries EINTR, but a signal must end this wait.
        // SAFETY: a valid NUL-terminated path; the fd is owned below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            return std::io::Write::write_all(&mut f, b"0").map_err(fail);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(fail(e));
        }
        if let Some(sig) = crate::signals::take() {
            return Err(Outcome::Terminated(sig));
        }
    }
}

/// How a guest run ended.
pub struct Finished {
    /// What the guest did.
    pub outcome: Outcome,
    /// The boot trace, if tracing.
    pub trace: Option<BootTrace>,
}

/// Builds a guest with `make` and runs it (on a vCPU thread while the
/// control socket is served); returns when the guest ends.
pub fn run<F, E>(make: F, opts: RunOptions) -> Result<Finished, RunError>
where
    F: FnOnce(Arc<Control>) -> Result<Vmm, E> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    // Before any thread exists: they all inherit the blocked signals; only
    // the thread running the vCPU takes them (see `signals`).
    crate::signals::install();
    let ctl = Arc::new(Control::new().map_err(RunError::Control)?);
    let Some(api) = opts.api.clone() else {
        crate::signals::unblock();
        return drive(make, ctl, opts, None);
    };
    // The socket first: a bad --api path fails before the guest starts.
    // Requests that arrive before the vCPU runs wait in the queue.
    let server = crate::api::serve(api, ctl.clone())?;
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let vcpu = std::thread::Builder::new()
        .name("duet-vcpu".into())
        .spawn(move || {
            crate::signals::unblock();
            drive(make, ctl, opts, Some(go_rx))
        })
        .map_err(RunError::Control)?;
    // Every thread this one starts is running: narrow to its own list, and
    // only then let the guest's first instruction run.
    let confined = crate::seccomp::install(Thread::Main);
    if confined.is_ok() {
        let _ = go_tx.send(());
    }
    drop(go_tx);
    let finished = vcpu
        .join()
        .map_err(|_| RunError::Thread("it panicked".into()))?;
    drop(server);
    confined?;
    finished
}

/// Builds the guest, waits at the start gate (and for `go`: the main
/// thread confined), confines the thread to the vCPU list, runs the guest,
/// and saves it at its snapshot point in template mode.
fn drive<F, E>(
    make: F,
    ctl: Arc<Control>,
    opts: RunOptions,
    go: Option<Receiver<()>>,
) -> Result<Finished, RunError>
where
    F: FnOnce(Arc<Control>) -> Result<Vmm, E>,
    E: std::error::Error + 'static,
{
    let mut vmm = match make(ctl.clone()) {
        Ok(v) => v,
        Err(e) => {
            ctl.finish();
            // Keep the error's whole chain, in one line, each cause once.
            return Err(RunError::Start(crate::errors::chain(&e)));
        }
    };
    if let Err(e) = crate::debug::setup(&mut vmm, opts.debug) {
        ctl.finish();
        return Err(RunError::Start(crate::errors::chain(&e)));
    }
    vmm.set_stop_timeout(opts.stop_timeout);
    vmm.set_template(opts.snapshot_at_point.is_some());
    if let Some(Err(outcome)) = opts.wait_start.as_deref().map(wait_start) {
        ctl.finish();
        return Ok(Finished {
            outcome,
            trace: vmm.take_trace(),
        });
    }
    // Nothing runs unfiltered once the guest does.
    let confined = match go.map(|g| g.recv()) {
        Some(Err(_)) => Err(RunError::Start(
            "the main thread could not install its seccomp filter".into(),
        )),
        _ => crate::seccomp::install(Thread::Vcpu).map_err(RunError::Seccomp),
    };
    if let Err(e) = confined {
        ctl.finish();
        return Err(e);
    }
    let mut outcome = vmm.run();
    if let (Outcome::AtSnapshotPoint, Some(dir)) = (&outcome, &opts.snapshot_at_point) {
        outcome = match crate::snapshot::save(&mut vmm, dir) {
            Ok(_) => Outcome::Snapshotted(dir.display().to_string()),
            Err(e) => Outcome::Failed(format!(
                "cannot snapshot the guest at its snapshot point: {e}"
            )),
        };
    }
    let mut trace = vmm.take_trace();
    if let Some(t) = &mut trace {
        t.mark("guest exit");
    }
    Ok(Finished { outcome, trace })
}
