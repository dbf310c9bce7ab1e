//! A command line that is wrong in itself is a usage error (status 2,
//! clap's message and the usage), before anything runs: unknown options,
//! options that do not apply to the form given, values that do not parse.

use duet_tests::{duet, image, status, Output};

const USAGE: u8 = status::USAGE;

/// Checks a refusal: its status, and that stderr says each of `says`, once.
#[track_caller]
fn refused(o: Output, st: u8, says: &[&str]) -> Output {
    o.expect_refusal(st, says);
    o
}

fn hello() -> String {
    image("hello").to_str().unwrap().to_string()
}

#[test]
fn options_that_do_not_apply_and_values_that_do_not_parse_are_usage_errors() {
    let img = hello();
    let img = img.as_str();
    let cases: &[(&[&str], &str)] = &[
        (&["run", img, "--bogus"], "unexpected argument '--bogus'"),
        (&["run", img, "--clones", "2"], "cannot be used with"),
        (&["run", img, "--no-verify"], "cannot be used with"),
        (&["run", img, "--store", "/tmp"], "cannot be used with"),
        (
            &["run", img, "--migration-key-file", "k"],
            "cannot be used with",
        ),
        (
            &["run", "--template", "t", "--mem", "128M"],
            "cannot be used with",
        ),
        (
            &["run", "--template", "t", "--env", "A=B"],
            "cannot be used with",
        ),
        (
            &["run", "--template", "t", "--", "arg"],
            "cannot be used with",
        ),
        (
            &[
                "run",
                "--template",
                "t",
                "--clones",
                "2",
                "--wait-start",
                "f",
            ],
            "cannot be used with",
        ),
        (
            &["run", "--template", "t", "--clones", "0"],
            "give at least 1 clone",
        ),
        (&["restore", "/x", "--clones", "0"], "give at least 1 clone"),
        (
            &["restore", "/x", "--clones", "two"],
            "is not a number of clones",
        ),
        (
            &[
                "run",
                "--incoming",
                "127.0.0.1:1",
                "--migration-key-file",
                "k",
                "--mem",
                "128M",
            ],
            "cannot be used with",
        ),
        (
            &[
                "run",
                "--incoming",
                "127.0.0.1:1",
                "--migration-key-file",
                "k",
                "--trace-boot",
            ],
            "cannot be used with",
        ),
        (
            &["run", "--incoming", "127.0.0.1:1"],
            "--migration-key-file",
        ),
        (
            &[
                "run",
                "--incoming",
                "127.0.0.1",
                "--migration-key-file",
                "k",
            ],
            "is not ADDR:PORT",
        ),
        (
            &[
                "ctl",
                "/x",
                "migrate",
                "10.0.0.2",
                "--migration-key-file",
                "k",
            ],
            "is not ADDR:PORT",
        ),
        (&["run", img, "--template", "t"], "cannot be used with"),
        (&["run"], "required arguments were not provided"),
        (
            &["run", img, "--stop-timeout", "-1"],
            "is not a number of seconds >= 0",
        ),
        (&["run", img, "--mem", "5M"], "not a multiple of 2 MiB"),
        (&["run", img, "--env", "NOEQUALS"], "is not KEY=VALUE"),
        (&["run", img, "--disk", "x,bogus"], "the syntax is PATH"),
        (&["run", img, "--net", "eth0"], "is not tap=NAME"),
        (&["ctl", "/x", "bogus"], "unexpected argument 'bogus'"),
        (
            &["template", "create", "t"],
            "required arguments were not provided",
        ),
    ];
    for (args, says) in cases {
        let o = duet(args);
        assert!(
            o.stderr.contains("Usage:") || o.stderr.contains("--help"),
            "{args:?}: {o:#?}"
        );
        refused(o, USAGE, &[says]);
    }
    // Asking for more memory than the host has.
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("MemTotal in /proc/meminfo");
    let gib = (kib >> 20) + 2;
    let (mem, says) = if gib <= 64 {
        (format!("{gib}G"), "and this host has only")
    } else {
        ("65G".to_string(), "too large")
    };
    refused(duet(&["run", img, "--mem", &mem]), USAGE, &[says]);
}

#[test]
fn example_apps_given_no_command_print_their_usage() {
    for app in ["clock", "memory"] {
        let o = duet_tests::boot(app, &[], &[]);
        o.expect_status(2).expect_stdout("usage: ");
    }
}
