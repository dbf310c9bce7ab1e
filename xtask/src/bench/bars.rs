//! Grouped bar charts that sections describe ([`BarChart`], pushed to
//! `Ctx::charts`) and the report draws: one panel per quantity, one group
//! of bars per case, one colour per series (e.g. host, batched, single).

use plotters::prelude::*;
use std::path::Path;

/// Series colours, in order: the host's floor first, in grey.
const COLOURS: [RGBColor; 4] = [
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
];

/// A chart of side-by-side panels, each a set of grouped bars.
#[derive(Debug, Clone)]
pub struct BarChart {
    /// File name in the results directory (e.g. `block.svg`).
    pub file: &'static str,
    /// Caption above the panels.
    pub title: String,
    /// Name of each series: one bar per series in every group.
    pub series: Vec<&'static str>,
    /// The panels, left to right.
    pub panels: Vec<Panel>,
}

/// One panel: a quantity with its unit, and its groups of bars.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Caption of the panel.
    pub title: String,
    /// Unit of the y axis.
    pub unit: &'static str,
    /// (group label, one value per series).
    pub groups: Vec<(String, Vec<f64>)>,
}

impl BarChart {
    /// An empty chart.
    pub fn new(file: &'static str, title: impl Into<String>) -> BarChart {
        BarChart {
            file,
            title: title.into(),
            series: Vec::new(),
            panels: Vec::new(),
        }
    }
}

impl Panel {
    /// An empty panel.
    pub fn new(title: impl Into<String>, unit: &'static str) -> Panel {
        Panel {
            title: title.into(),
            unit,
            groups: Vec::new(),
        }
    }
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Draws `c` into `path` as SVG.
pub fn draw(path: &Path, c: &BarChart) -> DrawResult {
    let width = 420 * c.panels.len().max(1) as u32;
    let root = SVGBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&c.title, ("sans-serif", 22))?;
    let areas = root.split_evenly((1, c.panels.len().max(1)));
    for (area, panel) in areas.iter().zip(&c.panels) {
        draw_panel(area, panel, &c.series)?;
    }
    root.present()?;
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    p: &Panel,
    series: &[&str],
) -> DrawResult {
    let n = p.groups.len().max(1);
    let ymax = p
        .groups
        .iter()
        .flat_map(|g| g.1.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        * 1.4;
    let names: Vec<String> = p.groups.iter().map(|g| g.0.clone()).collect();
    // Groups are centred on integers so the axis ticks fall under them.
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            names.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..n as f64 - 0.5, 0.0..ymax.max(1e-3))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&label)
        .y_desc(p.unit)
        .draw()?;
    let k = series.len().max(1) as f64;
    let w = 0.8 / k;
    for (j, name) in series.iter().enumerate() {
        let colour = COLOURS[j % COLOURS.len()];
        chart
            .draw_series(p.groups.iter().enumerate().map(|(i, g)| {
                let x0 = i as f64 - 0.4 + w * j as f64;
                let v = g.1.get(j).copied().filter(|v| v.is_finite()).unwrap_or(0.0);
                Rectangle::new([(x0, 0.0), (x0 + w * 0.9, v)], colour.filled())
            }))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    Ok(())
}
