//! A hostile guest cannot crash the monitor: bad pointers and lengths get
//! error codes, unusable argument structs stop the VM with a clear report.

use duet_tests::{boot, status};

#[test]
fn bad_buffers_get_error_codes() {
    let o = boot("hostile", &[], &["errors"]);
    o.expect_status(0)
        .expect_stdout("beyond-memory -> Err(Fault)")
        .expect_stdout("straddles-end -> Err(Fault)")
        .expect_stdout("overflowing-len -> Err(TooBig)")
        .expect_stdout("huge-address -> Err(Fault)")
        .expect_stdout("too-big -> Err(TooBig)")
        .expect_stdout("ok -> Ok(2)");
}

#[test]
fn unusable_argument_structs_stop_the_vm_cleanly() {
    for case in ["args-beyond-memory", "args-straddle", "args-readonly"] {
        boot("hostile", &[], &[case])
            .expect_status(status::VM_FAILURE as i32)
            .expect_stderr("unusable argument struct to hypercall ConsoleWrite");
    }
}

#[test]
fn bad_abort_message_is_still_an_abort() {
    boot("hostile", &[], &["abort-bad-message"])
        .expect_status(status::GUEST_ABORT as i32)
        .expect_stderr("abort message unreadable");
}

#[test]
fn protocol_violations_are_reported() {
    boot("hostile", &[], &["unknown-call"])
        .expect_status(status::VM_FAILURE as i32)
        .expect_stderr("unknown hypercall 63");
    boot("hostile", &[], &["byte-out"])
        .expect_status(status::VM_FAILURE as i32)
        .expect_stderr("1-byte `out`");
}
