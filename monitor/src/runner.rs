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

/// How a guest run ended.
pub struct Finished {
    /// What the guest did.
    pub outcome: Outcome,
    /// The boot trace, if tracing.
    pub trace: Option<BootTrace>,
}

/// Builds a VM with `make` on a new vCPU thread and runs it there; serves
/// `api` (a Unix socket path) while it runs. Returns when the guest ends.
pub fn run<F, E>(make: F, api: Option<PathBuf>) -> Result<Finished, RunError>
where
    F: FnOnce(Arc<Control>) -> Result<Vm, E> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let ctl = Arc::new(Control::new().map_err(RunError::Control)?);
    // The socket first: a bad --api path fails before the guest starts.
    // Requests that arrive before the vCPU runs wait in the queue.
    let server = api
        .map(|path| crate::api::serve(path, ctl.clone()))
        .transpose()?;
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), RunError>>();
    let vcpu_ctl = ctl.clone();
    let vcpu = std::thread::Builder::new()
        .name("duet-vcpu".into())
        .spawn(move || {
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
            let _ = ready_tx.send(Ok(()));
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
