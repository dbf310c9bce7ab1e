//! How the monitor ends on `SIGTERM` and `SIGINT`, without a signal thread.
//!
//! The signals are blocked in every thread but the vCPU thread (the thread
//! that calls [`install`] blocks them before it spawns anything; the vCPU
//! thread unblocks them with [`unblock`]), so the kernel delivers them there:
//! a running `KVM_RUN` or a sleeping poll hypercall returns `EINTR`, and the
//! handler only records the signal. The run loop then reads it with
//! [`take`] (one relaxed load per exit) and decides:
//!
//! * the first `SIGTERM` asks the guest to shut down (the identity page's
//!   `REQUEST_SHUTDOWN`) and arms a one-shot timer for the grace period
//!   ([`arm_grace`]); the timer's `SIGALRM` comes back here as
//!   [`Signal::GraceOver`];
//! * `SIGINT`, a second `SIGTERM`, or the end of the grace period stop the
//!   guest at once: [`crate::status::terminated`] gives the exit status.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// Default grace period between a `SIGTERM` and the monitor stopping a
/// guest that has not exited by itself (`--stop-timeout`).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The last signal received and not yet taken (0: none).
static PENDING: AtomicI32 = AtomicI32::new(0);

/// A signal the run loop acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// `SIGTERM`: shut down (gracefully the first time).
    Term,
    /// `SIGINT` (Ctrl-C): stop now.
    Int,
    /// The grace period after a `SIGTERM` is over: stop now.
    GraceOver,
    /// A second `SIGTERM` came before the run loop took the first: stop
    /// now, as a second `SIGTERM` does.
    TermAgain,
}

impl Signal {
    /// The signal number the monitor's exit status reports (128 + it).
    pub fn number(self) -> i32 {
        match self {
            Signal::Term | Signal::GraceOver | Signal::TermAgain => libc::SIGTERM,
            Signal::Int => libc::SIGINT,
        }
    }
}

/// What [`PENDING`] holds for two `SIGTERM`s not yet taken (not a signal
/// number).
const TERM_AGAIN: i32 = -1;

/// The pending value after `sig` arrives with `pending` not yet taken: a
/// stop-now request is never downgraded to a graceful one, and two
/// `SIGTERM`s stay two (one would ask the guest nicely and wait).
fn merge(pending: i32, sig: libc::c_int) -> i32 {
    match (pending, sig) {
        (0, s) => s,
        (libc::SIGTERM, libc::SIGTERM) => TERM_AGAIN,
        (p, libc::SIGTERM) => p,
        (_, s) => s,
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    // Async-signal-safe: a compare-and-swap loop on one lock-free atomic.
    let _ = PENDING.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| Some(merge(p, sig)));
}

fn handled() -> [libc::c_int; 3] {
    [libc::SIGTERM, libc::SIGINT, libc::SIGALRM]
}

/// Changes the calling thread's mask for the handled signals; returns the
/// mask before.
fn set_mask(how: libc::c_int) -> libc::sigset_t {
    // SAFETY: sigset_ts we initialise (sigemptyset/sigaddset, or filled by
    // the call), then pthread_sigmask on the calling thread; no memory is
    // shared.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in handled() {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(how, &set, &mut old);
        old
    }
}

/// Installs the handlers (without `SA_RESTART`, so blocking calls return
/// `EINTR`) and blocks the signals in the calling thread, which must then
/// spawn every other thread: they inherit the blocked mask.
pub fn install() {
    for s in handled() {
        // SAFETY: a zeroed sigaction with a handler that only stores to an
        // atomic (async-signal-safe); no SA_RESTART on purpose.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(s, &sa, std::ptr::null_mut());
        }
    }
    set_mask(libc::SIG_BLOCK);
}

/// Unblocks the signals in the calling thread (the vCPU thread), so they
/// interrupt `KVM_RUN` and blocking calls there.
pub fn unblock() {
    set_mask(libc::SIG_UNBLOCK);
}

/// Runs `spawn` with the signals blocked in the calling thread, so a thread
/// it starts inherits them blocked (the vCPU thread starting a helper: the
/// signals must keep reaching the vCPU thread only).
pub fn with_blocked<T>(spawn: impl FnOnce() -> T) -> T {
    let old = set_mask(libc::SIG_BLOCK);
    let r = spawn();
    // SAFETY: `old` is the mask pthread_sigmask filled in just above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    r
}

/// Takes the pending signal, if any.
#[inline]
pub fn take() -> Option<Signal> {
    if PENDING.load(Ordering::Relaxed) == 0 {
        return None;
    }
    match PENDING.swap(0, Ordering::SeqCst) {
        libc::SIGTERM => Some(Signal::Term),
        libc::SIGINT => Some(Signal::Int),
        libc::SIGALRM => Some(Signal::GraceOver),
        TERM_AGAIN => Some(Signal::TermAgain),
        _ => None,
    }
}

/// Arms a one-shot `SIGALRM` `after` from now (the grace period).
pub fn arm_grace(after: Duration) {
    let t = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: after.as_secs().min(i64::MAX as u64) as libc::time_t,
            // At least 1 us: a zero it_value would disarm the timer.
            tv_usec: (after.subsec_micros().max(u32::from(after.is_zero()))) as libc::suseconds_t,
        },
    };
    // SAFETY: setitimer with a valid itimerval we own.
    unsafe { libc::setitimer(libc::ITIMER_REAL, &t, std::ptr::null_mut()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Signals in arrival order, merged as the handler does.
    fn pending(sigs: &[libc::c_int]) -> i32 {
        sigs.iter().fold(0, |p, &s| merge(p, s))
    }

    #[test]
    fn signals_that_arrive_before_the_loop_takes_them_keep_their_meaning() {
        assert_eq!(pending(&[libc::SIGTERM]), libc::SIGTERM);
        // Two SIGTERMs are the "stop now" of a second SIGTERM, not one.
        assert_eq!(pending(&[libc::SIGTERM, libc::SIGTERM]), TERM_AGAIN);
        assert_eq!(pending(&[libc::SIGTERM; 3]), TERM_AGAIN);
        // A stop-now request is never downgraded by a later SIGTERM.
        assert_eq!(pending(&[libc::SIGINT, libc::SIGTERM]), libc::SIGINT);
        assert_eq!(pending(&[libc::SIGALRM, libc::SIGTERM]), libc::SIGALRM);
        assert_eq!(pending(&[libc::SIGTERM, libc::SIGINT]), libc::SIGINT);
        assert_eq!(
            pending(&[libc::SIGTERM, libc::SIGTERM, libc::SIGINT]),
            libc::SIGINT
        );
        assert_eq!(Signal::TermAgain.number(), libc::SIGTERM);
    }
}
