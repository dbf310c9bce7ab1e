//! `duet run` (from an image, a template or an incoming migration) and
//! `duet restore`: what each mode accepts, and how it starts the guest.

use super::args::{parse_addr, parse_clones, Common, GuestArgs};
use super::clones;
use anyhow::{bail, Context};
use duet_monitor::config::VmConfig;
use duet_monitor::debug::{DebugOptions, Listener};
use duet_monitor::migration;
use duet_monitor::outcome::Outcome;
use duet_monitor::runner::{self, Finished, RunOptions};
use duet_monitor::snapshot::{self, RestoreOptions, Snapshot};
use duet_monitor::template;
use duet_monitor::trace::BootTrace;
use duet_monitor::vmm::Vmm;
use std::path::PathBuf;
use std::time::Instant;

/// `duet run`: exactly one of IMAGE, `--template NAME`, `--incoming
/// ADDR:PORT`. Each mode's own options conflict with the others, and the
/// guest-building options ([`GuestArgs`]) with the modes that take the
/// guest as it was saved.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["image", "template", "incoming"])))]
pub struct RunArgs {
    /// The unikernel image (an ELF built with `cargo xtask build`).
    pub image: Option<PathBuf>,
    /// Start from this template instead of booting an image (see docs/snapshots.md).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["mem", "env", "disks", "net", "args"])]
    pub template: Option<String>,
    /// Template store (default: $XDG_DATA_HOME/duet/templates).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["image", "incoming"])]
    pub store: Option<PathBuf>,
    /// With --template: start N independent clones (child monitors; the
    /// parent forwards SIGTERM and SIGINT to them).
    #[arg(long, value_name = "N", value_parser = parse_clones, conflicts_with_all = ["image", "incoming", "wait_start", "gdb", "core"])]
    pub clones: Option<u32>,
    /// With --clones: clone I runs in network namespace PREFIX + I
    /// (`/run/netns/PREFIXI`, made beforehand with `ip netns add`, each with
    /// the template's TAP), so clones of a guest with a NIC each get theirs.
    #[arg(long, value_name = "PREFIX", requires = "clones")]
    pub clone_netns: Option<String>,
    /// With --template: skip checking the memory file's checksums (see `duet restore --help`).
    #[arg(long, conflicts_with_all = ["image", "incoming"])]
    pub no_verify: bool,
    /// Wait on ADDR:PORT for one live-migrated guest and run it (see docs/migration.md).
    #[arg(
        long,
        value_name = "ADDR:PORT",
        value_parser = parse_addr,
        requires = "migration_key_file",
        conflicts_with_all = ["mem", "env", "args", "trace_boot"]
    )]
    pub incoming: Option<String>,
    /// With --incoming: the key shared with the migration's source (at least 16 bytes).
    #[arg(long, value_name = "KEY", conflicts_with_all = ["image", "template"])]
    pub migration_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub guest: GuestArgs,
    #[command(flatten)]
    pub common: Common,
}

/// `duet restore DIR`.
#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// The snapshot directory.
    pub dir: PathBuf,
    /// Start N independent clones sharing the snapshot's memory copy-on-write
    /// (child monitors; the parent forwards SIGTERM and SIGINT to them).
    #[arg(long, value_name = "N", value_parser = parse_clones, conflicts_with_all = ["wait_start", "gdb", "core"])]
    pub clones: Option<u32>,
    /// With --clones: clone I runs in network namespace PREFIX + I
    /// (`/run/netns/PREFIXI`, made beforehand with `ip netns add`).
    #[arg(long, value_name = "PREFIX", requires = "clones")]
    pub clone_netns: Option<String>,
    /// The clone index this guest gets (set by --clones for each clone).
    #[arg(long, hide = true, default_value_t = 0, conflicts_with = "clones")]
    pub clone_index: u32,
    /// Skip checking the memory file's checksums: restore time then no longer
    /// grows with the populated memory, but a corrupt memory file goes unnoticed.
    #[arg(long)]
    pub no_verify: bool,
    #[command(flatten)]
    pub common: Common,
}

/// Runs `duet run` in the mode its arguments chose.
pub fn run(a: RunArgs, start: Instant) -> anyhow::Result<Outcome> {
    a.common.seccomp.apply()?;
    if let Some(addr) = a.incoming {
        let key = a
            .migration_key_file
            .context("--incoming needs --migration-key-file")?;
        return incoming(addr, key, a.guest, a.common);
    }
    if let Some(name) = a.template {
        let store = template::store(a.store.as_deref())?;
        let dir = template::path(&store, &name)?;
        return match a.clones {
            Some(n) => {
                let netns = a.clone_netns.as_deref();
                clones::run(&dir, n, &a.common, start, !a.no_verify, netns)
            }
            None => restore_one(dir, a.common, start, 0, !a.no_verify),
        };
    }
    let Some(image) = a.image else {
        bail!("give IMAGE, --template NAME or --incoming ADDR:PORT");
    };
    boot(image, a.guest, a.common, start, None)
}

/// Runs `duet restore`.
pub fn restore(a: RestoreArgs, start: Instant) -> anyhow::Result<Outcome> {
    a.common.seccomp.apply()?;
    match a.clones {
        Some(n) => {
            let netns = a.clone_netns.as_deref();
            clones::run(&a.dir, n, &a.common, start, !a.no_verify, netns)
        }
        None => restore_one(a.dir, a.common, start, a.clone_index, !a.no_verify),
    }
}

/// The runner's options for `c`; `--wait-start` must name a FIFO; the GDB
/// port is bound here, before anything boots (a port in use fails at once).
fn run_options(c: &Common) -> anyhow::Result<RunOptions> {
    if let Some(p) = &c.wait_start {
        use std::os::unix::fs::FileTypeExt;
        match std::fs::metadata(p) {
            Ok(m) if m.file_type().is_fifo() => {}
            Ok(_) => bail!(
                "--wait-start {}: not a FIFO; create one with `mkfifo {0}`",
                p.display()
            ),
            Err(e) => bail!(
                "--wait-start {}: {e}; create it with `mkfifo {0}`",
                p.display()
            ),
        }
    }
    let gdb = match &c.gdb {
        Some(addr) => {
            let l = Listener::bind(addr)?;
            let at = l.local_addr();
            if c.gdb_wait {
                eprintln!("duet: waiting for GDB on {at} before the first instruction (gdb IMAGE -ex 'target remote {at}')");
            } else {
                eprintln!("duet: GDB can attach on {at} (gdb IMAGE -ex 'target remote {at}')");
            }
            Some(l)
        }
        None => None,
    };
    Ok(RunOptions {
        api: c.api.clone(),
        wait_start: c.wait_start.clone(),
        stop_timeout: c.stop_timeout,
        snapshot_at_point: None,
        debug: DebugOptions {
            gdb,
            wait: c.gdb_wait,
            core: c
                .core
                .as_ref()
                .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())),
        },
    })
}

/// The outcome of a finished run, after printing the boot trace if any
/// (`--trace-boot` prints when the guest ends).
fn finish(f: Finished) -> Outcome {
    if let Some(mut t) = f.trace {
        t.mark("VM teardown");
        eprint!("{}", t.render());
    }
    f.outcome
}

/// Boots `image`; in template mode (`at_point`) saves it at its snapshot
/// point into that directory.
pub fn boot(
    image: PathBuf,
    g: GuestArgs,
    c: Common,
    start: Instant,
    at_point: Option<PathBuf>,
) -> anyhow::Result<Outcome> {
    let trace = c.trace_boot.then(|| BootTrace::new(start));
    let mut opts = run_options(&c)?;
    opts.snapshot_at_point = at_point;
    let cfg = VmConfig {
        image,
        mem: g.mem,
        args: g.args,
        env: g.env,
        kvm_device: c.kvm_device,
        disks: g.disks,
        net: g.net,
    };
    let f = runner::run(move |ctl| Vmm::create(&cfg, trace, ctl), opts)
        .context("cannot start the guest")?;
    Ok(finish(f))
}

/// Restores snapshot `dir` as one guest with clone index `clone_index`.
pub fn restore_one(
    dir: PathBuf,
    c: Common,
    start: Instant,
    clone_index: u32,
    verify: bool,
) -> anyhow::Result<Outcome> {
    let trace = c.trace_boot.then(|| BootTrace::new(start));
    let opts = run_options(&c)?;
    let kvm_device = c.kvm_device;
    let f = runner::run(
        move |ctl| {
            let snap = Snapshot::open(&dir)?;
            let ropts = RestoreOptions {
                kvm_device,
                clone_index,
                verify,
                trace,
            };
            snapshot::restore(&snap, ropts, ctl)
        },
        opts,
    )
    .context("cannot restore the snapshot")?;
    Ok(finish(f))
}

/// Waits on `addr` for a migrated guest and runs it.
fn incoming(addr: String, key: PathBuf, g: GuestArgs, c: Common) -> anyhow::Result<Outcome> {
    let opts = run_options(&c)?;
    let kvm_device = c.kvm_device;
    let (disks, nets) = (g.disks, g.net);
    let f = runner::run(
        move |ctl| {
            migration::destination::incoming(&addr, &key, &kvm_device, &disks, &nets, ctl)
                .map_err(|e| e.lost("source", "before commit"))
        },
        opts,
    )
    .context("no guest arrived; nothing runs here")?;
    Ok(finish(f))
}
