//! The poll hypercall: block the vCPU thread (not spin) until a deadline on
//! the guest's monotonic clock or until a device in the wait set is ready.

use crate::call::handle;
use crate::clock::GuestClock;
use crate::devices::Devices;
use crate::memory::GuestMem;
use crate::outcome::Flow;
use duet_abi::hypercall::{Error, Hypercall};
use duet_abi::poll::{PollArgs, POLL_FOREVER, READY_SHUTDOWN};
use std::os::fd::RawFd;
use std::time::Duration;

/// Most devices a guest can wait on (one bit each in `wait`).
const MAX_WAIT: usize = 64;
/// Most fds a poll waits on: two per device (readiness and input) and the
/// wake-up fd.
const MAX_FDS: usize = 2 * duet_abi::boot::MAX_DEVICES + 1;

/// What a poll waits with besides the devices.
pub struct Waker<'a> {
    /// Becomes readable when a control request arrives: the poll returns
    /// (nothing ready) so the run loop serves it; the guest polls again.
    pub wake_fd: RawFd,
    /// A shutdown request the guest has not been told of yet: the next poll
    /// returns at once with [`READY_SHUTDOWN`] (once).
    pub shutdown_unreported: &'a mut bool,
}

/// [`Hypercall::Poll`].
pub fn poll(
    mem: &GuestMem,
    devices: &Devices,
    clock: &GuestClock,
    waker: Waker<'_>,
    value: u32,
) -> Flow {
    handle(mem, Hypercall::Poll, value, |a: &mut PollArgs| {
        if *waker.shutdown_unreported {
            // Once: a guest that ignores the request then sleeps as asked.
            *waker.shutdown_unreported = false;
            a.ready = READY_SHUTDOWN;
            return Ok(0);
        }
        a.ready = 0;
        a.ready = wait(devices, clock, waker.wake_fd, a.deadline_ns, a.wait)?;
        Ok(0)
    })
}

fn wait(
    devices: &Devices,
    clock: &GuestClock,
    wake_fd: RawFd,
    deadline_ns: u64,
    set: u64,
) -> Result<u64, Error> {
    let n = devices.len();
    if n < MAX_WAIT && set >> n != 0 {
        return Err(Error::NoDev);
    }
    // One slot more than devices' fds: the wake-up fd, so a pause or
    // snapshot request ends the wait.
    let mut fds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; MAX_FDS];
    // Per fd: the device, and whether it is an input fd to serve.
    let mut ids = [(0usize, false); MAX_FDS];
    let mut nfds = 0;
    let mut ready = 0u64;
    for (id, dev) in devices.iter().enumerate().take(MAX_WAIT) {
        if set & (1 << id) == 0 {
            continue;
        }
        // A virtio device may have a used buffer the guest has not seen.
        if dev.ready_now() {
            ready |= 1 << id;
            continue;
        }
        match dev.ready_fd() {
            // Devices without an fd complete their work inside the hypercall.
            None => ready |= 1 << id,
            Some(fd) => {
                fds[nfds] = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                ids[nfds] = (id, false);
                nfds += 1;
                if let Some(fd) = dev.input_fd() {
                    if nfds + 1 < MAX_FDS {
                        fds[nfds] = libc::pollfd {
                            fd,
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        ids[nfds] = (id, true);
                        nfds += 1;
                    }
                }
            }
        }
    }
    // Absurd deadlines saturate: past the representable future means "never".
    let timeout = match deadline_ns {
        _ if ready != 0 => Some(Duration::ZERO),
        POLL_FOREVER => None,
        ns => clock.until(ns),
    };
    if nfds == 0 && timeout == Some(Duration::ZERO) {
        return Ok(ready);
    }
    fds[nfds] = libc::pollfd {
        fd: wake_fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `fds[..=nfds]` are initialized pollfds we own and `ts_ptr` is
    // null or points at a live timespec; no signal mask change.
    let rc = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            (nfds + 1) as libc::nfds_t,
            ts_ptr,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        // EINTR (a kick or a signal): return early with nothing more ready;
        // the guest polls again.
        return Ok(ready);
    }
    for (fd, &(id, input)) in fds[..nfds].iter().zip(&ids) {
        if fd.revents == 0 {
            continue;
        }
        // Input for a device that serves it here: served now, and ready
        // only if that gave the guest something.
        if !input || devices.iter().nth(id).is_some_and(|d| d.ready_now()) {
            ready |= 1 << id;
        }
    }
    Ok(ready)
}
