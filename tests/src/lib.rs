//! Helpers for Duet's end-to-end tests: find (or build) the monitor and the
//! images once, run the monitor with a timeout, and capture what it printed.
//!
//! `cargo xtask test` builds everything first and passes `DUET_BIN` and
//! `DUET_IMAGES`; under a plain `cargo test` the first test builds them.

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
                let st = Command::new(cargo)
                    .current_dir(root())
                    .args(["run", "--quiet", "-p", "xtask", "--", "build"])
                    .status()
                    .expect("run cargo xtask build");
                assert!(st.success(), "cargo xtask build failed");
                Paths {
                    bin: root().join("target/release/duet"),
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

/// The monitor's documented exit statuses.
pub use duet_monitor::status;

/// A `duet` started in the background whose stdout is collected as it comes.
pub struct Running {
    child: Child,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    err_reader: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    /// Starts `duet` with `args`.
    pub fn start<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Running {
        Running::spawn(duet_cmd(args))
    }

    /// Starts `args[0]` with the rest as arguments (e.g. `ip netns exec NS duet ...`).
    pub fn start_program<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Running {
        let mut c = Command::new(&args[0]);
        c.args(&args[1..])
            .stdin(Stdio::null())
            .env_remove("DUET_KVM_DEVICE");
        Running::spawn(c)
    }

    fn spawn(mut cmd: Command) -> Running {
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
        Running {
            child,
            stdout,
            reader: Some(reader),
            err_reader: Some(err_reader),
        }
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

impl Drop for Running {
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
