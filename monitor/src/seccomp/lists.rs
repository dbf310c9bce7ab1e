//! The allow-lists, as data: each thread's list is made of groups of
//! system calls, each with why the thread makes it, plus the calls allowed
//! only with certain arguments (`ioctl` requests, `prctl` options, the
//! `seccomp` operation). `docs/security.md` has the table of counts (a
//! unit test keeps it true).

use super::ioctls;
use super::Thread;

macro_rules! sys {
    ($($id:ident: $why:expr,)*) => {
        &[$(Sys { nr: libc::$id, id: stringify!($id), why: $why },)*]
    };
}

/// Every thread, all the time: memory, locks, logs, signals, thread end.
pub const BASE: &[Sys] = sys! {
    SYS_write: "log lines, eventfd signals, guest console; the seccomp report itself",
    SYS_futex: "locks, channels, joins",
    SYS_mmap: "the allocator (large blocks, arenas)",
    SYS_munmap: "the allocator; thread stacks at exit",
    SYS_mremap: "the allocator growing a large block",
    SYS_mprotect: "the allocator's arenas",
    SYS_madvise: "the allocator; glibc frees a dead thread's stack",
    SYS_brk: "the allocator's main arena",
    SYS_close: "descriptors dropped",
    SYS_sched_yield: "locks and channels back off",
    SYS_clock_gettime: "Instant::now when the vDSO falls back",
    SYS_getrandom: "std's HashMap keys (once per thread)",
    SYS_rt_sigprocmask: "glibc masks signals at thread exit",
    SYS_rt_sigreturn: "returning from a signal handler",
    SYS_sigaltstack: "Rust's stack-overflow handler stack, set and freed",
    SYS_exit: "thread end",
    SYS_exit_group: "process end (also after a seccomp report)",
    SYS_getpid: "abort() and pthread_kill: the process id for tgkill",
    SYS_gettid: "abort() and pthread_kill: the thread's own id",
    SYS_geteuid: "a refused file's message names the uid (and the CPUID cache's directory)",
};

/// Threads that start threads: what `pthread_create` and the new thread
/// make before it installs its own list (it runs under its parent's).
pub const SPAWN: &[Sys] = sys! {
    SYS_clone3: "pthread_create (glibc 2.34+)",
    SYS_set_robust_list: "the new thread registers its robust futexes",
    SYS_rseq: "the new thread registers its restartable sequences",
    SYS_sched_getaffinity: "the new thread's pthread_getattr_np (Rust finds its stack)",
};

/// Sockets and the files a control request names.
pub const CONTROL: &[Sys] = sys! {
    SYS_accept4: "a control connection; GDB's connection",
    SYS_read: "requests",
    SYS_recvfrom: "requests, migration acks, GDB packets",
    SYS_sendto: "answers, migration frames, GDB packets",
    SYS_writev: "migration frames",
    SYS_poll: "GDB: a packet or a stop; connect with a timeout",
    SYS_socket: "migration: the connection; ctl gdb: the listener",
    SYS_connect: "migration: the destination",
    SYS_bind: "ctl gdb: GDB's address",
    SYS_listen: "ctl gdb",
    SYS_setsockopt: "TCP_NODELAY, timeouts, SO_REUSEADDR",
    SYS_getsockopt: "SO_ERROR after a connect with a timeout",
    SYS_getsockname: "the address bound (port 0)",
    SYS_getpeername: "who connected",
    SYS_shutdown: "closing a connection",
    SYS_openat: "the migration key file",
    SYS_statx: "the migration key file's size",
    SYS_pread64: "--copy-disks: the source disks",
    SYS_clock_nanosleep: "short waits (migration rounds, GDB retries)",
    SYS_eventfd2: "ctl gdb: the GDB thread's wake-up eventfd",
};

/// The migration's sender: its connection, disk copies and waits.
pub const MIGRATION: &[Sys] = sys! {
    SYS_recvfrom: "acks from the destination",
    SYS_sendto: "frames",
    SYS_writev: "frames",
    SYS_read: "acks",
    SYS_poll: "connect with a timeout",
    SYS_socket: "the connection",
    SYS_connect: "the destination",
    SYS_setsockopt: "TCP_NODELAY, timeouts",
    SYS_getsockopt: "SO_ERROR after connecting",
    SYS_getpeername: "the destination's address",
    SYS_shutdown: "closing the connection",
    SYS_pread64: "--copy-disks: the source disks",
    SYS_clock_nanosleep: "waits between rounds",
};

/// The GDB thread: one TCP connection at a time.
pub const GDB: &[Sys] = sys! {
    SYS_accept4: "GDB's connection",
    SYS_read: "packets",
    SYS_recvfrom: "packets",
    SYS_sendto: "packets",
    SYS_poll: "a packet or a stop, whichever first",
    SYS_setsockopt: "TCP_NODELAY",
    SYS_getpeername: "who connected",
    SYS_clock_nanosleep: "retries while the vCPU is in a stub",
};

/// The vCPU thread once the guest runs: device I/O for hypercalls, the
/// poll hypercall, files for snapshots and core files, the grace timer.
/// Without `--api` this is the main thread, so it also ends the process.
pub const VCPU: &[Sys] = sys! {
    SYS_read: "eventfds, TAP frames (hypercall NICs)",
    SYS_pread64: "hypercall disks",
    SYS_pwrite64: "hypercall disks, snapshot memory files",
    SYS_preadv: "hypercall disks (batched), virtio queues served here",
    SYS_pwritev: "hypercall disks (batched), virtio queues served here",
    SYS_readv: "virtio NICs served here",
    SYS_writev: "virtio NICs served here",
    SYS_fdatasync: "disk flush",
    SYS_fsync: "snapshot files made durable",
    SYS_ppoll: "the poll hypercall; paused waits",
    SYS_poll: "a virtio NIC's TAP looked at (zero timeout)",
    SYS_openat: "snapshot and core files, --copy-disks sources",
    SYS_mkdir: "a snapshot's directory",
    SYS_renameat2: "a snapshot's directory put in place (RENAME_NOREPLACE)",
    SYS_unlinkat: "a failed snapshot's files removed",
    SYS_rmdir: "a failed snapshot's directory removed",
    SYS_getdents64: "a failed snapshot's directory listed",
    SYS_newfstatat: "file metadata",
    SYS_statx: "file metadata",
    SYS_lseek: "file sizes",
    SYS_ftruncate: "memory and core files sized",
    SYS_dup: "the VM fd duplicated for a migration's dirty log",
    SYS_rename: "a core file put in place",
    SYS_flock: "disk locks handed over in a migration",
    SYS_mincore: "populated guest pages (snapshots, migrations, status)",
    SYS_setitimer: "the grace period after SIGTERM",
    SYS_clock_nanosleep: "short waits",
};

/// A destination building the guest from the stream: disks and TAPs
/// opened, I/O threads started; then the thread narrows to the vCPU list.
pub const INCOMING: &[Sys] = sys! {
    SYS_recvfrom: "frames",
    SYS_sendto: "acks",
    SYS_setsockopt: "timeouts",
    SYS_eventfd2: "device and control eventfds",
    SYS_socket: "--net: a socket for the TAP's MTU",
    SYS_dup: "descriptors shared with I/O threads",
    SYS_fallocate: "--copy-disks: disk copies sized",
    SYS_shutdown: "the connection closed after commit",
    SYS_rename: "the CPUID cache written in place",
    SYS_mkdir: "the CPUID cache's directory",
};

/// The main thread with `--api`, once the vCPU and control threads run:
/// it waits for the vCPU thread, removes the socket and reports.
pub const MAIN: &[Sys] = sys! {
    SYS_unlink: "the control socket removed at the end",
};

/// `--clones`: the parent, once every child runs.
pub const CLONES: &[Sys] = sys! {
    SYS_wait4: "a clone ended",
    SYS_rt_sigtimedwait: "SIGTERM, SIGINT, SIGCHLD (sigwaitinfo)",
    SYS_kill: "SIGTERM and SIGINT forwarded to the clones",
};

/// The I/O thread's own calls (`devices/virtio/worker.rs` points here).
pub const IO: &[Sys] = sys! {
    SYS_ppoll: "sleep on doorbell, control and TAP fds",
    SYS_read: "drain eventfds",
    SYS_preadv: "virtio-blk reads into guest memory",
    SYS_pwritev: "virtio-blk writes from guest memory",
    SYS_poll: "whether the TAP has a frame (zero timeout)",
    SYS_fdatasync: "virtio-blk flush",
    SYS_readv: "virtio-net: TAP to guest memory",
    SYS_writev: "virtio-net: guest memory to TAP",
};

use super::args::{
    fcntl, glibc_sigaction, incoming_ioctls, ioctl, prctl, seccomp, tgkill, F_DUP, F_GETFL,
    F_SETFD, PR_NAME, PR_NNP,
};
pub use super::args::{Allowed, Args, Sys};

fn plain(groups: &[&'static [Sys]]) -> std::vec::IntoIter<Allowed> {
    let v: Vec<Allowed> = groups
        .iter()
        .flat_map(|g| g.iter())
        .map(|s| Allowed {
            sys: *s,
            args: Args::Any,
        })
        .collect();
    v.into_iter()
}

/// `t`'s list, one entry per system call (groups merged; a call in
/// several groups appears once, with the first group's reason).
pub fn list(t: Thread) -> Vec<Allowed> {
    let mut v: Vec<Allowed> = match t {
        Thread::Main => plain(&[BASE, MAIN]).chain([tgkill(false)]).collect(),
        Thread::Vcpu => plain(&[BASE, VCPU])
            .chain([
                ioctl(ioctls::VCPU, "KVM: the run loop, state, dirty logging"),
                tgkill(false),
                fcntl(&[F_GETFL, F_SETFD, F_DUP]),
            ])
            .collect(),
        Thread::Control => plain(&[BASE, SPAWN, CONTROL])
            .chain([
                tgkill(true),
                fcntl(&[F_DUP]),
                ioctl(ioctls::CONTROL, "the migration's dirty log; sockets"),
                prctl(&[PR_NAME, PR_NNP]),
                seccomp(),
            ])
            .collect(),
        Thread::Migration => plain(&[BASE, MIGRATION])
            .chain([
                tgkill(true),
                ioctl(ioctls::MIGRATION, "the dirty log; sockets"),
            ])
            .collect(),
        Thread::Gdb => plain(&[BASE, GDB])
            .chain([tgkill(true), ioctl(ioctls::GDB, "sockets"), fcntl(&[F_DUP])])
            .collect(),
        Thread::Io => plain(&[BASE, IO]).chain([tgkill(false)]).collect(),
        Thread::Incoming => plain(&[BASE, SPAWN, VCPU, INCOMING, GDB, IO])
            .chain([
                tgkill(true),
                fcntl(&[F_GETFL, F_SETFD, F_DUP]),
                ioctl(
                    incoming_ioctls(),
                    "KVM: the VM built; TAPs; then the vCPU's",
                ),
                glibc_sigaction(),
                prctl(&[PR_NAME, PR_NNP]),
                seccomp(),
            ])
            .collect(),
        Thread::Clones => plain(&[BASE, CLONES]).chain([tgkill(false)]).collect(),
    };
    let mut seen = std::collections::HashSet::new();
    v.retain(|a| seen.insert(a.sys.nr));
    v
}

/// Every group, for the report's table of names.
pub const GROUPS: &[&[Sys]] = &[
    BASE, SPAWN, CONTROL, MIGRATION, GDB, VCPU, INCOMING, MAIN, CLONES, IO,
];
