//! Helpers for the debugger tests: images with debug info, the real GDB in
//! batch mode, and a monitor whose stderr is read line by line (it prints
//! the address GDB connects to there).

use crate::{duet_cmd, paths, root};
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The image of example app `name` built with debug info (the `gdb`
/// profile): `cargo xtask test` passes `DUET_DEBUG_IMAGES`; a plain
/// `cargo test` builds them on first use.
pub fn debug_image(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("DUET_DEBUG_IMAGES") {
            return d.into();
        }
        let _ = paths();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let st = Command::new(cargo)
            .current_dir(root())
            .args([
                "run", "--quiet", "-p", "xtask", "--", "build", "--debug", "args", "counter",
            ])
            .status()
            .expect("run cargo xtask build --debug");
        assert!(st.success(), "cargo xtask build --debug failed");
        root().join("unikernel/target/x86_64-unknown-none/gdb/examples")
    })
    .join(name)
}

/// Panics unless `gdb` runs: the debugger tests need the real one.
#[track_caller]
pub fn require_gdb() {
    let ok = Command::new("gdb")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "these tests need gdb: install it (`apt-get install gdb`), as `cargo xtask test` does"
    );
}

/// GDB in batch mode: no init files, `cmds` run in order against `image`
/// (and `core`, if given).
pub fn gdb_cmd(image: &std::path::Path, core: Option<&std::path::Path>, cmds: &[&str]) -> Command {
    let mut c = Command::new("gdb");
    c.args(["-batch", "-nx"]).stdin(Stdio::null());
    for cmd in cmds {
        c.args(["-ex", cmd]);
    }
    c.arg(image);
    if let Some(core) = core {
        c.arg(core);
    }
    c
}

/// Runs GDB in batch mode and returns everything it printed (stdout and
/// stderr together, as a user sees them).
pub fn gdb(image: &std::path::Path, core: Option<&std::path::Path>, cmds: &[&str]) -> String {
    let out = crate::run_cmd(gdb_cmd(image, core, cmds), Duration::from_secs(60));
    format!("{}{}", out.stdout, out.stderr)
}

/// A monitor (or GDB) started in the background; both its outputs are
/// collected as they come.
pub struct Monitor {
    /// The process.
    pub child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
}

fn collect(mut r: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(&mut r);
        let mut line = String::new();
        while r.read_line(&mut line).is_ok_and(|n| n > 0) {
            into.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
}

impl Monitor {
    /// Starts `duet` with `args`.
    pub fn start<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Monitor {
        Monitor::spawn(duet_cmd(args))
    }

    /// Starts `cmd`.
    pub fn spawn(mut cmd: Command) -> Monitor {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let (out, err) = (Arc::default(), Arc::default());
        collect(child.stdout.take().unwrap(), Arc::clone(&out));
        collect(child.stderr.take().unwrap(), Arc::clone(&err));
        Monitor { child, out, err }
    }

    /// What the guest printed so far.
    pub fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// What the monitor printed so far.
    pub fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Waits (up to 60 s) until `f` holds for (stdout, stderr).
    #[track_caller]
    pub fn wait_until(&self, what: &str, f: impl Fn(&str, &str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !f(&self.stdout(), &self.stderr()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; stdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The address the monitor waits for GDB on (`--gdb`).
    #[track_caller]
    pub fn gdb_addr(&self) -> String {
        self.wait_until("the GDB address", |_, e| {
            e.contains("GDB") && e.contains("127.0.0.1:")
        });
        addr_in(&self.stderr()).expect("an address")
    }

    /// The last `count N` the counter printed.
    pub fn last_count(&self) -> Option<u64> {
        self.stdout()
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("count ")?.trim().parse().ok())
    }

    /// Waits (up to 60 s) for the monitor to end; returns its status.
    #[track_caller]
    pub fn finish(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                // Let the readers drain.
                std::thread::sleep(Duration::from_millis(50));
                return st.code();
            }
            assert!(
                Instant::now() < deadline,
                "duet did not finish; stdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first `127.0.0.1:PORT` in `s`.
pub fn addr_in(s: &str) -> Option<String> {
    let at = s.find("127.0.0.1:")?;
    let rest = &s[at..];
    let end = rest
        .char_indices()
        .skip("127.0.0.1:".len())
        .find(|(_, c)| !c.is_ascii_digit())
        .map_or(rest.len(), |(i, _)| i);
    Some(rest[..end].to_string())
}

/// The line number of the first line of `file` (under `unikernel/`)
/// containing `pat`, for `break FILE:LINE`.
pub fn line_of(file: &str, pat: &str) -> usize {
    let text = std::fs::read_to_string(root().join("unikernel").join(file)).expect("read source");
    text.lines()
        .position(|l| l.contains(pat))
        .unwrap_or_else(|| panic!("{pat:?} is not in {file}"))
        + 1
}

/// Function names of the last GDB backtrace in `out` (`#N  0x... in NAME
/// (...)`), innermost first. (GDB also prints the frame it stops in, which
/// looks like a backtrace's first line: only the last run from `#0` counts.)
pub fn frames(out: &str) -> Vec<String> {
    let lines: Vec<&str> = out.lines().collect();
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("#0 "))
        .unwrap_or(0);
    lines[start..]
        .iter()
        .copied()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| {
            let l = l.split_once(" in ").map_or(l, |(_, r)| r);
            let l = l.trim_start_matches(|c: char| c == '#' || c.is_ascii_digit() || c == ' ');
            Some(l.split([' ', '(']).next()?.to_string())
        })
        .collect()
}
