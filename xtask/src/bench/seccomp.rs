//! seccomp: what the monitor's system-call filters (`--seccomp on`, the
//! default) cost. `hello`'s whole-process boot (one filter attached just
//! before the first `KVM_RUN`) and `hcbench`'s null hypercall (every exit's
//! `KVM_RUN` is an `ioctl` the filter checks by argument), with the filters
//! on and off, interleaved in one run. The "floor" column here is
//! `--seccomp off`: the ratio is the cost.

use super::stats::{bench_value, median, parse_bench, run_capture, time_process};
use super::{Ctx, Progress, Row};
use anyhow::Result;
use std::path::Path;
use std::process::Command;

/// hcbench's figures compared (its BENCH names).
const CALLS: &[(&str, &str)] = &[
    ("hypercall_nop_ns", "null hypercall"),
    ("console_write_64_ns", "console write, 64 bytes"),
];

const SIDES: [&str; 2] = ["on", "off"];

pub fn run(ctx: &mut Ctx) -> Result<Vec<Row>> {
    let (Some(hello), Some(hc)) = (
        ctx.image("hello", "seccomp")?,
        ctx.image("hcbench", "seccomp")?,
    ) else {
        return Ok(Vec::new());
    };
    let duet = ctx.duet.clone();
    let boot = |side: &str| -> Result<f64> {
        time_process(
            Command::new(&duet)
                .arg("run")
                .arg(&hello)
                .args(["--seccomp", side]),
        )
    };
    for _ in 0..3 {
        SIDES.iter().try_for_each(|s| boot(s).map(drop))?;
    }
    let mut boots = [Vec::new(), Vec::new()];
    let p = Progress::new("seccomp: hello boot, on vs off", ctx.runs);
    for i in 0..ctx.runs {
        for (side, into) in SIDES.iter().zip(boots.iter_mut()) {
            into.push(boot(side)?);
        }
        p.show(i + 1);
    }
    ctx.samples
        .insert("seccomp_boot_on_ms".into(), boots[0].clone());
    ctx.samples
        .insert("seccomp_boot_off_ms".into(), boots[1].clone());
    let mut rows = vec![Row::vs(
        "hello boot, whole process, median: --seccomp on vs off",
        median(&boots[0]),
        median(&boots[1]),
        "ms",
    )];

    let calls = (ctx.runs as u64 * 20).max(100);
    let rounds = (ctx.runs / 5).clamp(1, 20);
    let mut hcs = [vec![Vec::new(); CALLS.len()], vec![Vec::new(); CALLS.len()]];
    let p = Progress::new(format!("seccomp: {calls} hypercalls, on vs off"), rounds);
    for r in 0..rounds {
        for (side, into) in SIDES.iter().zip(hcs.iter_mut()) {
            measure(&duet, &hc, side, calls, into)?;
        }
        p.show(r + 1);
    }
    for (i, (_, figure)) in CALLS.iter().enumerate() {
        rows.push(Row::vs(
            format!("{figure}: --seccomp on vs off"),
            median(&hcs[0][i]),
            median(&hcs[1][i]),
            "ns",
        ));
    }
    Ok(rows)
}

/// One `hcbench` run with `--seccomp side`; its figures into `into`.
fn measure(duet: &Path, hc: &Path, side: &str, calls: u64, into: &mut [Vec<f64>]) -> Result<()> {
    let out = run_capture(
        Command::new(duet)
            .arg("run")
            .arg(hc)
            .args(["--seccomp", side, "--"])
            .arg(calls.to_string()),
    )?;
    let lines = parse_bench(&out);
    for (i, (name, _)) in CALLS.iter().enumerate() {
        into[i].push(bench_value(&lines, name)?);
    }
    Ok(())
}
