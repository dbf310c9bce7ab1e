//! A bundle's `config.json` (parsed with `oci-spec`) turned into what the
//! monitor needs: the image, its arguments and environment, memory, disks
//! and the network namespace.
//!
//! Mounts: a bind mount of a regular file (or block device) whose
//! destination is under `/dev/duet/` becomes a disk named after the
//! destination's last component, read-only with the `ro` option. A Duet
//! guest has no file system, so every other mount is ignored: the engine's
//! own (`/proc`, `/dev`, `/sys`, `/etc/hosts`...) silently, others with a
//! warning.

use crate::guest::{self, Kind};
use anyhow::{bail, Context, Result};
use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

/// Where disks are mounted in a container.
pub const DISK_DIR: &str = "/dev/duet/";

/// Mount destinations engines add to every container; ignored without a word.
const ENGINE_MOUNTS: &[&str] = &[
    "/proc",
    "/dev",
    "/sys",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/run/.containerenv",
    "/run/secrets",
];

/// The container's network namespace.
#[derive(Debug, PartialEq, Eq)]
pub enum NetNs {
    /// The runtime's own (no entry): the guest gets no NIC.
    Host,
    /// A new, empty one (an entry without a path): nothing to connect to, no NIC.
    New,
    /// An existing one to join.
    Path(PathBuf),
}

/// What a container is, read from its bundle.
#[derive(Debug)]
pub struct Bundle {
    /// The bundle directory (absolute).
    pub dir: PathBuf,
    /// The root file system (absolute).
    pub rootfs: PathBuf,
    /// The parsed configuration.
    pub spec: Spec,
    /// `process.args[0]` resolved inside the root file system, if it is there.
    pub exe: Option<PathBuf>,
    /// Whether `exe` is a Duet guest.
    pub kind: Kind,
}

/// A Duet container's plan, from its bundle.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// The guest image on the host.
    pub image: PathBuf,
    /// Guest arguments (`process.args[1..]`).
    pub args: Vec<String>,
    /// Guest environment (`process.env`).
    pub env: Vec<String>,
    /// `--mem` in MiB, from `linux.resources.memory.limit`.
    pub mem_mib: Option<u64>,
    /// `--disk` specs.
    pub disks: Vec<String>,
    /// The network namespace.
    pub netns: NetNs,
    /// `process.terminal`.
    pub terminal: bool,
    /// Annotations.
    pub annotations: HashMap<String, String>,
}

/// Reads `DIR/config.json`.
pub fn load(dir: &Path) -> Result<Bundle> {
    let dir =
        std::path::absolute(dir).with_context(|| format!("bad bundle path {}", dir.display()))?;
    if !dir.is_dir() {
        bail!(
            "bundle {} does not exist or is not a directory",
            dir.display()
        );
    }
    let cfg = dir.join("config.json");
    let text = std::fs::read(&cfg).with_context(|| format!("cannot read {}", cfg.display()))?;
    let spec: Spec = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a valid OCI runtime configuration", cfg.display()))?;
    let root = spec
        .root()
        .as_ref()
        .context("config.json has no `root`: the bundle must name its root file system")?;
    let rootfs = dir.join(root.path());
    let process = spec
        .process()
        .as_ref()
        .context("config.json has no `process`: nothing to run")?;
    let args = process.args().clone().unwrap_or_default();
    let arg0 = args.first().context(
        "config.json's process.args is empty: the first argument must name the guest image",
    )?;
    let path_env = process
        .env()
        .iter()
        .flatten()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/bin:/usr/bin:/bin");
    let exe = resolve(&rootfs, arg0, path_env);
    let kind = match &exe {
        Some(p) => guest::classify(p),
        None => Kind::Other(format!("{arg0} is not a file inside the root file system")),
    };
    Ok(Bundle {
        dir,
        rootfs,
        spec,
        exe,
        kind,
    })
}

/// `arg0` inside `rootfs`: a path, or a name looked up in the image's PATH.
/// Symbolic links that lead out of the root file system count as missing.
fn resolve(rootfs: &Path, arg0: &str, path_env: &str) -> Option<PathBuf> {
    let candidates: Vec<String> = if arg0.contains('/') {
        vec![arg0.to_string()]
    } else {
        path_env
            .split(':')
            .map(|d| format!("{d}/{arg0}"))
            .chain([arg0.to_string()])
            .collect()
    };
    let real_root = rootfs.canonicalize().ok()?;
    candidates.iter().find_map(|c| {
        let rel: PathBuf = Path::new(c)
            .components()
            .filter(|x| matches!(x, Component::Normal(_)))
            .collect();
        let p = rootfs.join(rel).canonicalize().ok()?;
        (p.starts_with(&real_root) && p.is_file()).then_some(p)
    })
}

impl Bundle {
    /// The plan for running this bundle as a Duet guest.
    pub fn plan(&self) -> Result<Plan> {
        let process = self.spec.process().as_ref().context("no process")?;
        let image = self
            .exe
            .clone()
            .context("the guest image is not in the root file system")?;
        let args = process.args().clone().unwrap_or_default();
        let env = process.env().clone().unwrap_or_default();
        if let Some(bad) = env.iter().find(|e| !e.contains('=')) {
            bail!("process.env entry {bad:?} is not KEY=VALUE");
        }
        if process.rlimits().as_ref().is_some_and(|r| !r.is_empty()) {
            log::debug!("process.rlimits ignored: the guest's limits are its memory and vCPU");
        }
        let linux = self.spec.linux().as_ref();
        let limit = linux
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit());
        let netns = match linux
            .and_then(|l| l.namespaces().as_ref())
            .and_then(|ns| ns.iter().find(|n| n.typ() == LinuxNamespaceType::Network))
        {
            None => NetNs::Host,
            Some(n) => match n.path() {
                Some(p) => NetNs::Path(p.clone()),
                None => NetNs::New,
            },
        };
        let mut disks = Vec::new();
        for m in self.spec.mounts().iter().flatten() {
            if let Some(d) = disk(m)? {
                disks.push(d);
            }
        }
        Ok(Plan {
            image,
            args: args[1..].to_vec(),
            env,
            mem_mib: mem_mib(limit)?,
            disks,
            netns,
            terminal: process.terminal().unwrap_or(false),
            annotations: self.spec.annotations().clone().unwrap_or_default(),
        })
    }
}

/// Guest memory from a cgroup memory limit: whole 2 MiB pages (the
/// monitor maps guest memory with them); none when unlimited.
fn mem_mib(limit: Option<i64>) -> Result<Option<u64>> {
    match limit {
        None => Ok(None),
        Some(l) if l <= 0 => Ok(None),
        Some(l) => {
            let mib = (l as u64 >> 20) & !1;
            if mib == 0 {
                bail!("memory limit of {l} bytes is too small for a Duet guest; give it at least a few MiB (e.g. --memory 64m)");
            }
            Ok(Some(mib))
        }
    }
}

/// The `--disk` spec for a mount under [`DISK_DIR`]; `None` for other mounts.
fn disk(m: &Mount) -> Result<Option<String>> {
    let dest = m.destination().to_string_lossy();
    let Some(name) = dest.strip_prefix(DISK_DIR) else {
        let ignored_quietly = ENGINE_MOUNTS
            .iter()
            .any(|e| dest == *e || dest.starts_with(&format!("{e}/")));
        if ignored_quietly {
            log::debug!("mount {dest} ignored (the guest has no file system)");
        } else {
            log::warn!("mount {dest} ignored: a Duet guest has no file system; bind a disk image to {DISK_DIR}NAME to give it a disk");
        }
        return Ok(None);
    };
    let opts = m.options().clone().unwrap_or_default();
    let is_bind =
        m.typ().as_deref() == Some("bind") || opts.iter().any(|o| o == "bind" || o == "rbind");
    if !is_bind {
        bail!("mount {dest}: only bind mounts of a disk image file may go under {DISK_DIR}");
    }
    if name.is_empty()
        || name.contains('/')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        bail!("mount {dest}: a disk goes directly under {DISK_DIR}, named with letters, digits, _ - . (e.g. {DISK_DIR}disk0)");
    }
    let src = m
        .source()
        .as_ref()
        .with_context(|| format!("mount {dest} has no source"))?;
    let meta = std::fs::metadata(src)
        .with_context(|| format!("mount {dest}: cannot use {}", src.display()))?;
    use std::os::unix::fs::FileTypeExt;
    if !(meta.is_file() || meta.file_type().is_block_device()) {
        bail!(
            "mount {dest}: {} is not a disk image file or block device",
            src.display()
        );
    }
    let src = src
        .to_str()
        .with_context(|| format!("mount {dest}: the source path is not UTF-8"))?;
    if src.contains(',') {
        bail!("mount {dest}: the disk image path {src} contains a comma, which `duet run --disk` cannot take");
    }
    let ro = opts.iter().any(|o| o == "ro");
    Ok(Some(format!(
        "{src}{},name={name}",
        if ro { ",ro" } else { "" }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(config: &str) -> (tempfile::TempDir, Result<Bundle>) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("rootfs")).unwrap();
        std::fs::write(d.path().join("rootfs/app"), b"not elf").unwrap();
        std::fs::write(d.path().join("config.json"), config).unwrap();
        let b = load(d.path());
        (d, b)
    }

    #[test]
    fn bad_bundles_say_why() {
        let e = load(Path::new("/nonexistent/bundle")).unwrap_err();
        assert!(format!("{e:#}").contains("does not exist"), "{e:#}");
        let (_d, b) = bundle_with("{not json");
        assert!(format!("{:#}", b.unwrap_err()).contains("not a valid OCI runtime configuration"));
        let (_d, b) = bundle_with(r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#);
        assert!(format!("{:#}", b.unwrap_err()).contains("no `process`"));
        let (_d, b) = bundle_with(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"cwd":"/","user":{"uid":0,"gid":0},"args":[]}}"#,
        );
        assert!(format!("{:#}", b.unwrap_err()).contains("args is empty"));
    }

    #[test]
    fn plan_from_config() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("disk.img");
        std::fs::write(&disk, vec![0u8; 4096]).unwrap();
        let cfg = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"cwd": "/", "user": {"uid": 0, "gid": 0}, "args": ["app", "a", "b c"], "env": ["PATH=/", "K=V"]},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev/duet/disk0", "type": "bind", "source": disk, "options": ["rbind", "ro"]},
                {"destination": "/data", "type": "bind", "source": "/tmp", "options": ["rbind"]}
            ],
            "linux": {
                "resources": {"memory": {"limit": 100u64 << 20}},
                "namespaces": [{"type": "network", "path": "/run/netns/x"}, {"type": "mount"}]
            }
        });
        let (_b, b) = bundle_with(&cfg.to_string());
        let b = b.unwrap();
        assert!(b.exe.as_ref().unwrap().ends_with("rootfs/app"));
        assert!(matches!(b.kind, Kind::Other(_)));
        let p = b.plan().unwrap();
        assert_eq!(p.args, ["a", "b c"]);
        assert_eq!(p.env, ["PATH=/", "K=V"]);
        assert_eq!(p.mem_mib, Some(100));
        assert_eq!(p.disks, [format!("{},ro,name=disk0", disk.display())]);
        assert_eq!(p.netns, NetNs::Path("/run/netns/x".into()));
    }

    #[test]
    fn memory_rounds_down_to_2mib() {
        assert_eq!(mem_mib(Some(7 << 20)).unwrap(), Some(6));
        assert_eq!(mem_mib(Some(-1)).unwrap(), None);
        assert!(mem_mib(Some(1 << 20)).is_err());
    }

    #[test]
    fn disk_mounts_are_checked() {
        let m = |v: serde_json::Value| serde_json::from_value::<Mount>(v).unwrap();
        let e = disk(&m(
            serde_json::json!({"destination": "/dev/duet/d", "type": "tmpfs", "source": "tmpfs"}),
        ))
        .unwrap_err();
        assert!(e.to_string().contains("only bind mounts"));
        let e = disk(&m(serde_json::json!({"destination": "/dev/duet/d", "type": "bind", "source": "/tmp", "options": ["rbind"]}))).unwrap_err();
        assert!(e.to_string().contains("not a disk image"));
        let e = disk(&m(
            serde_json::json!({"destination": "/dev/duet/a/b", "type": "bind", "source": "/tmp"}),
        ))
        .unwrap_err();
        assert!(e.to_string().contains("directly under"));
    }

    #[test]
    fn resolution_stays_inside_rootfs() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("rootfs");
        std::fs::create_dir_all(r.join("bin")).unwrap();
        std::fs::write(r.join("bin/app"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", r.join("bin/evil")).unwrap();
        assert!(resolve(&r, "app", "/bin").is_some());
        assert!(resolve(&r, "/bin/app", "").is_some());
        assert!(
            resolve(&r, "../../bin/app", "").is_some(),
            "`..` cannot climb out"
        );
        assert!(resolve(&r, "/bin/evil", "").is_none());
        assert!(resolve(&r, "missing", "/bin").is_none());
    }
}
