//! Frame pointers: what `-C force-frame-pointers=yes` (the monitor's
//! backtraces need it) costs a guest. `hello`'s whole-process boot and
//! `hcbench`'s hypercalls, built with frame pointers (as always) and
//! without (a separate build), interleaved in one run. The "floor" column
//! here is the build without frame pointers: the ratio is the cost.
//!
//! Not in the smoke pass: it builds a second set of images.

use super::stats::{bench_value, median, parse_bench, run_capture, time_process};
use super::{Ctx, Progress, Row};
use crate::build;
use anyhow::Result;
use std::path::Path;
use std::process::Command;

/// hcbench's figures compared (its BENCH names).
const CALLS: &[(&str, &str)] = &[
    ("hypercall_nop_ns", "null hypercall"),
    ("console_write_64_ns", "console write, 64 bytes"),
];

pub fn run(ctx: &mut Ctx) -> Result<Vec<Row>> {
    let (Some(hello), Some(hc)) = (
        ctx.image("hello", "framepointers")?,
        ctx.image("hcbench", "framepointers")?,
    ) else {
        return Ok(Vec::new());
    };
    let bare = build::images_without_frame_pointers(&["hello", "hcbench"])?;
    let (hello_bare, hc_bare) = (bare.join("hello"), bare.join("hcbench"));
    let boot =
        |img: &Path| -> Result<f64> { time_process(Command::new(&ctx.duet).arg("run").arg(img)) };
    for _ in 0..3 {
        boot(&hello)?;
        boot(&hello_bare)?;
    }
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let p = Progress::new("framepointers: hello boot, with vs without", ctx.runs);
    for i in 0..ctx.runs {
        with.push(boot(&hello)?);
        without.push(boot(&hello_bare)?);
        p.show(i + 1);
    }
    let mut rows = vec![Row::vs(
        "hello boot, whole process, median: with vs without frame pointers",
        median(&with),
        median(&without),
        "ms",
    )];

    let calls = (ctx.runs as u64 * 20).max(100);
    let rounds = (ctx.runs / 5).clamp(1, 20);
    let mut hc_with = vec![Vec::new(); CALLS.len()];
    let mut hc_without = vec![Vec::new(); CALLS.len()];
    let p = Progress::new(
        format!("framepointers: {calls} hypercalls, with vs without"),
        rounds,
    );
    for r in 0..rounds {
        for (img, into) in [(&hc, &mut hc_with), (&hc_bare, &mut hc_without)] {
            let out = run_capture(
                Command::new(&ctx.duet)
                    .arg("run")
                    .arg(img)
                    .arg("--")
                    .arg(calls.to_string()),
            )?;
            let lines = parse_bench(&out);
            for (i, (name, _)) in CALLS.iter().enumerate() {
                into[i].push(bench_value(&lines, name)?);
            }
        }
        p.show(r + 1);
    }
    for (i, (_, figure)) in CALLS.iter().enumerate() {
        rows.push(Row::vs(
            format!("{figure}: with vs without frame pointers"),
            median(&hc_with[i]),
            median(&hc_without[i]),
            "ns",
        ));
    }
    Ok(rows)
}
