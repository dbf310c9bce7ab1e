//! The options `duet run`, `duet restore` and `duet template create` share,
//! and the value parsers that make a malformed value a usage error (status
//! 2) rather than a refusal to start (125).
//!
//! Options that do not apply to a mode are refused by clap
//! (`conflicts_with` on the mode's own options in `run.rs`), never ignored.
//! A new option goes into the struct it belongs to: [`Common`] for every way
//! of running a guest, [`GuestArgs`] for what a fresh boot is built from.

use duet_monitor::config;
use duet_monitor::devices::{block, net};
use std::path::PathBuf;
use std::time::Duration;

/// How any guest is run, whatever it starts from (an image, a snapshot, a
/// template, a migration).
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// Serve the control API on this Unix socket (see docs/api.md); the
    /// socket is removed when the monitor ends.
    #[arg(long, value_name = "SOCKET")]
    pub api: Option<PathBuf>,
    /// Print a phase breakdown of the boot (or restore) to stderr when the
    /// guest ends.
    #[arg(long)]
    pub trace_boot: bool,
    /// The KVM device node.
    #[arg(
        long,
        value_name = "PATH",
        env = "DUET_KVM_DEVICE",
        default_value = "/dev/kvm"
    )]
    pub kvm_device: PathBuf,
    /// After SIGTERM, give the guest this many seconds to exit by itself
    /// (it sees `duet::shutdown_requested()`) before stopping it (status 143).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs, allow_negative_numbers = true)]
    pub stop_timeout: Duration,
    /// For container runtimes: build the VM, then open FIFO (made with
    /// `mkfifo`) for writing and enter the guest only once a reader has
    /// opened it.
    #[arg(long, value_name = "FIFO")]
    pub wait_start: Option<PathBuf>,
    /// Serve the GDB remote protocol on ADDR:PORT (that address only; port 0
    /// picks a free one) and wait for GDB before the guest's first
    /// instruction; connect with `gdb IMAGE -ex 'target remote ADDR:PORT'`
    /// (see docs/debugging.md).
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_addr)]
    pub gdb: Option<String>,
    /// With --gdb: `false` starts the guest at once (GDB stops it when it
    /// attaches) instead of waiting for GDB.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, requires = "gdb")]
    pub gdb_wait: bool,
    /// Write an ELF core file to PATH if the guest faults or panics
    /// (`gdb IMAGE PATH` then shows where).
    #[arg(long, value_name = "PATH")]
    pub core: Option<PathBuf>,
    #[command(flatten)]
    pub seccomp: Seccomp,
}

/// `--seccomp`, for every command that runs a guest.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct Seccomp {
    /// Confine each monitor thread to the system calls it needs (seccomp;
    /// a call off its list stops the monitor with status 159, see
    /// docs/security.md). `off` is UNSAFE: a monitor bug a guest can reach
    /// then has every system call; use it only to debug the monitor.
    #[arg(long = "seccomp", value_name = "on|off", default_value = "on", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub on: bool,
}

impl Seccomp {
    /// Applies the choice to this process, before any thread starts.
    pub fn apply(self) -> anyhow::Result<()> {
        if self.on {
            duet_monitor::seccomp::enable()?;
        } else {
            log::warn!("--seccomp off: the monitor runs without system-call filters (unsafe)");
        }
        Ok(())
    }
}

/// `on` or `off`.
fn parse_switch(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("`{s}` is neither on nor off")),
    }
}

/// What a fresh boot is built from (`duet run IMAGE`, `duet template create`).
#[derive(clap::Args, Clone, Debug)]
pub struct GuestArgs {
    /// Guest memory: a size such as 64M, 512MiB or 2G (a bare number is MiB;
    /// a multiple of 2 MiB, 4 MiB to 64 GiB, at most the host's RAM).
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = config::parse_mem)]
    pub mem: u64,
    /// An environment entry for the guest (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = config::parse_env)]
    pub env: Vec<String>,
    /// Attach a raw image file as a block device (repeatable; devices are numbered in order).
    #[arg(long = "disk", value_name = "PATH[,ro][,name=NAME][,sector=512|4096][,transport=virtio|hypercall]", value_parser = block::parse_spec)]
    pub disks: Vec<block::DiskSpec>,
    /// A network interface backed by TAP NAME (repeatable): tap=NAME[,mac=MAC].
    /// An existing TAP is attached; a missing one is created when allowed.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC][,transport=virtio|hypercall]", value_parser = net::parse_spec)]
    pub net: Vec<net::NetConfig>,
    /// Arguments for the guest, after `--`.
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

/// `--stop-timeout`: seconds, fractions allowed, not negative.
fn parse_secs(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a number of seconds >= 0 (e.g. 5 or 0.5)");
    let secs: f64 = s.trim().parse().map_err(|_| bad())?;
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

/// `--clones`: at least one.
pub fn parse_clones(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) => Err("give at least 1 clone".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a number of clones (1 or more)")),
    }
}

/// `ADDR:PORT` to listen on (`--gdb`, `ctl ... gdb`): checked for shape
/// here; the listener takes numeric addresses only (that address only).
pub fn parse_addr(s: &str) -> Result<String, String> {
    let port = s.rsplit_once(':').map(|(host, port)| (host.trim(), port));
    match port {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(s.to_string()),
        _ => Err(format!(
            "`{s}` is not ADDR:PORT (e.g. 10.0.0.2:4444, [::1]:4444 or 0.0.0.0:4444)"
        )),
    }
}

/// `ADDR:PORT` to connect to (`ctl ... migrate`): a host name is resolved
/// here, in the command-line process, so the monitor's threads (whose
/// seccomp lists have no name lookups) only see numbers.
pub fn parse_dest(s: &str) -> Result<String, String> {
    use std::net::ToSocketAddrs;
    let shaped = parse_addr(s)?;
    let host = shaped.rsplit_once(':').map_or("", |(h, _)| h.trim());
    match shaped.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => Ok(a.to_string()),
        Ok(None) => Err(format!("`{host}` has no address; give a numeric one")),
        Err(e) => Err(format!(
            "cannot resolve `{host}`: {e}; give a numeric address"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_do_not_parse_are_refused() {
        assert_eq!(parse_secs("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("soon").is_err());
        assert_eq!(parse_clones("3"), Ok(3));
        assert!(parse_clones("0").is_err());
        assert!(parse_clones("-2").is_err());
        assert!(parse_addr("10.0.0.2:4444").is_ok());
        let named = parse_dest("localhost:4444").unwrap();
        assert!(named.parse::<std::net::SocketAddr>().is_ok(), "{named}");
        assert!(parse_addr("[::1]:4444").is_ok());
        assert!(parse_addr("10.0.0.2").is_err());
        assert!(parse_addr(":4444").is_err());
        assert!(parse_addr("host:99999").is_err());
    }
}
