//! Clones, part of the snapshot section: how fast
//! `duet run --template T --clones N` brings N sleeping counters to their
//! first line, beside the same N counters cold-booted at once by the
//! harness, and what each live clone's monitor costs in memory (RSS and
//! PSS from `/proc/PID/smaps_rollup`) beside a cold-booted one. From the
//! default `--runs` up, also 1,000 live clones: the project's goal.

use super::bars::{BarChart, Panel};
use super::group::{mem_available_kib, memory, Group};
use super::stats::{median, run_capture};
use super::{Ctx, Progress, Row};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The sleeping counter: prints `count 0`, sleeps 30 s, prints `count 1`,
/// sleeps, exits. Asleep (no host CPU) while measured, and gone within a
/// minute even if the harness were killed before cleaning up.
const SLEEPER: [&str; 2] = ["2", "30000000"];
/// The line each guest prints first.
const FIRST: &str = "count 0";
/// Guests in the 1,000-clone run.
const MANY: usize = 1000;
/// `--runs` from which the 1,000-clone run is made (the default).
const MANY_FROM_RUNS: usize = 100;

/// One start of N guests.
struct Start {
    /// Guests per second from the first spawn to the last first line.
    per_s: f64,
    /// Mean RSS of one guest's monitor, MiB.
    rss_mib: f64,
    /// Mean PSS of one guest's monitor, MiB.
    pss_mib: f64,
    /// PSS of every process in the group (a clones' parent too), MiB.
    pss_total_mib: f64,
    /// Drop of the host's `MemAvailable` while they live, MiB.
    host_mib: f64,
}

/// Waits for `n` first lines in `group`, started at `t0`; reads the
/// memory of every member but `parent`.
fn measure(
    group: &mut Group,
    n: usize,
    t0: Instant,
    parent: Option<u32>,
    avail: f64,
) -> Result<Start> {
    let limit = Duration::from_secs(30) + Duration::from_millis(100) * n as u32;
    group.wait_lines(FIRST, n, limit)?;
    let secs = t0.elapsed().as_secs_f64();
    let host_mib = (avail - mem_available_kib()?) / 1024.0;
    let members = group.members();
    let guests: Vec<u32> = members
        .iter()
        .copied()
        .filter(|p| Some(*p) != parent)
        .collect();
    if guests.len() != n {
        bail!(
            "{n} guests printed `{FIRST}` but {} monitors are alive",
            guests.len()
        );
    }
    let (mut rss, mut pss, mut total) = (0.0, 0.0, 0.0);
    for pid in members {
        let m = memory(pid)?;
        total += m.pss_kib;
        if Some(pid) != parent {
            rss += m.rss_kib;
            pss += m.pss_kib;
        }
    }
    Ok(Start {
        per_s: n as f64 / secs.max(1e-9),
        rss_mib: rss / 1024.0 / n as f64,
        pss_mib: pss / 1024.0 / n as f64,
        pss_total_mib: total / 1024.0,
        host_mib,
    })
}

/// `n` cold boots of the sleeping counter, all spawned at once.
fn cold(ctx: &Ctx, counter: &Path, n: usize, tmp: &Path) -> Result<Start> {
    let mut g = Group::new(&tmp.join("cold.log"))?;
    let avail = mem_available_kib()?;
    let t0 = Instant::now();
    for _ in 0..n {
        g.spawn(
            Command::new(&ctx.duet)
                .arg("run")
                .arg(counter)
                .args(["--mem", "64M", "--"])
                .args(SLEEPER),
        )?;
    }
    measure(&mut g, n, t0, None, avail).with_context(|| format!("{n} cold boots"))
}

/// `duet run --template sleeper --clones n`.
fn clones(ctx: &Ctx, store: &Path, n: usize, tmp: &Path) -> Result<Start> {
    let mut g = Group::new(&tmp.join("clones.log"))?;
    let avail = mem_available_kib()?;
    let t0 = Instant::now();
    let parent = g.spawn(
        Command::new(&ctx.duet)
            .args(["run", "--template", "sleeper", "--store"])
            .arg(store)
            .args(["--clones", &n.to_string()]),
    )?;
    measure(&mut g, n, t0, Some(parent), avail).with_context(|| format!("{n} clones"))
}

/// The clone figures; adds panels to `chart`.
pub fn run(ctx: &mut Ctx, counter: &Path, tmp: &Path, chart: &mut BarChart) -> Result<Vec<Row>> {
    let store = tmp.join("templates");
    template(ctx, &store, "sleeper", counter, "64M", &SLEEPER)?;
    let n = (ctx.runs * 2).clamp(20, 200);
    let rounds = (ctx.runs / 50).clamp(1, 3);
    let (mut c, mut k) = (Vec::new(), Vec::new());
    let p = Progress::new(
        format!("snapshot: {n} clones vs {n} cold boots, live"),
        rounds,
    );
    for r in 0..rounds {
        c.push(cold(ctx, counter, n, tmp)?);
        k.push(clones(ctx, &store, n, tmp)?);
        p.show(r + 1);
    }
    let med = |v: &[Start], f: fn(&Start) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    let mut rows = vec![Row::vs(
        format!("clones per second, {n} at once (floor = {n} cold boots at once)"),
        med(&k, |s| s.per_s),
        med(&c, |s| s.per_s),
        "1/s",
    )];
    let mut rate = Panel::new(format!("guests started per second, {n} at once"), "1/s");
    rate.groups.push((
        format!("{n} guests"),
        vec![med(&c, |s| s.per_s), med(&k, |s| s.per_s)],
    ));
    let mut mem = Panel::new(format!("monitor memory per live guest, {n} live"), "MiB");
    for (name, f) in [
        ("RSS", (|s: &Start| s.rss_mib) as fn(&Start) -> f64),
        ("PSS", |s| s.pss_mib),
    ] {
        rows.push(Row::vs(
            format!("monitor {name} per live clone, {n} live (floor = cold-booted)"),
            med(&k, f),
            med(&c, f),
            "MiB",
        ));
        mem.groups
            .push((name.to_string(), vec![med(&c, f), med(&k, f)]));
    }
    chart.panels.push(rate);
    chart.panels.push(mem);
    ctx.samples
        .insert("clones_per_s".into(), k.iter().map(|s| s.per_s).collect());
    ctx.samples.insert(
        "clones_cold_per_s".into(),
        c.iter().map(|s| s.per_s).collect(),
    );

    if ctx.runs >= MANY_FROM_RUNS {
        let p = Progress::new(format!("snapshot: {MANY} live clones"), 1);
        let m = clones(ctx, &store, MANY, tmp)?;
        p.show(1);
        rows.extend([
            Row::alone(
                format!("{MANY} live clones: clones per second"),
                m.per_s,
                "1/s",
            ),
            Row::alone(
                format!("{MANY} live clones: PSS per clone monitor"),
                m.pss_mib,
                "MiB",
            ),
            Row::alone(
                format!("{MANY} live clones: PSS of all monitors"),
                m.pss_total_mib,
                "MiB",
            ),
            Row::alone(
                format!("{MANY} live clones: host MemAvailable drop (shared host)"),
                m.host_mib,
                "MiB",
            ),
        ]);
    } else {
        ctx.notes.push(format!(
            "snapshot: the {MANY}-clone run is made from --runs {MANY_FROM_RUNS} up"
        ));
    }
    Ok(rows)
}

/// `duet template create NAME IMAGE --store STORE --mem MEM -- ARGS`.
pub fn template(
    ctx: &Ctx,
    store: &Path,
    name: &str,
    image: &Path,
    mem: &str,
    args: &[&str],
) -> Result<()> {
    run_capture(
        Command::new(&ctx.duet)
            .args(["template", "create", name])
            .arg(image)
            .arg("--store")
            .arg(store)
            .args(["--mem", mem, "--"])
            .args(args),
    )
    .with_context(|| format!("creating template {name}"))?;
    Ok(())
}
