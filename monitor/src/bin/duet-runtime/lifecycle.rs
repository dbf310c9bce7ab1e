//! The container lifecycle: `create`, `start`, `state`, `kill`, `delete`,
//! `pause`, `resume`, `ps`.
//!
//! A container is one `duet` monitor process. `create` builds its VM and
//! leaves it waiting on the start FIFO; `start` opens the FIFO, which lets
//! the guest run. The monitor is the container's pid and exits with the
//! guest's status.

use crate::bundle::{self, Plan};
use crate::guest::Kind;
use crate::launch::{self, Monitor};
use crate::netns::{self, GuestNet};
use crate::proc;
use crate::state::{rfc3339_now, Container, Phase, Record, Status};
use crate::Ctx;
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The monitor's control socket in the container's directory.
pub const API: &str = "api.sock";
/// The FIFO `start` opens.
pub const FIFO: &str = "start.fifo";
/// How long `start` waits for the monitor to take the FIFO.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a forced delete waits for the monitor to die.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// `duet run` arguments for a plan.
pub fn run_args(plan: &Plan, net: Option<&GuestNet>, dir: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["run".into(), plan.image.clone().into()];
    a.extend(["--api".into(), dir.join(API).into()]);
    a.extend(["--wait-start".into(), dir.join(FIFO).into()]);
    if let Some(m) = plan.mem_mib {
        a.extend(["--mem".into(), format!("{m}M").into()]);
    }
    for e in &plan.env {
        a.extend(["--env".into(), e.into()]);
    }
    for d in &plan.disks {
        a.extend(["--disk".into(), d.into()]);
    }
    if let Some(n) = net {
        a.extend(n.monitor_args(&plan.env).into_iter().map(OsString::from));
    }
    if !plan.args.is_empty() {
        a.push("--".into());
        a.extend(plan.args.iter().map(OsString::from));
    }
    a
}

/// Removes a half-made container unless disarmed.
pub struct Undo {
    dir: Option<PathBuf>,
    monitor: Option<Monitor>,
}

impl Undo {
    /// Guards `dir`.
    pub fn new(dir: &Path) -> Undo {
        Undo {
            dir: Some(dir.into()),
            monitor: None,
        }
    }

    /// Also kills `m` on failure.
    pub fn monitor(&mut self, m: Monitor) -> &mut Monitor {
        self.monitor.insert(m)
    }

    /// Success: keep everything; returns the monitor.
    pub fn disarm(mut self) -> Option<Monitor> {
        self.dir = None;
        self.monitor.take()
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(m) = self.monitor.take() {
            if self.dir.is_some() {
                m.kill();
            }
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Records a freshly started monitor and writes the engine's pid file.
pub fn commit(
    ctx: &Ctx,
    c: &Container,
    b: &bundle::Bundle,
    m: &Monitor,
    phase: Phase,
    annotations: std::collections::HashMap<String, String>,
) -> Result<()> {
    let rec = Record {
        id: c.id.clone(),
        bundle: b.dir.clone(),
        rootfs: b.rootfs.clone(),
        phase,
        pid: m.pid,
        pid_start: m.start,
        created: rfc3339_now(),
        annotations,
    };
    c.save(&rec)?;
    if let Some(p) = ctx.inv.value("pid-file") {
        launch::write_pid_file(Path::new(p), m.pid)?;
    }
    Ok(())
}

/// `create --bundle DIR [--pid-file F] [--console-socket S] ID`.
pub fn create(ctx: &Ctx) -> Result<ExitCode> {
    let id = ctx.id()?;
    let b = bundle::load(Path::new(ctx.inv.value("bundle").unwrap_or(".")))?;
    if let Kind::Other(why) = &b.kind {
        return crate::fallback::create(&ctx.root, &ctx.inv, why);
    }
    let plan = b.plan()?;
    let console = console_socket(ctx, plan.terminal)?;
    let duet = ctx.duet()?;
    let c = Container::create(&ctx.root, id)?;
    let mut undo = Undo::new(&c.dir);
    let net = netns::setup(&plan.netns)?;
    launch::make_fifo(&c.path(FIFO))?;
    let m = undo.monitor(launch::spawn(
        &duet,
        &run_args(&plan, net.as_ref(), &c.dir),
        console.as_deref(),
    )?);
    m.wait_ready("build the guest", proc::waiting_on_fifo)?;
    commit(ctx, &c, &b, m, Phase::Created, plan.annotations.clone())?;
    undo.disarm();
    Ok(ExitCode::SUCCESS)
}

/// The console socket, checked against `process.terminal`.
pub fn console_socket(ctx: &Ctx, terminal: bool) -> Result<Option<PathBuf>> {
    match (ctx.inv.value("console-socket"), terminal) {
        (Some(s), true) => Ok(Some(s.into())),
        (None, true) => bail!("process.terminal is set but no --console-socket was given"),
        (Some(_), false) => {
            log::info!("--console-socket ignored: process.terminal is not set");
            Ok(None)
        }
        (None, false) => Ok(None),
    }
}

/// `start ID`: lets a created guest run.
pub fn start(c: Container) -> Result<ExitCode> {
    let mut r = c.load()?;
    match r.status() {
        Status::Created => {}
        Status::Stopped => bail!(
            "container {} has stopped; a container starts only once",
            c.id
        ),
        s => bail!(
            "container {} is already {}; a container starts only once",
            c.id,
            s.name()
        ),
    }
    let fifo = c.path(FIFO);
    let path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())?;
    // SAFETY: open with a valid C string. Non-blocking, so a monitor that
    // died before opening its end cannot leave `start` waiting for ever.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        bail!(
            "cannot open {}: {}",
            fifo.display(),
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let mut byte = 0u8;
        // SAFETY: read one byte into a local.
        let n = unsafe { libc::read(fd.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
        if n == 1 {
            break;
        }
        if !proc::alive(r.pid, r.pid_start) {
            bail!("the guest's monitor exited before it could start (see the container's output)");
        }
        if Instant::now() > deadline {
            bail!(
                "the monitor did not answer on {} within {START_TIMEOUT:?}",
                fifo.display()
            );
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own; a short timeout rechecks liveness.
        unsafe { libc::poll(&mut pfd, 1, 50) };
    }
    r.phase = Phase::Running;
    c.save(&r)?;
    Ok(ExitCode::SUCCESS)
}

/// `state ID`: the OCI state JSON.
pub fn state(c: Container) -> Result<ExitCode> {
    let r = c.load()?;
    println!("{}", serde_json::to_string_pretty(&r.oci_state())?);
    Ok(ExitCode::SUCCESS)
}

/// `kill [--all] ID [SIGNAL]` (default SIGTERM). SIGTERM asks the guest to
/// stop (the monitor gives it a grace period); SIGKILL ends it.
pub fn kill(ctx: &Ctx, c: Container) -> Result<ExitCode> {
    let r = c.load()?;
    let sig = proc::parse_signal(ctx.inv.positional.get(1).map_or("SIGTERM", |s| s.as_str()))?;
    if r.status() == Status::Stopped {
        bail!("container {} is not running", c.id);
    }
    proc::signal(r.pid, sig).with_context(|| format!("cannot signal container {}", c.id))?;
    Ok(ExitCode::SUCCESS)
}

/// `delete [--force] ID`.
pub fn delete(ctx: &Ctx, c: Container) -> Result<ExitCode> {
    let r = match c.load() {
        Ok(r) => r,
        // Only a create that was itself killed leaves a directory without state.
        Err(_) if ctx.inv.switch("force") => return c.remove().map(|_| ExitCode::SUCCESS),
        Err(e) => return Err(e),
    };
    match r.status() {
        Status::Stopped => {}
        // Never started: nothing of the guest has run, so nothing is lost (as runc does).
        Status::Created => stop_now(&r)?,
        s if ctx.inv.switch("force") => {
            log::info!("deleting {} container {}: killing it", s.name(), c.id);
            stop_now(&r)?;
        }
        s => bail!(
            "container {} is {}; stop it first, or use delete --force",
            c.id,
            s.name()
        ),
    }
    c.remove()?;
    Ok(ExitCode::SUCCESS)
}

fn stop_now(r: &Record) -> Result<()> {
    let _ = proc::signal(r.pid, libc::SIGKILL);
    if !proc::wait_gone(r.pid, r.pid_start, KILL_TIMEOUT) {
        bail!(
            "the monitor (pid {}) survived SIGKILL for {KILL_TIMEOUT:?}",
            r.pid
        );
    }
    Ok(())
}

/// `pause ID` / `resume ID`, through the monitor's API.
pub fn pause(ctx: &Ctx, c: Container, pause: bool) -> Result<ExitCode> {
    let mut r = c.load()?;
    let (want, verb, next) = if pause {
        (Status::Running, "pause", Phase::Paused)
    } else {
        (Status::Paused, "resume", Phase::Running)
    };
    if r.status() != want {
        bail!(
            "container {} is {}; only a {} one can be {verb}d",
            c.id,
            r.status().name(),
            want.name()
        );
    }
    launch::ctl(&ctx.duet()?, &c.path(API), &[verb])?;
    r.phase = next;
    c.save(&r)?;
    Ok(ExitCode::SUCCESS)
}

/// `ps [--format json] ID`: the container's one process, the monitor.
pub fn ps(ctx: &Ctx, c: Container) -> Result<ExitCode> {
    let r = c.load()?;
    let pids: Vec<i32> = if r.status() == Status::Stopped {
        vec![]
    } else {
        vec![r.pid]
    };
    if ctx.inv.value("format") == Some("json") {
        println!("{}", serde_json::to_string(&pids)?);
    } else {
        println!("PID");
        for p in pids {
            println!("{p}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::NetNs;

    #[test]
    fn monitor_command_line() {
        let plan = Plan {
            image: "/r/hello".into(),
            args: vec!["a".into(), "--b".into()],
            env: vec!["K=V".into()],
            mem_mib: Some(96),
            disks: vec!["/d.img,name=disk0".into()],
            netns: NetNs::Host,
            terminal: false,
            annotations: Default::default(),
        };
        let a: Vec<String> = run_args(&plan, None, Path::new("/s/id"))
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        assert_eq!(
            a,
            [
                "run",
                "/r/hello",
                "--api",
                "/s/id/api.sock",
                "--wait-start",
                "/s/id/start.fifo",
                "--mem",
                "96M",
                "--env",
                "K=V",
                "--disk",
                "/d.img,name=disk0",
                "--",
                "a",
                "--b"
            ]
        );
    }
}
