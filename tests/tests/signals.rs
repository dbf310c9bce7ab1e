//! How the monitor ends on signals, and `--wait-start` (what container
//! runtimes build on): SIGTERM asks the guest to shut down and stops it
//! after the grace period, SIGINT stops it at once; either way disks are
//! flushed and the control socket is removed.

use duet_tests::netns::Netns;
use duet_tests::{duet, image, temp_dir, wait_path, Background};
use std::time::{Duration, Instant};

fn start(app: &str, opts: &[&str], args: &[&str]) -> Background {
    let img = image(app);
    let mut v = vec!["run", img.to_str().unwrap()];
    v.extend_from_slice(opts);
    v.push("--");
    v.extend_from_slice(args);
    Background::start(&v)
}

#[test]
fn sigterm_wakes_a_polling_guest_which_exits_by_itself() {
    let g = start("shutdown", &[], &[]);
    g.wait_for("shutdown: waiting");
    g.signal(libc::SIGTERM);
    let o = g.finish();
    o.expect_status(7)
        .expect_stdout("poll woke with READY_SHUTDOWN, requested=true");
}

#[test]
fn sigterm_stops_a_guest_that_ignores_it_after_the_grace_period() {
    let dir = temp_dir("sigterm-grace");
    let sock = dir.join("api.sock");
    let s = sock.to_str().unwrap();
    let g = start(
        "shutdown",
        &["--stop-timeout", "0.3", "--api", s],
        &["ignore"],
    );
    g.wait_for("ignoring requests");
    wait_path(&sock);
    let t0 = Instant::now();
    g.signal(libc::SIGTERM);
    let o = g.finish();
    let took = t0.elapsed();
    o.expect_status(143).expect_stderr("SIGTERM");
    assert!(
        took >= Duration::from_millis(300),
        "stopped after {took:?}, before the grace period"
    );
    assert!(!sock.exists(), "the control socket was left behind");
}

#[test]
fn sigint_stops_at_once() {
    let g = start("shutdown", &["--stop-timeout", "60"], &["ignore"]);
    g.wait_for("ignoring requests");
    g.signal(libc::SIGINT);
    g.finish().expect_status(130).expect_stderr("SIGINT");
}

#[test]
fn a_second_sigterm_stops_at_once() {
    let g = start("shutdown", &["--stop-timeout", "60"], &["ignore"]);
    g.wait_for("ignoring requests");
    g.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    g.signal(libc::SIGTERM);
    g.finish().expect_status(143);
}

#[test]
fn sigterm_stops_a_paused_guest_at_once() {
    let dir = temp_dir("sigterm-paused");
    let sock = dir.join("api.sock");
    let s = sock.to_str().unwrap();
    let g = start("shutdown", &["--stop-timeout", "60", "--api", s], &[]);
    g.wait_for("shutdown: waiting");
    wait_path(&sock);
    duet(&["ctl", s, "pause"]).expect_status(0);
    g.signal(libc::SIGTERM);
    g.finish().expect_status(143);
    assert!(!sock.exists());
}

#[test]
fn httpd_exits_cleanly_on_sigterm() {
    let ns = Netns::create();
    let g = ns.boot("httpd", &[], &[]);
    drop(ns.connect(80));
    // SAFETY: kill(2) on our own child (ip netns exec execs the monitor).
    let rc = unsafe { libc::kill(g.pid() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    g.wait(Duration::from_secs(20))
        .expect_status(0)
        .expect_stdout("shutdown requested");
}

#[test]
fn wait_start_holds_the_guest_until_a_reader_opens_the_fifo() {
    let dir = temp_dir("wait-start");
    let fifo = dir.join("start");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let g = start("hello", &["--wait-start", fifo.to_str().unwrap()], &[]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        g.stdout().is_empty(),
        "the guest ran before start: {}",
        g.stdout()
    );
    let byte = std::fs::read(&fifo).unwrap();
    assert_eq!(byte, b"0");
    g.finish().expect_status(0).expect_stdout("Hello from Duet");

    // Killed before start: the guest never runs.
    let g = start("hello", &["--wait-start", fifo.to_str().unwrap()], &[]);
    std::thread::sleep(Duration::from_millis(200));
    g.signal(libc::SIGTERM);
    let o = g.finish();
    o.expect_status(143);
    assert!(!o.stdout.contains("Hello"), "{o:?}");

    // Not a FIFO: refused before anything is built.
    let plain = dir.join("plain");
    std::fs::write(&plain, b"").unwrap();
    let img = image("hello");
    duet(&[
        "run",
        img.to_str().unwrap(),
        "--wait-start",
        plain.to_str().unwrap(),
    ])
    .expect_status(125)
    .expect_stderr("not a FIFO");
}

/// Waits (up to 60 s) until `path` is gone.
fn wait_gone(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} is still there",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_clone_parent_forwards_sigterm_and_sigint_and_its_clones_die_with_it() {
    let dir = temp_dir("clone-signals");
    let store = dir.join("store");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let img = image("counter");
    // Counts slowly and ignores shutdown requests: only the grace period
    // (0.2 s, passed on to the clones) ends it after SIGTERM.
    let st = s(&store);
    duet(&[
        "template",
        "create",
        "cnt",
        img.to_str().unwrap(),
        "--store",
        &st,
        "--",
        "100000",
        "20000",
    ])
    .expect_status(0);
    let start_clones = |sock: &std::path::Path| {
        let g = Background::start(&[
            "run",
            "--template",
            "cnt",
            "--store",
            &st,
            "--clones",
            "2",
            "--api",
            &s(sock),
            "--stop-timeout",
            "0.2",
        ]);
        for i in 0..2 {
            wait_path(&dir.join(format!(
                "{}.{i}",
                sock.file_name().unwrap().to_str().unwrap()
            )));
        }
        g
    };
    for (sig, status) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let sock = dir.join(format!("c{sig}.sock"));
        let g = start_clones(&sock);
        // The parent's base path names clone 0's socket.
        duet(&["ctl", &s(&sock), "status"])
            .expect_status(125)
            .expect_stderr(&format!("{}.0 is clone 0's", s(&sock)));
        g.signal(sig);
        let o = g.finish();
        o.expect_status(status)
            .expect_stderr(&format!("clone 0 exited with status {status}"))
            .expect_stderr(&format!("clone 1 exited with status {status}"));
        for i in 0..2 {
            assert!(
                !dir.join(format!("c{sig}.sock.{i}")).exists(),
                "clone {i}'s socket was left behind"
            );
        }
    }
    // A parent killed outright: the clones get SIGTERM (their parent-death
    // signal) and end after their grace period, removing their sockets.
    let sock = dir.join("killed.sock");
    let g = start_clones(&sock);
    g.signal(libc::SIGKILL);
    for i in 0..2 {
        wait_gone(&dir.join(format!("killed.sock.{i}")));
    }
    drop(g);
    std::fs::remove_dir_all(&dir).unwrap();
}
