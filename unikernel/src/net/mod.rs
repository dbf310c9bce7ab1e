//! Networking: a smoltcp TCP/IP stack over the monitor's network device.
//!
//! The guest has one interface, on the first network device of the boot
//! info's device table (`duet run --net tap=NAME`). Its IPv4 address comes
//! from the environment: `--env IP=10.0.0.2/24` and optionally
//! `--env GW=10.0.0.1`, or `--env IP=dhcp` to lease one (and the gateway)
//! with DHCP; [`init`] then waits up to [`DHCP_TIMEOUT_NS`] for the lease.
//! `--env NET_SINGLE=1` makes the device use one
//! hypercall per frame instead of batches (for measuring the difference).
//!
//! The socket API blocks: [`TcpListener::accept`], [`TcpStream::read`],
//! [`TcpStream::write`], [`UdpSocket::recv_from`], ... each drive the stack
//! until they can complete, waiting for frames in one place
//! (`wait::wait_io`). Event loops serving many connections at once use the
//! non-blocking `try_*` calls instead and drive the stack with [`wait`]. The interface answers ARP and ping whenever any call
//! is waiting.
//!
//! After a live migration (the identity generation changed) the stack
//! broadcasts a gratuitous ARP, five times over half a second (a request and a reply for the
//! guest's own address), so switches and bridges learn the guest's new
//! port and neighbours refresh their caches.
//!
//! ```ignore
//! let l = duet::net::TcpListener::bind(80)?;
//! loop {
//!     let mut s = l.accept()?;
//!     s.write_all(b"hello\n")?;
//! }
//! ```

mod device;
mod stats;
mod tcp;
mod udp;
mod vnet;
mod wait;

pub use smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address};
pub use stats::DeviceStats;
pub use tcp::{TcpListener, TcpStream};
pub use udp::UdpSocket;

use alloc::vec::Vec;
use device::NetDev;
use duet_abi::boot::DeviceKind;
use duet_abi::hypercall::Error;
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::{dhcpv4, tcp as stcp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};
use spin::Mutex;

/// Why a network call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// The monitor gave the guest no network device (`--net`).
    NoDevice,
    /// `IP` is missing or malformed (want `IP=a.b.c.d/prefix`), or `GW` is
    /// malformed.
    BadConfig,
    /// The device failed: the host's TAP vanished or reported an error.
    Device(Error),
    /// The port is taken or invalid.
    AddrInUse,
    /// The connection is closed for sending (or was reset).
    Closed,
    /// The call's timeout passed.
    TimedOut,
    /// A datagram does not fit the socket's buffer.
    TooBig,
    /// The host asked the guest to shut down ([`crate::shutdown_requested`]):
    /// blocking calls stop waiting so the app can exit cleanly.
    Shutdown,
}

impl core::fmt::Display for NetError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NetError::NoDevice => f.write_str("no network device (run with --net tap=NAME)"),
            NetError::BadConfig => {
                f.write_str("bad network config: set --env IP=a.b.c.d/prefix [--env GW=a.b.c.d]")
            }
            NetError::Device(e) => write!(f, "network device lost: {e}"),
            NetError::AddrInUse => f.write_str("port in use"),
            NetError::Closed => f.write_str("connection closed"),
            NetError::TimedOut => f.write_str("timed out"),
            NetError::TooBig => f.write_str("datagram too big"),
            NetError::Shutdown => f.write_str("shutdown requested"),
        }
    }
}

/// The interface's configuration, as [`init`] set it up.
#[derive(Clone, Copy, Debug)]
pub struct NetInfo {
    /// Device id in the device table.
    pub device: u32,
    /// MAC address.
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: u32,
    /// Address and prefix length (`0.0.0.0/0` until a DHCP lease arrives).
    pub ip: (Ipv4Address, u8),
    /// Whether the address comes from DHCP.
    pub dhcp: bool,
    /// Default gateway.
    pub gateway: Option<Ipv4Address>,
    /// Whether the device makes one hypercall per frame.
    pub single_frame: bool,
}

pub(crate) struct Stack {
    iface: Interface,
    dev: NetDev,
    pub(crate) sockets: SocketSet<'static>,
    /// Closed TCP sockets still finishing their shutdown.
    closing: Vec<Closing>,
    /// The DHCP client, when `IP=dhcp`.
    dhcp: Option<SocketHandle>,
    info: NetInfo,
    /// The identity generation the stack last announced itself in.
    generation: u64,
    /// Gratuitous ARPs still to send after a move, and when the next is due
    /// (guest monotonic ns): one can be lost while the new port comes up
    /// (a bridge learns a port only once its carrier is seen).
    announcements: (u32, u64),
}

/// Gratuitous ARPs sent after a move, and the gap before the first repeat
/// (each later gap is one step longer), as QEMU's announce does.
const ANNOUNCE_ROUNDS: u32 = 5;
const ANNOUNCE_STEP_NS: u64 = 50_000_000;

/// How long a closed socket may take to finish its shutdown before it is
/// reset (Linux's `tcp_fin_timeout`): a peer that never closes its side
/// must not hold a socket for ever.
const LINGER_NS: u64 = 60_000_000_000;

/// A TCP socket the application closed.
struct Closing {
    handle: SocketHandle,
    /// When it is reset if still not closed.
    deadline_ns: u64,
    /// Reset; removed at the next poll, once the reset went out.
    aborted: bool,
}

/// A gratuitous ARP frame's length (Ethernet header + ARP for IPv4).
const GARP_LEN: usize = 14 + 28;

/// Fills `f` ([`GARP_LEN`] bytes) with a broadcast gratuitous ARP for
/// `ip` at `mac`: operation `op` (1 request, 2 reply), sender and target
/// address both `ip`.
fn garp(f: &mut [u8], mac: [u8; 6], ip: [u8; 4], op: u8) {
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    // Ethernet, IPv4, address lengths 6 and 4, the operation.
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, op]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip);
    let target: [u8; 6] = if op == 2 { [0xff; 6] } else { [0; 6] };
    f[32..38].copy_from_slice(&target);
    f[38..42].copy_from_slice(&ip);
}

/// How long [`init`] waits for a DHCP lease.
pub const DHCP_TIMEOUT_NS: u64 = 10_000_000_000;

static STACK: Mutex<Option<Stack>> = Mutex::new(None);

fn now() -> Instant {
    Instant::from_micros((wait::now_ns() / 1000) as i64)
}

fn parse_config() -> Result<NetInfo, NetError> {
    let bi = crate::rt::boot_info();
    let (id, d) = bi.devices[..bi.device_count as usize]
        .iter()
        .enumerate()
        .find(|(_, d)| d.kind == DeviceKind::Net as u32)
        .ok_or(NetError::NoDevice)?;
    let ip_env = crate::env::var("IP").ok_or(NetError::BadConfig)?;
    let dhcp = ip_env == "dhcp";
    let (ip, prefix) = if dhcp {
        (Ipv4Address::UNSPECIFIED, 0)
    } else {
        let (addr, prefix) = ip_env.split_once('/').ok_or(NetError::BadConfig)?;
        let ip: Ipv4Address = addr.parse().map_err(|_| NetError::BadConfig)?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or(NetError::BadConfig)?;
        (ip, prefix)
    };
    let gateway = match crate::env::var("GW") {
        Some(g) => Some(g.parse().map_err(|_| NetError::BadConfig)?),
        None => None,
    };
    let mut mac = [0; 6];
    mac.copy_from_slice(&d.mac[..6]);
    Ok(NetInfo {
        device: id as u32,
        mac,
        mtu: d.mtu,
        ip: (ip, prefix),
        dhcp,
        gateway,
        single_frame: crate::env::var("NET_SINGLE").is_some_and(|v| v == "1"),
    })
}

/// Brings the interface up from the device table and environment (see the
/// module docs). Idempotent; the socket constructors call it.
pub fn init() -> Result<NetInfo, NetError> {
    let dhcp = {
        let mut g = STACK.lock();
        match g.as_ref() {
            Some(s) => return Ok(s.info),
            None => *g = Some(new_stack()?),
        }
        g.as_ref().is_some_and(|s| s.dhcp.is_some())
    };
    if dhcp {
        // The stack is up without an address: wait for the lease.
        block_on(deadline(Some(DHCP_TIMEOUT_NS)), |s| {
            (s.info.ip.1 != 0).then_some(Ok(()))
        })?;
    }
    with_stack(|s| s.info)
}

fn new_stack() -> Result<Stack, NetError> {
    let info = parse_config()?;
    let mut dev = NetDev::new(info.device, info.mtu, info.single_frame);
    let mut cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(info.mac)));
    cfg.random_seed = crate::rt::rdtsc();
    let mut iface = Interface::new(cfg, &mut dev, now());
    if !info.dhcp {
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(info.ip.0), info.ip.1));
        });
    }
    if let Some(gw) = info.gateway {
        iface
            .routes_mut()
            .add_default_ipv4_route(gw)
            .map_err(|_| NetError::BadConfig)?;
    }
    let mut sockets = SocketSet::new(Vec::new());
    let dhcp = info.dhcp.then(|| {
        let mut sock = dhcpv4::Socket::new();
        // smoltcp waits 10 s between DISCOVERs; a unikernel that boots in
        // milliseconds (maybe before its server is up) should retry sooner.
        let mut retry = sock.get_retry_config();
        retry.discover_timeout = smoltcp::time::Duration::from_millis(500);
        retry.initial_request_timeout = smoltcp::time::Duration::from_secs(1);
        sock.set_retry_config(retry);
        sockets.add(sock)
    });
    Ok(Stack {
        iface,
        dev,
        sockets,
        closing: Vec::new(),
        dhcp,
        info,
        generation: crate::identity().generation,
        announcements: (0, 0),
    })
}

/// The device's counters (zero before [`init`]).
pub fn stats() -> DeviceStats {
    STACK
        .lock()
        .as_ref()
        .map_or_else(DeviceStats::default, |s| s.dev.stats())
}

impl Stack {
    /// One round: fetch frames, run the stack, send what it produced.
    /// Returns whether any socket may have changed.
    fn poll(&mut self) -> bool {
        let generation = crate::identity().generation;
        if generation != self.generation {
            self.generation = generation;
            self.announcements = (ANNOUNCE_ROUNDS, 0);
        }
        let (left, due) = self.announcements;
        let now_ns = wait::now_ns();
        if left > 0 && now_ns >= due {
            self.announce();
            let gap = ANNOUNCE_STEP_NS * u64::from(ANNOUNCE_ROUNDS - left + 1);
            self.announcements = (left - 1, now_ns.saturating_add(gap));
        }
        self.dev.refill();
        let changed = self.iface.poll(now(), &mut self.dev, &mut self.sockets)
            == PollResult::SocketStateChanged;
        self.dev.flush_tx();
        self.dhcp_event();
        let sockets = &mut self.sockets;
        let now_ns = wait::now_ns();
        self.closing.retain_mut(|c| {
            let s = sockets.get_mut::<stcp::Socket>(c.handle);
            // Nobody reads a closed stream: drop what the peer still sends
            // so that it is not stalled by a full window.
            while s.can_recv() && s.recv(|b| (b.len(), ())).is_ok() {}
            let done =
                c.aborted || matches!(s.state(), stcp::State::Closed | stcp::State::TimeWait);
            if done {
                sockets.remove(c.handle);
                return false;
            }
            if now_ns >= c.deadline_ns {
                s.abort();
                c.aborted = true;
            }
            true
        });
        changed
    }

    /// Broadcasts a gratuitous ARP request and reply for the interface's
    /// address (nothing without one), after the guest moved.
    fn announce(&mut self) {
        let ip = self.info.ip.0;
        if ip.is_unspecified() {
            return;
        }
        for op in [1u8, 2] {
            self.dev
                .push_frame(GARP_LEN, |f| garp(f, self.info.mac, ip.octets(), op));
        }
        self.dev.flush_tx();
    }

    /// Applies a DHCP lease (or its loss) to the interface.
    fn dhcp_event(&mut self) {
        let Some(h) = self.dhcp else { return };
        match self.sockets.get_mut::<dhcpv4::Socket>(h).poll() {
            Some(dhcpv4::Event::Configured(c)) => {
                let (addr, prefix) = (c.address.address(), c.address.prefix_len());
                self.iface.update_ip_addrs(|a| {
                    a.clear();
                    let _ = a.push(IpCidr::new(IpAddress::Ipv4(addr), prefix));
                });
                self.iface.routes_mut().remove_default_ipv4_route();
                if let Some(r) = c.router {
                    let _ = self.iface.routes_mut().add_default_ipv4_route(r);
                }
                self.info.ip = (addr, prefix);
                self.info.gateway = c.router;
            }
            Some(dhcpv4::Event::Deconfigured) => {
                self.iface.update_ip_addrs(|a| a.clear());
                self.iface.routes_mut().remove_default_ipv4_route();
                self.info.ip = (Ipv4Address::UNSPECIFIED, 0);
                self.info.gateway = None;
            }
            None => {}
        }
    }

    pub(crate) fn close_tcp(&mut self, h: SocketHandle) {
        self.sockets.get_mut::<stcp::Socket>(h).close();
        self.closing.push(Closing {
            handle: h,
            deadline_ns: wait::now_ns().saturating_add(LINGER_NS),
            aborted: false,
        });
        self.poll();
    }

    /// Waits until `deadline_ns` for frames or a stack timer, unless a poll
    /// already changed a socket.
    fn wait(&mut self, deadline_ns: Option<u64>) -> Result<(), NetError> {
        if crate::shutdown_requested() {
            return Err(NetError::Shutdown);
        }
        if self.poll() {
            return Ok(());
        }
        if let Some(e) = self.dev.error() {
            return Err(NetError::Device(e));
        }
        let now_ns = wait::now_ns();
        let stack_deadline = self
            .iface
            .poll_delay(now(), &self.sockets)
            .map(|d| now_ns.saturating_add(d.total_micros().saturating_mul(1000)));
        // Wake for the next announcement after a move too.
        let announce = (self.announcements.0 > 0).then_some(self.announcements.1);
        let deadline = [deadline_ns, stack_deadline, announce]
            .into_iter()
            .flatten()
            .min();
        let id = self.info.device;
        wait::wait_io(&mut self.dev, id, deadline, 1 << id);
        self.poll();
        if let Some(e) = self.dev.error() {
            return Err(NetError::Device(e));
        }
        if crate::shutdown_requested() {
            return Err(NetError::Shutdown);
        }
        Ok(())
    }
}

/// Runs `f` against the stack until it returns `Some`, polling the stack
/// and waiting for frames in between. `deadline_ns` is guest monotonic time.
pub(crate) fn block_on<T>(
    deadline_ns: Option<u64>,
    mut f: impl FnMut(&mut Stack) -> Option<Result<T, NetError>>,
) -> Result<T, NetError> {
    let mut g = STACK.lock();
    let s = g.as_mut().ok_or(NetError::NoDevice)?;
    s.poll();
    loop {
        if let Some(r) = f(s) {
            // Send what `f` queued (data, window updates) right away.
            s.poll();
            return r;
        }
        if deadline_ns.is_some_and(|d| wait::now_ns() >= d) {
            return Err(NetError::TimedOut);
        }
        s.wait(deadline_ns)?;
    }
}

/// Drives the stack for event loops that use the `try_*` calls: sends what
/// they queued, then waits up to `timeout_ns` for traffic (or a stack timer)
/// unless some socket already changed. Device failures come back as errors.
pub fn wait(timeout_ns: Option<u64>) -> Result<(), NetError> {
    let mut g = STACK.lock();
    let s = g.as_mut().ok_or(NetError::NoDevice)?;
    s.wait(deadline(timeout_ns))
}

/// Runs `f` on the stack once, after a poll (for non-blocking queries).
pub(crate) fn with_stack<T>(f: impl FnOnce(&mut Stack) -> T) -> Result<T, NetError> {
    let mut g = STACK.lock();
    let s = g.as_mut().ok_or(NetError::NoDevice)?;
    Ok(f(s))
}

/// A deadline `timeout_ns` from now.
pub(crate) fn deadline(timeout_ns: Option<u64>) -> Option<u64> {
    timeout_ns.map(|t| wait::now_ns().saturating_add(t))
}
