//! Control-socket requests: each line as the server reads it, parsed
//! ([`crate::api::wire::Request`]) and served by the real dispatch
//! ([`crate::api::dispatch::serve`]) against a guest that has ended, as a
//! request racing a guest's end is served; the answer is encoded as the
//! server sends it, and the client's side parses answers too.
//!
//! A migration request's key file is the harness's own (a request names
//! any path; the fuzzer must not read the host's files).

use crate::api::dispatch;
use crate::api::wire::{ProgressLine, Request, Response};
use crate::vmm::Control;
use arbitrary::Arbitrary;
use std::io::{BufRead, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, OnceLock};

/// A JSON value, of any type a field might get.
#[derive(Arbitrary, Clone, Debug)]
pub enum Value {
    /// A string.
    Str(String),
    /// A number.
    Num(u64),
    /// A negative number.
    Neg(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// `null`.
    Null,
    /// An array of strings.
    List(Vec<String>),
}

/// A request line built from a command and fields.
#[derive(Arbitrary, Clone, Debug)]
pub struct Line {
    /// The command (index into the known ones, or a string).
    pub cmd: Result<u8, String>,
    /// Fields (index into the known names, or a string) and values.
    pub fields: Vec<(Result<u8, String>, Value)>,
    /// Bytes appended to the line.
    pub tail: Vec<u8>,
}

/// A fuzz input: what a client writes on the socket.
#[derive(Arbitrary, Clone, Debug)]
pub enum Input {
    /// Bytes.
    Raw(Vec<u8>),
    /// Request lines.
    Lines(Vec<Line>),
}

const CMDS: &[&str] = &[
    "pause", "resume", "status", "snapshot", "migrate", "gdb", "core",
];
const FIELDS: &[&str] = &[
    "cmd",
    "dir",
    "addr",
    "path",
    "max_downtime_ms",
    "key_file",
    "copy_disks",
    "fail_at",
    "fake",
];

fn pick(v: &Result<u8, String>, known: &[&str]) -> String {
    match v {
        Ok(i) => known[usize::from(*i) % known.len()].to_string(),
        Err(s) => s.clone(),
    }
}

fn json(v: &Value) -> serde_json::Value {
    match v {
        Value::Str(s) => s.clone().into(),
        Value::Num(n) => (*n).into(),
        Value::Neg(n) => (*n).into(),
        Value::Float(f) => {
            serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
        }
        Value::Bool(b) => (*b).into(),
        Value::Null => serde_json::Value::Null,
        Value::List(l) => l.clone().into(),
    }
}

impl Input {
    /// The bytes on the socket.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Input::Raw(b) => b.clone(),
            Input::Lines(lines) => {
                let mut out = Vec::new();
                for l in lines {
                    let mut m = serde_json::Map::new();
                    m.insert("cmd".into(), pick(&l.cmd, CMDS).into());
                    for (k, v) in &l.fields {
                        m.insert(pick(k, FIELDS), json(v));
                    }
                    out.extend_from_slice(serde_json::Value::Object(m).to_string().as_bytes());
                    out.extend_from_slice(&l.tail);
                    out.push(b'\n');
                }
                out
            }
        }
    }
}

/// A control block whose guest has ended.
fn ended() -> &'static Arc<Control> {
    static CTL: OnceLock<Arc<Control>> = OnceLock::new();
    CTL.get_or_init(|| {
        let c = Control::new().expect("a control block");
        c.finish();
        Arc::new(c)
    })
}

/// The harness's migration key file (unlinked; named through /proc).
fn key_file() -> String {
    static KEY: OnceLock<std::fs::File> = OnceLock::new();
    let f = KEY.get_or_init(|| {
        let mut f = tempfile::tempfile().expect("a temporary key file");
        f.write_all(super::migration::KEY).expect("writing the key");
        f
    });
    format!("/proc/self/fd/{}", f.as_raw_fd())
}

/// Serves `input`'s lines as the control socket's connection thread does.
pub fn run(input: &Input) {
    serve(&input.bytes());
}

/// [`run`] on bytes.
pub fn serve(bytes: &[u8]) {
    let mut out = Vec::new();
    for line in bytes.lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Migrate(mut m)) => {
                m.key_file = key_file();
                dispatch::serve(ended(), Request::Migrate(m), &mut out)
            }
            Ok(req) => dispatch::serve(ended(), req, &mut out),
            Err(e) => Response::err(format!("bad request: {e}")),
        };
        let text = serde_json::to_string(&resp).expect("a response encodes");
        // The client's side: answers and progress lines parse back.
        let back: Response = serde_json::from_str(&text).expect("a response decodes");
        assert_eq!(back.ok, resp.ok);
        let _ = serde_json::from_str::<ProgressLine>(&line);
        let _ = serde_json::from_str::<Response>(&line);
    }
}
