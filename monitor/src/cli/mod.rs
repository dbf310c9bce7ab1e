//! The `duet` command line: the subcommands ([`Command`]), what each runs,
//! and how an outcome or an error becomes the exit status
//! (`duet_monitor::contract::status`, README's table).
//!
//! * `args.rs`: options shared by the ways of running a guest;
//! * `run.rs`: `duet run` (image, template, incoming) and `duet restore`;
//! * `clones.rs`: `--clones N` child monitors;
//! * `ctl.rs`: `duet ctl`;
//! * `template.rs`: `duet template`.

mod args;
mod clones;
mod ctl;
mod run;
mod template;

use clap::{Parser, Subcommand};
use duet_monitor::contract::status;
use duet_monitor::outcome::Outcome;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Duet: boot paravirtualised unikernels on KVM.
#[derive(Parser, Debug)]
#[command(name = "duet", version, about, long_about, after_long_help = exit_statuses())]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Boot IMAGE (or start from a template, or receive a migrated guest)
    /// and run it until it exits; exit with its status (`duet --help`).
    Run(Box<run::RunArgs>),
    /// Resume a snapshot directory where it left off.
    Restore(run::RestoreArgs),
    /// Send a command to a guest started with `--api SOCKET`.
    Ctl {
        /// The guest's control socket.
        socket: PathBuf,
        #[command(subcommand)]
        cmd: ctl::CtlCmd,
    },
    /// Manage templates: snapshots taken at a guest's `duet::snapshot_point()`.
    Template {
        #[command(subcommand)]
        cmd: template::TemplateCmd,
    },
}

/// The exit-status table for `duet --help`.
fn exit_statuses() -> String {
    let mut s = String::from("Exit status:\n");
    for (st, meaning) in status::TABLE {
        s.push_str(&format!("  {st:>5}  {meaning}\n"));
    }
    s
}

/// Parses the command line. `duet run` is parsed by its own parser alone:
/// building every subcommand's parser costs ~60 µs, 3% of a whole
/// `duet run hello`. Anything it does not accept (help, a usage error)
/// goes through the whole parser, so output and errors are the same.
fn parse(args: Vec<std::ffi::OsString>) -> Command {
    use clap::{Args, FromArgMatches};
    if args.get(1).is_some_and(|a| a == "run") {
        let run = run::RunArgs::augment_args(clap::Command::new("run"));
        if let Ok(a) = run
            .try_get_matches_from(&args[1..])
            .and_then(|m| run::RunArgs::from_arg_matches(&m))
        {
            return Command::Run(Box::new(a));
        }
    }
    Cli::parse_from(args).command
}

fn dispatch(cmd: Command, start: Instant) -> anyhow::Result<Outcome> {
    match cmd {
        Command::Run(a) => run::run(*a, start),
        Command::Restore(a) => run::restore(a, start),
        Command::Ctl { socket, cmd } => ctl::run(&socket, cmd),
        Command::Template { cmd } => template::run(cmd, start),
    }
}

/// Says on stderr how the guest ended (nothing for a plain exit).
fn report(outcome: &Outcome) {
    match outcome {
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
}

/// Parses the command line, runs it, and returns the exit status:
/// clap's usage errors exit 2 (`status::USAGE`) before anything runs.
pub fn main() -> ExitCode {
    let start = Instant::now();
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("DUET_LOG", "warn")).init();
    match dispatch(parse(std::env::args_os().collect()), start) {
        Ok(outcome) => {
            report(&outcome);
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_parses_alone_as_the_whole_parser_does() {
        for line in [
            "duet run img",
            "duet run --mem 128M img -- a b",
            "duet run --disk path=d.img,transport=hypercall --net tap=t0 img -- --x",
            "duet run --api /tmp/s --trace-boot --env A=1 img",
            "duet run --template web --clones 3",
            "duet run --incoming 127.0.0.1:7000 --migration-key-file k",
        ] {
            let args: Vec<std::ffi::OsString> = line.split(' ').map(Into::into).collect();
            let whole = Cli::try_parse_from(&args).map(|c| format!("{:?}", c.command));
            assert_eq!(
                whole.as_deref().ok(),
                Some(format!("{:?}", parse(args.clone())).as_str()),
                "{line}"
            );
        }
    }
}
