//! Control requests: one `match` from request to what serves it, like the
//! hypercall dispatch. Everything that touches the guest runs as a job on
//! the vCPU thread; a migration runs here, on the connection's thread,
//! sending its own jobs.

use super::wire::{millis, ProgressLine, Request, Response};
use crate::debug;
use crate::migration::{self, MigrateRequest};
use crate::vmm::{Control, Exited, Vmm};
use std::path::PathBuf;
use std::sync::Arc;

/// Serves `req`; a migration writes progress lines to `out` first.
pub fn serve(ctl: &Arc<Control>, req: Request, out: &mut (impl std::io::Write + Send)) -> Response {
    let r = match req {
        Request::Pause => ctl.on_vcpu(|vmm| {
            vmm.pause();
            Response::state(vmm.state_name())
        }),
        Request::Resume => ctl.on_vcpu(|vmm| match vmm.resume() {
            Ok(()) => Response::state(vmm.state_name()),
            Err(e) => Response::err(e),
        }),
        Request::Status => ctl.on_vcpu(status),
        Request::Snapshot { dir } => ctl.on_vcpu(move |vmm| snapshot(vmm, PathBuf::from(dir))),
        Request::Migrate(m) => return migrate(ctl, &m, out),
        Request::Gdb { addr } => gdb(ctl, &addr),
        Request::Core { path } => ctl.on_vcpu(move |vmm| match debug::dump(vmm, path.as_ref()) {
            Ok(bytes) => Response {
                core_bytes: Some(bytes),
                ..Response::ok()
            },
            Err(e) => Response::err(e),
        }),
    };
    r.unwrap_or_else(|_| Response {
        state: Some("exited".into()),
        ..Response::err("the guest has exited")
    })
}

/// `gdb ADDR`: the listener and the GDB thread start here, on the
/// connection's thread (the vCPU thread's list has no sockets to listen on
/// nor threads to start); the vCPU thread only takes the link.
fn gdb(ctl: &Arc<Control>, addr: &str) -> Result<Response, Exited> {
    if let Some(at) = ctl.on_vcpu(debug::served)? {
        return Ok(Response::err(debug::DebugError::Served(at).to_string()));
    }
    let link = match debug::Listener::bind(addr).and_then(|l| debug::start(l, ctl.clone())) {
        Ok(l) => l,
        Err(e) => return Ok(Response::err(e.to_string())),
    };
    Ok(match ctl.on_vcpu(move |vmm| debug::attach(vmm, link))? {
        Ok(at) => Response {
            gdb: Some(at.to_string()),
            ..Response::ok()
        },
        Err(e) => Response::err(e.to_string()),
    })
}

fn status(vmm: &mut Vmm) -> Response {
    let s = vmm.status();
    Response {
        state: Some(s.state.into()),
        uptime_s: Some(s.uptime_s),
        exits: Some(s.exits),
        memory_bytes: Some(s.memory_bytes),
        memory_resident_bytes: Some(s.memory_resident_bytes),
        devices: Some(s.devices),
        generation: Some(s.generation),
        clone_index: Some(s.clone_index),
        ..Response::ok()
    }
}

fn snapshot(vmm: &mut Vmm, dir: PathBuf) -> Response {
    // GDB's breakpoints are the monitor's, not the guest's: not in the copy.
    match debug::without_breakpoints(vmm, |vmm| crate::snapshot::save(vmm, &dir)) {
        Ok(stats) => Response {
            state: Some(vmm.state_name().into()),
            snapshot_ms: Some(millis(stats.elapsed)),
            snapshot_memory_bytes: Some(stats.memory_bytes),
            ..Response::ok()
        },
        Err(e) => Response::err(e.to_string()),
    }
}

/// Refuses a migration destination that is not numeric: the migration
/// thread's seccomp list has no name lookups (`duet ctl` resolves names
/// before it asks).
fn not_numeric(addr: &str) -> Option<Response> {
    addr.parse::<std::net::SocketAddr>().is_err().then(|| {
        Response::err(format!(
            "`{addr}` is not a numeric ADDR:PORT; give one such as 10.0.0.2:4444 (duet ctl resolves host names itself)"
        ))
    })
}

/// Runs a migration, writing one `{"progress":{...}}` line per round.
fn migrate(
    ctl: &Control,
    req: &MigrateRequest,
    out: &mut (impl std::io::Write + Send),
) -> Response {
    if let Some(e) = not_numeric(&req.addr) {
        return e;
    }
    // GDB's breakpoints live in the guest's text, which is about to be
    // copied page by page while the guest runs: not under a debugger.
    if ctl.on_vcpu(debug::attached) == Ok(true) {
        return Response {
            state: ctl.on_vcpu(|vmm| vmm.state_name().to_string()).ok(),
            ..Response::err("GDB is attached to the guest (its breakpoints are in the guest's text); detach it, then migrate")
        };
    }
    let mut report = |p: &migration::Progress| {
        let line = ProgressLine {
            progress: p.clone(),
        };
        if let Ok(mut t) = serde_json::to_string(&line) {
            t.push('\n');
            let _ = out.write_all(t.as_bytes());
        }
    };
    match migration::source::migrate(ctl, req, &mut report) {
        Ok(s) => {
            log::info!("migrated to {}", s.to);
            Response {
                state: Some("migrated".into()),
                migration: Some(s),
                ..Response::ok()
            }
        }
        Err(e) => {
            log::warn!("migration failed: {e}");
            // Say what the guest does now: running, paused (as before, or
            // held after an unacknowledged commit) or exited meanwhile.
            let state = ctl
                .on_vcpu(|vmm| vmm.state_name())
                .unwrap_or("exited")
                .to_string();
            Response {
                state: Some(state),
                ..Response::err(format!("migration failed: {e}"))
            }
        }
    }
}
