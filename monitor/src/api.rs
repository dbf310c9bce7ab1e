//! The control socket (`--api SOCKET`): a Unix stream socket speaking one
//! JSON object per line each way. See `docs/api.md`.

use crate::control::{Control, Request, Response};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// A control-socket problem.
#[derive(Debug, Error)]
pub enum ApiError {
    /// Another monitor serves this path.
    #[error("control socket {0} is in use by another duet; pick another path")]
    InUse(String),
    /// Binding failed.
    #[error("cannot open control socket {path}: {source}")]
    Bind {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Talking to a monitor failed.
    #[error(
        "cannot talk to the duet at {path}: {source}; is the guest running with --api {path}?"
    )]
    Connect {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
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

/// Binds `path` and serves requests to `ctl` on a background thread.
pub fn serve(path: PathBuf, ctl: Arc<Control>) -> Result<Server, ApiError> {
    if path.exists() {
        if UnixStream::connect(&path).is_ok() {
            return Err(ApiError::InUse(path.display().to_string()));
        }
        // A socket left behind by a monitor that died.
        let _ = std::fs::remove_file(&path);
    }
    let listener = UnixListener::bind(&path).map_err(|source| ApiError::Bind {
        path: path.display().to_string(),
        source,
    })?;
    std::thread::Builder::new()
        .name("duet-api".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                serve_conn(conn, &ctl);
            }
        })
        .map_err(|source| ApiError::Bind {
            path: path.display().to_string(),
            source,
        })?;
    Ok(Server { path })
}

fn serve_conn(conn: UnixStream, ctl: &Control) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            // Long-running: served here, streaming progress lines.
            Ok(Request::Migrate(m)) => crate::migration::serve(ctl, &m, &mut out),
            Ok(req) => ctl.request(req),
            Err(e) => Response::err(format!("bad request: {e}")),
        };
        let mut text = serde_json::to_string(&resp).unwrap_or_else(|_| "{\"ok\":false}".into());
        text.push('\n');
        if out.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}

/// Sends one request to the monitor serving `path` and returns its answer.
pub fn call(path: &Path, req: &Request) -> Result<Response, ApiError> {
    let p = path.display().to_string();
    let conn = |source| ApiError::Connect {
        path: p.clone(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(conn)?;
    let mut text = serde_json::to_string(req).map_err(|e| ApiError::BadAnswer {
        path: p.clone(),
        why: e.to_string(),
    })?;
    text.push('\n');
    s.write_all(text.as_bytes()).map_err(conn)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).map_err(conn)?;
    serde_json::from_str(&line).map_err(|e| ApiError::BadAnswer {
        path: p.clone(),
        why: format!("{e} in {line:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_json() {
        for r in [
            Request::Pause,
            Request::Resume,
            Request::Status,
            Request::Snapshot { dir: "/x".into() },
        ] {
            let t = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&t).unwrap(), r);
        }
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"snapshot","dir":"d"}"#).unwrap(),
            Request::Snapshot { dir: "d".into() }
        );
    }
}
