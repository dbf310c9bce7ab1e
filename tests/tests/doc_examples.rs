//! Every `sh` and `console` block of README.md and docs/*.md, taken from
//! the documents at test time, runs as written from the repository root
//! (`duet` on `PATH` is the monitor under test; `/tmp/` is a private
//! directory, fixed ports free ones, network namespaces private ones, the
//! README's `/path/to/app` its own app example): every command must succeed,
//! `# prints "X"` comments and a console's shown output must match what it
//! printed. Only `cargo xtask test` (this suite), `cargo xtask bench` and
//! `cargo xtask fuzz` (minutes; the suite runs their smoke passes) are
//! checked by their help instead. Sample `duet ctl ... migrate` output in `text` blocks must have
//! the shape of a real migration's.

use duet_tests::docs::script::{run_steps, steps, Ran, Step, Subst};
use duet_tests::docs::{self, Block};
use duet_tests::{require_root, root, temp_dir};
use std::path::Path;
use std::process::Command;

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
            if ["test", "bench", "fuzz"]
                .iter()
                .any(|x| s.cmd.starts_with(&format!("cargo xtask {x}")))
            {
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
