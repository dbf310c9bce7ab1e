//! Live migration between two monitors: over loopback and across two
//! network namespaces; cuts at every phase; refusals; a tampered stream;
//! a dirtying guest.

// In a folder of its own so cargo does not take it for a test target.
#[path = "migration/proxy.rs"]
mod proxy;

use duet_monitor::contract::migration::{FAIL_PHASES, MAX_ROUNDS};
use duet_tests::{duet, duet_cmd, image, run_cmd, status, temp_dir, wait_path, Background, Output};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn counts(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix("count ")?.parse().ok())
        .collect()
}

/// Asserts that the source's counts followed by the destination's are
/// exactly `0..n`: nothing lost or repeated across the move.
#[track_caller]
fn assert_continues(source: &str, dest: &str, n: u64) {
    let mut all = counts(source);
    all.extend(counts(dest));
    assert_eq!(
        all,
        (0..n).collect::<Vec<_>>(),
        "source:\n{source}\ndestination:\n{dest}"
    );
}

fn key(dir: &Path, name: &str, fill: u8) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, [fill; 32]).unwrap();
    p
}

/// A loopback address with a port nobody listens on right now.
fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Starts `app` with a control socket, optionally through a command prefix
/// (`ip netns exec NS`).
fn start_source(dir: &Path, prefix: &[&str], app: &str, args: &[&str]) -> (Background, PathBuf) {
    start_source_with(dir, prefix, &[], app, args)
}

/// As [`start_source`], with monitor options (`--disk ...`) before `--`.
fn start_source_with(
    dir: &Path,
    prefix: &[&str],
    opts: &[&str],
    app: &str,
    args: &[&str],
) -> (Background, PathBuf) {
    let sock = dir.join("src.sock");
    let img = image(app);
    let bin = duet_tests::paths().bin.clone();
    let mut v: Vec<&str> = prefix.to_vec();
    if !prefix.is_empty() {
        v.push(s(&bin));
    }
    v.extend(["run", s(&img), "--api", s(&sock)]);
    v.extend_from_slice(opts);
    v.push("--");
    v.extend_from_slice(args);
    let r = if prefix.is_empty() {
        Background::start(&v)
    } else {
        Background::start_program(&v)
    };
    wait_path(&sock);
    (r, sock)
}

fn start_dest(prefix: &[&str], addr: &str, key: &Path, api: Option<&Path>) -> Background {
    start_dest_with(prefix, addr, key, api, &[])
}

/// As [`start_dest`], with monitor options (`--disk ...`).
fn start_dest_with(
    prefix: &[&str],
    addr: &str,
    key: &Path,
    api: Option<&Path>,
    opts: &[&str],
) -> Background {
    let bin = duet_tests::paths().bin.clone();
    let mut v: Vec<&str> = prefix.to_vec();
    if !prefix.is_empty() {
        v.push(s(&bin));
    }
    v.extend(["run", "--incoming", addr, "--migration-key-file", s(key)]);
    if let Some(a) = api {
        v.extend(["--api", s(a)]);
    }
    v.extend_from_slice(opts);
    if prefix.is_empty() {
        Background::start(&v)
    } else {
        Background::start_program(&v)
    }
}

/// `duet ctl SOCK migrate ADDR` with extra options and test-hook variables.
fn migrate(sock: &Path, addr: &str, key: &Path, opts: &[&str], env: &[(&str, &str)]) -> Output {
    let mut v = vec![
        "ctl",
        s(sock),
        "migrate",
        addr,
        "--migration-key-file",
        s(key),
    ];
    v.extend_from_slice(opts);
    let mut c = duet_cmd(&v);
    for (k, val) in env {
        c.env(k, val);
    }
    run_cmd(c, Duration::from_secs(60))
}

/// The monitor's exit status once a guest left.
const MIGRATED: i32 = status::MIGRATED as i32;

#[test]
fn counter_migrates_over_loopback_with_nothing_lost_or_repeated() {
    let tmp = temp_dir("mig-loop");
    let k = key(&tmp, "key", 7);
    let (src, sock) = start_source(&tmp, &[], "counter", &["400", "3000"]);
    src.wait_for("count 10\n");
    let addr = free_addr();
    let dapi = tmp.join("dst.sock");
    let dst = start_dest(&[], &addr, &k, Some(&dapi));
    let m = migrate(&sock, &addr, &k, &[], &[]);
    m.expect_status(0)
        .expect_stdout("round 0:")
        .expect_stdout("migrated to");
    // The destination runs it now, one generation on.
    wait_path(&dapi);
    let st = duet(&["ctl", s(&dapi), "status"]);
    st.expect_status(0).expect_stdout("\"generation\": 1");
    let a = src.finish();
    a.expect_status(MIGRATED).expect_stderr("guest migrated to");
    let b = dst.finish();
    b.expect_status(0).expect_stdout("counter done");
    let mut all = counts(&a.stdout);
    let after = counts(&b.stdout);
    assert!(!after.is_empty(), "nothing ran on the destination: {b:#?}");
    all.extend(after);
    assert_eq!(all, (0..400).collect::<Vec<_>>(), "{a:#?}\n{b:#?}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn a_cut_at_any_phase_leaves_the_source_running_and_a_retry_succeeds() {
    let tmp = temp_dir("mig-cut");
    let k = key(&tmp, "key", 9);
    let (src, sock) = start_source(&tmp, &[], "counter", &["1500", "2000"]);
    src.wait_for("count 5\n");
    for phase in FAIL_PHASES {
        let addr = free_addr();
        let dst = start_dest(&[], &addr, &k, None);
        let m = migrate(&sock, &addr, &k, &[], &[("DUET_MIGRATE_FAIL", phase)]);
        m.expect_status(i32::from(status::MONITOR_ERROR))
            .expect_stderr(&format!("cut at phase `{phase}`"))
            .expect_stderr("keeps running");
        let d = dst.finish();
        d.expect_status(i32::from(status::MONITOR_ERROR))
            .expect_stderr("nothing runs here");
        assert!(counts(&d.stdout).is_empty(), "the destination ran: {d:#?}");
        // The source goes on counting.
        let last = *counts(&src.stdout()).last().unwrap();
        src.wait_for(&format!("count {}\n", last + 3));
        let st = duet(&["ctl", s(&sock), "status"]);
        st.expect_status(0).expect_stdout("\"running\"");
    }
    let addr = free_addr();
    let dst = start_dest(&[], &addr, &k, None);
    migrate(&sock, &addr, &k, &[], &[]).expect_status(0);
    let a = src.finish();
    a.expect_status(MIGRATED);
    let b = dst.finish();
    b.expect_status(0).expect_stdout("counter done");
    assert_continues(&a.stdout, &b.stdout, 1500);
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn a_tampered_stream_is_refused_and_the_source_keeps_running() {
    use proxy::{Proxy, Tamper};
    let tmp = temp_dir("mig-tamper");
    let k = key(&tmp, "key", 8);
    let (src, sock) = start_source(&tmp, &[], "counter", &["3000", "2000"]);
    src.wait_for("count 5\n");
    let out_of_order = "dropped, replayed or reordered";
    for (how, why) in [
        (Tamper::Flip, "failed authentication"),
        (Tamper::Drop, out_of_order),
        (Tamper::Replay, out_of_order),
        (Tamper::Reorder, out_of_order),
    ] {
        let addr = free_addr();
        let dst = start_dest(&[], &addr, &k, None);
        let p = Proxy::start(&addr, how);
        let m = migrate(&sock, &p.addr, &k, &[], &[]);
        m.expect_status(i32::from(status::MONITOR_ERROR))
            .expect_stderr("keeps running");
        let d = dst.finish();
        d.expect_status(i32::from(status::MONITOR_ERROR))
            .expect_stderr("tampered with")
            .expect_stderr(why)
            .expect_stderr("nothing runs here");
        assert!(counts(&d.stdout).is_empty(), "the destination ran: {d:#?}");
        assert!(p.finish(), "the proxy never got to {how:?} a page frame");
        // The source goes on counting and answers.
        let last = *counts(&src.stdout()).last().unwrap();
        src.wait_for(&format!("count {}\n", last + 3));
        duet(&["ctl", s(&sock), "status"])
            .expect_status(0)
            .expect_stdout("\"running\"");
    }
    // The same proxy relaying faithfully: the move goes through, so the
    // refusals above were the tampering's doing.
    let addr = free_addr();
    let dst = start_dest(&[], &addr, &k, None);
    let p = Proxy::start(&addr, Tamper::Nothing);
    migrate(&sock, &p.addr, &k, &[], &[]).expect_status(0);
    assert!(p.finish());
    let a = src.finish();
    a.expect_status(MIGRATED);
    let b = dst.finish();
    b.expect_status(0).expect_stdout("counter done");
    assert_continues(&a.stdout, &b.stdout, 3000);
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// Sends `bytes` to a destination and expects it to refuse them.
fn garbage(k: &Path, bytes: &[u8], why: &str) {
    let addr = free_addr();
    let dst = start_dest(&[], &addr, k, None);
    // A destination that never listens fails the test rather than hanging it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut c = loop {
        match TcpStream::connect(&addr) {
            Ok(c) => break c,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("the destination never listened on {addr}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let _ = c.write_all(bytes);
    drop(c);
    let d = dst.finish();
    d.expect_status(i32::from(status::MONITOR_ERROR))
        .expect_stderr(why);
    assert!(d.stdout.is_empty(), "{d:#?}");
}

#[test]
fn wrong_key_garbage_and_incompatible_guests_are_refused() {
    let tmp = temp_dir("mig-refuse");
    let k = key(&tmp, "key", 1);
    let other = key(&tmp, "other", 2);
    let (src, sock) = start_source(&tmp, &[], "counter", &["1200", "2000"]);
    src.wait_for("count 5\n");
    let refused = |key: &Path, env: &[(&str, &str)], why: &str| {
        let addr = free_addr();
        let dst = start_dest(&[], &addr, &k, None);
        let m = migrate(&sock, &addr, key, &[], env);
        m.expect_status(i32::from(status::MONITOR_ERROR))
            .expect_stderr(why)
            .expect_stderr("keeps running");
        let d = dst.finish();
        d.expect_status(i32::from(status::MONITOR_ERROR))
            .expect_stderr(why);
        assert!(d.stdout.is_empty(), "the destination ran: {d:#?}");
    };
    refused(&other, &[], "does not hold the migration key");
    refused(&k, &[("DUET_MIGRATE_FAKE", "abi=99")], "ABI version 99");
    refused(&k, &[("DUET_MIGRATE_FAKE", "tsc_khz=1000")], "TSC");

    garbage(&k, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "protocol error");
    // A well-formed header announcing a 4 GiB frame.
    let mut big = vec![1u8, 0, 0, 0];
    big.extend_from_slice(&u32::MAX.to_le_bytes());
    big.extend_from_slice(&[0; 8]);
    garbage(&k, &big, "exceeds the limit");
    // A frame whose checksum is wrong.
    let mut bad = vec![1u8, 0, 0, 0, 4, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0];
    bad.extend_from_slice(b"junk");
    garbage(&k, &bad, "checksum mismatch");
    // Connect and hang up.
    garbage(&k, b"", "the source hung up before commit");

    // The source never noticed.
    let a = src.finish();
    a.expect_status(0).expect_stdout("counter done");
    assert_eq!(counts(&a.stdout), (0..1200).collect::<Vec<_>>());
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn a_dirtying_guest_converges_or_falls_back_within_the_round_bound() {
    let tmp = temp_dir("mig-dirty");
    let k = key(&tmp, "key", 3);
    // (rate MiB/s, downtime budget ms): a gentle writer, and one that out-runs
    // a zero budget so only stop-and-copy can end pre-copy.
    for (i, (rate, budget)) in [("32", "5"), ("0", "0")].into_iter().enumerate() {
        let dir = tmp.join(i.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let (src, sock) = start_source(&dir, &[], "dirty", &["16", rate, "2500"]);
        src.wait_for("dirty tick 2\n");
        let addr = free_addr();
        let dst = start_dest(&[], &addr, &k, None);
        let m = migrate(&sock, &addr, &k, &["--max-downtime", budget], &[]);
        m.expect_status(0).expect_stdout("migrated to");
        let rounds = m.stdout.lines().filter(|l| l.starts_with("round ")).count() as u32;
        assert!(rounds <= MAX_ROUNDS + 1, "{rounds} rounds: {m:#?}");
        // A zero budget is only met by an empty dirty set (the guest did
        // not run during a round: the machine is shared); otherwise pre-copy
        // must have given up and stopped the guest.
        let last = m.stdout.lines().rfind(|l| l.starts_with("round ")).unwrap();
        if budget == "0" && !last.contains(" 0 dirty pages") {
            m.expect_stdout("stop-and-copy");
        }
        src.finish().expect_status(MIGRATED);
        dst.finish().expect_status(0).expect_stdout("dirty ok");
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// Two network namespaces joined by a veth pair, deleted when dropped.
struct Hosts {
    a: String,
    b: String,
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

impl Hosts {
    fn new() -> Hosts {
        let id = std::process::id();
        let h = Hosts {
            a: format!("duet-mig-a-{id}"),
            b: format!("duet-mig-b-{id}"),
        };
        ip(&["netns", "add", &h.a]);
        ip(&["netns", "add", &h.b]);
        let (va, vb) = (
            format!("dma{}", id % 100_000),
            format!("dmb{}", id % 100_000),
        );
        // Created inside A so the host namespace never holds either end.
        ip(&[
            "-n", &h.a, "link", "add", &va, "type", "veth", "peer", "name", &vb, "netns", &h.b,
        ]);
        ip(&["-n", &h.a, "addr", "add", "10.203.0.1/24", "dev", &va]);
        ip(&["-n", &h.b, "addr", "add", "10.203.0.2/24", "dev", &vb]);
        for (ns, dev) in [(&h.a, &va), (&h.b, &vb)] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        h
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn counter_migrates_between_two_network_namespaces() {
    let tmp = temp_dir("mig-netns");
    let k = key(&tmp, "key", 5);
    let hosts = Hosts::new();
    let (src, sock) = start_source(
        &tmp,
        &["ip", "netns", "exec", &hosts.a],
        "counter",
        &["400", "3000"],
    );
    src.wait_for("count 10\n");
    let addr = "10.203.0.2:47123";
    let dst = start_dest(&["ip", "netns", "exec", &hosts.b], addr, &k, None);
    migrate(&sock, addr, &k, &[], &[])
        .expect_status(0)
        .expect_stdout("migrated to 10.203.0.2:47123");
    let a = src.finish();
    a.expect_status(MIGRATED);
    let b = dst.finish();
    b.expect_status(0).expect_stdout("counter done");
    assert_continues(&a.stdout, &b.stdout, 400);
    drop(hosts);
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn a_destination_crash_is_survived_and_a_lost_ack_leaves_the_source_paused() {
    let tmp = temp_dir("mig-crash");
    let k = key(&tmp, "key", 4);
    let (src, sock) = start_source(&tmp, &[], "counter", &["600", "3000"]);
    src.wait_for("count 5\n");
    let hook = |what| ["env", what];

    // The destination dies in the middle of pre-copy.
    let addr = free_addr();
    let dst = start_dest(&hook("DUET_MIGRATE_DEST_FAIL=crash"), &addr, &k, None);
    migrate(&sock, &addr, &k, &[], &[])
        .expect_status(i32::from(status::MONITOR_ERROR))
        .expect_stderr("the destination hung up during pre-copy; the guest keeps running here");
    let d = dst.finish();
    assert_eq!(d.status, None, "the destination should have died: {d:#?}");
    let last = *counts(&src.stdout()).last().unwrap();
    src.wait_for(&format!("count {}\n", last + 3));

    // Commit reaches the destination but its ack is lost: the destination
    // runs the guest, the source keeps it paused and says so.
    let addr = free_addr();
    let dst = start_dest(&hook("DUET_MIGRATE_DEST_FAIL=ack"), &addr, &k, None);
    migrate(&sock, &addr, &k, &[], &[])
        .expect_status(i32::from(status::MONITOR_ERROR))
        .expect_stderr("not acknowledged")
        .expect_stderr("stays paused");
    duet(&["ctl", s(&sock), "status"]).expect_stdout("\"paused\"");
    let held = src.stdout();
    let b = dst.finish();
    b.expect_status(0).expect_stdout("counter done");
    // The source printed nothing more while the destination ran the guest
    // to the end: it never ran in two places, and no value was lost or
    // repeated across the move.
    assert_eq!(src.stdout(), held);
    assert_continues(&held, &b.stdout, 600);
    // `resume` on the source is the operator's call; here it is just stopped.
    drop(src);
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// `(tick, generation, monotonic µs, wall s)` lines of the migrant app.
fn ticks(out: &str) -> Vec<[u64; 4]> {
    out.lines()
        .filter_map(|l| {
            let v: Vec<u64> = l
                .strip_prefix("tick ")?
                .split(' ')
                .filter_map(|w| w.parse().ok())
                .collect();
            v.try_into().ok()
        })
        .collect()
}

#[test]
fn the_guest_sees_a_new_generation_and_its_clocks_carry_on() {
    let tmp = temp_dir("mig-clock");
    let k = key(&tmp, "key", 6);
    // Ticks enough for minutes: the destination is stopped once it has
    // shown some, so no timing decides whether any tick lands there.
    let (src, sock) = start_source(&tmp, &[], "migrant", &["100000", "3000"]);
    src.wait_for("tick 10 ");
    let addr = free_addr();
    let dst = start_dest(&[], &addr, &k, None);
    migrate(&sock, &addr, &k, &[], &[]).expect_status(0);
    let a = src.finish();
    a.expect_status(MIGRATED);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ticks(&dst.stdout()).iter().filter(|t| t[1] == 1).count() < 5 {
        assert!(std::time::Instant::now() < deadline, "{}", dst.stdout());
        std::thread::sleep(Duration::from_millis(10));
    }
    dst.signal(libc::SIGINT);
    let b = dst.finish();
    let (before, after) = (ticks(&a.stdout), ticks(&b.stdout));
    assert!(before.iter().all(|t| t[1] == 0), "{a:#?}");
    // The pause can fall between the guest's read of its generation and
    // the write of that line, so the destination's first line may still
    // say 0; every later one says 1.
    let stale = after.iter().take_while(|t| t[1] == 0).count();
    assert!(stale <= 1, "{b:#?}");
    let moved = &after[stale..];
    assert!(
        moved.len() >= 5 && moved.iter().all(|t| t[1] == 1),
        "{b:#?}"
    );
    let all: Vec<[u64; 4]> = before.into_iter().chain(after).collect();
    assert_eq!(
        all.iter().map(|t| t[0]).collect::<Vec<_>>(),
        (0..all.len() as u64).collect::<Vec<_>>()
    );
    // Monotonic time never goes back, across the move included.
    assert!(all.windows(2).all(|w| w[1][2] >= w[0][2]), "{all:?}");
    // Wall time on the destination is the host's.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let last = all.last().unwrap()[3];
    assert!(
        last.abs_diff(now) < 60,
        "guest wall time {last}, host {now}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// Whether some process holds an advisory lock on `path` (util-linux flock).
fn locked(path: &Path) -> bool {
    let st = Command::new("flock")
        .args(["-n", "-s", s(path), "true"])
        .status()
        .expect("flock(1) runs");
    !st.success()
}

#[test]
fn a_guest_with_a_disk_migrates_on_shared_storage_its_writes_intact() {
    let tmp = temp_dir("mig-disk");
    let k = key(&tmp, "key", 3);
    let disk = blank_disk(&tmp);
    let (src, sock) = start_source_with(&tmp, &[], &["--disk", s(&disk)], "diskmig", &["64"]);
    src.wait_for("writing\n");
    assert!(locked(&disk), "the source does not lock its disk");

    // Cut after the source flushed and dropped its lock, and after the
    // destination opened the disk: the source takes its disk back and
    // keeps writing; the destination never ran the guest.
    for phase in ["stop", "commit"] {
        let addr = free_addr();
        let dst = start_dest(&[], &addr, &k, None);
        let m = migrate(&sock, &addr, &k, &[], &[("DUET_MIGRATE_FAIL", phase)]);
        m.expect_status(i32::from(status::MONITOR_ERROR))
            .expect_stderr(&format!("cut at phase `{phase}`"))
            .expect_stderr("keeps running");
        let d = dst.finish();
        d.expect_status(i32::from(status::MONITOR_ERROR));
        assert!(!d.stdout.contains("disk"), "the destination ran: {d:#?}");
        assert!(
            locked(&disk),
            "the source did not take its disk back after a cut at {phase}"
        );
        duet(&["ctl", s(&sock), "status"])
            .expect_status(0)
            .expect_stdout("\"running\"");
    }

    // A destination `--disk` mapping the wrong number of disks is refused.
    let addr = free_addr();
    let other = tmp.join("other.img");
    std::fs::File::create(&other)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let dst = start_dest_with(
        &[],
        &addr,
        &k,
        None,
        &["--disk", s(&disk), "--disk", s(&other)],
    );
    migrate(&sock, &addr, &k, &[], &[])
        .expect_status(i32::from(status::MONITOR_ERROR))
        .expect_stderr("maps 2");
    dst.finish().expect_status(i32::from(status::MONITOR_ERROR));

    // The destination maps the disk through its own path (a hard link:
    // the same file on "shared storage" under another name).
    let link = tmp.join("link.img");
    std::fs::hard_link(&disk, &link).unwrap();
    let addr = free_addr();
    let dst = start_dest_with(&[], &addr, &k, None, &["--disk", s(&link)]);
    migrate(&sock, &addr, &k, &[], &[])
        .expect_status(0)
        .expect_stdout("migrated to");
    let a = src.finish();
    a.expect_status(MIGRATED);
    let b = dst.finish();
    b.expect_status(0).expect_stdout("disk intact after");
    assert!(!a.stdout.contains("disk intact"), "{a:#?}");
    // What the guest wrote is in the file.
    let bytes = std::fs::read(&disk).unwrap();
    assert!(bytes[..64 * 512].iter().any(|&x| x != 0));
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn a_guest_with_a_disk_migrates_to_the_path_the_source_sends() {
    let tmp = temp_dir("mig-disk-path");
    let k = key(&tmp, "key", 4);
    let disk = blank_disk(&tmp);
    let (src, sock) = start_source_with(&tmp, &[], &["--disk", s(&disk)], "diskmig", &["16"]);
    src.wait_for("writing\n");
    let addr = free_addr();
    let dst = start_dest(&[], &addr, &k, None);
    migrate(&sock, &addr, &k, &[], &[]).expect_status(0);
    src.finish().expect_status(MIGRATED);
    dst.finish()
        .expect_status(0)
        .expect_stdout("disk intact after");
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn copy_disks_moves_the_contents_and_leaves_the_source_file_untouched() {
    let tmp = temp_dir("mig-copy");
    let k = key(&tmp, "key", 5);
    let disk = blank_disk(&tmp);
    // The copy starts as garbage: zero runs must be written too.
    let copy = tmp.join("copy.img");
    std::fs::write(&copy, vec![0xaa; 1 << 20]).unwrap();
    let (src, sock) = start_source_with(&tmp, &[], &["--disk", s(&disk)], "diskmig", &["64"]);
    src.wait_for("writing\n");

    // Without a destination-side path the destination refuses.
    let addr = free_addr();
    let dst = start_dest(&[], &addr, &k, None);
    migrate(&sock, &addr, &k, &["--copy-disks"], &[])
        .expect_status(i32::from(status::MONITOR_ERROR))
        .expect_stderr("--copy-disks")
        .expect_stderr("keeps running");
    dst.finish().expect_status(i32::from(status::MONITOR_ERROR));

    // A cut mid-copy: the source goes on with its disk.
    let addr = free_addr();
    let dst = start_dest_with(&[], &addr, &k, None, &["--disk", s(&copy)]);
    migrate(
        &sock,
        &addr,
        &k,
        &["--copy-disks"],
        &[("DUET_MIGRATE_FAIL", "precopy")],
    )
    .expect_status(i32::from(status::MONITOR_ERROR))
    .expect_stderr("keeps running");
    dst.finish().expect_status(i32::from(status::MONITOR_ERROR));
    assert!(locked(&disk), "the source lost its disk lock");
    duet(&["ctl", s(&sock), "status"])
        .expect_status(0)
        .expect_stdout("\"running\"");

    let addr = free_addr();
    let dst = start_dest_with(&[], &addr, &k, None, &["--disk", s(&copy)]);
    migrate(&sock, &addr, &k, &["--copy-disks"], &[])
        .expect_status(0)
        .expect_stdout("migrated to");
    src.finish().expect_status(MIGRATED);
    let at_commit = std::fs::read(&disk).unwrap();
    let b = dst.finish();
    b.expect_status(0).expect_stdout("disk intact after");
    let after = std::fs::read(&disk).unwrap();
    let copied = std::fs::read(&copy).unwrap();
    assert!(at_commit == after, "the source's file changed after commit");
    let (m, e) = (64 * 512, 65 * 512);
    assert_eq!(&copied[m..m + 5], b"moved", "the marker is not in the copy");
    assert!(
        !after[m..e].starts_with(b"moved"),
        "the marker went to the source's file"
    );
    // Each written sector holds diskmig's pattern for the write that last
    // touched it (word i = write number ^ i). The copy holds every write
    // the source's file does, and may hold one more: a request the guest
    // had queued when it stopped is served on the destination (diskmig
    // has one in flight at a time, and the next write to a sector is 64
    // writes later).
    let mut newer = 0;
    for sector in 0..64 {
        let word = |b: &[u8], i: usize| {
            let o = sector * 512 + i * 8;
            u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
        };
        let (src_w, copy_w) = (word(&after, 0), word(&copied, 0));
        assert!(
            copy_w == src_w || copy_w == src_w + 64,
            "sector {sector}: the copy holds write {copy_w}, the source's file write {src_w}"
        );
        newer += usize::from(copy_w != src_w);
        for i in 0..64 {
            assert_eq!(
                word(&copied, i),
                copy_w ^ i as u64,
                "sector {sector} of the copy is torn"
            );
        }
    }
    assert!(
        newer <= 1,
        "{newer} sectors of the copy are newer than the source's file"
    );
    assert!(copied[e..] == after[e..], "the rest of the copy differs");
    assert!(after[..m].iter().any(|&x| x != 0));
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// One network namespace holding a bridge (10.0.0.1/24, the client's
/// address) that joins two persistent TAPs: tap0 for the source monitor,
/// tap1 for the destination. Deleted when dropped (even on failure).
struct Bridged {
    ns: String,
}

impl Bridged {
    fn new() -> Bridged {
        let b = Bridged {
            ns: format!("duet-mig-br-{}", std::process::id()),
        };
        ip(&["netns", "add", &b.ns]);
        let n = b.ns.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"]);
        ip(&["-n", n, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", n, "addr", "add", "10.0.0.1/24", "dev", "br0"]);
        for tap in ["tap0", "tap1"] {
            ip(&["-n", n, "tuntap", "add", "dev", tap, "mode", "tap"]);
            ip(&["-n", n, "link", "set", tap, "master", "br0"]);
            ip(&["-n", n, "link", "set", tap, "up"]);
        }
        ip(&["-n", n, "link", "set", "br0", "up"]);
        b
    }

    fn exec(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.ns]
    }

    /// `curl` of the guest's page from the namespace; `None` on failure.
    fn get(&self) -> Option<String> {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.ns, "curl", "-s", "-m", "2"])
            .arg("http://10.0.0.2/")
            .output()
            .expect("run curl");
        let body = String::from_utf8_lossy(&o.stdout).into_owned();
        (o.status.success() && body.contains("Hello from a Duet unikernel")).then_some(body)
    }

    /// Whether the bridge has learnt `mac` on `port`.
    fn learnt(&self, mac: &str, port: &str) -> bool {
        let o = Command::new("bridge")
            .args(["-n", &self.ns, "fdb", "show", "br", "br0"])
            .output()
            .expect("run bridge (iproute2)");
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.starts_with(mac) && l.contains(&format!("dev {port} ")))
    }
}

impl Drop for Bridged {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[test]
fn httpd_keeps_answering_across_a_migration_and_announces_its_new_port() {
    const MAC: &str = "02:00:00:00:00:02";
    let tmp = temp_dir("mig-nic");
    let k = key(&tmp, "key", 6);
    let br = Bridged::new();
    let (src, sock) = start_source_with(
        &tmp,
        &br.exec(),
        &[
            "--net",
            &format!("tap=tap0,mac={MAC}"),
            "--env",
            "IP=10.0.0.2/24",
        ],
        "httpd",
        &[],
    );
    src.wait_for("httpd: listening");
    assert!(br.get().is_some(), "no answer before the move");
    assert!(
        br.learnt(MAC, "tap0"),
        "the bridge never saw the guest on tap0"
    );

    // The destination must bring its own TAP.
    let addr = free_addr();
    let dst = start_dest(&br.exec(), &addr, &k, None);
    migrate(&sock, &addr, &k, &[], &[])
        .expect_status(i32::from(status::MONITOR_ERROR))
        .expect_stderr("`--net` option(s)")
        .expect_stderr("keeps running");
    dst.finish().expect_status(i32::from(status::MONITOR_ERROR));
    assert!(br.get().is_some(), "no answer after the refused move");

    let addr = free_addr();
    let dapi = tmp.join("dst.sock");
    let dst = start_dest_with(&br.exec(), &addr, &k, Some(&dapi), &["--net", "tap=tap1"]);
    let m = migrate(&sock, &addr, &k, &[], &[]);
    if m.status != Some(0) {
        src.signal(libc::SIGKILL);
        dst.signal(libc::SIGKILL);
        panic!(
            "migration failed: {m:#?}\nsource: {:#?}\ndestination: {:#?}",
            src.finish(),
            dst.finish()
        );
    }
    m.expect_status(0).expect_stdout("migrated to");
    src.finish().expect_status(MIGRATED);
    // The guest announces itself on its own: no client traffic yet.
    let mut seen = false;
    for _ in 0..500 {
        if br.learnt(MAC, "tap1") {
            seen = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !seen {
        let st1 = duet(&["ctl", s(&dapi), "status"]);
        std::thread::sleep(Duration::from_millis(500));
        let st2 = duet(&["ctl", s(&dapi), "status"]);
        eprintln!("status: {}\nthen: {}", st1.stdout, st2.stdout);
        dst.signal(libc::SIGKILL);
        panic!(
            "no gratuitous ARP: the bridge did not learn tap1; destination: {:#?}",
            dst.finish()
        );
    }
    // Clients may retry while the move settles.
    let answered = (0..10).any(|_| br.get().is_some());
    assert!(answered, "httpd stopped answering: {}", dst.stdout());
    duet(&["ctl", s(&dapi), "status"])
        .expect_status(0)
        .expect_stdout("\"generation\": 1");
    drop(dst);
    drop(br);
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// A 1 MiB zero-filled disk image in `dir`.
fn blank_disk(dir: &std::path::Path) -> std::path::PathBuf {
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    disk
}

#[test]
fn a_destination_waiting_for_a_source_stops_on_sigterm() {
    let dir = duet_tests::temp_dir("mig-wait-term");
    let k = key(&dir, "k", b'w');
    let addr = free_addr();
    let dest = start_dest(&[], &addr, &k, None);
    // Wait until it listens (a probe connection would count as a failed
    // source): a LISTEN entry for the port in /proc/net/tcp.
    let port = addr.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let listening = || {
        let t = std::fs::read_to_string("/proc/net/tcp").unwrap();
        t.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&format!(":{port:04X}")) && f[3] == "0A"
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !listening() {
        assert!(
            std::time::Instant::now() < deadline,
            "the destination never listened on {addr}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    dest.signal(libc::SIGTERM);
    let out = dest.finish();
    assert_ne!(out.status, Some(0), "{out:?}");
    assert!(
        out.status.is_some(),
        "killed by a signal instead of stopping: {out:?}"
    );
    assert!(
        out.stderr
            .contains("stopped by SIGTERM while waiting for a source"),
        "{}",
        out.stderr
    );
}
