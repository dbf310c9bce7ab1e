//! The string commands: `GET`, `SET` and its options, `MGET`, `MSET`,
//! the `INCR` family, and `PING`.

use crate::keys;
use crate::record::Record;
use crate::reply::{self, error_bytes, wrong_arity, NOT_INT, SYNTAX};
use crate::resp::parse_i64;
use crate::state::{now_ms, State};
use alloc::vec::Vec;

/// `GET key`.
pub fn get(st: &mut State, a: &[&[u8]], out: &mut Vec<u8>) {
    match st.db.get(a[1], now_ms()) {
        Some(e) => {
            reply::bulk(out, &e.value);
            st.stats.hits += 1;
        }
        None => {
            reply::nil(out);
            st.stats.misses += 1;
        }
    }
}

/// `MGET key ...`.
pub fn mget(st: &mut State, a: &[&[u8]], out: &mut Vec<u8>) {
    let now = now_ms();
    let start = out.len();
    reply::array(out, a.len() - 1);
    for k in &a[1..] {
        match st.db.get(k, now) {
            Some(e) => {
                reply::bulk(out, &e.value);
                st.stats.hits += 1;
            }
            None => {
                reply::nil(out);
                st.stats.misses += 1;
            }
        }
        if keys::reply_too_large(out, start) {
            return;
        }
    }
}

/// `MSET key value ...`.
pub fn mset(st: &mut State, a: &[&[u8]], out: &mut Vec<u8>) {
    if a.len().is_multiple_of(2) {
        return wrong_arity(out, "mset");
    }
    let mut recs = Vec::with_capacity(a.len() / 2);
    for kv in a[1..].chunks(2) {
        st.db.set(kv[0], kv[1].to_vec(), 0);
        recs.push(Record::Set {
            key: kv[0],
            value: kv[1],
            expire_at: 0,
        });
    }
    st.log_group(&recs);
    reply::simple(out, "OK");
}

/// `PING [message]`.
pub fn ping(_: &mut State, a: &[&[u8]], out: &mut Vec<u8>) {
    match a.len() {
        1 => reply::simple(out, "PONG"),
        2 => reply::bulk(out, a[1]),
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

/// `SET key value [NX|XX] [GET] [EX|PX|EXAT|PXAT t|KEEPTTL]`.
pub fn set(st: &mut State, a: &[&[u8]], out: &mut Vec<u8>) {
    let Some(o) = set_opts(a) else {
        return reply::error(out, SYNTAX);
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
            Some(e) => reply::bulk(out, &e.value),
            None => reply::nil(out),
        }
    }
    if (o.nx && exists) || (o.xx && !exists) {
        if !o.get {
            reply::nil(out);
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
        reply::simple(out, "OK");
    }
}

/// `DECRBY key n`.
pub fn decrby(st: &mut State, a: &[&[u8]], out: &mut Vec<u8>) {
    let by = match parse_i64(a[2]) {
        None => Err(NOT_INT),
        Some(i64::MIN) => Err("ERR decrement would overflow"),
        Some(v) => Ok(-v),
    };
    incr_by(st, a[1], by, out)
}

/// `INCR`, `DECR`, `INCRBY`, `DECRBY`: adds `by` (or replies its error); keeps the expiry.
pub fn incr_by(st: &mut State, key: &[u8], by: Result<i64, &str>, out: &mut Vec<u8>) {
    let by = match by {
        Ok(b) => b,
        Err(m) => return reply::error(out, m),
    };
    let now = now_ms();
    let (cur, expire_at) = match st.db.get(key, now) {
        None => (0, 0),
        Some(e) => match parse_i64(&e.value) {
            Some(v) => (v, e.expire_at),
            None => return reply::error(out, NOT_INT),
        },
    };
    let Some(v) = cur.checked_add(by) else {
        return reply::error(out, "ERR increment or decrement would overflow");
    };
    let mut value = Vec::with_capacity(20);
    reply::push_i64(&mut value, v);
    st.log(Record::Set {
        key,
        value: &value,
        expire_at,
    });
    st.db.set(key, value, expire_at);
    reply::int(out, v);
}
