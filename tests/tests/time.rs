//! Exitless clocks and the poll hypercall.

use duet_tests::{boot, cpu_time_ms, image, Running};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn field(out: &str, key: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {out:?}"))
}

#[test]
fn sleep_waits_at_least_its_duration() {
    let o = boot("clock", &[], &["sleep", "10"]);
    o.expect_status(0);
    let ns = field(&o.stdout, "slept_ns ");
    assert!(ns >= 10_000_000, "slept only {ns} ns");
    assert!(ns < 5_000_000_000, "slept {ns} ns: far too long");
}

#[test]
fn a_sleeping_guest_costs_the_monitor_almost_no_cpu() {
    let img = image("clock");
    let mut r = Running::start(&["run", img.to_str().unwrap(), "--", "idle", "300"]);
    r.wait_line("sleeping", Duration::from_secs(30));
    let pid = r.child.id();
    let before = cpu_time_ms(pid);
    r.wait_line("woke", Duration::from_secs(30));
    let after = cpu_time_ms(pid);
    assert_eq!(r.wait(Duration::from_secs(30)), Some(0));
    assert!(
        after - before < 30.0,
        "monitor used {} ms of CPU while the guest slept 300 ms",
        after - before
    );
}

#[test]
fn monotonic_clock_never_goes_backwards() {
    boot("clock", &[], &["monotonic", "1000000"])
        .expect_status(0)
        .expect_stdout("monotonic ok: 1000000 reads");
}

#[test]
fn wall_clock_matches_the_host() {
    let o = boot("clock", &[], &["wall"]);
    o.expect_status(0);
    let guest = field(&o.stdout, "wall_ns ") as i128;
    let host = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128;
    assert!(
        (host - guest).abs() < 2_000_000_000,
        "guest wall clock {guest} vs host {host}"
    );
}

#[test]
fn poll_edge_cases() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("d.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    // A hypercall disk is always ready (a virtio disk is ready when a used
    // buffer passed its `used_event`).
    let d = format!("{},transport=hypercall", disk.display());
    let o = boot("clock", &["--disk", &d], &["poll"]);
    o.expect_status(0)
        .expect_stdout("past-deadline -> Ok(0)")
        .expect_stdout("past-deadline-fast -> true")
        .expect_stdout("no-such-device -> Err(NoDev)")
        .expect_stdout("bit-63 -> Err(NoDev)")
        .expect_stdout("absurd-deadline-ready -> Ok(1)")
        .expect_stdout("absurd-deadline-short -> Ok(0)");
}

#[test]
fn timebench_reports_clock_and_poll_costs() {
    let o = boot("timebench", &[], &["10000"]);
    o.expect_status(0)
        .expect_stdout("BENCH clock_read_ns ")
        .expect_stdout("BENCH rdtsc_ns ")
        .expect_stdout("BENCH poll0_ns ");
}
