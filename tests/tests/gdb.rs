//! The GDB stub, driven by the real GDB in batch mode: breakpoints, steps,
//! registers and memory on a booted guest; attaching to a running one;
//! a restored snapshot; hostile packet streams; a port in use.

use duet_tests::gdb::{debug_image, frames, gdb, gdb_cmd, line_of, require_gdb, Monitor};
use duet_tests::{duet, image, status, temp_dir, wait_path};
use std::io::Write;
use std::time::{Duration, Instant};

/// Asserts `out` contains each of `want`, showing everything otherwise.
#[track_caller]
fn has(out: &str, want: &[&str]) {
    for w in want {
        assert!(out.contains(w), "GDB output lacks {w:?}:\n{out}");
    }
}

#[test]
fn breakpoints_steps_registers_and_exit_status_on_args() {
    require_gdb();
    let img = debug_image("args");
    let mut m = Monitor::start(&[
        "run".as_ref(),
        img.as_os_str(),
        "--gdb".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--".as_ref(),
        "one".as_ref(),
        "status=3".as_ref(),
    ]);
    let addr = m.gdb_addr();
    // Nothing ran before GDB came.
    assert_eq!(m.stdout(), "");
    let line = line_of("examples/args.rs", "status = n.parse()");
    let out = gdb(
        &img,
        None,
        &[
            &format!("target remote {addr}"),
            "break main",
            "continue",
            "bt",
            "info registers rip",
            "step",
            "next",
            "next",
            "print status",
            &format!("break examples/args.rs:{line}"),
            "continue",
            "print n",
            "continue",
        ],
    );
    has(
        &out,
        &[
            "Breakpoint 1, args::__duet::main ()",
            "#0  args::__duet::main ()",
            "<args::__duet::main+",
            // `step` went into the application's main, `next` on in it.
            "args::main () at examples/args.rs:",
            "$1 = 0",
            &format!("Breakpoint 2, args::main () at examples/args.rs:{line}"),
            "$2 = \"3\"",
            "[Inferior 1 (process 1) exited with code 03]",
        ],
    );
    assert_eq!(m.finish(), Some(3), "stderr:\n{}", m.stderr());
    assert!(m.stdout().contains("arg[0]=one\narg[1]=status=3\n"));
}

#[test]
fn a_single_step_over_a_hypercall_stops_right_after_it() {
    require_gdb();
    let img = debug_image("args");
    // The console write's `out` (the hypercall) and the instruction after it.
    let dis = gdb(&img, None, &["disassemble 'duet::console::write_bytes'"]);
    let lines: Vec<&str> = dis.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("\tout "))
        .unwrap_or_else(|| panic!("no `out` in write_bytes:\n{dis}"));
    let addr = |l: &str| {
        let hex = l
            .split_whitespace()
            .next()
            .unwrap()
            .trim_start_matches("0x");
        format!("{:#x}", u64::from_str_radix(hex, 16).unwrap())
    };
    let (out, next) = (addr(lines[at]), addr(lines[at + 1]));
    let mut m = Monitor::start(&[
        "run".as_ref(),
        img.as_os_str(),
        "--gdb".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--".as_ref(),
        "hi".as_ref(),
    ]);
    let addr = m.gdb_addr();
    let got = gdb(
        &img,
        None,
        &[
            &format!("target remote {addr}"),
            &format!("break *{out}"),
            "continue",
            "delete",
            "stepi",
            "print/x $pc",
            "continue",
        ],
    );
    // The hypercall ran (the guest printed), and the step stopped after it.
    has(&got, &[&format!("$1 = {next}"), "exited normally"]);
    assert_eq!(m.finish(), Some(0));
    assert_eq!(m.stdout(), "arg[0]=hi\n");
}

#[test]
fn a_fault_stops_in_gdb_then_ends_the_guest() {
    require_gdb();
    let img = image("fault");
    let mut m = Monitor::start(&[
        "run".as_ref(),
        img.as_os_str(),
        "--gdb".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--".as_ref(),
        "nested".as_ref(),
    ]);
    let addr = m.gdb_addr();
    let out = gdb(
        &img,
        None,
        &[
            &format!("target remote {addr}"),
            "continue",
            "bt",
            "continue",
        ],
    );
    has(
        &out,
        &[
            "Program received signal SIGSEGV",
            "fault::level3",
            "fault::level1",
            "Program terminated with signal SIGSEGV",
        ],
    );
    assert_eq!(m.finish(), Some(i32::from(status::GUEST_FAULT)));
    assert!(m.stderr().contains("#PF page fault"), "{}", m.stderr());
}

/// A counter with a control socket, counting `n` times every millisecond.
fn counter(dir: &std::path::Path, n: u32) -> (Monitor, String) {
    let sock = dir.join("api.sock").display().to_string();
    let img = debug_image("counter");
    let m = Monitor::start(&[
        "run",
        img.to_str().unwrap(),
        "--api",
        &sock,
        "--",
        &n.to_string(),
        "1000",
    ]);
    wait_path(std::path::Path::new(&sock));
    m.wait_until("count 3", |o, _| o.contains("count 3\n"));
    (m, sock)
}

fn ctl(sock: &str, args: &[&str]) -> duet_tests::Output {
    let mut v = vec!["ctl", sock];
    v.extend_from_slice(args);
    duet(&v)
}

#[test]
fn attach_interrupt_read_a_static_and_detach_from_a_running_counter() {
    require_gdb();
    let dir = temp_dir("gdb-attach");
    let (mut m, sock) = counter(&dir, 3000);
    let o = ctl(&sock, &["gdb", "127.0.0.1:0"]);
    o.expect_status(0);
    let addr = duet_tests::gdb::addr_in(&o.stdout).expect("the address in the answer");

    let img = debug_image("counter");
    // GDB's output to a pipe is buffered: a marker file says when it is
    // about to continue.
    let marker = dir.join("continuing");
    let mut g = Monitor::spawn(gdb_cmd(
        &img,
        None,
        &[
            &format!("target remote {addr}"),
            "print counter::COUNT.v.value",
            &format!("shell touch {}", marker.display()),
            "continue",
            "print counter::COUNT.v.value",
            "detach",
        ],
    ));
    // Attaching stopped the guest; once GDB continues it counts again, and
    // GDB's Ctrl-C (a SIGINT to GDB) stops it.
    wait_path(&marker);
    let from = m.last_count().unwrap();
    m.wait_until("the guest to count on", |_, _| {
        m.last_count().unwrap() >= from + 5
    });
    // GDB's breakpoints live in the text: no migration while it is attached.
    let key = dir.join("key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
    let o = ctl(
        &sock,
        &[
            "migrate",
            "127.0.0.1:9",
            "--migration-key-file",
            key.to_str().unwrap(),
        ],
    );
    o.expect_status(i32::from(status::MONITOR_ERROR))
        .expect_stderr("GDB is attached")
        .expect_stderr("keeps running");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(g.child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(g.finish(), Some(0), "{}", g.stderr());
    let out = format!("{}{}", g.stdout(), g.stderr());
    has(
        &out,
        &[
            "Program received signal SIGINT",
            "[Inferior 1 (process 1) detached]",
        ],
    );
    let values: Vec<u64> = out
        .lines()
        .filter_map(|l| {
            l.strip_prefix("$")?
                .split_once(" = ")?
                .1
                .trim()
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(values.len(), 2, "two prints of COUNT:\n{out}");
    assert!(
        values[0] >= 3 && values[1] > values[0],
        "{values:?}:\n{out}"
    );
    // Detached: the count goes on to the end.
    m.wait_until("counter done", |o, _| o.contains("counter done"));
    assert_eq!(m.finish(), Some(0));
    let printed = m.stdout();
    assert!(printed.contains(&format!("count {}\n", values[1] + 1)));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_restored_snapshot_under_gdb_shows_the_stack_it_was_taken_with() {
    require_gdb();
    let dir = temp_dir("gdb-restore");
    let (m, sock) = counter(&dir, 100_000);
    ctl(&sock, &["pause"]).expect_status(0);
    // Let the last line printed before the pause reach us.
    std::thread::sleep(Duration::from_millis(100));
    // The paused guest's stack, from a core file of it.
    let core = dir.join("live.core");
    let o = ctl(&sock, &["core", core.to_str().unwrap()]);
    o.expect_status(0).expect_stdout("core_bytes");
    let snap = dir.join("snap");
    ctl(&sock, &["snapshot", snap.to_str().unwrap()]).expect_status(0);
    let at = m.last_count().unwrap();
    drop(m);
    let img = debug_image("counter");
    let before = gdb(&img, Some(&core), &["bt", "print counter::COUNT.v.value"]);

    let mut r = Monitor::start(&["restore", snap.to_str().unwrap(), "--gdb", "127.0.0.1:0"]);
    let addr = r.gdb_addr();
    let after = gdb(
        &img,
        None,
        &[
            &format!("target remote {addr}"),
            "bt",
            "print counter::COUNT.v.value",
            "kill",
        ],
    );
    let (b, a) = (frames(&before), frames(&after));
    assert!(b.iter().any(|f| f == "counter::main"), "{before}");
    assert_eq!(a, b, "before:\n{before}\nafter:\n{after}");
    let count = format!("$1 = {at}");
    has(&before, &[&count]);
    has(&after, &[&count]);
    assert_eq!(
        r.finish(),
        Some(i32::from(status::VM_FAILURE)),
        "killed from GDB"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn garbage_or_a_cut_packet_stream_leaves_the_guest_paused() {
    require_gdb();
    let dir = temp_dir("gdb-garbage");
    let (mut m, sock) = counter(&dir, 300);
    let o = ctl(&sock, &["gdb", "127.0.0.1:0"]);
    let addr = duet_tests::gdb::addr_in(&o.stdout).expect("an address");
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    for stream in [
        &b"$qSupported:multiprocess+;swbreak+;hwbre"[..],
        &b"$g#67$m200000,"[..],
        &garbage[..],
        &[b'$'; 5000][..],
    ] {
        let mut c = std::net::TcpStream::connect(&addr).expect("connect");
        let _ = c.write_all(stream);
        std::thread::sleep(Duration::from_millis(100));
        drop(c);
        // The stub saw the connection end; the guest stays paused.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ctl(&sock, &["status"]).stdout.contains("\"paused\"") {
            assert!(Instant::now() < deadline, "the guest is not paused");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let held = m.last_count().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(m.last_count().unwrap(), held, "a paused guest counted on");
    // The monitor still serves: a real GDB attaches and sees the count.
    let out = gdb(
        &debug_image("counter"),
        None,
        &[
            &format!("target remote {addr}"),
            "print counter::COUNT.v.value",
            "detach",
        ],
    );
    has(&out, &[&format!("$1 = {held}"), "detached"]);
    ctl(&sock, &["resume"]).expect_status(0);
    m.wait_until("counter done", |o, _| o.contains("counter done"));
    assert_eq!(m.finish(), Some(0));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn gdb_on_a_port_in_use_fails_before_boot() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let hello = image("hello");
    let o = duet(&["run", hello.to_str().unwrap(), "--gdb", &addr]);
    o.expect_status(i32::from(status::MONITOR_ERROR))
        .expect_stderr(&format!("cannot listen for GDB on {addr}"))
        .expect_stderr("in use");
    assert_eq!(o.stdout, "", "the guest must not have run");
    // Not ADDR:PORT at all: a usage error; a host name: refused to start.
    let o = duet(&["run", hello.to_str().unwrap(), "--gdb", "localhost"]);
    o.expect_status(i32::from(status::USAGE))
        .expect_stderr("is not ADDR:PORT");
    assert_eq!(o.stdout, "");
    let o = duet(&["run", hello.to_str().unwrap(), "--gdb", "localhost:1234"]);
    o.expect_status(i32::from(status::MONITOR_ERROR))
        .expect_stderr("numeric ADDRESS:PORT");
    assert_eq!(o.stdout, "");
}
