//! `cargo xtask fuzz`: the libFuzzer targets in `fuzz/` (cargo-fuzz, on
//! the nightly toolchain, which both are installed here if missing), run
//! one after another, each for a time or a number of executions, with a
//! line per target: executions, rate, and whether it crashed
//! (`docs/fuzzing.md`).

use crate::build::root;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Every target, in the order they run.
pub const TARGETS: &[&str] = &[
    "hypercalls",
    "loader",
    "snapshot",
    "migration",
    "control",
    "cli",
];

/// Seconds each target runs in `cargo xtask test`'s smoke pass.
const SMOKE_SECS: u64 = 4;

/// `cargo xtask fuzz` options.
#[derive(Args, Clone, Debug)]
pub struct FuzzArgs {
    /// The target (all in turn when none): hypercalls, loader, snapshot,
    /// migration, control, cli.
    pub target: Option<String>,
    /// Seconds per target (60 when neither this nor --runs is given).
    #[arg(long, value_name = "S")]
    pub time: Option<u64>,
    /// Executions per target (stops at whichever of --time and --runs
    /// comes first).
    #[arg(long, value_name = "N")]
    pub runs: Option<u64>,
    /// AddressSanitizer without its quarantine, use-after-return checks and
    /// allocation stacks: about twice the executions per second; overflows
    /// are still caught, a use after free only when the memory was not
    /// reused yet (docs/fuzzing.md).
    #[arg(long)]
    pub lean_asan: bool,
}

/// `ASAN_OPTIONS` for `--lean-asan`: the quarantine's recycling of the
/// harnesses' large freed buffers, use-after-return's fake stacks and the
/// allocation stack traces were half of a run's time.
const LEAN_ASAN: &str =
    "quarantine_size_mb=0:detect_stack_use_after_return=0:malloc_context_size=0";

/// What one target's run came to.
struct Outcome {
    target: &'static str,
    executions: u64,
    secs: f64,
    crash: Option<String>,
}

fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

/// A command with the outer cargo's variables removed: cargo-fuzz must
/// pick nightly's cargo, not the stable one running this xtask.
fn clean(mut c: Command) -> Command {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k == "CARGO" || k == "RUSTC" || k == "RUSTDOC" || k == "RUSTUP_TOOLCHAIN" {
            c.env_remove(&k);
        }
        if k.starts_with("CARGO_") || k.contains("RUSTFLAGS") {
            c.env_remove(&k);
        }
    }
    c
}

fn nightly(args: &[&str]) -> Command {
    let mut c = clean(Command::new("rustup"));
    c.args(["run", "nightly"]).args(args);
    c
}

fn quiet_ok(c: &mut Command) -> bool {
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(c: &mut Command, what: &str) -> Result<()> {
    let status = c.status().with_context(|| format!("cannot run {c:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status}): {c:?}");
    }
    Ok(())
}

/// Installs what fuzzing needs when missing: the nightly toolchain
/// (rustup) and cargo-fuzz (`cargo install`). Idempotent.
pub fn ensure_tools() -> Result<()> {
    if !quiet_ok(&mut nightly(&["rustc", "--version"])) {
        eprintln!("installing the nightly toolchain (fuzzing only)");
        run(
            clean(Command::new("rustup")).args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]),
            "installing the nightly toolchain with rustup",
        )?;
    }
    if !quiet_ok(&mut nightly(&["cargo", "fuzz", "--version"])) {
        eprintln!("installing cargo-fuzz");
        run(
            clean(Command::new("cargo")).args(["install", "cargo-fuzz", "--locked"]),
            "installing cargo-fuzz (`cargo install cargo-fuzz`)",
        )?;
    }
    Ok(())
}

/// Builds every target (release, debug assertions on: overflow checks
/// are findings too, AddressSanitizer).
pub fn build() -> Result<()> {
    let t = Instant::now();
    run(
        nightly(&["cargo", "fuzz", "build", "--debug-assertions"]).current_dir(root()),
        "building the fuzz targets",
    )?;
    eprintln!("fuzz targets built in {:.0} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// Parses libFuzzer's closing numbers out of its output.
fn executions(log: &str) -> Option<u64> {
    let stat = log.lines().find_map(|l| {
        l.strip_prefix("stat::number_of_executed_units:")
            .and_then(|v| v.trim().parse().ok())
    });
    stat.or_else(|| {
        log.lines().rev().find_map(|l| {
            let (n, rest) = l.strip_prefix('#')?.split_once(char::is_whitespace)?;
            rest.trim_start()
                .starts_with("DONE")
                .then(|| n.parse().ok())?
        })
    })
}

/// Runs `target` for `secs` seconds or `runs` executions.
fn fuzz_one(
    target: &'static str,
    secs: Option<u64>,
    runs: Option<u64>,
    lean: bool,
) -> Result<Outcome> {
    let corpus = fuzz_dir().join("corpus").join(target);
    let artifacts = fuzz_dir().join("artifacts").join(target);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let log_path = fuzz_dir().join("logs").join(format!("{target}.log"));
    std::fs::create_dir_all(log_path.parent().expect("a parent"))?;
    let mut log = std::fs::File::create(&log_path)?;
    let mut args = vec![
        "-print_final_stats=1".to_string(),
        // Console hypercalls write to stdout: not to the terminal.
        "-close_fd_mask=1".to_string(),
        // A hang is a finding too.
        "-timeout=30".to_string(),
        format!("-artifact_prefix={}/", artifacts.display()),
    ];
    if let Some(s) = secs {
        args.push(format!("-max_total_time={s}"));
    }
    if let Some(n) = runs {
        args.push(format!("-runs={n}"));
    }
    let mut c = nightly(&["cargo", "fuzz", "run", "--debug-assertions", target]);
    c.arg(&corpus).arg("--").args(&args).current_dir(root());
    if lean {
        c.env("ASAN_OPTIONS", LEAN_ASAN);
    }
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = c.spawn().with_context(|| format!("cannot run {c:?}"))?;
    let mut text = String::new();
    let mut last_pulse = Instant::now();
    for line in BufReader::new(child.stderr.take().expect("piped")).lines() {
        let line = line.unwrap_or_default();
        writeln!(log, "{line}")?;
        // A line every ~10 s for long runs; the whole output is in the log.
        if line.contains("pulse") && last_pulse.elapsed().as_secs() >= 10 {
            eprintln!("  {target}: {}", line.trim());
            last_pulse = Instant::now();
        }
        text.push_str(&line);
        text.push('\n');
    }
    let status = child.wait()?;
    let secs = start.elapsed().as_secs_f64();
    let executions = executions(&text).unwrap_or(0);
    let crash = if status.success() {
        None
    } else {
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        let unit = text
            .lines()
            .find_map(|l| l.split("Test unit written to ").nth(1))
            .map(str::trim)
            .unwrap_or("(no test case written)");
        eprintln!("--- {target}: last lines of {}", log_path.display());
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
        Some(format!(
            "{status}; input {unit}; reproduce: (cd fuzz && cargo +nightly fuzz run --debug-assertions {target} {unit})"
        ))
    };
    Ok(Outcome {
        target,
        executions,
        secs,
        crash,
    })
}

fn targets(which: Option<&str>) -> Result<Vec<&'static str>> {
    match which {
        None => Ok(TARGETS.to_vec()),
        Some(t) => match TARGETS.iter().find(|x| **x == t) {
            Some(x) => Ok(vec![*x]),
            None => bail!(
                "no fuzz target `{t}`; the targets are {}",
                TARGETS.join(", ")
            ),
        },
    }
}

fn fuzz(list: &[&'static str], secs: Option<u64>, runs: Option<u64>, lean: bool) -> Result<()> {
    ensure_tools()?;
    build()?;
    let mut outcomes = Vec::new();
    for t in list {
        eprintln!("fuzzing {t}");
        let o = fuzz_one(t, secs, runs, lean)?;
        eprintln!(
            "{:<12} {:>12} executions in {:>6.1} s ({:>7.0}/s){}",
            o.target,
            o.executions,
            o.secs,
            o.executions as f64 / o.secs.max(1e-9),
            if o.crash.is_some() { "  CRASH" } else { "" }
        );
        outcomes.push(o);
    }
    println!("target        executions   seconds   exec/s  result");
    for o in &outcomes {
        println!(
            "{:<12} {:>11} {:>9.1} {:>8.0}  {}",
            o.target,
            o.executions,
            o.secs,
            o.executions as f64 / o.secs.max(1e-9),
            if o.crash.is_some() { "crash" } else { "ok" }
        );
    }
    let crashes: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.crash.as_ref().map(|c| format!("{}: {c}", o.target)))
        .collect();
    if !crashes.is_empty() {
        bail!(
            "the monitor crashed on fuzzed input (a monitor bug: fix it and add the input as a regression test):\n{}",
            crashes.join("\n")
        );
    }
    Ok(())
}

/// `cargo xtask fuzz`.
pub fn main(a: &FuzzArgs) -> Result<()> {
    let list = targets(a.target.as_deref())?;
    let secs = match (a.time, a.runs) {
        (None, None) => Some(60),
        (t, _) => t,
    };
    fuzz(&list, secs, a.runs, a.lean_asan)
}

/// The smoke pass of `cargo xtask test`: every target for a few seconds.
pub fn smoke() -> Result<()> {
    fuzz(TARGETS, Some(SMOKE_SECS), None, false).context("fuzz smoke pass")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executions_come_from_the_final_stats_or_the_done_line() {
        let log = "#1024\tpulse  cov: 5\n#52311\tDONE   cov: 1205 ft: 2987\nstat::number_of_executed_units: 52312\n";
        assert_eq!(executions(log), Some(52312));
        assert_eq!(
            executions("#2\tINITED\n#181833\tDONE   cov: 1\n"),
            Some(181833)
        );
        assert_eq!(executions("==1== ERROR: libFuzzer: deadly signal\n"), None);
        assert!(targets(Some("nope")).is_err());
        assert_eq!(targets(None).unwrap().len(), 6);
    }
}
