//! `duet-runtime` under containerd: `ctr run --runc-binary duet-runtime`
//! through containerd's standard runc shim, against a containerd the test
//! starts with its own root, state and socket.

use duet_tests::oci::{need, ok, output, runtime, Containerd, Podman};
use std::process::Command;
use std::time::{Duration, Instant};

/// Imports app `name` (saved from Podman as an OCI archive) into containerd.
fn import(c: &Containerd, name: &str, dir: &std::path::Path) -> String {
    let tar = dir.join(format!("{name}-oci.tar"));
    Podman::get().save_oci(name, &tar);
    let image = Podman::image(name);
    ok(c.ctr()
        .args([
            "images",
            "import",
            "--base-name",
            image.trim_end_matches(":latest"),
        ])
        .arg(&tar));
    image
}

/// Two namespaces joined by a veth pair: the container's (`pod`, 10.201.0.2
/// on eth0) and a client's (`out`, 10.201.0.1). Deleted on drop.
struct Veth {
    pod: String,
    out: String,
}

fn ip(args: &[&str]) {
    ok(Command::new("ip").args(args));
}

impl Veth {
    fn new() -> Veth {
        let n = std::process::id();
        let v = Veth {
            pod: format!("duet-ctr-pod-{n}"),
            out: format!("duet-ctr-out-{n}"),
        };
        ip(&["netns", "add", &v.pod]);
        ip(&["netns", "add", &v.out]);
        ip(&[
            "-n", &v.out, "link", "add", "vo", "type", "veth", "peer", "name", "eth0", "netns",
            &v.pod,
        ]);
        ip(&["-n", &v.out, "addr", "add", "10.201.0.1/24", "dev", "vo"]);
        ip(&["-n", &v.out, "link", "set", "vo", "up"]);
        ip(&["-n", &v.pod, "addr", "add", "10.201.0.2/24", "dev", "eth0"]);
        ip(&["-n", &v.pod, "link", "set", "eth0", "up"]);
        ip(&["-n", &v.pod, "route", "add", "default", "via", "10.201.0.1"]);
        v
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.out] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn ctr_runs_hello_and_httpd() {
    need("curl");
    let c = Containerd::start();
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let hello = import(&c, "hello", dir.path());
    let o = output(
        c.ctr()
            .arg("run")
            .arg("--rm")
            .arg("--runc-binary")
            .arg(&rt)
            .args([&hello, "hello1"]),
    );
    assert_eq!(
        o.status,
        Some(0),
        "ctr run hello failed: {o:#?}\ncontainerd: {}",
        c.log()
    );
    o.expect_stdout("Hello from Duet!");

    let httpd = import(&c, "httpd", dir.path());
    let net = Veth::new();
    let ns = format!("network:/run/netns/{}", net.pod);
    ok(c.ctr().args(["run", "-d", "--runc-binary"]).arg(&rt).args([
        "--with-ns",
        &ns,
        &httpd,
        "web1",
    ]));
    let deadline = Instant::now() + Duration::from_secs(20);
    let page = loop {
        let o = output(Command::new("ip").args([
            "netns",
            "exec",
            &net.out,
            "curl",
            "-s",
            "-m",
            "5",
            "http://10.201.0.2/",
        ]));
        if o.status == Some(0) && !o.stdout.is_empty() {
            break o.stdout;
        }
        assert!(
            Instant::now() < deadline,
            "httpd under ctr did not answer: {o:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(page.contains("Hello from a Duet unikernel"), "{page}");
    assert!(ok(c.ctr().args(["task", "ls"])).contains("RUNNING"));
    ok(c.ctr()
        .args(["task", "kill", "--signal", "SIGKILL", "web1"]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok(c.ctr().args(["task", "ls"])).contains("STOPPED") {
        assert!(Instant::now() < deadline, "web1 did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    ok(c.ctr().args(["task", "rm", "web1"]));
    ok(c.ctr().args(["container", "rm", "web1"]));
}
