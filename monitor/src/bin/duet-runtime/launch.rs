//! Starting the monitor for a container: the `duet` binary's public command
//! line (`duet run ... --wait-start FIFO`, `duet restore DIR`), in a session
//! of its own, with the engine's stdio (or a terminal handed to the engine
//! through `--console-socket`), and waiting until it is ready or has failed.

use crate::proc;
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a monitor may take to build its VM (or restore it) before `create` gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The `duet` binary: `--duet`, else `$DUET_RUNTIME_DUET`, else the `duet`
/// beside this executable.
pub fn duet_binary(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.into());
    }
    if let Some(p) = std::env::var_os("DUET_RUNTIME_DUET").filter(|p| !p.is_empty()) {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().context("cannot find duet-runtime's own path")?;
    let duet = exe.with_file_name("duet");
    if !duet.is_file() {
        bail!(
            "the monitor {} is missing: install `duet` beside duet-runtime (or pass --duet PATH)",
            duet.display()
        );
    }
    Ok(duet)
}

/// A running monitor child.
pub struct Monitor {
    /// The child process.
    pub child: Child,
    /// Its pid.
    pub pid: i32,
    /// Its start time, from /proc.
    pub start: u64,
}

impl Monitor {
    /// Kills the monitor (a failed create must not leave it behind).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits until `ready` holds, failing if the monitor exits first.
    pub fn wait_ready(&mut self, what: &str, mut ready: impl FnMut(i32) -> bool) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(st) = self.child.try_wait()? {
                bail!("the monitor could not {what} ({st}); its message is above");
            }
            if ready(self.pid) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the monitor did not {what} within {READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Starts `duet ARGS` as the container's process.
pub fn spawn(duet: &Path, args: &[OsString], console_socket: Option<&Path>) -> Result<Monitor> {
    let mut cmd = Command::new(duet);
    cmd.args(args);
    let pty = match console_socket {
        Some(sock) => Some(console(sock)?),
        None => None,
    };
    if let Some(slave) = &pty {
        for (i, set) in [0, 1, 2].into_iter().zip([
            Command::stdin as fn(&mut Command, Stdio) -> &mut Command,
            Command::stdout,
            Command::stderr,
        ]) {
            let fd = slave
                .try_clone()
                .with_context(|| format!("cannot duplicate the terminal for fd {i}"))?;
            set(&mut cmd, Stdio::from(fd));
        }
    }
    let has_tty = pty.is_some();
    // SAFETY: the closure only calls async-signal-safe functions (setsid, ioctl).
    unsafe {
        cmd.pre_exec(move || {
            // Its own session: signals aimed at the engine's group miss it,
            // and a terminal can become its controlling one.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if has_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start the monitor {}", duet.display()))?;
    let pid = child.id() as i32;
    let start = proc::start_time(pid).context("the monitor vanished at once")?;
    Ok(Monitor { child, pid, start })
}

/// Opens a pseudo-terminal, sends its master to the engine over the Unix
/// socket `sock` (SCM_RIGHTS, as runc does), and returns the slave.
fn console(sock: &Path) -> Result<OwnedFd> {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors into the given integers; the
    // name, termios and winsize pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "cannot open a pseudo-terminal: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: openpty succeeded, so both are fresh descriptors we own.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let conn = std::os::unix::net::UnixStream::connect(sock)
        .with_context(|| format!("cannot connect to the console socket {}", sock.display()))?;
    send_fd(&conn, master.as_raw_fd(), b"/dev/ptmx")
        .with_context(|| format!("cannot send the terminal to {}", sock.display()))?;
    Ok(slave)
}

fn send_fd(conn: &std::os::unix::net::UnixStream, fd: i32, name: &[u8]) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: name.as_ptr() as *mut libc::c_void,
        iov_len: name.len(),
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<i32>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: msghdr is plain data; all-zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg_control points at `space` bytes, room for one header with
    // one descriptor, so CMSG_FIRSTHDR is non-null and CMSG_DATA in bounds.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<i32>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
    }
    // SAFETY: msg and everything it points to live across the call.
    if unsafe { libc::sendmsg(conn.as_raw_fd(), &msg, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the FIFO `start` opens.
pub fn make_fifo(path: &Path) -> Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .context("the state path holds a NUL byte")?;
    // SAFETY: mkfifo with a valid C string.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        bail!(
            "cannot make {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Writes the engine's `--pid-file` atomically.
pub fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let path = std::path::absolute(path)?;
    crate::state::write_atomic(&path, pid.to_string().as_bytes())
}

/// Runs `duet ctl SOCKET ARGS`; fails with its message.
pub fn ctl(duet: &Path, socket: &Path, args: &[&str]) -> Result<String> {
    let o = Command::new(duet)
        .arg("ctl")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", duet.display()))?;
    if !o.status.success() {
        bail!(
            "`duet ctl {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_socket_receives_a_terminal() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("console.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            let (c, _) = l.accept().unwrap();
            let mut buf = [0u8; 64];
            let mut cbuf = [0u8; 64];
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: zeroed msghdr is valid; pointers set below stay alive.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = cbuf.len();
            // SAFETY: recvmsg into our buffers.
            let n = unsafe { libc::recvmsg(c.as_raw_fd(), &mut msg, 0) };
            assert!(n > 0);
            // SAFETY: one SCM_RIGHTS header was received into cbuf.
            let fd = unsafe {
                std::ptr::read_unaligned(libc::CMSG_DATA(libc::CMSG_FIRSTHDR(&msg)).cast::<i32>())
            };
            // SAFETY: isatty on a received descriptor.
            assert_eq!(unsafe { libc::isatty(fd) }, 1);
        });
        let slave = console(&sock).unwrap();
        // SAFETY: isatty on our descriptor.
        assert_eq!(unsafe { libc::isatty(slave.as_raw_fd()) }, 1);
        t.join().unwrap();
    }

    #[test]
    fn missing_monitor_is_named() {
        let e = spawn(Path::new("/nonexistent/duet"), &[], None)
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("/nonexistent/duet"));
    }
}
