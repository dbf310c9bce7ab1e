//! A man in the middle for migration tests: relays one connection from a
//! source to a destination and tampers with the source's frames after the
//! handshake. It knows only the wire format of `docs/migration.md`: a
//! 16-byte header whose bytes 4..8 are the payload length; the source's
//! first two frames (Hello, Auth) are plain, every later one is sealed and
//! carries a 16-byte tag after its payload.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const HEADER: usize = 16;
const TAG: usize = 16;
/// Frame kind of a page run.
const PAGES: u8 = 6;

/// What the proxy does to the first page frame after the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tamper {
    /// Relays everything unchanged (the control case).
    Nothing,
    /// Flips one byte in the middle of its payload.
    Flip,
    /// Leaves it out.
    Drop,
    /// Sends it twice.
    Replay,
    /// Sends it after the frame that follows it.
    Reorder,
}

/// A running proxy: connect the source to [`Proxy::addr`].
pub struct Proxy {
    /// Where the proxy listens.
    pub addr: String,
    relay: JoinHandle<Result<bool, String>>,
}

impl Proxy {
    /// Listens on a free loopback port; the first connection is relayed to
    /// `to`, tampered with as `how` says.
    pub fn start(to: &str, how: Tamper) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = l.local_addr().unwrap().to_string();
        let to = to.to_string();
        let relay = std::thread::spawn(move || relay(l, &to, how));
        Proxy { addr, relay }
    }

    /// Waits for the relay to end; true when it tampered as told.
    pub fn finish(self) -> bool {
        match self.relay.join().expect("the proxy thread panicked") {
            Ok(done) => done,
            Err(e) => panic!("proxy: {e}"),
        }
    }
}

fn accept(l: &TcpListener) -> Result<TcpStream, String> {
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err("the source never connected".into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn connect(to: &str) -> Result<TcpStream, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match TcpStream::connect(to) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("the destination never listened on {to}: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Reads one whole frame (header, payload, tag when sealed); `None` at a
/// clean end of stream.
fn frame(r: &mut impl Read, sealed: bool) -> Option<Vec<u8>> {
    let mut f = vec![0u8; HEADER];
    r.read_exact(&mut f).ok()?;
    let len = u32::from_le_bytes(f[4..8].try_into().unwrap()) as usize;
    f.resize(HEADER + len + if sealed { TAG } else { 0 }, 0);
    r.read_exact(&mut f[HEADER..]).ok()?;
    Some(f)
}

fn relay(l: TcpListener, to: &str, how: Tamper) -> Result<bool, String> {
    let src = accept(&l)?;
    let dst = connect(to)?;
    for s in [&src, &dst] {
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
    }
    // Destination → source: relayed as it comes.
    let (mut d_in, mut s_out) = (
        dst.try_clone().map_err(|e| e.to_string())?,
        src.try_clone().map_err(|e| e.to_string())?,
    );
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut d_in, &mut s_out);
        let _ = d_in.shutdown(Shutdown::Both);
        let _ = s_out.shutdown(Shutdown::Both);
    });
    let (mut s_in, mut d_out) = (src, dst);
    let mut done = how == Tamper::Nothing;
    let mut held: Option<Vec<u8>> = None;
    let mut n = 0;
    while let Some(mut f) = frame(&mut s_in, n >= 2) {
        n += 1;
        let mut out = vec![];
        if let Some(first) = held.take() {
            out.push(f);
            out.push(first);
            done = true;
        } else if !done && n > 2 && f[0] == PAGES {
            match how {
                Tamper::Nothing => out.push(f),
                Tamper::Flip => {
                    let mid = HEADER + (f.len() - HEADER - TAG) / 2;
                    f[mid] ^= 0x01;
                    out.push(f);
                    done = true;
                }
                Tamper::Drop => done = true,
                Tamper::Replay => {
                    out.push(f.clone());
                    out.push(f);
                    done = true;
                }
                Tamper::Reorder => held = Some(f),
            }
        } else {
            out.push(f);
        }
        if out.iter().any(|f| d_out.write_all(f).is_err()) {
            break;
        }
    }
    let _ = s_in.shutdown(Shutdown::Both);
    let _ = d_out.shutdown(Shutdown::Both);
    let _ = back.join();
    Ok(done)
}
