//! A hostile guest cannot crash the monitor: bad pointers and lengths get
//! error codes, unusable argument structs stop the VM with a clear report,
//! and no privileged instruction, software interrupt or access to the
//! monitor's ring-0 pages gets the guest anywhere but a fault report.

use duet_monitor::contract::layout::{EXCEPTION_STUBS, IDT};
use duet_tests::{boot, status, Output};

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

/// Boots `hostile` with `args`; checks it ended in a monitor-built fault
/// report (status 139) whose RIP is symbolized inside the attempt.
fn fault(args: &[&str]) -> Output {
    let o = boot("hostile", &[], args);
    o.expect_status(status::GUEST_FAULT as i32)
        .expect_stderr("guest fault: ")
        .expect_stderr("<hostile::privileged+0x");
    assert!(!o.stdout.contains("survived"), "{o:#?}");
    o
}

#[test]
fn privileged_instructions_in_ring_3_fault() {
    let gp = "#GP general protection (vector 13, error code 0x0) at rip";
    for (case, want) in [
        // `into` does not exist in 64-bit mode.
        ("into", "#UD invalid opcode (vector 6) at rip"),
        ("mov-cr3", gp),
        ("lgdt", gp),
        ("lidt", gp),
        ("wrmsr", gp),
        ("cli", gp),
        ("hlt", gp),
        // The TSS I/O bitmap closes every port but the hypercalls', the
        // monitor's stub ports included, and popf cannot raise IOPL.
        ("in-port", gp),
        ("out-port", gp),
        ("out-high-port", gp),
        ("out-stub-port", gp),
        ("popf-iopl", gp),
        // Ring-0 selectors: the error code names the selector.
        (
            "far-return-ring0",
            "#GP general protection (vector 13, error code 0x10)",
        ),
        (
            "load-kernel-data",
            "#GP general protection (vector 13, error code 0x18)",
        ),
    ] {
        fault(&[case])
            .expect_stderr(want)
            .expect_stderr("cs 0x33 ss 0x2b");
    }
}

#[test]
fn int3_is_a_breakpoint_report_without_a_debugger() {
    fault(&["int3"])
        .expect_stderr("#BP breakpoint (vector 3): breakpoint (int3) at rip 0x")
        .expect_stderr("no debugger is attached");
}

#[test]
fn software_interrupts_cannot_enter_other_gates() {
    // Every gate but #BP has DPL 0: an `int 14` must not reach the page-fault
    // stub (with no error code pushed, the frame would be misread), and
    // vectors past the IDT's 32 do not exist. Bare-metal KVM raises #GP;
    // this project's nested PVM hosts raise #UD. Either way, no #PF report.
    for case in ["int-pf", "int-beyond-idt"] {
        let o = fault(&[case]);
        assert!(
            o.stderr.contains("#GP general protection (vector 13")
                || o.stderr.contains("#UD invalid opcode (vector 6)"),
            "{case}: {o:#?}"
        );
        assert!(!o.stderr.contains("#PF"), "{case}: {o:#?}");
    }
    // `syscall` with EFER.SCE clear: #UD on bare metal; PVM hosts jump to
    // LSTAR (0) in ring 3, where the null page is never mapped.
    let o = boot("hostile", &[], &["syscall"]);
    o.expect_status(status::GUEST_FAULT as i32)
        .expect_stderr("cs 0x33 ss 0x2b");
    assert!(
        o.stderr.contains("#UD invalid opcode (vector 6)")
            || o.stderr
                .contains("instruction fetch, page not mapped, user mode at 0x0: the null page"),
        "{o:#?}"
    );
}

#[test]
fn the_monitors_ring_0_pages_are_out_of_reach() {
    let write = "write, page present but access not permitted, user mode at";
    fault(&["write-idt"])
        .expect_stderr("#PF page fault (vector 14, error code 0x7)")
        .expect_stderr(&format!(
            "{write} {IDT:#x}: monitor-owned memory (the IDT, ring 0 only)"
        ));
    let stubs = format!("{EXCEPTION_STUBS:#x}");
    fault(&["write-address", &stubs]).expect_stderr(&format!(
        "{write} {stubs}: monitor-owned memory (the exception stubs"
    ));
    // Jumping in faults on the fetch, in ring 3, before a stub byte runs.
    let o = boot("hostile", &[], &["jump-address", &stubs]);
    o.expect_status(status::GUEST_FAULT as i32)
        .expect_stderr(&format!(
            "#PF page fault (vector 14, error code 0x15) at rip {stubs}"
        ))
        .expect_stderr(&format!(
            "instruction fetch, page present but access not permitted, user mode at {stubs}: monitor-owned memory (the exception stubs"
        ))
        .expect_stderr("cs 0x33 ss 0x2b");
}

#[test]
fn reading_a_hypercall_port_is_a_vm_failure() {
    boot("hostile", &[], &["in-hypercall-port"])
        .expect_status(status::VM_FAILURE as i32)
        .expect_stderr("guest read from I/O port 0x505");
}
