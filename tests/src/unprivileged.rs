//! Running `duet` as an unprivileged user, as the least-privilege tests do
//! (`docs/security.md`, "Least privilege").
//!
//! The monitor runs as uid [`UID`] (no capabilities, no supplementary
//! groups) through `setpriv`. It gets `/dev/kvm` and `/dev/net/tun` the way
//! a member of the `kvm` group does, by read/write access to the nodes, but
//! without touching the host's `/dev`: each command runs in a mount
//! namespace of its own in which device nodes owned by [`UID`] (made in the
//! test's directory with the host nodes' numbers) are bind-mounted over
//! `/dev/kvm` and `/dev/net/tun`. Nothing is left to restore: the bindings
//! end with the process, and the directory goes on drop. An [`Access`]
//! without a node binds a root-owned 0600 one instead, so a refusal is
//! tested whatever the host's own modes are.
//!
//! Everything the monitor reads or writes (its binary, images, keys,
//! sockets, snapshots, `HOME`, `XDG_RUNTIME_DIR`) lives in that directory,
//! owned by [`UID`].

use crate::{paths, require_root};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The unprivileged user the monitor runs as (`nobody` on Debian).
pub const UID: u32 = 65534;
/// Another unprivileged user, for "someone else's" refusals.
pub const OTHER_UID: u32 = 65533;

/// What a command gets.
#[derive(Clone, Copy)]
pub struct Access<'a> {
    /// The user to run as.
    pub uid: u32,
    /// Read/write access to `/dev/kvm`.
    pub kvm: bool,
    /// Read/write access to `/dev/net/tun`.
    pub tun: bool,
    /// A network namespace (`/run/netns/NAME`) to run in.
    pub netns: Option<&'a str>,
}

impl Access<'_> {
    /// [`UID`] with both devices, in the host's network namespace.
    pub const FULL: Access<'static> = Access {
        uid: UID,
        kvm: true,
        tun: true,
        netns: None,
    };
}

/// A private directory for one test's unprivileged monitors; removed on drop.
pub struct Unprivileged {
    /// The directory (owned by [`UID`], mode 0711).
    pub dir: PathBuf,
    bin: PathBuf,
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(uid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("a path without NUL")
}

/// Panics unless `program` is on `PATH`, naming the package.
fn require_tool(program: &str, package: &str) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|d| d.join(program).is_file());
    assert!(
        found,
        "this test needs `{program}` ({package}) to run the monitor as another user; install it (`apt-get install {package}`)"
    );
}

impl Unprivileged {
    /// Makes the directory, the device nodes and a copy of the monitor.
    pub fn new(name: &str) -> Unprivileged {
        require_root("it makes device nodes and drops to an unprivileged uid with setpriv");
        require_tool("setpriv", "util-linux");
        let dir = crate::temp_dir(&format!("unpriv-{name}"));
        // Traversable by everyone (so another user reaches a socket and is
        // refused by its own mode), listable by no one else.
        chown(&dir, UID);
        chmod(&dir, 0o711);
        let dev = dir.join("dev");
        std::fs::create_dir(&dev).unwrap();
        for (host, node) in [("/dev/kvm", "kvm"), ("/dev/net/tun", "tun")] {
            let rdev = std::fs::metadata(host)
                .unwrap_or_else(|e| panic!("this test needs {host}: {e}"))
                .rdev();
            for (file, owner) in [(node.to_string(), UID), (format!("{node}-root"), 0)] {
                let p = dev.join(file);
                // SAFETY: mknod with a valid C path; the result is checked.
                let rc = unsafe { libc::mknod(cstr(&p).as_ptr(), libc::S_IFCHR | 0o600, rdev) };
                assert_eq!(
                    rc,
                    0,
                    "mknod {} (a copy of {host}): {}; the test directory must allow device nodes",
                    p.display(),
                    std::io::Error::last_os_error()
                );
                chown(&p, owner);
            }
        }
        let bin = dir.join("duet");
        std::fs::copy(&paths().bin, &bin).expect("copy the monitor");
        chmod(&bin, 0o755);
        for d in ["home", "run", "img"] {
            let p = dir.join(d);
            std::fs::create_dir(&p).unwrap();
            chown(&p, UID);
            chmod(&p, 0o700);
        }
        Unprivileged { dir, bin }
    }

    /// `name` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The user's `HOME`.
    pub fn home(&self) -> PathBuf {
        self.path("home")
    }

    /// A copy of example app `app`'s image that [`UID`] may read.
    pub fn image(&self, app: &str) -> PathBuf {
        let p = self.dir.join("img").join(app);
        if !p.exists() {
            std::fs::copy(crate::image(app), &p).expect("copy the image");
            self.give(&p);
        }
        p
    }

    /// Makes `p` [`UID`]'s.
    pub fn give(&self, p: &Path) {
        chown(p, UID);
    }

    /// Writes a file of [`UID`]'s, mode 0600.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        chmod(&p, 0o600);
        self.give(&p);
        p
    }

    /// `duet ARGS` as [`UID`] with both devices.
    pub fn duet<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        self.command(Access::FULL, args)
    }

    /// `duet ARGS` run with `access`.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, access: Access, args: &[S]) -> Command {
        let node = |name: &str, granted: bool| {
            let file = if granted {
                name.to_string()
            } else {
                format!("{name}-root")
            };
            cstr(&self.dir.join("dev").join(file))
        };
        let binds = [
            (node("kvm", access.kvm), c"/dev/kvm".to_owned()),
            (node("tun", access.tun), c"/dev/net/tun".to_owned()),
        ];
        let netns = access
            .netns
            .map(|p| CString::new(p).expect("a path without NUL"));
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", access.uid))
            .arg(format!("--regid={}", access.uid))
            .args(["--clear-groups", "--"])
            .arg(&self.bin)
            .args(args)
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", self.home())
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .stdin(Stdio::null());
        // SAFETY: the closure runs between fork and exec and only makes
        // system calls (open, setns, close, unshare, mount) on data prepared
        // before the fork; it allocates nothing.
        unsafe {
            c.pre_exec(move || {
                let check = |rc: libc::c_int| {
                    if rc == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                };
                if let Some(ns) = &netns {
                    let fd = libc::open(ns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let rc = libc::setns(fd, libc::CLONE_NEWNET);
                    libc::close(fd);
                    check(rc)?;
                }
                // A mount namespace of the child's own: the bindings below
                // never reach the host's /dev.
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                for (from, to) in &binds {
                    check(libc::mount(
                        from.as_ptr(),
                        to.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ))?;
                }
                Ok(())
            });
        }
        c
    }
}

impl Drop for Unprivileged {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The mode bits (`0o777`) of `p`.
pub fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o777
}

/// The owner of `p`.
pub fn owner(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .uid()
}
