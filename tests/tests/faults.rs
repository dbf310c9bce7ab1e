//! Every kind of CPU exception is reported with its vector and a symbolized
//! RIP, read by the monitor from the frame the CPU pushed for its own stubs.

use duet_tests::{boot, status};

fn fault(kind: &str) -> duet_tests::Output {
    let o = boot("fault", &[], &[kind]);
    o.expect_status(status::GUEST_FAULT as i32)
        .expect_stdout(&format!("fault: {kind}"));
    o
}

#[test]
fn exceptions_report_vector_and_symbol() {
    for (kind, vector) in [
        ("divide", "#DE divide error (vector 0)"),
        ("debug", "#DB debug (vector 1)"),
        ("breakpoint", "#BP breakpoint (vector 3)"),
        ("ud", "#UD invalid opcode (vector 6)"),
        ("gp", "#GP general protection (vector 13"),
        ("port", "#GP general protection (vector 13"),
    ] {
        fault(kind)
            .expect_stderr(vector)
            .expect_stderr("<fault::main+0x")
            // The interrupted ring-3 context, not the stub's.
            .expect_stderr("cs 0x33 ss 0x2b");
    }
    fault("breakpoint").expect_stderr("breakpoint (int3) at rip 0x");
}

#[test]
fn memory_protection_faults_are_explained() {
    for (kind, what) in [
        ("null", "the null page"),
        (
            "write-text",
            "write, page present but access not permitted, user mode at",
        ),
        ("write-rodata", "the image's read-only data"),
        ("exec-data", "instruction fetch"),
        (
            "stack-overflow",
            "the stack guard page: the stack overflowed",
        ),
        ("monitor-page", "monitor-owned memory"),
        ("beyond-memory", "beyond the end of guest memory"),
        ("clock-write", "the clock page (read-only)"),
    ] {
        fault(kind)
            .expect_stderr("#PF page fault (vector 14")
            .expect_stderr(what);
    }
    fault("write-text").expect_stderr("the image's text");
    fault("stack-overflow").expect_stderr("<fault::recurse+0x");
}
