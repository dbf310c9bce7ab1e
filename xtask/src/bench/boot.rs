//! Boot: whole-process time of `duet run hello` (exec → exit) beside
//! `kvm-floor halt`, interleaved A B A B, and the in-process phase
//! breakdown from `duet run --trace-boot`.

use super::stats::{median, quantile, time_process};
use super::{Ctx, Progress, Row};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::process::Command;

/// Warm-up runs per side (page cache, KVM module state) before timing.
const WARMUP: usize = 3;
/// Most `--trace-boot` runs for the phase breakdown.
const TRACE_RUNS: usize = 20;

pub fn run(ctx: &mut Ctx) -> Result<Vec<Row>> {
    let Some(hello) = ctx.image("hello", "boot")? else {
        return Ok(Vec::new());
    };
    let duet = || {
        let mut c = Command::new(&ctx.duet);
        c.arg("run").arg(&hello);
        c
    };
    let floor = || {
        let mut c = Command::new(&ctx.floor);
        c.arg("halt");
        c
    };

    for _ in 0..WARMUP.min(ctx.runs) {
        time_process(&mut floor())?;
        time_process(&mut duet())?;
    }
    let (mut d, mut f) = (Vec::new(), Vec::new());
    let p = Progress::new("boot: duet run hello vs kvm-floor halt", ctx.runs);
    for i in 0..ctx.runs {
        f.push(time_process(&mut floor())?);
        d.push(time_process(&mut duet())?);
        p.show(i + 1);
    }

    if ctx.runs < 50 {
        ctx.notes.push(format!(
            "boot: only {} runs per side; use --runs 50 or more before trusting p10/p90",
            ctx.runs
        ));
    }
    let mut rows = Vec::new();
    for (name, q) in [("median", 0.5), ("p10", 0.1), ("p90", 0.9)] {
        rows.push(Row::vs(
            format!("hello boot, whole process, {name}"),
            quantile(&d, q),
            quantile(&f, q),
            "ms",
        ));
    }
    ctx.samples.insert("boot_duet_ms".into(), d);
    ctx.samples.insert("boot_floor_ms".into(), f);
    rows.extend(phases(ctx, &hello)?);
    Ok(rows)
}

/// Median length of each `--trace-boot` phase over a few runs.
fn phases(ctx: &Ctx, hello: &std::path::Path) -> Result<Vec<Row>> {
    let n = ctx.runs.min(TRACE_RUNS);
    let mut by_phase: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let p = Progress::new("boot: --trace-boot phases", n);
    for i in 0..n {
        let mut c = Command::new(&ctx.duet);
        c.arg("run").arg("--trace-boot").arg(hello);
        let out = c
            .stdin(std::process::Stdio::null())
            .output()
            .context("running duet --trace-boot")?;
        let text = String::from_utf8_lossy(&out.stderr);
        for (name, len) in parse_trace(&text) {
            if !order.contains(&name) {
                order.push(name.clone());
            }
            by_phase.entry(name).or_default().push(len);
        }
        p.show(i + 1);
    }
    Ok(order
        .into_iter()
        .map(|name| {
            let v = median(&by_phase[&name]);
            Row::alone(format!("boot phase: {name}"), v, "ms")
        })
        .collect())
}

/// Parses the `--trace-boot` lines `  NAME  SINCE ms  (+LEN ms)` into
/// (name, phase length in ms).
fn parse_trace(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|l| {
            let (head, tail) = l.split_once("(+")?;
            let len: f64 = tail
                .trim_end_matches([')', ' '])
                .trim_end_matches("ms")
                .trim()
                .parse()
                .ok()?;
            let head = head.trim().strip_suffix("ms")?.trim_end();
            let cut = head.rfind(' ')?;
            head[cut..].trim().parse::<f64>().ok()?;
            Some((head[..cut].trim().to_string(), len))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn trace_lines() {
        let t = "duet: boot trace (ms since monitor start, phase length)\n  \
                 read + validate image        0.276 ms  (+0.276 ms)\n  \
                 guest exit                   2.185 ms  (+0.145 ms)\n";
        let p = super::parse_trace(t);
        assert_eq!(
            p,
            vec![
                ("read + validate image".to_string(), 0.276),
                ("guest exit".to_string(), 0.145)
            ]
        );
    }
}
