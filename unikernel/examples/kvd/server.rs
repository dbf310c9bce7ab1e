//! The event loop: one thread serves every connection with the
//! non-blocking socket calls.
//!
//! Each iteration waits for traffic (or a timer), accepts, then for every
//! connection reads what arrived and runs each whole command in it
//! (pipelining), queueing replies; then commits the log (the group commit:
//! one write, and with `always` one flush, for all the iteration's
//! writes), and only then hands the replies to the sockets, so no reply
//! goes out before the write it acknowledges is durable.

use crate::commands::{self, After};
use crate::resp::{Parser, Step};
use crate::state::{mono_ns, now_ms, State};
use alloc::vec::Vec;
use duet::abi::hypercall::Error;
use duet::net::{NetError, TcpListener, TcpStream};

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// A connection's unsent replies above which its commands wait.
const OUT_HIGH: usize = 64 * 1024;
/// Partial requests under this size do not count against the input budget.
const SMALL_REQUEST: usize = 64 * 1024;
/// How often keys due to expire are looked for.
const SWEEP_NS: u64 = 100_000_000;
/// At most this many expired keys are removed per sweep (bounded pause).
const SWEEP_MAX: usize = 1000;
/// Longest sleep with nothing to do.
const IDLE_NS: u64 = 1_000_000_000;

/// Why serving stopped.
pub enum Stop {
    /// The network device failed.
    Net(NetError),
    /// The disk failed a log write.
    Disk(Error),
}

impl core::fmt::Display for Stop {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Stop::Net(e) => write!(f, "{e}"),
            Stop::Disk(e) => write!(f, "writing the log failed: {e}"),
        }
    }
}

struct Conn {
    s: TcpStream,
    inbuf: Vec<u8>,
    parser: Parser,
    out: Vec<u8>,
    sent: usize,
    /// Close once `out` is sent (`QUIT`, a protocol error).
    closing: bool,
    /// The peer closed its side.
    eof: bool,
    /// Every whole command received has run.
    drained: bool,
    /// The connection failed (reset).
    dead: bool,
    /// Input budget this connection holds.
    held: usize,
}

impl Conn {
    fn unsent(&self) -> usize {
        self.out.len() - self.sent
    }

    fn finished(&self) -> bool {
        self.dead || (self.unsent() == 0 && (self.closing || (self.eof && self.drained)))
    }

    /// Hands queued replies to the socket.
    fn flush_out(&mut self) {
        if self.dead || self.unsent() == 0 {
            return;
        }
        match self.s.try_write(&self.out[self.sent..]) {
            Ok(n) => self.sent += n,
            Err(_) => self.dead = true,
        }
        if self.unsent() == 0 {
            self.out.clear();
            self.sent = 0;
            self.out.shrink_to(OUT_HIGH);
        }
    }
}

/// Serves until the network or the disk fails.
pub fn run(st: &mut State, listener: &mut TcpListener) -> Result<(), Stop> {
    let mut conns: Vec<Conn> = Vec::new();
    let mut held = 0usize;
    let mut busy = false;
    let mut next_sweep = 0u64;
    let mut scratch = alloc::vec![0u8; READ_CHUNK];
    loop {
        duet::net::wait(Some(if busy { 0 } else { timeout(st) })).map_err(Stop::Net)?;
        accept(st, listener, &mut conns).map_err(Stop::Net)?;
        st.clients = conns.len();
        busy = false;
        for c in conns.iter_mut() {
            busy |= pump(st, c, &mut held, &mut scratch);
        }
        if let Some(log) = &mut st.log {
            log.commit(mono_ns()).map_err(Stop::Disk)?;
        }
        for c in conns.iter_mut() {
            c.flush_out();
        }
        conns.retain(|c| {
            let done = c.finished();
            if done {
                held -= c.held;
            }
            !done
        });
        let now = mono_ns();
        if now >= next_sweep {
            st.db.sweep(now_ms(), SWEEP_MAX);
            next_sweep = now + SWEEP_NS;
        }
        maybe_compact(st);
    }
}

/// How long the loop may sleep: until the next everysec flush or sweep.
fn timeout(st: &State) -> u64 {
    let mut t = if st.db.expires_len() > 0 {
        SWEEP_NS
    } else {
        IDLE_NS
    };
    if let Some(due) = st.log.as_ref().and_then(|l| l.flush_due()) {
        t = t.min(due.saturating_sub(mono_ns()));
    }
    t
}

fn accept(st: &mut State, l: &mut TcpListener, conns: &mut Vec<Conn>) -> Result<(), NetError> {
    while let Some(mut s) = l.try_accept()? {
        st.stats.connections += 1;
        if conns.len() >= st.cfg.maxclients {
            // As redis-server does; dropping the stream closes it after
            // the message.
            let _ = s.try_write(b"-ERR max number of clients reached\r\n");
            st.stats.rejected += 1;
            continue;
        }
        s.set_nodelay(true);
        conns.push(Conn {
            s,
            inbuf: Vec::new(),
            parser: Parser::new(st.cfg.limits),
            out: Vec::new(),
            sent: 0,
            closing: false,
            eof: false,
            drained: false,
            dead: false,
            held: 0,
        });
    }
    Ok(())
}

/// Reads and runs what a connection sent. Returns whether it stopped with
/// whole commands still buffered (its replies must drain first).
fn pump(st: &mut State, c: &mut Conn, held: &mut usize, scratch: &mut [u8]) -> bool {
    if c.closing || c.dead {
        return false;
    }
    loop {
        loop {
            if c.unsent() > OUT_HIGH {
                return true;
            }
            match c.parser.parse(&c.inbuf) {
                Step::Command => {
                    let mut args = Vec::new();
                    c.parser.args(&c.inbuf, &mut args);
                    let after = commands::execute(st, &args, &mut c.out);
                    c.parser.done();
                    if after == After::Close {
                        c.closing = true;
                        return false;
                    }
                }
                Step::NeedMore => break,
                Step::Error(e) => {
                    e.reply(&mut c.out);
                    st.stats.errors += 1;
                    c.closing = true;
                    return false;
                }
            }
        }
        // A large request in the making holds what it declared; all
        // clients together may hold `input_budget` (kept out of
        // `maxmemory`), or half the free heap when that is more.
        // Only a new declaration is judged: what was admitted stays so.
        let p = c.parser.pending();
        let now_held = if p > SMALL_REQUEST { p } else { 0 };
        let grew = now_held > c.held;
        *held = *held - c.held + now_held;
        c.held = now_held;
        let free = duet::rt::boot_info()
            .heap_limit
            .saturating_sub(State::used_memory());
        if grew && *held > st.cfg.input_budget.max(free as usize / 2) {
            crate::reply::error(
                &mut c.out,
                "ERR kvd: too much request data in flight from all clients; retry later",
            );
            st.stats.errors += 1;
            c.closing = true;
            return false;
        }
        c.parser.compact(&mut c.inbuf);
        if c.eof {
            c.drained = true;
            return false;
        }
        // Read through a scratch buffer: an idle connection costs no
        // allocation.
        match c.s.try_read(scratch) {
            Ok(Some(0)) => c.eof = true,
            Ok(Some(n)) => c.inbuf.extend_from_slice(&scratch[..n]),
            Ok(None) => {
                if c.inbuf.is_empty() && c.inbuf.capacity() > READ_CHUNK {
                    c.inbuf = Vec::new();
                }
                return false;
            }
            Err(_) => {
                c.dead = true;
                return false;
            }
        }
    }
}

/// Compacts the log when it has outgrown the live data (Redis's
/// `auto-aof-rewrite-percentage` and `-min-size`).
fn maybe_compact(st: &mut State) {
    let Some(log) = &st.log else { return };
    let (pct, min) = (st.cfg.compact_percent, st.cfg.compact_min);
    let len = log.len();
    let retry = st.compact_failed_at.is_none_or(|f| len >= f + min);
    if !retry || !log.wants_compaction(st.db.live_bytes(), pct, min) {
        return;
    }
    match st.compact() {
        Ok(()) => st.compact_failed_at = None,
        Err(e) => {
            duet::println!("kvd: {e}");
            st.compact_failed_at = Some(len);
        }
    }
}
