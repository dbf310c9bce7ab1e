//! The documentation cannot drift from the code. Every code block of
//! README.md and docs/*.md is read from the documents at test time:
//!
//! * untagged blocks are usage synopses: each line is expanded into command
//!   lines (every optional part present, and none) that `duet` must accept
//!   (run with a KVM node that does not exist, so nothing boots; a TAP, if
//!   named, is made in a network namespace of its own), and the README's
//!   synopses must name every option `duet COMMAND --help` lists;
//! * `sh` and `console` blocks are run as written from the repository root,
//!   with `duet` on `PATH`, `/tmp/` a private directory, fixed ports free
//!   ones and network namespaces private ones; `# prints "X"` comments and a
//!   console's shown output are checked against what the commands print.
//!   Only `cargo xtask test` (the suite itself) and `cargo xtask bench`
//!   (minutes; the suite runs its smoke pass) are checked by their help
//!   instead;
//! * `text` blocks are diagrams and sample figures, except sample
//!   `duet ctl ... migrate` output, checked against a real migration's.

use duet_tests::docs::{self, Block};
use duet_tests::{image, paths, require_root, root, run_cmd, temp_dir};
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
            other => panic!("{}: code blocks are sh, console, text, rust, toml or untagged (a synopsis), not {other:?}", b.at()),
        }
    }
}

// ---- synopses ----

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

// ---- runnable examples ----

/// One command of a `sh` or `console` block.
#[derive(Debug)]
struct Step {
    cmd: String,
    background: bool,
    /// A console block's output shown after the command.
    shown: Option<Vec<String>>,
    /// `# prints "X"`: X must be in its output.
    prints: Vec<String>,
}

fn steps(b: &Block) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    let mut pending = String::new();
    for raw in b.text.lines() {
        let (is_cmd, body) = match b.lang.as_str() {
            "console" => match raw.strip_prefix("$ ") {
                Some(c) => (true, c),
                None if !pending.is_empty() => (true, raw),
                None => (false, raw),
            },
            _ => (!raw.trim().is_empty(), raw),
        };
        if !is_cmd {
            if let Some(s) = out.last_mut() {
                s.shown.get_or_insert_with(Vec::new).push(raw.to_string());
            }
            continue;
        }
        let (code, comment) = match body.find(" #") {
            Some(i) => (&body[..i], &body[i..]),
            None => (body, ""),
        };
        if let Some(c) = code.trim_end().strip_suffix('\\') {
            pending.push_str(c.trim());
            pending.push(' ');
            continue;
        }
        let mut cmd = std::mem::take(&mut pending);
        cmd.push_str(code.trim());
        let background = cmd.ends_with('&') && !cmd.ends_with("&&");
        let cmd = cmd.trim_end_matches('&').trim().to_string();
        let prints = comment
            .split("prints \"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .map(str::to_string)
            .collect();
        out.push(Step {
            cmd,
            background,
            shown: (b.lang == "console").then(Vec::new),
            prints,
        });
    }
    out
}

/// Rewrites a document's text for this run: `/tmp/` a private directory,
/// the README's `/path/to/...` real paths, fixed ports free ones, network
/// namespaces private ones. All at once, so no replacement is replaced.
struct Subst(Vec<(String, String)>);

impl Subst {
    fn new(text: &str, tmp: &Path) -> Subst {
        let mut v = vec![
            ("/path/to/duet".to_string(), root().display().to_string()),
            ("/path/to/app".into(), tmp.join("app").display().to_string()),
            ("/tmp/".into(), format!("{}/", tmp.display())),
        ];
        for (i, _) in text.match_indices("127.0.0.1:") {
            let port: String = text[i + 10..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            let from = format!("127.0.0.1:{port}");
            if !port.is_empty() && !v.iter().any(|(f, _)| *f == from) {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                v.push((from, l.local_addr().unwrap().to_string()));
            }
        }
        for (n, (i, _)) in text.match_indices("ip netns add ").enumerate() {
            let name: String = text[i + 13..].split_whitespace().next().unwrap().into();
            v.push((name, format!("duetdoc{}-{n}", std::process::id())));
        }
        Subst(v)
    }

    fn apply(&self, s: &str) -> String {
        let mut out = String::new();
        let mut i = 0;
        'scan: while i < s.len() {
            for (from, to) in &self.0 {
                if s[i..].starts_with(from.as_str()) {
                    out.push_str(to);
                    i += from.len();
                    continue 'scan;
                }
            }
            let c = s[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
        out
    }
}

/// What one step printed and its exit status.
#[derive(Debug, Default)]
struct Ran {
    stdout: String,
    status: Option<i32>,
}

/// Checks `cargo xtask SUB ...` (not run here) against `cargo xtask help SUB`.
fn check_xtask_by_help(cmd: &str, at: &str) {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let o = Command::new(cargo)
        .current_dir(root())
        .args(["xtask", "help", words[2]])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{at}: `cargo xtask help {}` failed",
        words[2]
    );
    for w in &words[3..] {
        let word = w.trim_start_matches('-');
        if w.parse::<f64>().is_err() && !w.contains('/') {
            assert!(
                help.contains(word),
                "{at}: `{cmd}`: `cargo xtask help {}` does not mention {w}",
                words[2]
            );
        }
    }
}

/// Runs the blocks' steps in one shell, in order, from the repository root;
/// returns each step's output. Background steps write to files (as a
/// terminal would show them elsewhere); a step after one that serves
/// `--api SOCKET` waits for the socket, as a person typing would.
fn run_steps(all: &[(&Block, Step)], tmp: &Path, sub: &Subst) -> Vec<Ran> {
    let bin = docs::bin_dir(tmp);
    let cargo = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .unwrap_or_else(|| "cargo".into());
    let cargo_dir = cargo.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut script = format!(
        "cd '{}'\nexport PATH='{}':'{}':\"$PATH\"\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n",
        root().display(),
        bin.display(),
        cargo_dir.display()
    );
    for (i, (_, s)) in all.iter().enumerate() {
        let cmd = sub.apply(&s.cmd);
        script.push_str(&format!("printf '\\n@@@ {i} begin\\n'\n"));
        if s.background {
            script.push_str(&format!(
                "{cmd} > '{}/bg{i}.log' 2>&1 &\nprintf '\\n@@@ {i} end 0\\n'\n",
                tmp.display()
            ));
            let w: Vec<&str> = cmd.split_whitespace().collect();
            if let Some(at) = w.iter().position(|w| *w == "--api") {
                script.push_str(&format!(
                    "for _ in $(seq 3000); do [ -S '{}' ] && break; sleep 0.01; done\n",
                    w[at + 1]
                ));
            }
        } else {
            script.push_str(&format!("{cmd}\nprintf '\\n@@@ {i} end %d\\n' $?\n"));
        }
    }
    let mut c = Command::new("bash");
    c.arg("-c").arg(&script).stdin(std::process::Stdio::null());
    let o = run_cmd(c, Duration::from_secs(300));
    let mut ran: Vec<Ran> = (0..all.len()).map(|_| Ran::default()).collect();
    let mut cur = None;
    for line in o.stdout.lines() {
        if let Some(m) = line.strip_prefix("@@@ ") {
            let w: Vec<&str> = m.split(' ').collect();
            let i: usize = w[0].parse().unwrap();
            match w[1] {
                "begin" => cur = Some(i),
                _ => {
                    ran[i].status = w[2].parse().ok();
                    cur = None;
                }
            }
        } else if let Some(i) = cur {
            ran[i].stdout.push_str(line);
            ran[i].stdout.push('\n');
        }
    }
    for (i, ((b, s), r)) in all.iter().zip(&ran).enumerate() {
        let logs = || {
            let mut t = String::new();
            for j in 0..all.len() {
                if let Ok(l) = std::fs::read_to_string(tmp.join(format!("bg{j}.log"))) {
                    t.push_str(&format!("--- background step {j}:\n{l}"));
                }
            }
            format!("{t}--- shell stderr:\n{}", o.stderr)
        };
        assert_eq!(
            r.status,
            Some(0),
            "{}: `{}` (step {i}) failed; it printed:\n{}\n{}",
            b.at(),
            s.cmd,
            r.stdout,
            logs()
        );
        // The markers around each step add blank lines of their own.
        let out = r.stdout.trim_matches('\n');
        for p in &s.prints {
            assert!(
                out.contains(p.as_str()),
                "{}: `{}` should print {p:?}; it printed:\n{out}",
                b.at(),
                s.cmd
            );
        }
        if let Some(shown) = &s.shown {
            let shown: Vec<String> = shown.iter().map(|l| sub.apply(l)).collect();
            let shown: Vec<&str> = shown.iter().map(String::as_str).collect();
            if let Err(e) = docs::output_matches(&shown, out) {
                panic!(
                    "{}: the output of `{}` is not what the document shows:\n{e}\n{}",
                    b.at(),
                    s.cmd,
                    logs()
                );
            }
        }
    }
    ran
}

/// Runs every `sh` and `console` block of `file` as the document shows it.
fn run_file(file: &str, tmp: &Path) -> Vec<(Step, Ran)> {
    let blocks: Vec<Block> = docs::blocks(file)
        .into_iter()
        .filter(|b| b.lang == "sh" || b.lang == "console")
        .collect();
    let text: String = blocks
        .iter()
        .map(|b| b.text.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let sub = Subst::new(&text, tmp);
    let mut todo: Vec<(&Block, Step)> = Vec::new();
    for b in &blocks {
        for s in steps(b) {
            if s.cmd.starts_with("cargo xtask test") || s.cmd.starts_with("cargo xtask bench") {
                check_xtask_by_help(&s.cmd, &b.at());
                continue;
            }
            if s.cmd.contains("ip netns") {
                require_root(&format!("{} runs `ip netns`", b.at()));
            }
            if s.cmd.contains("/path/to/app") {
                make_readme_app(&tmp.join("app"));
            }
            todo.push((b, s));
        }
    }
    let ran = run_steps(&todo, tmp, &sub);
    todo.into_iter().map(|(_, s)| s).zip(ran).collect()
}

/// The README's app example as a crate: its `Cargo.toml` and `src/main.rs`
/// blocks, with the README's `/path/to/duet` this repository.
fn make_readme_app(dir: &Path) {
    if dir.exists() {
        return;
    }
    let blocks = docs::blocks("README.md");
    let one = |lang: &str| {
        let v: Vec<&Block> = blocks.iter().filter(|b| b.lang == lang).collect();
        assert_eq!(
            v.len(),
            1,
            "README.md should have one {lang} block (the app example)"
        );
        v[0].text.clone()
    };
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let toml = one("toml").replace("/path/to/duet", root().to_str().unwrap());
    std::fs::write(dir.join("Cargo.toml"), toml).unwrap();
    std::fs::write(dir.join("src/main.rs"), one("rust")).unwrap();
}

#[test]
fn the_readme_examples_work_as_written() {
    let tmp = temp_dir("docs-readme");
    run_file("README.md", &tmp);
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// `duet ctl ... migrate` output: the summary's round count is the last
/// round printed (rounds after round 0, the full copy).
fn rounds_agree(lines: &[&str], at: &str) {
    let last_round = lines
        .iter()
        .filter_map(|l| l.strip_prefix("round "))
        .filter_map(|l| l.split(':').next()?.parse::<u32>().ok())
        .next_back()
        .unwrap_or_else(|| panic!("{at}: no round line in {lines:?}"));
    let summary = lines
        .iter()
        .find(|l| l.starts_with("migrated to "))
        .unwrap_or_else(|| panic!("{at}: no summary in {lines:?}"));
    let n: u32 = summary
        .split(" round")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{at}: no round count in {summary:?}"));
    assert_eq!(
        n, last_round,
        "{at}: the summary counts {n} rounds after round {last_round}: {summary}"
    );
}

#[test]
fn the_docs_examples_work_as_written() {
    for file in docs::files().into_iter().filter(|f| f != "README.md") {
        let tmp = temp_dir(&format!("docs-{}", file.replace('/', "-")));
        let ran = run_file(&file, &tmp);
        // Sample migration output must have the shape of the real one.
        let real: Vec<&(Step, Ran)> = ran
            .iter()
            .filter(|(s, _)| s.cmd.contains(" migrate "))
            .collect();
        for (s, r) in &real {
            rounds_agree(&r.stdout.trim().lines().collect::<Vec<_>>(), &s.cmd);
        }
        for b in docs::blocks(&file).into_iter().filter(|b| b.lang == "text") {
            let lines: Vec<&str> = b.text.lines().collect();
            if !lines.iter().any(|l| l.starts_with("round ")) {
                continue;
            }
            let (_, r) = real.first().unwrap_or_else(|| {
                panic!("{}: sample migration output, but no example in {file} runs a migration to compare it with", b.at())
            });
            rounds_agree(&lines, &b.at());
            let shapes: Vec<String> = r.stdout.lines().map(docs::normalize).collect();
            for l in &lines {
                assert!(
                    shapes.contains(&docs::normalize(l)),
                    "{}: {l:?} does not have the shape of any line `duet ctl ... migrate` printed:\n{}",
                    b.at(),
                    r.stdout
                );
            }
        }
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}

#[test]
fn steps_are_read_as_a_shell_or_a_console_shows_them() {
    let b = Block {
        file: "x".into(),
        line: 1,
        lang: "console".into(),
        text: "$ a \\\n  b &\n$ c\nout 1\nout 2\n$ d".into(),
    };
    let s = steps(&b);
    assert_eq!(s.len(), 3);
    assert_eq!((s[0].cmd.as_str(), s[0].background), ("a b", true));
    assert_eq!(
        s[1].shown.as_deref(),
        Some(&["out 1".to_string(), "out 2".to_string()][..])
    );
    let b = Block {
        lang: "sh".into(),
        text: "x --y   # prints \"ok\" once\nz".into(),
        ..b
    };
    let s = steps(&b);
    assert_eq!(
        (s[0].cmd.as_str(), &s[0].prints[..]),
        ("x --y", &["ok".to_string()][..])
    );
}
