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
use std::sync::{Arc, Condvar, Mutex};
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
    /// This user may not reach the socket.
    #[error("control socket {0}: permission denied; a control socket is private (mode 0600) to the user who started the guest: run `duet ctl` as that user (`duet ctl` runs as uid {uid})", uid = crate::access::uid())]
    Denied(String),
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

/// The serving side; removes the socket file when dropped, after letting
/// requests in progress answer.
pub struct Server {
    path: PathBuf,
    busy: Arc<Busy>,
}

/// How long a dropped [`Server`] waits for requests in progress: a
/// migration's commit ends the guest while its `migrate` request is still
/// to be answered, and the client must hear that it succeeded.
const ANSWER_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The number of requests being served, with a condition variable to wait
/// for none.
#[derive(Default)]
struct Busy {
    count: Mutex<usize>,
    idle: Condvar,
}

impl Busy {
    /// Runs `f` counted as one request in progress (uncounted again even
    /// if it panics).
    fn serving<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Done<'a>(&'a Busy);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                let mut n = self.0.count.lock().unwrap_or_else(|p| p.into_inner());
                *n -= 1;
                if *n == 0 {
                    self.0.idle.notify_all();
                }
            }
        }
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        let _done = Done(self);
        f()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The socket first: nobody new connects while the last answers go.
        let _ = std::fs::remove_file(&self.path);
        let n = self.busy.count.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self
            .busy
            .idle
            .wait_timeout_while(n, ANSWER_GRACE, |n| *n > 0);
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
    // Only the user who started the guest may control it: the socket is
    // 0600 from the moment it exists (bind applies the umask, so narrow it
    // for the call; other threads only ever create files narrower for it).
    // SAFETY: umask has no preconditions and cannot fail.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(&path);
    // SAFETY: as above; restores the caller's umask.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(bind_err)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    let busy = Arc::new(Busy::default());
    let server = Server {
        path,
        busy: busy.clone(),
    };
    std::thread::Builder::new()
        .name("duet-api".into())
        .spawn(move || {
            // Connection threads (and the migration and GDB threads they
            // start) run under this list too, or narrow it.
            crate::seccomp::install_or_exit(crate::seccomp::Thread::Control);
            for conn in listener.incoming().flatten() {
                let (ctl, busy) = (ctl.clone(), busy.clone());
                // A migration streams for seconds: each connection gets its
                // own thread so `status` or `pause` still answer meanwhile.
                let _ = std::thread::Builder::new()
                    .name("duet-api-conn".into())
                    .spawn(move || serve_conn(conn, &ctl, &busy));
            }
        })
        .map_err(bind_err)?;
    Ok(server)
}

fn serve_conn(conn: UnixStream, ctl: &Arc<Control>, busy: &Busy) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let sent = busy.serving(|| {
            let resp = match serde_json::from_str::<Request>(&line) {
                Ok(req) => dispatch::serve(ctl, req, &mut out),
                Err(e) => Response::err(format!("bad request: {e}")),
            };
            let mut text = serde_json::to_string(&resp).unwrap_or_else(|_| "{\"ok\":false}".into());
            text.push('\n');
            out.write_all(text.as_bytes())
        });
        if sent.is_err() {
            return;
        }
    }
}
