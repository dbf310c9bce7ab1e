//! Small helpers: order statistics, timing one process, and the `BENCH`
//! lines bench apps print.

use anyhow::{bail, Context, Result};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The `q`-quantile (0..=1) of `v` by linear interpolation; NaN when empty.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

/// The median of `v`.
pub fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// Runs `cmd` to completion with its output discarded; returns its
/// whole-process wall time (spawn to reaped) in ms. Fails unless it exits 0.
pub fn time_process(cmd: &mut Command) -> Result<f64> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let t = Instant::now();
    let st = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !st.success() {
        bail!("{cmd:?} failed with {st} (run it by hand to see why)");
    }
    Ok(ms)
}

/// Runs `cmd` and returns its stdout; fails (with its stderr) unless it
/// exits 0.
pub fn run_capture(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One `BENCH <name> <value> [unit]` line.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchLine {
    /// The figure's name.
    pub name: String,
    /// Its value.
    pub value: f64,
    /// Its unit, if given.
    pub unit: Option<String>,
}

/// Every well-formed `BENCH` line in `text`; other lines are ignored.
pub fn parse_bench(text: &str) -> Vec<BenchLine> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            if w.next()? != "BENCH" {
                return None;
            }
            let name = w.next()?.to_string();
            let value = w.next()?.parse().ok()?;
            let unit = w.next().map(str::to_string);
            Some(BenchLine { name, value, unit })
        })
        .collect()
}

/// The value of the `BENCH` line called `name`.
pub fn bench_value(lines: &[BenchLine], name: &str) -> Result<f64> {
    lines
        .iter()
        .find(|l| l.name == name)
        .map(|l| l.value)
        .with_context(|| format!("no `BENCH {name} <value>` line in the output"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(median(&v), 3.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 5.0);
        assert_eq!(quantile(&v, 0.1), 1.4);
        assert_eq!(median(&[1.0, 2.0]), 1.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn bench_lines() {
        let text = "hello\n\n   \nBENCH a_ns 12.5 ns\nBENCH b 3\nBENCH bad x\nBENCHx 1 2\nBENCH\n";
        let l = parse_bench(text);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].name, "a_ns");
        assert_eq!(l[0].value, 12.5);
        assert_eq!(l[0].unit.as_deref(), Some("ns"));
        assert_eq!(l[1].unit, None);
        assert_eq!(bench_value(&l, "b").unwrap(), 3.0);
        assert!(bench_value(&l, "c").is_err());
    }
}
