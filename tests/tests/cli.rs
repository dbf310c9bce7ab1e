//! A command line naming something unusable (a path that is missing, a
//! directory, unreadable, a socket of the wrong kind or in use, a port in
//! use) gets status 125 and one message naming the cause and the remedy,
//! each said once (usage errors, status 2: usage.rs). Nothing a user names
//! is ever destroyed.

use duet_tests::{duet, duet_cmd, image, run_cmd, status, temp_dir, wait_path, Background, Output};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const REFUSED: u8 = status::MONITOR_ERROR;

/// Checks a refusal: its status, and that stderr says each of `says`, once.
#[track_caller]
fn refused(o: Output, st: u8, says: &[&str]) -> Output {
    o.expect_refusal(st, says);
    o
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn hello() -> String {
    image("hello").to_str().unwrap().to_string()
}

#[test]
fn api_never_destroys_what_is_at_its_path_and_says_what_is_there() {
    let dir = temp_dir("cli-api");
    let img = hello();
    // A regular file (a key, say) is refused and left as it was.
    let file = dir.join("key");
    std::fs::write(&file, "secret").unwrap();
    refused(
        duet(&["run", &img, "--api", s(&file)]),
        REFUSED,
        &["exists and is not a socket", "pick another path"],
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "secret");
    // A directory.
    refused(
        duet(&["run", &img, "--api", s(&dir)]),
        REFUSED,
        &["is a directory", "give --api the path of a socket"],
    );
    // A directory that does not exist.
    refused(
        duet(&["run", &img, "--api", s(&dir.join("nodir/sock"))]),
        REFUSED,
        &[
            "cannot create control socket",
            "No such file or directory",
            "a directory you may write",
        ],
    );
    // Another program's datagram socket.
    let dgram = dir.join("dgram");
    let _d = UnixDatagram::bind(&dgram).unwrap();
    refused(
        duet(&["run", &img, "--api", s(&dgram)]),
        REFUSED,
        &["another program's socket"],
    );
    // A live duet's socket.
    let live = dir.join("live.sock");
    let g = Background::start(&[
        "run",
        image("shutdown").to_str().unwrap(),
        "--api",
        s(&live),
        "--stop-timeout",
        "0",
    ]);
    wait_path(&live);
    refused(
        duet(&["run", &img, "--api", s(&live)]),
        REFUSED,
        &["in use by another duet"],
    );
    g.signal(libc::SIGINT);
    g.finish().expect_status(130);
    assert!(!live.exists(), "the socket outlived its monitor");
    // A stale socket (its monitor was killed) is replaced, then removed.
    let stale = dir.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    duet(&["run", &img, "--api", s(&stale)])
        .expect_status(0)
        .expect_stdout("Hello from Duet!");
    assert!(!stale.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ctl_says_what_is_wrong_with_the_socket_path() {
    let dir = temp_dir("cli-ctl");
    let ctl = |p: &Path| duet(&["ctl", s(p), "status"]);
    refused(
        ctl(&dir.join("none")),
        REFUSED,
        &["no control socket at", "is the guest running with --api"],
    );
    let file = dir.join("file");
    std::fs::write(&file, "x").unwrap();
    refused(
        ctl(&file),
        REFUSED,
        &["is not a socket", "the path given to --api"],
    );
    refused(
        ctl(&dir),
        REFUSED,
        &["is a directory", "the path given to --api"],
    );
    let dead = dir.join("dead.sock");
    drop(UnixListener::bind(&dead).unwrap());
    refused(
        ctl(&dead),
        REFUSED,
        &["nobody serves", "start the guest again"],
    );
    let dgram = dir.join("dgram");
    let _d = UnixDatagram::bind(&dgram).unwrap();
    refused(ctl(&dgram), REFUSED, &["another program's socket"]);
    // A request the monitor refuses: its reason, and the answer on stdout.
    let sock = dir.join("api.sock");
    let g = Background::start(&[
        "run",
        image("shutdown").to_str().unwrap(),
        "--api",
        s(&sock),
    ]);
    wait_path(&sock);
    let o = refused(
        duet(&["ctl", s(&sock), "snapshot", s(&dir)]),
        REFUSED,
        &["exists"],
    );
    o.expect_stdout("\"ok\": false");
    // snapshot_ms has at most three decimals.
    let o = duet(&["ctl", s(&sock), "snapshot", s(&dir.join("snap"))]);
    o.expect_status(0);
    let ms = o
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"snapshot_ms\": "))
        .expect("snapshot_ms in the answer");
    let decimals = ms
        .trim_end_matches(',')
        .split('.')
        .nth(1)
        .map_or(0, str::len);
    assert!(decimals <= 3, "snapshot_ms {ms}");
    g.signal(libc::SIGINT);
    g.finish().expect_status(130);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `duet args` as user `nobody`, for files root could read anyway.
fn as_nobody(args: &[&str]) -> Output {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&duet_tests::paths().bin)
        .args(args)
        .stdin(std::process::Stdio::null());
    let o = run_cmd(c, Duration::from_secs(30));
    assert_ne!(
        o.status,
        Some(127),
        "setpriv (util-linux) is needed to test unreadable files: {o:#?}"
    );
    o
}

#[test]
fn paths_that_are_missing_directories_or_unreadable_are_named_with_the_remedy() {
    let dir = temp_dir("cli-paths");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let img = hello();
    // The image.
    refused(
        duet(&["run", s(&dir)]),
        REFUSED,
        &["cannot read image", "Is a directory"],
    );
    refused(
        duet(&["run", "/nonexistent/image"]),
        REFUSED,
        &["cannot read image /nonexistent/image", "No such file"],
    );
    let locked = dir.join("image");
    std::fs::copy(&img, &locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    refused(
        as_nobody(&["run", s(&locked)]),
        REFUSED,
        &["cannot read image", "Permission denied"],
    );
    // Disks.
    refused(
        duet(&["run", &img, "--disk", s(&dir)]),
        REFUSED,
        &["is a directory", "give a raw image file"],
    );
    let missing = dir.join("none.img");
    refused(
        duet(&["run", &img, "--disk", s(&missing)]),
        REFUSED,
        &["no such file", "truncate -s"],
    );
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o000)).unwrap();
    refused(
        as_nobody(&["run", &img, "--disk", s(&disk)]),
        REFUSED,
        &["permission denied", "fix its permissions"],
    );
    // --wait-start.
    refused(
        duet(&["run", &img, "--wait-start", s(&disk)]),
        REFUSED,
        &["not a FIFO", "mkfifo"],
    );
    refused(
        duet(&["run", &img, "--wait-start", s(&missing)]),
        REFUSED,
        &["No such file", "mkfifo"],
    );
    // Snapshots and templates.
    refused(
        duet(&["restore", s(&disk)]),
        REFUSED,
        &["is not a Duet snapshot"],
    );
    refused(
        duet(&["restore", s(&dir)]),
        REFUSED,
        &["is not a Duet snapshot", "no `state` file"],
    );
    let store = s(&dir);
    refused(
        duet(&["run", "--template", "nope", "--store", store]),
        REFUSED,
        &["no template `nope`", "duet template create nope IMAGE"],
    );
    refused(
        duet(&["template", "rm", "nope", "--store", store]),
        REFUSED,
        &["no template `nope`"],
    );
    refused(
        duet(&["template", "list", "--store", s(&disk)]),
        REFUSED,
        &["template store", "Not a directory"],
    );
    refused(
        duet(&["template", "create", "a/b", &img, "--store", store]),
        REFUSED,
        &["not a template name"],
    );
    refused(
        duet(&["template", "create", "t", &img, "--store", store]),
        REFUSED,
        &[
            "without reaching duet::snapshot_point()",
            "no template was created",
        ],
    );
    // KVM.
    refused(
        duet(&["run", &img, "--kvm-device", s(&dir)]),
        REFUSED,
        &["not a KVM device"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn migration_mistakes_name_the_cause() {
    let dir = temp_dir("cli-mig");
    let key = dir.join("key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef").unwrap();
    let short = dir.join("short");
    std::fs::write(&short, "abc").unwrap();
    let incoming = |addr: &str, key: &Path| {
        let mut c = duet_cmd(&["run", "--incoming", addr, "--migration-key-file", s(key)]);
        c.env_remove("DUET_MIGRATE_DEST_FAIL");
        run_cmd(c, Duration::from_secs(30))
    };
    // A port already bound.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    refused(
        incoming(&addr, &key),
        REFUSED,
        &[
            "cannot listen on",
            "Address already in use",
            "pick another port",
            "nothing runs here",
        ],
    );
    // Key files.
    refused(
        incoming(&addr, &dir.join("none")),
        REFUSED,
        &["migration key file", "No such file"],
    );
    refused(
        incoming(&addr, &short),
        REFUSED,
        &["holds 3 bytes", "at least 16"],
    );
    refused(
        incoming(&addr, &dir),
        REFUSED,
        &["migration key file", "Is a directory"],
    );
    drop(taken);
    // The source: nobody listens at the destination.
    let sock = dir.join("src.sock");
    let g = Background::start(&[
        "run",
        image("shutdown").to_str().unwrap(),
        "--api",
        s(&sock),
    ]);
    wait_path(&sock);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    refused(
        duet(&[
            "ctl",
            s(&sock),
            "migrate",
            &closed,
            "--migration-key-file",
            s(&key),
        ]),
        REFUSED,
        &[
            "cannot connect to the destination",
            "Connection refused",
            "listens there",
            "keeps running here",
        ],
    );
    g.signal(libc::SIGINT);
    g.finish().expect_status(130);
    std::fs::remove_dir_all(&dir).unwrap();
}
