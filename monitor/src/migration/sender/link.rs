//! The connection to the destination: connecting while it starts, and
//! sealed frames after the handshake.

use super::super::protocol::{self, Frame, Kind};
use super::super::session::Session;
use super::super::MigrateError;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Socket timeout for every read and write.
pub(super) const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to retry connecting while the destination starts.
const CONNECT_FOR: Duration = Duration::from_secs(5);

/// The connection after the handshake: every frame sealed.
pub(super) struct Link {
    pub(super) tcp: TcpStream,
    pub(super) session: Session,
}

impl Link {
    pub(super) fn write(&mut self, kind: Kind, payload: &[u8]) -> Result<(), MigrateError> {
        let r = self.session.write(&mut self.tcp, kind, payload);
        self.why_broken(r)
    }

    /// Seals `frame` in place ([`Session::seal`]) and writes it.
    pub(super) fn write_sealed(
        &mut self,
        kind: Kind,
        frame: &mut [u8],
    ) -> Result<(), MigrateError> {
        use std::io::Write;
        self.session.seal(kind, frame)?;
        let r = self.tcp.write_all(frame).map_err(MigrateError::Connection);
        self.why_broken(r)
    }

    /// A write failed because the destination hung up: it usually said why
    /// first (a refused frame, say), so that reason replaces "broken pipe".
    fn why_broken(&mut self, r: Result<(), MigrateError>) -> Result<(), MigrateError> {
        let Err(MigrateError::Connection(e)) = r else {
            return r;
        };
        let _ = self.tcp.set_read_timeout(Some(Duration::from_secs(1)));
        match self.read() {
            Ok(f) if f.kind == Kind::Refuse => {
                Err(MigrateError::Refused(protocol::refusal(&f.payload)))
            }
            _ => Err(MigrateError::Connection(e)),
        }
    }

    pub(super) fn read(&mut self) -> Result<Frame, MigrateError> {
        self.session.read(&mut self.tcp)
    }
}

pub(super) fn connect(addr: &str) -> Result<TcpStream, MigrateError> {
    let deadline = Instant::now() + CONNECT_FOR;
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(MigrateError::Connect)?
        .collect();
    loop {
        let mut last = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, IO_TIMEOUT) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        let e = last.unwrap_or_else(|| std::io::Error::other("no address"));
        if e.kind() != std::io::ErrorKind::ConnectionRefused || Instant::now() > deadline {
            return Err(MigrateError::Connect(e));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
