//! TCP or UDP echo: `echo [tcp|udp] [PORT]` (default `tcp 7`). Needs a
//! network device and `--env IP=a.b.c.d/prefix`.
//!
//! `echo sink [PORT]` is the benchmark's receiver: per connection it reads
//! until the peer shuts down its side, then answers with the byte count
//! (8 bytes, little endian).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use duet::net::{NetError, TcpListener, UdpSocket};

duet::main!(main);

fn main() -> i32 {
    let mut args = duet::env::args();
    let mode = args.next().unwrap_or("tcp");
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(7);
    let r = match mode {
        "tcp" => tcp(port),
        "udp" => udp(port),
        "sink" => sink(port),
        _ => {
            duet::println!("echo: usage: echo [tcp|udp|sink] [PORT]");
            return 2;
        }
    };
    match r {
        // SIGTERM to the monitor (`podman stop`): a clean exit.
        Err(NetError::Shutdown) => {
            duet::println!("echo: shutdown requested; stopping");
            0
        }
        Err(e) => {
            duet::println!("echo: {e}");
            3
        }
        Ok(()) => 0,
    }
}

fn tcp(port: u16) -> Result<(), NetError> {
    let mut l = TcpListener::bind_with(port, 4, 128 * 1024)?;
    duet::println!("echo: tcp port {port}");
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let mut s = l.accept()?;
        let mut total = 0u64;
        loop {
            let n = match s.read(&mut buf) {
                Ok(0) | Err(NetError::Closed) => break,
                Ok(n) => n,
                Err(e) => return Err(e),
            };
            match s.write_all(&buf[..n]) {
                Ok(()) => total += n as u64,
                Err(NetError::Closed) => break,
                Err(e) => return Err(e),
            }
        }
        duet::println!("echo: connection done, {total} bytes");
    }
}

fn udp(port: u16) -> Result<(), NetError> {
    let mut s = UdpSocket::bind(port)?;
    duet::println!("echo: udp port {port}");
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = s.recv_from(&mut buf)?;
        s.send_to(&buf[..n], from)?;
    }
}

fn sink(port: u16) -> Result<(), NetError> {
    let mut l = TcpListener::bind_with(port, 4, 256 * 1024)?;
    duet::println!("echo: sink on tcp port {port}");
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut s = l.accept()?;
        let mut total = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(NetError::Closed) => break,
                Ok(n) => total += n as u64,
                Err(e) => return Err(e),
            }
        }
        match s.write_all(&total.to_le_bytes()) {
            Ok(()) | Err(NetError::Closed) => {}
            Err(e) => return Err(e),
        }
    }
}
