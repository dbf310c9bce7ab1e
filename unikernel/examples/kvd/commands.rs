//! The command table and dispatch. Replies and errors are worded as
//! redis-server 7 words them, so clients and scripts see no difference.

use crate::admin;
use crate::keys;
use crate::reply;
use crate::resp::parse_i64;
use crate::state::State;
use crate::strings;
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
    cmd("get", 2, 0, strings::get),
    cmd("set", -3, WRITE | DENYOOM, strings::set),
    cmd("incr", 2, WRITE | DENYOOM, |s, a, o| {
        strings::incr_by(s, a[1], Ok(1), o)
    }),
    cmd("decr", 2, WRITE | DENYOOM, |s, a, o| {
        strings::incr_by(s, a[1], Ok(-1), o)
    }),
    cmd("incrby", 3, WRITE | DENYOOM, |s, a, o| {
        strings::incr_by(s, a[1], parse_i64(a[2]).ok_or(reply::NOT_INT), o)
    }),
    cmd("decrby", 3, WRITE | DENYOOM, strings::decrby),
    cmd("mget", -2, 0, strings::mget),
    cmd("mset", -3, WRITE | DENYOOM, strings::mset),
    cmd("ping", -1, 0, strings::ping),
    cmd("echo", 2, 0, |_, a, o| reply::bulk(o, a[1])),
    cmd("quit", -1, 0, |_, _, o| reply::simple(o, "OK")),
    cmd("del", -2, WRITE, keys::del),
    cmd("exists", -2, 0, keys::exists),
    cmd("expire", -3, WRITE, |s, a, o| keys::expire(s, a, o, 1000)),
    cmd("pexpire", -3, WRITE, |s, a, o| keys::expire(s, a, o, 1)),
    cmd("ttl", 2, 0, |s, a, o| keys::ttl(s, a, o, 1000)),
    cmd("pttl", 2, 0, |s, a, o| keys::ttl(s, a, o, 1)),
    cmd("persist", 2, WRITE, keys::persist),
    cmd("type", 2, 0, keys::key_type),
    cmd("dbsize", 1, 0, |s, _, o| reply::int(o, s.db.len() as i64)),
    cmd("keys", 2, 0, keys::keys),
    cmd("scan", -2, 0, keys::scan),
    cmd("flushall", -1, WRITE, keys::flushall),
    cmd("info", -1, 0, admin::info),
    cmd("config", -2, 0, admin::config),
    cmd("command", -1, 0, |s, a, o| admin::command(s, a, o, count())),
    cmd("select", 2, 0, admin::select),
    cmd("bgrewriteaof", 1, 0, admin::bgrewriteaof),
];

/// How many commands the table holds, for `COMMAND COUNT`.
fn count() -> usize {
    TABLE.len()
}

fn lookup(name: &[u8]) -> Option<&'static Command> {
    TABLE
        .iter()
        .find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
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
    reply::error_bytes(out, &m);
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
        reply::wrong_arity(out, c.name);
        return After::Continue;
    }
    if c.flags & WRITE != 0 && !log_room(st, args, out) {
        return After::Continue;
    }
    if c.flags & DENYOOM != 0 && State::used_memory() > st.cfg.maxmemory {
        reply::error(
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
            reply::error(out, &m);
            false
        }
        _ => true,
    }
}
