//! The report when a thread makes a call its list does not allow: the
//! filter returns `SECCOMP_RET_TRAP`, the kernel sends that thread
//! `SIGSYS` (even if blocked) with the call's number, and this handler
//! writes one line naming the thread and the call to stderr and ends the
//! monitor with [`crate::contract::status::SECCOMP`].
//!
//! The handler is async-signal-safe: no allocation, no lock, no `std` I/O;
//! one `write(2)` and `_exit(2)` (both on every list). Names come from the
//! lists themselves (static data) and a few calls no list has.

use super::lists::GROUPS;
use super::Thread;
use std::cell::Cell;

/// The exit status after a violation.
pub const STATUS: u8 = crate::contract::status::SECCOMP;

thread_local! {
    /// The list this thread runs under (`Thread as u8`), for the report.
    static KIND: Cell<u8> = const { Cell::new(u8::MAX) };
}

/// Records that the calling thread now runs under `t`'s list.
pub fn set_kind(t: Thread) {
    KIND.with(|k| k.set(t as u8));
}

/// Calls on no list that an attacker would want, named in the report.
const OTHERS: &[(i64, &str)] = &[
    (libc::SYS_execve, "execve"),
    (libc::SYS_execveat, "execveat"),
    (libc::SYS_fork, "fork"),
    (libc::SYS_vfork, "vfork"),
    (libc::SYS_clone, "clone"),
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_open, "open"),
    (libc::SYS_creat, "creat"),
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_chmod, "chmod"),
    (libc::SYS_fchmod, "fchmod"),
    (libc::SYS_chown, "chown"),
    (libc::SYS_setuid, "setuid"),
    (libc::SYS_setns, "setns"),
    (libc::SYS_unshare, "unshare"),
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_process_vm_writev, "process_vm_writev"),
    (libc::SYS_memfd_create, "memfd_create"),
    (libc::SYS_symlink, "symlink"),
    (libc::SYS_link, "link"),
    (libc::SYS_getppid, "getppid"),
    (libc::SYS_uname, "uname"),
    (libc::SYS_sysinfo, "sysinfo"),
    (libc::SYS_prlimit64, "prlimit64"),
    (libc::SYS_sched_getaffinity, "sched_getaffinity"),
    (libc::SYS_nanosleep, "nanosleep"),
    (libc::SYS_pipe2, "pipe2"),
    (libc::SYS_dup3, "dup3"),
    (libc::SYS_readlink, "readlink"),
    (libc::SYS_access, "access"),
    (libc::SYS_fstat, "fstat"),
    (libc::SYS_stat, "stat"),
    (libc::SYS_lstat, "lstat"),
    (libc::SYS_sendmsg, "sendmsg"),
    (libc::SYS_recvmsg, "recvmsg"),
    (libc::SYS_epoll_wait, "epoll_wait"),
    (libc::SYS_select, "select"),
];

/// The name of call `nr`, if known.
pub fn name(nr: i64) -> Option<&'static str> {
    GROUPS
        .iter()
        .flat_map(|g| g.iter())
        .find(|s| s.nr == nr)
        .map(|s| s.name())
        .or_else(|| {
            [
                (libc::SYS_ioctl, "ioctl"),
                (libc::SYS_prctl, "prctl"),
                (libc::SYS_seccomp, "seccomp"),
                (libc::SYS_tgkill, "tgkill"),
                (libc::SYS_fcntl, "fcntl"),
                (libc::SYS_rt_sigaction, "rt_sigaction"),
            ]
            .iter()
            .chain(OTHERS)
            .find(|(n, _)| *n == nr)
            .map(|(_, s)| *s)
        })
}

/// A line buffer on the stack.
struct Line {
    buf: [u8; 400],
    len: usize,
}

impl Line {
    fn put(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn hex(&mut self, v: u64) {
        self.put(b"0x");
        let digits = (64 - v.leading_zeros()).div_ceil(4).max(1);
        for i in (0..digits).rev() {
            self.put(&[b"0123456789abcdef"[((v >> (4 * i)) & 0xf) as usize]]);
        }
    }

    fn num(&mut self, mut v: u64) {
        let mut d = [0u8; 20];
        let mut i = d.len();
        loop {
            i -= 1;
            d[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.put(&d[i..]);
    }
}

/// The report for call `nr` (its second argument `arg1`) made by a thread
/// under `kind`'s list.
fn report(nr: i64, arg1: u64, kind: Option<Thread>) -> Line {
    let mut l = Line {
        buf: [0; 400],
        len: 0,
    };
    l.put(b"duet: seccomp: the ");
    l.put(kind.map_or("unfiltered", Thread::name).as_bytes());
    l.put(b" thread made system call ");
    l.num(nr as u64);
    l.put(b" (");
    l.put(name(nr).unwrap_or("unknown").as_bytes());
    if nr == libc::SYS_ioctl {
        // Which request: the filter looked at it, so should the reader.
        l.put(b" request ");
        match super::ioctls::NAMED
            .iter()
            .flat_map(|g| g.iter())
            .find(|i| u64::from(i.nr) == arg1 & 0xffff_ffff)
        {
            Some(i) => l.put(i.name.as_bytes()),
            None => l.hex(arg1),
        }
    }
    l.put(b"), which its seccomp list does not allow; the monitor stops (status ");
    l.num(u64::from(STATUS));
    l.put(
        b"): a monitor bug or an attack (docs/security.md; --seccomp off only to debug, unsafe)\n",
    );
    l
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO. For
    // SIGSYS its union holds `struct { void *call_addr; int syscall;
    // unsigned arch; }` at offset 16 (after signo, errno, code and
    // padding), so the call's number is the int at offset 24.
    let nr = unsafe { info.cast::<u8>().add(24).cast::<libc::c_int>().read() };
    // SAFETY: for SA_SIGINFO the third argument is the interrupted
    // context, a ucontext_t; RSI held the call's second argument.
    let arg1 = unsafe {
        let uc = &*ctx.cast::<libc::ucontext_t>();
        uc.uc_mcontext.gregs[libc::REG_RSI as usize] as u64
    };
    let kind = KIND.with(Cell::get);
    let line = report(i64::from(nr), arg1, Thread::from_u8(kind));
    // SAFETY: write(2) of our own stack buffer, then _exit(2): both
    // async-signal-safe, and both on every list.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(i32::from(STATUS));
    }
}

/// Installs the `SIGSYS` handler (process-wide, before any filter).
pub fn install_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction with an async-signal-safe handler.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as extern "C" fn(_, _, _) as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
pub(super) fn report_text(nr: i64, arg1: u64, kind: Option<Thread>) -> String {
    let l = report(nr, arg1, kind);
    String::from_utf8_lossy(&l.buf[..l.len]).into_owned()
}
