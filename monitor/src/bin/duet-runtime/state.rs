//! Container state under `--root`: one directory per container holding
//! `state.json` (written atomically: a temporary file renamed over it), the
//! monitor's API socket and the start FIFO. Commands on one container
//! serialise on an `flock` of its directory.

use crate::proc;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Default `--root`.
pub const DEFAULT_ROOT: &str = "/run/duet-runtime";
/// The OCI runtime-spec version this runtime reports.
pub const OCI_VERSION: &str = "1.0.2";

/// What the runtime last did to the container (stopped is not stored: it is
/// read from the monitor process being gone).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Built, waiting for `start`.
    Created,
    /// Started (or restored).
    Running,
    /// Paused through the monitor's API.
    Paused,
}

/// The runtime's record of one container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// Container id.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Root filesystem (for `state`).
    pub rootfs: PathBuf,
    /// The last phase the runtime set.
    pub phase: Phase,
    /// The monitor's pid.
    pub pid: i32,
    /// The monitor's start time (/proc stat field 22), to tell it from a reused pid.
    pub pid_start: u64,
    /// Creation time, RFC 3339.
    pub created: String,
    /// The bundle's annotations.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

/// OCI status of a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Waiting for `start`.
    Created,
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// The monitor has exited.
    Stopped,
}

impl Status {
    /// The OCI name.
    pub fn name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

impl Record {
    /// The container's status now.
    pub fn status(&self) -> Status {
        if !proc::alive(self.pid, self.pid_start) {
            return Status::Stopped;
        }
        match self.phase {
            Phase::Created => Status::Created,
            Phase::Running => Status::Running,
            Phase::Paused => Status::Paused,
        }
    }

    /// The OCI state document (`runc state` prints the same fields).
    pub fn oci_state(&self) -> serde_json::Value {
        let status = self.status();
        serde_json::json!({
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "status": status.name(),
            "pid": if status == Status::Stopped { 0 } else { self.pid },
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": "",
            "annotations": self.annotations,
        })
    }
}

/// Checks a container id: runc's alphabet, so it is always one path component.
pub fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if !ok {
        bail!("invalid container id {id:?}: use letters, digits and _ + - . only");
    }
    Ok(())
}

/// One container's directory, locked for the life of this value.
pub struct Container {
    /// The directory (`ROOT/ID`).
    pub dir: PathBuf,
    /// The container id.
    pub id: String,
    _lock: File,
}

fn lock(dir: &Path) -> Result<File> {
    let f = File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!(
            "cannot lock {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(f)
}

impl Container {
    /// Makes the directory of a new container; fails if the id is taken.
    pub fn create(root: &Path, id: &str) -> Result<Container> {
        check_id(id)?;
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create the state root {}", root.display()))?;
        let dir = root.join(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                bail!("container {id} already exists (delete it first)")
            }
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
        let _lock = lock(&dir)?;
        Ok(Container {
            dir,
            id: id.into(),
            _lock,
        })
    }

    /// Opens (and locks) an existing container.
    pub fn open(root: &Path, id: &str) -> Result<Container> {
        check_id(id)?;
        let dir = root.join(id);
        if !dir.is_dir() {
            bail!("container {id} does not exist (under {})", root.display());
        }
        let _lock = lock(&dir)?;
        // A deletion may have finished while we waited for the lock.
        if !dir.is_dir() {
            bail!("container {id} does not exist (under {})", root.display());
        }
        Ok(Container {
            dir,
            id: id.into(),
            _lock,
        })
    }

    /// Path of a file in the container's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Reads the record.
    pub fn load(&self) -> Result<Record> {
        let p = self.path("state.json");
        let text = std::fs::read(&p).with_context(|| {
            format!(
                "container {} has no state (a create that did not finish?); delete it with --force",
                self.id
            )
        })?;
        serde_json::from_slice(&text).with_context(|| format!("corrupt state in {}", p.display()))
    }

    /// Writes the record atomically.
    pub fn save(&self, r: &Record) -> Result<()> {
        write_atomic(&self.path("state.json"), &serde_json::to_vec_pretty(r)?)
    }

    /// Removes the container's directory and everything in it.
    pub fn remove(self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("cannot remove {}", self.dir.display()))
    }
}

/// Writes `data` to `path` so a reader sees the old file or the whole new
/// one, never a part: a temporary file beside it, renamed over the target.
/// No fsync: the state describes processes, which a power loss ends too
/// (runc does the same), and each sync costs milliseconds on a busy disk.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    let mut f = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(data)?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The current time as RFC 3339 UTC with nanoseconds (what Go's `time` parses).
pub fn rfc3339_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_nanos())
}

fn rfc3339(secs: u64, nanos: u32) -> String {
    let days = secs / 86400;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_700_000_000, 0), "2023-11-14T22:13:20.000000000Z");
    }

    #[test]
    fn ids() {
        assert!(check_id("abc-1.2_x+y").is_ok());
        for bad in ["", ".", "..", "a/b", "../x", "a b"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn create_open_save_remove() {
        let root = tempfile::tempdir().unwrap();
        let c = Container::create(root.path(), "c1").unwrap();
        assert!(c.load().is_err(), "no state before save");
        let r = Record {
            id: "c1".into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            phase: Phase::Created,
            pid: std::process::id() as i32,
            pid_start: proc::start_time(std::process::id() as i32).unwrap(),
            created: rfc3339_now(),
            annotations: HashMap::new(),
        };
        c.save(&r).unwrap();
        drop(c);
        assert!(Container::create(root.path(), "c1").is_err(), "id taken");
        let c = Container::open(root.path(), "c1").unwrap();
        let r2 = c.load().unwrap();
        assert_eq!(r2.status(), Status::Created, "this process is alive");
        assert_eq!(r2.oci_state()["pid"], r.pid);
        c.remove().unwrap();
        assert!(Container::open(root.path(), "c1").is_err());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }
}
