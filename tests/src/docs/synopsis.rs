//! Usage synopses: `duet run IMAGE [--mem SIZE] [--disk PATH[,ro]]... [-- ARGS...]`
//! read as a small grammar (words, optional `[groups]`, `|` alternatives,
//! `...` repetition) and expanded into concrete command lines.

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
}
