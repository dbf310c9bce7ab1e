//! The command table and dispatch, and the string commands. Replies and
//! errors are worded as redis-server 7 words them, so clients and scripts
//! see no difference.

use crate::admin;
use crate::keys;
use crate::record::Record;
use crate::resp::{self, parse_i64};
use crate::state::{now_ms, State};
use alloc::vec::Vec;

/// What the connection does after a command.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Read the next command.
    Continue,
    /// Send the reply, then close (`QUIT`).
    Close,
}

type Handler = fn(&mut State, &[&[u8]], &mut Vec<u8>);

/// Changes data (logged; needs room in the log).
const WRITE: u8 = 1;
/// May add data (refused above `maxmemory`).
const DENYOOM: u8 = 2;

struct Command {
    /// Lower case, as Redis names it in errors.
    name: &'static str,
    /// Redis's arity: `n` exactly n arguments (the name included), `-n`
    /// at least n.
    arity: i32,
    flags: u8,
    run: Handler,
}

const fn cmd(name: &'static str, arity: i32, flags: u8, run: Handler) -> Command {
    Command {
        name,
        arity,
        flags,
        run,
    }
}

static TABLE: &[Command] = &[
    cmd("get", 2, 0, get),
    cmd("set", -3, WRITE | DENYOOM, set),
    cmd("incr", 2, WRITE | DENYOOM, |s, a, o| {
        incr_by(s, a[1], Ok(1), o)
    }),
    cmd("decr", 2, WRITE | DENYOOM, |s, a, o| {
        incr_by(s, a[1], Ok(-1), o)
    }),
    cmd("incrby", 3, WRITE | DENYOOM, |s, a, o| {
        incr_by(s, a[1], parse_i64(a[2]).ok_or(NOT_INT), o)
    }),
    cmd("decrby", 3, WRITE | DENYOOM, decrby),
    cmd("mget", -2, 0, mget),
    cmd("mset", -3, WRITE | DENYOOM, mset),
    cmd("ping", -1, 0, ping),
    cmd("echo", 2, 0, |_, a, o| resp::bulk(o, a[1])),
    cmd("quit", -1, 0, |_, _, o| resp::simple(o, "OK")),
    cmd("del", -2, WRITE, keys::del),
    cmd("exists", -2, 0, keys::exists),
    cmd("expire", -3, WRITE, |s, a, o| keys::expire(s, a, o, 1000)),
    cmd("pexpire", -3, WRITE, |s, a, o| keys::expire(s, a, o, 1)),
    cmd("ttl", 2, 0, |s, a, o| keys::ttl(s, a, o, 1000)),
    cmd("pttl", 2, 0, |s, a, o| keys::ttl(s, a, o, 1)),
    cmd("persist", 2, WRITE, keys::persist),
    cmd("type", 2, 0, keys::key_type),
    cmd("dbsize", 1, 0, |s, _, o| resp::int(o, s.db.len() as i64)),
    cmd("keys", 2, 0, keys::keys),
    cmd("scan", -2, 0, keys::scan),
    cmd("flushall", -1, WRITE, keys::flushall),
    cmd("info", -1, 0, admin::info),
    cmd("config", -2, 0, admin::config),
    cmd("command", -1, 0, admin::command),
    cmd("select", 2, 0, admin::select),
    cmd("bgrewriteaof", 1, 0, admin::bgrewriteaof),
];

/// The reply to a value that should be an integer and is not.
pub const NOT_INT: &str = "ERR value is not an integer or out of range";
/// The reply to bad options.
pub const SYNTAX: &str = "ERR syntax error";

/// The names of every command, for `COMMAND COUNT`.
pub fn count() -> usize {
    TABLE.len()
}

fn lookup(name: &[u8]) -> Option<&'static Command> {
    TABLE
        .iter()
        .find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Appends an error whose text may hold client bytes: Redis turns line
/// breaks into spaces so the reply stays one line.
pub fn error_bytes(out: &mut Vec<u8>, msg: &[u8]) {
    out.push(b'-');
    out.extend(
        msg.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// `ERR wrong number of arguments for 'NAME' command`.
pub fn wrong_arity(out: &mut Vec<u8>, name: &str) {
    let mut m = Vec::new();
    m.extend_from_slice(b"ERR wrong number of arguments for '");
    m.extend_from_slice(name.as_bytes());
    m.extend_from_slice(b"' command");
    error_bytes(out, &m);
}

fn unknown(out: &mut Vec<u8>, args: &[&[u8]]) {
    let mut m = Vec::new();
    m.extend_from_slice(b"ERR unknown command '");
    m.extend_from_slice(&args[0][..args[0].len().min(128)]);
    m.extend_from_slice(b"', with args beginning with: ");
    let mut listed = 0;
    for a in &args[1..] {
        if listed >= 128 {
            break;
        }
        let room = 128 - listed;
        let before = m.len();
        m.push(b'\'');
        m.extend_from_slice(&a[..a.len().min(room)]);
        m.extend_from_slice(b"' ");
        listed += m.len() - before;
    }
    error_bytes(out, &m);
}

/// Runs one command, appending its reply to `out`.
pub fn execute(st: &mut State, args: &[&[u8]], out: &mut Vec<u8>) -> After {
    let start = out.len();
    let after = run(st, args, out);
    if out.get(start) == Some(&b'-') {
        st.stats.errors += 1;
    }
    after
}

fn run(st: &mut State, args: &[&[u8]], out: &mut Vec<u8>) -> After {
    let Some(c) = lookup(args[0]) else {
        unknown(out, args);
        return After::Continue;
    };
    let n = args.len() as i32;
    if (c.arity > 0 && n != c.arity) || n < -c.arity {
        wrong_arity(out, c.name);
        return After::Continue;
    }
    if c.flags & WRITE != 0 && !log_room(st, args, out) {
        return After::Continue;
    }
    if c.flags & DENYOOM != 0 && State::used_memory() > st.cfg.maxmemory {
        resp::error(
            out,
            "OOM command not allowed when used memory > 'maxmemory'.",
        );
        return After::Continue;
    }
    (c.run)(st, args, out);
    st.stats.commands += 1;
    if c.name == "quit" {
        After::Close
    } else {
        After::Continue
    }
}

/// Makes sure the log can take what `args` may write (compacting if that
/// helps); replies with an error when it cannot.
fn log_room(st: &mut State, args: &[&[u8]], out: &mut Vec<u8>) -> bool {
    let need: u64 = args.iter().map(|a| a.len() as u64 + 32).sum();
    let Some(log) = &st.log else { return true };
    if log.has_room(need) {
        return true;
    }
    if let Err(e) = st.compact() {
        duet::println!("kvd: {e}");
    }
    match &st.log {
        Some(log) if !log.has_room(need) => {
            let m = alloc::format!(
                "ERR kvd: the log is full ({} bytes of live data, {} bytes per log region); use a larger --disk",
                st.db.live_bytes(),
                log.capacity()
            );
            resp::error(out, &m);
            false
        }
        _ => true,
    }
}

fn get(st: &mut State, a: &[&[u8]], out: &mut Vec<u8>) {
    match st.db.get(a[1], now_ms()) {
        Some(e) => {
            resp::bulk(out, &e.value);
            st.stats.hits += 1;
        }
        None => {
            resp::nil(out);
            st.stats.misses += 1;
        }
    }
}

fn mget(st: &mut State, a: &[&[u8]], out: &mut Vec<u8>) {
    let now = now_ms();
    let start = out.len();
    resp::array(out, a.len() - 1);
    for k in &a[1..] {
        match st.db.get(k, now) {
            Some(e) => {
                resp::bulk(out, &e.value);
                st.stats.hits += 1;
            }
            None => {
                resp::nil(out);
                st.stats.misses += 1;
            }
        }
        if keys::reply_too_large(out, start) {
            return;
        }
    }
}

fn mset(st: &mut State, a: &[&[u8]], out: &mut Vec<u8>) {
    if a.len().is_multiple_of(2) {
        return wrong_arity(out, "mset");
    }
    for kv in a[1..].chunks(2) {
        st.db.set(kv[0], kv[1].to_vec(), 0);
        st.log(Record::Set {
            key: kv[0],
            value: kv[1],
            expire_at: 0,
        });
    }
    resp::simple(out, "OK");
}

fn ping(_: &mut State, a: &[&[u8]], out: &mut Vec<u8>) {
    match a.len() {
        1 => resp::simple(out, "PONG"),
        2 => resp::bulk(out, a[1]),
        _ => wrong_arity(out, "ping"),
    }
}

/// SET's options, as Redis parses them.
#[derive(Default)]
struct SetOpts<'a> {
    nx: bool,
    xx: bool,
    get: bool,
    keepttl: bool,
    /// The expiry argument and its kind.
    expire: Option<(&'a [u8], Expiry)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Expiry {
    Ex,
    Px,
    ExAt,
    PxAt,
}

fn set_opts<'a>(a: &[&'a [u8]]) -> Option<SetOpts<'a>> {
    let mut o = SetOpts::default();
    let mut i = 3;
    while i < a.len() {
        let opt = a[i];
        let next = a.get(i + 1).copied();
        let is = |s: &str| opt.eq_ignore_ascii_case(s.as_bytes());
        let kind = [
            ("ex", Expiry::Ex),
            ("px", Expiry::Px),
            ("exat", Expiry::ExAt),
            ("pxat", Expiry::PxAt),
        ]
        .into_iter()
        .find(|(n, _)| is(n));
        if is("nx") && !o.xx {
            o.nx = true;
        } else if is("xx") && !o.nx {
            o.xx = true;
        } else if is("get") {
            o.get = true;
        } else if is("keepttl") && o.expire.is_none() {
            o.keepttl = true;
        } else if let (Some((_, k)), Some(v)) = (kind, next) {
            // Another kind of expiry, or KEEPTTL, is a conflict; the same
            // kind again overrides.
            if o.keepttl || o.expire.is_some_and(|(_, old)| old != k) {
                return None;
            }
            o.expire = Some((v, k));
            i += 1;
        } else {
            return None;
        }
        i += 1;
    }
    Some(o)
}

/// The absolute expiry (wall ms) an `EX`/`PX`/`EXAT`/`PXAT` argument asks
/// for, or the error reply.
fn expiry(arg: &[u8], kind: Expiry, now: u64, cmd: &str) -> Result<u64, Vec<u8>> {
    let v = parse_i64(arg).ok_or_else(|| NOT_INT.as_bytes().to_vec())?;
    let invalid = || alloc::format!("ERR invalid expire time in '{cmd}' command").into_bytes();
    if v <= 0 {
        return Err(invalid());
    }
    let ms = match kind {
        Expiry::Ex | Expiry::ExAt => v.checked_mul(1000).ok_or_else(invalid)?,
        Expiry::Px | Expiry::PxAt => v,
    };
    match kind {
        Expiry::Ex | Expiry::Px => ms.checked_add(now as i64).ok_or_else(invalid),
        Expiry::ExAt | Expiry::PxAt => Ok(ms),
    }
    .map(|t| t as u64)
}

fn set(st: &mut State, a: &[&[u8]], out: &mut Vec<u8>) {
    let Some(o) = set_opts(a) else {
        return resp::error(out, SYNTAX);
    };
    let now = now_ms();
    let mut expire_at = 0;
    if let Some((arg, kind)) = o.expire {
        match expiry(arg, kind, now, "set") {
            Ok(t) => expire_at = t,
            Err(m) => return error_bytes(out, &m),
        }
    }
    let (key, value) = (a[1], a[2]);
    let old = st.db.get(key, now);
    let exists = old.is_some();
    if o.keepttl {
        expire_at = old.map_or(0, |e| e.expire_at);
    }
    if o.get {
        match old {
            Some(e) => resp::bulk(out, &e.value),
            None => resp::nil(out),
        }
    }
    if (o.nx && exists) || (o.xx && !exists) {
        if !o.get {
            resp::nil(out);
        }
        return;
    }
    if expire_at != 0 && expire_at <= now {
        // EXAT/PXAT in the past: the key is set and gone at once.
        if st.db.del(key, now) {
            st.log(Record::Del { key });
        }
    } else {
        st.db.set(key, value.to_vec(), expire_at);
        st.log(Record::Set {
            key,
            value,
            expire_at,
        });
    }
    if !o.get {
        resp::simple(out, "OK");
    }
}

fn decrby(st: &mut State, a: &[&[u8]], out: &mut Vec<u8>) {
    let by = match parse_i64(a[2]) {
        None => Err(NOT_INT),
        Some(i64::MIN) => Err("ERR decrement would overflow"),
        Some(v) => Ok(-v),
    };
    incr_by(st, a[1], by, out)
}

fn incr_by(st: &mut State, key: &[u8], by: Result<i64, &str>, out: &mut Vec<u8>) {
    let by = match by {
        Ok(b) => b,
        Err(m) => return resp::error(out, m),
    };
    let now = now_ms();
    let (cur, expire_at) = match st.db.get(key, now) {
        None => (0, 0),
        Some(e) => match parse_i64(&e.value) {
            Some(v) => (v, e.expire_at),
            None => return resp::error(out, NOT_INT),
        },
    };
    let Some(v) = cur.checked_add(by) else {
        return resp::error(out, "ERR increment or decrement would overflow");
    };
    let mut value = Vec::with_capacity(20);
    resp::push_i64(&mut value, v);
    st.log(Record::Set {
        key,
        value: &value,
        expire_at,
    });
    st.db.set(key, value, expire_at);
    resp::int(out, v);
}
