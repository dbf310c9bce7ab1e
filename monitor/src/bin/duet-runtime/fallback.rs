//! Containers that are not Duet guests (Kubernetes' pause container,
//! sidecars) are handed to runc or crun. Such a container still gets a
//! directory under `--root`, holding `delegate.json` (which runtime runs it)
//! and that runtime's own state root, so every later command on its id
//! goes to the same runtime and `delete` leaves nothing behind.
//!
//! Which runtime: `--fallback-runtime PATH` (engines pass it with e.g.
//! Podman's `--runtime-flag fallback-runtime=PATH`), else
//! `$DUET_RUNTIME_FALLBACK`, else `runc`, then `crun`, from PATH and the
//! usual system directories. `none` turns the hand-off off.

use crate::args::Invocation;
use crate::state::Container;
use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const SYSTEM_DIRS: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Flags that are duet-runtime's own and not passed on.
const OWN_FLAGS: &[&str] = &["root", "fallback-runtime", "duet"];

/// The runtime that runs non-Duet containers, if any.
pub fn find(flag: Option<&str>) -> Option<PathBuf> {
    let choice = flag
        .map(String::from)
        .or_else(|| std::env::var("DUET_RUNTIME_FALLBACK").ok())
        .filter(|s| !s.is_empty());
    match choice.as_deref() {
        Some("none") => return None,
        Some(p) => return Some(PathBuf::from(p)),
        None => {}
    }
    let me = std::env::current_exe().and_then(|p| p.canonicalize()).ok();
    let path = std::env::var("PATH").unwrap_or_default();
    ["runc", "crun"].iter().find_map(|name| {
        path.split(':')
            .chain(SYSTEM_DIRS.split(':'))
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(name))
            // Never hand a container back to ourselves (duet-runtime installed as `runc`).
            .find(|p| p.is_file() && p.canonicalize().ok() != me)
    })
}

/// The delegate of a container, if it has one.
pub fn delegate_of(c: &Container) -> Option<PathBuf> {
    let text = std::fs::read(c.path("delegate.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    v["runtime"].as_str().map(PathBuf::from)
}

/// The command line for `runtime`: its own root inside the container's
/// directory, the engine's global flags but ours, then the command as given.
fn command(runtime: &Path, c: &Container, inv: &Invocation) -> Command {
    let mut cmd = Command::new(runtime);
    cmd.arg("--root").arg(c.path("fallback"));
    let mut skip_next = false;
    for tok in &inv.raw_global {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        let name = tok.trim_start_matches('-');
        if let Some(own) = OWN_FLAGS
            .iter()
            .find(|f| name == **f || name.starts_with(&format!("{f}=")))
        {
            skip_next = name == *own;
            continue;
        }
        cmd.arg(tok);
    }
    cmd.args(&inv.raw_rest);
    cmd
}

/// `create` (or `restore`) of a non-Duet container: records the delegate and runs it.
pub fn create(root: &Path, inv: &Invocation, why: &str) -> Result<ExitCode> {
    let id = inv.id().context("no container id")?;
    let Some(runtime) = find(inv.global.fallback.as_deref()) else {
        bail!(
            "container {id} is not a Duet guest ({why}), and no runc or crun is installed to run it; \
             install runc (or crun), or build the image with `cargo xtask image`"
        );
    };
    log::info!(
        "{id} is not a Duet guest ({why}): handing it to {}",
        runtime.display()
    );
    let c = Container::create(root, id)?;
    let rec = serde_json::json!({ "runtime": runtime });
    crate::state::write_atomic(&c.path("delegate.json"), rec.to_string().as_bytes())?;
    let st = command(&runtime, &c, inv)
        .status()
        .with_context(|| format!("cannot run {}", runtime.display()));
    match st {
        Ok(s) if s.success() => Ok(ExitCode::SUCCESS),
        other => {
            c.remove()?;
            let st = other?;
            bail!("{} {} failed ({st})", runtime.display(), inv.command);
        }
    }
}

/// Any other command on a delegated container: the delegate runs it in our
/// place; after a successful `delete` our directory goes too.
pub fn forward(c: Container, runtime: &Path, inv: &Invocation) -> Result<ExitCode> {
    let mut cmd = command(runtime, &c, inv);
    if inv.command != "delete" {
        let e = cmd.exec();
        bail!("cannot run {}: {e}", runtime.display());
    }
    let st = cmd
        .status()
        .with_context(|| format!("cannot run {}", runtime.display()))?;
    if !st.success() {
        bail!("{} delete failed ({st})", runtime.display());
    }
    c.remove()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_flags_are_not_passed_on() {
        let root = tempfile::tempdir().unwrap();
        let c = Container::create(root.path(), "x").unwrap();
        let argv: Vec<String> =
            "--root /r --fallback-runtime=none --duet /d --log /l --systemd-cgroup state x"
                .split(' ')
                .map(String::from)
                .collect();
        let inv = crate::args::parse(&argv).unwrap();
        let cmd = command(Path::new("/usr/sbin/runc"), &c, &inv);
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--root",
                c.path("fallback").to_str().unwrap(),
                "--log",
                "/l",
                "--systemd-cgroup",
                "state",
                "x"
            ]
        );
    }

    #[test]
    fn none_turns_the_hand_off_off() {
        assert_eq!(find(Some("none")), None);
        assert_eq!(find(Some("/opt/runc")), Some(PathBuf::from("/opt/runc")));
    }
}
