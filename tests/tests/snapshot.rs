//! Snapshots, restore, clones, templates, and every kind of bad snapshot.

use duet_monitor::contract::statefile::{
    ABI_OFFSET, FEATURES_OFFSET, TSC_OFFSET, VENDOR_OFFSET, VERSION_OFFSET,
};
use duet_monitor::contract::{MEMORY_FILE, STATE_FILE};
use duet_tests::statefile::{edit_header, set_u32, set_u64, u64_at};
use duet_tests::{boot, duet, image, status, temp_dir, wait_path, Background, Output};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

const N: u64 = 150;

fn counts(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix("count ")?.parse().ok())
        .collect()
}

fn ctl(sock: &Path, args: &[&str]) -> Output {
    let mut v = vec!["ctl", sock.to_str().unwrap()];
    v.extend_from_slice(args);
    duet(&v)
}

/// Starts `counter N 3000` with a control socket; waits until it counts.
fn start_counter(dir: &Path) -> (Background, PathBuf) {
    start_counter_with(dir, N, 3000)
}

/// Starts `counter n us` with a control socket; waits until it counts.
fn start_counter_with(dir: &Path, n: u64, us: u64) -> (Background, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let sock = dir.join("api.sock");
    let img = image("counter");
    let (n, us) = (n.to_string(), us.to_string());
    let r = Background::start(&[
        "run",
        img.to_str().unwrap(),
        "--api",
        sock.to_str().unwrap(),
        "--",
        &n,
        &us,
    ]);
    wait_path(&sock);
    r.wait_for("count 10\n");
    (r, sock)
}

fn restore(dir: &Path) -> Output {
    duet(&["restore", dir.to_str().unwrap()])
}

#[test]
fn pause_snapshot_resume_and_restore_continue_exactly() {
    let tmp = temp_dir("counter");
    let (run, sock) = start_counter(&tmp);
    ctl(&sock, &["pause"])
        .expect_status(0)
        .expect_stdout("\"paused\"");
    // Paused: every console write has completed, and no more come. The
    // test's reader thread may still be taking the last line off the pipe.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let before = run.stdout();
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(run.stdout(), before, "the guest printed while paused");
    let last = *counts(&before).last().unwrap();
    let st = ctl(&sock, &["status"]);
    st.expect_status(0)
        .expect_stdout("\"state\": \"paused\"")
        .expect_stdout("\"memory_bytes\": 67108864");
    let snap = tmp.join("snap");
    ctl(&sock, &["snapshot", snap.to_str().unwrap()]).expect_status(0);
    ctl(&sock, &["resume"])
        .expect_status(0)
        .expect_stdout("\"running\"");
    let orig = run.finish();
    orig.expect_status(0).expect_stdout("counter done");
    assert_eq!(counts(&orig.stdout), (0..N).collect::<Vec<_>>());

    // Restored in another process (twice): the next value, nothing lost or repeated.
    for _ in 0..2 {
        let r = restore(&snap);
        r.expect_status(0).expect_stdout("counter done");
        assert_eq!(
            counts(&r.stdout),
            (last + 1..N).collect::<Vec<_>>(),
            "{r:#?}"
        );
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn snapshot_of_a_running_guest_and_of_a_restored_one() {
    let tmp = temp_dir("running");
    let (run, sock) = start_counter(&tmp);
    let snap = tmp.join("snap");
    ctl(&sock, &["snapshot", snap.to_str().unwrap()])
        .expect_status(0)
        .expect_stdout("\"running\"");
    run.finish().expect_status(0);

    // Restore with a control socket and snapshot the restored guest.
    let sock2 = tmp.join("api2.sock");
    let r = Background::start(&[
        "restore",
        snap.to_str().unwrap(),
        "--api",
        sock2.to_str().unwrap(),
    ]);
    wait_path(&sock2);
    ctl(&sock2, &["status"]).expect_stdout("\"generation\": 1");
    let snap2 = tmp.join("snap2");
    ctl(&sock2, &["snapshot", snap2.to_str().unwrap()]).expect_status(0);
    let first = r.finish();
    first.expect_status(0);
    let c1 = counts(&first.stdout);
    assert!(!c1.is_empty() && c1.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(*c1.last().unwrap(), N - 1);

    let second = restore(&snap2);
    second.expect_status(0).expect_stdout("counter done");
    let c2 = counts(&second.stdout);
    assert!(c2.windows(2).all(|w| w[1] == w[0] + 1));
    assert!(c2.first() >= c1.first(), "restored-of-restored went back");
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn snapshot_to_an_existing_path_fails_and_the_guest_keeps_running() {
    let tmp = temp_dir("exists");
    let (run, sock) = start_counter(&tmp);
    let taken = tmp.join("taken");
    std::fs::create_dir(&taken).unwrap();
    let o = ctl(&sock, &["snapshot", taken.to_str().unwrap()]);
    assert_ne!(o.status, Some(0));
    o.expect_stderr("already exists");
    assert_eq!(std::fs::read_dir(&taken).unwrap().count(), 0);
    let orig = run.finish();
    orig.expect_status(0);
    assert_eq!(counts(&orig.stdout), (0..N).collect::<Vec<_>>());
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn snapshot_to_a_full_disk_fails_cleanly_and_the_guest_keeps_running() {
    duet_tests::require_root("mounting a 32 KiB tmpfs to fill");
    let tmp = temp_dir("full");
    let small = tmp.join("small");
    std::fs::create_dir(&small).unwrap();
    let mount = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=32k",
            "duet-test",
            small.to_str().unwrap(),
        ])
        .output()
        .expect("run mount (util-linux)");
    assert!(
        mount.status.success(),
        "cannot mount a 32 KiB tmpfs at {}: {}",
        small.display(),
        String::from_utf8_lossy(&mount.stderr).trim()
    );
    // Unmounted however the test ends.
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let unmount = Unmount(small.clone());
    let (run, sock) = start_counter(&tmp);
    let o = ctl(&sock, &["snapshot", small.join("snap").to_str().unwrap()]);
    let leftovers = std::fs::read_dir(&small).unwrap().count();
    drop(unmount);
    assert_ne!(o.status, Some(0));
    o.expect_stderr("No space left");
    assert_eq!(leftovers, 0, "a half-written snapshot was left behind");
    let orig = run.finish();
    orig.expect_status(0);
    assert_eq!(counts(&orig.stdout), (0..N).collect::<Vec<_>>());
    std::fs::remove_dir_all(&tmp).unwrap();
}

fn create_template(store: &Path, name: &str, app: &str, args: &[&str]) {
    let img = image(app);
    let mut v = vec![
        "template",
        "create",
        name,
        img.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--",
    ];
    v.extend_from_slice(args);
    duet(&v)
        .expect_status(0)
        .expect_stderr(&format!("template `{name}` created"));
}

fn run_template(store: &Path, name: &str, extra: &[&str]) -> Output {
    let mut v = vec![
        "run",
        "--template",
        name,
        "--store",
        store.to_str().unwrap(),
    ];
    v.extend_from_slice(extra);
    duet(&v)
}

#[test]
fn twenty_clones_get_distinct_identities_and_keep_running() {
    let store = temp_dir("clones");
    create_template(&store, "idt", "identity", &["3"]);
    let o = run_template(&store, "idt", &["--clones", "20"]);
    o.expect_status(0);
    let mut clones = HashSet::new();
    let mut seeds = HashSet::new();
    for l in o.stdout.lines().filter(|l| l.starts_with("restored:")) {
        assert!(l.contains("generation=1 "), "{l}");
        let field = |k: &str| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap()
                .to_string()
        };
        clones.insert(field("clone=").parse::<u32>().unwrap());
        seeds.insert(field("seed="));
    }
    assert_eq!(clones, (0..20).collect::<HashSet<_>>(), "{o:#?}");
    assert_eq!(seeds.len(), 20, "seeds repeat: {o:#?}");
    for i in 0..20 {
        for r in 0..3 {
            o.expect_stdout(&format!("clone={i} round {r} alive"));
        }
    }
    assert_eq!(o.stdout.matches("identity done").count(), 20);
    std::fs::remove_dir_all(&store).unwrap();
}

#[test]
fn template_start_prints_what_a_cold_start_prints() {
    let store = temp_dir("template");
    create_template(&store, "cnt", "counter", &["40", "200"]);
    let t0 = Instant::now();
    let cold = boot("counter", &[], &["40", "200"]);
    let cold_t = t0.elapsed();
    let t1 = Instant::now();
    let warm = run_template(&store, "cnt", &[]);
    let warm_t = t1.elapsed();
    cold.expect_status(0);
    warm.expect_status(0);
    assert_eq!(warm.stdout, cold.stdout);
    eprintln!("cold start {cold_t:?}, template start {warm_t:?} (whole runs, not asserted)");

    let list = duet(&["template", "list", "--store", store.to_str().unwrap()]);
    list.expect_status(0).expect_stdout("cnt\t");
    duet(&["template", "rm", "cnt", "--store", store.to_str().unwrap()]).expect_status(0);
    let gone = run_template(&store, "cnt", &[]);
    gone.expect_status(status::MONITOR_ERROR as i32)
        .expect_stderr("no template `cnt`");
    // An image that never reaches its snapshot point makes no template.
    let hello = image("hello");
    let o = duet(&[
        "template",
        "create",
        "h",
        hello.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ]);
    o.expect_status(status::MONITOR_ERROR as i32)
        .expect_stderr("without reaching duet::snapshot_point()");
    assert!(!store.join("h").exists());
    std::fs::remove_dir_all(&store).unwrap();
}

/// A paused counter's snapshot to mutilate.
fn good_snapshot(tmp: &Path) -> PathBuf {
    let (run, sock) = start_counter(tmp);
    let snap = tmp.join("good");
    ctl(&sock, &["snapshot", snap.to_str().unwrap()]).expect_status(0);
    run.finish().expect_status(0);
    snap
}

fn copy_snapshot(from: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir(to).unwrap();
    for f in [STATE_FILE, MEMORY_FILE] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
    to.to_path_buf()
}

#[track_caller]
fn refused(dir: &Path, want: &str) {
    let o = restore(dir);
    o.expect_status(status::MONITOR_ERROR as i32)
        .expect_stderr(want);
    assert!(o.stdout.is_empty(), "the guest ran: {o:#?}");
}

fn edit_state(dir: &Path, f: impl FnOnce(&mut [u8])) {
    edit_header(&dir.join(STATE_FILE), f);
}

#[test]
fn bad_snapshots_are_refused_with_a_clear_error() {
    let tmp = temp_dir("bad");
    let good = good_snapshot(&tmp);
    let case = |name: &str| copy_snapshot(&good, &tmp.join(name));
    let state_len = std::fs::metadata(good.join(STATE_FILE)).unwrap().len();
    let mem_len = std::fs::metadata(good.join(MEMORY_FILE)).unwrap().len();

    let d = case("short-state");
    let f = std::fs::File::options()
        .write(true)
        .open(d.join(STATE_FILE))
        .unwrap();
    f.set_len(state_len / 2).unwrap();
    refused(&d, "truncated");

    let d = case("short-memory");
    let f = std::fs::File::options()
        .write(true)
        .open(d.join(MEMORY_FILE))
        .unwrap();
    f.set_len(mem_len - 4096).unwrap();
    refused(&d, "truncated");

    let d = case("flip-state");
    let mut b = std::fs::read(d.join(STATE_FILE)).unwrap();
    b[state_len as usize / 2] ^= 0x10;
    std::fs::write(d.join(STATE_FILE), b).unwrap();
    refused(&d, "checksum mismatch");

    let d = case("flip-memory");
    let mut b = std::fs::read(d.join(MEMORY_FILE)).unwrap();
    b[4096 + 100] ^= 0x01;
    std::fs::write(d.join(MEMORY_FILE), b).unwrap();
    refused(&d, "checksum mismatch");

    let d = case("format");
    edit_state(&d, |h| set_u32(h, VERSION_OFFSET, 99));
    refused(&d, "format version 99");

    let d = case("abi");
    edit_state(&d, |h| set_u32(h, ABI_OFFSET, 99));
    refused(&d, "ABI version 99");

    let d = case("vendor");
    edit_state(&d, |h| {
        h[VENDOR_OFFSET..VENDOR_OFFSET + 12].copy_from_slice(b"NotARealCPU!")
    });
    refused(&d, "NotARealCPU!");

    let d = case("features");
    edit_state(&d, |h| set_u32(h, FEATURES_OFFSET + 20, u32::MAX));
    refused(&d, "CPU features this host lacks");

    let d = case("tsc");
    // KVM can scale a guest TSC up, never down.
    edit_state(&d, |h| set_u64(h, TSC_OFFSET, u64_at(h, TSC_OFFSET) / 2));
    refused(&d, "TSC");

    // Two snapshots' files mixed up.
    let other = tmp.join("other");
    let (run, sock) = start_counter(&tmp.join("o"));
    ctl(&sock, &["snapshot", other.to_str().unwrap()]).expect_status(0);
    run.finish();
    let d = case("mixed");
    std::fs::copy(other.join(MEMORY_FILE), d.join(MEMORY_FILE)).unwrap();
    refused(&d, "belongs to another snapshot");

    let empty = tmp.join("empty");
    std::fs::create_dir(&empty).unwrap();
    refused(&empty, "is not a Duet snapshot");
    refused(&tmp.join("nonexistent"), "is not a Duet snapshot");
    refused(&good.join(STATE_FILE), "not a directory");
    let d = case("garbage");
    std::fs::write(d.join(STATE_FILE), b"hello, world").unwrap();
    refused(&d, "not a Duet state file");

    // The original is still good.
    restore(&good)
        .expect_status(0)
        .expect_stdout("counter done");
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn memory_written_before_the_snapshot_is_there_after_restore() {
    let store = temp_dir("memfill");
    create_template(&store, "mf", "memfill", &["8"]);
    let cold = boot("memfill", &[], &["8"]);
    cold.expect_status(0).expect_stdout("memfill ok 8 MiB sum ");
    let warm = run_template(&store, "mf", &[]);
    warm.expect_status(0);
    // The template printed "filled" before its snapshot point; the restored
    // guest prints only what comes after it, and finds every word intact.
    assert_eq!(
        cold.stdout.lines().last(),
        warm.stdout.lines().last(),
        "{warm:#?}"
    );
    assert!(!warm.stdout.contains("filled"));
    std::fs::remove_dir_all(&store).unwrap();
}

#[test]
fn many_requests_while_running_never_stall_the_guest() {
    let tmp = temp_dir("stress");
    // Exits as often as possible, so requests race with them.
    let n = 20_000;
    let (run, sock) = start_counter_with(&tmp, n, 0);
    // One connection, many requests: each kick may land after its request
    // was already served at an exit; none may leave the guest stuck.
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for i in 0..300 {
        let req = match i % 3 {
            0 => r#"{"cmd":"status"}"#,
            1 => r#"{"cmd":"pause"}"#,
            _ => r#"{"cmd":"resume"}"#,
        };
        writeln!(s, "{req}").unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("\"ok\":true"), "{line}");
    }
    writeln!(s, "not json").unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("bad request"), "{line}");
    drop((s, r));
    let orig = run.finish();
    orig.expect_status(0);
    assert_eq!(counts(&orig.stdout), (0..n).collect::<Vec<_>>());
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn a_bad_api_socket_path_stops_before_the_guest_runs() {
    let o = boot("hello", &["--api", "/nonexistent-dir/duet.sock"], &[]);
    o.expect_status(status::MONITOR_ERROR as i32)
        .expect_stderr("cannot create control socket /nonexistent-dir/duet.sock");
    assert!(o.stdout.is_empty(), "{o:#?}");
    let o = duet(&["ctl", "/nonexistent-dir/duet.sock", "status"]);
    o.expect_status(status::MONITOR_ERROR as i32)
        .expect_stderr("no control socket at /nonexistent-dir/duet.sock");
}

#[test]
fn disk_data_written_before_the_snapshot_is_there_after_restore() {
    let store = temp_dir("disk");
    let disk = store.join("disk.img");
    std::fs::write(&disk, vec![0u8; 64 * 1024]).unwrap();
    let img = image("diskstate");
    duet(&[
        "template",
        "create",
        "ds",
        img.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--disk",
        disk.to_str().unwrap(),
        "--",
        "marker-before-snapshot",
    ])
    .expect_status(0)
    .expect_stdout("written")
    .expect_stderr("template `ds` created");
    let warm = run_template(&store, "ds", &[]);
    warm.expect_status(0)
        .expect_stdout("disk says marker-before-snapshot");
    assert!(!warm.stdout.contains("written"), "{warm:#?}");

    // The disk file is gone: restore refuses, naming it, and nothing runs.
    std::fs::remove_file(&disk).unwrap();
    let o = run_template(&store, "ds", &[]);
    o.expect_status(status::MONITOR_ERROR as i32)
        .expect_stderr("disk.img, which does not exist");
    assert!(!o.stdout.contains("disk says"), "{o:#?}");
    std::fs::remove_dir_all(&store).unwrap();
}

#[test]
fn a_guest_writing_its_disk_keeps_writing_after_a_snapshot_and_restores_with_nothing_lost() {
    for transport in ["virtio", "hypercall"] {
        let tmp = temp_dir(&format!("diskload-{transport}"));
        let disk = tmp.join("d.img");
        std::fs::write(&disk, vec![0u8; 128 * 512]).unwrap();
        let sock = tmp.join("api.sock");
        let img = image("diskmig");
        let r = Background::start(&[
            "run",
            img.to_str().unwrap(),
            "--api",
            sock.to_str().unwrap(),
            "--disk",
            &format!("{},transport={transport}", disk.display()),
            "--",
            "64",
        ]);
        wait_path(&sock);
        r.wait_for("writing");
        // A snapshot of the running guest: it writes on afterwards (its
        // device thread was quiesced for the capture and resumed).
        let a = tmp.join("a");
        ctl(&sock, &["snapshot", a.to_str().unwrap()]).expect_status(0);
        let before = std::fs::read(&disk).unwrap();
        let mut moved = false;
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            if std::fs::read(&disk).unwrap() != before {
                moved = true;
                break;
            }
        }
        assert!(
            moved,
            "{transport}: the guest stopped writing after a snapshot"
        );
        // Paused mid-write, snapshotted, killed: the restored guest finds
        // every write it made (requests in flight complete or replay).
        ctl(&sock, &["pause"]).expect_status(0);
        let b = tmp.join("b");
        ctl(&sock, &["snapshot", b.to_str().unwrap()]).expect_status(0);
        r.signal(libc::SIGKILL);
        let _ = r.finish();
        restore(&b)
            .expect_status(0)
            .expect_stdout("disk intact after");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}

#[test]
fn a_snapshot_taken_before_the_restructuring_is_refused_by_its_version() {
    let dir = duet_tests::root().join("tests/fixtures/snapshot-v1");
    let o = duet(&["restore", dir.to_str().unwrap()]);
    o.expect_status(status::MONITOR_ERROR as i32)
        .expect_stderr("state format version 1, this duet reads version 2")
        .expect_stderr("take the snapshot again with this one");
    assert!(o.stdout.is_empty(), "the old guest ran: {o:#?}");
}

#[test]
fn a_restore_rebuilds_the_monitors_structures_whatever_the_snapshot_says() {
    // The test hook makes the saved vCPU claim ring 0, its own CR3, IDT and
    // GDT and IOPL 3, and fills the monitor's pages with junk: the restored
    // guest still runs in ring 3 on the monitor's tables.
    let store = temp_dir("tamper");
    create_template(&store, "h", "hostile", &["snapshot-then-cli"]);
    let mut c =
        duet_tests::duet_cmd(&["run", "--template", "h", "--store", store.to_str().unwrap()]);
    c.env("DUET_TEST_TAMPER", "1");
    let o = duet_tests::run_cmd(c, std::time::Duration::from_secs(60));
    o.expect_status(status::GUEST_FAULT as i32)
        .expect_stdout("hostile: restored=true, trying cli")
        .expect_stderr("#GP general protection")
        .expect_stderr("cs 0x33 ss 0x2b");
    assert!(!o.stdout.contains("survived"), "{o:#?}");
    std::fs::remove_dir_all(&store).unwrap();
}
