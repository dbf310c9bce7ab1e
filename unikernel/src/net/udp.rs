//! Blocking UDP.

use super::{block_on, deadline, init, with_stack, NetError};
use alloc::vec;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::udp::{PacketBuffer, PacketMetadata, SendError, Socket};
use smoltcp::wire::IpEndpoint;

/// Datagrams each direction's buffer holds.
const PACKETS: usize = 64;
/// Payload bytes each direction's buffer holds.
const BYTES: usize = 64 * 1024;

/// A UDP socket bound to a local port.
pub struct UdpSocket {
    handle: SocketHandle,
    timeout_ns: Option<u64>,
}

impl UdpSocket {
    /// Binds `port`.
    pub fn bind(port: u16) -> Result<UdpSocket, NetError> {
        init()?;
        let handle = with_stack(|s| {
            let buf = || PacketBuffer::new(vec![PacketMetadata::EMPTY; PACKETS], vec![0; BYTES]);
            let mut sock = Socket::new(buf(), buf());
            sock.bind(port).map_err(|_| NetError::AddrInUse)?;
            Ok(s.sockets.add(sock))
        })??;
        Ok(UdpSocket {
            handle,
            timeout_ns: None,
        })
    }

    /// Sets the timeout of each later blocking call (`None`: wait forever).
    pub fn set_timeout(&mut self, timeout_ns: Option<u64>) {
        self.timeout_ns = timeout_ns;
    }

    /// Sends one datagram to `to`.
    pub fn send_to(&mut self, buf: &[u8], to: IpEndpoint) -> Result<(), NetError> {
        let h = self.handle;
        block_on(deadline(self.timeout_ns), |s| {
            let sock = s.sockets.get_mut::<Socket>(h);
            match sock.send_slice(buf, to) {
                Ok(()) => Some(Ok(())),
                Err(SendError::BufferFull) if buf.len() > BYTES => Some(Err(NetError::TooBig)),
                Err(SendError::BufferFull) => None,
                Err(SendError::Unaddressable) => Some(Err(NetError::Closed)),
            }
        })
    }

    /// Receives one datagram into `buf` (a longer one is dropped and
    /// reported as [`NetError::TooBig`]); returns its length and sender.
    pub fn recv_from(&mut self, buf: &mut [u8]) -> Result<(usize, IpEndpoint), NetError> {
        let h = self.handle;
        block_on(deadline(self.timeout_ns), |s| {
            let sock = s.sockets.get_mut::<Socket>(h);
            if !sock.can_recv() {
                return None;
            }
            Some(match sock.recv_slice(buf) {
                Ok((n, meta)) => Ok((n, meta.endpoint)),
                Err(_) => Err(NetError::TooBig),
            })
        })
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        let h = self.handle;
        let _ = with_stack(|s| {
            s.sockets.remove(h);
        });
    }
}
