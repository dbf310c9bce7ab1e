//! Reading the documentation the way the doc tests check it: fenced code
//! blocks and markdown tables here; usage synopses (`duet run IMAGE [--mem
//! SIZE]...`) expanded into command lines in [`synopsis`]; a console's shown
//! output compared with what a command printed in [`output`]; `sh` and
//! `console` blocks run as a shell would in [`script`].

pub mod output;
pub mod script;
pub mod synopsis;

pub use output::{normalize, output_matches};
pub use synopsis::{expand, logical_lines, long_options};

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
