//! seccomp (`docs/security.md`): every monitor thread runs under its list,
//! a call off it stops the monitor with status 159 and a line naming the
//! thread and the call, and `--seccomp off` turns the filters off.
//!
//! The violations are real: the monitor under test (built with the
//! `test-hooks` feature, as `cargo xtask test` builds it) makes the thread
//! named by `DUET_TEST_SECCOMP_PROBE` call `execve` right after its filter
//! is in. Every list has its probe here.

use duet_tests::{duet, duet_cmd, image, run_cmd, status, temp_dir, Output};
use std::time::Duration;

/// Runs `duet args` with the probe in `thread`'s list.
fn probed(thread: &str, args: &[&str]) -> std::process::Child {
    let mut c = duet_cmd(args);
    c.env("DUET_TEST_SECCOMP_PROBE", thread)
        .env_remove("DUET_TEST_SECCOMP_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    c.spawn().expect("spawn duet")
}

/// Expects the documented stop: status 159, the report naming the list
/// and `execve`.
#[track_caller]
fn expect_stopped(o: &Output, thread: &str) {
    assert_eq!(
        o.status,
        Some(i32::from(status::SECCOMP)),
        "the {thread} thread's probe did not stop the monitor with status {} (is DUET_BIN built with --features test-hooks? cargo xtask test builds it so); output:\n{o:#?}",
        status::SECCOMP
    );
    o.expect_stderr(&format!(
        "duet: seccomp: the {thread} thread made system call 59 (execve), which its seccomp list does not allow"
    ))
    .expect_stderr("status 159");
}

fn finish(child: std::process::Child) -> Output {
    duet_tests::wait_output(child, Duration::from_secs(60))
}

/// `shutdown` waits for SIGTERM, so only the probe can end these runs.
fn waiting_guest(extra: &[&str]) -> Vec<String> {
    let img = image("shutdown");
    let mut v = vec!["run".to_string(), img.display().to_string()];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn a_call_off_the_vcpu_main_control_io_or_gdb_list_stops_the_monitor_and_names_it() {
    let tmp = temp_dir("seccomp-probe");
    let disk = tmp.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let sock = tmp.join("api.sock");
    let (sock, disk) = (sock.to_str().unwrap(), disk.to_str().unwrap());
    let cases: [(&str, Vec<String>); 5] = [
        ("vcpu", waiting_guest(&[])),
        ("main", waiting_guest(&["--api", sock])),
        ("control", waiting_guest(&["--api", sock])),
        ("io", waiting_guest(&["--disk", disk])),
        ("gdb", waiting_guest(&["--gdb", "127.0.0.1:0"])),
    ];
    for (thread, args) in cases {
        let o = finish(probed(thread, &strs(&args)));
        expect_stopped(&o, thread);
        let _ = std::fs::remove_file(sock);
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn a_migration_destination_is_confined_before_it_reads_the_source() {
    let tmp = temp_dir("seccomp-incoming");
    let key = tmp.join("key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef").unwrap();
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let k = key.to_str().unwrap();
    let child = probed(
        "incoming",
        &["run", "--incoming", &addr, "--migration-key-file", k],
    );
    // A peer that connects and says nothing: the destination installs its
    // list on accepting, before it reads a byte.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let _peer = loop {
        match std::net::TcpStream::connect(&addr) {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("the destination never listened on {addr}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    expect_stopped(&finish(child), "incoming");
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn a_migration_sender_is_confined_and_the_guest_s_monitor_stops() {
    let tmp = temp_dir("seccomp-migration");
    let key = tmp.join("key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef").unwrap();
    let sock = tmp.join("src.sock");
    let child = probed(
        "migration",
        &strs(&waiting_guest(&["--api", sock.to_str().unwrap()])),
    );
    duet_tests::wait_path(&sock);
    // Nobody listens there: the sender's probe comes before it connects.
    let ctl = duet(&[
        "ctl",
        sock.to_str().unwrap(),
        "migrate",
        "127.0.0.1:9",
        "--migration-key-file",
        key.to_str().unwrap(),
    ]);
    assert_ne!(ctl.status, Some(0), "{ctl:#?}");
    expect_stopped(&finish(child), "migration");
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn the_clones_parent_is_confined_once_its_clones_run() {
    let store = temp_dir("seccomp-clones");
    let st = store.to_str().unwrap();
    let img = image("counter");
    duet(&[
        "template",
        "create",
        "cnt",
        img.to_str().unwrap(),
        "--store",
        st,
        "--",
        "3",
        "20",
    ])
    .expect_status(0);
    // The parent installs its list after the last clone started; each
    // clone (its own process, the same variable) runs under the vCPU and
    // main lists, where the probe names another thread.
    let child = probed(
        "clones",
        &["run", "--template", "cnt", "--store", st, "--clones", "2"],
    );
    expect_stopped(&finish(child), "clones");
    std::fs::remove_dir_all(&store).unwrap();
}

#[test]
fn seccomp_off_runs_hello_without_filters() {
    let img = image("hello");
    let img = img.to_str().unwrap();
    duet(&["run", img, "--seccomp", "off"])
        .expect_status(0)
        .expect_stdout("Hello from Duet!")
        .expect_stderr("--seccomp off");
    // With the filters off, the vCPU thread's probe (`execve` of nothing)
    // fails harmlessly and the guest runs to its end.
    let mut c = duet_cmd(&["run", img, "--seccomp", "off"]);
    c.env("DUET_TEST_SECCOMP_PROBE", "vcpu");
    run_cmd(c, Duration::from_secs(60))
        .expect_status(0)
        .expect_stdout("Hello from Duet!");
    // On (the default) is the same guest, filtered.
    duet(&["run", img, "--seccomp", "on"])
        .expect_status(0)
        .expect_stdout("Hello from Duet!");
    duet(&["run", img, "--seccomp", "maybe"])
        .expect_status(i32::from(status::USAGE))
        .expect_stderr("neither on nor off");
}
