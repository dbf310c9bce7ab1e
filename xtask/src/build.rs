//! Building images and the monitor.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest target.
pub const TARGET: &str = "x86_64-unknown-none";

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// A `cargo` command (the one running xtask).
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs `cmd`; an error unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Where example-app images land.
pub fn images_dir() -> PathBuf {
    root()
        .join("unikernel/target")
        .join(TARGET)
        .join("release/examples")
}

/// The guest's profile for debugging (`unikernel/Cargo.toml`): full debug
/// info, no optimisation.
pub const DEBUG_PROFILE: &str = "gdb";

/// Where images built with [`DEBUG_PROFILE`] land.
pub fn debug_images_dir() -> PathBuf {
    root()
        .join("unikernel/target")
        .join(TARGET)
        .join(DEBUG_PROFILE)
        .join("examples")
}

/// Installs the guest target with rustup if it is missing.
pub fn ensure_target() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match out {
        Ok(o)
            if String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET) =>
        {
            Ok(())
        }
        Ok(_) => run(Command::new("rustup").args(["target", "add", TARGET])),
        // No rustup: trust that the toolchain has the target; cargo says so if not.
        Err(_) => Ok(()),
    }
}

/// Flags every Duet image is built with: a static (non-PIE) executable at
/// the ABI's image base, one page per segment so each gets its own
/// protection, and frame pointers so the monitor can print a backtrace
/// when the guest faults or panics.
pub fn guest_rustflags() -> String {
    format!(
        "-C relocation-model=static -C link-arg=--image-base={:#x} -C link-arg=-zmax-page-size=4096 -C link-arg=-zseparate-loadable-segments{FRAME_POINTERS}",
        duet_abi::boot::IMAGE_BASE
    )
}

/// The frame-pointer flag in [`guest_rustflags`].
const FRAME_POINTERS: &str = " -C force-frame-pointers=yes";

fn guest_cargo(dir: &Path, profile: &str) -> Command {
    guest_cargo_with(dir, profile, &guest_rustflags())
}

fn guest_cargo_with(dir: &Path, profile: &str, rustflags: &str) -> Command {
    let mut c = cargo();
    c.current_dir(dir)
        .env("CARGO_TARGET_X86_64_UNKNOWN_NONE_RUSTFLAGS", rustflags)
        // The host workspace's flags must not leak into the guest build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args(["build", "--profile", profile, "--target", TARGET]);
    c
}

/// Builds the named example apps (all when empty).
pub fn images(apps: &[String]) -> Result<()> {
    images_with(apps, "release")
}

/// Builds the named example apps (all when empty) with the debugging
/// profile, into [`debug_images_dir`].
pub fn debug_images(apps: &[String]) -> Result<()> {
    images_with(apps, DEBUG_PROFILE)
}

/// Builds the named example apps without frame pointers, in a target
/// directory of their own (for `cargo xtask bench framepointers`); returns
/// where the images are.
pub fn images_without_frame_pointers(apps: &[&str]) -> Result<PathBuf> {
    ensure_target()?;
    let flags = guest_rustflags().replace(FRAME_POINTERS, "");
    let target_dir = root().join("unikernel/target/no-frame-pointers");
    let mut c = guest_cargo_with(&root().join("unikernel"), "release", &flags);
    c.arg("--target-dir").arg(&target_dir).arg("--quiet");
    for a in apps {
        c.args(["--example", a]);
    }
    run(&mut c).context("building images without frame pointers")?;
    Ok(target_dir.join(TARGET).join("release/examples"))
}

fn images_with(apps: &[String], profile: &str) -> Result<()> {
    ensure_target()?;
    let mut c = guest_cargo(&root().join("unikernel"), profile);
    if apps.is_empty() {
        c.arg("--examples");
    }
    for a in apps {
        c.args(["--example", a]);
    }
    run(&mut c).context("building unikernel images")
}

/// Builds an application crate outside this repository; returns its image.
pub fn external_app(manifest: &Path) -> Result<PathBuf> {
    ensure_target()?;
    let dir = manifest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut c = guest_cargo(dir, "release");
    c.arg("--manifest-path").arg(manifest);
    run(&mut c).context("building the application")?;
    let text = std::fs::read_to_string(manifest)?;
    let name = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("name")
                .map(|r| r.trim_start_matches([' ', '=']).trim_matches('"'))
        })
        .context("no package name in Cargo.toml")?;
    Ok(dir.join("target").join(TARGET).join("release").join(name))
}

/// Builds the release monitor; returns its path.
pub fn monitor() -> Result<PathBuf> {
    build_monitor(&[], None)?;
    Ok(root().join("target/release/duet"))
}

/// Builds `duet-monitor` with `features` into `target_dir` (default
/// `target/`): the library and `duet-runtime` as usual, and `duet` linked
/// static-pie. A static `duet` starts without the dynamic loader, symbol
/// lookups and libgcc_s's constructor (whose `cpuid`s each exit to the outer
/// hypervisor here): ~0.2 ms of a 2.4 ms `duet run hello` (measured). The
/// flag goes to the final crate only (`cargo rustc`): as a global RUSTFLAGS
/// it would also reach proc-macros, which cannot be static.
fn build_monitor(features: &[&str], target_dir: Option<&Path>) -> Result<()> {
    let common = |c: &mut Command| {
        c.current_dir(root())
            .args(["--release", "--quiet", "-p", "duet-monitor"]);
        for f in features {
            c.args(["--features", f]);
        }
        if let Some(d) = target_dir {
            c.arg("--target-dir").arg(d);
        }
    };
    let mut lib = cargo();
    lib.arg("build");
    common(&mut lib);
    run(lib.args(["--lib", "--bin", "duet-runtime"]))?;
    let mut duet = cargo();
    duet.arg("rustc");
    common(&mut duet);
    run(duet.args(["--bin", "duet", "--", "-C", "target-feature=+crt-static"]))
}

/// Builds the monitor the tests run: the release build plus the
/// failure-injection hooks (`--features test-hooks`), in its own target
/// directory so the release binary never has them and neither build
/// invalidates the other. Returns its path.
pub fn test_monitor() -> Result<PathBuf> {
    let dir = root().join("target/test-hooks");
    build_monitor(&["test-hooks"], Some(&dir))?;
    Ok(dir.join("release/duet"))
}
