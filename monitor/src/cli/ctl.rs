//! `duet ctl SOCKET ...`: one request to a running monitor's control
//! socket (docs/api.md), printed as the monitor answered it.

use super::args::{parse_addr, parse_dest};
use anyhow::bail;
use duet_monitor::api::{self, Request, Response};
use duet_monitor::migration::{MigrateRequest, Progress, Summary};
use duet_monitor::outcome::Outcome;
use std::path::{Path, PathBuf};

/// What to ask the monitor.
#[derive(clap::Subcommand, Debug)]
pub enum CtlCmd {
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
        /// The destination (a host name is resolved here).
        #[arg(value_name = "ADDR:PORT", value_parser = parse_dest)]
        addr: String,
        /// The key shared with the destination.
        #[arg(long, value_name = "KEY")]
        migration_key_file: PathBuf,
        /// Downtime budget in milliseconds (pre-copy goes on until the rest fits).
        #[arg(long, value_name = "MS", default_value_t = 5)]
        max_downtime: u64,
        /// Copy the disk contents to the destination's files (its `--disk` options) instead of sharing them.
        #[arg(long)]
        copy_disks: bool,
    },
    /// Serve GDB on ADDR:PORT (port 0 picks one; the answer says which); the
    /// guest stops when GDB attaches and runs on when it detaches.
    Gdb {
        /// Where to listen (that address only).
        #[arg(value_name = "ADDR:PORT", value_parser = parse_addr)]
        addr: String,
    },
    /// Write an ELF core file of the guest to PATH; it keeps running (or stays paused).
    Core {
        /// The file (replaced atomically).
        path: PathBuf,
    },
}

/// One progress line of a migration.
fn progress_line(p: &Progress) -> String {
    format!(
        "round {}: {:.1} MiB sent, {} dirty pages ({:.1} MiB/s dirtied, {:.0} MiB/s link), est. downtime {:.2} ms",
        p.round, p.sent_mib, p.dirty_pages, p.dirty_rate_mib_s, p.bandwidth_mib_s, p.est_downtime_ms
    )
}

/// The summary line of a finished migration (`cargo xtask bench migrate`
/// parses it). `rounds` counts the rounds after the full copy (round 0), so
/// it is the last round printed.
fn summary_line(s: &Summary) -> String {
    format!(
        "migrated to {} in {:.1} ms: downtime {:.2} ms (source clock {:.2} ms), {:.1} MiB, {} round{}{}",
        s.to,
        s.total_ms,
        s.downtime_ms,
        s.downtime_src_ms,
        s.bytes as f64 / f64::from(1 << 20),
        s.rounds,
        if s.rounds == 1 { "" } else { "s" },
        if s.forced_stop {
            " (not converging: stop-and-copy)"
        } else {
            ""
        }
    )
}

fn migrate(socket: &Path, req: MigrateRequest) -> anyhow::Result<Outcome> {
    let resp = api::call(socket, &Request::Migrate(req), |p| {
        println!("{}", progress_line(p))
    })?;
    match (resp.ok, resp.migration) {
        (true, Some(s)) => {
            println!("{}", summary_line(&s));
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

/// Sends `cmd` to the monitor serving `socket` and prints its answer.
pub fn run(socket: &Path, cmd: CtlCmd) -> anyhow::Result<Outcome> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_rounds_after_the_full_copy() {
        let mut s = Summary {
            to: "h:1".into(),
            rounds: 1,
            ..Summary::default()
        };
        assert!(summary_line(&s).ends_with(" 0.0 MiB, 1 round"));
        s.rounds = 0;
        s.forced_stop = true;
        assert!(summary_line(&s).ends_with(" 0 rounds (not converging: stop-and-copy)"));
    }
}
