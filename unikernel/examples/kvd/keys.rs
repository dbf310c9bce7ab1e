//! Commands on keys as such: `DEL`, `EXISTS`, expiry (`EXPIRE`, `PEXPIRE`,
//! `TTL`, `PTTL`, `PERSIST`), `TYPE`, `DBSIZE`'s friends `KEYS` and `SCAN`,
//! and `FLUSHALL`.

use crate::glob;
use crate::record::Record;
use crate::reply::{self, error_bytes, NOT_INT, SYNTAX};
use crate::resp::parse_i64;
use crate::state::{now_ms, State};
use alloc::vec::Vec;

/// Whether the reply being built since `start` has grown past what free
/// memory allows; if so it is replaced by an error (a guest that runs out
/// of memory stops, so a reply must never be allowed to take it all).
pub fn reply_too_large(out: &mut Vec<u8>, start: usize) -> bool {
    let len = (out.len() - start) as u64;
    // Checked every few KiB of reply: cheap enough, early enough.
    if len < 64 * 1024 {
        return false;
    }
    let limit = duet::rt::boot_info().heap_limit;
    let free = limit.saturating_sub(State::used_memory());
    if len <= free / 4 {
        return false;
    }
    out.truncate(start);
    reply::error(
        out,
        "ERR kvd: the reply would not fit in free memory; ask for less (SCAN with a COUNT, fewer keys)",
    );
    true
}

/// `DEL key ...`: how many existed.
pub fn del(st: &mut State, a: &[&[u8]], out: &mut Vec<u8>) {
    let now = now_ms();
    let mut gone = Vec::new();
    for &key in &a[1..] {
        if st.db.del(key, now) {
            gone.push(Record::Del { key });
        }
    }
    match gone.as_slice() {
        [] => {}
        [one] => st.log(*one),
        all => st.log_group(all),
    }
    reply::int(out, gone.len() as i64);
}

/// `EXISTS key ...`: how many exist (repeats count).
pub fn exists(st: &mut State, a: &[&[u8]], out: &mut Vec<u8>) {
    let now = now_ms();
    let n = a[1..].iter().filter(|k| st.db.contains(k, now)).count();
    reply::int(out, n as i64);
}

#[derive(Default)]
struct ExpireFlags {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
}

fn expire_flags(a: &[&[u8]]) -> Result<ExpireFlags, Vec<u8>> {
    let mut f = ExpireFlags::default();
    for opt in &a[3..] {
        let is = |s: &str| opt.eq_ignore_ascii_case(s.as_bytes());
        if is("nx") {
            f.nx = true;
        } else if is("xx") {
            f.xx = true;
        } else if is("gt") {
            f.gt = true;
        } else if is("lt") {
            f.lt = true;
        } else {
            let mut m = b"ERR Unsupported option ".to_vec();
            m.extend_from_slice(opt);
            return Err(m);
        }
    }
    if f.nx && (f.xx || f.gt || f.lt) {
        return Err(
            b"ERR NX and XX, GT or LT options at the same time are not compatible".to_vec(),
        );
    }
    if f.gt && f.lt {
        return Err(b"ERR GT and LT options at the same time are not compatible".to_vec());
    }
    Ok(f)
}

/// `EXPIRE` (`unit` 1000) and `PEXPIRE` (`unit` 1).
pub fn expire(st: &mut State, a: &[&[u8]], out: &mut Vec<u8>, unit: i64) {
    let f = match expire_flags(a) {
        Ok(f) => f,
        Err(m) => return error_bytes(out, &m),
    };
    let Some(v) = parse_i64(a[2]) else {
        return reply::error(out, NOT_INT);
    };
    let now = now_ms();
    let name = if unit == 1 { "pexpire" } else { "expire" };
    let Some(at) = v
        .checked_mul(unit)
        .and_then(|ms| ms.checked_add(now as i64))
    else {
        let m = alloc::format!("ERR invalid expire time in '{name}' command");
        return reply::error(out, &m);
    };
    let key = a[1];
    let Some(cur) = st.db.get(key, now).map(|e| e.expire_at) else {
        return reply::int(out, 0);
    };
    // An expiry of 0 means "none": as large as can be for GT and LT.
    let refused = (f.nx && cur != 0)
        || (f.xx && cur == 0)
        || (f.gt && (cur == 0 || at <= cur as i64))
        || (f.lt && cur != 0 && at >= cur as i64);
    if refused {
        return reply::int(out, 0);
    }
    if at <= now as i64 {
        st.db.del(key, now);
        st.log(Record::Del { key });
    } else {
        let at = at as u64;
        st.db.set_expire(key, at, now);
        st.log(Record::Expire { key, at });
    }
    reply::int(out, 1);
}

/// `TTL` (`unit` 1000) and `PTTL` (`unit` 1).
pub fn ttl(st: &mut State, a: &[&[u8]], out: &mut Vec<u8>, unit: u64) {
    let now = now_ms();
    let v = match st.db.get(a[1], now) {
        None => -2,
        Some(e) if e.expire_at == 0 => -1,
        Some(e) => {
            let left = e.expire_at.saturating_sub(now);
            ((left + unit / 2) / unit) as i64
        }
    };
    reply::int(out, v);
}

/// `PERSIST key`: drops its expiry.
pub fn persist(st: &mut State, a: &[&[u8]], out: &mut Vec<u8>) {
    let now = now_ms();
    let key = a[1];
    let had = st.db.get(key, now).is_some_and(|e| e.expire_at != 0);
    if had {
        st.db.set_expire(key, 0, now);
        st.log(Record::Expire { key, at: 0 });
    }
    reply::int(out, i64::from(had));
}

/// `TYPE key`: `string` or `none`.
pub fn key_type(st: &mut State, a: &[&[u8]], out: &mut Vec<u8>) {
    let t = if st.db.contains(a[1], now_ms()) {
        "string"
    } else {
        "none"
    };
    reply::simple(out, t);
}

/// `KEYS pattern`.
pub fn keys(st: &mut State, a: &[&[u8]], out: &mut Vec<u8>) {
    let pattern = a[1];
    let all = pattern == b"*";
    let mut body = Vec::new();
    let mut n = 0;
    for (k, _) in st.db.iter(now_ms()) {
        if all || glob::matches(pattern, k) {
            reply::bulk(&mut body, k);
            n += 1;
            if n % 1024 == 0 && reply_too_large(&mut body, 0) {
                out.extend_from_slice(&body);
                return;
            }
        }
    }
    reply::array(out, n);
    out.extend_from_slice(&body);
}

/// `strtoul`: what Redis accepts as a cursor (a sign, leading zeros).
fn cursor(s: &[u8]) -> Option<u64> {
    let (neg, digits) = match s {
        [b'-', r @ ..] => (true, r),
        [b'+', r @ ..] => (false, r),
        _ => (false, s),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(if neg { v.wrapping_neg() } else { v })
}

/// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]`.
pub fn scan(st: &mut State, a: &[&[u8]], out: &mut Vec<u8>) {
    let Some(cur) = cursor(a[1]) else {
        return reply::error(out, "ERR invalid cursor");
    };
    let (mut count, mut pattern, mut only_strings) = (10usize, None, true);
    let mut i = 2;
    while i < a.len() {
        let (opt, val) = (a[i], a.get(i + 1));
        let is = |s: &str| opt.eq_ignore_ascii_case(s.as_bytes());
        match val {
            Some(v) if is("count") => match parse_i64(v) {
                None => return reply::error(out, NOT_INT),
                Some(c) if c < 1 => return reply::error(out, SYNTAX),
                Some(c) => count = c as usize,
            },
            Some(v) if is("match") => pattern = Some(*v),
            Some(v) if is("type") => only_strings = v.eq_ignore_ascii_case(b"string"),
            _ => return reply::error(out, SYNTAX),
        }
        i += 2;
    }
    let mut keys = Vec::new();
    let mut n = 0;
    let next = st.db.scan(cur, count, now_ms(), |k| {
        if only_strings && pattern.is_none_or(|p| glob::matches(p, k)) {
            reply::bulk(&mut keys, k);
            n += 1;
        }
    });
    reply::array(out, 2);
    let mut c = Vec::new();
    reply::push_u64(&mut c, next);
    reply::bulk(out, &c);
    reply::array(out, n);
    out.extend_from_slice(&keys);
}

/// `FLUSHALL [ASYNC|SYNC]`.
pub fn flushall(st: &mut State, a: &[&[u8]], out: &mut Vec<u8>) {
    let ok = match a {
        [_] => true,
        [_, m] => m.eq_ignore_ascii_case(b"async") || m.eq_ignore_ascii_case(b"sync"),
        _ => false,
    };
    if !ok {
        return reply::error(out, SYNTAX);
    }
    st.db.flush();
    st.log(Record::FlushAll);
    reply::simple(out, "OK");
}
