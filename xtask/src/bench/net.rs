//! Network: host→guest TCP throughput (`echo sink`), 64-byte TCP echo round
//! trips (`echo tcp`) and HTTP requests on fresh connections (`httpd`), with
//! the guest's NIC on the hypercall transport (batched) and on virtio, beside
//! the same client against host servers on loopback in the same namespace.
//! Each figure is measured host, hypercall, virtio in turn, round after
//! round; figures are medians over the rounds. VM exits per HTTP request
//! come from the guest's own count of its `out`s. Needs root and
//! `/dev/net/tun` (skipped with a note otherwise).

use super::bars::{BarChart, Panel};
use super::netns::{self, connect, HostServer, Netns, GUEST};
use super::stats::{median, quantile};
use super::{Ctx, Progress, Row};
use anyhow::{ensure, Context, Result};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a guest may take to boot and answer its first connection.
const BOOT_WAIT: Duration = Duration::from_secs(10);
/// How long the idle guest is watched.
const IDLE: Duration = Duration::from_secs(5);

/// Who answers the client.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Host,
    Batched,
    Virtio,
    /// virtio with the doorbell as a port exit served on the vCPU thread.
    VirtioExit,
}

const SIDES: [(Side, &str); 4] = [
    (Side::Host, "host"),
    (Side::Batched, "batched"),
    (Side::Virtio, "virtio"),
    (Side::VirtioExit, "virtio_exitbell"),
];

/// Sizes scaled by `--runs` (100 → 3 rounds of 32 MiB, 200 requests,
/// 500 round trips; 2 → 1 round of 655 KiB, 10 requests, 20 round trips).
struct Plan {
    rounds: usize,
    stream: usize,
    requests: usize,
    round_trips: usize,
}

impl Plan {
    fn new(runs: usize) -> Plan {
        Plan {
            rounds: (runs / 33).clamp(1, 3),
            stream: (runs * (32 << 20) / 100).clamp(256 << 10, 32 << 20),
            requests: (runs * 2).clamp(10, 200),
            round_trips: (runs * 5).clamp(20, 500),
        }
    }
}

fn guest_addr(port: u16) -> SocketAddr {
    SocketAddr::new(GUEST.parse().expect("a valid address"), port)
}

/// CPU ns of the guest so far (0 for a host server).
type Cpu<'a> = &'a (dyn Fn() -> u64 + Sync);

/// MiB/s streaming `bytes` into a sink, until it confirms the count, and
/// the guest's CPU ms per GiB.
fn stream(addr: SocketAddr, bytes: usize, cpu: Cpu<'_>) -> Result<[f64; 2]> {
    let mut s = connect(addr, BOOT_WAIT)?;
    let chunk = vec![0x5au8; 64 * 1024];
    let c0 = cpu();
    let t = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).context("streaming to the sink")?;
        left -= n;
    }
    s.shutdown(Shutdown::Write)?;
    let mut n = [0u8; 8];
    s.read_exact(&mut n).context("reading the sink's count")?;
    let secs = t.elapsed().as_secs_f64();
    let cpu_ms = (cpu() - c0) as f64 / 1e6;
    ensure!(u64::from_le_bytes(n) == bytes as u64, "the sink lost bytes");
    Ok([
        bytes as f64 / (1 << 20) as f64 / secs,
        cpu_ms * (1u64 << 30) as f64 / bytes as f64,
    ])
}

/// Median µs of `n` 64-byte round trips on one connection, and the
/// guest's CPU µs per round trip.
fn echo_rtt(addr: SocketAddr, n: usize, cpu: Cpu<'_>) -> Result<[f64; 2]> {
    let mut s = connect(addr, BOOT_WAIT)?;
    let mut buf = [0u8; 64];
    let mut v = Vec::with_capacity(n);
    let c0 = cpu();
    for i in 0..n {
        buf[0] = i as u8;
        let t = Instant::now();
        s.write_all(&buf)?;
        s.read_exact(&mut buf).context("reading the echo")?;
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok([median(&v), (cpu() - c0) as f64 / 1e3 / n as f64])
}

/// `GET path` on a fresh connection; the whole response.
fn http_get(addr: SocketAddr, path: &str, wait: Duration) -> Result<String> {
    let mut s = connect(addr, wait)?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
    let mut r = String::new();
    s.read_to_string(&mut r).context("reading the response")?;
    ensure!(r.starts_with("HTTP/1.0 200"), "bad HTTP response: {r:?}");
    Ok(r)
}

fn json_u64(json: &str, key: &str) -> f64 {
    json.split_once(&format!("\"{key}\":"))
        .and_then(|(_, rest)| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
        .unwrap_or(0) as f64
}

/// `n` requests for `/stats`, each on a fresh connection: (median µs,
/// p99 µs, VM exits per request from the guest's counters, NaN for the
/// host, the guest's CPU µs per request).
fn http(addr: SocketAddr, n: usize, guest: bool, cpu: Cpu<'_>) -> Result<[f64; 4]> {
    let before = http_get(addr, "/stats", BOOT_WAIT)?;
    let c0 = cpu();
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        http_get(addr, "/stats", Duration::ZERO)?;
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let cpu_us = (cpu() - c0) as f64 / 1e3 / (n + 1) as f64;
    let fpe = if guest {
        let after = http_get(addr, "/stats", Duration::ZERO)?;
        let d = |k| json_u64(&after, k) - json_u64(&before, k);
        // The last /stats request is counted too.
        d("exits") / (n + 1) as f64
    } else {
        f64::NAN
    };
    Ok([median(&v), quantile(&v, 0.99), fpe, cpu_us])
}

/// ApacheBench: requests per second of `n` GETs of `/`, one at a time,
/// each on a new connection (`ab -n N -c 1`), from inside the namespace.
fn ab(addr: SocketAddr, n: usize) -> Result<f64> {
    let url = format!("http://{addr}/");
    let out = std::process::Command::new("ab")
        .args(["-q", "-n", &n.to_string(), "-c", "1", &url])
        .output()
        .context("running ab (Debian package apache2-utils)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "ab failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        text.contains("Failed requests:        0"),
        "ab saw failed requests: {text}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix("Requests per second:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no requests per second in ab's report: {text}"))
}

/// Why the section cannot run here, if it cannot.
fn missing_privilege() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        Some("needs root (network namespaces and TAPs)")
    } else if !Path::new("/dev/net/tun").exists() {
        Some("/dev/net/tun is missing")
    } else {
        None
    }
}

/// The section.
pub fn run(ctx: &mut Ctx) -> Result<Vec<Row>> {
    if let Some(why) = missing_privilege() {
        ctx.problem("net", format!("skipped: {why}"))?;
        return Ok(Vec::new());
    }
    let (Some(echo), Some(httpd)) = (ctx.image("echo", "net")?, ctx.image("httpd", "net")?) else {
        return Ok(Vec::new());
    };
    let plan = Plan::new(ctx.runs);
    let ns = Netns::create().context("creating the benchmark's network namespace")?;
    let sink = HostServer::start(&ns, netns::serve_sink)?;
    let echo_srv = HostServer::start(&ns, netns::serve_echo)?;
    let http_srv = HostServer::start(&ns, netns::serve_http)?;
    let duet = ctx.duet.clone();
    // One guest per measurement, killed when it is done.
    let measure = |image: &PathBuf, args: &[&str], side: Side, host: SocketAddr, port: u16| {
        let guest = match side {
            Side::Host => None,
            Side::Batched => Some(ns.boot(&duet, image, "hypercall", &[], args)?),
            Side::Virtio => Some(ns.boot(&duet, image, "virtio", &[], args)?),
            Side::VirtioExit => Some(ns.boot(&duet, image, "virtio-exit", &[], args)?),
        };
        let addr = if guest.is_some() {
            guest_addr(port)
        } else {
            host
        };
        Ok::<_, anyhow::Error>((guest, addr))
    };

    let mut s: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let p = Progress::new(
        format!(
            "net: {} KiB stream, {} round trips, {} requests; host, hypercall, virtio (ioeventfd and exit doorbells)",
            plan.stream >> 10,
            plan.round_trips,
            plan.requests
        ),
        plan.rounds * 12,
    );
    let mut done = 0;
    for _ in 0..plan.rounds {
        for (side, name) in SIDES {
            let (g, addr) = measure(&echo, &["sink", "9"], side, sink.addr, 9)?;
            let cpu = || g.as_ref().map_or(0, netns::Guest::cpu_ns);
            let [v, c] = ns
                .run(|| stream(addr, plan.stream, &cpu))
                .context("TCP stream")?;
            s.entry(format!("tcp_mib_s_{name}")).or_default().push(v);
            s.entry(format!("tcp_cpu_ms_gib_{name}"))
                .or_default()
                .push(c);
            done += 1;
            p.show(done);
        }
        for (side, name) in SIDES {
            let (g, addr) = measure(&echo, &["tcp", "7"], side, echo_srv.addr, 7)?;
            let cpu = || g.as_ref().map_or(0, netns::Guest::cpu_ns);
            let [v, c] = ns
                .run(|| echo_rtt(addr, plan.round_trips, &cpu))
                .context("echo")?;
            s.entry(format!("rtt_us_{name}")).or_default().push(v);
            s.entry(format!("rtt_cpu_us_{name}")).or_default().push(c);
            done += 1;
            p.show(done);
        }
        for (side, name) in SIDES {
            let (g, addr) = measure(&httpd, &[], side, http_srv.addr, 80)?;
            let cpu = || g.as_ref().map_or(0, netns::Guest::cpu_ns);
            let [med, p99, fpe, c] = ns
                .run(|| http(addr, plan.requests, g.is_some(), &cpu))
                .context("HTTP requests")?;
            s.entry(format!("http_cpu_us_{name}")).or_default().push(c);
            let rps = ns
                .run(|| ab(addr, plan.requests * 5))
                .context("ApacheBench")?;
            s.entry(format!("ab_rps_{name}")).or_default().push(rps);
            s.entry(format!("http_us_{name}")).or_default().push(med);
            s.entry(format!("http_p99_us_{name}"))
                .or_default()
                .push(p99);
            if g.is_some() {
                s.entry(format!("frames_per_exit_{name}"))
                    .or_default()
                    .push(fpe);
            }
            done += 1;
            p.show(done);
        }
    }
    // An idle guest (NIC and disk on virtio, or both on hypercalls): CPU
    // over 5 s once it is up.
    let disk = ctx.out_dir.join("idle.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(16 << 20))
        .context("creating the idle guest's disk")?;
    for (t, name) in [
        ("hypercall", "batched"),
        ("virtio", "virtio"),
        ("virtio-exit", "virtio_exitbell"),
    ] {
        let dt = if t == "hypercall" {
            "hypercall"
        } else {
            "virtio"
        };
        let d = format!("{},transport={dt}", disk.display());
        let g = ns.boot(&duet, &httpd, t, &["--disk", &d], &[])?;
        ns.run(|| http_get(guest_addr(80), "/", BOOT_WAIT))
            .context("the idle guest never answered")?;
        let c0 = g.cpu_ns();
        std::thread::sleep(IDLE);
        let pct = (g.cpu_ns() - c0) as f64 / IDLE.as_nanos() as f64 * 100.0;
        s.entry(format!("idle_cpu_pct_{name}"))
            .or_default()
            .push(pct);
    }
    let _ = std::fs::remove_file(&disk);
    let rows = rows(ctx, &s);
    for (k, v) in s {
        ctx.samples.insert(format!("net_{k}"), v);
    }
    rows
}

/// Rows (each transport beside the host, then virtio beside hypercall)
/// and the chart, from the per-round samples.
fn rows(ctx: &mut Ctx, s: &BTreeMap<String, Vec<f64>>) -> Result<Vec<Row>> {
    let m = |k: &str| {
        s.get(k)
            .map(|v| median(v))
            .with_context(|| format!("net: no `{k}` samples"))
    };
    let figures: [(&str, &str, &'static str); 4] = [
        ("tcp_mib_s", "TCP stream into guest", "MiB/s"),
        ("rtt_us", "TCP echo 64 B RTT, median", "µs"),
        ("http_us", "HTTP GET new conn., median", "µs"),
        ("http_p99_us", "HTTP GET new conn., p99", "µs"),
    ];
    let mut rows = Vec::new();
    let mut chart = BarChart::new("net.svg", "Network: host client to guest (median)");
    chart.series = vec![
        "host loopback",
        "guest, hypercall",
        "guest, virtio",
        "virtio, exit doorbell",
    ];
    for (key, label, unit) in figures {
        let host = m(&format!("{key}_host"))?;
        let (b, one) = (m(&format!("{key}_batched"))?, m(&format!("{key}_virtio"))?);
        let ex = m(&format!("{key}_virtio_exitbell"))?;
        rows.push(Row::vs(format!("{label}, hypercall"), b, host, unit));
        rows.push(Row::vs(format!("{label}, virtio"), one, host, unit));
        rows.push(Row::vs(
            format!("{label}, virtio, exit doorbell"),
            ex,
            host,
            unit,
        ));
        if key != "http_p99_us" {
            let mut panel = Panel::new(label, unit);
            panel.groups.push((String::new(), vec![host, b, one, ex]));
            chart.panels.push(panel);
        }
    }
    for (key, label, unit) in figures.into_iter().take(3) {
        let (b, one) = (m(&format!("{key}_batched"))?, m(&format!("{key}_virtio"))?);
        rows.push(Row::vs(
            format!("{label}: virtio (floor = hypercall)"),
            one,
            b,
            unit,
        ));
    }
    let ab_host = m("ab_rps_host")?;
    for (mode, name) in [
        ("batched", "hypercall"),
        ("virtio", "virtio"),
        ("virtio_exitbell", "virtio, exit doorbell"),
    ] {
        rows.push(Row::vs(
            format!("ab -c 1 requests/s, {name}"),
            m(&format!("ab_rps_{mode}"))?,
            ab_host,
            "req/s",
        ));
    }
    for (key, label, unit) in [
        (
            "tcp_cpu_ms_gib",
            "CPU per GiB streamed (monitor+guest)",
            "ms",
        ),
        ("rtt_cpu_us", "CPU per echo round trip", "µs"),
        ("http_cpu_us", "CPU per HTTP request", "µs"),
        (
            "idle_cpu_pct",
            "idle guest (NIC + disk) over 5 s, CPU",
            "% core",
        ),
    ] {
        for (mode, name) in [
            ("batched", "hypercall"),
            ("virtio", "virtio"),
            ("virtio_exitbell", "virtio, exit doorbell"),
        ] {
            rows.push(Row::alone(
                format!("{label}, {name}"),
                m(&format!("{key}_{mode}"))?,
                unit,
            ));
        }
    }
    for (mode, name) in [
        ("batched", "hypercall"),
        ("virtio", "virtio"),
        ("virtio_exitbell", "virtio, exit doorbell"),
    ] {
        rows.push(Row::alone(
            format!("VM exits per HTTP request, {name}"),
            m(&format!("frames_per_exit_{mode}"))?,
            "",
        ));
    }
    ctx.charts.push(chart);
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_from_stats() {
        let j = "{\"rx_frames\":12,\"tx_frames\":7,\"rx_calls\":3}\n";
        assert_eq!(json_u64(j, "rx_frames"), 12.0);
        assert_eq!(json_u64(j, "rx_calls"), 3.0);
        assert_eq!(json_u64(j, "tx_calls"), 0.0);
    }

    #[test]
    fn smoke_plan_is_small() {
        let p = Plan::new(2);
        assert_eq!(p.rounds, 1);
        assert!(p.stream <= 1 << 20 && p.requests <= 10 && p.round_trips <= 20);
        let d = Plan::new(100);
        assert_eq!((d.stream, d.requests, d.round_trips), (32 << 20, 200, 500));
    }
}
