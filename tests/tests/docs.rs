//! The documentation cannot drift from the code (with doc_examples.rs,
//! which runs the documents' examples). Every code block of README.md and
//! docs/*.md is read from the documents at test time and is of a kind the
//! two check: `sh` and `console` blocks are run (doc_examples.rs), `text`
//! blocks are diagrams and sample figures, and untagged blocks are usage
//! synopses, checked here: each line is expanded into command lines (every
//! optional part present, and none) that `duet` must accept (run with a KVM
//! node that does not exist, so nothing boots; a TAP, if named, is made in
//! a network namespace of its own), and the README's synopses must name
//! every command and every option `duet COMMAND --help` lists.

use duet_tests::docs::{self, Block};
use duet_tests::{image, paths, require_root, run_cmd, temp_dir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn all_blocks() -> Vec<Block> {
    docs::files().iter().flat_map(|f| docs::blocks(f)).collect()
}

#[test]
fn every_code_block_is_of_a_kind_these_tests_check() {
    for b in all_blocks() {
        match b.lang.as_str() {
            "sh" | "console" | "text" => {}
            // Engine configuration (containerd, Kubernetes) in docs/oci.md:
            // configuration for other programs, not commands.
            "toml" | "yaml" if b.file == "docs/oci.md" => {}
            "rust" | "toml" => assert_eq!(
                b.file,
                "README.md",
                "{}: only the README's app example is Rust or TOML (the README's console example builds it)",
                b.at()
            ),
            "" => {
                for l in docs::logical_lines(&b.text) {
                    assert!(
                        l.starts_with("duet "),
                        "{}: an untagged block is a usage synopsis of `duet ...` lines; tag other blocks `sh`, `console` or `text`: {l:?}",
                        b.at()
                    );
                }
            }
            other => panic!("{}: code blocks are sh, console, text, rust, toml (yaml in docs/oci.md) or untagged (a synopsis), not {other:?}", b.at()),
        }
    }
}

/// Files and values standing in for a synopsis's placeholders.
struct Fill {
    tmp: PathBuf,
    disk: PathBuf,
    fifo: PathBuf,
    key: PathBuf,
}

impl Fill {
    fn new(tmp: &Path) -> Fill {
        let disk = tmp.join("disk.img");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let fifo = tmp.join("start.fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let key = tmp.join("key");
        std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
        Fill {
            tmp: tmp.to_path_buf(),
            disk,
            fifo,
            key,
        }
    }

    /// A synopsis's words with the placeholders replaced; panics on a
    /// placeholder it does not know (so a new one is given a value here).
    fn fill(&self, argv: &[String], at: &str) -> Vec<String> {
        let p = |p: &Path| p.to_str().unwrap().to_string();
        let mut out: Vec<String> = Vec::new();
        for w in argv {
            let prev = out.last().map(String::as_str).unwrap_or("");
            let v = match (prev, w.as_str()) {
                ("--kvm-device", "PATH") => "/nonexistent/kvm".into(),
                (_, "IMAGE") => p(&image("hello")),
                (_, "SIZE") => "64M".into(),
                (_, "K=V" | "KEY=VALUE") => "A=B".into(),
                (_, "PATH") => p(&self.disk),
                (_, "NAME") => "doc-template".into(),
                (_, "DIR") => p(&self.tmp.join("no-such-dir")),
                (_, "SOCKET") => p(&self.tmp.join("no.sock")),
                (_, "N") => "2".into(),
                (_, "SECS") => "1".into(),
                (_, "MS") => "5".into(),
                (_, "FIFO") => p(&self.fifo),
                (_, "ADDR:PORT") => "127.0.0.1:9".into(),
                (_, "KEY") => p(&self.key),
                (_, "ARGS") => "x".into(),
                (_, "PREFIX") => "doc-clone".into(),
                (_, w) => w
                    .replace("PATH", &p(&self.disk))
                    .replace("NAME", "doc0")
                    .replace("MAC", "02:00:00:00:00:01"),
            };
            let left = v
                .split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                .find(|s| s.len() >= 2);
            assert!(
                left.is_none(),
                "{at}: placeholder {left:?} in {w:?} has no value in tests/tests/docs.rs"
            );
            out.push(v);
        }
        out
    }
}

/// The subcommand a synopsis line documents (`run`, `ctl migrate`,
/// `template create`, ...).
fn subcommand(line: &str) -> String {
    let w: Vec<&str> = line.split_whitespace().collect();
    match w[1] {
        "template" => format!("template {}", w[2]),
        "ctl" if w.contains(&"migrate") => "ctl migrate".into(),
        other => other.into(),
    }
}

/// `duet ARGS` (the monitor under test), stdout and stderr captured.
fn duet_help(args: &[&str]) -> String {
    let o = duet_tests::duet(args);
    o.expect_status(0);
    o.stdout
}

/// The long options `help` (a `--help` output) lists, help and version
/// aside.
fn options_in_help(help: &str) -> Vec<String> {
    help.lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .filter_map(|l| docs::long_options(l).into_iter().next())
        .filter(|o| o != "--help" && o != "--version")
        .collect()
}

/// The subcommands a `--help` output lists, `help` aside.
fn commands_in_help(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn every_synopsis_is_a_command_line_duet_accepts_and_the_readme_names_every_option() {
    let tmp = temp_dir("docs-synopsis");
    let fill = Fill::new(&tmp);
    let mut readme: Vec<(String, Vec<String>)> = Vec::new();
    for b in all_blocks().into_iter().filter(|b| b.lang.is_empty()) {
        for line in docs::logical_lines(&b.text) {
            if b.file == "README.md" {
                let key = subcommand(&line);
                match readme.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.extend(docs::long_options(&line)),
                    None => readme.push((key, docs::long_options(&line))),
                }
            }
            for argv in docs::expand(&line) {
                let args = fill.fill(&argv[1..], &b.at());
                // A TAP is made (before KVM is opened) in a namespace that
                // ends with the command.
                let mut cmd = if args.iter().any(|a| a == "--net") {
                    require_root(
                        "a synopsis with --net makes a TAP in a private network namespace",
                    );
                    let mut c = Command::new("unshare");
                    c.args(["--net", "--"]).arg(&paths().bin);
                    c
                } else {
                    Command::new(&paths().bin)
                };
                cmd.args(&args)
                    .env("DUET_KVM_DEVICE", "/nonexistent/kvm")
                    .stdin(std::process::Stdio::null());
                let o = run_cmd(cmd, Duration::from_secs(30));
                assert!(
                    matches!(o.status, Some(0 | 125)) && !o.stderr.contains("Usage:"),
                    "{}: `duet {}` (from the synopsis `{line}`) is not a command line duet accepts:\n{o:#?}",
                    b.at(),
                    args.join(" ")
                );
            }
        }
    }
    // The README's synopses name every command and every option.
    let named = |key: &str| readme.iter().any(|(k, _)| k == key);
    for c in commands_in_help(&duet_help(&["--help"])) {
        match c.as_str() {
            "template" => {
                for t in commands_in_help(&duet_help(&["template", "--help"])) {
                    assert!(
                        named(&format!("template {t}")),
                        "README.md's synopsis lacks `duet template {t}`"
                    );
                }
            }
            "ctl" => {
                let ctl: Vec<&String> = readme
                    .iter()
                    .map(|(k, _)| k)
                    .filter(|k| k.starts_with("ctl"))
                    .collect();
                assert!(!ctl.is_empty(), "README.md's synopsis lacks `duet ctl`");
                let text = docs::read("README.md");
                for a in commands_in_help(&duet_help(&["ctl", "S", "--help"])) {
                    assert!(
                        text.lines().any(|l| l.starts_with("duet ctl SOCKET")
                            && l.split_whitespace().any(|w| w == a)),
                        "README.md's synopsis lacks `duet ctl SOCKET {a}`"
                    );
                }
            }
            c => assert!(named(c), "README.md's synopsis lacks `duet {c}`"),
        }
    }
    for (key, opts) in &readme {
        let help_args: Vec<&str> = match key.as_str() {
            "ctl" => continue,
            "ctl migrate" => vec!["ctl", "S", "migrate", "--help"],
            k => k.split(' ').chain(["--help"]).collect(),
        };
        let mut want = options_in_help(&duet_help(&help_args));
        want.sort();
        let mut have = opts.clone();
        have.sort();
        have.dedup();
        assert_eq!(
            have, want,
            "README.md's synopsis of `duet {key}` (left) and `duet {key} --help` (right) name different options"
        );
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}
