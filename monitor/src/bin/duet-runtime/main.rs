//! `duet-runtime`: an OCI runtime with runc's command line that runs Duet
//! guests, so Podman, containerd (and through it Kubernetes) can run Duet
//! images like any container. See docs/oci.md.
//!
//! It drives the guest through the `duet` binary's public command line (the
//! `duet` beside this executable): a container is one `duet run` process.
//! Images that are not Duet guests go to runc or crun.

mod args;
mod bundle;
mod checkpoint;
mod fallback;
mod guest;
mod launch;
mod lifecycle;
mod logger;
mod netns;
mod proc;
mod state;

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: duet-runtime [GLOBAL FLAGS] COMMAND [FLAGS] ID

An OCI runtime for Duet guests, with runc's command line.

commands:
  create --bundle DIR [--pid-file F] [--console-socket S] ID   build the guest; it waits for start
  start ID                          let it run
  state ID                          print its OCI state (JSON)
  kill [--all] ID [SIGNAL]          signal it (TERM asks the guest to stop, KILL ends it)
  delete [--force] ID               forget a stopped container (--force kills a running one)
  pause ID / resume ID              pause or resume the guest
  ps [--format json] ID             its process (the monitor)
  checkpoint --image-path DIR [--leave-running] ID   snapshot the guest
  restore --image-path DIR --bundle DIR [--pid-file F] ID   bring a checkpoint back, running
  features                          what this runtime supports (JSON)

global flags:
  --root DIR                  container state (default /run/duet-runtime)
  --log FILE, --log-format json|text, --debug
  --duet PATH                 the monitor (default: `duet` beside this binary; or $DUET_RUNTIME_DUET)
  --fallback-runtime PATH|none   who runs images that are not Duet guests
                              (default: runc, else crun; or $DUET_RUNTIME_FALLBACK)
  --systemd-cgroup, --criu, --rootless   accepted and ignored
Unknown flags are logged and ignored.";

/// What every command needs.
pub struct Ctx {
    /// The parsed command line.
    pub inv: args::Invocation,
    /// The state root (absolute).
    pub root: PathBuf,
}

impl Ctx {
    /// The container id, required.
    pub fn id(&self) -> Result<&str> {
        self.inv
            .id()
            .with_context(|| format!("`{}` needs a container id", self.inv.command))
    }

    /// The `duet` binary.
    pub fn duet(&self) -> Result<PathBuf> {
        launch::duet_binary(self.inv.global.duet.as_deref())
    }
}

fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": state::OCI_VERSION,
        "hooks": [],
        "mountOptions": ["bind", "rbind", "ro", "rw"],
        "linux": {
            "namespaces": ["network"],
            "capabilities": [],
            "cgroup": {"v1": false, "v2": false, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": false},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {
            "io.github.duet.runtime.disks": bundle::DISK_DIR,
            "io.github.duet.runtime.fallback": fallback::find(None)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "none".into()),
        }
    })
}

fn run(ctx: &Ctx) -> Result<ExitCode> {
    let inv = &ctx.inv;
    if inv.global.version {
        println!(
            "duet-runtime version {}\nspec: {}",
            env!("CARGO_PKG_VERSION"),
            state::OCI_VERSION
        );
        return Ok(ExitCode::SUCCESS);
    }
    if inv.global.help || inv.help || inv.command.is_empty() {
        println!("{USAGE}");
        return Ok(if inv.command.is_empty() && !inv.global.help {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        });
    }
    match inv.command.as_str() {
        "create" => return lifecycle::create(ctx),
        "restore" => return checkpoint::restore(ctx),
        "features" => {
            println!("{}", serde_json::to_string_pretty(&features())?);
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let c = state::Container::open(&ctx.root, ctx.id()?)?;
    if let Some(rt) = fallback::delegate_of(&c) {
        return fallback::forward(c, &rt, inv);
    }
    match inv.command.as_str() {
        "start" => lifecycle::start(c),
        "state" => lifecycle::state(c),
        "kill" => lifecycle::kill(ctx, c),
        "delete" => lifecycle::delete(ctx, c),
        "pause" => lifecycle::pause(ctx, c, true),
        "resume" => lifecycle::pause(ctx, c, false),
        "ps" => lifecycle::ps(ctx, c),
        "checkpoint" => checkpoint::checkpoint(ctx, c),
        "exec" => bail!("exec is not possible in a Duet guest: it runs one program, with no shell"),
        other => bail!("`{other}` is not supported by duet-runtime (see `duet-runtime --help`)"),
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let inv = match args::parse(&argv) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("duet-runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let to_file = logger::init(&inv.global);
    for u in &inv.unknown {
        log::info!("ignoring unknown flag {u}");
    }
    if inv.positional.len() > 1 && inv.command != "kill" {
        log::info!("ignoring extra arguments {:?}", &inv.positional[1..]);
    }
    let root = inv
        .global
        .root
        .clone()
        .unwrap_or_else(|| state::DEFAULT_ROOT.into());
    let root = std::path::absolute(&root).unwrap_or(root);
    let ctx = Ctx { inv, root };
    match run(&ctx) {
        Ok(code) => code,
        Err(e) => {
            if to_file {
                log::error!("{e:#}");
            }
            eprintln!("duet-runtime: {e:#}");
            ExitCode::FAILURE
        }
    }
}
