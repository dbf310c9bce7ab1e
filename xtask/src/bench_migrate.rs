//! `cargo xtask bench-migrate`: live-migration figures over loopback.
//!
//! For each guest size and workload it starts a source guest with a control
//! socket and a destination `duet run --incoming`, migrates with
//! `duet ctl migrate`, and prints the monitor's summary line (total time,
//! downtime by both clocks and by the source's alone, bytes, rounds).
//! Runs are interleaved and repeated; compare medians, not single runs.

use crate::build;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
    duet: &std::path::Path,
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
        .arg(build::images_dir().join(app))
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

/// Runs the benchmark `reps` times per configuration, interleaved.
pub fn run(reps: u32) -> Result<()> {
    build::images(&["counter".into(), "dirty".into()])?;
    let duet = build::monitor()?;
    let key = std::env::temp_dir().join(format!("duet-bench-mig-key-{}", std::process::id()));
    std::fs::write(&key, [0x5a; 32])?;
    let mut n = 0;
    for rep in 0..reps {
        for mem in ["64M", "256M", "1G"] {
            for (name, app, args) in WORKLOADS {
                n += 1;
                let q = (mib(mem) / 2).to_string();
                let args: Vec<&str> = args
                    .iter()
                    .map(|a| if *a == "MEMHALF" { q.as_str() } else { a })
                    .collect();
                let line = one(&duet, mem, app, &args, &key, n)?;
                println!("rep {rep} {mem:>4} {name:<22} {line}");
            }
        }
    }
    let _ = std::fs::remove_file(&key);
    Ok(())
}
