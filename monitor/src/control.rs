//! The control block between the `--api` thread and the vCPU thread.
//!
//! The vCPU thread owns the VM and handles every hypercall synchronously
//! between two `KVM_RUN`s, so a request (pause, snapshot, ...) is served by
//! the vCPU thread itself, at an exit: never in the middle of a hypercall.
//! To get there quickly the requester queues the request, raises `pending`,
//! sets `immediate_exit` in the vCPU's `kvm_run` page and sends the vCPU
//! thread a real-time signal, so a running `KVM_RUN` returns `EINTR` and one
//! about to start returns at once. A hypercall that blocks on the host (the
//! poll hypercall) must also wait on [`Control::wake`] and return when it
//! fires.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A request to the running guest's monitor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Stop running the guest (idempotent).
    Pause,
    /// Run the guest again (idempotent).
    Resume,
    /// Report the guest's state.
    Status,
    /// Snapshot the guest into a new directory; the guest then goes on in
    /// the state it was in (running or paused).
    Snapshot {
        /// Directory to create.
        dir: String,
    },
    /// Live-migrate the guest (served by the API thread; see `migration`).
    Migrate(crate::migration::MigrateRequest),
    /// A migration step for the vCPU thread (internal; never on the wire).
    #[serde(skip)]
    Migration(crate::migration::source::Step),
    /// Serve GDB on this `ADDRESS:PORT` (see `debug`).
    Gdb {
        /// Where to listen.
        addr: String,
    },
    /// Write an ELF core file of the guest to this path.
    Core {
        /// The file to write (replaced atomically).
        path: String,
    },
    /// A command from the GDB thread (internal; never on the wire).
    #[serde(skip)]
    Debug(crate::debug::Cmd),
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// `running`, `paused` or `exited`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub state: Option<String>,
    /// Status: seconds since the guest started (or was restored).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub uptime_s: Option<f64>,
    /// Status: VM exits handled.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exits: Option<u64>,
    /// Status: guest memory size in bytes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub memory_bytes: Option<u64>,
    /// Status: guest memory the host has populated, in bytes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub memory_resident_bytes: Option<u64>,
    /// Status: the device table, one line per device.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub devices: Option<Vec<String>>,
    /// Status: restores so far and this guest's clone index.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub generation: Option<u64>,
    /// Status: this guest's clone index.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub clone_index: Option<u32>,
    /// Snapshot: milliseconds it took and bytes of guest memory saved.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub snapshot_ms: Option<f64>,
    /// Snapshot: bytes of guest memory written.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub snapshot_memory_bytes: Option<u64>,
    /// Migrate: what the migration did.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub migration: Option<crate::migration::Summary>,
    /// Gdb: the address GDB connects to (its real port when 0 was given).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gdb: Option<String>,
    /// Core: the core file's size in bytes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub core_bytes: Option<u64>,
    /// The answer to a GDB thread's command (internal; never on the wire).
    #[serde(skip)]
    pub debug: Option<crate::debug::Reply>,
}

impl Response {
    /// A success with nothing else to say.
    pub fn ok() -> Self {
        Response {
            ok: true,
            ..Default::default()
        }
    }

    /// A failure.
    pub fn err(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(msg.into()),
            ..Default::default()
        }
    }
}

type Msg = (Request, mpsc::Sender<Response>);

/// Shared between the vCPU thread and whoever sends it requests.
pub struct Control {
    /// Raised when a request is queued; the run loop checks it after each
    /// exit (one relaxed load on the hot path).
    pending: AtomicBool,
    /// Set once the guest has ended: requests are refused.
    exited: AtomicBool,
    queue: Mutex<VecDeque<Msg>>,
    queued: Condvar,
    /// The vCPU's `kvm_run` page (for `immediate_exit`), once it exists.
    run: AtomicPtr<kvm_bindings::kvm_run>,
    /// The vCPU thread, for signalling.
    thread: OnceLock<libc::pthread_t>,
    /// Written when a request is queued. A hypercall that blocks on host
    /// file descriptors (poll) must include it in its wait set and return to
    /// the run loop when it becomes readable.
    pub wake: EventFd,
    /// One request at a time.
    serial: Mutex<()>,
    /// Live migration's hand-over between the vCPU and migration threads.
    pub migration: crate::migration::Slot,
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
            run: AtomicPtr::new(std::ptr::null_mut()),
            thread: OnceLock::new(),
            wake: EventFd::new(EFD_NONBLOCK)?,
            serial: Mutex::new(()),
            migration: Default::default(),
        })
    }

    /// Records the calling thread as the vCPU thread and `run` as its
    /// `kvm_run` page.
    pub fn attach_vcpu(&self, run: *mut kvm_bindings::kvm_run) {
        // SAFETY: pthread_self has no preconditions.
        let _ = self.thread.set(unsafe { libc::pthread_self() });
        self.run.store(run, Ordering::Release);
    }

    /// Whether a request waits (the run loop's hot-path check).
    #[inline]
    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    fn immediate_exit(&self) -> Option<&AtomicU8> {
        let run = self.run.load(Ordering::Acquire);
        if run.is_null() {
            return None;
        }
        // SAFETY: `run` is the vCPU's mmapped kvm_run page, which lives as
        // long as the VM; `immediate_exit` is a u8 that KVM and both our
        // threads access, so it is accessed atomically.
        Some(unsafe { AtomicU8::from_ptr(std::ptr::addr_of_mut!((*run).immediate_exit)) })
    }

    /// Sets or clears `immediate_exit` (vCPU thread); `false` if no vCPU
    /// is attached.
    pub fn set_immediate_exit(&self, v: bool) -> bool {
        match self.immediate_exit() {
            Some(f) => {
                f.store(u8::from(v), Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    fn kick(&self) {
        let _ = self.set_immediate_exit(true);
        if let Some(t) = self.thread.get() {
            // SAFETY: `t` is a live thread of this process (the vCPU thread
            // outlives every request: it refuses them once the guest ended).
            unsafe { libc::pthread_kill(*t, kick_signal()) };
        }
        let _ = self.wake.write(1);
    }

    /// Sends `req` to the vCPU thread and waits for its answer.
    pub fn request(&self, req: Request) -> Response {
        let _one = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        if self.exited.load(Ordering::SeqCst) {
            return Response {
                state: Some("exited".into()),
                ..Response::err("the guest has exited")
            };
        }
        let (tx, rx) = mpsc::channel();
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((req, tx));
        self.pending.store(true, Ordering::SeqCst);
        self.queued.notify_all();
        self.kick();
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(r) => return r,
                Err(RecvTimeoutError::Disconnected) => {
                    return Response::err("the guest exited before answering")
                }
                // Still busy (a snapshot) or the kick was missed: kick again.
                Err(RecvTimeoutError::Timeout) => {
                    if self.exited.load(Ordering::SeqCst) {
                        // The vCPU thread drains the queue when it ends; a
                        // message it never saw is answered here.
                        return Response::err("the guest has exited");
                    }
                    if self.pending.load(Ordering::SeqCst) {
                        self.kick();
                    }
                }
            }
        }
    }

    /// vCPU thread: takes the next request; blocks for one when `wait`.
    pub fn next(&self, wait: bool) -> Option<Msg> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(m) = q.pop_front() {
                return Some(m);
            }
            if !wait {
                return None;
            }
            q = self.queued.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// vCPU thread: takes the next request, waiting at most `timeout`.
    pub fn next_timeout(&self, timeout: Duration) -> Option<Msg> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.is_empty() {
            q = self
                .queued
                .wait_timeout(q, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        q.pop_front()
    }

    /// vCPU thread: acknowledges the pending flag before draining requests.
    pub fn take_pending(&self) {
        self.pending.store(false, Ordering::SeqCst);
        let _ = self.wake.read();
    }

    /// vCPU thread: the guest has ended; refuse what is queued and what comes.
    pub fn finish(&self) {
        self.exited.store(true, Ordering::SeqCst);
        while let Some((_, tx)) = self.next(false) {
            let _ = tx.send(Response::err("the guest has exited"));
        }
        // Wait out a request in flight: after this nobody kicks the thread
        // or touches its `kvm_run` page again.
        let _one = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        self.run.store(std::ptr::null_mut(), Ordering::Release);
    }
}
