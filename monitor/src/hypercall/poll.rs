//! The poll hypercall: block the vCPU thread (not spin) until a deadline on
//! the guest's monotonic clock or until a device in the wait set is ready.

use super::{bad_args, Flow};
use crate::vm::Vm;
use duet_abi::hypercall::{Error, Hypercall};
use duet_abi::poll::{PollArgs, POLL_FOREVER};
use duet_abi::Gpa;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Most devices a guest can wait on (one bit each in `wait`).
const MAX_WAIT: usize = 64;

/// [`Hypercall::Poll`].
pub fn poll(vm: &mut Vm, value: u32) -> Flow {
    let at = Gpa(u64::from(value));
    let mut args: PollArgs = match vm.mem.read_plain(at) {
        Ok(a) => a,
        Err(e) => return bad_args(Hypercall::Poll, value, e),
    };
    if vm.shutdown_unreported {
        // Once: a guest that ignores the request then sleeps as asked.
        vm.shutdown_unreported = false;
        args.ready = duet_abi::poll::READY_SHUTDOWN;
        args.ret = 0;
        return match vm.mem.write_plain(at, &args) {
            Ok(()) => Flow::Continue,
            Err(e) => bad_args(Hypercall::Poll, value, e),
        };
    }
    match wait(vm, args.deadline_ns, args.wait) {
        Ok(ready) => {
            args.ready = ready;
            args.ret = 0;
        }
        Err(e) => {
            args.ready = 0;
            args.ret = e.to_ret();
        }
    }
    match vm.mem.write_plain(at, &args) {
        Ok(()) => Flow::Continue,
        Err(e) => bad_args(Hypercall::Poll, value, e),
    }
}

fn wait(vm: &Vm, deadline_ns: u64, set: u64) -> Result<u64, Error> {
    let n = vm.devices.list.len();
    if n < MAX_WAIT && set >> n != 0 {
        return Err(Error::NoDev);
    }
    // One slot more than devices: the control block's wake-up fd, so a pause
    // or snapshot request ends the wait (the guest then polls again).
    let mut fds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; MAX_WAIT + 1];
    let mut ids = [0usize; MAX_WAIT];
    let mut nfds = 0;
    let mut ready = 0u64;
    for id in (0..n.min(MAX_WAIT)).filter(|i| set & (1 << i) != 0) {
        match vm.devices.list[id].ready_fd() {
            // Devices without an fd complete their work inside the hypercall.
            None => ready |= 1 << id,
            Some(fd) => {
                fds[nfds] = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                ids[nfds] = id;
                nfds += 1;
            }
        }
    }
    // Absurd deadlines saturate: past the representable future means "never".
    let (anchor, anchor_ns) = vm.clock_anchor;
    let timeout = match deadline_ns {
        POLL_FOREVER => None,
        ns if ns <= anchor_ns => Some(Duration::ZERO),
        ns => anchor
            .checked_add(Duration::from_nanos(ns - anchor_ns))
            .map(|t| t.saturating_duration_since(Instant::now())),
    };
    let timeout = if ready != 0 {
        Some(Duration::ZERO)
    } else {
        timeout
    };
    if nfds == 0 && timeout == Some(Duration::ZERO) {
        return Ok(ready);
    }
    fds[nfds] = libc::pollfd {
        fd: vm.ctl.wake.as_raw_fd(),
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
        // EINTR (a kick): return early with nothing ready; the guest polls again.
        return Ok(ready);
    }
    for (fd, &id) in fds[..nfds].iter().zip(&ids) {
        if fd.revents != 0 {
            ready |= 1 << id;
        }
    }
    Ok(ready)
}
