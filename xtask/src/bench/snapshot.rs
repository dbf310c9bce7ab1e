//! Snapshots: how long `duet ctl ... snapshot` takes for small and large
//! guests and with memory in use, restore (to the first `KVM_RUN`, and as a
//! whole process) beside cold boots of the same app at the same sizes,
//! interleaved, and clones ([`super::clones`]). Floors are Duet's own cold
//! boot, or the same figure at 64 MiB: the headline is that a restore costs
//! no more than a cold boot and stays flat as guest memory grows.

use super::bars::{BarChart, Panel};
use super::clones;
use super::group::Group;
use super::stats::{median, run_capture};
use super::{Ctx, Progress, Row};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Guest memory sizes compared: (`--mem`, label).
const SIZES: [(&str, &str); 2] = [("64M", "64 MiB"), ("1G", "1 GiB")];
/// MiB `memfill` fills before its snapshots.
const FILL_MIB: u32 = 32;
/// Warm-up runs per kind before the interleaved restore/boot runs.
const WARMUP: usize = 2;
/// How long a guest may take to print its first line.
const FIRST_LINE: Duration = Duration::from_secs(30);
/// The `--trace-boot` phase that starts the guest: the first `KVM_RUN`
/// (after a restore, the guest's next instruction).
const ENTER: &str = "enter guest";
/// The cold boot's guest-side stamp of its first instruction (a restored
/// guest has none: it goes on from where it was).
const FIRST_INSN: &str = "guest first instruction";

/// A temporary directory, removed (with everything in it) when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates a fresh `duet-bench-NAME-PID` under the system's temp dir
    /// (short, so socket paths fit in `sun_path`).
    fn new(name: &str) -> Result<TempDir> {
        let p = std::env::temp_dir().join(format!("duet-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The section: snapshot times, restore vs cold boot, clones.
pub fn run(ctx: &mut Ctx) -> Result<Vec<Row>> {
    let Some(counter) = ctx.image("counter", "snapshot")? else {
        return Ok(Vec::new());
    };
    let memfill = ctx.image("memfill", "snapshot")?;
    let tmp = TempDir::new("snapshot")?;
    let mut chart = BarChart::new("snapshot.svg", "Snapshot: cold boot vs restore vs clones");
    chart.series = vec!["cold boot", "restore / clone"];
    let mut rows = snapshot_times(ctx, &counter, memfill.as_deref(), &tmp.0)?;
    rows.extend(restore_vs_boot(ctx, &counter, &tmp.0, &mut chart)?);
    rows.extend(clones::run(ctx, &counter, &tmp.0, &mut chart)?);
    ctx.charts.push(chart);
    Ok(rows)
}

/// A guest running with `--api`, and the snapshot figures taken of it.
struct Live {
    socket: PathBuf,
    ms: Vec<f64>,
    bytes: Vec<f64>,
}

/// Starts `image` with `--api socket` in `group`; waits until it printed
/// a line starting with `ready` and its socket exists.
fn start_live(
    ctx: &Ctx,
    group: &mut Group,
    socket: PathBuf,
    image: &Path,
    mem: &str,
    args: &[&str],
    ready: &str,
) -> Result<Live> {
    group.spawn(
        Command::new(&ctx.duet)
            .arg("run")
            .arg(image)
            .args(["--mem", mem, "--api"])
            .arg(&socket)
            .arg("--")
            .args(args),
    )?;
    let what = format!("{} --mem {mem} with --api", image.display());
    group
        .wait_lines(ready, 1, FIRST_LINE)
        .with_context(|| format!("starting {what}"))?;
    let end = Instant::now() + FIRST_LINE;
    while !socket.exists() {
        if Instant::now() > end {
            bail!("{what}: no control socket {}", socket.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(Live {
        socket,
        ms: Vec::new(),
        bytes: Vec::new(),
    })
}

/// One `duet ctl SOCKET snapshot DIR` into a fresh `dir` (removed after):
/// the reply's `snapshot_ms` and `snapshot_memory_bytes`.
fn snapshot_once(ctx: &Ctx, live: &mut Live, dir: &Path) -> Result<()> {
    let out = run_capture(
        Command::new(&ctx.duet)
            .arg("ctl")
            .arg(&live.socket)
            .arg("snapshot")
            .arg(dir),
    )
    .with_context(|| format!("snapshot through {}", live.socket.display()))?;
    let _ = std::fs::remove_dir_all(dir);
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing the ctl reply")?;
    let num = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("no `{k}` in the snapshot reply: {out}"))
    };
    live.ms.push(num("snapshot_ms")?);
    live.bytes.push(num("snapshot_memory_bytes")?);
    Ok(())
}

/// Snapshot time of a sleeping counter at 64 MiB and 1 GiB (snapshots
/// taken in turn), then of `memfill` with [`FILL_MIB`] MiB in use.
fn snapshot_times(
    ctx: &mut Ctx,
    counter: &Path,
    memfill: Option<&Path>,
    tmp: &Path,
) -> Result<Vec<Row>> {
    let k = (ctx.runs / 10).clamp(2, 10);
    let log = tmp.join("snapshot.log");
    let mut group = Group::new(&log)?;
    // Two values 30 s apart: asleep while measured, gone within a minute
    // even if the harness were killed before cleaning up.
    let sleeper = ["2", "30000000"];
    let mut lives = Vec::new();
    for (mem, _) in SIZES {
        let socket = tmp.join(format!("counter-{mem}.sock"));
        lives.push(start_live(
            ctx, &mut group, socket, counter, mem, &sleeper, "count 0",
        )?);
    }
    let p = Progress::new("snapshot: ctl snapshot of counter, 64 MiB / 1 GiB", k);
    for i in 0..k {
        for (j, live) in lives.iter_mut().enumerate() {
            snapshot_once(ctx, live, &tmp.join(format!("snap-{j}-{i}")))?;
        }
        p.show(i + 1);
    }
    drop(group);
    let (small, large) = (&lives[0], &lives[1]);
    let mut rows = vec![
        Row::alone(
            "snapshot, counter, 64 MiB guest, median",
            median(&small.ms),
            "ms",
        ),
        Row::vs(
            "snapshot, counter: 1 GiB guest (floor = 64 MiB guest)",
            median(&large.ms),
            median(&small.ms),
            "ms",
        ),
    ];
    let mut samples = vec![("64m", small), ("1g", large)];

    let fill;
    if let Some(image) = memfill {
        let mut group = Group::new(&log)?;
        let arg = FILL_MIB.to_string();
        let socket = tmp.join("memfill.sock");
        let mut live = start_live(
            ctx,
            &mut group,
            socket,
            image,
            "1G",
            &[&arg, "wait"],
            "waiting",
        )?;
        let n = (k / 2).max(1);
        let p = Progress::new(
            format!("snapshot: ctl snapshot of memfill {FILL_MIB} MiB, 1 GiB"),
            n,
        );
        for i in 0..n {
            snapshot_once(ctx, &mut live, &tmp.join(format!("snap-fill-{i}")))?;
            p.show(i + 1);
        }
        drop(group);
        rows.push(Row::vs(
            format!("snapshot, memfill {FILL_MIB} MiB in use (floor = counter), 1 GiB guest"),
            median(&live.ms),
            median(&large.ms),
            "ms",
        ));
        rows.push(Row::vs(
            "memory written by a snapshot: memfill (floor = counter)",
            median(&live.bytes) / (1 << 20) as f64,
            median(&large.bytes) / (1 << 20) as f64,
            "MiB",
        ));
        fill = live;
        samples.push(("memfill", &fill));
    }
    for (tag, l) in samples {
        ctx.samples
            .insert(format!("snapshot_{tag}_ms"), l.ms.clone());
    }
    Ok(rows)
}

/// Runs `cmd` (which has `--trace-boot`); returns (ms from monitor start to
/// the first `KVM_RUN`, whole-process ms, and for a cold boot the ms from
/// that `KVM_RUN` to the guest's own first-instruction stamp).
fn traced(cmd: &mut Command) -> Result<(f64, f64, Option<f64>)> {
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    let t = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let whole = t.elapsed().as_secs_f64() * 1e3;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{cmd:?} failed with {}:\n{err}", out.status);
    }
    let enter =
        since(&err, ENTER).with_context(|| format!("no `{ENTER}` line from {cmd:?}:\n{err}"))?;
    let first = since(&err, FIRST_INSN).map(|f| f - enter);
    Ok((enter, whole, first))
}

/// The "ms since monitor start" of `phase` in `--trace-boot` output
/// (`  NAME  SINCE ms  (+LEN ms)`).
fn since(trace: &str, phase: &str) -> Option<f64> {
    trace.lines().find_map(|l| {
        let rest = l.trim_start().strip_prefix(phase)?;
        let (v, _) = rest.trim_start().split_once(" ms")?;
        v.trim().parse().ok()
    })
}

/// Samples of one kind of start at one size.
#[derive(Default)]
struct Starts {
    /// Monitor start -> first `KVM_RUN`, ms.
    enter: Vec<f64>,
    /// Whole process, ms.
    whole: Vec<f64>,
    /// Cold boots: first `KVM_RUN` -> the guest's first instruction, ms.
    first: Vec<f64>,
}

/// Restores of a counter template vs cold boots of the counter, at each
/// size, interleaved run by run; adds a panel per measure to `chart`.
fn restore_vs_boot(
    ctx: &mut Ctx,
    counter: &Path,
    tmp: &Path,
    chart: &mut BarChart,
) -> Result<Vec<Row>> {
    let store = tmp.join("templates");
    // One value, no sleep: the same work after the ready point both ways.
    let args = ["1", "0"];
    for (mem, _) in SIZES {
        clones::template(ctx, &store, &format!("counter-{mem}"), counter, mem, &args)?;
    }
    let cold = |mem: &str| {
        let mut c = Command::new(&ctx.duet);
        c.args(["run", "--trace-boot"])
            .arg(counter)
            .args(["--mem", mem, "--"])
            .args(args);
        c
    };
    let restore = |mem: &str| {
        let mut c = Command::new(&ctx.duet);
        c.args([
            "run",
            "--trace-boot",
            "--template",
            &format!("counter-{mem}"),
        ])
        .arg("--store")
        .arg(&store);
        c
    };
    let n = (ctx.runs / 2).max(2);
    // s[size][0 = cold boot, 1 = restore]
    let mut s: [[Starts; 2]; 2] = Default::default();
    let p = Progress::new("snapshot: restore vs cold boot, 64 MiB / 1 GiB", n);
    for i in 0..WARMUP + n {
        for (k, (mem, _)) in SIZES.iter().enumerate() {
            for (side, mut cmd) in [cold(mem), restore(mem)].into_iter().enumerate() {
                let (enter, whole, first) = traced(&mut cmd)?;
                if i >= WARMUP {
                    s[k][side].enter.push(enter);
                    s[k][side].whole.push(whole);
                    s[k][side].first.extend(first);
                }
            }
        }
        p.show((i + 1).saturating_sub(WARMUP));
    }

    let mut rows = Vec::new();
    for (whole, what) in [(false, "start -> enter guest"), (true, "whole process")] {
        let m = |k: usize, side: usize| {
            let v: &Starts = &s[k][side];
            median(if whole { &v.whole } else { &v.enter })
        };
        let mut panel = Panel::new(format!("counter, {what} (median)"), "ms");
        for (k, (_, label)) in SIZES.iter().enumerate() {
            rows.push(Row::vs(
                format!("restore vs cold boot (floor), {label}, {what}"),
                m(k, 1),
                m(k, 0),
                "ms",
            ));
            panel
                .groups
                .push((label.to_string(), vec![m(k, 0), m(k, 1)]));
        }
        rows.push(Row::vs(
            format!("restore 1 GiB vs 64 MiB (floor), {what}"),
            m(1, 1),
            m(0, 1),
            "ms",
        ));
        rows.push(Row::vs(
            format!("cold boot 1 GiB vs 64 MiB (floor), {what}"),
            m(1, 0),
            m(0, 0),
            "ms",
        ));
        chart.panels.push(panel);
    }
    for (k, (_, label)) in SIZES.iter().enumerate() {
        rows.push(Row::alone(
            format!("cold boot, {label}: enter guest -> guest first instruction"),
            median(&s[k][0].first),
            "ms",
        ));
    }
    for (k, (mem, _)) in SIZES.iter().enumerate() {
        for (side, name) in ["cold", "restore"].into_iter().enumerate() {
            let tag = mem.to_lowercase();
            let v = std::mem::take(&mut s[k][side]);
            ctx.samples
                .insert(format!("snapshot_{name}_{tag}_enter_ms"), v.enter);
            ctx.samples
                .insert(format!("snapshot_{name}_{tag}_whole_ms"), v.whole);
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #[test]
    fn trace_since() {
        let t = "duet: boot trace (ms since monitor start, phase length)\n  \
                 read snapshot                0.276 ms  (+0.276 ms)\n  \
                 enter guest                  1.370 ms  (+0.145 ms)\n";
        assert_eq!(super::since(t, "enter guest"), Some(1.37));
        assert_eq!(super::since(t, "guest exit"), None);
    }
}
