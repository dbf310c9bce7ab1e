//! `cargo xtask`: build unikernel images, run them, test and benchmark Duet.
//!
//! Guest images build for `x86_64-unknown-none` in their own workspace
//! (`unikernel/`), with link flags taken from `duet-abi` so the image base
//! is written once.

mod bench;
mod build;
mod debug;
mod fuzz;
mod image;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Duet's build tool.
#[derive(Parser)]
#[command(name = "cargo xtask", about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build unikernel images (all example apps when none are named) and the monitor.
    Build {
        /// Example apps of the `duet` crate to build (e.g. hello args).
        apps: Vec<String>,
        /// Build the application crate at this Cargo.toml instead (an app outside this repo).
        #[arg(long)]
        manifest_path: Option<PathBuf>,
        /// Build the images with full debug info and no optimisation (the
        /// `gdb` profile) into their own directory, for GDB.
        #[arg(long, conflicts_with = "manifest_path")]
        debug: bool,
    },
    /// Debug APP in GDB: build it with debug info, start the monitor waiting
    /// for GDB on a free loopback port, and attach GDB with the image's
    /// symbols: `cargo xtask debug args [--mem 128M] [-- ARGS]`.
    Debug {
        /// The example app.
        app: String,
        /// Options for `duet run`.
        #[arg(allow_hyphen_values = true, value_terminator = "--")]
        opts: Vec<String>,
        /// Arguments for the guest, after `--`.
        #[arg(allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build APP and boot it with the monitor: `cargo xtask run hello [--mem 128M] [-- ARGS]`.
    Run {
        /// The example app.
        app: String,
        /// Options for `duet run` (e.g. --mem 128M --disk PATH).
        #[arg(allow_hyphen_values = true, value_name = "DUET_OPTIONS")]
        opts: Vec<String>,
        /// Arguments for the guest, after `--`.
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Print the RUSTFLAGS a guest image is built with.
    Rustflags,
    /// Build APP and the monitor, and import APP as a local OCI image for
    /// `podman run --runtime target/release/duet-runtime` (see docs/oci.md).
    Image {
        /// The example app.
        app: String,
        /// The image's name (default `duet-APP`, i.e. localhost/duet-APP:latest).
        #[arg(long)]
        tag: Option<String>,
        /// Write the root-filesystem tarball here instead of importing it.
        #[arg(long, value_name = "PATH")]
        tar: Option<PathBuf>,
    },
    /// Benchmark boot, hypercalls, the clock, block and network I/O, each
    /// beside a floor measured in the same run:
    /// `cargo xtask bench [boot|hypercall|clock|block|net|kvd|snapshot|migrate|framepointers|qemu|all] [--runs N] [--json PATH]`.
    Bench(bench::BenchArgs),
    /// Fuzz the monitor's parsers of untrusted input with libFuzzer
    /// (cargo-fuzz on nightly, both installed if missing), every target in
    /// turn unless one is named: `cargo xtask fuzz [TARGET] [--time S] [--runs N]`.
    Fuzz(fuzz::FuzzArgs),
    /// Build every image, then run every test (unit and end-to-end), then
    /// the benchmark and fuzz smoke passes.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(allow_hyphen_values = true, trailing_var_arg = true)]
        rest: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Build {
            apps,
            manifest_path,
            debug,
        } => {
            match manifest_path {
                Some(m) => {
                    let img = build::external_app(&m)?;
                    println!("image: {}", img.display());
                }
                None if debug => {
                    build::debug_images(&apps)?;
                    println!("images in {}", build::debug_images_dir().display());
                }
                None => {
                    build::images(&apps)?;
                    println!("images in {}", build::images_dir().display());
                }
            }
            build::monitor()?;
            Ok(())
        }
        Cmd::Run { app, opts, args } => {
            build::images(std::slice::from_ref(&app))?;
            let duet = build::monitor()?;
            let status = std::process::Command::new(duet)
                .arg("run")
                .arg(build::images_dir().join(&app))
                .args(duet_args(opts, args))
                .status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Debug { app, opts, args } => debug::run(&app, &opts, &args),
        Cmd::Rustflags => {
            println!("{}", build::guest_rustflags());
            Ok(())
        }
        Cmd::Image { app, tag, tar } => {
            build::monitor()?;
            image::image(&app, tag.as_deref(), tar.as_deref())
        }
        Cmd::Bench(a) => bench::run(&a),
        Cmd::Fuzz(a) => fuzz::main(&a),
        Cmd::Test { rest } => test::test(&rest),
    }
}

/// `duet run` options and guest arguments as `cargo xtask run APP ...` got
/// them: clap hands over `-- ARGS` in `args` when `--` comes first, but
/// inside `opts` (with the `--`) once an option came before it.
fn duet_args(opts: Vec<String>, args: Vec<String>) -> Vec<String> {
    let (mut out, mut guest) = match opts.iter().position(|a| a == "--") {
        Some(i) => (opts[..i].to_vec(), opts[i + 1..].to_vec()),
        None => (opts, Vec::new()),
    };
    guest.extend(args);
    if !guest.is_empty() {
        out.push("--".into());
        out.extend(guest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Vec<String> {
        let argv = ["cargo xtask"].into_iter().chain(line.split_whitespace());
        match Cli::try_parse_from(argv).unwrap().command {
            Cmd::Run { opts, args, .. } => duet_args(opts, args),
            _ => panic!("not a run"),
        }
    }

    #[test]
    fn run_hands_options_and_guest_arguments_to_duet() {
        assert_eq!(parse("run kv -- list"), ["--", "list"]);
        assert_eq!(parse("run hello"), Vec::<String>::new());
        assert_eq!(parse("run hello --mem 128M"), ["--mem", "128M"]);
        assert_eq!(
            parse("run kv --disk /tmp/kv.img -- put colour blue"),
            ["--disk", "/tmp/kv.img", "--", "put", "colour", "blue"]
        );
        assert_eq!(
            parse("run args -- --flag -- x"),
            ["--", "--flag", "--", "x"]
        );
    }
}
