//! SVG charts: the boot-time distribution (Duet vs floor), the cost of
//! each kind of hypercall beside the floor's exit, and the bar charts
//! sections describe themselves ([`super::bars`]).

use super::bars::{self, BarChart};
use super::stats::{median, quantile};
use super::Row;
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const DUET: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const FLOOR: RGBColor = RGBColor(0x7f, 0x7f, 0x7f);

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing chart: {e}")
}

/// Draws every chart the results allow into `dir`; returns their paths.
pub fn draw(
    dir: &Path,
    rows: &[(&str, Row)],
    samples: &BTreeMap<String, Vec<f64>>,
    charts: &[BarChart],
) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if let (Some(d), Some(f)) = (samples.get("boot_duet_ms"), samples.get("boot_floor_ms")) {
        if !d.is_empty() && !f.is_empty() {
            let p = dir.join("boot.svg");
            boot_histogram(&p, d, f)?;
            out.push(p);
        }
    }
    let bars: Vec<(String, f64, RGBColor)> = rows
        .iter()
        .filter(|(s, _)| *s == "hypercall")
        .map(|(_, r)| (r.figure.clone(), r.duet / 1e3, DUET))
        .collect();
    let floor = rows
        .iter()
        .find(|(s, _)| *s == "hypercall")
        .and_then(|(_, r)| r.floor);
    if let (false, Some(f)) = (bars.is_empty(), floor) {
        let mut bars = bars;
        bars.insert(0, ("floor: one out exit".into(), f / 1e3, FLOOR));
        let p = dir.join("hypercall.svg");
        cost_bars(&p, &bars)?;
        out.push(p);
    }
    for c in charts {
        let p = dir.join(c.file);
        bars::draw(&p, c).map_err(err)?;
        out.push(p);
    }
    Ok(out)
}

/// Two overlaid histograms of whole-process boot times.
fn boot_histogram(path: &Path, duet: &[f64], floor: &[f64]) -> Result<()> {
    let lo = duet
        .iter()
        .chain(floor)
        .copied()
        .fold(f64::INFINITY, f64::min);
    // Cut the long tail at the slower side's p95 so a few stalls do not
    // squash the picture; slower runs land in the last bin.
    let hi = quantile(duet, 0.95).max(quantile(floor, 0.95)) * 1.05;
    let bins = ((duet.len() + floor.len()) / 4).clamp(5, 40);
    let width = ((hi - lo) / bins as f64).max(1e-3);
    let count = |v: &[f64]| {
        let mut c = vec![0u32; bins];
        for x in v {
            c[(((x - lo) / width) as usize).min(bins - 1)] += 1;
        }
        c
    };
    let (cd, cf) = (count(duet), count(floor));
    let ymax = cd.iter().chain(&cf).copied().max().unwrap_or(1) as f64 * 1.15;

    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Boot, whole process (exec to exit; last bin holds the tail)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(lo..lo + width * bins as f64, 0.0..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("ms")
        .y_desc("runs")
        .draw()
        .map_err(err)?;
    let sides = [
        (&cf, floor, FLOOR, "kvm-floor halt", 0.0),
        (&cd, duet, DUET, "duet run hello", 0.5),
    ];
    for (counts, samples, color, name, half) in sides {
        let med = median(samples);
        chart
            .draw_series(counts.iter().enumerate().map(|(i, &c)| {
                let x0 = lo + width * (i as f64 + half * 0.9 + 0.05);
                Rectangle::new([(x0, 0.0), (x0 + width * 0.45, c as f64)], color.filled())
            }))
            .map_err(err)?
            .label(format!("{name} (median {med:.2} ms)"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        // The median as a thin line over the bars.
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(med - width * 0.02, 0.0), (med + width * 0.02, ymax)],
                BLACK.mix(0.8).filled(),
            )))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{name} median"),
                (
                    med + width * 0.05,
                    ymax * if half > 0.0 { 0.95 } else { 0.88 },
                ),
                ("sans-serif", 13),
            )))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// One bar per kind of call, in µs.
fn cost_bars(path: &Path, bars: &[(String, f64, RGBColor)]) -> Result<()> {
    let ymax = bars.iter().map(|b| b.1).fold(0.0, f64::max) * 1.2;
    let n = bars.len();
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Cost per call (median)", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..n as f64, 0.0..ymax.max(1e-3))
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("µs per call")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, v, c))| {
            Rectangle::new([(i as f64 + 0.15, 0.0), (i as f64 + 0.85, *v)], c.filled())
        }))
        .map_err(err)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (name, v, _))| {
            Text::new(
                format!("{name}: {v:.1} µs"),
                (i as f64 + 0.15, *v + ymax * 0.03),
                ("sans-serif", 14),
            )
        }))
        .map_err(err)?;
    root.present().map_err(err)
}
