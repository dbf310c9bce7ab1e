//! The I/O thread of a virtio device: serves its queues while there is
//! work, spins a bounded time after the last request (the guest's next one
//! then needs no doorbell), and sleeps on the doorbell only after asking
//! the driver to ring it (`avail_event`).
//!
//! # Syscalls
//! Every I/O thread starts through [`spawn_io_thread`], which confines it
//! to its seccomp list first thing: `crate::seccomp::lists::IO` (ppoll on
//! the doorbell, control and TAP fds; eventfd reads and writes;
//! `preadv`/`pwritev`/`fdatasync` for disks, `readv`/`writev` for TAPs)
//! plus what every thread makes (`lists::BASE`: locks, the allocator, log
//! lines, thread end).

use super::core::{Core, Engine, Shared};
use crate::memory::IoMem;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::MutexGuard;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use virtio_queue::QueueT;

/// How long the thread spins after its last request before it sleeps:
/// the engine's `SPIN_US`, unless `DUET_VIRTIO_SPIN_US` says otherwise
/// (the benchmarks vary it).
pub fn spin_budget(default_us: u64) -> Duration {
    Duration::from_micros(
        std::env::var("DUET_VIRTIO_SPIN_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default_us),
    )
}

/// Starts a device's I/O thread named `name`: the one place I/O threads
/// start, each confined to its seccomp list before it touches a queue.
pub fn spawn_io_thread(
    name: String,
    body: impl FnOnce() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name).spawn(move || {
        crate::seccomp::install_or_exit(crate::seccomp::Thread::Io);
        body()
    })
}

/// The thread's body.
pub fn run<E: Engine>(sh: Arc<Shared<E>>, mem: IoMem, spin: Duration) {
    let mut last = Instant::now();
    // Serve without looking first: at start (restored queues) and after
    // every wake-up.
    let mut force = true;
    loop {
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        sh.pause_point();
        // The spin looks at the rings without the lock (`Hints`).
        if (force || sh.hints.work(&mem)) && serve(&sh, sh.lock()) {
            force = false;
            last = Instant::now();
            continue;
        }
        force = false;
        if last.elapsed() < spin && !sh.pause_wanted() {
            std::hint::spin_loop();
            continue;
        }
        let tap = {
            let mut c = sh.lock();
            if c.arm() {
                force = true;
                continue;
            }
            let super::core::Core {
                engine,
                queues,
                mem,
                ..
            } = &mut *c;
            match mem {
                Some(m) if !queues.is_empty() => engine.wait_fd(queues, m),
                _ => None,
            }
        };
        sleep(&sh, tap);
        sh.sleeps.fetch_add(1, Ordering::Relaxed);
        sh.lock().suppress();
        last = Instant::now();
        force = true;
    }
}

/// Serves one batch with the core `c` locked; true when requests were
/// served. The I/O thread's step, also taken by the vCPU thread at a
/// doorbell exit and in the poll hypercall (the guest waits anyway: one
/// thread hop less), then without waiting for the lock.
pub(crate) fn serve<E: Engine>(sh: &Shared<E>, mut c: MutexGuard<'_, Core<E>>) -> bool {
    if !c.active() {
        return false;
    }
    let Core {
        engine,
        queues,
        mem,
        ..
    } = &mut *c;
    let Some(mem) = mem.as_ref() else {
        return false;
    };
    let w = mem.writable();
    let served = match engine.process(queues, mem, &w) {
        Ok(false) => false,
        Ok(true) => {
            // The guest asked to hear of used buffers past its `used_event`
            // (it is about to sleep in poll).
            let mut wake = false;
            for q in queues.iter_mut() {
                wake |= q.needs_notification(mem.inner()).unwrap_or(true);
            }
            if wake {
                let _ = sh.call.write(1);
            }
            sh.served.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(e) => {
            c.fail(e);
            // A guest asleep in poll learns of it now.
            let _ = sh.call.write(1);
            false
        }
    };
    sh.publish(&c);
    served
}

/// Sleeps until the doorbell, the control fd or `tap` is readable.
fn sleep<E: Engine>(sh: &Shared<E>, tap: Option<RawFd>) {
    let mut fds =
        [sh.kick.as_raw_fd(), sh.ctl.as_raw_fd(), tap.unwrap_or(-1)].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
    let n = if tap.is_some() { 3 } else { 2 };
    // SAFETY: `fds[..n]` are initialised pollfds we own; no timeout, no mask.
    unsafe { libc::ppoll(fds.as_mut_ptr(), n, std::ptr::null(), std::ptr::null()) };
    let _ = sh.kick.read();
    let _ = sh.ctl.read();
}
