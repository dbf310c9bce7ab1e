//! An application crate outside the repository becomes an image with
//! `cargo xtask build --manifest-path`, as the README documents.

use duet_tests::{duet, root};
use std::process::Command;

#[test]
fn external_app_builds_and_boots() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("greeter");
    std::fs::create_dir_all(app.join("src")).unwrap();
    std::fs::write(
        app.join("Cargo.toml"),
        format!(
            "[package]\nname = \"greeter\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nduet = {{ path = {:?} }}\n\n[profile.release]\npanic = \"abort\"\n[profile.dev]\npanic = \"abort\"\n",
            root().join("unikernel")
        ),
    )
    .unwrap();
    std::fs::write(
        app.join("src/main.rs"),
        "#![no_std]\n#![no_main]\nduet::main!(main);\nfn main() -> i32 {\n    duet::println!(\"greetings from outside, {}\", duet::env::args().next().unwrap_or(\"?\"));\n    7\n}\n",
    )
    .unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args([
            "run",
            "--quiet",
            "-p",
            "xtask",
            "--",
            "build",
            "--manifest-path",
        ])
        .arg(app.join("Cargo.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "xtask build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let image = stdout
        .lines()
        .find_map(|l| l.strip_prefix("image: "))
        .expect("xtask prints the image path");
    duet(&["run", image, "--", "friend"])
        .expect_status(7)
        .expect_stdout("greetings from outside, friend");
}
