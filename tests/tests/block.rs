//! Block storage: `--disk` validation, the block hypercalls (checked
//! against the host's view of the file), host errors reaching the guest, and
//! the `kv` app's persistence, durability and torn-record recovery.

use duet_tests::{boot, duet_cmd, image, run_cmd, status};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "duet-block-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    /// A sparse file of `size` bytes.
    fn file(&self, name: &str, size: u64) -> PathBuf {
        let p = self.0.join(name);
        File::create(&p).unwrap().set_len(size).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn disk(p: &Path, opts: &str) -> String {
    format!("{}{opts}", p.display())
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

#[test]
fn devices_are_listed_in_order_with_their_geometry() {
    let s = Scratch::new("info");
    let a = s.file("a.img", 4 << 20);
    let b = s.file("b.img", 1 << 20);
    let (da, db) = (disk(&a, ""), disk(&b, ",ro,name=data,sector=4096"));
    boot("blktest", &["--disk", &da, "--disk", &db], &["info"])
        .expect_status(0)
        .expect_stdout("disk 0 disk0 capacity=4194304 sector=512 rw")
        .expect_stdout("disk 1 data capacity=1048576 sector=4096 ro");
}

#[test]
fn random_data_round_trips_at_random_aligned_offsets() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    for (sector, size) in [("", 4u64 << 20), (",sector=4096", 8 << 20)] {
        let s = Scratch::new("roundtrip");
        let img = s.file("a.img", size);
        let d = disk(&img, sector);
        let o = boot(
            "blktest",
            &["--disk", &d],
            &["roundtrip", &seed.to_string(), "48"],
        );
        o.expect_status(0).expect_stdout("roundtrip ok count=48");
        // The guest's view of the final contents must be the file's.
        let host = format!("fnv={:016x}", fnv(&fs::read(&img).unwrap()));
        assert!(
            o.stdout.contains(&host),
            "seed {seed}: guest and host disagree on the contents ({host}):\n{o:#?}"
        );
        assert_ne!(
            fnv(&fs::read(&img).unwrap()),
            fnv(&vec![0; size as usize]),
            "nothing was written"
        );
    }
}

#[test]
fn bad_requests_get_error_codes() {
    let s = Scratch::new("errors");
    // The raw block hypercalls' error codes: a hypercall disk.
    let d = disk(&s.file("a.img", 1 << 20), ",transport=hypercall");
    let o = boot("blktest", &["--disk", &d], &["errors"]);
    o.expect_status(0);
    for line in [
        "misaligned-offset -> Err(Inval)",
        "misaligned-len -> Err(Inval)",
        "past-end -> Err(Range)",
        "straddles-end -> Err(Range)",
        "overflowing -> Err(Range)",
        "too-big -> Err(TooBig)",
        "no-device -> Err(NoDev)",
        "buffer-outside-memory -> Err(Fault)",
        "buffer-overflowing -> Err(Fault)",
        "read-into-rodata -> Err(Fault)",
        "write-from-outside-memory -> Err(Fault)",
        "flags -> Err(Inval)",
        "flush-no-device -> Err(NoDev)",
        "ok -> Ok(512)",
        "batch-too-long -> Err(TooBig)",
        "batch-outside-memory -> Err(Fault)",
        "batch-in-rodata -> Err(Fault)",
        "batch-empty -> Ok(0)",
    ] {
        o.expect_stdout(line);
    }
    let d4k = disk(
        &s.file("b.img", 1 << 20),
        ",sector=4096,transport=hypercall",
    );
    boot("blktest", &["--disk", &d4k], &["align"])
        .expect_status(0)
        .expect_stdout("len-512 -> Err(Inval)")
        .expect_stdout("offset-512 -> Err(Inval)")
        .expect_stdout("aligned -> Ok(4096)");
    // The same rules through duet::block, on both transports.
    for t in ["hypercall", "virtio"] {
        let opts = format!(",sector=4096,transport={t}");
        let d4k = disk(&s.file("c.img", 1 << 20), &opts);
        boot("blktest", &["--disk", &d4k], &["align-api"])
            .expect_status(0)
            .expect_stdout("len-512 -> Err(Inval)")
            .expect_stdout("offset-512 -> Err(Inval)")
            .expect_stdout("aligned -> Ok(())");
    }
}

#[test]
fn a_bad_batch_entry_fails_alone() {
    let s = Scratch::new("batch");
    let img = s.file("a.img", 1 << 20);
    // The batch hypercall's per-entry codes: a hypercall disk.
    let d = disk(&img, ",transport=hypercall");
    boot("blktest", &["--disk", &d], &["batch"])
        .expect_status(0)
        .expect_stdout("write-batch -> Ok(3)")
        .expect_stdout("entry 0 -> Ok(512)")
        .expect_stdout("entry 1 -> Err(Inval)")
        .expect_stdout("entry 2 -> Ok(512)")
        .expect_stdout("entry 3 -> Err(Range)")
        .expect_stdout("entry 4 -> Ok(0)")
        .expect_stdout("read-batch -> Ok(3)")
        .expect_stdout("read 1 -> Err(Fault)")
        .expect_stdout("read 3 -> Ok(512)")
        .expect_stdout("read 4 -> Err(Unsupported)")
        .expect_stdout("contents -> ok");
    let data = fs::read(&img).unwrap();
    assert!(data[..512].iter().all(|&b| b == 1));
    assert!(data[512..1024].iter().all(|&b| b == 0), "bad entry wrote");
    assert!(data[1024..1536].iter().all(|&b| b == 3));
}

#[test]
fn read_only_disks_refuse_writes() {
    let s = Scratch::new("ro");
    let img = s.file("a.img", 1 << 20);
    fs::write(&img, vec![1u8; 1 << 20]).unwrap();
    let d = disk(&img, ",ro");
    boot("blktest", &["--disk", &d], &["readonly"])
        .expect_status(0)
        .expect_stdout("read -> Ok(())")
        .expect_stdout("first-byte -> 1")
        .expect_stdout("write -> Err(ReadOnly)")
        .expect_stdout("batch-write -> Err(ReadOnly)");
    assert!(fs::read(&img).unwrap().iter().all(|&b| b == 1));
}

#[test]
fn bad_disk_options_fail_before_boot() {
    let s = Scratch::new("cli");
    let good = s.file("good.img", 1 << 20);
    let odd = s.file("odd.img", 1000);
    let not4k = s.file("not4k.img", 4096 + 512);
    let empty = s.file("empty.img", 0);
    let missing = s.0.join("missing.img");
    let dir = s.0.display().to_string();
    let bad: [(Vec<String>, &str); 7] = [
        (vec![disk(&missing, "")], "no such file"),
        (vec![dir], "is a directory"),
        (
            vec![disk(&odd, "")],
            "not a multiple of its 512-byte sector size",
        ),
        (
            vec![disk(&not4k, ",sector=4096")],
            "not a multiple of its 4096-byte sector size",
        ),
        (vec![disk(&empty, "")], "is empty"),
        (
            vec![disk(&good, ""), disk(&good, ",name=other")],
            "are the same file, attached writable",
        ),
        (
            vec![disk(&good, ",ro,name=a"), disk(&good, ",ro,name=a")],
            "two disks are named `a`",
        ),
    ];
    for (disks, want) in bad {
        let mut opts = vec![];
        for d in &disks {
            opts.extend(["--disk", d.as_str()]);
        }
        boot("blktest", &opts, &["info"])
            .expect_status(status::MONITOR_ERROR as i32)
            .expect_stderr(want);
    }
    // A read-only file attached twice read-only is fine.
    let (a, b) = (disk(&good, ",ro"), disk(&good, ",ro,name=again"));
    boot("blktest", &["--disk", &a, "--disk", &b], &["info"]).expect_status(0);
    for syntax in [",bogus", ",sector=1000", ",name="] {
        let d = disk(&good, syntax);
        boot("blktest", &["--disk", &d], &["info"])
            .expect_status(status::USAGE as i32)
            .expect_stderr("--disk");
    }
    // A disk the monitor may not open. Root ignores file modes, so as root
    // the monitor runs as `nobody` on a 0600 file; as anyone else the file
    // is made unreadable to its owner. Either way the check runs.
    let secret = s.file("secret.img", 1 << 20);
    let img = image("blktest");
    let mut c = duet_cmd(&[
        "run".as_ref(),
        img.as_os_str(),
        "--disk".as_ref(),
        secret.as_os_str(),
    ]);
    let mode = if is_root() {
        c.uid(65534).gid(65534);
        0o600
    } else {
        0o000
    };
    fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    run_cmd(c, Duration::from_secs(60))
        .expect_status(status::MONITOR_ERROR as i32)
        .expect_stderr("permission denied");
}

fn kv(img: &Path, args: &[&str]) -> duet_tests::Output {
    let d = disk(img, "");
    boot("kv", &["--disk", &d], args)
}

#[test]
fn kv_persists_across_runs() {
    let s = Scratch::new("kv");
    let img = s.file("kv.img", 1 << 20);
    kv(&img, &["put", "colour", "blue"])
        .expect_status(0)
        .expect_stdout("ok");
    kv(&img, &["put", "shape", "round"]).expect_status(0);
    kv(&img, &["put", "colour", "green"]).expect_status(0);
    kv(&img, &["get", "colour"])
        .expect_status(0)
        .expect_stdout("green");
    kv(&img, &["get", "size"])
        .expect_status(1)
        .expect_stdout("not found");
    kv(&img, &["list"])
        .expect_status(0)
        .expect_stdout("colour=green\nshape=round\n# 3 records");
}

#[test]
fn kv_record_survives_kill_9_after_ok() {
    let s = Scratch::new("kill");
    let img = s.file("kv.img", 1 << 20);
    kv(&img, &["put", "first", "1"]).expect_status(0);
    let d = disk(&img, "");
    let kv_img = image("kv");
    let mut c = duet_cmd(&[
        "run".as_ref(),
        kv_img.as_os_str(),
        "--env".as_ref(),
        "KV_HOLD=1".as_ref(),
        "--disk".as_ref(),
        d.as_ref(),
        "--".as_ref(),
        "put".as_ref(),
        "durable".as_ref(),
        "yes".as_ref(),
    ]);
    let mut child = c.stdout(Stdio::piped()).spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(60));
    // SIGKILL while the guest still runs (it spins after "ok").
    child.kill().unwrap();
    let st = child.wait().unwrap();
    assert_eq!(line.as_deref(), Ok("ok"), "no ok from kv put");
    assert_eq!(
        st.signal(),
        Some(9),
        "the monitor was not killed by SIGKILL: {st:?}"
    );
    kv(&img, &["get", "durable"])
        .expect_status(0)
        .expect_stdout("yes");
    kv(&img, &["get", "first"])
        .expect_status(0)
        .expect_stdout("1");
}

/// Parses "# N records, last at byte L, log ends at byte E".
fn log_bounds(list: &str) -> (u64, u64) {
    let line = list.lines().find(|l| l.starts_with("# ")).unwrap();
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[1], nums[2])
}

#[test]
fn kv_torn_final_record_is_skipped() {
    let s = Scratch::new("torn");
    let img = s.file("kv.img", 1 << 20);
    let long = "x".repeat(700); // the last record spans a sector boundary
    for (k, v) in [("a", "1"), ("b", "2"), ("c", long.as_str())] {
        kv(&img, &["put", k, v]).expect_status(0);
    }
    let (last, end) = log_bounds(&kv(&img, &["list"]).expect_status(0).stdout);
    // Cut the file in the middle of the last record, then give it back its
    // size: the record's tail reads as zeros, as after a torn write.
    let f = OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len((last + end) / 2).unwrap();
    f.set_len(1 << 20).unwrap();
    drop(f);
    let o = kv(&img, &["list"]);
    o.expect_status(0)
        .expect_stdout(&format!("torn record at byte {last} skipped"))
        .expect_stdout("a=1\nb=2\n# 2 records");
    assert!(!o.stdout.contains("c="), "torn record replayed: {o:#?}");
    // The log carries on over the torn record.
    kv(&img, &["put", "d", "4"]).expect_status(0);
    let o = kv(&img, &["list"]);
    o.expect_status(0)
        .expect_stdout("a=1\nb=2\nd=4\n# 3 records");
    assert!(!o.stdout.contains("torn"), "{o:#?}");
}

#[test]
fn kv_corrupt_record_is_detected() {
    let s = Scratch::new("corrupt");
    let img = s.file("kv.img", 1 << 20);
    for (k, v) in [("a", "1"), ("b", "hello")] {
        kv(&img, &["put", k, v]).expect_status(0);
    }
    let (last, end) = log_bounds(&kv(&img, &["list"]).stdout);
    let mut data = fs::read(&img).unwrap();
    data[end as usize - 1] ^= 0x20; // "hello" -> "hellO"
    fs::write(&img, &data).unwrap();
    kv(&img, &["list"])
        .expect_status(0)
        .expect_stdout(&format!("torn record at byte {last} skipped"))
        .expect_stdout("a=1\n# 1 records");
}

/// A tmpfs mounted for one test, unmounted on drop (even on panic).
struct Tmpfs(Scratch);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let s = Scratch::new("tmpfs");
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&s.0)
            .output()
            .expect("run mount (util-linux)");
        assert!(
            o.status.success(),
            "cannot mount a {size} tmpfs at {}: {}",
            s.0.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
        Tmpfs(s)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0 .0).status();
    }
}

#[test]
fn host_disk_full_reaches_the_guest_as_an_error() {
    duet_tests::require_root("mounting a 64 KiB tmpfs to fill");
    let fs = Tmpfs::mount("64k");
    // A 1 MiB sparse image on a 64 KiB filesystem: writes run out of space.
    let img = fs.0.file("full.img", 1 << 20);
    // virtio-blk has no "no space" status: its guest sees an I/O error.
    for (t, err) in [("hypercall", "-> Err(NoSpace)"), ("virtio", "-> Err(Io)")] {
        let d = disk(&img, &format!(",transport={t}"));
        let o = boot("blktest", &["--disk", &d], &["fill"]);
        o.expect_status(0)
            .expect_stdout(err)
            .expect_stdout("read-after -> Ok(())");
        assert!(!o.stdout.contains("fill stopped at 1048576"), "{o:#?}");
    }
}

#[test]
fn a_hostile_virtqueue_stops_only_its_device() {
    let s = Scratch::new("vbad");
    let d = disk(&s.file("a.img", 1 << 20), ",transport=virtio");
    boot("virtiobad", &["--disk", &d], &[])
        .expect_status(0)
        .expect_stdout("size-3 -> needs reset true")
        .expect_stdout("size-16 -> live true")
        .expect_stdout("outside-memory -> done true status 255 live true")
        .expect_stdout("index-beyond-ring -> needs reset true")
        .expect_stdout("after-reset -> Ok(())")
        .expect_stderr("queue size 3 is not a power of two")
        .expect_stderr("outside guest memory")
        .expect_stderr("beyond the 16-entry ring");
}
