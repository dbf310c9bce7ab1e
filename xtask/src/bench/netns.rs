//! The network section's sandbox: a network namespace of its own
//! (`duet-bench-PID`) with a TAP for the guest, guests booted on it, and
//! host-side reference servers (TCP sink, TCP echo, HTTP) on loopback inside
//! the same namespace. Everything is torn down on drop, on failure too; the
//! host's own namespace is never touched.

use anyhow::{bail, ensure, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The guest's address on the TAP.
pub const GUEST: &str = "10.0.0.2";
const TAP: &str = "tap0";
const PREFIX: &str = "duet-bench-";

fn ip(args: &[&str]) -> Result<()> {
    let st = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .status()
        .context("cannot run `ip` (iproute2)")?;
    ensure!(st.success(), "ip {} failed with {st}", args.join(" "));
    Ok(())
}

/// Moves the calling thread into the namespace mounted at `path`.
fn enter(path: &str) -> Result<()> {
    let ns = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a namespace fd we hold; it changes only this
    // thread's network namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether process `pid` runs (a zombie does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
        .unwrap_or(false)
}

/// A network namespace with `tap0` (10.0.0.1/24) in it; deleted on drop,
/// which deletes the TAP too.
pub struct Netns(String);

impl Netns {
    /// Creates the namespace, first deleting those left by bench runs that
    /// were killed (their PID is gone).
    pub fn create() -> Result<Netns> {
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name
                    .strip_prefix(PREFIX)
                    .and_then(|p| p.parse::<u32>().ok());
                if pid.is_some_and(|p| !alive(p)) {
                    let _ = ip(&["netns", "del", &name]);
                }
            }
        }
        let name = format!("{PREFIX}{}", std::process::id());
        ip(&["netns", "add", &name])?;
        // From here on, drop deletes the namespace.
        let ns = Netns(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns.0, "tuntap", "add", "dev", TAP, "mode", "tap"])?;
        ip(&["-n", &ns.0, "addr", "add", "10.0.0.1/24", "dev", TAP])?;
        ip(&["-n", &ns.0, "link", "set", TAP, "up"])?;
        Ok(ns)
    }

    /// `program` run inside the namespace (`ip netns exec`); it dies with
    /// the harness.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        c
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&path)?;
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
        })
    }

    /// Boots `image` on the TAP as 10.0.0.2, its NIC on `transport`
    /// (`virtio` or `hypercall`), with monitor options `opts` and guest
    /// `args`.
    pub fn boot(
        &self,
        duet: &Path,
        image: &Path,
        transport: &str,
        opts: &[&str],
        args: &[&str],
    ) -> Result<Guest> {
        // `virtio-exit`: virtio with port-exit doorbells.
        let (transport, bell) = match transport {
            "virtio-exit" => ("virtio", "exit"),
            t => (t, "ioeventfd"),
        };
        let mut c = Command::new("ip");
        c.env("DUET_VIRTIO_DOORBELL", bell);
        c.args(["netns", "exec", &self.0])
            .arg(duet)
            .arg("run")
            .arg(image)
            .args(["--net", &format!("tap={TAP},transport={transport}")])
            .args(["--env", &format!("IP={GUEST}/24")]);
        // The guest's own spin budget, when a measurement varies it (the
        // monitor's, DUET_VIRTIO_SPIN_US, is inherited).
        if let Ok(us) = std::env::var("VIRTIO_SPIN_US") {
            c.args(["--env", &format!("VIRTIO_SPIN_US={us}")]);
        }
        // SAFETY: prctl is async-signal-safe. The guest dies with the
        // harness even when the harness is killed before its drops run.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = c
            .args(opts)
            .arg("--")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("booting {}", image.display()))?;
        Ok(Guest(child))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

/// A running guest; killed on drop.
pub struct Guest(Child);

impl Guest {
    /// CPU time the monitor process has used so far, all threads (the
    /// vCPU thread's guest time included), in ns (`/proc/PID/task/*/schedstat`).
    pub fn cpu_ns(&self) -> u64 {
        let dir = format!("/proc/{}/task", self.0.id());
        let Ok(tasks) = std::fs::read_dir(&dir) else {
            return 0;
        };
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects to `addr` (from inside the namespace), retrying for up to
/// `wait` while a guest boots; Nagle off, reads time out after 30 s.
pub fn connect(addr: SocketAddr, wait: Duration) -> Result<TcpStream> {
    let deadline = Instant::now() + wait;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) if Instant::now() > deadline => bail!("cannot connect to {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A host-side server on 127.0.0.1 inside the namespace, one connection at
/// a time (as the guest serves them); stopped and joined on drop.
pub struct HostServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HostServer {
    /// Starts `serve` (one call per connection) on a thread in `ns`.
    pub fn start(ns: &Netns, serve: fn(TcpStream) -> std::io::Result<()>) -> Result<HostServer> {
        let path = ns.path();
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let bound = enter(&path).and_then(|()| {
                let l = TcpListener::bind("127.0.0.1:0").context("binding a host server")?;
                l.set_nonblocking(true)?;
                Ok(l)
            });
            let l = match bound {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(l.local_addr().context("host server address"));
            while !halt.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_nodelay(true);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                        let _ = serve(s);
                    }
                    Err(_) => wait_readable(&l, 50),
                }
            }
        });
        let addr = rx.recv().context("host server thread died")??;
        Ok(HostServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for HostServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits up to `ms` for a connection on `l`.
fn wait_readable(l: &TcpListener, ms: i32) {
    let mut p = libc::pollfd {
        fd: l.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) };
}

/// Host sink: reads to the peer's shutdown, answers with the byte count
/// (8 bytes, little endian), like `echo sink`.
pub fn serve_sink(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match s.read(&mut buf)? {
            0 => break,
            n => total += n as u64,
        }
    }
    s.write_all(&total.to_le_bytes())
}

/// Host echo: writes back what it reads, like `echo tcp`.
pub fn serve_echo(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match s.read(&mut buf)? {
            0 => return Ok(()),
            n => s.write_all(&buf[..n])?,
        }
    }
}

/// Host HTTP/1.0: reads a request head, answers like `httpd`'s `/stats`
/// (same headers, a JSON body of the same shape), closes.
pub fn serve_http(mut s: TcpStream) -> std::io::Result<()> {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
        match s.read(&mut buf)? {
            0 => return Ok(()),
            n => req.extend_from_slice(&buf[..n]),
        }
    }
    let keys = [
        "connections",
        "open",
        "requests",
        "not_found",
        "bad_requests",
        "timeouts",
        "bytes_out",
        "rx_frames",
        "tx_frames",
        "rx_calls",
        "tx_calls",
        "tx_dropped",
    ];
    let fields: Vec<String> = keys.iter().map(|k| format!("\"{k}\":0")).collect();
    let body = format!("{{{}}}\n", fields.join(","));
    let head = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all((head + &body).as_bytes())
}
