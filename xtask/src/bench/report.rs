//! The report: a table for the terminal and a JSON file for keeping.

use super::host::HostInfo;
use super::{Ctx, Row};
use anyhow::{Context, Result};
use serde_json::json;
use std::fmt::Write;
use std::path::{Path, PathBuf};

fn num(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The table: section, figure, Duet, floor, ratio, unit; host facts above,
/// notes below.
pub fn table(host: &HostInfo, rows: &[(&str, Row)], notes: &[String]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "host: {} ({} CPUs), kernel {}, KVM {}",
        host.cpu, host.cpus, host.kernel, host.kvm
    );
    let _ = writeln!(
        t,
        "load average at start: {:.2} {:.2} {:.2}{}",
        host.load[0],
        host.load[1],
        host.load[2],
        if host.load_high() {
            "  (HIGH: figures are noisy)"
        } else {
            ""
        }
    );
    let fw = rows
        .iter()
        .map(|(_, r)| r.figure.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let _ = writeln!(
        t,
        "{:<10} {:<fw$} {:>10} {:>10} {:>7}  unit",
        "section", "figure", "Duet", "floor", "ratio"
    );
    for (s, r) in rows {
        let _ = writeln!(
            t,
            "{:<10} {:<fw$} {:>10} {:>10} {:>7}  {}",
            s,
            r.figure,
            num(r.duet),
            r.floor.map_or("-".into(), num),
            r.ratio().map_or("-".into(), |x| format!("{x:.2}x")),
            r.unit
        );
    }
    for n in notes {
        let _ = writeln!(t, "note: {n}");
    }
    t
}

/// Writes the results, host facts, raw samples and chart paths as JSON.
pub fn write_json(
    path: &Path,
    host: &HostInfo,
    runs: usize,
    rows: &[(&str, Row)],
    ctx: &Ctx,
    charts: &[PathBuf],
) -> Result<()> {
    let finite = |v: f64| v.is_finite().then_some(v);
    let rows: Vec<_> = rows
        .iter()
        .map(|(s, r)| {
            json!({
                "section": s,
                "figure": r.figure,
                "duet": finite(r.duet),
                "floor": r.floor.and_then(finite),
                "ratio": r.ratio().and_then(finite),
                "unit": r.unit,
            })
        })
        .collect();
    let when = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let doc = json!({
        "timestamp_unix": when,
        "runs": runs,
        "host": {
            "cpu_model": host.cpu,
            "cpus": host.cpus,
            "kernel": host.kernel,
            "kvm": host.kvm,
            "load_average_at_start": host.load.iter().map(|&v| finite(v)).collect::<Vec<_>>(),
            "load_high": host.load_high(),
        },
        "rows": rows,
        "samples": ctx.samples,
        "notes": ctx.notes,
        "charts": charts.iter().map(|c| c.display().to_string()).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&doc).context("encoding results")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}
