//! Live migration: move a running guest to another monitor.
//!
//! The source (`duet ctl SOCKET migrate ADDR`) drives it from the control
//! socket's thread ([`source::migrate`]) while the vCPU thread keeps running
//! the guest: it pre-copies memory round by round using KVM's dirty log plus
//! the monitor's own writes (`memory::dirty`), asks the vCPU thread to stop,
//! sends the last dirty pages and the guest's state (`Vmm::capture`, laid
//! out as a snapshot's state file), then commits. The destination
//! (`duet run --incoming ADDR`, [`destination::incoming`]) builds the VM
//! from the stream and resumes it only after commit. See `docs/migration.md`.
//!
//! Any failure before commit leaves the source guest running as before.

pub mod destination;
pub mod protocol;
mod sender;
pub mod session;
pub mod source;

pub use crate::contract::migration::{FAIL_PHASES, MAX_ROUNDS, STALL_ROUNDS};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a migration attempt failed.
#[derive(Debug, Error)]
pub enum MigrateError {
    /// The connection failed or timed out.
    #[error("{}", connection_failed(.0))]
    Connection(std::io::Error),
    /// The source could not connect to the destination.
    #[error("cannot connect to the destination: {0}; check the address, that `duet run --incoming` listens there, and the network")]
    Connect(std::io::Error),
    /// The destination cannot listen on its `--incoming` address.
    #[error("cannot listen on {addr}: {why}")]
    Listen {
        /// The address.
        addr: String,
        /// The OS's reason and the remedy.
        why: String,
    },
    /// A signal ended `duet run --incoming` before a source arrived.
    #[error("stopped by {0} while waiting for a source; no guest arrived, nothing ran")]
    Stopped(&'static str),
    /// The other side hung up or stopped answering in the middle of a
    /// migration ([`MigrateError::lost`]).
    #[error("the {peer} {what} {when}")]
    Lost {
        /// "source" or "destination".
        peer: &'static str,
        /// "hung up" or "stopped answering".
        what: &'static str,
        /// When: "during pre-copy", "before commit", ...
        when: &'static str,
    },
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
    /// A test hook cut the connection at this phase (`DUET_MIGRATE_FAIL`,
    /// `test-hooks` builds only).
    #[error("connection cut at phase `{0}` by DUET_MIGRATE_FAIL (test hook)")]
    Injected(String),
    /// The guest ended while the migration ran.
    #[error("the guest exited during the migration")]
    Exited,
    /// Commit was sent but not acknowledged: the destination may be running
    /// the guest, so the source keeps it paused.
    #[error("commit was sent but not acknowledged ({0}); the destination may be running the guest, so it stays paused here: resume it (`duet ctl SOCKET resume`) only if the destination is not running it")]
    Unknown(String),
}

/// A connection error in the user's terms.
fn connection_failed(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::UnexpectedEof => "the peer closed the connection".into(),
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
            "the peer reset the connection".into()
        }
        K::WouldBlock | K::TimedOut => "the peer stopped answering (timed out)".into(),
        _ => format!("the connection failed: {e}"),
    }
}

impl MigrateError {
    /// Says a connection error in the middle of a migration as what it
    /// means: the `peer` ("source" or "destination") hung up or stopped
    /// answering `when` ("during pre-copy"). Other errors are returned as
    /// they are.
    pub fn lost(self, peer: &'static str, when: &'static str) -> MigrateError {
        use std::io::ErrorKind as K;
        let MigrateError::Connection(e) = &self else {
            return self;
        };
        let what = match e.kind() {
            K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                "hung up"
            }
            K::WouldBlock | K::TimedOut => "stopped answering",
            _ => return self,
        };
        MigrateError::Lost { peer, what, when }
    }

    /// `duet run --incoming ADDR` cannot listen on `addr`.
    pub fn listen(addr: &str, e: std::io::Error) -> MigrateError {
        use std::io::ErrorKind as K;
        let remedy = match e.kind() {
            K::AddrInUse => "something already listens there (another `duet run --incoming`?); pick another port or stop it",
            K::AddrNotAvailable => "no interface of this host has that address; give one of its addresses, or 0.0.0.0",
            K::PermissionDenied => "ports below 1024 need privileges; pick a higher port",
            _ => "check the address",
        };
        MigrateError::Listen {
            addr: addr.into(),
            why: format!("{e}; {remedy}"),
        }
    }
}

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
    /// Test hook (`test-hooks` builds): cut the connection at this phase.
    #[cfg(feature = "test-hooks")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_at: Option<String>,
    /// Test hook (`test-hooks` builds): lie in the hello (`abi=N` or
    /// `tsc_khz=N`).
    #[cfg(feature = "test-hooks")]
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
