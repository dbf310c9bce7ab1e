//! Blocking TCP: a listener with a pool of listening sockets (smoltcp needs
//! one socket per connection, so the pool is the backlog) and streams.

use super::{block_on, deadline, init, with_stack, NetError, Stack};
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{Socket, SocketBuffer, State};
use smoltcp::wire::IpEndpoint;

/// Default number of connections a listener accepts ahead of `accept`.
pub const DEFAULT_BACKLOG: usize = 16;
/// Default per-connection buffer size (each direction).
pub const DEFAULT_BUFFER: usize = 64 * 1024;

/// A TCP listening port.
pub struct TcpListener {
    port: u16,
    buffer: usize,
    pool: Vec<SocketHandle>,
}

fn listening(s: &mut Stack, port: u16, buffer: usize) -> Result<SocketHandle, NetError> {
    let mut sock = Socket::new(
        SocketBuffer::new(vec![0; buffer]),
        SocketBuffer::new(vec![0; buffer]),
    );
    sock.listen(port).map_err(|_| NetError::AddrInUse)?;
    Ok(s.sockets.add(sock))
}

impl TcpListener {
    /// Listens on `port` with [`DEFAULT_BACKLOG`] and [`DEFAULT_BUFFER`].
    pub fn bind(port: u16) -> Result<TcpListener, NetError> {
        Self::bind_with(port, DEFAULT_BACKLOG, DEFAULT_BUFFER)
    }

    /// Listens on `port`; up to `backlog` connections can be established
    /// before `accept` takes them, each with `buffer` bytes per direction.
    pub fn bind_with(port: u16, backlog: usize, buffer: usize) -> Result<TcpListener, NetError> {
        init()?;
        let pool = with_stack(|s| {
            (0..backlog.max(1))
                .map(|_| listening(s, port, buffer))
                .collect::<Result<Vec<_>, _>>()
        })??;
        Ok(TcpListener { port, buffer, pool })
    }

    /// Waits for a connection.
    pub fn accept(&mut self) -> Result<TcpStream, NetError> {
        let (port, buffer) = (self.port, self.buffer);
        let pool = &mut self.pool;
        block_on(None, |s| take_established(s, pool, port, buffer))
    }

    /// An established connection if one is waiting (no stack poll: see
    /// [`super::wait`]).
    pub fn try_accept(&mut self) -> Result<Option<TcpStream>, NetError> {
        let (port, buffer) = (self.port, self.buffer);
        let pool = &mut self.pool;
        with_stack(|s| take_established(s, pool, port, buffer).transpose())?
    }
}

/// Takes an established connection out of the listening pool, replacing
/// its socket with a fresh listening one.
fn take_established(
    s: &mut Stack,
    pool: &mut [SocketHandle],
    port: u16,
    buffer: usize,
) -> Option<Result<TcpStream, NetError>> {
    for slot in pool.iter_mut() {
        match s.sockets.get::<Socket>(*slot).state() {
            State::Established | State::CloseWait => {
                let fresh = match listening(s, port, buffer) {
                    Ok(h) => h,
                    Err(e) => return Some(Err(e)),
                };
                let h = core::mem::replace(slot, fresh);
                return Some(Ok(TcpStream {
                    handle: Some(h),
                    timeout_ns: None,
                }));
            }
            // A handshake that was reset: listen again.
            State::Closed => {
                let _ = s.sockets.get_mut::<Socket>(*slot).listen(port);
            }
            _ => {}
        }
    }
    None
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        let _ = with_stack(|s| {
            for h in self.pool.drain(..) {
                s.close_tcp(h);
            }
        });
    }
}

/// A TCP connection. Dropping it closes it gracefully (FIN).
pub struct TcpStream {
    handle: Option<SocketHandle>,
    timeout_ns: Option<u64>,
}

impl TcpStream {
    fn h(&self) -> SocketHandle {
        self.handle.expect("a live stream has a socket")
    }

    /// Sets the timeout of each later blocking call (`None`: wait forever).
    pub fn set_timeout(&mut self, timeout_ns: Option<u64>) {
        self.timeout_ns = timeout_ns;
    }

    /// Turns Nagle's algorithm off (`true`) or on, like `TCP_NODELAY`.
    /// Request-response servers want it off: with it on, a small reply
    /// waits for the ACK of the previous one, which a client delays.
    pub fn set_nodelay(&mut self, nodelay: bool) {
        let h = self.h();
        let _ = with_stack(|s| s.sockets.get_mut::<Socket>(h).set_nagle_enabled(!nodelay));
    }

    /// The peer's address.
    pub fn peer(&self) -> Option<IpEndpoint> {
        let h = self.h();
        with_stack(|s| s.sockets.get::<Socket>(h).remote_endpoint())
            .ok()
            .flatten()
    }

    /// Reads at least one byte into `buf`; `Ok(0)` means the peer closed.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, NetError> {
        let h = self.h();
        block_on(deadline(self.timeout_ns), |s| {
            let sock = s.sockets.get_mut::<Socket>(h);
            if sock.can_recv() {
                return Some(sock.recv_slice(buf).map_err(|_| NetError::Closed));
            }
            if !sock.may_recv() {
                return Some(Ok(0));
            }
            None
        })
    }

    /// Writes some of `buf` (at least one byte unless it is empty).
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, NetError> {
        if buf.is_empty() {
            return Ok(0);
        }
        let h = self.h();
        block_on(deadline(self.timeout_ns), |s| {
            let sock = s.sockets.get_mut::<Socket>(h);
            if !sock.may_send() {
                return Some(Err(NetError::Closed));
            }
            if sock.can_send() {
                return Some(sock.send_slice(buf).map_err(|_| NetError::Closed));
            }
            None
        })
    }

    /// Reads what is buffered: `Ok(None)` when nothing is (no stack poll:
    /// see [`super::wait`]), `Ok(Some(0))` once the peer has closed.
    pub fn try_read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        let h = self.h();
        with_stack(|s| {
            let sock = s.sockets.get_mut::<Socket>(h);
            if sock.can_recv() {
                sock.recv_slice(buf).map(Some).map_err(|_| NetError::Closed)
            } else if !sock.may_recv() {
                Ok(Some(0))
            } else {
                Ok(None)
            }
        })?
    }

    /// Queues what fits of `buf` for sending (sent at the next
    /// [`super::wait`]); `Ok(0)` when the buffer is full.
    pub fn try_write(&mut self, buf: &[u8]) -> Result<usize, NetError> {
        let h = self.h();
        with_stack(|s| {
            let sock = s.sockets.get_mut::<Socket>(h);
            if !sock.may_send() {
                return Err(NetError::Closed);
            }
            sock.send_slice(buf).map_err(|_| NetError::Closed)
        })?
    }

    /// Writes all of `buf`.
    pub fn write_all(&mut self, mut buf: &[u8]) -> Result<(), NetError> {
        while !buf.is_empty() {
            let n = self.write(buf)?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Waits until everything written has been acknowledged by the peer.
    pub fn flush(&mut self) -> Result<(), NetError> {
        let h = self.h();
        block_on(deadline(self.timeout_ns), |s| {
            let sock = s.sockets.get::<Socket>(h);
            if sock.send_queue() == 0 {
                Some(Ok(()))
            } else if !sock.may_send() {
                Some(Err(NetError::Closed))
            } else {
                None
            }
        })
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = with_stack(|s| s.close_tcp(h));
        }
    }
}
