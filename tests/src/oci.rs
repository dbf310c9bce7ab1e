//! Helpers for the OCI runtime tests: the `duet-runtime` binary, a Podman
//! with its own storage holding Duet images imported from tarballs, a
//! containerd started by the test with its own directories, and a static
//! Linux binary for the non-Duet cases. Real engines throughout.

use crate::{image, paths, Output};
use std::borrow::BorrowMut;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The example apps the tests import as images.
pub const APPS: &[&str] = &["hello", "args", "httpd", "counter", "kv"];

/// The `duet-runtime` binary (built beside `duet`).
pub fn runtime() -> PathBuf {
    let p = paths().bin.with_file_name("duet-runtime");
    assert!(
        p.is_file(),
        "{} is missing: build the monitor crate (cargo xtask build)",
        p.display()
    );
    p
}

/// Panics unless `prog` runs: a missing prerequisite fails the test.
pub fn need(prog: &str) {
    let ok = Command::new(prog)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        ok,
        "{prog} is not installed: `cargo xtask test` installs it (apt-get install {prog})"
    );
}

/// Runs a command to the end, capturing its output (killed after 120 s).
pub fn output(mut cmd: impl BorrowMut<Command>) -> Output {
    let cmd = cmd.borrow_mut();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    crate::wait_output(child, Duration::from_secs(120))
}

/// Runs a command that must succeed; returns its stdout.
#[track_caller]
pub fn ok(mut cmd: impl BorrowMut<Command>) -> String {
    let cmd = cmd.borrow_mut();
    let o = output(&mut *cmd);
    assert_eq!(o.status, Some(0), "{cmd:?} failed: {o:#?}");
    o.stdout
}

/// A unique name for a container in this test process.
pub fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "duet-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A free TCP port on the host.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes a tarball at `out` holding `file` as `/NAME`, executable.
pub fn rootfs_tar(file: &Path, name: &str, out: &Path) {
    let dir = out.with_extension("d");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(file, dir.join(name)).unwrap();
    ok(Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-cf")
        .arg(out)
        .arg(name));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A static Linux x86-64 program (no libc) that prints a line and exits 0.
pub fn static_hello(dir: &Path) -> PathBuf {
    let src = dir.join("static_hello.c");
    std::fs::write(
        &src,
        r#"static const char msg[] = "hello from a static Linux binary\n";
void _start(void) {
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(1), "D"(1), "S"(msg), "d"(sizeof msg - 1) : "rcx", "r11", "memory");
    __asm__ volatile("syscall" : : "a"(60), "D"(0) : "rcx", "r11");
    for (;;) {}
}
"#,
    )
    .unwrap();
    let out = dir.join("static_hello");
    ok(Command::new("cc")
        .args(["-static", "-nostdlib", "-O2", "-o"])
        .arg(&out)
        .arg(&src));
    out
}

/// A Podman with its own storage (under the temporary directory, reused
/// across runs), run with the cgroupfs manager this sandbox needs.
pub struct Podman {
    dir: PathBuf,
}

impl Podman {
    /// The shared instance; the first call imports the Duet images and a
    /// static Linux image.
    pub fn get() -> &'static Podman {
        static P: OnceLock<Podman> = OnceLock::new();
        P.get_or_init(|| {
            need("podman");
            let p = Podman {
                dir: std::env::temp_dir().join("duet-oci-podman"),
            };
            let work = p.dir.join("images");
            std::fs::create_dir_all(&work).unwrap();
            for app in APPS {
                p.import(&image(app), app, &work);
            }
            p.import(&static_hello(&work), "linux-hello", &work);
            // Images replaced by this run's imports.
            let _ = output(p.cmd().args(["image", "prune", "-f"]));
            p
        })
    }

    fn import(&self, file: &Path, name: &str, work: &Path) {
        let tar = work.join(format!("{name}.tar"));
        rootfs_tar(file, name, &tar);
        ok(self
            .cmd()
            .arg("import")
            .arg("--change")
            .arg(format!("ENTRYPOINT [\"/{name}\"]"))
            .arg(&tar)
            .arg(Self::image(name)));
    }

    /// The image name of app `name`.
    pub fn image(name: &str) -> String {
        format!("localhost/duet-test-{name}:latest")
    }

    /// `podman` with this instance's storage.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"]);
        c
    }

    /// `podman --runtime duet-runtime [FLAGS] run ARGS`.
    pub fn run(&self, runtime_flags: &[&str], args: &[&str]) -> Command {
        let mut c = self.cmd();
        c.arg("--runtime").arg(runtime());
        for f in runtime_flags {
            c.args(["--runtime-flag", f]);
        }
        c.arg("run").args(args);
        c
    }

    /// Saves app `name`'s image as an OCI archive (for containerd).
    pub fn save_oci(&self, name: &str, out: &Path) {
        ok(self
            .cmd()
            .args(["save", "--format", "oci-archive", "-o"])
            .arg(out)
            .arg(Self::image(name)));
    }

    /// `podman inspect --format FORMAT NAME`, trimmed.
    pub fn inspect(&self, name: &str, format: &str) -> String {
        ok(self.cmd().args(["inspect", "--format", format, name]))
            .trim()
            .to_string()
    }
}

/// A container name that is force-removed on drop, panics included.
pub struct Named(pub String);

impl Drop for Named {
    fn drop(&mut self) {
        let _ = output(Podman::get().cmd().args(["rm", "-f", &self.0]));
    }
}

/// A containerd of the test's own: its root, state, socket and namespace,
/// stopped on drop.
pub struct Containerd {
    child: std::process::Child,
    dir: tempfile::TempDir,
    /// The namespace the test's containers live in.
    pub namespace: String,
}

impl Containerd {
    /// Starts containerd and waits for its socket.
    pub fn start() -> Containerd {
        need("containerd");
        need("ctr");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let config = format!(
            "version = 2\nroot = \"{r}\"\nstate = \"{s}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{a}\"\n[ttrpc]\n  address = \"{a}.ttrpc\"\n",
            r = d.join("root").display(),
            s = d.join("state").display(),
            a = d.join("containerd.sock").display(),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd {
            child,
            dir,
            namespace: unique("ctr"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while output(c.ctr().arg("version")).status != Some(0) {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    /// `ctr` talking to this containerd in the test's namespace.
    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(["--namespace", &self.namespace]);
        c
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The shim keeps runc-style state under /run/containerd/runc/NAMESPACE.
        let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(&self.namespace));
        // Unmount anything of ours left mounted so the directory can go.
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("state"))
            .stderr(Stdio::null())
            .status();
    }
}
