//! Hypercalls: the `hcbench` app's ns per null hypercall and per console
//! write (1 and 64 bytes), beside the floor's ns per `out` exit, measured
//! in interleaved rounds (floor, Duet, floor, Duet...).

use super::stats::{bench_value, median, parse_bench, run_capture};
use super::{floor_exits, Ctx, Progress, Row};
use anyhow::Result;
use std::process::Command;

/// (BENCH name printed by hcbench, figure in the report).
const KINDS: &[(&str, &str)] = &[
    ("hypercall_nop_ns", "null hypercall"),
    ("console_write_1_ns", "console write, 1 byte"),
    ("console_write_64_ns", "console write, 64 bytes"),
];

pub fn run(ctx: &mut Ctx) -> Result<Vec<Row>> {
    let Some(app) = ctx.image("hcbench", "hypercall")? else {
        return Ok(Vec::new());
    };
    // Many short rounds, finely interleaved, so a burst of load on the
    // host hits both sides alike: --runs 100 → 20 rounds of 2000 calls.
    let calls = (ctx.runs as u64 * 20).max(100);
    let rounds = (ctx.runs / 5).clamp(1, 20);
    let mut floor = Vec::new();
    let mut duet: Vec<Vec<f64>> = vec![Vec::new(); KINDS.len()];
    let p = Progress::new(format!("hypercall: {calls} calls per kind"), rounds);
    for r in 0..rounds {
        floor.push(floor_exits(&ctx.floor, calls)?);
        let out = run_capture(
            Command::new(&ctx.duet)
                .arg("run")
                .arg(&app)
                .arg("--")
                .arg(calls.to_string()),
        )?;
        let lines = parse_bench(&out);
        for (i, (name, _)) in KINDS.iter().enumerate() {
            duet[i].push(bench_value(&lines, name)?);
        }
        p.show(r + 1);
    }
    let f = median(&floor);
    ctx.set_floor_exit_ns(f);
    ctx.samples.insert("floor_exit_ns".into(), floor);
    let mut rows = Vec::new();
    for ((name, figure), v) in KINDS.iter().zip(duet) {
        rows.push(Row::vs(*figure, median(&v), f, "ns"));
        ctx.samples.insert((*name).into(), v);
    }
    Ok(rows)
}
