//! `kvd` on a disk: acknowledged writes survive `kill -9` of the monitor,
//! a torn final record is ignored, and a compaction killed at any step
//! leaves a log that replays to the acknowledged data. Each test runs in
//! its own network namespace (root, /dev/net/tun).

use duet_tests::netns::Netns;
use duet_tests::redis::{kvd_addr, start_kvd, Client, Reply};
use duet_tests::temp_dir;
use std::path::{Path, PathBuf};

fn blank_disk(dir: &Path, mib: u64) -> PathBuf {
    let p = dir.join("kvd.img");
    std::fs::File::create(&p)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    p
}

fn ok() -> Reply {
    Reply::Simple("OK".into())
}

/// The value of `field` in an `INFO` reply.
fn info_field(c: &mut Client, field: &str) -> u64 {
    let info = c.call(&["INFO"]).text();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in INFO:\n{info}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = temp_dir("kvd-durable");
    let disk = blank_disk(&dir, 16);
    let disk = disk.to_str().unwrap();
    let ns = Netns::create();
    let kvd = start_kvd(&ns, &["--disk", disk, "--env", "APPENDFSYNC=always"]);
    let mut c = Client::connect(&ns, kvd_addr());
    for i in 0..200 {
        assert_eq!(
            c.call(&["SET", &format!("key:{i}"), &format!("v{i}")]),
            ok()
        );
    }
    for _ in 0..100 {
        c.call(&["INCR", "counter"]);
    }
    assert_eq!(c.call(&["MSET", "a", "1", "b", "2"]), ok());
    assert_eq!(c.call(&["DEL", "key:0"]), Reply::Int(1));
    assert_eq!(c.call(&["EXPIRE", "key:1", "1000"]), Reply::Int(1));
    assert_eq!(c.call(&["SET", "gone", "x", "PX", "1"]), ok());
    // Pipelined writes: acknowledged together after one group commit.
    for i in 0..100 {
        c.send(&["SET", &format!("p:{i}"), "pipelined"]);
    }
    for _ in 0..100 {
        assert_eq!(c.read(), ok());
    }
    // `always`: no sequential write was acknowledged before its flush.
    let flushes = info_field(&mut c, "kvd_log_flushes");
    assert!(
        flushes >= 305,
        "only {flushes} flushes for 305 sequential writes"
    );
    kvd.kill();

    let kvd = start_kvd(&ns, &["--disk", disk, "--env", "APPENDFSYNC=no"]);
    let mut c = Client::connect(&ns, kvd_addr());
    assert_eq!(c.call(&["GET", "key:0"]), Reply::Bulk(None));
    for i in 1..200 {
        assert_eq!(
            c.call(&["GET", &format!("key:{i}")]).text(),
            format!("v{i}")
        );
    }
    assert_eq!(c.call(&["GET", "counter"]).text(), "100");
    assert_eq!(
        c.call(&["MGET", "a", "b"]),
        Reply::Array(Some(vec![
            Reply::Bulk(Some(b"1".to_vec())),
            Reply::Bulk(Some(b"2".to_vec())),
        ]))
    );
    let Reply::Int(ttl) = c.call(&["TTL", "key:1"]) else {
        panic!("TTL is not an integer")
    };
    assert!((990..=1000).contains(&ttl), "TTL {ttl}");
    assert_eq!(c.call(&["GET", "gone"]), Reply::Bulk(None));
    assert_eq!(c.call(&["DBSIZE"]), Reply::Int(199 + 1 + 2 + 100));
    // `no` never flushes; what was written still survives a killed monitor
    // (the host has it), and comes back.
    assert_eq!(c.call(&["SET", "unflushed", "still here"]), ok());
    assert_eq!(info_field(&mut c, "kvd_log_flushes"), 0);
    kvd.kill();
    let kvd = start_kvd(&ns, &["--disk", disk]);
    let mut c = Client::connect(&ns, kvd_addr());
    assert_eq!(c.call(&["GET", "unflushed"]).text(), "still here");
    kvd.kill();
}

#[test]
fn a_torn_final_record_is_ignored() {
    let dir = temp_dir("kvd-torn");
    let path = blank_disk(&dir, 4);
    let disk = path.to_str().unwrap();
    let ns = Netns::create();
    let kvd = start_kvd(&ns, &["--disk", disk, "--env", "APPENDFSYNC=always"]);
    let mut c = Client::connect(&ns, kvd_addr());
    assert_eq!(c.call(&["SET", "a", "1"]), ok());
    assert_eq!(c.call(&["SET", "b", "2"]), ok());
    // The last record: one group, as MSET writes its keys all or none.
    assert_eq!(c.call(&["MSET", "c", "LAST-RECORD-MARKER", "e", "5"]), ok());
    kvd.kill();
    // Tear the last record: the tail of its first value never reached the
    // disk.
    let mut img = std::fs::read(&path).unwrap();
    let at = img
        .windows(18)
        .position(|w| w == b"LAST-RECORD-MARKER")
        .expect("the record is in the image");
    img[at + 10..at + 18].fill(0);
    std::fs::write(&path, &img).unwrap();

    let kvd = start_kvd(&ns, &["--disk", disk, "--env", "APPENDFSYNC=always"]);
    assert!(
        kvd.stdout().contains("kvd: 2 keys from the log"),
        "{}",
        kvd.stdout()
    );
    let mut c = Client::connect(&ns, kvd_addr());
    assert_eq!(c.call(&["GET", "c"]), Reply::Bulk(None));
    assert_eq!(c.call(&["GET", "e"]), Reply::Bulk(None));
    assert_eq!(c.call(&["GET", "b"]).text(), "2");
    // New records go where the torn one was, and replay past it.
    assert_eq!(c.call(&["SET", "d", "4"]), ok());
    kvd.kill();
    let kvd = start_kvd(&ns, &["--disk", disk]);
    let mut c = Client::connect(&ns, kvd_addr());
    let want = ["1", "2", "", "4"].map(|v| match v {
        "" => Reply::Bulk(None),
        v => Reply::Bulk(Some(v.as_bytes().to_vec())),
    });
    assert_eq!(
        c.call(&["MGET", "a", "b", "c", "d"]),
        Reply::Array(Some(want.to_vec()))
    );
    kvd.kill();
}

/// Writes a data set whose log is well above its live size; returns once
/// every write is acknowledged.
fn write_data(c: &mut Client) {
    for v in ["first", "second"] {
        for i in 0..50 {
            c.send(&["SET", &format!("k{i}"), &format!("{v}{i}")]);
        }
        for _ in 0..50 {
            assert_eq!(c.read(), ok());
        }
    }
    assert_eq!(c.call(&["DEL", "k0"]), Reply::Int(1));
    assert_eq!(c.call(&["EXPIRE", "k1", "1000"]), Reply::Int(1));
    for _ in 0..5 {
        c.call(&["INCR", "n"]);
    }
}

/// Checks what [`write_data`] wrote, and that `more` other keys exist.
fn check_data(c: &mut Client, more: i64) {
    assert_eq!(c.call(&["GET", "k0"]), Reply::Bulk(None));
    for i in 1..50 {
        assert_eq!(
            c.call(&["GET", &format!("k{i}")]).text(),
            format!("second{i}")
        );
    }
    assert!(matches!(c.call(&["TTL", "k1"]), Reply::Int(990..=1000)));
    assert_eq!(c.call(&["GET", "n"]).text(), "5");
    assert_eq!(c.call(&["DBSIZE"]), Reply::Int(50 + more));
}

#[test]
fn a_compaction_killed_at_any_step_replays_to_the_acknowledged_data() {
    let ns = Netns::create();
    for step in [
        "compact-begin",
        "compact-partial",
        "compact-written",
        "compact-flushed",
        "compact-super-torn",
        "compact-super",
        "compact-done",
    ] {
        let dir = temp_dir(&format!("kvd-{step}"));
        let disk = blank_disk(&dir, 4);
        let disk = disk.to_str().unwrap();
        let crash = format!("KVD_CRASH_AT={step}");
        let kvd = start_kvd(
            &ns,
            &[
                "--disk",
                disk,
                "--env",
                "APPENDFSYNC=always",
                "--env",
                &crash,
            ],
        );
        let mut c = Client::connect(&ns, kvd_addr());
        write_data(&mut c);
        // The rewrite stops at `step`; there the monitor is killed.
        c.send(&["BGREWRITEAOF"]);
        kvd.wait_for(&format!("kvd: crash point {step}"));
        kvd.kill();

        let kvd = start_kvd(&ns, &["--disk", disk, "--env", "APPENDFSYNC=always"]);
        let mut c = Client::connect(&ns, kvd_addr());
        check_data(&mut c, 0);
        // The log goes on from there, through a whole compaction.
        assert_eq!(c.call(&["SET", "after", step]), ok());
        assert_eq!(
            c.call(&["BGREWRITEAOF"]),
            Reply::Simple("Background append only file rewriting started".into())
        );
        assert_eq!(c.call(&["SET", "later", "yes"]), ok());
        kvd.kill();
        let kvd = start_kvd(&ns, &["--disk", disk]);
        let mut c = Client::connect(&ns, kvd_addr());
        check_data(&mut c, 2);
        assert_eq!(c.call(&["GET", "after"]).text(), step);
        assert_eq!(c.call(&["GET", "later"]).text(), "yes");
        kvd.kill();
    }
}

#[test]
fn the_log_compacts_itself_when_it_outgrows_the_data() {
    let dir = temp_dir("kvd-autocompact");
    let disk = blank_disk(&dir, 4);
    let disk = disk.to_str().unwrap();
    let ns = Netns::create();
    let opts = ["--disk", disk, "--env", "KVD_COMPACT_MIN=16K"];
    let kvd = start_kvd(&ns, &opts);
    let mut c = Client::connect(&ns, kvd_addr());
    let value = "v".repeat(100);
    // 4,000 writes of 11 keys: about 500 KiB of log for 1.4 KiB of data.
    for i in 0..2000 {
        c.send(&["SET", "hot", &format!("{value}{i}")]);
        c.send(&["SET", &format!("cold{}", i % 10), &value]);
    }
    for _ in 0..4000 {
        assert_eq!(c.read(), ok());
    }
    let rewrites = info_field(&mut c, "aof_rewrites");
    assert!(rewrites >= 1, "no compaction");
    let size = info_field(&mut c, "aof_current_size");
    assert!(size < 64 * 1024, "the log is {size} bytes");
    kvd.kill();
    let kvd = start_kvd(&ns, &opts);
    let mut c = Client::connect(&ns, kvd_addr());
    assert_eq!(c.call(&["GET", "hot"]).text(), format!("{value}1999"));
    assert_eq!(c.call(&["DBSIZE"]), Reply::Int(11));
    kvd.kill();
}
