//! Booting: hello, argv/env, exit statuses, panics, the allocator.

use duet_tests::{boot, status};

#[test]
fn hello_prints_and_exits_zero() {
    boot("hello", &[], &[])
        .expect_status(0)
        .expect_stdout("Hello from Duet!");
}

#[test]
fn argv_and_env_round_trip() {
    let o = boot(
        "args",
        &["--env", "A=1", "--env", "GREETING=hi there"],
        &["one", "two words", "ünïcödé"],
    );
    o.expect_status(0)
        .expect_stdout("arg[0]=one\n")
        .expect_stdout("arg[1]=two words\n")
        .expect_stdout("arg[2]=ünïcödé\n")
        .expect_stdout("env A=1\n")
        .expect_stdout("env GREETING=hi there\n");
}

#[test]
fn exit_statuses_propagate() {
    for code in [0, 1, 2, 42, 127, 128, 200, 254, 255] {
        let arg = format!("status={code}");
        boot("args", &[], &[&arg]).expect_status(code);
    }
}

#[test]
fn panic_reports_message_location_and_status() {
    let o = boot("panic", &[], &[]);
    o.expect_status(status::GUEST_ABORT as i32)
        .expect_stdout("about to panic")
        .expect_stderr("guest aborted: panicked at examples/panic.rs:")
        .expect_stderr("boom: the answer is 42");
}

#[test]
fn allocator_sorts_and_verifies() {
    boot("alloc", &[], &["200000"])
        .expect_status(0)
        .expect_stdout("alloc ok: sorted 200000 numbers");
}

#[test]
fn trace_boot_prints_phases() {
    let o = boot("hello", &["--trace-boot"], &[]);
    o.expect_status(0);
    for phase in [
        "open KVM + create VM",
        "guest memory",
        "vCPU",
        "load image",
        "guest first instruction",
        "guest main",
        "guest exit",
    ] {
        o.expect_stderr(phase);
    }
}
