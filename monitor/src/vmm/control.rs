//! The control block: how other threads get work done on the vCPU thread.
//!
//! The vCPU thread owns the [`Vmm`] and handles every hypercall between two
//! `KVM_RUN`s, so anything that touches the guest (pause, snapshot, a
//! migration step, `status`) is a job the vCPU thread runs itself, at an
//! exit: never in the middle of a hypercall. To get there quickly the
//! requester queues the job, raises `pending`, sets `immediate_exit` in the
//! vCPU's `kvm_run` page and sends the vCPU thread a real-time signal, so a
//! running `KVM_RUN` returns `EINTR` and one about to start returns at
//! once. A hypercall that blocks on the host (poll) also waits on
//! [`Control::wake_fd`] and returns when it fires.

use super::Vmm;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Work for the vCPU thread.
type Job = Box<dyn FnOnce(&mut Vmm) + Send>;

/// The guest has ended (or never started): nobody will run the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the guest has exited")]
pub struct Exited;

/// Shared between the vCPU thread and whoever sends it work.
pub struct Control {
    /// Raised when a job is queued; the run loop checks it after each exit
    /// (one relaxed load on the hot path).
    pending: AtomicBool,
    /// Set once the guest has ended: jobs are refused.
    exited: AtomicBool,
    queue: Mutex<VecDeque<Job>>,
    queued: Condvar,
    /// The vCPU's `kvm_run` `immediate_exit` byte, once it runs.
    immediate_exit: AtomicPtr<u8>,
    /// The vCPU thread, for signalling.
    thread: OnceLock<libc::pthread_t>,
    /// Written when a job is queued (see the module comment).
    wake: EventFd,
    /// One job at a time, and `finish` waits out the one in flight.
    serial: Mutex<()>,
}

/// The real-time signal that kicks the vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: the signal only makes KVM_RUN return EINTR.
}

impl Control {
    /// A new control block. Registers the kick signal's (no-op) handler.
    pub fn new() -> std::io::Result<Self> {
        vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        Ok(Control {
            pending: AtomicBool::new(false),
            exited: AtomicBool::new(false),
            queue: Mutex::new(VecDeque::new()),
            queued: Condvar::new(),
            immediate_exit: AtomicPtr::new(std::ptr::null_mut()),
            thread: OnceLock::new(),
            wake: EventFd::new(EFD_NONBLOCK)?,
            serial: Mutex::new(()),
        })
    }

    /// vCPU thread: records the calling thread as the vCPU thread and
    /// `immediate_exit` as its `kvm_run` byte.
    pub(super) fn attach(&self, immediate_exit: *mut u8) {
        // SAFETY: pthread_self has no preconditions.
        let _ = self.thread.set(unsafe { libc::pthread_self() });
        self.immediate_exit.store(immediate_exit, Ordering::Release);
    }

    /// Whether a job waits (the run loop's hot-path check).
    #[inline]
    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    /// The fd a blocking hypercall must also wait on.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Sets or clears `immediate_exit` (either thread).
    pub(super) fn set_immediate_exit(&self, v: bool) {
        let p = self.immediate_exit.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: `p` is the vCPU's kvm_run byte, alive until `finish`
            // clears the pointer (which waits out every requester); every
            // thread touches it atomically.
            unsafe { AtomicU8::from_ptr(p) }.store(u8::from(v), Ordering::SeqCst);
        }
    }

    fn kick(&self) {
        self.set_immediate_exit(true);
        if let Some(t) = self.thread.get() {
            // SAFETY: `t` is a live thread of this process (the vCPU thread
            // outlives every job: it refuses them once the guest ended).
            unsafe { libc::pthread_kill(*t, kick_signal()) };
        }
        let _ = self.wake.write(1);
    }

    /// Runs `f` on the vCPU thread at its next exit and returns its result.
    pub fn on_vcpu<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Vmm) -> R + Send + 'static,
    ) -> Result<R, Exited> {
        let _one = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        if self.exited.load(Ordering::SeqCst) {
            return Err(Exited);
        }
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |vmm| {
            let _ = tx.send(f(vmm));
        });
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(job);
        self.pending.store(true, Ordering::SeqCst);
        self.queued.notify_all();
        self.kick();
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(r) => return Ok(r),
                // The job was dropped unrun: the guest ended.
                Err(RecvTimeoutError::Disconnected) => return Err(Exited),
                // The guest ended with the job still queued.
                Err(RecvTimeoutError::Timeout) if self.exited.load(Ordering::SeqCst) => {
                    return rx.try_recv().map_err(|_| Exited);
                }
                // Still busy (a snapshot) or the kick was missed: kick again.
                Err(RecvTimeoutError::Timeout) => {
                    if self.pending.load(Ordering::SeqCst) {
                        self.kick();
                    }
                }
            }
        }
    }

    /// vCPU thread: takes the next job, waiting up to `wait` for one.
    pub(super) fn next(&self, wait: Option<Duration>) -> Option<Job> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.is_empty() {
            if let Some(t) = wait {
                q = self
                    .queued
                    .wait_timeout(q, t)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        q.pop_front()
    }

    /// vCPU thread: acknowledges the pending flag before draining jobs.
    pub(super) fn take_pending(&self) {
        self.pending.store(false, Ordering::SeqCst);
        let _ = self.wake.read();
    }

    /// The guest has ended (or will never start); drop what is queued (its
    /// requesters learn the guest exited) and refuse what comes.
    pub fn finish(&self) {
        self.exited.store(true, Ordering::SeqCst);
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).clear();
        // Wait out a requester in flight: after this nobody kicks the
        // thread or touches its `kvm_run` page again.
        let _one = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        self.immediate_exit
            .store(std::ptr::null_mut(), Ordering::Release);
    }
}
