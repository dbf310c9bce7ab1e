//! Helpers for Duet's end-to-end tests: find (or build) the monitor and the
//! images once, run the monitor with a timeout, and capture what it printed.
//!
//! `cargo xtask test` builds everything first and passes `DUET_BIN` and
//! `DUET_IMAGES`; under a plain `cargo test` the first test builds them.

pub mod docs;
pub mod gdb;
pub mod netns;
pub mod oci;
pub mod redis;
pub mod statefile;
pub mod unprivileged;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where the monitor and the images are.
pub struct Paths {
    /// The `duet` binary.
    pub bin: PathBuf,
    /// Directory of example-app images.
    pub images: PathBuf,
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The monitor and images, built on first use when not given.
pub fn paths() -> &'static Paths {
    static PATHS: OnceLock<Paths> = OnceLock::new();
    PATHS.get_or_init(|| {
        match (
            std::env::var_os("DUET_BIN"),
            std::env::var_os("DUET_IMAGES"),
        ) {
            (Some(bin), Some(images)) => Paths {
                bin: bin.into(),
                images: images.into(),
            },
            _ => {
                let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
                let st = Command::new(&cargo)
                    .current_dir(root())
                    .args(["run", "--quiet", "-p", "xtask", "--", "build"])
                    .status()
                    .expect("run cargo xtask build");
                assert!(st.success(), "cargo xtask build failed");
                // The tests run the monitor with its failure-injection hooks
                // (as `cargo xtask test` builds it).
                let hooks = root().join("target/test-hooks");
                let st = Command::new(&cargo)
                    .current_dir(root())
                    .args(["build", "--release", "--quiet", "-p", "duet-monitor"])
                    .args(["--features", "test-hooks", "--target-dir"])
                    .arg(&hooks)
                    .status()
                    .expect("build the test monitor");
                assert!(st.success(), "building the test monitor failed");
                Paths {
                    bin: hooks.join("release/duet"),
                    images: root().join("unikernel/target/x86_64-unknown-none/release/examples"),
                }
            }
        }
    })
}

/// The image of example app `name`.
pub fn image(name: &str) -> PathBuf {
    paths().images.join(name)
}

/// What one monitor run did.
#[derive(Debug)]
pub struct Output {
    /// Exit status (`None` if killed by a signal).
    pub status: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Panics with everything printed unless the status is `want`.
    #[track_caller]
    pub fn expect_status(&self, want: i32) -> &Self {
        assert_eq!(
            self.status,
            Some(want),
            "unexpected status; output:\n{self:#?}"
        );
        self
    }

    /// Panics unless stdout contains `s`.
    #[track_caller]
    pub fn expect_stdout(&self, s: &str) -> &Self {
        assert!(
            self.stdout.contains(s),
            "stdout lacks {s:?}; output:\n{self:#?}"
        );
        self
    }

    /// Panics unless stderr contains `s`.
    #[track_caller]
    pub fn expect_stderr(&self, s: &str) -> &Self {
        assert!(
            self.stderr.contains(s),
            "stderr lacks {s:?}; output:\n{self:#?}"
        );
        self
    }

    /// Panics if a message on stderr says something twice: a part (between
    /// `:` and `;`) of eight characters or more repeated on a line, or an
    /// OS error quoted twice.
    #[track_caller]
    pub fn expect_said_once(&self) -> &Self {
        for line in self.stderr.lines() {
            let mut seen: Vec<&str> = Vec::new();
            for part in line
                .split([':', ';'])
                .map(str::trim)
                .filter(|p| p.len() >= 8)
            {
                assert!(!seen.contains(&part), "{part:?} is said twice in: {line}");
                seen.push(part);
            }
            assert!(
                line.matches("(os error").count() <= 1,
                "an OS error is quoted twice: {line}"
            );
        }
        self
    }

    /// Panics unless the status is `status` and stderr says each of
    /// `says`, each thing once ([`Output::expect_said_once`]).
    #[track_caller]
    pub fn expect_refusal(&self, status: u8, says: &[&str]) -> &Self {
        self.expect_status(i32::from(status));
        for s in says {
            self.expect_stderr(s);
        }
        self.expect_said_once()
    }
}

/// A `duet` command with the given arguments.
pub fn duet_cmd<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Command {
    let mut c = Command::new(&paths().bin);
    c.args(args)
        .stdin(Stdio::null())
        .env_remove("DUET_KVM_DEVICE");
    c
}

/// Runs `duet` with `args`, killing it after `timeout`.
pub fn run_cmd(mut cmd: Command, timeout: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn duet");
    wait_output(child, timeout)
}

/// Waits for a spawned child with piped stdout/stderr, killing it after `timeout`.
pub fn wait_output(mut child: Child, timeout: Duration) -> Output {
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let st = child.wait().expect("wait");
            let o = Output {
                status: st.code(),
                stdout: t_out.join().unwrap(),
                stderr: t_err.join().unwrap(),
            };
            panic!("duet did not finish within {timeout:?}; output:\n{o:#?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Output {
        status: status.code(),
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// Runs `duet` with `args` (60 s timeout).
pub fn duet<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    run_cmd(duet_cmd(args), Duration::from_secs(60))
}

/// Boots example app `app` with monitor options `opts` and guest args `args`.
pub fn boot(app: &str, opts: &[&str], args: &[&str]) -> Output {
    let img = image(app);
    let mut v: Vec<&str> = vec!["run", img.to_str().unwrap()];
    v.extend_from_slice(opts);
    if !args.is_empty() {
        v.push("--");
        v.extend_from_slice(args);
    }
    duet(&v)
}

/// Panics unless the test runs as root, naming what needs it: a missing
/// prerequisite fails a test, it never passes it unrun.
#[track_caller]
pub fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root ({what}); run the suite as root, as `cargo xtask test` does"
    );
}

/// The monitor's documented exit statuses.
pub use duet_monitor::contract::status;

/// Little-endian field access into an ELF64 file, for crafting bad images.
pub mod elf {
    /// Reads a `u16` at `off`.
    pub fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }
    /// Reads a `u64` at `off`.
    pub fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }
    /// Writes a `u16` at `off`.
    pub fn set_u16(b: &mut [u8], off: usize, v: u16) {
        b[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    /// Writes a `u32` at `off`.
    pub fn set_u32(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    /// Writes a `u64` at `off`.
    pub fn set_u64(b: &mut [u8], off: usize, v: u64) {
        b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
    /// File offsets of the program headers of type PT_LOAD.
    pub fn load_headers(b: &[u8]) -> Vec<usize> {
        let phoff = u64_at(b, 0x20) as usize;
        let entsize = u16_at(b, 0x36) as usize;
        let n = u16_at(b, 0x38) as usize;
        (0..n)
            .map(|i| phoff + i * entsize)
            .filter(|&o| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) == 1)
            .collect()
    }
    /// Offset of `p_vaddr` in a program header.
    pub const P_VADDR: usize = 16;
    /// Offset of `p_filesz` in a program header.
    pub const P_FILESZ: usize = 32;
    /// Offset of `p_memsz` in a program header.
    pub const P_MEMSZ: usize = 40;
    /// Offset of `p_flags` in a program header.
    pub const P_FLAGS: usize = 4;
}

/// A monitor running in the background whose stdout is watched line by line.
pub struct Running {
    /// The monitor process.
    pub child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every stdout line seen so far.
    pub seen: Vec<String>,
}

impl Running {
    /// Starts `duet` with `args`, stdout piped, stderr inherited.
    pub fn start<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Running {
        Running::spawn(duet_cmd(args))
    }

    /// Starts a prepared command, stdout piped.
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn duet");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a stdout line containing `pat`; panics after `timeout`.
    pub fn wait_line(&mut self, pat: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(pat) {
                        return l;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "no line containing {pat:?} within {timeout:?}; saw {:?}",
                        self.seen
                    );
                }
            }
        }
    }

    /// Waits for the process to exit; returns its status code.
    pub fn wait(mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "monitor did not exit within {timeout:?}; saw {:?}",
                    self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// User + system CPU time of process `pid`, from /proc (clock ticks → ms).
pub fn cpu_time_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 * 1000.0 / hz
}

/// Resident set size of process `pid` in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

/// A `duet` started in the background whose stdout is collected as it comes.
pub struct Background {
    child: Child,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    err_reader: Option<std::thread::JoinHandle<String>>,
}

impl Background {
    /// Starts `duet` with `args`.
    pub fn start<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Background {
        Background::spawn(duet_cmd(args))
    }

    /// Starts `args[0]` with the rest as arguments (e.g. `ip netns exec NS duet ...`).
    pub fn start_program<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Background {
        let mut c = Command::new(&args[0]);
        c.args(&args[1..])
            .stdin(Stdio::null())
            .env_remove("DUET_KVM_DEVICE");
        Background::spawn(c)
    }

    /// Starts a prepared command (e.g. one that drops privileges first).
    pub fn spawn(mut cmd: Command) -> Background {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn duet");
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let s2 = stdout.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s2.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Background {
            child,
            stdout,
            reader: Some(reader),
            err_reader: Some(err_reader),
        }
    }

    /// The monitor's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends signal `sig` to the monitor.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({sig}) failed");
    }

    /// What the guest printed so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits (up to 60 s) until stdout contains `s`.
    #[track_caller]
    pub fn wait_for(&self, s: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.stdout().contains(s) {
            assert!(
                Instant::now() < deadline,
                "no {s:?} in stdout: {}",
                self.stdout()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the monitor has ended.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Kills the monitor (SIGKILL, as `kill -9`) and waits for it.
    pub fn kill(mut self) -> Output {
        let _ = self.child.kill();
        self.finish()
    }

    /// Waits (up to 60 s) for the monitor to end.
    pub fn finish(mut self) -> Output {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("duet did not finish; stdout so far:\n{}", self.stdout());
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        self.reader.take().unwrap().join().unwrap();
        Output {
            status: status.code(),
            stdout: self.stdout(),
            stderr: self.err_reader.take().unwrap().join().unwrap(),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // A test that failed half-way must not leave a guest spinning.
        let _ = self.child.kill();
    }
}

/// A fresh, empty temporary directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("duet-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Waits (up to 60 s) until `path` exists.
pub fn wait_path(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
