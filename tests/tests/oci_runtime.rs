//! `duet-runtime` driven directly the way engines drive it, for what
//! engines never send: bad bundles, unknown ids, `start` twice, `delete` of
//! a running container. Each is a clear error with a non-zero status, and
//! no state is left half-written under `--root`.

use duet_tests::oci::runtime;
use duet_tests::{image, Output};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

struct Rt {
    root: tempfile::TempDir,
}

impl Rt {
    fn new() -> Rt {
        Rt {
            root: tempfile::tempdir().unwrap(),
        }
    }

    /// Runs the runtime with `args`. Its output goes through files, not
    /// pipes: a monitor it starts keeps them open after it returns.
    fn run(&self, args: &[&str]) -> Output {
        let out = tempfile::NamedTempFile::new().unwrap();
        let err = tempfile::NamedTempFile::new().unwrap();
        // An unknown global flag rides along: it must never be fatal.
        let st = Command::new(runtime())
            .arg("--root")
            .arg(self.root.path())
            .arg("--a-flag-from-the-future")
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.reopen().unwrap())
            .stderr(err.reopen().unwrap())
            .status()
            .expect("run duet-runtime");
        Output {
            status: st.code(),
            stdout: std::fs::read_to_string(out.path()).unwrap(),
            stderr: std::fs::read_to_string(err.path()).unwrap(),
        }
    }

    /// Whatever is left under the root.
    fn leftovers(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.root.path())
            .map_or(vec![], |d| d.map(|e| e.unwrap().path()).collect())
    }
}

#[track_caller]
fn fails(o: &Output, msg: &str) {
    assert_ne!(o.status, Some(0), "should have failed: {o:#?}");
    o.expect_stderr(msg);
}

/// A bundle running app `app` with `args`.
fn bundle(dir: &Path, app: &str, args: &[&str]) -> PathBuf {
    let b = dir.join(format!("bundle-{app}"));
    std::fs::create_dir_all(b.join("rootfs")).unwrap();
    std::fs::copy(image(app), b.join("rootfs").join(app)).unwrap();
    let mut argv = vec![format!("/{app}")];
    argv.extend(args.iter().map(|s| s.to_string()));
    let cfg = serde_json_lite(&argv);
    std::fs::write(b.join("config.json"), cfg).unwrap();
    b
}

/// A minimal config.json (no JSON crate needed for this much).
fn serde_json_lite(argv: &[String]) -> String {
    let args: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
    format!(
        r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},"process":{{"cwd":"/","user":{{"uid":0,"gid":0}},"args":[{}],"env":["PATH=/"]}},"linux":{{"namespaces":[{{"type":"mount"}}]}}}}"#,
        args.join(",")
    )
}

#[test]
fn bad_bundles_are_refused_and_leave_nothing() {
    let rt = Rt::new();
    let dir = tempfile::tempdir().unwrap();
    fails(
        &rt.run(&["create", "--bundle", "/nonexistent/bundle", "c1"]),
        "does not exist",
    );
    let b = dir.path().join("b");
    std::fs::create_dir_all(b.join("rootfs")).unwrap();
    std::fs::write(b.join("config.json"), "this is not json").unwrap();
    fails(
        &rt.run(&["create", "--bundle", b.to_str().unwrap(), "c1"]),
        "not a valid OCI runtime configuration",
    );
    std::fs::write(
        b.join("config.json"),
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#,
    )
    .unwrap();
    fails(
        &rt.run(&["create", "--bundle", b.to_str().unwrap(), "c1"]),
        "no `process`",
    );
    let good = bundle(dir.path(), "hello", &[]);
    fails(
        &rt.run(&["create", "--bundle", good.to_str().unwrap(), "../evil"]),
        "invalid container id",
    );
    assert_eq!(rt.leftovers(), Vec::<PathBuf>::new());
}

#[test]
fn unknown_ids_are_errors() {
    let rt = Rt::new();
    for cmd in ["state", "start", "kill", "delete", "checkpoint"] {
        fails(&rt.run(&[cmd, "nosuch"]), "container nosuch does not exist");
    }
}

#[test]
fn lifecycle_and_misuse() {
    let rt = Rt::new();
    let dir = tempfile::tempdir().unwrap();
    let b = bundle(dir.path(), "counter", &["100000", "100000"]);
    let pid_file = dir.path().join("pid");
    let o = rt.run(&[
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--no-new-keyring",
        "c1",
    ]);
    assert_eq!(o.status, Some(0), "create failed: {o:#?}");
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    let st = rt.run(&["state", "c1"]);
    st.expect_status(0)
        .expect_stdout("\"status\": \"created\"")
        .expect_stdout(&format!("\"pid\": {pid}"))
        .expect_stdout("\"ociVersion\"");
    fails(
        &rt.run(&["create", "--bundle", b.to_str().unwrap(), "c1"]),
        "already exists",
    );
    rt.run(&["start", "c1"]).expect_status(0);
    rt.run(&["state", "c1"])
        .expect_stdout("\"status\": \"running\"");
    fails(&rt.run(&["start", "c1"]), "already running");
    fails(&rt.run(&["delete", "c1"]), "use delete --force");
    fails(&rt.run(&["kill", "c1", "NOSIG"]), "unknown signal");
    rt.run(&["delete", "--force", "c1"]).expect_status(0);
    assert_eq!(rt.leftovers(), Vec::<PathBuf>::new());
    // SAFETY: kill(pid, 0) only checks for existence.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    // The monitor was our grandchild: reparented to init, which reaps it.
    assert!(
        !alive
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap()
                .contains(") Z")
    );
}
