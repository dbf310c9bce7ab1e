//! `checkpoint` and `restore` as Duet snapshots, so engines (`podman
//! container checkpoint` / `restore`) can save a running guest and bring it
//! back with its state intact.
//!
//! `checkpoint --image-path DIR` pauses the guest, takes `duet ctl SOCKET
//! snapshot DIR/duet-snapshot`, then ends the monitor (or resumes the guest
//! with `--leave-running`). Pausing first means the guest does nothing after
//! the snapshot that a restore would repeat. A small `inventory.img` beside
//! the snapshot tells Podman the checkpoint is complete. `restore --image-path DIR`
//! joins the network namespace as `create` does and starts `duet restore
//! DIR/duet-snapshot`: the container is running when it returns.

use crate::bundle;
use crate::guest::Kind;
use crate::launch;
use crate::lifecycle::{self, Undo, API};
use crate::netns;
use crate::proc;
use crate::state::{Container, Phase, Status};
use crate::Ctx;
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// The snapshot's directory inside the engine's image path.
const SNAPSHOT: &str = "duet-snapshot";
/// CRIU's index file. Podman looks for it to decide that a checkpoint is
/// complete before it calls `restore`; ours says where the snapshot is.
const INVENTORY: &str = "inventory.img";

fn image_path(ctx: &Ctx) -> Result<PathBuf> {
    let p = ctx
        .inv
        .value("image-path")
        .context("--image-path is required: the directory to keep the checkpoint in")?;
    Ok(std::path::absolute(p)?)
}

/// `checkpoint --image-path DIR [--leave-running] ID`.
pub fn checkpoint(ctx: &Ctx, c: Container) -> Result<ExitCode> {
    if ctx.inv.switch("pre-dump") || ctx.inv.value("parent-path").is_some() {
        bail!("incremental checkpoints (--pre-dump, --parent-path) are not supported: a Duet snapshot is always whole");
    }
    let r = c.load()?;
    let status = r.status();
    if !matches!(status, Status::Running | Status::Paused) {
        bail!(
            "container {} is {}; only a running or paused one can be checkpointed",
            c.id,
            status.name()
        );
    }
    let dir = image_path(ctx)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let snap = dir.join(SNAPSHOT);
    if snap.exists() {
        bail!(
            "{} already holds a checkpoint; use another --image-path",
            dir.display()
        );
    }
    let duet = ctx.duet()?;
    let api = c.path(API);
    if status == Status::Running {
        launch::ctl(&duet, &api, &["pause"])?;
    }
    let taken = launch::ctl(
        &duet,
        &api,
        &[
            "snapshot",
            snap.to_str().context("the image path is not UTF-8")?,
        ],
    );
    if taken.is_ok() {
        let note = format!("duet snapshot in {SNAPSHOT}/ (not a CRIU image)\n");
        crate::state::write_atomic(&dir.join(INVENTORY), note.as_bytes())?;
    }
    let leave = ctx.inv.switch("leave-running");
    if taken.is_err() || leave {
        if status == Status::Running {
            launch::ctl(&duet, &api, &["resume"])?;
        }
        taken?;
        return Ok(ExitCode::SUCCESS);
    }
    // The snapshot holds the guest now; this copy must not run on.
    let _ = proc::signal(r.pid, libc::SIGKILL);
    if !proc::wait_gone(r.pid, r.pid_start, Duration::from_secs(10)) {
        bail!(
            "the monitor (pid {}) did not end after the checkpoint",
            r.pid
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `restore --image-path DIR --bundle B [--pid-file F] [--console-socket S] ID`.
pub fn restore(ctx: &Ctx) -> Result<ExitCode> {
    let id = ctx.id()?;
    let b = bundle::load(Path::new(ctx.inv.value("bundle").unwrap_or(".")))?;
    if let Kind::Other(why) = &b.kind {
        return crate::fallback::create(&ctx.root, &ctx.inv, why);
    }
    let snap = image_path(ctx)?.join(SNAPSHOT);
    if !snap.join("").is_dir() {
        bail!(
            "{} holds no Duet checkpoint (no {SNAPSHOT} directory)",
            snap.parent().unwrap_or(&snap).display()
        );
    }
    let plan = b.plan()?;
    let console = lifecycle::console_socket(ctx, plan.terminal)?;
    let duet = ctx.duet()?;
    let c = Container::create(&ctx.root, id)?;
    let mut undo = Undo::new(&c.dir);
    // The snapshot reattaches its NIC to the TAP by name; make it here.
    netns::setup(&plan.netns)?;
    let api = c.path(API);
    let args: Vec<OsString> = vec![
        "restore".into(),
        snap.into(),
        "--api".into(),
        api.clone().into(),
    ];
    let m = undo.monitor(launch::spawn(&duet, &args, console.as_deref())?);
    // A status request is answered once the restored guest runs.
    m.wait_ready("restore the guest", |_| {
        api.exists() && launch::ctl(&duet, &api, &["status"]).is_ok()
    })?;
    lifecycle::commit(ctx, &c, &b, m, Phase::Running, plan.annotations.clone())?;
    undo.disarm();
    Ok(ExitCode::SUCCESS)
}
