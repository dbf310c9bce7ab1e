//! Redis-protocol helpers for the `kvd` tests: a small RESP client,
//! redis-server started inside a test's network namespace, and redis-cli
//! and redis-benchmark runs there. The Debian tools are real; nothing is
//! mocked. `cargo xtask test` installs `redis-server` and `redis-tools`
//! when they are missing.

use crate::netns::Netns;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+...`
    Simple(String),
    /// `-...`
    Error(String),
    /// `:n`
    Int(i64),
    /// `$n ...` (`None`: the null bulk string)
    Bulk(Option<Vec<u8>>),
    /// `*n ...` (`None`: the null array)
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The bytes of a bulk reply; panics otherwise.
    #[track_caller]
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Reply::Bulk(Some(b)) => b.clone(),
            other => panic!("expected a bulk string, got {other:?}"),
        }
    }

    /// A bulk reply as text; panics otherwise.
    #[track_caller]
    pub fn text(&self) -> String {
        String::from_utf8(self.bytes()).expect("UTF-8 reply")
    }
}

/// The wire form of a command.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

/// A connection speaking RESP2.
pub struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

fn line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut l = String::new();
    if r.read_line(&mut l)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(l.trim_end_matches("\r\n").to_string())
}

/// Reads one reply.
pub fn read_reply(r: &mut impl BufRead) -> std::io::Result<Reply> {
    let l = line(r)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad reply {l:?}"));
    let (kind, rest) = l.split_at(1.min(l.len()));
    Ok(match kind {
        "+" => Reply::Simple(rest.into()),
        "-" => Reply::Error(rest.into()),
        ":" => Reply::Int(rest.parse().map_err(|_| bad())?),
        "$" => match rest.parse::<i64>().map_err(|_| bad())? {
            -1 => Reply::Bulk(None),
            n => {
                let mut b = vec![0u8; n as usize + 2];
                r.read_exact(&mut b)?;
                b.truncate(n as usize);
                Reply::Bulk(Some(b))
            }
        },
        "*" => match rest.parse::<i64>().map_err(|_| bad())? {
            -1 => Reply::Array(None),
            n => Reply::Array(Some(
                (0..n).map(|_| read_reply(r)).collect::<Result<_, _>>()?,
            )),
        },
        _ => return Err(bad()),
    })
}

impl Client {
    /// Connects from inside `ns`, retrying while the server starts (10 s).
    pub fn connect(ns: &Netns, addr: SocketAddr) -> Client {
        let deadline = Instant::now() + Duration::from_secs(10);
        let s = ns.run(|| loop {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => panic!("cannot connect to {addr}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        });
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, b: &[u8]) {
        self.w.write_all(b).expect("send to the server");
    }

    /// Sends a command without waiting (pipelining).
    pub fn send(&mut self, args: &[&str]) {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        self.send_raw(&encode(&a));
    }

    /// Reads one reply.
    #[track_caller]
    pub fn read(&mut self) -> Reply {
        read_reply(&mut self.r).expect("read a reply")
    }

    /// Sends a command and reads its reply.
    #[track_caller]
    pub fn call(&mut self, args: &[&str]) -> Reply {
        self.send(args);
        self.read()
    }

    /// Reads until the server closes; returns what came (a timeout panics).
    pub fn read_to_close(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        self.r
            .read_to_end(&mut v)
            .expect("read until the server closes");
        v
    }

    /// The socket (to shut it down, or drop it mid-command).
    pub fn stream(&self) -> &TcpStream {
        &self.w
    }
}

/// redis-server inside a namespace, on 127.0.0.1:`port`, killed on drop.
pub struct RedisServer {
    child: Child,
    _dir: tempfile::TempDir,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl RedisServer {
    /// Starts it with `save ""` and `appendonly no` plus `extra` options;
    /// returns once it answers.
    pub fn start(ns: &Netns, port: u16, extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let child = ns
            .command("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-server (cargo xtask test installs redis-server if missing)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut s = RedisServer {
            child,
            _dir: dir,
            addr,
        };
        let mut c = Client::connect(ns, addr);
        assert_eq!(c.call(&["PING"]), Reply::Simple("PONG".into()));
        if let Ok(Some(st)) = s.child.try_wait() {
            panic!("redis-server exited with {st}");
        }
        s
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `redis-cli --no-raw -h host -p port` inside `ns` with `script` on
/// its standard input (one command per line); returns its output.
pub fn redis_cli(ns: &Netns, addr: SocketAddr, script: &str) -> String {
    let mut child = ns
        .command("redis-cli")
        .args([
            "--no-raw",
            "-h",
            &addr.ip().to_string(),
            "-p",
            &addr.port().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run redis-cli (cargo xtask test installs redis-tools if missing)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let o = crate::wait_output(child, Duration::from_secs(30));
    assert_eq!(o.status, Some(0), "redis-cli failed: {o:#?}");
    o.stdout
}

/// Runs `redis-benchmark -h host -p port ARGS` inside `ns`; returns its
/// output, failing the test unless it exits 0.
pub fn redis_benchmark(ns: &Netns, addr: SocketAddr, args: &[&str]) -> String {
    let child = ns
        .command("redis-benchmark")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run redis-benchmark (cargo xtask test installs redis-tools if missing)");
    let o = crate::wait_output(child, Duration::from_secs(120));
    assert_eq!(o.status, Some(0), "redis-benchmark {args:?} failed: {o:#?}");
    o.stdout
}

/// Where `kvd` listens in a test namespace.
pub fn kvd_addr() -> SocketAddr {
    format!("{}:6379", crate::netns::GUEST_IP).parse().unwrap()
}

/// The `--net` and `--env IP=` options tests give a guest.
pub fn guest_net_opts() -> Vec<String> {
    let mac = crate::netns::GUEST_MAC
        .map(|b| format!("{b:02x}"))
        .join(":");
    vec![
        "--net".into(),
        format!("tap={},mac={mac}", crate::netns::TAP),
        "--env".into(),
        format!("IP={}", crate::netns::GUEST_CIDR),
    ]
}

/// Boots `kvd` in `ns` (128 MiB) with extra monitor options `opts`;
/// returns once it printed `kvd: ready`. Dropping (or `kill`ing) the
/// result is `kill -9` of the monitor.
pub fn start_kvd(ns: &Netns, opts: &[&str]) -> crate::Background {
    let img = crate::image("kvd");
    let bin = crate::paths().bin.to_str().unwrap().to_string();
    let mut v: Vec<String> = ["ip", "netns", "exec", &ns.name, &bin, "run"]
        .map(String::from)
        .to_vec();
    v.push(img.to_str().unwrap().into());
    v.extend(["--mem".to_string(), "128M".to_string()]);
    v.extend(guest_net_opts());
    v.extend(opts.iter().map(|s| s.to_string()));
    let mut b = crate::Background::start_program(&v);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !b.stdout().contains("kvd: ready") {
        if b.exited() {
            panic!("kvd ended before it was ready: {:#?}", b.finish());
        }
        assert!(
            Instant::now() < deadline,
            "kvd not ready in 60 s: {}",
            b.stdout()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    b
}
