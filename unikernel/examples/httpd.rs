//! A small HTTP/1.0 server: `/` serves a page, `/stats` serves counters as
//! JSON, anything else is a 404. Run it with a network device and an
//! address, e.g. `duet run httpd --net tap=tap0 --env IP=10.0.0.2/24`;
//! `--env PORT=8080` changes the port (default 80).
//!
//! Connections are served one at a time; up to `BACKLOG` more are accepted
//! by the stack meanwhile, so many concurrent clients are all answered.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use duet::net::{NetError, TcpListener, TcpStream};

duet::main!(main);

const BACKLOG: usize = 64;
const BUFFER: usize = 16 * 1024;
/// A client gets this long to send its request.
const REQUEST_TIMEOUT_NS: u64 = 5_000_000_000;
const PAGE: &str = "<!doctype html>\n<html><head><title>Duet</title></head>\n<body><h1>Hello from a Duet unikernel</h1>\n<p>Served by smoltcp over Duet's network hypercalls. Counters: <a href=\"/stats\">/stats</a>.</p></body></html>\n";

#[derive(Default)]
struct Counters {
    connections: u64,
    requests: u64,
    not_found: u64,
    bad_requests: u64,
    bytes_out: u64,
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
    let mut c = Counters::default();
    loop {
        let mut stream = match listener.accept() {
            Ok(s) => s,
            Err(e) => {
                duet::println!("httpd: {e}; stopping");
                return 3;
            }
        };
        c.connections += 1;
        match serve(&mut stream, &mut c) {
            Ok(()) | Err(NetError::Closed) | Err(NetError::TimedOut) => {}
            Err(e) => {
                duet::println!("httpd: {e}; stopping");
                return 3;
            }
        }
    }
}

fn serve(s: &mut TcpStream, c: &mut Counters) -> Result<(), NetError> {
    s.set_timeout(Some(REQUEST_TIMEOUT_NS));
    let mut req = [0u8; 2048];
    let mut len = 0;
    while !req[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < req.len() {
        let n = s.read(&mut req[len..])?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = core::str::from_utf8(&req[..len])
        .ok()
        .and_then(|t| t.lines().next())
        .unwrap_or("");
    let mut parts = line.split(' ');
    let (status, ctype, body): (&str, &str, String) = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/")) => ("200 OK", "text/html", String::from(PAGE)),
        (Some("GET"), Some("/stats")) => {
            let d = duet::net::stats();
            let body = format!(
                "{{\"connections\":{},\"requests\":{},\"not_found\":{},\"bad_requests\":{},\"bytes_out\":{},\"rx_frames\":{},\"tx_frames\":{},\"rx_calls\":{},\"tx_calls\":{},\"tx_dropped\":{}}}\n",
                c.connections, c.requests + 1, c.not_found, c.bad_requests, c.bytes_out,
                d.rx_frames, d.tx_frames, d.rx_calls, d.tx_calls, d.tx_dropped
            );
            ("200 OK", "application/json", body)
        }
        (Some("GET"), Some(_)) => {
            c.not_found += 1;
            ("404 Not Found", "text/plain", String::from("not found\n"))
        }
        _ => {
            c.bad_requests += 1;
            (
                "400 Bad Request",
                "text/plain",
                String::from("bad request\n"),
            )
        }
    };
    c.requests += 1;
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    c.bytes_out += (head.len() + body.len()) as u64;
    Ok(())
}
