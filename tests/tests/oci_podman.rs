//! `duet-runtime` under Podman: `podman run --runtime duet-runtime` of Duet
//! images imported from tarballs, with arguments, environment, exit status,
//! memory, the engine's network, disks, stop/ps/rm and checkpoint/restore;
//! and images that are not Duet guests.

use duet_tests::oci::{free_port, need, ok, output, runtime, unique, Named, Podman};
use std::path::Path;
use std::time::{Duration, Instant};

/// Where duet-runtime keeps state when the engine passes no --root (Podman
/// 4.3 does not pass `--runtime-flag` to `delete`, so tests keep the default).
const ROOT: &str = "/run/duet-runtime";

#[test]
fn podman_runs_hello() {
    let p = Podman::get();
    let o = output(p.run(&[], &["--rm", &Podman::image("hello")]));
    o.expect_status(0).expect_stdout("Hello from Duet!");
}

#[test]
fn podman_passes_args_env_and_exit_status() {
    let p = Podman::get();
    let o = output(p.run(
        &[],
        &[
            "--rm",
            "-e",
            "GREETING=hi there",
            &Podman::image("args"),
            "one",
            "two words",
            "status=7",
        ],
    ));
    o.expect_status(7)
        .expect_stdout("arg[0]=one")
        .expect_stdout("arg[1]=two words")
        .expect_stdout("arg[2]=status=7")
        .expect_stdout("env GREETING=hi there");
}

/// Waits for the container's monitor API socket, then asks for its status.
fn guest_status(name: &str) -> String {
    let id = Podman::get().inspect(name, "{{.Id}}");
    let sock = Path::new(ROOT).join(&id).join("api.sock");
    duet_tests::wait_path(&sock);
    ok(duet_tests::duet_cmd(&[
        Path::new("ctl"),
        &sock,
        Path::new("status"),
    ]))
}

#[test]
fn podman_memory_sets_guest_memory() {
    let p = Podman::get();
    let name = Named(unique("mem"));
    let o = output(p.run(
        &[],
        &[
            "-d",
            "--name",
            &name.0,
            "--memory",
            "48m",
            &Podman::image("counter"),
            "100000",
            "100000",
        ],
    ));
    o.expect_status(0);
    let st = guest_status(&name.0);
    assert!(
        st.contains(&format!("\"memory_bytes\": {}", 48u64 << 20)),
        "guest memory is not 48 MiB: {st}"
    );
}

#[test]
fn non_duet_image_is_refused_without_runc_or_crun() {
    let p = Podman::get();
    let o = output(p.run(
        &["fallback-runtime=none"],
        &["--rm", &Podman::image("linux-hello")],
    ));
    assert_ne!(o.status, Some(0), "a non-Duet image ran: {o:#?}");
    o.expect_stderr("is not a Duet guest")
        .expect_stderr("no runc or crun is installed");
}

#[test]
fn non_duet_image_is_handed_to_runc() {
    need("runc");
    let p = Podman::get();
    // This sandbox's limits are below Podman's defaults (docs/oci.md).
    let o = output(p.run(
        &[],
        &[
            "--rm",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            &Podman::image("linux-hello"),
        ],
    ));
    o.expect_status(0)
        .expect_stdout("hello from a static Linux binary");
}

fn ps_status(name: &str) -> String {
    ok(Podman::get().cmd().args([
        "ps",
        "-a",
        "--filter",
        &format!("name=^{name}$"),
        "--format",
        "{{.Status}}",
    ]))
    .trim()
    .to_string()
}

fn curl(port: u16) -> String {
    need("curl");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = output(std::process::Command::new("curl").args([
            "-s",
            "-m",
            "5",
            &format!("http://127.0.0.1:{port}/"),
        ]));
        if o.status == Some(0) && !o.stdout.is_empty() {
            return o.stdout;
        }
        assert!(
            Instant::now() < deadline,
            "no answer on port {port}: {o:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn podman_httpd_port_stop_ps_rm() {
    let p = Podman::get();
    let name = Named(unique("httpd"));
    let port = free_port();
    let o = output(p.run(
        &[],
        &[
            "-d",
            "--name",
            &name.0,
            "-p",
            &format!("127.0.0.1:{port}:80"),
            &Podman::image("httpd"),
        ],
    ));
    o.expect_status(0);
    let id = o.stdout.trim().to_string();
    assert!(
        Path::new(ROOT).join(&id).is_dir(),
        "no state for {id} under {ROOT}"
    );
    assert!(curl(port).contains("Hello from a Duet unikernel"));
    assert!(
        ps_status(&name.0).starts_with("Up"),
        "{}",
        ps_status(&name.0)
    );
    ok(p.cmd().args(["stop", "-t", "10", &name.0]));
    let st = ps_status(&name.0);
    assert!(
        st.starts_with("Exited (0)"),
        "httpd did not stop cleanly: {st}"
    );
    assert_eq!(p.inspect(&name.0, "{{.State.ExitCode}}"), "0");
    ok(p.cmd().args(["rm", &name.0]));
    assert!(
        !Path::new(ROOT).join(&id).exists(),
        "podman rm left {ROOT}/{id}"
    );
}

#[test]
fn podman_disk_keeps_kv_data_across_containers() {
    let p = Podman::get();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("kv.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let vol = format!("{}:/dev/duet/disk0", disk.display());
    let img = Podman::image("kv");
    output(p.run(&[], &["--rm", "-v", &vol, &img, "put", "colour", "blue"]))
        .expect_status(0)
        .expect_stdout("ok");
    output(p.run(&[], &["--rm", "-v", &vol, &img, "get", "colour"]))
        .expect_status(0)
        .expect_stdout("blue");
}

/// The counts a counter guest printed, in order.
fn counts(logs: &str) -> Vec<u64> {
    logs.lines()
        .filter_map(|l| l.strip_prefix("count ")?.trim().parse().ok())
        .collect()
}

fn logs(name: &str) -> String {
    ok(Podman::get().cmd().args(["logs", name]))
}

fn wait_count(name: &str, at_least: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = counts(&logs(name));
        if c.len() >= at_least {
            return c;
        }
        assert!(Instant::now() < deadline, "counter stuck at {c:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn podman_checkpoint_and_restore_continue_the_count() {
    need("criu"); // Podman refuses to checkpoint without it, though Duet does not use it.
    let p = Podman::get();
    let name = Named(unique("counter"));
    output(p.run(
        &[],
        &[
            "-d",
            "--name",
            &name.0,
            &Podman::image("counter"),
            "100000",
            "20000",
        ],
    ))
    .expect_status(0);
    wait_count(&name.0, 10);
    ok(p.cmd().args(["container", "checkpoint", &name.0]));
    let before = counts(&logs(&name.0));
    assert!(
        !ps_status(&name.0).starts_with("Up"),
        "still running after checkpoint"
    );
    ok(p.cmd().args(["container", "restore", &name.0]));
    let after = wait_count(&name.0, before.len() + 10);
    let expect: Vec<u64> = (0..after.len() as u64).collect();
    assert_eq!(
        after,
        expect,
        "the count did not go on where it stopped (checkpoint at {})",
        before.len()
    );
    ok(p.cmd().args(["rm", "-f", &name.0]));
}

#[test]
fn runtime_answers_version_and_features() {
    let o = output(std::process::Command::new(runtime()).arg("--version"));
    o.expect_status(0)
        .expect_stdout("duet-runtime version")
        .expect_stdout("spec: 1.0");
    let o = output(std::process::Command::new(runtime()).arg("features"));
    o.expect_status(0)
        .expect_stdout("\"ociVersionMax\"")
        .expect_stdout("/dev/duet/");
}
