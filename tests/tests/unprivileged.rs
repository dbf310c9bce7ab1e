//! Least privilege: `duet run`, `restore`, `template`, `ctl` and both ends
//! of a migration work as an unprivileged user with access to `/dev/kvm`,
//! a NIC works on a TAP root made for that user, and what needs root (or
//! another user's files) is refused with the remedy. The monitor runs as
//! uid 65534 through `setpriv`; see `duet_tests::unprivileged` for how it
//! gets the device nodes without changing the host's. Needs root to set up.

use duet_tests::netns::{http_get, Netns, GUEST_CIDR, GUEST_MAC, TAP};
use duet_tests::unprivileged::{mode, owner, Access, Unprivileged, OTHER_UID, UID};
use duet_tests::{run_cmd, status, wait_path, Background, Output};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const MONITOR_ERROR: i32 = status::MONITOR_ERROR as i32;
/// How far the counter counts (3 ms apart).
const N: u64 = 1000;

fn run(c: Command) -> Output {
    run_cmd(c, Duration::from_secs(60))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn counts(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix("count ")?.parse().ok())
        .collect()
}

/// Panics unless `p` is [`UID`]'s with mode `want`.
#[track_caller]
fn private(p: &Path, want: u32) {
    assert_eq!(owner(p), UID, "{} is not the user's", p.display());
    assert_eq!(
        mode(p),
        want,
        "{} has mode {:o}, not {want:o}",
        p.display(),
        mode(p)
    );
}

/// Starts `counter N 3000` as the user with a control socket; waits until
/// it counts.
fn start_counter(u: &Unprivileged, sock: &Path) -> Background {
    let img = u.image("counter");
    let n = N.to_string();
    let r = Background::spawn(u.duet(&["run", s(&img), "--api", s(sock), "--", &n, "3000"]));
    wait_path(sock);
    r.wait_for("count 10\n");
    r
}

#[test]
fn hello_runs_as_a_user_and_kvm_refused_names_the_remedy() {
    let u = Unprivileged::new("hello");
    let img = u.image("hello");
    run(u.duet(&["run", s(&img)]))
        .expect_status(0)
        .expect_stdout("Hello from Duet!");
    let no_kvm = Access {
        kvm: false,
        ..Access::FULL
    };
    run(u.command(no_kvm, &["run", s(&img)])).expect_refusal(
        status::MONITOR_ERROR,
        &[
            "/dev/kvm: permission denied",
            "add your user to the `kvm` group",
        ],
    );
}

#[test]
fn control_socket_snapshot_core_and_restore_as_a_user() {
    let u = Unprivileged::new("ctl");
    let sock = u.path("api.sock");
    // Long enough (3 s) to be still counting whatever the load.
    let r = start_counter(&u, &sock);
    // Only the user who started the guest may control it.
    private(&sock, 0o600);
    let ctl = |args: &[&str]| {
        let mut v = vec!["ctl", s(&sock)];
        v.extend_from_slice(args);
        run(u.duet(&v))
    };
    let other = Access {
        uid: OTHER_UID,
        ..Access::FULL
    };
    run(u.command(other, &["ctl", s(&sock), "status"])).expect_refusal(
        status::MONITOR_ERROR,
        &["permission denied", "run `duet ctl` as that user"],
    );

    ctl(&["status"])
        .expect_status(0)
        .expect_stdout("\"state\": \"running\"");
    ctl(&["pause"]).expect_status(0).expect_stdout("\"paused\"");
    let last = *counts(&r.stdout()).last().unwrap();
    let snap = u.path("snap");
    ctl(&["snapshot", s(&snap)]).expect_status(0);
    let core = u.path("core");
    ctl(&["core", s(&core)]).expect_status(0);
    // A directory of root's is refused with who was refused and the remedy.
    let rootonly = u.path("rootonly");
    std::fs::create_dir(&rootonly).unwrap();
    ctl(&["snapshot", s(&rootonly.join("snap"))])
        .expect_status(MONITOR_ERROR)
        .expect_stderr(&format!("duet runs as uid {UID}"))
        .expect_stderr("a directory this user may write");
    ctl(&["resume"])
        .expect_status(0)
        .expect_stdout("\"running\"");
    let orig = r.finish();
    orig.expect_status(0).expect_stdout("counter done");
    assert!(!sock.exists(), "the socket outlived the monitor");

    // The guest's memory is the user's alone.
    private(&snap, 0o700);
    for f in ["state", "memory"] {
        private(&snap.join(f), 0o600);
    }
    private(&core, 0o600);

    let restored = run(u.duet(&["restore", s(&snap)]));
    restored.expect_status(0).expect_stdout("counter done");
    assert_eq!(
        counts(&restored.stdout),
        (last + 1..N).collect::<Vec<_>>(),
        "{restored:#?}"
    );
    // Another user cannot restore it.
    run(u.command(other, &["restore", s(&snap)])).expect_refusal(
        status::MONITOR_ERROR,
        &[
            &format!("duet runs as uid {OTHER_UID}"),
            "a path this user may read",
        ],
    );
}

#[test]
fn templates_and_clones_in_the_users_own_store() {
    let u = Unprivileged::new("tmpl");
    let img = u.image("identity");
    // The default store: the user's data directory, no --store.
    let store = u.home().join(".local/share/duet/templates");
    run(u.duet(&["template", "create", "idt", s(&img), "--", "2"]))
        .expect_status(0)
        .expect_stderr(&format!("created in {}", store.join("idt").display()));
    private(&store.join("idt"), 0o700);
    run(u.duet(&["template", "list"]))
        .expect_status(0)
        .expect_stdout("idt\t");

    let o = run(u.duet(&["run", "--template", "idt", "--clones", "3"]));
    o.expect_status(0);
    for i in 0..3 {
        o.expect_stdout(&format!("clone={i} round 1 alive"));
    }
    assert_eq!(o.stdout.matches("identity done").count(), 3, "{o:#?}");

    // Entering a network namespace per clone is what needs root.
    let prefix = format!("dpriv{}-", std::process::id());
    let _ns = Netns::named(&format!("{prefix}0"));
    run(u.duet(&[
        "run",
        "--template",
        "idt",
        "--clones",
        "1",
        "--clone-netns",
        &prefix,
    ]))
    .expect_refusal(
        status::MONITOR_ERROR,
        &["--clone-netns", "needs root (CAP_SYS_ADMIN)"],
    );

    run(u.duet(&["template", "rm", "idt"])).expect_status(0);
    let list = run(u.duet(&["template", "list"]));
    list.expect_status(0);
    assert!(!list.stdout.contains("idt"), "{list:#?}");
    // A store this user may not write is refused with the remedy.
    let rootonly = u.path("rootonly");
    std::fs::create_dir(&rootonly).unwrap();
    run(u.duet(&[
        "template",
        "create",
        "idt",
        s(&img),
        "--store",
        s(&rootonly.join("store")),
    ]))
    .expect_refusal(
        status::MONITOR_ERROR,
        &["Permission denied", "pass --store DIR"],
    );
}

#[test]
fn migration_between_two_unprivileged_monitors_with_a_disk_copy() {
    let u = Unprivileged::new("mig");
    let key = u.write("key", &[7u8; 32]);
    let disk = u.write("disk.img", &vec![0u8; 1 << 20]);
    let img = u.image("diskmig");
    let src_sock = u.path("src.sock");
    let src = Background::spawn(u.duet(&[
        "run",
        s(&img),
        "--disk",
        s(&disk),
        "--api",
        s(&src_sock),
        "--",
        "32",
    ]));
    wait_path(&src_sock);
    src.wait_for("writing\n");
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    // The destination creates its copy of the disk (--copy-disks).
    let copy = u.path("copy.img");
    let dst = Background::spawn(u.duet(&[
        "run",
        "--incoming",
        &addr,
        "--migration-key-file",
        s(&key),
        "--disk",
        s(&copy),
    ]));
    // The source retries connecting while the destination starts.
    let m = run(u.duet(&[
        "ctl",
        s(&src_sock),
        "migrate",
        &addr,
        "--migration-key-file",
        s(&key),
        "--copy-disks",
    ]));
    m.expect_status(0).expect_stdout("migrated to");
    src.finish()
        .expect_status(i32::from(status::MIGRATED))
        .expect_stderr("guest migrated to");
    // diskmig checks its disk once it sees it was moved, then exits.
    dst.finish()
        .expect_status(0)
        .expect_stdout("disk intact after");
    // The guest's data, private to the user.
    private(&copy, 0o600);
}

#[test]
fn a_nic_on_a_tap_root_made_for_the_user_on_both_transports() {
    let u = Unprivileged::new("net");
    let ns = Netns::create_for(UID);
    let path = ns.path();
    let access = Access {
        netns: Some(&path),
        ..Access::FULL
    };
    let img = u.image("httpd");
    let mac = GUEST_MAC.map(|b| format!("{b:02x}")).join(":");
    let ip = format!("IP={GUEST_CIDR}");
    for transport in ["virtio", "hypercall"] {
        let net = format!("tap={TAP},mac={mac},transport={transport}");
        let g =
            Background::spawn(u.command(access, &["run", s(&img), "--net", &net, "--env", &ip]));
        let page = http_get(ns.connect(80), "/");
        assert!(
            page.contains("Hello from a Duet unikernel"),
            "{transport}: {page}"
        );
        g.signal(libc::SIGTERM);
        g.finish().expect_status(0);
    }

    // A TAP of another user's, and no access to /dev/net/tun: refused with
    // what root must do.
    ns.ip(&["tuntap", "add", "dev", "tap1", "mode", "tap", "user", "0"]);
    run(u.command(access, &["run", s(&img), "--net", "tap=tap1", "--env", &ip])).expect_refusal(
        status::MONITOR_ERROR,
        &[&format!("ip tuntap add dev tap1 mode tap user {UID}")],
    );
    let no_tun = Access {
        tun: false,
        ..access
    };
    let net = format!("tap={TAP}");
    run(u.command(no_tun, &["run", s(&img), "--net", &net, "--env", &ip])).expect_refusal(
        status::MONITOR_ERROR,
        &[
            "/dev/net/tun",
            "permission denied",
            "chmod 0666 /dev/net/tun",
        ],
    );
}
