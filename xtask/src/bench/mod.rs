//! `cargo xtask bench`: Duet's figures beside a floor measured in the same run.
//!
//! This host is shared, noisy and nested, so no figure means much alone:
//! each is reported beside a floor (what KVM itself costs, measured by the
//! independent `kvm-floor` program, interleaved with Duet's runs), and the
//! ratio is the headline.
//!
//! A section is a function `fn(&mut Ctx) -> Result<Vec<Row>>` listed in
//! [`SECTIONS`]; adding a figure is writing one and adding a line there.

mod bars;
mod block;
mod boot;
mod chart;
mod clock;
mod clones;
mod framepointers;
mod group;
mod host;
mod hypercall;
mod kvd;
mod migrate;
mod net;
mod netns;
mod progress;
mod qemu;
mod redis;
mod report;
mod seccomp;
mod snapshot;
mod stats;

use crate::build;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use progress::Progress;

/// `cargo xtask bench` options.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Which section to run: boot, hypercall, clock, block, net, kvd,
    /// snapshot, migrate, seccomp, framepointers, qemu, or all.
    #[arg(default_value = "all")]
    pub what: String,
    /// Repetitions: boot runs per side (use at least 50); other sections scale from it.
    #[arg(long, default_value_t = 100)]
    pub runs: usize,
    /// Where to write the JSON results (charts go beside it).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Run even when the host's load average says the numbers will be garbage.
    #[arg(long)]
    pub force: bool,
}

/// One figure: Duet's value beside the floor's (same unit, same run).
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub figure: String,
    /// Duet's value.
    pub duet: f64,
    /// The floor's value, when this figure has one.
    pub floor: Option<f64>,
    /// Unit of both values.
    pub unit: &'static str,
}

impl Row {
    /// A figure with a floor.
    pub fn vs(figure: impl Into<String>, duet: f64, floor: f64, unit: &'static str) -> Row {
        Row {
            figure: figure.into(),
            duet,
            floor: Some(floor),
            unit,
        }
    }

    /// A figure without a floor (e.g. a phase of Duet's own boot).
    pub fn alone(figure: impl Into<String>, duet: f64, unit: &'static str) -> Row {
        Row {
            figure: figure.into(),
            duet,
            floor: None,
            unit,
        }
    }

    /// `duet / floor`.
    pub fn ratio(&self) -> Option<f64> {
        self.floor.filter(|f| *f > 0.0).map(|f| self.duet / f)
    }
}

/// What sections share: the binaries, the repetition count, raw samples
/// for charts and JSON, and notes (skips and caveats) for the report.
pub struct Ctx {
    /// `--runs`.
    pub runs: usize,
    /// The `duet` monitor.
    pub duet: PathBuf,
    /// The `kvm-floor` program.
    pub floor: PathBuf,
    /// Directory of example images.
    pub images: PathBuf,
    /// Raw samples by series name (e.g. `boot_duet_ms`).
    pub samples: BTreeMap<String, Vec<f64>>,
    /// Skips and caveats, printed under the table and kept in the JSON.
    pub notes: Vec<String>,
    /// Where results, charts and generated files go.
    pub out_dir: PathBuf,
    /// Bar charts sections describe; drawn with the others at the end.
    pub charts: Vec<bars::BarChart>,
    /// The smoke pass: a section that cannot run here, or a measurement
    /// that fails, is an error (so `cargo xtask test` fails) instead of a
    /// note under the table.
    pub strict: bool,
    floor_exit_ns: Option<f64>,
}

impl Ctx {
    /// Records that `section` could not run or measure something: an error
    /// in the smoke pass, a note under the table otherwise.
    pub fn problem(&mut self, section: &str, what: impl std::fmt::Display) -> Result<()> {
        if self.strict {
            bail!("{section}: {what}");
        }
        self.notes.push(format!("{section}: {what}"));
        Ok(())
    }

    /// The image of example app `app`, or `None` (with a note; an error in
    /// the smoke pass) when this build has no such app.
    pub fn image(&mut self, app: &str, section: &str) -> Result<Option<PathBuf>> {
        let p = self.images.join(app);
        if p.is_file() {
            return Ok(Some(p));
        }
        self.problem(
            section,
            format!("skipped: app `{app}` is not in this build (unikernel/examples/{app}.rs)"),
        )?;
        Ok(None)
    }

    /// The floor's cost of one `out` exit in ns, measured once per run.
    pub fn floor_exit_ns(&mut self, exits: u64) -> Result<f64> {
        if let Some(v) = self.floor_exit_ns {
            return Ok(v);
        }
        let v = floor_exits(&self.floor, exits)?;
        self.floor_exit_ns = Some(v);
        Ok(v)
    }

    /// Records the floor's per-exit cost measured by a section.
    pub fn set_floor_exit_ns(&mut self, v: f64) {
        self.floor_exit_ns = Some(v);
    }
}

/// Runs `kvm-floor exits N` once; returns ns per exit.
pub fn floor_exits(floor: &Path, exits: u64) -> Result<f64> {
    let out = stats::run_capture(Command::new(floor).arg("exits").arg(exits.to_string()))?;
    stats::bench_value(&stats::parse_bench(&out), "floor_exit_ns")
}

/// A benchmark section.
pub struct Section {
    /// Name on the command line and in the report.
    pub name: &'static str,
    /// Measures and returns rows.
    pub run: fn(&mut Ctx) -> Result<Vec<Row>>,
    /// Whether the smoke pass runs it (every Duet section does).
    pub smoke: bool,
}

/// Every section, in report order.
pub const SECTIONS: &[Section] = &[
    Section {
        name: "boot",
        run: boot::run,
        smoke: true,
    },
    Section {
        name: "hypercall",
        run: hypercall::run,
        smoke: true,
    },
    Section {
        name: "clock",
        run: clock::run,
        smoke: true,
    },
    Section {
        name: "block",
        run: block::run,
        smoke: true,
    },
    Section {
        name: "net",
        run: net::run,
        smoke: true,
    },
    Section {
        name: "kvd",
        run: kvd::run,
        smoke: true,
    },
    Section {
        name: "snapshot",
        run: snapshot::run,
        smoke: true,
    },
    Section {
        name: "migrate",
        run: migrate::run,
        smoke: true,
    },
    Section {
        name: "seccomp",
        run: seccomp::run,
        smoke: true,
    },
    Section {
        name: "framepointers",
        run: framepointers::run,
        // A one-off question (what the backtraces' frame pointers cost),
        // answered with a second build of two images: too slow for tests.
        smoke: false,
    },
    Section {
        name: "qemu",
        run: qemu::run,
        // A reference, not Duet: QEMU is optional and `cargo xtask test`
        // does not install it (Debian's qemu-system-x86 would replace the
        // backported qemu-utils these machines come with).
        smoke: false,
    },
];

fn build_floor() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let st = Command::new(cargo)
        .current_dir(build::root())
        .args(["build", "--release", "--quiet", "-p", "kvm-floor"])
        .status()
        .context("cannot run cargo to build kvm-floor")?;
    if !st.success() {
        bail!("building kvm-floor failed with {st}");
    }
    Ok(build::root().join("target/release/kvm-floor"))
}

/// `cargo xtask bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    run_with(args, false)
}

/// Runs the sections `args` selects; `strict` as [`Ctx::strict`].
fn run_with(args: &BenchArgs, strict: bool) -> Result<()> {
    let sections: Vec<&Section> = SECTIONS
        .iter()
        .filter(|s| args.what == "all" || args.what == s.name)
        .filter(|s| s.smoke || !strict)
        .collect();
    if sections.is_empty() {
        let names: Vec<_> = SECTIONS.iter().map(|s| s.name).collect();
        bail!(
            "unknown bench section {:?}; choose one of {} or all",
            args.what,
            names.join(", ")
        );
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let json = args
        .json
        .clone()
        .unwrap_or_else(|| build::root().join("target/bench/results.json"));
    let dir = json
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The load is read before building, so our own build does not count.
    let host = host::HostInfo::read();
    host::check_load(&host, args.force)?;

    build::images(&[])?;
    let duet = build::monitor()?;
    let floor = build_floor()?;
    let mut ctx = Ctx {
        runs: args.runs,
        duet,
        floor,
        images: build::images_dir(),
        samples: BTreeMap::new(),
        notes: Vec::new(),
        out_dir: dir.clone(),
        charts: Vec::new(),
        strict,
        floor_exit_ns: None,
    };
    let mut rows = Vec::new();
    for s in sections {
        let r = (s.run)(&mut ctx).with_context(|| format!("bench section {}", s.name))?;
        rows.extend(r.into_iter().map(|r| (s.name, r)));
    }
    Progress::clear();

    let charts = chart::draw(&dir, &rows, &ctx.samples, &ctx.charts)?;
    print!("{}", report::table(&host, &rows, &ctx.notes));
    report::write_json(&json, &host, args.runs, &rows, &ctx, &charts)?;
    println!("results: {}", json.display());
    for c in &charts {
        println!("chart:   {}", c.display());
    }
    Ok(())
}

/// The smoke pass `cargo xtask test` runs: every Duet section (not the QEMU
/// reference) with tiny counts, results in a temporary directory, no timing
/// checked. Strict: a section that fails or cannot run fails the pass (and
/// so the test command).
pub fn smoke() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("duet-bench-smoke-{}", std::process::id()));
    let args = BenchArgs {
        what: "all".into(),
        runs: 2,
        json: Some(dir.join("results.json")),
        force: true,
    };
    let r = run_with(&args, true);
    let _ = std::fs::remove_dir_all(&dir);
    r.context("bench smoke pass")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(strict: bool) -> Ctx {
        Ctx {
            runs: 2,
            duet: PathBuf::new(),
            floor: PathBuf::new(),
            images: PathBuf::from("/nonexistent/images"),
            samples: BTreeMap::new(),
            notes: Vec::new(),
            out_dir: PathBuf::new(),
            charts: Vec::new(),
            strict,
            floor_exit_ns: None,
        }
    }

    #[test]
    fn the_smoke_pass_turns_problems_into_errors() {
        let mut smoke = ctx(true);
        let e = smoke
            .problem("migrate", "64M guest, idle: refused")
            .unwrap_err();
        assert_eq!(e.to_string(), "migrate: 64M guest, idle: refused");
        let e = smoke.image("hello", "boot").unwrap_err();
        assert!(SECTIONS
            .iter()
            .filter(|s| !s.smoke)
            .all(|s| s.name == "qemu" || s.name == "framepointers"));
        assert!(
            e.to_string().contains("app `hello` is not in this build"),
            "{e}"
        );
        assert!(smoke.notes.is_empty());

        let mut bench = ctx(false);
        bench.problem("migrate", "refused").unwrap();
        assert_eq!(bench.image("hello", "boot").unwrap(), None);
        assert_eq!(bench.notes.len(), 2);
        assert_eq!(bench.notes[0], "migrate: refused");
    }
}
