//! Block: the guest's `blkbench` (per-request latency, sequential
//! throughput with single requests and with batches) beside the host's own
//! `pread`/`pwrite` on the same file with the same request sizes, in
//! interleaved rounds (host, guest, host, guest...) so both see the same
//! machine noise. Figures are medians over the rounds.

use super::bars::{BarChart, Panel};
use super::stats::{median, parse_bench, run_capture};
use super::{Ctx, Progress, Row};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Request sizes of the sequential tests (must match `blkbench`), with
/// their tag in `BENCH` names and their label in the report.
pub const SIZES: [(usize, &str, &str); 5] = [
    (4 << 10, "4k", "4 KiB"),
    (16 << 10, "16k", "16 KiB"),
    (64 << 10, "64k", "64 KiB"),
    (256 << 10, "256k", "256 KiB"),
    (1 << 20, "1m", "1 MiB"),
];
/// Request sizes of the latency tests (as in `blkbench`).
const LAT_SIZES: [(usize, &str, &str); 2] = [(512, "512", "512 B"), (4096, "4k", "4 KiB")];
/// Requests per latency test (as in `blkbench`).
const LAT_N: u64 = 2000;
/// Most requests the guest batches in one exit (the ABI's bound).
const BATCH: usize = duet_abi::block::BLK_BATCH_MAX as usize;
/// Largest span of the file the sequential tests cover, in MiB.
const MAX_MIB: u64 = 32;
/// Most interleaved rounds.
const MAX_ROUNDS: usize = 5;

/// The test file, deleted when dropped (also when a round fails).
struct TestFile(PathBuf);

impl Drop for TestFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Creates (or overwrites) `path` with `size` bytes of non-zero data, so
/// reads hit real pages rather than holes.
fn prepare_file(path: &Path, size: u64) -> Result<TestFile> {
    let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let file = TestFile(path.to_path_buf());
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 31 + 7) as u8).collect();
    let mut off = 0;
    while off < size {
        let n = chunk.len().min((size - off) as usize);
        f.write_all_at(&chunk[..n], off)
            .with_context(|| format!("writing {}", path.display()))?;
        off += n as u64;
    }
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(file)
}

/// Mean ns per `pread`/`pwrite` of `size` bytes at successive offsets.
fn host_latency(f: &File, capacity: u64, size: usize, write: bool) -> Result<f64> {
    let mut buf = vec![0x5au8; size];
    let span = (capacity / size as u64).max(1);
    let t = Instant::now();
    for i in 0..LAT_N {
        let off = (i % span) * size as u64;
        if write {
            f.write_all_at(&buf, off)?;
        } else {
            f.read_exact_at(&mut buf, off)?;
        }
    }
    Ok(t.elapsed().as_nanos() as f64 / LAT_N as f64)
}

/// MB/s moving `span` bytes sequentially with `size`-byte requests, cycling
/// through a buffer as large as the guest's batch (same cache footprint).
fn host_throughput(f: &File, span: u64, size: usize, write: bool) -> Result<f64> {
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
    Ok(off as f64 * 1e3 / (t.elapsed().as_nanos() as f64).max(1.0))
}

/// Mean ns per request of 4 KiB reads 32 at a time: one `preadv` of 32
/// buffers, as the guest's batch asks for (the same sizes and count per
/// call).
fn host_qd32(f: &File, capacity: u64) -> Result<f64> {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; 32 * 4096];
    let slots = (capacity / (32 * 4096)).max(1);
    let iov: Vec<libc::iovec> = buf
        .chunks_mut(4096)
        .map(|c| libc::iovec {
            iov_base: c.as_mut_ptr().cast(),
            iov_len: c.len(),
        })
        .collect();
    let rounds = LAT_N / 32;
    let t = Instant::now();
    for i in 0..rounds {
        let off = (i % slots) * 32 * 4096;
        // SAFETY: the iovecs cover `buf`, alive and unaliased during the call.
        let n = unsafe { libc::preadv(f.as_raw_fd(), iov.as_ptr(), 32, off as i64) };
        anyhow::ensure!(n == 32 * 4096, "short preadv: {n}");
    }
    Ok(t.elapsed().as_nanos() as f64 / (rounds * 32) as f64)
}

/// The host floor: what `blkbench` measures, with plain `pread`/`pwrite`
/// on `path`, named like its lines without the mode (`lat_read_512`,
/// `seq_write_64k`).
fn host_metrics(path: &Path) -> Result<Vec<(String, f64)>> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let span = f.metadata()?.len();
    let mut out = vec![("qd32_read_4k".to_string(), host_qd32(&f, span)?)];
    for (size, tag, _) in LAT_SIZES {
        for (write, op) in [(false, "read"), (true, "write")] {
            let v = host_latency(&f, span, size, write)
                .with_context(|| format!("host {op} latency, {size} bytes"))?;
            out.push((format!("lat_{op}_{tag}"), v));
        }
    }
    for (size, tag, _) in SIZES {
        for (write, op) in [(false, "read"), (true, "write")] {
            let v = host_throughput(&f, span, size, write)
                .with_context(|| format!("host sequential {op}, {size}-byte requests"))?;
            out.push((format!("seq_{op}_{tag}"), v));
        }
    }
    Ok(out)
}

/// The guest's transports as measured: name, `--disk` suffix, doorbell.
const MODES: [(&str, &str, &str); 3] = [
    ("hypercall", ",transport=hypercall", "ioeventfd"),
    ("virtio", ",transport=virtio", "ioeventfd"),
    ("virtio_exitbell", ",transport=virtio", "exit"),
];

/// CPU seconds (user + system) of this process's waited-for children.
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Boots `blkbench` once on `path` (covering `mib` MiB) with the disk on
/// `mode` and returns its `BENCH` lines, plus `cpu_s` and `wall_s` of the
/// whole run (monitor and guest: the vCPU's guest time counts as the
/// monitor's).
fn guest_metrics(
    ctx: &Ctx,
    image: &Path,
    path: &Path,
    mib: u64,
    (suffix, bell): (&str, &str),
) -> Result<Vec<(String, f64)>> {
    let cpu0 = children_cpu();
    let t = Instant::now();
    let mut cmd = Command::new(&ctx.duet);
    cmd.arg("run").arg(image).env("DUET_VIRTIO_DOORBELL", bell);
    // The guest's own spin budget, when a measurement varies it.
    if let Ok(us) = std::env::var("VIRTIO_SPIN_US") {
        cmd.args(["--env", &format!("VIRTIO_SPIN_US={us}")]);
    }
    let out = run_capture(
        cmd.args(["--mem", "256M", "--disk"])
            .arg(format!("{}{suffix}", path.display()))
            .args(["--", &mib.to_string()]),
    )?;
    let wall = t.elapsed().as_secs_f64();
    let mut v: Vec<(String, f64)> = parse_bench(&out)
        .into_iter()
        .map(|l| (l.name, l.value))
        .collect();
    v.push(("cpu_s".into(), children_cpu() - cpu0));
    v.push(("wall_s".into(), wall));
    Ok(v)
}

/// Samples by series: `host_<name>` and `guest_<name>`, one per round.
type Series = BTreeMap<String, Vec<f64>>;

/// The median of series `key`, or an error naming what is missing.
fn med(s: &Series, key: &str) -> Result<f64> {
    s.get(key)
        .map(|v| median(v))
        .with_context(|| format!("block: no `{key}` figure (blkbench and the harness disagree)"))
}

/// The section: `--runs 100` covers 32 MiB in 5 rounds; `--runs 2`, 1 MiB
/// in one round (the latency tests always make 2000 requests per kind).
pub fn run(ctx: &mut Ctx) -> Result<Vec<Row>> {
    let Some(image) = ctx.image("blkbench", "block")? else {
        return Ok(Vec::new());
    };
    let mib = (ctx.runs as u64 * MAX_MIB / 100).clamp(1, MAX_MIB);
    let rounds = (ctx.runs / 20).clamp(1, MAX_ROUNDS);
    let path = ctx.out_dir.join("blkbench.img");
    let _file = prepare_file(&path, mib << 20)?;
    let mut s = Series::new();
    let p = Progress::new(
        format!("block: blkbench vs host pread/pwrite on {mib} MiB"),
        rounds,
    );
    for r in 0..rounds {
        for (n, v) in host_metrics(&path)? {
            s.entry(format!("host_{n}")).or_default().push(v);
        }
        for (mode, suffix, bell) in MODES {
            for (n, v) in guest_metrics(ctx, &image, &path, mib, (suffix, bell))? {
                s.entry(format!("{mode}_{n}")).or_default().push(v);
            }
        }
        p.show(r + 1);
    }

    let mut rows = Vec::new();
    let mut lat = vec![(
        "qd32_read_4k".to_string(),
        "read 4 KiB, queue depth 32 (floor = preadv of 32)".to_string(),
    )];
    for (_, tag, label) in LAT_SIZES {
        for op in ["read", "write"] {
            lat.push((
                format!("lat_{op}_{tag}"),
                format!("{op} {label}, queue depth 1 (floor = p{op})"),
            ));
        }
    }
    for (n, label) in &lat {
        let host = med(&s, &format!("host_{n}"))?;
        for (mode, _, _) in MODES {
            rows.push(Row::vs(
                format!("{label}, {mode}"),
                med(&s, &format!("{mode}_{n}"))?,
                host,
                "ns",
            ));
        }
    }
    for n in ["lat_read_4k_exits_milli", "qd32_exits_milli"] {
        for (mode, _, _) in MODES {
            rows.push(Row::alone(
                format!("VM exits per 1000 requests ({n}), {mode}"),
                med(&s, &format!("{mode}_{n}"))?,
                "",
            ));
        }
    }
    for (mode, _, _) in MODES {
        let cpu = med(&s, &format!("{mode}_cpu_s"))?;
        let wall = med(&s, &format!("{mode}_wall_s"))?;
        rows.push(Row::alone(
            format!("blkbench run: CPU s (monitor+guest), {mode}"),
            cpu,
            "s",
        ));
        rows.push(Row::alone(
            format!("blkbench run: CPU/wall, {mode}"),
            cpu / wall.max(1e-9),
            "",
        ));
    }
    let mut chart = BarChart::new("block.svg", "Block: sequential throughput (median)");
    chart.series = vec!["host pread/pwrite", "hypercall, batched", "virtio, batched"];
    for op in ["read", "write"] {
        let mut panel = Panel::new(format!("sequential {op}s"), "MB/s");
        for (_, tag, label) in SIZES {
            let host = med(&s, &format!("host_seq_{op}_{tag}"))?;
            let mut bars = vec![host];
            for mode in ["hypercall", "virtio"] {
                for (m, name) in [("single", "single requests"), ("batch", "batched")] {
                    let v = med(&s, &format!("{mode}_seq_{op}_{m}_{tag}"))?;
                    rows.push(Row::vs(
                        format!("seq. {op} {label}, {name}, {mode}"),
                        v,
                        host,
                        "MB/s",
                    ));
                    if m == "batch" {
                        bars.push(v);
                    }
                }
            }
            panel.groups.push((label.to_string(), bars));
        }
        chart.panels.push(panel);
    }
    ctx.charts.push(chart);
    if rounds < 3 {
        ctx.notes.push(format!(
            "block: {rounds} round(s) over {mib} MiB; use --runs 60 or more for steadier figures"
        ));
    }
    for (k, v) in s {
        ctx.samples.insert(format!("block_{k}"), v);
    }
    Ok(rows)
}
