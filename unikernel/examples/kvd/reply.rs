//! RESP2 reply encoders: each appends one reply to a connection's output;
//! and the error replies several commands share, worded as redis-server 7
//! words them.

use alloc::vec::Vec;

/// Appends the decimal digits of `v`.
pub fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut d = [0u8; 20];
    let mut i = d.len();
    loop {
        i -= 1;
        d[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&d[i..]);
}

/// Appends the decimal form of `v`.
pub fn push_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    push_u64(out, v.unsigned_abs());
}

/// `+s`
pub fn simple(out: &mut Vec<u8>, s: &str) {
    out.push(b'+');
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `-s` (`s` starts with the error code, e.g. `ERR ...`).
pub fn error(out: &mut Vec<u8>, s: &str) {
    out.push(b'-');
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
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

/// The reply to a value that should be an integer and is not.
pub const NOT_INT: &str = "ERR value is not an integer or out of range";
/// The reply to bad options.
pub const SYNTAX: &str = "ERR syntax error";

/// `ERR wrong number of arguments for 'NAME' command`.
pub fn wrong_arity(out: &mut Vec<u8>, name: &str) {
    let mut m = Vec::new();
    m.extend_from_slice(b"ERR wrong number of arguments for '");
    m.extend_from_slice(name.as_bytes());
    m.extend_from_slice(b"' command");
    error_bytes(out, &m);
}

/// `:v`
pub fn int(out: &mut Vec<u8>, v: i64) {
    out.push(b':');
    push_i64(out, v);
    out.extend_from_slice(b"\r\n");
}

/// `$len` and the bytes.
pub fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    out.push(b'$');
    push_u64(out, b.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// The null bulk string.
pub fn nil(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
}

/// An array header of `n` elements.
pub fn array(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    push_u64(out, n as u64);
    out.extend_from_slice(b"\r\n");
}
