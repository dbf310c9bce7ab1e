//! `cargo xtask image APP [--tag TAG] [--tar PATH]`: an example app as a
//! local OCI image for `duet-runtime`, with no registry. The image is a
//! tarball holding the guest ELF as `/APP`, imported with `podman import`
//! and `ENTRYPOINT ["/APP"]`; `--tar` writes the tarball only (for
//! `ctr`-only machines or other tools).

use crate::build;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `app`, makes its root-filesystem tarball and imports it.
pub fn image(app: &str, tag: Option<&str>, tar: Option<&Path>) -> Result<()> {
    if app.is_empty()
        || !app
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        bail!("`{app}` is not an example app name");
    }
    build::images(&[app.to_string()])?;
    let elf = build::images_dir().join(app);
    let work = std::env::temp_dir().join(format!("duet-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("rootfs"))?;
    let result = (|| {
        std::fs::copy(&elf, work.join("rootfs").join(app))
            .with_context(|| format!("copying {}", elf.display()))?;
        let tarball: PathBuf = match tar {
            Some(t) => std::path::absolute(t)?,
            None => work.join(format!("{app}.tar")),
        };
        // Owned by root and readable by all, whoever builds it.
        run(Command::new("tar")
            .args(["--owner=0", "--group=0", "--mode=a+rX", "-C"])
            .arg(work.join("rootfs"))
            .arg("-cf")
            .arg(&tarball)
            .arg(app))?;
        if tar.is_some() {
            println!("tarball: {} (entrypoint /{app})", tarball.display());
            return Ok(());
        }
        let tag = tag.map_or_else(|| format!("duet-{app}"), String::from);
        run(Command::new("podman")
            .arg("import")
            .arg("--change")
            .arg(format!("ENTRYPOINT [\"/{app}\"]"))
            .arg(&tarball)
            .arg(&tag))
        .context("importing the image (install podman, or use --tar PATH)")?;
        println!(
            "image: {tag}; run it with `podman run --runtime {} {tag}`",
            runtime_path().display()
        );
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn runtime_path() -> PathBuf {
    build::root().join("target/release/duet-runtime")
}

fn run(cmd: &mut Command) -> Result<()> {
    let st = cmd
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed with {st}");
    }
    Ok(())
}
