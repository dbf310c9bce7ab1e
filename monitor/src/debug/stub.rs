//! The GDB thread: accepts GDB on the given address only, runs one
//! `gdbstub` session at a time, and keeps accepting until the guest ends.
//!
//! A session that ends cleanly (`detach`) lets the guest run on; one that
//! ends badly (garbage, a connection cut mid-packet) leaves it paused, with
//! GDB's breakpoints taken out, for the next debugger or `duet ctl resume`.
//! `kill` ends the guest.

use super::target::{Gone, RemoteTarget};
use super::{Cmd, Stop};
use crate::vmm::Control;
use gdbstub::conn::ConnectionExt;
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::{DisconnectReason, GdbStub, SingleThreadStopReason};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why GDB cannot be served.
#[derive(Debug, Error)]
pub enum DebugError {
    /// Not a socket address.
    #[error("GDB address {0}: give a numeric ADDRESS:PORT such as 127.0.0.1:1234 (GDB is served on that address only)")]
    BadAddr(String),
    /// `bind` failed (the port is in use, or the address is not ours).
    #[error(
        "cannot listen for GDB on {addr}: {source}; pick another port (port 0 picks a free one)"
    )]
    Bind {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// The thread or its wake-up descriptor could not be made.
    #[error("cannot start the GDB server: {0}")]
    Start(std::io::Error),
    /// This guest's GDB server already runs.
    #[error("GDB is already served on {0}; connect there")]
    Served(SocketAddr),
}

/// A bound GDB socket, not yet served.
#[derive(Debug)]
pub struct Listener {
    socket: TcpListener,
    addr: SocketAddr,
}

impl Listener {
    /// Binds `addr` (`ADDRESS:PORT`), and only that address.
    pub fn bind(addr: &str) -> Result<Listener, DebugError> {
        let want: SocketAddr = addr
            .parse()
            .map_err(|_| DebugError::BadAddr(addr.to_string()))?;
        let socket = TcpListener::bind(want).map_err(|source| DebugError::Bind {
            addr: addr.to_string(),
            source,
        })?;
        let addr = socket.local_addr().map_err(DebugError::Start)?;
        Ok(Listener { socket, addr })
    }

    /// The address bound (its real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The vCPU thread's end of the GDB thread: where stops are posted.
#[derive(Debug)]
pub struct Link {
    /// The address GDB connects to.
    pub(crate) addr: SocketAddr,
    stops: Sender<Stop>,
    wake: Arc<EventFd>,
    reported: Receiver<()>,
}

impl Link {
    /// Tells the GDB thread the guest stopped (or ended).
    pub(crate) fn post(&self, stop: Stop) {
        if self.stops.send(stop).is_ok() {
            let _ = self.wake.write(1);
        }
    }

    /// Waits (briefly) until the GDB thread has told GDB how the guest
    /// ended, so the monitor does not exit with the news unsent.
    pub fn wait_reported(&self) {
        let _ = self.reported.recv_timeout(Duration::from_secs(2));
    }
}

/// Starts the GDB thread on `l`, sending its commands through `ctl`.
pub(crate) fn start(l: Listener, ctl: Arc<Control>) -> Result<Link, DebugError> {
    let wake = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(DebugError::Start)?);
    let (stops, stop_rx) = mpsc::channel();
    let (reported_tx, reported) = mpsc::channel();
    let addr = l.addr;
    let target = RemoteTarget::new(ctl, stop_rx, wake.clone());
    // Started by the vCPU thread: SIGTERM and SIGINT must keep going there.
    crate::signals::with_blocked(|| {
        std::thread::Builder::new()
            .name("duet-gdb".into())
            .spawn(move || {
                crate::seccomp::install_or_exit(crate::seccomp::Thread::Gdb);
                serve(l.socket, target, reported_tx)
            })
    })
    .map_err(DebugError::Start)?;
    Ok(Link {
        addr,
        stops,
        wake,
        reported,
    })
}

fn serve(socket: TcpListener, mut target: RemoteTarget, reported: Sender<()>) {
    for conn in socket.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn!("GDB connection failed: {e}");
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string());
        target.forget_stops();
        match target.call_until_ready(Cmd::Attach) {
            Ok(_) => log::info!("GDB attached from {peer}; the guest is stopped"),
            Err(Gone::Exited) => return,
            Err(Gone::Refused(e)) => {
                log::warn!("GDB from {peer} refused: {e}");
                continue;
            }
        }
        // The stub gets a clone: after a kill, the answer it does not send
        // (outside extended mode) goes out on the original.
        let conn = match stream.try_clone() {
            Ok(c) => c,
            Err(e) => {
                log::warn!("GDB connection from {peer}: {e}");
                let _ = target.call(Cmd::Detach { resume: false });
                continue;
            }
        };
        let result = GdbStub::new(conn).run_blocking::<Loop>(&mut target);
        match result {
            Ok(DisconnectReason::TargetExited(_) | DisconnectReason::TargetTerminated(_)) => {
                let _ = reported.send(());
                return;
            }
            Ok(DisconnectReason::Disconnect) => {
                log::info!("GDB detached; the guest runs on");
                let _ = target.call(Cmd::Detach { resume: true });
            }
            Ok(DisconnectReason::Kill) => {
                // GDB waits for this before it lets go; send it while the
                // monitor still runs.
                let _ = (&stream).write_all(b"$OK#9a");
                let _ = target.call(Cmd::Kill);
                return;
            }
            Err(e) => {
                if target.exited() {
                    let _ = reported.send(());
                    return;
                }
                log::warn!("the GDB session from {peer} ended: {e}; the guest stays paused (`duet ctl SOCKET resume`, or attach GDB again)");
                if let Err(Gone::Exited) = target.call(Cmd::Detach { resume: false }) {
                    return;
                }
            }
        }
    }
}

/// How the session waits while the guest runs: for a stop from the vCPU
/// thread or a byte from GDB (a Ctrl-C), whichever comes first.
enum Loop {}

impl BlockingEventLoop for Loop {
    type Target = RemoteTarget;
    type Connection = TcpStream;
    type StopReason = SingleThreadStopReason<u64>;

    fn wait_for_stop_reason(
        target: &mut RemoteTarget,
        conn: &mut TcpStream,
    ) -> Result<Event<Self::StopReason>, WaitForStopReasonError<String, std::io::Error>> {
        loop {
            if let Some(stop) = target.next_stop() {
                return Ok(Event::TargetStopped(stop));
            }
            let mut fds = [
                libc::pollfd {
                    fd: conn.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: target.wake_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of two pollfds for the call's
            // duration; both descriptors are open (we own the stream, the
            // target owns the eventfd).
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(WaitForStopReasonError::Connection(e));
            }
            if fds[1].revents != 0 {
                target.clear_wake();
                continue;
            }
            if fds[0].revents != 0 {
                let byte = conn.read().map_err(WaitForStopReasonError::Connection)?;
                return Ok(Event::IncomingData(byte));
            }
        }
    }

    fn on_interrupt(target: &mut RemoteTarget) -> Result<Option<Self::StopReason>, String> {
        target.interrupt().map(Some)
    }
}
