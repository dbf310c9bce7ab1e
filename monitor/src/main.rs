//! `duet`: the Duet monitor's command line.

use anyhow::Context;
use clap::{Parser, Subcommand};
use duet_monitor::config::{self, VmConfig};
use duet_monitor::devices::block;
use duet_monitor::status;
use duet_monitor::trace::BootTrace;
use duet_monitor::vcpu::Outcome;
use duet_monitor::vm::Vm;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Duet: boot paravirtualised unikernels on KVM.
///
/// Exit status of `duet run`: the guest's own exit status (0-255) when it
/// exits; 125 when the monitor cannot start it (bad image, bad option, no
/// KVM); 134 when the guest panics; 139 when it takes a CPU exception; 140
/// when the VM fails otherwise (triple fault, stray I/O, HLT).
#[derive(Parser)]
#[command(name = "duet", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot IMAGE and run it until it exits; exit with its status.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The unikernel image (an ELF built with `cargo xtask build`).
    image: PathBuf,
    /// Guest memory: a size such as 64M, 512MiB or 2G (a bare number is MiB; a multiple of 2 MiB).
    #[arg(long, default_value = "64M", value_parser = config::parse_mem)]
    mem: u64,
    /// An environment entry for the guest (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = config::parse_env)]
    env: Vec<String>,
    /// Print a phase breakdown of the boot to stderr.
    #[arg(long)]
    trace_boot: bool,
    /// Attach a raw image file as a block device (repeatable; devices are numbered in order).
    #[arg(long = "disk", value_name = "PATH[,ro][,name=NAME][,sector=512|4096]", value_parser = block::parse_spec)]
    disks: Vec<block::DiskSpec>,
    /// The KVM device node.
    #[arg(long, env = "DUET_KVM_DEVICE", default_value = "/dev/kvm")]
    kvm_device: PathBuf,
    /// A network interface backed by TAP NAME (repeatable): tap=NAME[,mac=MAC].
    /// An existing TAP is attached; a missing one is created when allowed.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]", value_parser = duet_monitor::devices::net::parse_spec)]
    net: Vec<duet_monitor::devices::net::NetConfig>,
    /// Arguments for the guest, after `--`.
    #[arg(last = true)]
    args: Vec<String>,
}

fn run(a: RunArgs, start: Instant) -> anyhow::Result<Outcome> {
    let trace = a.trace_boot.then(|| BootTrace::new(start));
    let cfg = VmConfig {
        image: a.image,
        mem: a.mem,
        args: a.args,
        env: a.env,
        kvm_device: a.kvm_device,
        disks: a.disks,
        net: a.net,
    };
    let mut vm = Vm::create(&cfg, trace).context("cannot start the guest")?;
    let outcome = vm.run();
    if let Some(t) = vm.take_trace() {
        let mut t = t;
        t.mark("guest exit");
        eprint!("{}", t.render());
    }
    Ok(outcome)
}

fn main() -> ExitCode {
    let start = Instant::now();
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("DUET_LOG", "warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run(a, start),
    };
    match result {
        Ok(outcome) => {
            match &outcome {
                Outcome::Exited(_) => {}
                Outcome::Aborted(msg) => eprintln!("duet: guest aborted: {msg}"),
                Outcome::Faulted(report) => eprintln!("duet: {report}"),
                Outcome::Failed(report) => eprintln!("duet: VM failure: {report}"),
            }
            ExitCode::from(outcome.status())
        }
        Err(e) => {
            eprintln!("duet: error: {e:#}");
            ExitCode::from(status::MONITOR_ERROR)
        }
    }
}
