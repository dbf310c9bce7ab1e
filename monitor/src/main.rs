//! `duet`: the Duet monitor's command line.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use duet_monitor::api::{self, Request, Response};
use duet_monitor::config::{self, VmConfig};
use duet_monitor::contract::status;
use duet_monitor::debug;
use duet_monitor::devices::{block, net};
use duet_monitor::migration::{self, MigrateRequest};
use duet_monitor::outcome::Outcome;
use duet_monitor::runner::{self, Finished};
use duet_monitor::snapshot::{self, RestoreOptions, Snapshot};
use duet_monitor::template;
use duet_monitor::trace::BootTrace;
use duet_monitor::vmm::Vmm;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Duet: boot paravirtualised unikernels on KVM.
///
/// Exit status of `duet run`: the guest's own exit status (0-255) when it
/// exits; 125 when the monitor cannot start it (bad image, bad option, no
/// KVM, bad snapshot); 134 when the guest panics; 139 when it takes a CPU
/// exception; 140 when the VM fails otherwise (triple fault, stray I/O, HLT);
/// 120 when the guest was live-migrated away (see docs/migration.md).
#[derive(Parser)]
#[command(name = "duet", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot IMAGE (or start from a template) and run it until it exits; exit with its status.
    Run(RunArgs),
    /// Resume a snapshot directory where it left off.
    Restore(RestoreArgs),
    /// Send a command to a guest started with `--api SOCKET`.
    Ctl {
        /// The guest's control socket.
        socket: PathBuf,
        #[command(subcommand)]
        cmd: CtlCmd,
    },
    /// Manage templates: snapshots taken at a guest's `duet::snapshot_point()`.
    Template {
        #[command(subcommand)]
        cmd: TemplateCmd,
    },
}

#[derive(clap::Args)]
struct Common {
    /// Serve the control API on this Unix socket (see docs/api.md).
    #[arg(long, value_name = "SOCKET")]
    api: Option<PathBuf>,
    /// Print a phase breakdown of the boot (or restore) to stderr.
    #[arg(long)]
    trace_boot: bool,
    /// The KVM device node.
    #[arg(long, env = "DUET_KVM_DEVICE", default_value = "/dev/kvm")]
    kvm_device: PathBuf,
    /// After SIGTERM, give the guest this many seconds to exit by itself
    /// (it sees `duet::shutdown_requested()`) before stopping it (status 143).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    stop_timeout: f64,
    /// For container runtimes: build the VM, then open PATH (a FIFO) for
    /// writing and enter the guest only once a reader has opened it.
    #[arg(long, value_name = "PATH")]
    wait_start: Option<PathBuf>,
    /// Serve the GDB remote protocol on ADDR:PORT (that address only; port 0
    /// picks a free one). Connect with `gdb IMAGE -ex 'target remote ADDR:PORT'`.
    #[arg(long, value_name = "ADDR:PORT")]
    gdb: Option<String>,
    /// With --gdb: wait for GDB before the guest's first instruction (the
    /// default); `--gdb-wait false` starts the guest at once, and GDB stops
    /// it when it attaches.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, requires = "gdb")]
    gdb_wait: bool,
    /// Write an ELF core file to PATH if the guest faults or panics
    /// (`gdb IMAGE PATH` then shows where).
    #[arg(long, value_name = "PATH")]
    core: Option<PathBuf>,
}

impl Common {
    fn run_options(&self) -> anyhow::Result<runner::RunOptions> {
        let stop_timeout =
            std::time::Duration::try_from_secs_f64(self.stop_timeout).map_err(|_| {
                anyhow::anyhow!(
                    "--stop-timeout {} is not a number of seconds >= 0",
                    self.stop_timeout
                )
            })?;
        if let Some(p) = &self.wait_start {
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
        let core = self
            .core
            .as_ref()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
        // Bound here, before anything boots: a port in use fails at once.
        let gdb = match &self.gdb {
            Some(addr) => {
                let l = debug::Listener::bind(addr)?;
                let at = l.local_addr();
                if self.gdb_wait {
                    eprintln!("duet: waiting for GDB on {at} before the first instruction (gdb IMAGE -ex 'target remote {at}')");
                } else {
                    eprintln!("duet: GDB can attach on {at} (gdb IMAGE -ex 'target remote {at}')");
                }
                Some(l)
            }
            None => None,
        };
        Ok(runner::RunOptions {
            api: self.api.clone(),
            wait_start: self.wait_start.clone(),
            stop_timeout,
            snapshot_at_point: None,
            debug: debug::DebugOptions {
                gdb,
                wait: self.gdb_wait,
                core,
            },
        })
    }
}

#[derive(clap::Args)]
struct GuestArgs {
    /// Guest memory: a size such as 64M, 512MiB or 2G (a bare number is MiB; a multiple of 2 MiB).
    #[arg(long, default_value = "64M", value_parser = config::parse_mem)]
    mem: u64,
    /// An environment entry for the guest (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = config::parse_env)]
    env: Vec<String>,
    /// Attach a raw image file as a block device (repeatable; devices are numbered in order).
    #[arg(long = "disk", value_name = "PATH[,ro][,name=NAME][,sector=512|4096]", value_parser = block::parse_spec)]
    disks: Vec<block::DiskSpec>,
    /// A network interface backed by TAP NAME (repeatable): tap=NAME[,mac=MAC].
    /// An existing TAP is attached; a missing one is created when allowed.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]", value_parser = net::parse_spec)]
    net: Vec<net::NetConfig>,
    /// Arguments for the guest, after `--`.
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The unikernel image (an ELF built with `cargo xtask build`).
    #[arg(required_unless_present_any = ["template", "incoming"], conflicts_with_all = ["template", "incoming"])]
    image: Option<PathBuf>,
    /// Wait on ADDR:PORT for one live-migrated guest and run it (see docs/migration.md).
    #[arg(
        long,
        value_name = "ADDR:PORT",
        requires = "migration_key_file",
        conflicts_with = "template"
    )]
    incoming: Option<String>,
    /// The key shared with the migration's other side (at least 16 bytes).
    #[arg(long, value_name = "PATH")]
    migration_key_file: Option<PathBuf>,
    /// Start from this template instead of booting an image.
    #[arg(long, value_name = "NAME")]
    template: Option<String>,
    /// Template store (default: $XDG_DATA_HOME/duet/templates).
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// With --template: start N independent clones.
    #[arg(long, value_name = "N", requires = "template")]
    clones: Option<u32>,
    /// With --template: skip checking the memory file's checksums (see `duet restore --help`).
    #[arg(long, requires = "template")]
    no_verify: bool,
    #[command(flatten)]
    guest: GuestArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
struct RestoreArgs {
    /// The snapshot directory.
    dir: PathBuf,
    /// Start N independent clones sharing the snapshot's memory copy-on-write.
    #[arg(long, value_name = "N")]
    clones: Option<u32>,
    /// The clone index this guest gets (set by --clones for each clone).
    #[arg(long, hide = true, default_value_t = 0)]
    clone_index: u32,
    /// Skip checking the memory file's checksums: restore time then no longer
    /// grows with the populated memory, but a corrupt memory file goes unnoticed.
    #[arg(long)]
    no_verify: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand)]
enum CtlCmd {
    /// Stop running the guest.
    Pause,
    /// Run it again.
    Resume,
    /// Print its state, uptime, exits, memory and devices (JSON).
    Status,
    /// Snapshot it into DIR (a new directory); it keeps running (or stays paused).
    Snapshot {
        /// The directory to create.
        dir: PathBuf,
    },
    /// Live-migrate the guest to `duet run --incoming ADDR:PORT`; exits 0 once it runs there.
    Migrate {
        /// The destination.
        addr: String,
        /// Downtime budget in milliseconds (pre-copy goes on until the rest fits).
        #[arg(long, value_name = "MS", default_value_t = 5)]
        max_downtime: u64,
        /// Copy the disk contents to the destination's files (its `--disk` options) instead of sharing them.
        #[arg(long)]
        copy_disks: bool,
        /// The key shared with the destination.
        #[arg(long, value_name = "PATH")]
        migration_key_file: PathBuf,
    },
    /// Serve GDB on ADDR:PORT (port 0 picks one; the answer says which); the
    /// guest stops when GDB attaches and runs on when it detaches.
    Gdb {
        /// Where to listen.
        addr: String,
    },
    /// Write an ELF core file of the guest to PATH; it keeps running.
    Core {
        /// The file (written atomically).
        path: PathBuf,
    },
}

#[derive(Subcommand)]
enum TemplateCmd {
    /// Boot IMAGE, snapshot it at its `duet::snapshot_point()` as template NAME, stop it.
    Create {
        /// The template's name.
        name: String,
        /// The image.
        image: PathBuf,
        /// Template store.
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
        #[command(flatten)]
        guest: GuestArgs,
        /// The KVM device node.
        #[arg(long, env = "DUET_KVM_DEVICE", default_value = "/dev/kvm")]
        kvm_device: PathBuf,
    },
    /// List the templates.
    List {
        /// Template store.
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
    },
    /// Remove template NAME.
    Rm {
        /// The template's name.
        name: String,
        /// Template store.
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
    },
}

fn finish(f: Finished) -> Outcome {
    if let Some(mut t) = f.trace {
        t.mark("VM teardown");
        eprint!("{}", t.render());
    }
    f.outcome
}

fn boot(
    image: PathBuf,
    g: GuestArgs,
    c: Common,
    start: Instant,
    at_point: Option<PathBuf>,
) -> anyhow::Result<Outcome> {
    let trace = c.trace_boot.then(|| BootTrace::new(start));
    let mut opts = c.run_options()?;
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

fn restore_one(
    dir: PathBuf,
    c: Common,
    start: Instant,
    clone_index: u32,
    verify: bool,
) -> anyhow::Result<Outcome> {
    let trace = c.trace_boot.then(|| BootTrace::new(start));
    let opts = c.run_options()?;
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

/// Starts `n` clones of snapshot `dir` as child monitors and waits for all.
fn clones(dir: &Path, n: u32, c: &Common, start: Instant, verify: bool) -> anyhow::Result<Outcome> {
    if n == 0 {
        bail!("--clones must be at least 1");
    }
    if c.gdb.is_some() || c.core.is_some() {
        bail!("--gdb and --core serve one guest; restore without --clones to debug one");
    }
    // Check once here; each clone then maps the files without re-reading them.
    Snapshot::open(dir)
        .and_then(|s| if verify { s.verify_memory() } else { Ok(()) })
        .context("cannot restore the snapshot")?;
    let exe = std::env::current_exe().context("cannot find the duet binary")?;
    let mut children = Vec::new();
    for i in 0..n {
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("restore")
            .arg(dir)
            .args(["--no-verify", "--clone-index", &i.to_string()])
            .arg("--kvm-device")
            .arg(&c.kvm_device);
        if let Some(api) = &c.api {
            cmd.arg("--api").arg(format!("{}.{i}", api.display()));
        }
        children.push(
            cmd.spawn()
                .with_context(|| format!("cannot start clone {i}"))?,
        );
    }
    if c.trace_boot {
        eprintln!(
            "duet: started {n} clones in {:.3} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
    }
    let mut result = Outcome::Exited(0);
    for (i, mut ch) in children.into_iter().enumerate() {
        let st = ch
            .wait()
            .with_context(|| format!("waiting for clone {i}"))?;
        let code = st.code().unwrap_or(i32::from(status::VM_FAILURE));
        if code != 0 {
            eprintln!("duet: clone {i} exited with status {code}");
            if result == Outcome::Exited(0) {
                result = Outcome::Exited(code.clamp(0, 255) as u8);
            }
        }
    }
    Ok(result)
}

fn migrate(socket: &Path, req: MigrateRequest) -> anyhow::Result<Outcome> {
    let resp = api::call(socket, &Request::Migrate(req), |p| {
        println!(
            "round {}: {:.1} MiB sent, {} dirty pages ({:.1} MiB/s dirtied, {:.0} MiB/s link), est. downtime {:.2} ms",
            p.round, p.sent_mib, p.dirty_pages, p.dirty_rate_mib_s, p.bandwidth_mib_s, p.est_downtime_ms
        );
    })?;
    match (resp.ok, resp.migration) {
        (true, Some(s)) => {
            println!(
                "migrated to {} in {:.1} ms: downtime {:.2} ms (source clock {:.2} ms), {:.1} MiB, {} rounds{}",
                s.to,
                s.total_ms,
                s.downtime_ms,
                s.downtime_src_ms,
                s.bytes as f64 / f64::from(1 << 20),
                s.rounds,
                if s.forced_stop { " (not converging: stop-and-copy)" } else { "" }
            );
            Ok(Outcome::Exited(0))
        }
        _ => bail!(
            "{}; the guest {} here",
            resp.error.unwrap_or_else(|| "migration failed".into()),
            match resp.state.as_deref() {
                Some("paused") => "stays paused",
                Some("running") => "keeps running",
                _ => "has exited",
            }
        ),
    }
}

fn ctl(socket: &Path, cmd: CtlCmd) -> anyhow::Result<Outcome> {
    let req = match cmd {
        CtlCmd::Migrate {
            addr,
            max_downtime,
            copy_disks,
            migration_key_file,
        } => {
            let key = std::path::absolute(&migration_key_file).unwrap_or(migration_key_file);
            // Test hooks (docs/migration.md; `test-hooks` builds only): cut
            // the connection at a phase, or lie in the hello.
            #[cfg(feature = "test-hooks")]
            let hook = |v: &str| std::env::var(v).ok().filter(|s| !s.is_empty());
            let req = MigrateRequest {
                addr,
                max_downtime_ms: max_downtime,
                key_file: key.display().to_string(),
                copy_disks,
                #[cfg(feature = "test-hooks")]
                fail_at: hook("DUET_MIGRATE_FAIL"),
                #[cfg(feature = "test-hooks")]
                fake: hook("DUET_MIGRATE_FAKE"),
            };
            return migrate(socket, req);
        }
        CtlCmd::Gdb { addr } => Request::Gdb { addr },
        CtlCmd::Core { path } => {
            let path = std::path::absolute(&path).unwrap_or(path);
            Request::Core {
                path: path.display().to_string(),
            }
        }
        CtlCmd::Pause => Request::Pause,
        CtlCmd::Resume => Request::Resume,
        CtlCmd::Status => Request::Status,
        CtlCmd::Snapshot { dir } => {
            // The monitor resolves relative paths against its own directory.
            let dir = std::path::absolute(&dir).unwrap_or(dir);
            Request::Snapshot {
                dir: dir.display().to_string(),
            }
        }
    };
    let resp: Response = api::call(socket, &req, |_| {})?;
    println!("{}", serde_json::to_string_pretty(&resp)?);
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_else(|| "request failed".into()));
    }
    Ok(Outcome::Exited(0))
}

fn template_cmd(cmd: TemplateCmd, start: Instant) -> anyhow::Result<Outcome> {
    match cmd {
        TemplateCmd::Create {
            name,
            image,
            store,
            guest,
            kvm_device,
        } => {
            let store = template::store(store.as_deref())?;
            let dir = template::new_path(&store, &name)?;
            let c = Common {
                api: None,
                trace_boot: false,
                kvm_device,
                stop_timeout: 5.0,
                wait_start: None,
                gdb: None,
                gdb_wait: true,
                core: None,
            };
            match boot(image, guest, c, start, Some(dir))? {
                Outcome::Snapshotted(d) => {
                    eprintln!("duet: template `{name}` created in {d}");
                    Ok(Outcome::Exited(0))
                }
                Outcome::Exited(s) => bail!(
                    "the guest exited (status {s}) without reaching duet::snapshot_point(); no template was created"
                ),
                other => Ok(other),
            }
        }
        TemplateCmd::List { store } => {
            let store = template::store(store.as_deref())?;
            for t in template::list(&store)? {
                println!("{}\t{} KiB", t.name, t.bytes >> 10);
            }
            Ok(Outcome::Exited(0))
        }
        TemplateCmd::Rm { name, store } => {
            let store = template::store(store.as_deref())?;
            template::remove(&store, &name)?;
            Ok(Outcome::Exited(0))
        }
    }
}

fn incoming(addr: String, key: PathBuf, g: GuestArgs, c: Common) -> anyhow::Result<Outcome> {
    let opts = c.run_options()?;
    let kvm_device = c.kvm_device;
    let (disks, nets) = (g.disks, g.net);
    let f = runner::run(
        move |ctl| migration::destination::incoming(&addr, &key, &kvm_device, &disks, &nets, ctl),
        opts,
    )
    .context("no guest arrived; nothing runs here")?;
    Ok(finish(f))
}

fn dispatch(cmd: Command, start: Instant) -> anyhow::Result<Outcome> {
    match cmd {
        Command::Run(a) if a.incoming.is_some() => {
            let (Some(addr), Some(key)) = (a.incoming, a.migration_key_file) else {
                bail!("--incoming needs --migration-key-file");
            };
            incoming(addr, key, a.guest, a.common)
        }
        Command::Run(a) => match (a.image, a.template) {
            (Some(image), None) => boot(image, a.guest, a.common, start, None),
            (None, Some(name)) => {
                let store = template::store(a.store.as_deref())?;
                let dir = template::path(&store, &name)?;
                if !a.guest.args.is_empty() || !a.guest.env.is_empty() {
                    bail!("a template starts with the arguments and environment it was created with; drop them");
                }
                match a.clones {
                    Some(n) => clones(&dir, n, &a.common, start, !a.no_verify),
                    None => restore_one(dir, a.common, start, 0, !a.no_verify),
                }
            }
            _ => bail!("give either IMAGE or --template NAME"),
        },
        Command::Restore(a) => match a.clones {
            Some(n) => clones(&a.dir, n, &a.common, start, !a.no_verify),
            None => restore_one(a.dir, a.common, start, a.clone_index, !a.no_verify),
        },
        Command::Ctl { socket, cmd } => ctl(&socket, cmd),
        Command::Template { cmd } => template_cmd(cmd, start),
    }
}

fn main() -> ExitCode {
    let start = Instant::now();
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("DUET_LOG", "warn")).init();
    let cli = Cli::parse();
    match dispatch(cli.command, start) {
        Ok(outcome) => {
            match &outcome {
                Outcome::Exited(_) | Outcome::Snapshotted(_) | Outcome::AtSnapshotPoint => {}
                Outcome::Migrated(to) => eprintln!("duet: guest migrated to {to}"),
                Outcome::Aborted(msg) => eprintln!("duet: guest aborted: {msg}"),
                Outcome::Faulted(report) => eprintln!("duet: {report}"),
                Outcome::Failed(report) => eprintln!("duet: VM failure: {report}"),
                Outcome::Terminated(sig) => eprintln!(
                    "duet: stopped the guest on {} (status {})",
                    if sig.number() == libc::SIGINT {
                        "SIGINT"
                    } else {
                        "SIGTERM"
                    },
                    outcome.status()
                ),
            }
            ExitCode::from(outcome.status())
        }
        Err(e) => {
            eprintln!(
                "duet: error: {}",
                duet_monitor::errors::chain(e.as_ref() as &(dyn std::error::Error + 'static))
            );
            ExitCode::from(status::MONITOR_ERROR)
        }
    }
}
