//! `cargo xtask test`: installs the suite's host tools, builds the images
//! and both monitors, runs every host test, then the benchmark and fuzzing
//! smoke passes.

use crate::build::{self, cargo, run};
use anyhow::{Context, Result};
use std::process::Command;

/// The example apps the debugger tests run with debug info.
const DEBUG_TEST_APPS: &[&str] = &["args", "counter"];

/// Builds everything, then runs every host test with the images in place.
pub fn test(extra: &[String]) -> Result<()> {
    ensure_tools(&[
        ("curl", "curl"),
        ("dnsmasq", "dnsmasq-base"),
        ("ab", "apache2-utils"),
        ("tc", "iproute2"),
        // The OCI runtime tests (tests/tests/oci_*.rs): the engines, runc
        // for non-Duet images, and criu, without which Podman refuses to
        // checkpoint (Duet's checkpoints do not use it).
        ("podman", "podman"),
        ("containerd", "containerd"),
        ("runc", "runc"),
        ("criu", "criu"),
        // The debugger tests (tests/tests/gdb.rs, coredump.rs).
        ("gdb", "gdb"),
        // The docs' examples (tests/tests/docs.rs runs them).
        ("socat", "socat"),
        ("ping", "iputils-ping"),
        ("redis-cli", "redis-tools"),
        ("redis-server", "redis-server"),
        // The least-privilege tests (tests/tests/unprivileged.rs) drop to
        // an unprivileged uid with it.
        ("setpriv", "util-linux"),
    ])?;
    build::images(&[])?;
    let debug_apps: Vec<String> = DEBUG_TEST_APPS.iter().map(|a| a.to_string()).collect();
    build::debug_images(&debug_apps)?;
    build::monitor()?;
    let duet = build::test_monitor()?;
    run(cargo()
        .current_dir(build::root())
        .env("DUET_IMAGES", build::images_dir())
        .env("DUET_DEBUG_IMAGES", build::debug_images_dir())
        .env("DUET_BIN", duet)
        // Every failing test binary is reported, not only the first.
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(extra))?;
    // Benchmarks are not tests: a smoke pass with tiny counts keeps the
    // harness from rotting; no figure is checked, but a section that fails
    // or cannot run fails the command.
    crate::bench::smoke()?;
    // Every fuzz target for a few seconds: the harness builds and runs,
    // and a crash fails the command.
    crate::fuzz::smoke()
}

/// Installs the test suite's host tools (program, Debian package) with
/// apt-get when a program is missing; a no-op when all are present.
fn ensure_tools(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(prog, _)| {
            Command::new(prog)
                .arg("--version")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_err()
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing test tools: {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing))
    .context(
        "installing test tools (the network, OCI, kvd and debugger tests and the docs' examples use them)",
    )
}
