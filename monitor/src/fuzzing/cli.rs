//! The command line's value parsers for untrusted-looking strings:
//! `--mem`, `--env`, `--disk` and `--net` (with its MAC), each checked
//! against what it promises to hand on.

use crate::config::{parse_env, parse_mem};
use crate::devices::{block, net};
use crate::layout::{MAX_MEM, MIN_MEM};
use arbitrary::Arbitrary;

/// One `,`-separated option part.
#[derive(Arbitrary, Clone, Debug)]
pub enum Part {
    /// `KEY=VALUE` with a known key (index) or any.
    Pair(Result<u8, String>, String),
    /// A bare word with a known value (index) or any.
    Word(Result<u8, String>),
}

const KEYS: &[&str] = &["name", "sector", "transport", "tap", "mac", "ro", "rw"];
const WORDS: &[&str] = &[
    "ro",
    "rw",
    "virtio",
    "hypercall",
    "512",
    "4096",
    "02:00:00:00:00:01",
    "tap0",
];

fn text(p: &Result<u8, String>, known: &[&str]) -> String {
    match p {
        Ok(i) => known[usize::from(*i) % known.len()].to_string(),
        Err(s) => s.clone(),
    }
}

/// An option value: as a string, or built from parts.
#[derive(Arbitrary, Clone, Debug)]
pub enum Value {
    /// Any string.
    Raw(String),
    /// Parts joined by `,`.
    Parts(Vec<Part>),
}

impl Value {
    /// The value.
    pub fn text(&self) -> String {
        match self {
            Value::Raw(s) => s.clone(),
            Value::Parts(parts) => parts
                .iter()
                .map(|p| match p {
                    Part::Pair(k, v) => format!("{}={v}", text(k, KEYS)),
                    Part::Word(w) => text(w, WORDS),
                })
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// A fuzz input: one value for each option.
#[derive(Arbitrary, Clone, Debug)]
pub struct Input {
    /// `--mem`.
    pub mem: String,
    /// `--env`.
    pub env: String,
    /// `--disk`.
    pub disk: Value,
    /// `--net`.
    pub net: Value,
    /// A MAC address.
    pub mac: String,
}

/// Parses every value and checks what the parsers promise.
pub fn run(input: &Input) {
    if let Ok(b) = parse_mem(&input.mem) {
        assert!((MIN_MEM..=MAX_MEM).contains(&b) && b % duet_abi::LARGE_PAGE_SIZE == 0);
    }
    if let Ok(e) = parse_env(&input.env) {
        assert!(e.split_once('=').is_some_and(|(k, _)| !k.is_empty()));
    }
    if let Ok(d) = block::parse_spec(&input.disk.text()) {
        assert!(!d.path.as_os_str().is_empty());
        assert!(d.sector_size == 512 || d.sector_size == 4096);
        if let Some(n) = &d.name {
            assert!(!n.is_empty() && n.len() <= block::NAME_MAX && !n.contains('\0'));
        }
    }
    if let Ok(n) = net::parse_spec(&input.net.text()) {
        assert!(!n.tap.is_empty() && n.tap.len() <= 15);
        assert!(!n
            .tap
            .contains(|c: char| c == '/' || c == ':' || c.is_whitespace()));
        if let Some(m) = n.mac {
            assert!(m[0] & 1 == 0 && m != [0; 6]);
        }
    }
    if let Ok(m) = net::parse_mac(&input.mac) {
        assert!(m[0] & 1 == 0 && m != [0; 6]);
    }
}
