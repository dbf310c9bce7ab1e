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
    Start(Box<dyn std::error::Error + Send + Sync>),
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
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), RunError>>();
    let vcpu_ctl = ctl.clone();
    let vcpu = std::thread::Builder::new()
        .name("duet-vcpu".into())
        .spawn(move || {
            let mut vm = match make(vcpu_ctl) {
                Ok(vm) => vm,
                Err(e) => {
                    let _ = ready_tx.send(Err(RunError::Start(Box::new(e))));
                    return None;
                }
            };
            let _ = ready_tx.send(Ok(()));
            let outcome = vm.run();
            let trace = vm.take_trace();
            Some(Finished { outcome, trace })
        })
        .map_err(RunError::Control)?;
    let started = ready_rx
        .recv()
        .unwrap_or_else(|_| Err(RunError::Thread("it ended before the VM was built".into())));
    let server = match (started, api) {
        (Err(e), _) => {
            let _ = vcpu.join();
            return Err(e);
        }
        (Ok(()), Some(path)) => Some(crate::api::serve(path, ctl.clone())),
        (Ok(()), None) => None,
    };
    let server = match server.transpose() {
        Ok(s) => s,
        Err(e) => {
            // The guest runs already; stop it rather than leave it unreachable.
            let _ = vcpu.join();
            return Err(e.into());
        }
    };
    let finished = vcpu
        .join()
        .map_err(|_| RunError::Thread("it panicked".into()))?
        .ok_or_else(|| RunError::Thread("no outcome".into()))?;
    drop(server);
    Ok(finished)
}
