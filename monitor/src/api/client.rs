//! The client end of the control socket: `duet ctl` and `duet ctl ...
//! migrate` both send one request and read lines until the answer.

use super::wire::{ProgressLine, Request, Response};
use super::ApiError;
use crate::migration::Progress;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Why `path` cannot be talked to, in the user's terms.
fn connect_error(path: &Path, e: std::io::Error) -> ApiError {
    let shown = path.display().to_string();
    let denied = |e: &std::io::Error| matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM));
    if denied(&e) {
        return ApiError::Denied(shown);
    }
    match path.symlink_metadata() {
        Err(m) if denied(&m) => ApiError::Denied(shown),
        Err(_) => {
            let clone0 = format!("{shown}.0");
            let hint = if Path::new(&clone0).exists() {
                format!(" (clones serve SOCKET.N: {clone0} is clone 0's)")
            } else {
                String::new()
            };
            ApiError::Missing { path: shown, hint }
        }
        Ok(m) if m.is_dir() => ApiError::CtlDirectory(shown),
        Ok(m) if !m.file_type().is_socket() => ApiError::CtlNotSocket(shown),
        Ok(_) if e.raw_os_error() == Some(libc::ECONNREFUSED) => ApiError::Dead(shown),
        Ok(_) if e.raw_os_error() == Some(libc::EPROTOTYPE) => ApiError::OtherSocket(shown),
        Ok(_) => ApiError::Io {
            path: shown,
            why: e.to_string(),
        },
    }
}

/// Sends `req` to the monitor serving `path` and returns its answer;
/// `progress` sees each progress line that comes first (a migration).
pub fn call(
    path: &Path,
    req: &Request,
    mut progress: impl FnMut(&Progress),
) -> Result<Response, ApiError> {
    let shown = path.display().to_string();
    let io = |e: std::io::Error| ApiError::Io {
        path: shown.clone(),
        why: e.to_string(),
    };
    let mut s = UnixStream::connect(path).map_err(|e| connect_error(path, e))?;
    let mut text = serde_json::to_string(req).map_err(|e| ApiError::BadAnswer {
        path: shown.clone(),
        why: e.to_string(),
    })?;
    text.push('\n');
    s.write_all(text.as_bytes()).map_err(io)?;
    for line in BufReader::new(s).lines() {
        let line = line.map_err(io)?;
        if let Ok(l) = serde_json::from_str::<ProgressLine>(&line) {
            progress(&l.progress);
            continue;
        }
        return serde_json::from_str(&line).map_err(|e| ApiError::BadAnswer {
            path: shown.clone(),
            why: format!("{e} in {line:?}"),
        });
    }
    Err(ApiError::BadAnswer {
        path: shown,
        why: "the monitor closed the connection without an answer (it may have ended)".into(),
    })
}
