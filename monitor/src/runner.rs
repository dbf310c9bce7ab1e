//! Running a guest: the vCPU on its own thread, the `--api` socket served
//! on the calling thread's behalf by a control thread.

use crate::control::Control;
use crate::trace::BootTrace;
use crate::vcpu::Outcome;
use crate::vm::Vm;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
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
    /// GDB (`--gdb`, `--gdb-wait`) and core files (`--core`).
    pub debug: crate::debug::DebugOptions,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            api: None,
            wait_start: None,
            stop_timeout: crate::signals::DEFAULT_STOP_TIMEOUT,
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

/// Builds a VM with `make` on a new vCPU thread and runs it there; serves
/// the control socket while it runs. Returns when the guest ends.
pub fn run<F, E>(make: F, opts: RunOptions) -> Result<Finished, RunError>
where
    F: FnOnce(Arc<Control>) -> Result<Vm, E> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    // Before any thread exists: they all inherit the blocked signals; only
    // the vCPU thread takes them (see `signals`).
    crate::signals::install();
    let ctl = Arc::new(Control::new().map_err(RunError::Control)?);
    // The socket first: a bad --api path fails before the guest starts.
    // Requests that arrive before the vCPU runs wait in the queue.
    let server = opts
        .api
        .map(|path| crate::api::serve(path, ctl.clone()))
        .transpose()?;
    let (gate, stop_timeout, debug) = (opts.wait_start, opts.stop_timeout, opts.debug);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), RunError>>();
    let vcpu_ctl = ctl.clone();
    let vcpu = std::thread::Builder::new()
        .name("duet-vcpu".into())
        .spawn(move || {
            crate::signals::unblock();
            let mut vm = match make(vcpu_ctl.clone()) {
                Ok(vm) => vm,
                Err(e) => {
                    vcpu_ctl.finish();
                    // The error crosses threads as text: keep its whole chain.
                    let mut msg = e.to_string();
                    let mut src = e.source();
                    while let Some(s) = src {
                        msg.push_str(&format!(": {s}"));
                        src = s.source();
                    }
                    let _ = ready_tx.send(Err(RunError::Start(msg)));
                    return None;
                }
            };
            if let Err(e) = crate::debug::setup(&mut vm, debug) {
                vcpu_ctl.finish();
                let _ = ready_tx.send(Err(RunError::Start(e.to_string())));
                return None;
            }
            let _ = ready_tx.send(Ok(()));
            vm.set_stop_timeout(stop_timeout);
            if let Some(Err(outcome)) = gate.as_deref().map(wait_start) {
                vcpu_ctl.finish();
                return Some(Finished {
                    outcome,
                    trace: vm.take_trace(),
                });
            }
            let outcome = vm.run();
            let mut trace = vm.take_trace();
            if let Some(t) = &mut trace {
                t.mark("guest exit");
            }
            Some(Finished { outcome, trace })
        })
        .map_err(RunError::Control)?;
    let started = ready_rx
        .recv()
        .unwrap_or_else(|_| Err(RunError::Thread("it ended before the VM was built".into())));
    if let Err(e) = started {
        let _ = vcpu.join();
        return Err(e);
    }
    let finished = vcpu
        .join()
        .map_err(|_| RunError::Thread("it panicked".into()))?
        .ok_or_else(|| RunError::Thread("no outcome".into()))?;
    drop(server);
    Ok(finished)
}
