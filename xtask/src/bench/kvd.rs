//! kvd: `redis-benchmark -t ping,set,get,incr,mset -c 50`, one request at a
//! time per client and 16 pipelined (`-P 16`), against `kvd` in Duet over
//! each network transport the monitor offers, and against redis-server on
//! loopback in the same namespace with its persistence matched to kvd's:
//! in memory (`save ""`, `appendonly no`), and with the log on a disk
//! (`appendonly yes`, `appendfsync everysec` and `always`; write tests,
//! default transport). redis-server is the floor. Round after round,
//! redis-server and then each transport take turns on the same benchmark;
//! a fresh server serves each run. Figures are medians over rounds. Needs
//! root, /dev/net/tun and the Redis tools (skipped with a note otherwise;
//! an error in the smoke pass).

use super::bars::{BarChart, Panel};
use super::netns::{connect, Netns, GUEST};
use super::redis::{self, Figures, RedisServer};
use super::stats::median;
use super::{Ctx, Progress, Row};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A network transport of the monitor: what `duet run` needs for it.
struct Transport {
    /// Name in the report.
    name: &'static str,
    /// The NIC's `transport=`.
    net: &'static str,
    /// Further `duet run` options.
    opts: &'static [&'static str],
}

/// Every transport the monitor offers; a new one is a line here.
const TRANSPORTS: &[Transport] = &[
    Transport {
        name: "virtio",
        net: "virtio",
        opts: &[],
    },
    Transport {
        name: "hypercall batched",
        net: "hypercall",
        opts: &[],
    },
    Transport {
        name: "hypercall single-frame",
        net: "hypercall",
        opts: &["--env", "NET_SINGLE=1"],
    },
];

/// kvd's persistence and the redis-server settings that match it.
struct Config {
    name: &'static str,
    /// Whether kvd gets a disk.
    disk: bool,
    /// kvd's `duet run` options.
    kvd: &'static [&'static str],
    /// redis-server's options.
    redis: &'static [&'static str],
    /// redis-benchmark's `-t`.
    tests: &'static str,
    /// How many of [`TRANSPORTS`] (from the first) it runs on.
    transports: usize,
}

const CONFIGS: &[Config] = &[
    Config {
        name: "memory",
        disk: false,
        kvd: &[],
        redis: &["--appendonly", "no"],
        tests: "ping,set,get,incr,mset",
        transports: TRANSPORTS.len(),
    },
    Config {
        name: "log everysec",
        disk: true,
        // Redis's default auto-aof-rewrite-min-size, so neither compacts.
        kvd: &[
            "--env",
            "APPENDFSYNC=everysec",
            "--env",
            "KVD_COMPACT_MIN=64M",
        ],
        redis: &["--appendonly", "yes", "--appendfsync", "everysec"],
        tests: "set,incr,mset",
        transports: 1,
    },
    Config {
        name: "log always",
        disk: true,
        kvd: &[
            "--env",
            "APPENDFSYNC=always",
            "--env",
            "KVD_COMPACT_MIN=64M",
        ],
        redis: &["--appendonly", "yes", "--appendfsync", "always"],
        tests: "set,incr",
        transports: 1,
    },
];

/// redis-benchmark's clients.
const CLIENTS: usize = 50;
const PIPELINES: [usize; 2] = [1, 16];
const PORT: u16 = 6379;
const BOOT_WAIT: Duration = Duration::from_secs(10);

/// Requests per test scaled by `--runs` (100 → 10,000, and 100,000
/// pipelined, one round; 2 → 200 and 2,000).
struct Plan {
    rounds: usize,
    n: usize,
}

impl Plan {
    fn new(runs: usize) -> Plan {
        Plan {
            rounds: (runs / 100).clamp(1, 3),
            n: (runs * 100).clamp(200, 10_000),
        }
    }

    fn requests(&self, pipeline: usize) -> usize {
        self.n * if pipeline > 1 { 10 } else { 1 }
    }
}

/// Why the section cannot run here, if it cannot.
fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        Some("needs root (network namespaces and TAPs)".into())
    } else if !Path::new("/dev/net/tun").exists() {
        Some("/dev/net/tun is missing".into())
    } else {
        redis::missing()
    }
}

/// Sample key of one figure.
fn key(cfg: &str, p: usize, side: &str, test: &str, what: &str) -> String {
    format!("kvd_{cfg}_P{p}_{side}_{test}_{what}").replace(' ', "_")
}

/// The section.
pub fn run(ctx: &mut Ctx) -> Result<Vec<Row>> {
    if let Some(why) = missing() {
        ctx.problem("kvd", format!("skipped: {why}"))?;
        return Ok(Vec::new());
    }
    let Some(image) = ctx.image("kvd", "kvd")? else {
        return Ok(Vec::new());
    };
    let plan = Plan::new(ctx.runs);
    let ns = Netns::create().context("creating the benchmark's network namespace")?;
    let disk = ctx.out_dir.join("kvd-bench.img");
    let redis_dir = ctx.out_dir.join("kvd-bench-redis");
    let guest: SocketAddr = format!("{GUEST}:{PORT}").parse()?;
    let runs_per_round: usize = CONFIGS.iter().map(|c| 2 * (c.transports + 1)).sum();
    let p = Progress::new(
        format!(
            "kvd: redis-benchmark -c {CLIENTS}, {} requests per test (x10 with -P 16); redis-server, then each transport",
            plan.n
        ),
        plan.rounds * runs_per_round,
    );
    let mut s: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut record = |cfg: &str, pipe: usize, side: &str, figs: BTreeMap<String, Figures>| {
        for (test, f) in figs {
            for (what, v) in [("rps", f.rps), ("p50", f.p50_ms), ("p99", f.p99_ms)] {
                s.entry(key(cfg, pipe, side, &test, what))
                    .or_default()
                    .push(v);
            }
        }
    };
    let mut done = 0;
    for _ in 0..plan.rounds {
        for cfg in CONFIGS {
            for pipe in PIPELINES {
                let n = plan.requests(pipe);
                let server = RedisServer::start(&ns, PORT, cfg.redis, &redis_dir)?;
                let figs = redis::benchmark(&ns, server.addr, cfg.tests, n, CLIENTS, pipe)
                    .context("redis-benchmark against redis-server")?;
                drop(server);
                record(cfg.name, pipe, "redis", figs);
                done += 1;
                p.show(done);
                for t in &TRANSPORTS[..cfg.transports] {
                    let mut opts: Vec<&str> = vec!["--mem", "128M"];
                    opts.extend_from_slice(t.opts);
                    opts.extend_from_slice(cfg.kvd);
                    let disk_opt = disk.display().to_string();
                    if cfg.disk {
                        // A fresh, sparse disk for every run.
                        let f = std::fs::File::create(&disk)?;
                        f.set_len(256 << 20)?;
                        opts.extend(["--disk", &disk_opt]);
                    }
                    let g = ns.boot(&ctx.duet, &image, t.net, &opts, &[])?;
                    ns.run(|| connect(guest, BOOT_WAIT).map(drop))
                        .context("kvd did not come up")?;
                    let figs = redis::benchmark(&ns, guest, cfg.tests, n, CLIENTS, pipe)
                        .with_context(|| format!("redis-benchmark against kvd ({})", t.name))?;
                    drop(g);
                    record(cfg.name, pipe, t.name, figs);
                    done += 1;
                    p.show(done);
                }
            }
        }
    }
    let _ = std::fs::remove_file(&disk);
    let rows = rows(ctx, &s);
    for (k, v) in s {
        ctx.samples.insert(k, v);
    }
    rows
}

/// redis-benchmark's names for the tests of `-t`.
fn test_names(tests: &str) -> Vec<&'static str> {
    tests
        .split(',')
        .flat_map(|t| match t {
            "ping" => vec!["PING_INLINE", "PING_MBULK"],
            "set" => vec!["SET"],
            "get" => vec!["GET"],
            "incr" => vec!["INCR"],
            "mset" => vec!["MSET (10 keys)"],
            _ => vec![],
        })
        .collect()
}

/// Rows: req/s of every test, and p50/p99 of SET and GET, each kvd
/// transport against redis-server; the chart of the in-memory req/s.
fn rows(ctx: &mut Ctx, s: &BTreeMap<String, Vec<f64>>) -> Result<Vec<Row>> {
    let m = |k: String| {
        s.get(&k)
            .map(|v| median(v))
            .with_context(|| format!("kvd: no `{k}` samples"))
    };
    let mut rows = Vec::new();
    let mut chart = BarChart::new(
        "kvd.svg",
        "kvd vs redis-server: redis-benchmark -c 50, in memory",
    );
    chart.series = std::iter::once("redis-server")
        .chain(TRANSPORTS.iter().map(|t| t.name))
        .collect();
    for cfg in CONFIGS {
        for pipe in PIPELINES {
            let mut panel = Panel::new(format!("-P {pipe}"), "req/s");
            for test in test_names(cfg.tests) {
                let redis = |what: &str| m(key(cfg.name, pipe, "redis", test, what));
                let mut bars = vec![redis("rps")?];
                for t in &TRANSPORTS[..cfg.transports] {
                    let kvd = |what: &str| m(key(cfg.name, pipe, t.name, test, what));
                    let label = format!("{test}, {}, -P {pipe}, {}", cfg.name, t.name);
                    rows.push(Row::vs(
                        format!("{label}: kvd (floor = redis-server)"),
                        kvd("rps")?,
                        redis("rps")?,
                        "req/s",
                    ));
                    bars.push(kvd("rps")?);
                    if matches!(test, "SET" | "GET") {
                        for (what, name) in [("p50", "p50"), ("p99", "p99")] {
                            rows.push(Row::vs(
                                format!("{label}: {name} latency (floor = redis-server)"),
                                kvd(what)?,
                                redis(what)?,
                                "ms",
                            ));
                        }
                    }
                }
                panel.groups.push((test.to_string(), bars));
            }
            if cfg.transports == TRANSPORTS.len() {
                chart.panels.push(panel);
            }
        }
    }
    ctx.charts.push(chart);
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_plan() {
        assert_eq!(
            test_names("ping,set,mset"),
            ["PING_INLINE", "PING_MBULK", "SET", "MSET (10 keys)"]
        );
        let smoke = Plan::new(2);
        assert_eq!(
            (smoke.rounds, smoke.requests(1), smoke.requests(16)),
            (1, 200, 2000)
        );
        assert_eq!(Plan::new(100).requests(16), 100_000);
        assert_eq!(
            key("log everysec", 16, "redis", "SET", "rps"),
            "kvd_log_everysec_P16_redis_SET_rps"
        );
    }
}
