//! A small HTTP/1.0 server: `/` serves a page, `/stats` serves counters as
//! JSON, anything else is a 404. Run it with a network device and an
//! address, e.g. `duet run httpd --net tap=tap0 --env IP=10.0.0.2/24`;
//! `--env PORT=8080` changes the port (default 80).
//!
//! One event loop serves every open connection at once with the
//! non-blocking socket calls, so a slow client never holds up the others;
//! the listener's pool of `BACKLOG` sockets takes new connections meanwhile.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::vec::Vec;
use duet::net::{NetError, TcpListener, TcpStream};

duet::main!(main);

/// Connections the stack accepts ahead of the loop.
const BACKLOG: usize = 64;
/// Connections served at once.
const MAX_OPEN: usize = 256;
const BUFFER: usize = 16 * 1024;
const MAX_REQUEST: usize = 4096;
/// A client gets this long to send its request and take the response.
const CONN_TIMEOUT_MS: u64 = 5_000;
/// Longest sleep of the loop with nothing to do.
const IDLE_WAIT_NS: u64 = 100_000_000;
const PAGE: &str = "<!doctype html>\n<html><head><title>Duet</title></head>\n<body><h1>Hello from a Duet unikernel</h1>\n<p>Served by smoltcp over Duet's network hypercalls. Counters: <a href=\"/stats\">/stats</a>.</p></body></html>\n";

#[derive(Default)]
struct Counters {
    connections: u64,
    requests: u64,
    not_found: u64,
    bad_requests: u64,
    timeouts: u64,
    bytes_out: u64,
}

/// One connection: reading its request, then writing its response.
struct Conn {
    s: TcpStream,
    req: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    deadline_ms: u64,
}

fn now_ms() -> u64 {
    duet::rt::rdtsc() / duet::rt::boot_info().tsc_khz.max(1)
}

fn main() -> i32 {
    let info = match duet::net::init() {
        Ok(i) => i,
        Err(e) => {
            duet::println!("httpd: {e}");
            return 2;
        }
    };
    let port: u16 = duet::env::var("PORT")
        .and_then(|p| p.parse().ok())
        .unwrap_or(80);
    let mut listener = match TcpListener::bind_with(port, BACKLOG, BUFFER) {
        Ok(l) => l,
        Err(e) => {
            duet::println!("httpd: cannot listen on port {port}: {e}");
            return 2;
        }
    };
    duet::println!(
        "httpd: listening on {}:{port} (mtu {}, {} hypercalls)",
        info.ip.0,
        info.mtu,
        if info.single_frame {
            "single-frame"
        } else {
            "batched"
        }
    );
    match serve(&mut listener) {
        Ok(()) => 0,
        // `podman stop`, SIGTERM to the monitor: a clean exit.
        Err(NetError::Shutdown) => {
            duet::println!("httpd: shutdown requested; stopping");
            0
        }
        Err(e) => {
            duet::println!("httpd: {e}; stopping");
            3
        }
    }
}

fn serve(listener: &mut TcpListener) -> Result<(), NetError> {
    let mut c = Counters::default();
    let mut open: Vec<Conn> = Vec::new();
    loop {
        duet::net::wait(Some(IDLE_WAIT_NS))?;
        while open.len() < MAX_OPEN {
            match listener.try_accept()? {
                Some(s) => {
                    c.connections += 1;
                    open.push(Conn {
                        s,
                        req: Vec::new(),
                        out: Vec::new(),
                        sent: 0,
                        deadline_ms: now_ms() + CONN_TIMEOUT_MS,
                    });
                }
                None => break,
            }
        }
        let now = now_ms();
        let n_open = open.len();
        // Dropping a finished connection closes it (FIN after its data).
        open.retain_mut(|conn| match step(conn, &mut c, n_open) {
            Ok(true) if now > conn.deadline_ms => {
                c.timeouts += 1;
                false
            }
            Ok(keep) => keep,
            Err(_) => false,
        });
    }
}

/// Advances one connection; `Ok(false)` when it is finished.
fn step(conn: &mut Conn, c: &mut Counters, n_open: usize) -> Result<bool, NetError> {
    if conn.out.is_empty() {
        let mut buf = [0u8; 1024];
        loop {
            match conn.s.try_read(&mut buf)? {
                None => return Ok(true),
                // Closed without a request (e.g. a port probe).
                Some(0) if conn.req.is_empty() => return Ok(false),
                Some(0) => break,
                Some(n) => {
                    conn.req.extend_from_slice(&buf[..n]);
                    if conn.req.windows(4).any(|w| w == b"\r\n\r\n")
                        || conn.req.len() >= MAX_REQUEST
                    {
                        break;
                    }
                }
            }
        }
        conn.out = respond(&conn.req, c, n_open);
    }
    conn.sent += conn.s.try_write(&conn.out[conn.sent..])?;
    Ok(conn.sent < conn.out.len())
}

fn respond(req: &[u8], c: &mut Counters, n_open: usize) -> Vec<u8> {
    let line = core::str::from_utf8(req)
        .ok()
        .and_then(|t| t.lines().next())
        .unwrap_or("");
    let mut parts = line.split(' ');
    c.requests += 1;
    let (status, ctype, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/")) => ("200 OK", "text/html", PAGE.into()),
        (Some("GET"), Some("/stats")) => {
            let d = duet::net::stats();
            let body = format!(
                "{{\"connections\":{},\"open\":{n_open},\"requests\":{},\"not_found\":{},\"bad_requests\":{},\"timeouts\":{},\"bytes_out\":{},\"rx_frames\":{},\"tx_frames\":{},\"rx_calls\":{},\"tx_calls\":{},\"tx_dropped\":{},\"exits\":{}}}\n",
                c.connections, c.requests, c.not_found, c.bad_requests, c.timeouts, c.bytes_out,
                d.rx_frames, d.tx_frames, d.rx_calls, d.tx_calls, d.tx_dropped, duet::hypercall::exits()
            );
            ("200 OK", "application/json", body)
        }
        (Some("GET"), Some(_)) => {
            c.not_found += 1;
            ("404 Not Found", "text/plain", "not found\n".into())
        }
        _ => {
            c.bad_requests += 1;
            ("400 Bad Request", "text/plain", "bad request\n".into())
        }
    };
    let mut out = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    c.bytes_out += out.len() as u64;
    out
}
