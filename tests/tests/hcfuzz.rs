//! The guest-side hypercall fuzzer (`unikernel/examples/hcfuzz.rs`): a
//! guest making 100000 random, mostly hostile hypercalls per seed, with
//! disks and NICs on both transports (hypercall and virtio), must end the
//! way its seed says, with the monitor's clean report and its documented
//! status, never a monitor crash. Needs root and /dev/net/tun (TAPs in a
//! network namespace).

use duet_tests::netns::{Netns, TAP};
use duet_tests::{image, paths, require_root, status, wait_output};
use std::process::Stdio;
use std::time::Duration;

const CALLS: u64 = 100_000;

fn run(seed: u64) {
    require_root("the guest's NICs are TAPs in a network namespace");
    let ns = Netns::create();
    ns.ip(&["tuntap", "add", "dev", "tap1", "mode", "tap"]);
    ns.ip(&["link", "set", "tap1", "up"]);
    // On tmpfs: the guest's flushes cost nothing there.
    let dir = tempfile::Builder::new()
        .prefix("duet-hcfuzz")
        .tempdir_in("/dev/shm")
        .expect("a directory in /dev/shm");
    let disks: Vec<String> = (0..2)
        .map(|i| {
            let p = dir.path().join(format!("disk{i}.img"));
            std::fs::File::create(&p)
                .and_then(|f| f.set_len(4 << 20))
                .expect("creating a disk");
            p.display().to_string()
        })
        .collect();
    let child = ns
        .command(paths().bin.to_str().unwrap())
        .arg("run")
        .arg(image("hcfuzz"))
        .args(["--disk", &format!("{},transport=hypercall", disks[0])])
        .args(["--disk", &disks[1]])
        .args(["--net", &format!("tap={TAP},transport=hypercall")])
        .args(["--net", "tap=tap1"])
        .arg("--")
        .arg(format!("seed={seed}"))
        .arg(format!("calls={CALLS}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("DUET_KVM_DEVICE")
        .spawn()
        .expect("spawn ip netns exec duet");
    let o = wait_output(child, Duration::from_secs(300));
    // Every call came back with a result the ABI knows, on all four devices.
    o.expect_stdout(&format!(
        "hcfuzz: seed {seed}: {CALLS} calls, 0 unknown results, devices (2, 2, 2)"
    ));
    assert!(
        !o.stdout.contains(" 0 succeeded") && !o.stdout.contains(" 0 refused"),
        "some calls must succeed and some be refused: {}",
        o.stdout.lines().last().unwrap_or_default()
    );
    assert!(
        !o.stderr.contains("panicked"),
        "the monitor panicked:\n{}",
        o.stderr
    );
    // The way out the seed chose, reported as documented.
    let (want, says) = match seed % 5 {
        0 => (0, ""),
        1 => (
            status::GUEST_ABORT,
            "guest aborted: (abort message unreadable",
        ),
        2 => (status::VM_FAILURE, "unknown hypercall 4"),
        3 => (status::VM_FAILURE, "which is not a virtio device"),
        _ => (
            status::VM_FAILURE,
            "unusable argument struct to hypercall ConsoleWrite",
        ),
    };
    o.expect_status(i32::from(want)).expect_stderr(says);
}

#[test]
fn seed_1_ends_in_a_hostile_abort() {
    run(1);
}

#[test]
fn seed_2_ends_in_an_unknown_hypercall() {
    run(2);
}

#[test]
fn seed_3_ends_ringing_no_device() {
    run(3);
}

#[test]
fn seed_4_ends_with_an_unusable_argument_struct() {
    run(4);
}

#[test]
fn seed_5_exits() {
    run(5);
}
