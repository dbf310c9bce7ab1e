//! The Redis tools the `kvd` section measures with: redis-server started
//! in the benchmark's namespace (persistence as the caller says), and
//! redis-benchmark runs whose `--csv` output is parsed.

use super::netns::{connect, Netns};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One redis-benchmark test's figures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figures {
    /// Requests per second.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
}

/// Why the tools cannot be used, if they cannot.
pub fn missing() -> Option<String> {
    for tool in ["redis-benchmark", "redis-server"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!(
                "{tool} is not installed (apt-get install redis-tools redis-server; `cargo xtask test` installs them)"
            ));
        }
    }
    None
}

/// Parses `redis-benchmark --csv`: test name to figures.
pub fn parse_csv(out: &str) -> Result<BTreeMap<String, Figures>> {
    let mut lines = out.lines().filter(|l| l.starts_with('"'));
    let header: Vec<String> = lines
        .next()
        .context("redis-benchmark printed no CSV header")?
        .split(',')
        .map(|f| f.trim_matches('"').to_string())
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("no `{name}` column in redis-benchmark's CSV"))
    };
    let (rps, p50, p99) = (col("rps")?, col("p50_latency_ms")?, col("p99_latency_ms")?);
    let mut m = BTreeMap::new();
    for l in lines {
        let f: Vec<&str> = l.split("\",\"").map(|x| x.trim_matches('"')).collect();
        let num = |i: usize| -> Result<f64> {
            f.get(i)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("bad redis-benchmark CSV line {l:?}"))
        };
        m.insert(
            f[0].to_string(),
            Figures {
                rps: num(rps)?,
                p50_ms: num(p50)?,
                p99_ms: num(p99)?,
            },
        );
    }
    Ok(m)
}

/// Runs `redis-benchmark --csv -t tests -n n -c clients -P pipeline`
/// against `addr` from inside `ns`.
pub fn benchmark(
    ns: &Netns,
    addr: SocketAddr,
    tests: &str,
    n: usize,
    clients: usize,
    pipeline: usize,
) -> Result<BTreeMap<String, Figures>> {
    let out = ns
        .command("redis-benchmark")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-t", tests, "--csv"])
        .args(["-n", &n.to_string(), "-c", &clients.to_string()])
        .args(["-P", &pipeline.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("cannot run redis-benchmark")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "redis-benchmark failed with {}: {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_csv(&text)
}

/// redis-server on 127.0.0.1 inside a namespace, killed on drop.
pub struct RedisServer {
    child: Child,
    dir: PathBuf,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl RedisServer {
    /// Starts it with `save ""` and the persistence options `opts` (e.g.
    /// `--appendonly no`), its files in a fresh `dir`; returns once it
    /// accepts connections.
    pub fn start(ns: &Netns, port: u16, opts: &[&str], dir: &Path) -> Result<RedisServer> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let child = ns
            .command("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .args(opts)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run redis-server")?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let s = RedisServer {
            child,
            dir: dir.to_path_buf(),
            addr,
        };
        ns.run(|| connect(addr, Duration::from_secs(10)).map(drop))
            .context("redis-server did not start")?;
        Ok(s)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"SET\",\"37037.04\",\"0.102\",\"0.024\",\"0.095\",\"0.159\",\"0.223\",\"3.879\"\n\"MSET (10 keys)\",\"100.00\",\"1\",\"1\",\"2.5\",\"1\",\"9\",\"1\"\n";
        let m = parse_csv(out).unwrap();
        assert_eq!(
            m["SET"],
            Figures {
                rps: 37037.04,
                p50_ms: 0.095,
                p99_ms: 0.223
            }
        );
        assert_eq!(m["MSET (10 keys)"].p99_ms, 9.0);
        assert!(parse_csv("").is_err());
    }
}
