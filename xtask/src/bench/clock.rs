//! Clock: the `timebench` app's ns per `Instant::now()` beside raw `rdtsc`,
//! and its `poll(0)` beside the floor's exit. Any other `BENCH` line the app
//! prints is reported too, without a floor.

use super::stats::{median, parse_bench, run_capture};
use super::{Ctx, Progress, Row};
use anyhow::Result;
use std::collections::BTreeMap;
use std::process::Command;

pub fn run(ctx: &mut Ctx) -> Result<Vec<Row>> {
    let Some(app) = ctx.image("timebench", "clock")? else {
        return Ok(Vec::new());
    };
    let rounds = (ctx.runs / 5).clamp(1, 20);
    let mut seen: Vec<(String, &'static str)> = Vec::new();
    let mut vals: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let p = Progress::new("clock: timebench", rounds);
    for r in 0..rounds {
        let out = run_capture(Command::new(&ctx.duet).arg("run").arg(&app))?;
        for l in parse_bench(&out) {
            if !seen.iter().any(|(n, _)| *n == l.name) {
                let unit = if l.name.ends_with("_ns") { "ns" } else { "" };
                seen.push((l.name.clone(), unit));
            }
            vals.entry(l.name).or_default().push(l.value);
        }
        p.show(r + 1);
    }
    let get = |n: &str| vals.get(n).map(|v| median(v));
    let mut rows = Vec::new();
    if let (Some(c), Some(t)) = (get("clock_read_ns"), get("rdtsc_ns")) {
        rows.push(Row::vs("clock read (Instant::now) vs rdtsc", c, t, "ns"));
    }
    if let Some(p0) = get("poll0_ns") {
        let f = ctx.floor_exit_ns((ctx.runs as u64 * 20).max(100))?;
        rows.push(Row::vs("poll(0) vs floor exit", p0, f, "ns"));
    }
    for (name, unit) in seen {
        if !["clock_read_ns", "rdtsc_ns", "poll0_ns"].contains(&name.as_str()) {
            rows.push(Row::alone(
                format!("timebench {name}"),
                median(&vals[&name]),
                unit,
            ));
        }
    }
    if rows.is_empty() {
        ctx.problem("clock", "timebench printed no BENCH lines")?;
    }
    Ok(rows)
}
