//! Running a document's `sh` and `console` blocks as a shell would, from
//! the repository root: each command in turn, its output and status kept,
//! background commands writing to files (as a terminal would show them
//! elsewhere).

use super::{output_matches, Block};
use crate::{root, run_cmd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// One command of a `sh` or `console` block.
#[derive(Debug)]
pub struct Step {
    /// The command line.
    pub cmd: String,
    /// Ends with `&`.
    pub background: bool,
    /// A console block's output shown after the command.
    pub shown: Option<Vec<String>>,
    /// `# prints "X"`: X must be in its output.
    pub prints: Vec<String>,
}

/// The commands of a `sh` or `console` block.
pub fn steps(b: &Block) -> Vec<Step> {
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
pub struct Subst(Vec<(String, String)>);

impl Subst {
    /// The rewrites for `text` (all blocks of one document).
    pub fn new(text: &str, tmp: &Path) -> Subst {
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

    /// `s` rewritten.
    pub fn apply(&self, s: &str) -> String {
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
pub struct Ran {
    /// Its standard output.
    pub stdout: String,
    /// Its exit status.
    pub status: Option<i32>,
}

/// A directory of links for the doc examples' `PATH`: `duet` is the
/// monitor under test.
pub fn bin_dir(tmp: &Path) -> PathBuf {
    let d = tmp.join("bin");
    std::fs::create_dir_all(&d).unwrap();
    let link = d.join("duet");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&crate::paths().bin, &link).unwrap();
    d
}

/// Runs the blocks' steps in one shell, in order, from the repository root;
/// returns each step's output. Background steps write to files (as a
/// terminal would show them elsewhere); a step after one that serves
/// `--api SOCKET` waits for the socket, as a person typing would.
pub fn run_steps(all: &[(&Block, Step)], tmp: &Path, sub: &Subst) -> Vec<Ran> {
    let bin = bin_dir(tmp);
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
            if let Err(e) = output_matches(&shown, out) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
