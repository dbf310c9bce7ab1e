//! `cargo xtask`: build unikernel images, run them, test and benchmark Duet.
//!
//! Guest images build for `x86_64-unknown-none` in their own workspace
//! (`unikernel/`), with link flags taken from `duet-abi` so the image base
//! is written once.

mod bench;
mod build;
mod debug;
mod image;

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
        /// Options for `duet run` (before `--`) and arguments for the guest (after `--`).
        #[arg(allow_hyphen_values = true, trailing_var_arg = true)]
        rest: Vec<String>,
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
    /// `cargo xtask bench [boot|hypercall|clock|block|net|snapshot|migrate|framepointers|qemu|all] [--runs N] [--json PATH]`.
    Bench(bench::BenchArgs),
    /// Build every image, then run every test (unit and end-to-end).
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
        Cmd::Run { app, rest } => {
            build::images(std::slice::from_ref(&app))?;
            let duet = build::monitor()?;
            let (opts, args) = match rest.iter().position(|a| a == "--") {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (&rest[..], &[][..]),
            };
            let status = std::process::Command::new(duet)
                .arg("run")
                .arg(build::images_dir().join(&app))
                .args(opts)
                .args(args)
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
        Cmd::Test { rest } => build::test(&rest),
    }
}
