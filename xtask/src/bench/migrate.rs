//! The `migrate` section: live migration over loopback.
//!
//! For each guest size and workload it starts a source guest with a control
//! socket and a destination `duet run --incoming`, migrates with
//! `duet ctl migrate`, and reads the monitor's summary line (total time,
//! downtime by both clocks, bytes, rounds). The floor for the total time is
//! the same number of bytes pushed through a loopback TCP connection in the
//! same run: what the wire alone costs. Downtime is reported beside the
//! project's 5 ms goal. Configurations are interleaved and repeated.
//!
//! `DUET_BENCH_MIGRATE_BASELINE=PATH` also measures another `duet` binary
//! (say, one built from an older commit) in the same run, interleaved with
//! this one, its rows marked `[baseline]`, with a row per configuration
//! comparing the two: before/after figures under the same load.
//! `DUET_BENCH_MIGRATE_BASELINE_IMAGES=DIR` gives that binary its own
//! example images (an older monitor cannot boot images of a newer ABI).

use super::progress::Progress;
use super::stats::median;
use super::{Ctx, Row};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The mark on the baseline binary's rows.
const BASELINE: &str = " [baseline]";

/// The workloads: a name, the example app and its arguments (`MEMHALF` is
/// replaced by half of guest memory in MiB).
const WORKLOADS: [(&str, &str, &[&str]); 3] = [
    ("idle", "counter", &["1000000", "20000"]),
    (
        "1/2 used, 4MiB/s",
        "dirty",
        &["MEMHALF", "4", "600000", "1"],
    ),
    ("dirty 32MiB@128MiB/s", "dirty", &["32", "128", "600000"]),
];

fn mib(mem: &str) -> u64 {
    match mem.strip_suffix('G') {
        Some(g) => g.parse::<u64>().unwrap_or(1) << 10,
        None => mem.trim_end_matches('M').parse().unwrap_or(64),
    }
}

fn wait_line(child: &mut Child, want: &str) -> Result<()> {
    let out = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(out).lines();
    for l in lines.by_ref() {
        if l?.contains(want) {
            // Keep draining so the guest never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return Ok(());
        }
    }
    bail!("the guest ended before printing {want:?}")
}

fn one(
    duet: &Path,
    images: &Path,
    mem: &str,
    app: &str,
    args: &[&str],
    key: &std::path::Path,
    n: u32,
) -> Result<String> {
    let dir = std::env::temp_dir().join(format!("duet-bench-mig-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let sock = dir.join("src.sock");
    let mut src = Command::new(duet)
        .args(["run"])
        .arg(images.join(app))
        .args(["--mem", mem, "--api"])
        .arg(&sock)
        .arg("--")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let ready = match (app, args.get(3)) {
        ("dirty", Some(&"1")) => "dirty tick 1",
        ("dirty", _) => "dirty tick 3",
        _ => "count 3",
    };
    wait_line(&mut src, ready)?;
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.to_string()
    };
    let mut dst = Command::new(duet)
        .args(["run", "--incoming", &addr, "--migration-key-file"])
        .arg(key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let out = Command::new(duet)
        .arg("ctl")
        .arg(&sock)
        .args(["migrate", &addr, "--migration-key-file"])
        .arg(key)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Our own children: the source has ended (or failed); stop the guest
    // that now runs on the destination.
    let deadline = Instant::now() + Duration::from_secs(10);
    while src.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = src.kill();
    let _ = dst.kill();
    let _ = src.wait();
    let _ = dst.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let summary = text
        .lines()
        .find(|l| l.starts_with("migrated to"))
        .map(str::to_string);
    summary.with_context(|| format!("migration failed: {}", String::from_utf8_lossy(&out.stderr)))
}

/// One parsed summary: total ms, downtime ms, MiB sent, rounds.
struct Summary {
    total_ms: f64,
    downtime_ms: f64,
    mib: f64,
    rounds: f64,
}

/// Parses "migrated to ADDR in T ms: downtime D ms (source clock S ms), B MiB, R rounds".
fn parse(line: &str) -> Result<Summary> {
    let num = |after: &str, before: &str| -> Result<f64> {
        let rest = line
            .split_once(after)
            .with_context(|| format!("no {after:?} in {line:?}"))?
            .1;
        let v = rest
            .split_once(before)
            .with_context(|| format!("no {before:?} in {line:?}"))?
            .0;
        v.trim()
            .parse::<f64>()
            .with_context(|| format!("bad number {v:?} in {line:?}"))
    };
    Ok(Summary {
        total_ms: num(" in ", " ms:")?,
        downtime_ms: num("downtime ", " ms")?,
        mib: num("), ", " MiB")?,
        rounds: num(" MiB, ", " round")?,
    })
}

/// Seconds to push `bytes` through a loopback TCP connection (the wire floor).
fn loopback_secs(bytes: u64) -> Result<f64> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let sink = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = l.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(n),
                k => n += k as u64,
            }
        }
    });
    let buf = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut c = std::net::TcpStream::connect(addr)?;
    let mut left = bytes;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        c.write_all(&buf[..k])?;
        left -= k as u64;
    }
    drop(c);
    let got = sink
        .join()
        .map_err(|_| anyhow::anyhow!("loopback sink panicked"))??;
    if got != bytes {
        bail!("loopback sink got {got} of {bytes} bytes");
    }
    Ok(t.elapsed().as_secs_f64())
}

/// The section: total time, downtime, bytes and rounds per configuration.
pub fn run(ctx: &mut Ctx) -> Result<Vec<Row>> {
    if ctx.image("counter", "migrate")?.is_none() || ctx.image("dirty", "migrate")?.is_none() {
        return Ok(Vec::new());
    }
    // The smoke pass (`--runs 2`) migrates one small idle guest once.
    let full = ctx.runs >= 20;
    let reps = (ctx.runs / 50).clamp(1, 3);
    let mems: &[&str] = if full {
        &["64M", "256M", "1G"]
    } else {
        &["64M"]
    };
    let loads = if full {
        &WORKLOADS[..]
    } else {
        &WORKLOADS[..1]
    };
    let key = std::env::temp_dir().join(format!("duet-bench-mig-key-{}", std::process::id()));
    std::fs::write(&key, [0x5a; 32])?;
    let baseline = std::env::var_os("DUET_BENCH_MIGRATE_BASELINE").map(PathBuf::from);
    if let Some(b) = baseline.as_ref().filter(|b| !b.is_file()) {
        bail!(
            "DUET_BENCH_MIGRATE_BASELINE={}: no such file; give a built `duet` binary",
            b.display()
        );
    }
    let baseline_images = std::env::var_os("DUET_BENCH_MIGRATE_BASELINE_IMAGES").map(PathBuf::from);
    if baseline.is_none() && baseline_images.is_some() {
        bail!("DUET_BENCH_MIGRATE_BASELINE_IMAGES is set without DUET_BENCH_MIGRATE_BASELINE: give the baseline `duet` binary too, or unset it");
    }
    let baseline_images = baseline_images.unwrap_or_else(|| ctx.images.clone());
    if let Some(app) = ["counter", "dirty"]
        .into_iter()
        .find(|a| !baseline_images.join(a).is_file())
    {
        bail!(
            "DUET_BENCH_MIGRATE_BASELINE_IMAGES={}: no `{app}` image there; give the baseline's examples directory (unikernel/target/x86_64-unknown-none/release/examples of its build)",
            baseline_images.display()
        );
    }
    let bins: Vec<(&str, PathBuf, PathBuf)> =
        std::iter::once(("", ctx.duet.clone(), ctx.images.clone()))
            .chain(baseline.map(|b| (BASELINE, b, baseline_images)))
            .collect();
    let total = reps * mems.len() * loads.len() * bins.len();
    let p = Progress::new("migrate: loopback migrations", total);
    // Each migration's floor (its bytes over loopback) is measured right
    // after it, so both see the same machine.
    let mut results: Vec<(String, Vec<(Summary, f64)>)> = Vec::new();
    let mut n = 0;
    for _ in 0..reps {
        for mem in mems {
            for ((name, app, args), (tag, bin, images)) in
                loads.iter().flat_map(|l| bins.iter().map(move |b| (l, b)))
            {
                n += 1;
                let q = (mib(mem) / 2).to_string();
                let args: Vec<&str> = args
                    .iter()
                    .map(|a| if *a == "MEMHALF" { q.as_str() } else { a })
                    .collect();
                let line = one(bin, images, mem, app, &args, &key, n as u32);
                let s = line.and_then(|l| parse(&l)).and_then(|s| {
                    let bytes = ((s.mib * 1048576.0) as u64).max(1 << 20);
                    Ok((s, loopback_secs(bytes)? * 1e3))
                });
                let label = format!("{mem} guest, {name}{tag}");
                match s {
                    Ok(s) => match results.iter_mut().find(|(l, _)| *l == label) {
                        Some((_, v)) => v.push(s),
                        None => results.push((label, vec![s])),
                    },
                    Err(e) => ctx.problem("migrate", format!("{label}: {e:#}"))?,
                }
                p.show(n);
            }
        }
    }
    let _ = std::fs::remove_file(&key);
    let total_of =
        |v: &[(Summary, f64)]| median(&v.iter().map(|(s, _)| s.total_ms).collect::<Vec<_>>());
    let mut rows = Vec::new();
    // This duet against the baseline, where both ran.
    for (label, v) in results.iter().filter(|(l, _)| !l.ends_with(BASELINE)) {
        let base = format!("{label}{BASELINE}");
        if let Some((_, b)) = results.iter().find(|(l, _)| *l == base) {
            rows.push(Row::vs(
                format!("migrate {label}: total time, this duet (floor = the baseline binary, interleaved)"),
                total_of(v),
                total_of(b),
                "ms",
            ));
        }
    }
    for (label, v) in results {
        let med = |f: fn(&Summary) -> f64| median(&v.iter().map(|(s, _)| f(s)).collect::<Vec<_>>());
        let mib_sent = med(|s| s.mib);
        let wire_ms = median(&v.iter().map(|(_, w)| *w).collect::<Vec<_>>());
        rows.push(Row::vs(
            format!("migrate {label}: total time (floor = same bytes over loopback, interleaved)"),
            med(|s| s.total_ms),
            wire_ms,
            "ms",
        ));
        rows.push(Row::vs(
            format!("migrate {label}: downtime (floor = 5 ms goal)"),
            med(|s| s.downtime_ms),
            5.0,
            "ms",
        ));
        rows.push(Row::alone(
            format!("migrate {label}: sent"),
            mib_sent,
            "MiB",
        ));
        rows.push(Row::alone(
            format!("migrate {label}: pre-copy rounds"),
            med(|s| s.rounds),
            "",
        ));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_summary_line() {
        let s = parse("migrated to 10.0.0.2:4444 in 316.9 ms: downtime 1.02 ms (source clock 1.13 ms), 48.2 MiB, 2 rounds").unwrap();
        assert_eq!(
            (s.total_ms, s.downtime_ms, s.mib, s.rounds),
            (316.9, 1.02, 48.2, 2.0)
        );
        assert!(parse("migration failed").is_err());
    }
}
