//! Network namespaces for tests: each test gets its own namespace with a TAP
//! (`tap0`, host side `10.0.0.1/24`) and runs the monitor and all its
//! traffic inside it. The namespace is deleted on drop, panics included.
//! Nothing is ever added to the host's own namespace.

use crate::{image, paths, wait_output, Output};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The host side's address on the TAP.
pub const HOST_IP: &str = "10.0.0.1";
/// The address tests give the guest.
pub const GUEST_IP: &str = "10.0.0.2";
/// The guest's address with its prefix, for `--env IP=`.
pub const GUEST_CIDR: &str = "10.0.0.2/24";
/// The MAC tests give the guest.
pub const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// The TAP's name inside the namespace.
pub const TAP: &str = "tap0";

/// Runs `ip ARGS`, panicking with its output on failure.
fn ip(args: &[&str]) {
    let o = Command::new("ip")
        .args(args)
        .output()
        .expect("run `ip` (iproute2)");
    assert!(
        o.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A network namespace with a configured TAP, deleted on drop.
pub struct Netns {
    /// The namespace's name (`duet-test-PID-N`).
    pub name: String,
}

impl Netns {
    /// Creates the namespace, then `tap0` with `10.0.0.1/24` inside it, up.
    pub fn create() -> Netns {
        Netns::build(&Netns::fresh_name(), None)
    }

    /// [`Netns::create`] with `tap0` reserved to user `uid` (`ip tuntap
    /// add ... user UID`), as root prepares a TAP for an unprivileged monitor.
    pub fn create_for(uid: u32) -> Netns {
        Netns::build(&Netns::fresh_name(), Some(uid))
    }

    /// [`Netns::create`] with a name of the caller's (e.g. for
    /// `--clone-netns PREFIX`, which wants `PREFIX0`, `PREFIX1`, ...).
    pub fn named(name: &str) -> Netns {
        Netns::build(name, None)
    }

    fn fresh_name() -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "duet-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn build(name: &str, owner: Option<u32>) -> Netns {
        let name = name.to_string();
        ip(&["netns", "add", &name]);
        // From here on, drop deletes the namespace (and the TAP in it).
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        let mut tap = vec!["tuntap", "add", "dev", TAP, "mode", "tap"];
        let uid = owner.map(|u| u.to_string());
        if let Some(u) = &uid {
            tap.extend(["user", u]);
        }
        ns.ip(&tap);
        ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP]);
        ns.ip(&["link", "set", TAP, "up"]);
        ns
    }

    /// Runs `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) {
        let mut v = vec!["-n", &self.name];
        v.extend_from_slice(args);
        ip(&v);
    }

    /// `PROGRAM` run inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Boots example `app` inside the namespace on `tap0` with the guest
    /// address and MAC above, plus `opts`, and guest `args`.
    pub fn boot(&self, app: &str, opts: &[&str], args: &[&str]) -> Guest {
        self.boot_with_ip(app, GUEST_CIDR, opts, args)
    }

    /// Like [`Netns::boot`] with `--env IP=ip` (e.g. `dhcp`).
    pub fn boot_with_ip(&self, app: &str, ip: &str, opts: &[&str], args: &[&str]) -> Guest {
        self.boot_on(app, ip, "", opts, args)
    }

    /// Like [`Netns::boot`] with the NIC on `transport` (`virtio` or
    /// `hypercall`).
    pub fn boot_transport(
        &self,
        app: &str,
        transport: &str,
        opts: &[&str],
        args: &[&str],
    ) -> Guest {
        self.boot_on(
            app,
            GUEST_CIDR,
            &format!(",transport={transport}"),
            opts,
            args,
        )
    }

    fn boot_on(&self, app: &str, ip: &str, net: &str, opts: &[&str], args: &[&str]) -> Guest {
        let mac = GUEST_MAC.map(|b| format!("{b:02x}")).join(":");
        let mut c = self.command(paths().bin.to_str().unwrap());
        c.arg("run")
            .arg(image(app))
            .arg("--net")
            .arg(format!("tap={TAP},mac={mac}{net}"))
            .arg("--env")
            .arg(format!("IP={ip}"))
            .args(opts);
        if !args.is_empty() {
            c.arg("--").args(args);
        }
        let child = c
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("DUET_KVM_DEVICE")
            .spawn()
            .expect("spawn ip netns exec duet");
        Guest { child: Some(child) }
    }

    /// The namespace's file, for `setns` (`/run/netns/NAME`).
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it
    /// creates live in the namespace (and may be used from any thread).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).expect("open the namespace");
                // SAFETY: setns on a namespace fd we hold; it changes only
                // this thread's network namespace.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("namespace thread panicked")
        })
    }

    /// Connects to the guest's `port`, retrying while it boots (up to 10 s).
    pub fn connect(&self, port: u16) -> TcpStream {
        let addr: SocketAddr = format!("{GUEST_IP}:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        self.run(|| loop {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    return s;
                }
                Err(e) if Instant::now() > deadline => panic!("cannot reach the guest: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the TAP in it too.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A DHCP server (dnsmasq) on the namespace's TAP that leases exactly
/// [`GUEST_IP`], with [`HOST_IP`] as the router. Killed on drop.
pub struct DhcpServer {
    child: Child,
    _dir: tempfile::TempDir,
}

impl DhcpServer {
    /// Starts dnsmasq inside `ns` (DHCP only: its DNS port is off).
    pub fn start(ns: &Netns) -> DhcpServer {
        let dir = tempfile::tempdir().unwrap();
        let child = ns
            .command("dnsmasq")
            .args([
                "--no-daemon",
                "--conf-file=/dev/null",
                // Stay root: its files live in a private (0700) directory.
                "--user=root",
                "--port=0",
                "--bind-interfaces",
                &format!("--interface={TAP}"),
                &format!("--dhcp-range={GUEST_IP},{GUEST_IP},255.255.255.0,1h"),
                &format!("--dhcp-option=option:router,{HOST_IP}"),
            ])
            .arg(format!(
                "--dhcp-leasefile={}",
                dir.path().join("leases").display()
            ))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run dnsmasq (cargo xtask test installs dnsmasq-base if missing)");
        DhcpServer { child, _dir: dir }
    }
}

impl Drop for DhcpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running guest; killed on drop if still running.
pub struct Guest {
    child: Option<Child>,
}

impl Guest {
    /// Waits (up to `timeout`) for the guest to end by itself.
    pub fn wait(mut self, timeout: Duration) -> Output {
        wait_output(self.child.take().unwrap(), timeout)
    }

    /// The monitor's process id (`ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Whether the monitor is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().unwrap().try_wait(), Ok(None))
    }

    /// Stops the monitor and returns what it printed.
    pub fn stop(mut self) -> Output {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        wait_output(child, Duration::from_secs(10))
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An HTTP/1.0 GET over `s`; returns the whole response.
pub fn http_get(mut s: TcpStream, path: &str) -> String {
    use std::io::{Read, Write};
    write!(s, "GET {path} HTTP/1.0\r\nHost: {GUEST_IP}\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).expect("read the response");
    r
}
