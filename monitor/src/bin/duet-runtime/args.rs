//! runc's command line, parsed leniently.
//!
//! Engines pass flags runc knows and sometimes flags it does not (a newer
//! engine, a `--runtime-flag`). Every flag runc documents is known here with
//! its arity; an unknown flag is recorded (and logged by the caller), never
//! fatal. An unknown `--flag` without `=VALUE` is taken as a switch; should it
//! have taken a value, that value shows up as an extra positional argument,
//! which the commands ignore (they use the container id, the first one).

use std::path::PathBuf;
use thiserror::Error;

/// A flag a command knows: its long name, short name, and whether it takes a value.
type Spec = (&'static str, Option<char>, bool);

/// runc's global flags, plus duet-runtime's own (`fallback-runtime`, `duet`).
const GLOBAL: &[Spec] = &[
    ("debug", None, false),
    ("log", None, true),
    ("log-format", None, true),
    ("root", None, true),
    ("criu", None, true),
    ("systemd-cgroup", None, false),
    ("rootless", None, true),
    ("fallback-runtime", None, true),
    ("duet", None, true),
    ("help", Some('h'), false),
    ("version", Some('v'), false),
];

/// The flags of each command runc has (the ones duet-runtime ignores included).
fn command_flags(cmd: &str) -> &'static [Spec] {
    match cmd {
        "create" | "run" => &[
            ("bundle", Some('b'), true),
            ("console-socket", None, true),
            ("pid-file", None, true),
            ("no-pivot", None, false),
            ("no-new-keyring", None, false),
            ("preserve-fds", None, true),
            ("detach", Some('d'), false),
            ("keep", None, false),
            ("no-subreaper", None, false),
        ],
        "kill" => &[("all", Some('a'), false)],
        "delete" => &[("force", Some('f'), false)],
        "ps" | "list" => &[("format", Some('f'), true), ("quiet", Some('q'), false)],
        "checkpoint" => &[
            ("image-path", None, true),
            ("work-path", None, true),
            ("parent-path", None, true),
            ("leave-running", None, false),
            ("tcp-established", None, false),
            ("ext-unix-sk", None, false),
            ("shell-job", None, false),
            ("lazy-pages", None, false),
            ("status-fd", None, true),
            ("page-server", None, true),
            ("file-locks", None, false),
            ("pre-dump", None, false),
            ("manage-cgroups-mode", None, true),
            ("empty-ns", None, true),
            ("auto-dedup", None, false),
        ],
        "restore" => &[
            ("console-socket", None, true),
            ("image-path", None, true),
            ("work-path", None, true),
            ("tcp-established", None, false),
            ("ext-unix-sk", None, false),
            ("shell-job", None, false),
            ("file-locks", None, false),
            ("manage-cgroups-mode", None, true),
            ("bundle", Some('b'), true),
            ("detach", Some('d'), false),
            ("pid-file", None, true),
            ("no-subreaper", None, false),
            ("no-pivot", None, false),
            ("empty-ns", None, true),
            ("auto-dedup", None, false),
            ("lazy-pages", None, false),
            ("lsm-profile", None, true),
            ("lsm-mount-context", None, true),
        ],
        _ => &[],
    }
}

/// A command line that cannot be understood at all.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ArgsError {
    /// A known flag that takes a value came last.
    #[error("flag --{0} needs a value")]
    MissingValue(String),
    /// A switch given a value other than true/false.
    #[error("flag --{0} is a switch; `{1}` is neither true nor false")]
    BadBool(String, String),
}

/// The global flags.
#[derive(Debug, Default)]
pub struct Global {
    /// `--root`: where container state lives.
    pub root: Option<PathBuf>,
    /// `--log`: where logs go (stderr when absent).
    pub log: Option<PathBuf>,
    /// `--log-format json`.
    pub log_json: bool,
    /// `--debug`.
    pub debug: bool,
    /// `--fallback-runtime PATH|none`: who runs images that are not Duet guests.
    pub fallback: Option<String>,
    /// `--duet PATH`: the monitor binary.
    pub duet: Option<PathBuf>,
    /// `--help` before any command.
    pub help: bool,
    /// `--version`.
    pub version: bool,
}

/// One parsed invocation.
#[derive(Debug, Default)]
pub struct Invocation {
    /// Global flags.
    pub global: Global,
    /// The command (`create`, `start`...); empty when none was given.
    pub command: String,
    /// The command's known flags, in order: (name, value; "true" for switches).
    pub flags: Vec<(String, String)>,
    /// Positional arguments after the command.
    pub positional: Vec<String>,
    /// Flags nobody knows, as given (logged by the caller).
    pub unknown: Vec<String>,
    /// `--help` after the command.
    pub help: bool,
    /// The arguments before the command, as given (for a hand-off to runc).
    pub raw_global: Vec<String>,
    /// The command and everything after it, as given.
    pub raw_rest: Vec<String>,
}

impl Invocation {
    /// The value of flag `name`, if given (the last one wins).
    pub fn value(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether switch `name` is on.
    pub fn switch(&self, name: &str) -> bool {
        self.value(name) == Some("true")
    }

    /// The container id (the first positional argument).
    pub fn id(&self) -> Option<&str> {
        self.positional.first().map(String::as_str)
    }
}

/// How one token looks: a flag name (without dashes) with an inline value, or not a flag.
fn split_flag(tok: &str) -> Option<(&str, Option<&str>)> {
    let body = tok
        .strip_prefix("--")
        .or_else(|| tok.strip_prefix('-'))
        .filter(|b| !b.is_empty() && !tok.starts_with("---"))?;
    Some(match body.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (body, None),
    })
}

fn lookup<'a>(specs: &'a [Spec], name: &str) -> Option<&'a Spec> {
    specs.iter().find(|(long, short, _)| {
        *long == name || (name.chars().count() == 1 && name.chars().next() == *short)
    })
}

/// Parses flags from `toks` against `specs` until a non-flag token (when
/// `stop_at_positional`) or the end; returns the index where it stopped.
fn parse_flags(
    toks: &[String],
    specs: &[Spec],
    stop_at_positional: bool,
    mut on_flag: impl FnMut(&'static str, String),
    unknown: &mut Vec<String>,
    positional: &mut Vec<String>,
) -> Result<usize, ArgsError> {
    let mut i = 0;
    let mut only_positional = false;
    while i < toks.len() {
        let tok = &toks[i];
        if only_positional {
            positional.push(tok.clone());
            i += 1;
            continue;
        }
        if tok == "--" {
            only_positional = true;
            i += 1;
            continue;
        }
        let Some((name, inline)) = split_flag(tok) else {
            if stop_at_positional {
                return Ok(i);
            }
            positional.push(tok.clone());
            i += 1;
            continue;
        };
        match lookup(specs, name) {
            Some(&(long, _, true)) => {
                let v = match inline {
                    Some(v) => v.to_string(),
                    None => {
                        i += 1;
                        toks.get(i)
                            .cloned()
                            .ok_or_else(|| ArgsError::MissingValue(long.into()))?
                    }
                };
                on_flag(long, v);
            }
            Some(&(long, _, false)) => {
                let v = match inline {
                    None | Some("true") | Some("1") => "true",
                    Some("false") | Some("0") => "false",
                    Some(other) => return Err(ArgsError::BadBool(long.into(), other.into())),
                };
                on_flag(long, v.into());
            }
            None => unknown.push(tok.clone()),
        }
        i += 1;
    }
    Ok(i)
}

/// Parses the arguments after the program name.
pub fn parse(argv: &[String]) -> Result<Invocation, ArgsError> {
    let mut inv = Invocation::default();
    let mut g = Global::default();
    let mut unknown = Vec::new();
    let mut stray = Vec::new();
    let n = parse_flags(
        argv,
        GLOBAL,
        true,
        |name, v| match name {
            "root" => g.root = Some(v.into()),
            "log" => g.log = Some(v.into()),
            "log-format" => g.log_json = v == "json",
            "debug" => g.debug = v == "true",
            "fallback-runtime" => g.fallback = Some(v),
            "duet" => g.duet = Some(v.into()),
            "help" => g.help = v == "true",
            "version" => g.version = v == "true",
            // criu, systemd-cgroup, rootless: meaningless for a Duet guest.
            other => log::debug!("ignoring --{other}"),
        },
        &mut unknown,
        &mut stray,
    )?;
    inv.raw_global = argv[..n].to_vec();
    inv.global = g;
    let Some(cmd) = argv.get(n) else {
        inv.unknown = unknown;
        return Ok(inv);
    };
    inv.command = cmd.clone();
    inv.raw_rest = argv[n..].to_vec();
    let mut flags = Vec::new();
    let mut help = false;
    let mut specs: Vec<Spec> = command_flags(cmd).to_vec();
    specs.push(("help", Some('h'), false));
    parse_flags(
        &argv[n + 1..],
        &specs,
        false,
        |name, v| {
            if name == "help" {
                help = v == "true";
            } else {
                flags.push((name.to_string(), v));
            }
        },
        &mut unknown,
        &mut inv.positional,
    )?;
    inv.flags = flags;
    inv.help = help;
    inv.unknown = unknown;
    Ok(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Invocation {
        parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn podman_create() {
        let i = p("--root /r --log /l --log-format json --systemd-cgroup create --bundle /b --pid-file /p --no-pivot id1");
        assert_eq!(i.global.root.as_deref(), Some(std::path::Path::new("/r")));
        assert!(i.global.log_json);
        assert_eq!(i.command, "create");
        assert_eq!(i.value("bundle"), Some("/b"));
        assert_eq!(i.value("pid-file"), Some("/p"));
        assert!(i.switch("no-pivot"));
        assert_eq!(i.id(), Some("id1"));
        assert!(i.unknown.is_empty());
        assert_eq!(i.raw_global.len(), 7);
    }

    #[test]
    fn inline_values_short_and_single_dash() {
        let i = p("-root=/r create -b /b -pid-file=/p --console-socket=/s id");
        assert_eq!(i.global.root.as_deref(), Some(std::path::Path::new("/r")));
        assert_eq!(i.value("bundle"), Some("/b"));
        assert_eq!(i.value("pid-file"), Some("/p"));
        assert_eq!(i.value("console-socket"), Some("/s"));
        assert_eq!(i.id(), Some("id"));
    }

    #[test]
    fn unknown_flags_are_kept_not_fatal() {
        let i = p("--future=1 --shiny kill --all --whatever id KILL");
        assert_eq!(i.unknown, ["--future=1", "--shiny", "--whatever"]);
        assert!(i.switch("all"));
        assert_eq!(i.positional, ["id", "KILL"]);
    }

    #[test]
    fn switches_take_explicit_booleans() {
        assert!(!p("delete --force=false id").switch("force"));
        assert!(p("delete -f id").switch("force"));
        let e = parse(&["delete".into(), "--force=maybe".into()]).unwrap_err();
        assert!(matches!(e, ArgsError::BadBool(..)));
    }

    #[test]
    fn missing_value_is_an_error() {
        let e = parse(&["create".into(), "--bundle".into()]).unwrap_err();
        assert_eq!(e, ArgsError::MissingValue("bundle".into()));
    }

    #[test]
    fn help_version_and_no_command() {
        assert!(p("--version").global.version);
        assert!(p("checkpoint --help").help);
        assert_eq!(p("").command, "");
    }

    #[test]
    fn double_dash_ends_flags() {
        let i = p("kill -- id -9");
        assert_eq!(i.positional, ["id", "-9"]);
    }
}
