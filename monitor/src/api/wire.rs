//! The control socket's messages: one JSON object per line each way
//! (`docs/api.md`).

use crate::migration::{MigrateRequest, Summary};
use serde::{Deserialize, Serialize};

/// A request to the running guest's monitor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Stop running the guest (idempotent).
    Pause,
    /// Run the guest again (idempotent).
    Resume,
    /// Report the guest's state.
    Status,
    /// Snapshot the guest into a new directory; the guest then goes on in
    /// the state it was in (running or paused).
    Snapshot {
        /// Directory to create.
        dir: String,
    },
    /// Live-migrate the guest (served on the connection's own thread,
    /// streaming progress lines first).
    Migrate(MigrateRequest),
    /// Serve GDB's remote protocol on this `ADDRESS:PORT`
    /// (`docs/debugging.md`).
    Gdb {
        /// Where to listen (port 0: a free one).
        addr: String,
    },
    /// Write an ELF core file of the guest to this path.
    Core {
        /// The file to write (replaced atomically).
        path: String,
    },
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// `running`, `paused`, `exited` or `migrated`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub state: Option<String>,
    /// Status: seconds since the guest started (or was restored).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub uptime_s: Option<f64>,
    /// Status: VM exits handled.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exits: Option<u64>,
    /// Status: guest memory size in bytes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub memory_bytes: Option<u64>,
    /// Status: guest memory the host has populated, in bytes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub memory_resident_bytes: Option<u64>,
    /// Status: the device table, one line per device.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub devices: Option<Vec<String>>,
    /// Status: restores so far.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub generation: Option<u64>,
    /// Status: this guest's clone index.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub clone_index: Option<u32>,
    /// Snapshot: milliseconds it took (three decimals).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub snapshot_ms: Option<f64>,
    /// Snapshot: bytes of guest memory written.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub snapshot_memory_bytes: Option<u64>,
    /// Migrate: what the migration did.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub migration: Option<Summary>,
    /// Gdb: the address GDB connects to (its real port when 0 was given).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gdb: Option<String>,
    /// Core: the core file's size in bytes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub core_bytes: Option<u64>,
}

impl Response {
    /// A success with nothing else to say.
    pub fn ok() -> Self {
        Response {
            ok: true,
            ..Default::default()
        }
    }

    /// A success reporting the guest's state.
    pub fn state(state: &str) -> Self {
        Response {
            state: Some(state.into()),
            ..Response::ok()
        }
    }

    /// A failure.
    pub fn err(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(msg.into()),
            ..Default::default()
        }
    }
}

/// One progress line of a migration.
#[derive(Serialize, Deserialize)]
pub struct ProgressLine {
    /// The round.
    pub progress: crate::migration::Progress,
}

/// Milliseconds with three decimals (JSON readers need no more, and
/// `2.0039279999999997` helps nobody).
pub fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
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
            Request::Gdb {
                addr: "127.0.0.1:0".into(),
            },
            Request::Core { path: "/c".into() },
        ] {
            let t = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&t).unwrap(), r);
        }
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"snapshot","dir":"d"}"#).unwrap(),
            Request::Snapshot { dir: "d".into() }
        );
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
        let r = Response {
            migration: Some(Summary {
                rounds: 3,
                ..Default::default()
            }),
            ..Response::ok()
        };
        let back: Response = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.migration.unwrap().rounds, 3);
        assert_eq!(
            millis(std::time::Duration::from_nanos(2_003_927_999)),
            2003.928
        );
    }
}
