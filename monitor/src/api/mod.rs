//! The control socket (`--api SOCKET`): a Unix stream socket speaking one
//! JSON object per line each way ([`wire`]; `docs/api.md`). Requests are
//! served by [`dispatch`]; [`client`] is the other end (`duet ctl`).

pub mod client;
pub mod dispatch;
pub mod wire;

pub use client::call;
pub use wire::{Request, Response};

use crate::vmm::Control;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// A control-socket problem, each naming its cause and remedy once.
#[derive(Debug, Error)]
pub enum ApiError {
    /// Another monitor serves this path.
    #[error("control socket {0} is in use by another duet; pick another path")]
    InUse(String),
    /// A socket of another kind (datagram, ...) is at the path: another
    /// program's, never a duet's.
    #[error("{0} is another program's socket (not a stream socket, so no duet serves it); give --api a path of its own, and `duet ctl` the path given to --api")]
    OtherSocket(String),
    /// A directory is in the way.
    #[error("{0} is a directory; give --api the path of a socket to create (e.g. {0}/duet.sock)")]
    Directory(String),
    /// Something that is not a socket is in the way: never removed.
    #[error("{0} exists and is not a socket; remove it yourself or pick another path (duet only replaces a stale socket)")]
    NotSocket(String),
    /// Binding failed.
    #[error("cannot create control socket {path}: {why}; give --api a path in a directory you may write")]
    Bind {
        /// The path.
        path: String,
        /// The OS's reason.
        why: String,
    },
    /// `duet ctl` was given a directory.
    #[error("{0} is a directory, not a control socket; give `duet ctl` the path given to --api")]
    CtlDirectory(String),
    /// `duet ctl` was given something that is not a socket.
    #[error(
        "{0} is not a socket (a file of another kind); give `duet ctl` the path given to --api"
    )]
    CtlNotSocket(String),
    /// Nothing at the path.
    #[error("no control socket at {path}{hint}; is the guest running with --api {path}?")]
    Missing {
        /// The path.
        path: String,
        /// A hint about clone sockets (`SOCKET.0`).
        hint: String,
    },
    /// Nobody answers at the path.
    #[error("nobody serves {0} (the monitor that made it has ended); start the guest again with --api {0}")]
    Dead(String),
    /// Talking to a monitor failed.
    #[error("talking to the duet at {path} failed: {why}")]
    Io {
        /// The path.
        path: String,
        /// The OS's reason.
        why: String,
    },
    /// The monitor's answer was not understood.
    #[error("bad answer from {path}: {why}")]
    BadAnswer {
        /// The path.
        path: String,
        /// Why.
        why: String,
    },
}

/// The serving side; removes the socket file when dropped.
pub struct Server {
    path: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Makes room for a new socket at `path`: nothing there, or a stale socket
/// (one nobody answers on), which is removed. Anything else is refused:
/// nothing a user names is ever destroyed.
fn clear(path: &Path) -> Result<(), ApiError> {
    let shown = || path.display().to_string();
    let meta = match path.symlink_metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(ApiError::Bind {
                path: shown(),
                why: e.to_string(),
            })
        }
        Ok(m) => m,
    };
    if meta.is_dir() {
        return Err(ApiError::Directory(shown()));
    }
    if !meta.file_type().is_socket() {
        return Err(ApiError::NotSocket(shown()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ApiError::InUse(shown())),
        Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => Err(ApiError::OtherSocket(shown())),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            // A socket left behind by a monitor that died.
            std::fs::remove_file(path).map_err(|e| ApiError::Bind {
                path: shown(),
                why: format!("cannot remove the stale socket: {e}"),
            })
        }
        Err(e) => Err(ApiError::Bind {
            path: shown(),
            why: e.to_string(),
        }),
    }
}

/// Binds `path` (mode 0600) and serves requests to `ctl` on a background
/// thread.
pub fn serve(path: PathBuf, ctl: Arc<Control>) -> Result<Server, ApiError> {
    clear(&path)?;
    let shown = path.display().to_string();
    let bind_err = |e: std::io::Error| ApiError::Bind {
        path: shown.clone(),
        why: e.to_string(),
    };
    let listener = UnixListener::bind(&path).map_err(bind_err)?;
    // Only the user who started the guest may control it.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    let server = Server { path };
    std::thread::Builder::new()
        .name("duet-api".into())
        .spawn(move || {
            // Connection threads (and the migration and GDB threads they
            // start) run under this list too, or narrow it.
            crate::seccomp::install_or_exit(crate::seccomp::Thread::Control);
            for conn in listener.incoming().flatten() {
                let ctl = ctl.clone();
                // A migration streams for seconds: each connection gets its
                // own thread so `status` or `pause` still answer meanwhile.
                let _ = std::thread::Builder::new()
                    .name("duet-api-conn".into())
                    .spawn(move || serve_conn(conn, &ctl));
            }
        })
        .map_err(bind_err)?;
    Ok(server)
}

fn serve_conn(conn: UnixStream, ctl: &Arc<Control>) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => dispatch::serve(ctl, req, &mut out),
            Err(e) => Response::err(format!("bad request: {e}")),
        };
        let mut text = serde_json::to_string(&resp).unwrap_or_else(|_| "{\"ok\":false}".into());
        text.push('\n');
        if out.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}
