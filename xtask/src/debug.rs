//! `cargo xtask debug APP [OPTIONS] [-- ARGS]`: build APP with debug info,
//! start the monitor waiting for GDB on a free loopback port, and start GDB
//! attached to it with the image's symbols.

use crate::build;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// What the monitor prints once it listens (see `duet run --gdb`).
const READY: &str = "waiting for GDB on ";

pub fn run(app: &str, opts: &[String], args: &[String]) -> Result<()> {
    if Command::new("gdb")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        bail!("gdb is not installed; install it (`apt-get install gdb`)");
    }
    build::debug_images(&[app.to_string()])?;
    let duet = build::monitor()?;
    let image = build::debug_images_dir().join(app);
    let mut monitor = Command::new(duet)
        .arg("run")
        .arg(&image)
        .args(["--gdb", "127.0.0.1:0"])
        .args(opts)
        .arg("--")
        .args(args)
        .stderr(Stdio::piped())
        // Its own process group: Ctrl-C in GDB interrupts the guest through
        // GDB, instead of stopping the monitor.
        .process_group(0)
        .spawn()
        .context("cannot start the monitor")?;
    let mut stderr = BufReader::new(monitor.stderr.take().expect("piped"));
    let mut addr = None;
    let mut line = String::new();
    while stderr.read_line(&mut line)? > 0 {
        eprint!("{line}");
        if let Some(rest) = line.split(READY).nth(1) {
            addr = rest.split_whitespace().next().map(str::to_string);
            break;
        }
        line.clear();
    }
    let Some(addr) = addr else {
        let st = monitor.wait()?;
        bail!("the monitor ended ({st}) before listening for GDB");
    };
    // The monitor's later messages (its report, the exit status) go on.
    std::thread::spawn(move || {
        for l in stderr.lines().map_while(Result::ok) {
            let _ = writeln!(std::io::stderr(), "{l}");
        }
    });
    // SAFETY: ignoring SIGINT has no preconditions; GDB handles Ctrl-C.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let gdb = Command::new("gdb")
        .arg("-q")
        .arg(&image)
        .args(["-ex", &format!("target remote {addr}")])
        .status()
        .context("cannot start gdb")?;
    // GDB kills the guest when it quits, or detaches; a guest that still
    // runs a moment later is stopped (SIGTERM) rather than orphaned.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let status = loop {
        if let Some(st) = monitor.try_wait()? {
            break st;
        }
        if std::time::Instant::now() > deadline {
            eprintln!("xtask debug: GDB is gone and the guest still runs; stopping it");
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(monitor.id() as libc::pid_t, libc::SIGTERM) };
            break monitor.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !gdb.success() {
        bail!("gdb exited with {gdb}");
    }
    std::process::exit(status.code().unwrap_or(1));
}
