//! RESP2, the Redis protocol: an incremental request parser and the reply
//! encoders.
//!
//! Requests are multibulk arrays (`*N\r\n$LEN\r\nbytes\r\n`...) or inline
//! lines (`PING\r\n`, split like Redis's `sdssplitargs`, quotes and
//! escapes included). The parser keeps its place across reads, so a large
//! argument arriving in many segments is scanned once. Its errors are the
//! ones redis-server sends, word for word, and like redis-server the
//! server closes the connection after sending one. Every length is checked
//! against [`Limits`] before anything is buffered for it.

use alloc::vec::Vec;

/// Longest inline request, or header line, without a newline (Redis's
/// `PROTO_INLINE_MAX_SIZE`).
pub const INLINE_MAX: usize = 64 * 1024;
/// What one argument costs beyond its bytes, for the request bound.
pub const ARG_OVERHEAD: usize = 16;

/// Bounds on one request.
#[derive(Clone, Copy)]
pub struct Limits {
    /// Most arguments.
    pub max_args: u64,
    /// Longest argument (Redis's `proto-max-bulk-len`).
    pub max_bulk: u64,
    /// Most bytes of arguments, [`ARG_OVERHEAD`] each included.
    pub max_request: usize,
}

/// A malformed or oversized request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoError {
    /// A fixed message, as redis-server words it.
    Msg(&'static str),
    /// A multibulk argument that does not start with `$`.
    Expected(u8),
    /// The request's arguments add up to more than the bound.
    TooLarge(usize),
}

impl ProtoError {
    /// Appends the error reply.
    pub fn reply(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"-ERR Protocol error: ");
        match self {
            ProtoError::Msg(m) => out.extend_from_slice(m.as_bytes()),
            ProtoError::Expected(c) => {
                out.extend_from_slice(b"expected '$', got '");
                out.push(*c);
                out.push(b'\'');
            }
            ProtoError::TooLarge(n) => {
                out.extend_from_slice(b"request larger than ");
                crate::reply::push_u64(out, *n as u64);
                out.extend_from_slice(b" bytes (KVD_MAX_REQUEST)");
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// What [`Parser::parse`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A whole command: read it with [`Parser::args`], then call [`Parser::done`].
    Command,
    /// The buffer ends inside a request.
    NeedMore,
    /// The request is malformed: reply and close.
    Error(ProtoError),
}

/// Where one connection's parsing stands. Positions index the connection's
/// input buffer.
pub struct Parser {
    limits: Limits,
    /// First byte of the current request.
    start: usize,
    /// Next byte to look at.
    pos: usize,
    /// Arguments still to read of the current multibulk request (0: none
    /// started).
    remaining: u64,
    /// The length of the argument whose header was read.
    bulk: Option<usize>,
    /// Argument ranges of a multibulk request.
    ranges: Vec<(usize, usize)>,
    /// Arguments of an inline request (unescaped, so copied).
    inline: Vec<Vec<u8>>,
    /// Bytes the current request has declared so far.
    cost: usize,
}

/// Position of the first `c` in `b`.
fn find(b: &[u8], c: u8) -> Option<usize> {
    b.iter().position(|&x| x == c)
}

/// Redis's `string2ll`: an optional `-`, no `+`, no leading zeros, no
/// spaces, in range.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s {
        [b'0'] => return Some(0),
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || !(b'1'..=b'9').contains(&digits[0]) {
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if neg {
        // i64::MIN's magnitude is one more than i64::MAX.
        if v == 1 << 63 {
            Some(i64::MIN)
        } else {
            i64::try_from(v).ok().map(|x| -x)
        }
    } else {
        i64::try_from(v).ok()
    }
}

impl Parser {
    /// A parser at the start of a buffer.
    pub fn new(limits: Limits) -> Parser {
        Parser {
            limits,
            start: 0,
            pos: 0,
            remaining: 0,
            bulk: None,
            ranges: Vec::new(),
            inline: Vec::new(),
            cost: 0,
        }
    }

    /// Bytes the request being read has declared (its arguments so far and
    /// the one whose header was read), for the server's memory budget.
    pub fn pending(&self) -> usize {
        self.cost
    }

    /// Drops the bytes of finished requests from the front of `buf`.
    pub fn compact(&mut self, buf: &mut Vec<u8>) {
        let n = self.start;
        if n == 0 {
            return;
        }
        buf.drain(..n);
        self.start = 0;
        self.pos -= n;
        for r in &mut self.ranges {
            r.0 -= n;
        }
    }

    /// The arguments of the command [`Parser::parse`] just found.
    pub fn args<'a>(&'a self, buf: &'a [u8], out: &mut Vec<&'a [u8]>) {
        out.clear();
        if self.ranges.is_empty() {
            out.extend(self.inline.iter().map(|a| a.as_slice()));
        } else {
            out.extend(self.ranges.iter().map(|&(s, l)| &buf[s..s + l]));
        }
    }

    /// Moves past the command just returned.
    pub fn done(&mut self) {
        self.start = self.pos;
        self.ranges.clear();
        self.inline.clear();
        self.cost = 0;
    }

    /// Parses on from where the last call stopped.
    pub fn parse(&mut self, buf: &[u8]) -> Step {
        loop {
            if self.remaining == 0 {
                if self.pos >= buf.len() {
                    return Step::NeedMore;
                }
                let step = if buf[self.pos] == b'*' {
                    self.multibulk_header(buf)
                } else {
                    self.inline(buf)
                };
                match step {
                    // An empty request (`*0`, `*-1`, a blank line): skip it.
                    None => {
                        self.done();
                        continue;
                    }
                    Some(Step::Command) if self.remaining > 0 => {}
                    Some(s) => return s,
                }
            }
            return self.arguments(buf);
        }
    }

    /// A header line starting at `self.pos`: its integer after the first
    /// byte, or why not. `Ok(None)`: the line is not complete yet.
    fn header(
        &self,
        buf: &[u8],
        too_big: &'static str,
    ) -> Result<Option<(Option<i64>, usize)>, Step> {
        let rest = &buf[self.pos..];
        let Some(cr) = find(rest, b'\r') else {
            if rest.len() > INLINE_MAX {
                return Err(Step::Error(ProtoError::Msg(too_big)));
            }
            return Ok(None);
        };
        // The `\n` after the `\r` must be there too (it is not checked,
        // as redis-server does not check it).
        if cr + 2 > rest.len() {
            return Ok(None);
        }
        Ok(Some((parse_i64(&rest[1..cr]), cr + 2)))
    }

    /// `*N\r\n`: `None` for an empty request, `Some(Command)` when
    /// arguments follow.
    fn multibulk_header(&mut self, buf: &[u8]) -> Option<Step> {
        let (n, used) = match self.header(buf, "too big mbulk count string") {
            Err(e) => return Some(e),
            Ok(None) => return Some(Step::NeedMore),
            Ok(Some(h)) => h,
        };
        let Some(n) = n.filter(|&n| n <= i64::from(i32::MAX)) else {
            return Some(Step::Error(ProtoError::Msg("invalid multibulk length")));
        };
        self.pos += used;
        // `*-1` and `*0` are empty requests.
        if n <= 0 {
            return None;
        }
        if n as u64 > self.limits.max_args {
            return Some(Step::Error(ProtoError::Msg("invalid multibulk length")));
        }
        self.remaining = n as u64;
        Some(Step::Command)
    }

    /// Reads `$LEN\r\nbytes\r\n` arguments until the request is whole.
    fn arguments(&mut self, buf: &[u8]) -> Step {
        while self.remaining > 0 {
            let len = match self.bulk {
                Some(l) => l,
                None => {
                    let (n, used) = match self.header(buf, "too big bulk count string") {
                        Err(e) => return e,
                        Ok(None) => return Step::NeedMore,
                        Ok(Some(h)) => h,
                    };
                    if buf[self.pos] != b'$' {
                        return Step::Error(ProtoError::Expected(buf[self.pos]));
                    }
                    let Some(n) = n.filter(|&n| n >= 0 && n as u64 <= self.limits.max_bulk) else {
                        return Step::Error(ProtoError::Msg("invalid bulk length"));
                    };
                    let n = n as usize;
                    self.cost += n + ARG_OVERHEAD;
                    if self.cost > self.limits.max_request {
                        return Step::Error(ProtoError::TooLarge(self.limits.max_request));
                    }
                    self.pos += used;
                    self.bulk = Some(n);
                    n
                }
            };
            // The two bytes after the argument are skipped unchecked, as
            // redis-server does.
            if buf.len() - self.pos < len + 2 {
                return Step::NeedMore;
            }
            self.ranges.push((self.pos, len));
            self.pos += len + 2;
            self.bulk = None;
            self.remaining -= 1;
        }
        Step::Command
    }

    /// An inline request: `None` for a blank line.
    fn inline(&mut self, buf: &[u8]) -> Option<Step> {
        let rest = &buf[self.pos..];
        let Some(nl) = find(rest, b'\n') else {
            if rest.len() > INLINE_MAX {
                return Some(Step::Error(ProtoError::Msg("too big inline request")));
            }
            return Some(Step::NeedMore);
        };
        let mut line = &rest[..nl];
        if let [head @ .., b'\r'] = line {
            line = head;
        }
        let mut args = Vec::new();
        if crate::inline::split_args(line, &mut args).is_none() {
            return Some(Step::Error(ProtoError::Msg("unbalanced quotes in request")));
        }
        self.pos += nl + 1;
        if args.is_empty() {
            return None;
        }
        if args.len() as u64 > self.limits.max_args {
            return Some(Step::Error(ProtoError::Msg("invalid multibulk length")));
        }
        self.inline = args;
        Some(Step::Command)
    }
}
