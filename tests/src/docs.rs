//! Reading the documentation the way the doc tests check it: fenced code
//! blocks, markdown tables, usage synopses (`duet run IMAGE [--mem SIZE]...`)
//! expanded into concrete command lines, and console output compared with
//! what a command printed.

use std::path::{Path, PathBuf};

/// One fenced code block of a markdown file.
#[derive(Clone, Debug)]
pub struct Block {
    /// The file, relative to the repository root.
    pub file: String,
    /// The line of the opening fence (1-based).
    pub line: usize,
    /// The info string's first word (`sh`, `console`, ...; empty if none).
    pub lang: String,
    /// The lines between the fences.
    pub text: String,
}

impl Block {
    /// Where the block is, for messages.
    pub fn at(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

/// README.md and every `docs/*.md`, relative to the repository root.
pub fn files() -> Vec<String> {
    let mut v = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(crate::root().join("docs"))
        .expect("read docs/")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    v.extend(docs);
    v
}

/// The text of `file` (relative to the repository root).
pub fn read(file: &str) -> String {
    std::fs::read_to_string(crate::root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Every fenced block of `file`.
pub fn blocks(file: &str) -> Vec<Block> {
    let text = read(file);
    let mut out = Vec::new();
    let mut open: Option<(usize, String, Vec<&str>)> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        match (&mut open, fence) {
            (None, true) => {
                let info = line.trim_start().trim_start_matches('`');
                let lang = info.split_whitespace().next().unwrap_or("").to_string();
                open = Some((i + 1, lang, Vec::new()));
            }
            (Some(_), true) => {
                let (line, lang, body) = open.take().unwrap();
                out.push(Block {
                    file: file.to_string(),
                    line,
                    lang,
                    text: body.join("\n"),
                });
            }
            (Some((_, _, body)), false) => body.push(line),
            (None, false) => {}
        }
    }
    assert!(open.is_none(), "{file}: a code block is never closed");
    out
}

/// The rows (cells trimmed, header and separator dropped) of the first
/// table after the first line of `md` containing `marker`.
pub fn table_after(md: &str, marker: &str) -> Vec<Vec<String>> {
    let start = md
        .lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no line contains {marker:?}"));
    md.lines()
        .skip(start + 1)
        .skip_while(|l| !l.trim_start().starts_with('|'))
        .take_while(|l| l.trim_start().starts_with('|'))
        .skip(2)
        .map(|l| {
            let l = l.trim().trim_start_matches('|').trim_end_matches('|');
            l.split('|').map(|c| c.trim().to_string()).collect()
        })
        .collect()
}

/// The logical lines of a synopsis block: continuation lines (indented, or
/// after a trailing `\`) joined, `# comments` dropped.
pub fn logical_lines(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut continues = false;
    for raw in text.lines() {
        let line = match raw.find(" #") {
            Some(i) => &raw[..i],
            None => raw,
        };
        let (line, more) = match line.trim_end().strip_suffix('\\') {
            Some(l) => (l, true),
            None => (line, false),
        };
        let indented = raw.starts_with(' ') || raw.starts_with('\t');
        match out.last_mut() {
            Some(last) if continues || indented => {
                last.push(' ');
                last.push_str(line.trim());
            }
            _ if !line.trim().is_empty() => out.push(line.trim().to_string()),
            _ => {}
        }
        continues = more;
    }
    out
}

/// A parsed synopsis: words, optional `[groups]` with `|` alternatives.
#[derive(Clone, Debug)]
enum Part {
    Space,
    /// A word; unspaced `a|b` gives alternatives.
    Word(Vec<String>),
    /// `[...]`: optional; each element is one alternative.
    Optional(Vec<Vec<Part>>),
}

fn parse(chars: &[char], pos: &mut usize, in_group: bool) -> Vec<Vec<Part>> {
    let mut alts: Vec<Vec<Part>> = vec![Vec::new()];
    while *pos < chars.len() {
        let c = chars[*pos];
        match c {
            '[' => {
                *pos += 1;
                let inner = parse(chars, pos, true);
                alts.last_mut().unwrap().push(Part::Optional(inner));
                skip_ellipsis(chars, pos);
            }
            ']' if in_group => {
                *pos += 1;
                return alts;
            }
            c if c.is_whitespace() => {
                *pos += 1;
                alts.last_mut().unwrap().push(Part::Space);
            }
            '|' => {
                // Spaced: alternatives of the enclosing sequence.
                *pos += 1;
                alts.push(Vec::new());
            }
            _ => {
                let start = *pos;
                while *pos < chars.len()
                    && !chars[*pos].is_whitespace()
                    && !matches!(chars[*pos], '[' | ']')
                {
                    *pos += 1;
                }
                let word: String = chars[start..*pos].iter().collect();
                let word = word.trim_end_matches("...").to_string();
                if !word.is_empty() {
                    alts.last_mut()
                        .unwrap()
                        .push(Part::Word(word_alternatives(&word)));
                }
            }
        }
    }
    alts
}

/// `sector=512|4096` stands for `sector=512` and `sector=4096`: the
/// alternatives replace the last value of the first.
fn word_alternatives(word: &str) -> Vec<String> {
    let mut parts = word.split('|');
    let first = parts.next().unwrap_or_default();
    let value_at = first
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .map_or(0, |i| i + 1);
    let prefix = &first[..value_at];
    std::iter::once(first.to_string())
        .chain(parts.map(|p| format!("{prefix}{p}")))
        .collect()
}

fn skip_ellipsis(chars: &[char], pos: &mut usize) {
    if chars[*pos..].starts_with(&['.', '.', '.']) {
        *pos += 3;
    }
}

fn expand_seq(parts: &[Part], full: bool) -> Vec<String> {
    let mut acc = vec![String::new()];
    for p in parts {
        let options: Vec<String> = match p {
            Part::Space => vec![" ".into()],
            Part::Word(alts) => alts.clone(),
            Part::Optional(alts) if full => alts.iter().flat_map(|a| expand_seq(a, full)).collect(),
            Part::Optional(_) => vec![String::new()],
        };
        acc = acc
            .iter()
            .flat_map(|a| options.iter().map(move |o| format!("{a}{o}")))
            .collect();
    }
    acc
}

/// The command lines a synopsis line stands for: every optional group
/// present (each alternative in turn), and none present. `A | B | C` at
/// the top level chooses the last word before the first `|`.
pub fn expand(line: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = line.chars().collect();
    let mut pos = 0;
    let mut alts = parse(&chars, &mut pos, false);
    if alts.len() > 1 {
        let first = alts.remove(0);
        let last_word = first
            .iter()
            .rposition(|p| matches!(p, Part::Word(_)))
            .expect("a word before `|`");
        let prefix = &first[..last_word];
        let mut all = vec![first.clone()];
        for a in alts {
            all.push(prefix.iter().cloned().chain(a).collect());
        }
        alts = all;
    }
    let mut out: Vec<Vec<String>> = Vec::new();
    for a in &alts {
        for full in [true, false] {
            for s in expand_seq(a, full) {
                let argv: Vec<String> = s
                    .split_whitespace()
                    .filter(|w| *w != "...")
                    .map(str::to_string)
                    .collect();
                if !out.contains(&argv) {
                    out.push(argv);
                }
            }
        }
    }
    out
}

/// The long options (`--name`) a text mentions, in order, once each.
pub fn long_options(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
        if let Some(name) = w.strip_prefix("--") {
            if !name.is_empty() && name.chars().next().unwrap().is_ascii_lowercase() {
                let o = format!("--{name}");
                if !out.contains(&o) {
                    out.push(o);
                }
            }
        }
    }
    out
}

/// A line with every number replaced by `#` (values differ from run to
/// run; the shape of the output must not).
pub fn normalize(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.trim_end().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            while chars
                .peek()
                .is_some_and(|c| c.is_ascii_digit() || *c == '.')
            {
                chars.next();
            }
            out.push('#');
        } else {
            out.push(c);
        }
    }
    // "1 round" and "2 rounds" have one shape.
    out.replace("# rounds", "# round")
}

/// Whether `actual` matches `expected`, where `...` in `expected` matches
/// anything.
fn line_matches(expected: &str, actual: &str) -> bool {
    let mut rest = actual;
    let parts: Vec<&str> = expected.split("...").collect();
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(p) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else {
            let Some(at) = rest.find(p) else { return false };
            rest = &rest[at + p.len()..];
        }
    }
    rest.is_empty()
}

/// Compares a command's output with the output a document shows for it:
/// line by line after [`normalize`], `...` matching anything within a
/// line, and a run of lines of one shape matching a run of any length
/// (a migration prints as many rounds as it takes).
pub fn output_matches(expected: &[&str], actual: &str) -> Result<(), String> {
    fn runs(lines: Vec<String>) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for l in lines {
            if v.last() != Some(&l) {
                v.push(l);
            }
        }
        v
    }
    let e = runs(expected.iter().map(|l| normalize(l)).collect());
    let a = runs(actual.lines().map(normalize).collect());
    let ok = e.len() == a.len() && e.iter().zip(&a).all(|(e, a)| line_matches(e, a));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the document shows (normalized):\n{}\nthe command printed (normalized):\n{}",
            e.join("\n"),
            a.join("\n")
        ))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synopses_expand_into_command_lines() {
        let v = expand(
            "duet run IMAGE [--mem SIZE] [--disk PATH[,ro][,sector=512|4096]]... [-- ARGS...]",
        );
        assert!(v.contains(
            &"duet run IMAGE --mem SIZE --disk PATH,ro,sector=512 -- ARGS"
                .split(' ')
                .map(String::from)
                .collect()
        ));
        assert!(v.contains(
            &"duet run IMAGE --mem SIZE --disk PATH,ro,sector=4096 -- ARGS"
                .split(' ')
                .map(String::from)
                .collect()
        ));
        assert!(v.contains(&vec!["duet".into(), "run".into(), "IMAGE".into()]));
        let v = expand("duet ctl SOCKET pause | resume | snapshot DIR");
        assert_eq!(v.len(), 3);
        assert_eq!(v[2], ["duet", "ctl", "SOCKET", "snapshot", "DIR"]);
        let v = expand("duet restore DIR [--clones N | --wait-start FIFO]");
        assert!(v.contains(&vec![
            "duet".into(),
            "restore".into(),
            "DIR".into(),
            "--wait-start".into(),
            "FIFO".into()
        ]));
        assert_eq!(
            logical_lines("duet a \\\n   --b X   # c\nduet d\n    [--e]"),
            ["duet a --b X", "duet d [--e]"]
        );
    }

    #[test]
    fn output_is_compared_by_shape() {
        let doc = [
            "round 0: 16.1 MiB sent",
            "round 1: 2.0 MiB sent",
            "done in 3 ms, 1 round",
        ];
        assert!(output_matches(&doc, "round 0: 0.1 MiB sent\ndone in 12 ms, 0 rounds\n").is_ok());
        assert!(output_matches(&doc, "round 0: 0.1 MiB sent\n").is_err());
        assert!(output_matches(&["{\"ok\":true,...}"], "{\"ok\":true,\"state\":\"x\"}").is_ok());
        assert!(output_matches(&["{ \"ok\": true }"], "{\n  \"ok\": true\n}").is_err());
    }
}
