//! Core files (`--core`) that the real GDB reads, and the frame-pointer
//! backtraces in fault and panic reports.

use duet_tests::gdb::{frames, gdb, require_gdb};
use duet_tests::{boot, image, status, temp_dir};

#[test]
fn a_core_of_each_fault_kind_names_the_faulting_function() {
    require_gdb();
    let dir = temp_dir("core-faults");
    let img = image("fault");
    for (kind, func, signal) in [
        ("null", "fault::main", "SIGSEGV"),
        ("divide", "fault::main", "SIGFPE"),
        ("ud", "fault::main", "SIGILL"),
        ("gp", "fault::main", "SIGSEGV"),
        ("write-rodata", "fault::main", "SIGSEGV"),
        ("stack-overflow", "fault::recurse", "SIGSEGV"),
        ("nested", "fault::level3", "SIGSEGV"),
    ] {
        let core = dir.join(format!("core-{kind}"));
        let o = boot("fault", &["--core", core.to_str().unwrap()], &[kind]);
        o.expect_status(i32::from(status::GUEST_FAULT))
            .expect_stderr(&format!("core dumped to {}", core.display()));
        let out = gdb(&img, Some(&core), &["bt 3"]);
        let f = frames(&out);
        assert!(
            f.first().is_some_and(|f| f.starts_with(func)),
            "{kind}: frame #0 is not {func}:\n{out}"
        );
        assert!(
            out.contains(&format!("Program terminated with signal {signal}")),
            "{kind}: {out}"
        );
    }
    // The nested fault's core unwinds through every frame to main.
    let out = gdb(&img, Some(&dir.join("core-nested")), &["bt"]);
    let f: Vec<String> = frames(&out)
        .into_iter()
        .map(|f| f.split("::h").next().unwrap().to_string())
        .collect();
    assert_eq!(
        &f[..4],
        [
            "fault::level3",
            "fault::level2",
            "fault::level1",
            "fault::main"
        ],
        "{out}"
    );
    // Nothing half-written was left beside the cores.
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name();
        assert!(
            !name.to_string_lossy().contains(".tmp"),
            "{name:?} left behind"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_panicking_guest_s_core_shows_the_panic_path() {
    require_gdb();
    let dir = temp_dir("core-panic");
    let core = dir.join("core");
    let o = boot("panic", &["--core", core.to_str().unwrap()], &[]);
    o.expect_status(i32::from(status::GUEST_ABORT))
        .expect_stderr("core dumped to");
    let out = gdb(&image("panic"), Some(&core), &["bt"]);
    assert!(
        out.contains("Program terminated with signal SIGABRT"),
        "{out}"
    );
    let f = frames(&out).join(" ");
    for want in ["abort_bytes", "panic_fmt", "panic::main"] {
        assert!(
            f.contains(want),
            "no {want} in the core's backtrace:\n{out}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn fault_and_panic_reports_carry_a_symbolized_backtrace() {
    let o = boot("fault", &[], &["nested"]);
    o.expect_status(i32::from(status::GUEST_FAULT));
    let bt = o.stderr.split("backtrace:").nth(1).expect("a backtrace");
    let names: Vec<&str> = bt
        .lines()
        .filter_map(|l| l.trim().strip_prefix('#')?.split_whitespace().nth(2))
        .collect();
    let order: Vec<&str> = names.iter().map(|n| n.split('+').next().unwrap()).collect();
    assert_eq!(
        &order[..4],
        [
            "fault::level3",
            "fault::level2",
            "fault::level1",
            "fault::main"
        ],
        "{}",
        o.stderr
    );
    assert!(names.iter().all(|n| n.contains("+0x")), "{}", o.stderr);

    let o = boot("panic", &[], &[]);
    o.expect_status(i32::from(status::GUEST_ABORT))
        .expect_stderr("boom: the answer is 42")
        .expect_stderr("backtrace:")
        .expect_stderr("core::panicking::panic_fmt+0x")
        .expect_stderr("panic::main+0x");
}

#[test]
fn a_smashed_frame_chain_still_gets_a_clean_report() {
    let o = boot("fault", &[], &["smash"]);
    o.expect_status(i32::from(status::GUEST_FAULT))
        .expect_stderr("#UD invalid opcode")
        .expect_stderr("#0  0x")
        .expect_stderr("fault::smash+0x")
        .expect_stderr("(the frame chain ends here: frame pointer 0x4141414141414141");
}
