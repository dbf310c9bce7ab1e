//! Block benchmark: the guest's `blkbench` beside the host's own
//! `pread`/`pwrite` on the same file with the same request sizes, run
//! interleaved so both see the same machine noise.
//!
//! Entry points for the bench harness: [`host_metrics`] (the host floor),
//! [`guest_metrics`] (one `blkbench` boot) and [`compare`] (both,
//! interleaved, best of each). `cargo xtask bench-block` prints [`compare`].

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Request sizes of the sequential tests (must match `blkbench`).
pub const SIZES: [(usize, &str); 5] = [
    (4 << 10, "4k"),
    (16 << 10, "16k"),
    (64 << 10, "64k"),
    (256 << 10, "256k"),
    (1 << 20, "1m"),
];
/// Requests per latency test (as in `blkbench`).
pub const LAT_N: u64 = 2000;
/// Most requests the guest batches in one exit (the ABI's bound).
const BATCH: usize = duet_abi::block::BLK_BATCH_MAX as usize;

/// One measurement: name, value, unit.
pub type Metric = (String, u64, &'static str);

/// Creates (or overwrites) `path` with `size` bytes of non-zero data, so
/// reads hit real pages rather than holes.
pub fn prepare_file(path: &Path, size: u64) -> Result<()> {
    let f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 31 + 7) as u8).collect();
    let mut off = 0;
    while off < size {
        let n = chunk.len().min((size - off) as usize);
        f.write_all_at(&chunk[..n], off)?;
        off += n as u64;
    }
    f.sync_all()?;
    Ok(())
}

/// Mean ns per `pread`/`pwrite` of `size` bytes at successive offsets.
pub fn host_latency(f: &File, capacity: u64, size: usize, write: bool) -> Result<u64> {
    let mut buf = vec![0x5au8; size];
    let span = capacity / size as u64;
    let t = Instant::now();
    for i in 0..LAT_N {
        let off = (i % span) * size as u64;
        if write {
            f.write_all_at(&buf, off)?;
        } else {
            f.read_exact_at(&mut buf, off)?;
        }
    }
    Ok(t.elapsed().as_nanos() as u64 / LAT_N)
}

/// MB/s moving `span` bytes sequentially with `size`-byte requests, cycling
/// through a buffer as large as the guest's batch (same cache footprint).
pub fn host_throughput(f: &File, span: u64, size: usize, write: bool) -> Result<u64> {
    let per = BATCH.min(span as usize / size).max(1);
    let mut buf = vec![0xa5u8; size * per];
    let t = Instant::now();
    let mut off = 0u64;
    let mut i = 0;
    while off + size as u64 <= span {
        let b = &mut buf[(i % per) * size..][..size];
        if write {
            f.write_all_at(b, off)?;
        } else {
            f.read_exact_at(b, off)?;
        }
        off += size as u64;
        i += 1;
    }
    Ok(off * 1000 / (t.elapsed().as_nanos() as u64).max(1))
}

/// The host floor: every metric `blkbench` reports, measured with plain
/// `pread`/`pwrite` on `path` (named `host_lat_*` and `host_seq_*`).
pub fn host_metrics(path: &Path, span: u64) -> Result<Vec<Metric>> {
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    let capacity = f.metadata()?.len();
    let span = span.min(capacity);
    let mut out = Vec::new();
    for (size, tag) in [(512usize, "512"), (4096, "4k")] {
        for (write, op) in [(false, "read"), (true, "write")] {
            let v = host_latency(&f, capacity, size, write)?;
            out.push((format!("host_lat_{op}_{tag}"), v, "ns"));
        }
    }
    for (size, tag) in SIZES {
        for (write, op) in [(false, "read"), (true, "write")] {
            let v = host_throughput(&f, span, size, write)?;
            out.push((format!("host_seq_{op}_{tag}"), v, "MB/s"));
        }
    }
    Ok(out)
}

/// Boots `blkbench` once on `path` and parses its `BENCH` lines.
pub fn guest_metrics(duet: &Path, image: &Path, path: &Path, span: u64) -> Result<Vec<Metric>> {
    let out = Command::new(duet)
        .arg("run")
        .arg(image)
        .args(["--mem", "256M", "--disk"])
        .arg(path)
        .args(["--", &(span >> 20).to_string()])
        .output()
        .context("run blkbench")?;
    if !out.status.success() {
        bail!(
            "blkbench failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = Vec::new();
    for l in text.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if let ["BENCH", name, value, unit] = w[..] {
            let unit = if unit == "ns" { "ns" } else { "MB/s" };
            v.push((name.to_string(), value.parse()?, unit));
        }
    }
    Ok(v)
}

/// Runs host and guest `rounds` times, interleaved, keeping the best value
/// of each metric (lowest latency, highest throughput). Returns rows of
/// `(guest metric, guest value, host value, unit)`.
pub fn compare(
    duet: &Path,
    image: &Path,
    path: &Path,
    span: u64,
    rounds: u32,
) -> Result<Vec<(String, u64, u64, &'static str)>> {
    let mut best: BTreeMap<String, (u64, &'static str)> = BTreeMap::new();
    let mut keep = |ms: Vec<Metric>| {
        for (name, v, unit) in ms {
            let e = best.entry(name).or_insert((v, unit));
            e.0 = if unit == "ns" { e.0.min(v) } else { e.0.max(v) };
        }
    };
    for _ in 0..rounds {
        keep(host_metrics(path, span)?);
        keep(guest_metrics(duet, image, path, span)?);
    }
    let mut rows = Vec::new();
    for (name, &(v, unit)) in best.iter().filter(|(n, _)| !n.starts_with("host_")) {
        // seq_read_batch_64k -> host_seq_read_64k
        let host_name = format!("host_{}", name.replace("_single", "").replace("_batch", ""));
        let host = best.get(&host_name).map_or(0, |h| h.0);
        rows.push((name.clone(), v, host, unit));
    }
    Ok(rows)
}
