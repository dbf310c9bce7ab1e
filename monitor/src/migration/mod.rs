//! Live migration: move a running guest to another monitor.
//!
//! The source (`duet ctl SOCKET migrate ADDR`) drives it from the control
//! socket's thread ([`source::migrate`]) while the vCPU thread keeps running
//! the guest: it pre-copies memory round by round using KVM's dirty log plus
//! the monitor's own writes ([`dirty`]), asks the vCPU thread to stop, sends
//! the last dirty pages and the same per-component state a snapshot holds
//! (`snapshot::persist`), then commits. The destination
//! (`duet run --incoming ADDR`, [`destination::incoming`]) builds the VM
//! from the stream and resumes it only after commit. See `docs/migration.md`.
//!
//! Any failure before commit leaves the source guest running as before.

pub mod destination;
pub mod dirty;
pub mod protocol;
mod sender;
pub mod session;
pub mod source;

pub use sender::{MAX_ROUNDS, STALL_ROUNDS};

use serde::{Deserialize, Serialize};
use std::sync::{Condvar, Mutex};
use thiserror::Error;

/// Why a migration attempt failed.
#[derive(Debug, Error)]
pub enum MigrateError {
    /// The connection failed or timed out.
    #[error("connection to the peer failed: {0}; check the address, that `duet run --incoming` listens there, and the network")]
    Connection(std::io::Error),
    /// The peer sent something that is not valid protocol.
    #[error(
        "protocol error: {0}; the peer is not a compatible duet (or the stream was corrupted)"
    )]
    Protocol(String),
    /// A sealed frame failed its checks: changed, dropped, replayed,
    /// reordered, or from another session.
    #[error("the migration stream was tampered with: {0}; something on the path between the hosts changes, drops, replays or reorders data: find and remove it, then retry")]
    Integrity(String),
    /// The peer refused.
    #[error("refused by the peer: {0}")]
    Refused(String),
    /// We refused the peer (and told it why).
    #[error("refused the peer: {0}")]
    Rejected(String),
    /// The key file is unusable.
    #[error("migration key file {path}: {why}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The two hosts cannot run the same guest.
    #[error("incompatible: {0}")]
    Incompatible(String),
    /// The guest could not be paused, captured or rebuilt.
    #[error("guest state: {0}")]
    State(String),
    /// A test hook cut the connection at this phase (`DUET_MIGRATE_FAIL`).
    #[error("connection cut at phase `{0}` by DUET_MIGRATE_FAIL (test hook)")]
    Injected(String),
    /// Commit was sent but not acknowledged: the destination may be running
    /// the guest, so the source keeps it paused.
    #[error("commit was sent but not acknowledged ({0}); the destination may be running the guest, so it stays paused here: resume it (`duet ctl SOCKET resume`) only if the destination is not running it")]
    Unknown(String),
}

/// Phases a test may cut the connection at (`DUET_MIGRATE_FAIL`).
pub const FAIL_PHASES: [&str; 4] = ["handshake", "precopy", "stop", "commit"];

/// `duet ctl SOCKET migrate ...` as sent over the control socket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateRequest {
    /// The destination, `HOST:PORT`.
    pub addr: String,
    /// Downtime budget in milliseconds.
    pub max_downtime_ms: u64,
    /// The shared key file (absolute path).
    pub key_file: String,
    /// Copy the disks' contents to the destination's own files (given
    /// with `--disk` on `duet run --incoming`) instead of sharing them.
    #[serde(default)]
    pub copy_disks: bool,
    /// Test hook: cut the connection at this phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_at: Option<String>,
    /// Test hook: lie in the hello (`abi=N` or `tsc_khz=N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fake: Option<String>,
}

/// One pre-copy round, as reported to `duet ctl`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Round number (0 = the full copy).
    pub round: u32,
    /// MiB sent so far.
    pub sent_mib: f64,
    /// Pages dirtied since the previous round.
    pub dirty_pages: u64,
    /// Dirtying rate in MiB/s.
    pub dirty_rate_mib_s: f64,
    /// Measured bandwidth in MiB/s.
    pub bandwidth_mib_s: f64,
    /// Estimated downtime if we stopped now, in ms.
    pub est_downtime_ms: f64,
}

/// What a finished migration did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Where the guest went.
    pub to: String,
    /// Connect → commit acknowledged, in ms.
    pub total_ms: f64,
    /// Source pause → destination resume by the two wall clocks, in ms.
    pub downtime_ms: f64,
    /// Source pause → commit acknowledged by the source's clock, in ms (an
    /// upper bound that needs no clock agreement).
    pub downtime_src_ms: f64,
    /// Bytes sent.
    pub bytes: u64,
    /// Pre-copy rounds after the full copy.
    pub rounds: u32,
    /// Whether rounds stopped converging (stop-and-copy fallback).
    pub forced_stop: bool,
    /// Pages sent while the guest was stopped.
    pub final_pages: u64,
}

/// The migration's share of the control block: what the vCPU thread hands
/// the migration thread, and back.
#[derive(Default)]
pub struct Slot {
    inner: Mutex<source::SlotState>,
    idle: Condvar,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, source::SlotState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Milliseconds of a duration.
fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nanoseconds since the epoch by the host's wall clock.
fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// API thread: runs a migration for `duet ctl`, writing one
/// `{"progress":{...}}` line per round to `out`; returns the final answer.
pub fn serve(
    ctl: &crate::control::Control,
    req: &MigrateRequest,
    out: &mut impl std::io::Write,
) -> crate::control::Response {
    use crate::control::Response;
    let mut report = |p: &Progress| {
        #[derive(Serialize)]
        struct Line<'a> {
            progress: &'a Progress,
        }
        if let Ok(mut t) = serde_json::to_string(&Line { progress: p }) {
            t.push('\n');
            let _ = out.write_all(t.as_bytes());
        }
    };
    match source::migrate(ctl, req, &mut report) {
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
                .request(crate::control::Request::Status)
                .state
                .unwrap_or_else(|| "exited".into());
            Response {
                state: Some(state),
                ..Response::err(format!("migration failed: {e}"))
            }
        }
    }
}

/// Client side (`duet ctl SOCKET migrate`): sends `req` to the monitor at
/// `socket`, calls `progress` for each round, returns the final answer.
pub fn call(
    socket: &std::path::Path,
    req: &MigrateRequest,
    mut progress: impl FnMut(&Progress),
) -> Result<crate::control::Response, crate::api::ApiError> {
    use crate::api::ApiError;
    use std::io::{BufRead, BufReader, Write};
    let p = socket.display().to_string();
    let conn = |source| ApiError::Connect {
        path: p.clone(),
        source,
    };
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(conn)?;
    let mut text =
        serde_json::to_string(&crate::control::Request::Migrate(req.clone())).map_err(|e| {
            ApiError::BadAnswer {
                path: p.clone(),
                why: e.to_string(),
            }
        })?;
    text.push('\n');
    s.write_all(text.as_bytes()).map_err(conn)?;
    #[derive(Deserialize)]
    struct Line {
        progress: Progress,
    }
    for line in BufReader::new(s).lines() {
        let line = line.map_err(conn)?;
        if let Ok(l) = serde_json::from_str::<Line>(&line) {
            progress(&l.progress);
            continue;
        }
        return serde_json::from_str(&line).map_err(|e| ApiError::BadAnswer {
            path: p.clone(),
            why: format!("{e} in {line:?}"),
        });
    }
    Err(ApiError::BadAnswer {
        path: p,
        why: "the monitor closed the connection without an answer".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Request, Response};

    #[test]
    fn migrate_request_and_answer_round_trip_as_json() {
        let m = MigrateRequest {
            addr: "10.0.0.2:4444".into(),
            max_downtime_ms: 5,
            key_file: "/k".into(),
            ..Default::default()
        };
        let t = serde_json::to_string(&Request::Migrate(m.clone())).unwrap();
        assert!(
            t.starts_with(r#"{"cmd":"migrate","addr":"10.0.0.2:4444""#),
            "{t}"
        );
        assert_eq!(
            serde_json::from_str::<Request>(&t).unwrap(),
            Request::Migrate(m)
        );
        // The vCPU-thread steps never come from the socket.
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"migration"}"#).is_err());
        let r = Response {
            migration: Some(Summary {
                rounds: 3,
                ..Default::default()
            }),
            ..Response::ok()
        };
        let back: Response = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.migration.unwrap().rounds, 3);
    }
}
