//! Memory hypercalls: heap growth, out-of-memory, release, protection.

use duet_tests::{boot, image, rss_kib, status, Running};
use std::time::Duration;

#[test]
fn heap_grows_from_a_small_start_to_near_the_limit() {
    let o = boot("memory", &["--mem", "64M"], &["grow", "48"]);
    o.expect_status(0)
        .expect_stdout("grew: 48 MiB in use")
        .expect_stdout("started at 2048 KiB")
        .expect_stdout("ok=true");
}

#[test]
fn exhausting_memory_is_a_clean_out_of_memory_report() {
    let o = boot("memory", &["--mem", "32M"], &["oom"]);
    o.expect_status(status::GUEST_ABORT as i32)
        .expect_stderr("out of memory: asked 4194304 bytes, limit")
        .expect_stderr("raise --mem");
}

#[test]
fn release_gives_memory_back_to_the_host() {
    let img = image("memory");
    let mut r = Running::start(&[
        "run",
        img.to_str().unwrap(),
        "--mem",
        "256M",
        "--",
        "release",
        "128",
    ]);
    r.wait_line("touched", Duration::from_secs(30));
    let pid = r.child.id();
    let touched = rss_kib(pid);
    r.wait_line("released", Duration::from_secs(30));
    let released = rss_kib(pid);
    r.wait_line("after release reads 0", Duration::from_secs(30));
    assert_eq!(r.wait(Duration::from_secs(30)), Some(0));
    assert!(
        touched > 128 * 1024,
        "RSS after touching 128 MiB is only {touched} KiB"
    );
    assert!(
        released + 100 * 1024 < touched,
        "RSS did not drop: {touched} KiB -> {released} KiB"
    );
}

#[test]
fn protected_pages_fault() {
    let o = boot("memory", &[], &["protect-write"]);
    o.expect_status(status::GUEST_FAULT as i32)
        .expect_stdout("read after protect: 165")
        .expect_stdout("neighbour still writable")
        .expect_stderr("write, page present but access not permitted");
    let o = boot("memory", &[], &["protect-none"]);
    o.expect_status(status::GUEST_FAULT as i32)
        .expect_stderr("read, page not mapped");
}

#[test]
fn protection_can_be_given_back() {
    boot("memory", &[], &["protect-restore"])
        .expect_status(0)
        .expect_stdout("writable again");
}

#[test]
fn touching_heap_that_was_not_grown_is_explained() {
    boot("memory", &[], &["beyond-heap"])
        .expect_status(status::GUEST_FAULT as i32)
        .expect_stderr("the heap beyond its mapped end (not grown yet");
}

#[test]
fn refused_requests_get_error_codes() {
    let o = boot("memory", &["--mem", "64M"], &["refusals"]);
    o.expect_status(0);
    for line in [
        "grow-zero -> Err(Inval)",
        "grow-too-much -> Err(NoMem)",
        "grow-overflow -> Err(NoMem)",
        "release-misaligned -> Err(Inval)",
        "release-zero -> Err(Inval)",
        "release-text -> Err(Perm)",
        "release-beyond -> Err(Fault)",
        "release-overflow -> Err(Fault)",
        "protect-text-writable -> Err(Perm)",
        "protect-heap-exec -> Err(Perm)",
        "protect-clock -> Err(Perm)",
        "protect-page-tables -> Err(Perm)",
        "protect-stack -> Err(Perm)",
        "protect-bad-bits -> Err(Inval)",
        "protect-write-only -> Err(Inval)",
        "protect-beyond-heap -> Err(Perm)",
    ] {
        o.expect_stdout(line);
    }
}
