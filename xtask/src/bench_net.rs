//! Network benchmark: TCP throughput and request latency from the host to a
//! guest, with the guest's device in batched and in single-frame mode
//! (`NET_SINGLE=1`), interleaved in the same run.
//!
//! Everything happens in a network namespace of its own (`duet-bench-PID`)
//! with a TAP, deleted afterwards; the host's namespace is never touched.
//! Needs root and `/dev/net/tun`. Entry point: [`run`]; [`render`] formats.

use anyhow::{bail, ensure, Context, Result};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GUEST: &str = "10.0.0.2";
const TAP: &str = "tap0";
/// Bytes sent per throughput sample.
const STREAM_BYTES: usize = 32 << 20;
/// HTTP requests (one connection each) per latency sample.
const REQUESTS: usize = 200;
/// Round trips of 64 bytes on one connection per latency sample.
const ROUND_TRIPS: usize = 500;

/// Figures of one device mode, medians over the rounds.
#[derive(Clone, Debug)]
pub struct NetFigures {
    /// `batched` or `single-frame`.
    pub mode: &'static str,
    /// Host→guest TCP throughput, MiB/s.
    pub throughput_mib_s: f64,
    /// HTTP GET /stats on a fresh connection: median µs.
    pub http_median_us: f64,
    /// HTTP GET /stats on a fresh connection: 99th percentile µs.
    pub http_p99_us: f64,
    /// 64-byte TCP echo round trip on one connection: median µs.
    pub rtt_median_us: f64,
    /// Frames moved per network exit during the HTTP sample (from `/stats`).
    /// Until the guest waits with the poll hypercall, its idle loop makes
    /// empty receive calls, which count here.
    pub frames_per_exit: f64,
}

struct Netns(String);

fn ip(args: &[&str]) -> Result<()> {
    let st = Command::new("ip").args(args).status().context("run `ip`")?;
    ensure!(st.success(), "ip {args:?} failed");
    Ok(())
}

impl Netns {
    fn create() -> Result<Netns> {
        let name = format!("duet-bench-{}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Netns(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns.0, "tuntap", "add", "dev", TAP, "mode", "tap"])?;
        ip(&["-n", &ns.0, "addr", "add", "10.0.0.1/24", "dev", TAP])?;
        ip(&["-n", &ns.0, "link", "set", TAP, "up"])?;
        Ok(ns)
    }

    /// Runs `f` on a thread inside the namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let path = format!("/run/netns/{}", self.0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path)?;
                // SAFETY: setns on a namespace fd we hold; it changes only
                // this thread's network namespace.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns: {}", std::io::Error::last_os_error());
                }
                f()
            })
            .join()
            .expect("namespace thread panicked")
        })
    }

    fn boot(&self, duet: &Path, image: &Path, single: bool, args: &[&str]) -> Result<Guest> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0])
            .arg(duet)
            .arg("run")
            .arg(image)
            .args(["--net", "tap=tap0", "--env", "IP=10.0.0.2/24"]);
        if single {
            c.args(["--env", "NET_SINGLE=1"]);
        }
        let child = c
            .arg("--")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("boot the guest")?;
        Ok(Guest(child))
    }

    fn connect(&self, port: u16) -> Result<TcpStream> {
        let addr: SocketAddr = format!("{GUEST}:{port}").parse()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        self.run(|| loop {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(30)))?;
                    s.set_nodelay(true)?;
                    return Ok(s);
                }
                Err(e) if Instant::now() > deadline => bail!("cannot reach the guest: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Guest(Child);

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(ns: &Netns, path: &str) -> Result<String> {
    let mut s = ns.connect(80)?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
    let mut r = String::new();
    s.read_to_string(&mut r)?;
    ensure!(r.starts_with("HTTP/1.0 200"), "bad response: {r}");
    Ok(r)
}

fn json_u64(json: &str, key: &str) -> u64 {
    json.find(&format!("\"{key}\":"))
        .and_then(|at| {
            json[at + key.len() + 3..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// One round of one mode: (throughput, http median, http p99, rtt median, frames/exit).
fn round(ns: &Netns, duet: &Path, images: &Path, single: bool) -> Result<[f64; 5]> {
    // Throughput: stream into the sink, wait for its byte count.
    let tput = {
        let _g = ns.boot(duet, &images.join("echo"), single, &["sink", "9"])?;
        let mut s = ns.connect(9)?;
        let chunk = vec![0x5au8; 256 * 1024];
        let t = Instant::now();
        for _ in 0..STREAM_BYTES / chunk.len() {
            s.write_all(&chunk)?;
        }
        s.shutdown(Shutdown::Write)?;
        let mut n = [0u8; 8];
        s.read_exact(&mut n)?;
        let secs = t.elapsed().as_secs_f64();
        ensure!(
            u64::from_le_bytes(n) == STREAM_BYTES as u64,
            "sink lost bytes"
        );
        STREAM_BYTES as f64 / (1 << 20) as f64 / secs
    };
    // Round trips on one connection.
    let rtt = {
        let _g = ns.boot(duet, &images.join("echo"), single, &["tcp", "7"])?;
        let mut s = ns.connect(7)?;
        let mut buf = [0u8; 64];
        let mut v = Vec::with_capacity(ROUND_TRIPS);
        for i in 0..ROUND_TRIPS {
            buf[0] = i as u8;
            let t = Instant::now();
            s.write_all(&buf)?;
            s.read_exact(&mut buf)?;
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
        percentile(&mut v, 0.5)
    };
    // HTTP requests, each on a fresh connection.
    let _g = ns.boot(duet, &images.join("httpd"), single, &[])?;
    let before = http_get(ns, "/stats")?;
    let mut v = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let t = Instant::now();
        http_get(ns, "/stats")?;
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let after = http_get(ns, "/stats")?;
    let delta = |k| json_u64(&after, k).saturating_sub(json_u64(&before, k)) as f64;
    let fpe = (delta("rx_frames") + delta("tx_frames"))
        / (delta("rx_calls") + delta("tx_calls")).max(1.0);
    let med = percentile(&mut v, 0.5);
    let p99 = percentile(&mut v, 0.99);
    Ok([tput, med, p99, rtt, fpe])
}

/// Runs `rounds` interleaved rounds of batched and single-frame mode.
pub fn run(duet: &Path, images: &Path, rounds: usize) -> Result<Vec<NetFigures>> {
    let ns = Netns::create()?;
    let mut samples = [Vec::new(), Vec::new()];
    for _ in 0..rounds.max(1) {
        for (i, single) in [false, true].into_iter().enumerate() {
            samples[i].push(round(&ns, duet, images, single)?);
        }
    }
    Ok(["batched", "single-frame"]
        .into_iter()
        .zip(samples)
        .map(|(mode, s)| {
            let med = |k: usize| percentile(&mut s.iter().map(|r| r[k]).collect::<Vec<_>>(), 0.5);
            NetFigures {
                mode,
                throughput_mib_s: med(0),
                http_median_us: med(1),
                http_p99_us: med(2),
                rtt_median_us: med(3),
                frames_per_exit: med(4),
            }
        })
        .collect())
}

/// A table of the figures, with batched/single ratios.
pub fn render(f: &[NetFigures]) -> String {
    let mut out = String::from(
        "mode           TCP MiB/s   HTTP med µs   HTTP p99 µs   RTT med µs   frames/exit\n",
    );
    for x in f {
        out += &format!(
            "{:<14} {:>9.1} {:>13.0} {:>13.0} {:>12.0} {:>13.2}\n",
            x.mode,
            x.throughput_mib_s,
            x.http_median_us,
            x.http_p99_us,
            x.rtt_median_us,
            x.frames_per_exit
        );
    }
    if let [b, s] = f {
        out += &format!(
            "batched vs single-frame: throughput x{:.2}, HTTP latency x{:.2}, RTT x{:.2}\n",
            b.throughput_mib_s / s.throughput_mib_s,
            b.http_median_us / s.http_median_us,
            b.rtt_median_us / s.rtt_median_us
        );
    }
    out
}
