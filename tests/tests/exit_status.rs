//! The exit-status contract: README.md's table is the code's
//! (`duet_monitor::contract::status::TABLE`, which `duet --help` prints),
//! and every row of it is provoked for real.

use duet_tests::docs;
use duet_tests::{boot, duet, image, status, temp_dir, wait_path, Background};
use std::path::Path;

/// The README's table, code formatting dropped.
fn readme_table() -> Vec<(String, String)> {
    docs::table_after(&docs::read("README.md"), "### Exit status")
        .into_iter()
        .map(|r| {
            assert_eq!(
                r.len(),
                2,
                "README's exit-status table has two columns: {r:?}"
            );
            (r[0].replace('`', ""), r[1].replace('`', ""))
        })
        .collect()
}

#[test]
fn the_readme_table_is_the_code_s_and_duet_help_prints_it() {
    let code: Vec<(String, String)> = status::TABLE
        .iter()
        .map(|(s, m)| (s.to_string(), m.to_string()))
        .collect();
    assert_eq!(
        readme_table(),
        code,
        "README.md's exit-status table (left) and duet_monitor::contract::status::TABLE (right) differ"
    );
    let help = duet(&["--help"]);
    help.expect_status(0);
    for (st, meaning) in status::TABLE {
        help.expect_stdout(&format!("{st:>5}  {meaning}"));
    }
}

/// A guest that waits for SIGTERM, with `opts`; returns once it waits.
fn waiting(opts: &[&str], args: &[&str]) -> Background {
    let img = image("shutdown");
    let mut v = vec!["run", img.to_str().unwrap()];
    v.extend_from_slice(opts);
    v.push("--");
    v.extend_from_slice(args);
    let g = Background::start(&v);
    g.wait_for("shutdown: ");
    g
}

/// Moves a waiting guest to another monitor over loopback: the source
/// ends with 120, the destination runs it (and stops it on SIGTERM).
fn migrated_away(tmp: &Path) {
    let key = tmp.join("key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef").unwrap();
    let sock = tmp.join("src.sock");
    let src = waiting(&["--api", sock.to_str().unwrap()], &[]);
    wait_path(&sock);
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let k = key.to_str().unwrap();
    let dst = Background::start(&["run", "--incoming", &addr, "--migration-key-file", k]);
    duet(&[
        "ctl",
        sock.to_str().unwrap(),
        "migrate",
        &addr,
        "--migration-key-file",
        k,
    ])
    .expect_status(0)
    .expect_stdout("migrated to");
    src.finish()
        .expect_status(status::MIGRATED.into())
        .expect_stderr(&format!("duet: guest migrated to {addr}"));
    // The guest runs on there (it was committed before `migrate`
    // returned): it answers SIGTERM with its own status.
    dst.signal(libc::SIGTERM);
    dst.finish()
        .expect_status(7)
        .expect_stdout("poll woke with READY_SHUTDOWN");
}

/// Provokes the outcome a README row documents.
fn provoke(row: &str, tmp: &Path) {
    let s = |v: u8| i32::from(v);
    match row {
        "0-255" => {
            for n in ["0", "7", "255"] {
                boot("args", &[], &[&format!("status={n}")]).expect_status(n.parse().unwrap());
            }
        }
        "2" => {
            let img = image("hello");
            duet(&["run", img.to_str().unwrap(), "--clones", "2"])
                .expect_status(s(status::USAGE))
                .expect_stderr("Usage:");
            duet(&["run", img.to_str().unwrap(), "--mem", "5M"])
                .expect_status(s(status::USAGE))
                .expect_stderr("not a multiple of 2 MiB");
        }
        "125" => {
            duet(&["run", "/nonexistent/image"])
                .expect_status(s(status::MONITOR_ERROR))
                .expect_stderr("duet: error: ");
            duet(&["ctl", tmp.join("none.sock").to_str().unwrap(), "status"])
                .expect_status(s(status::MONITOR_ERROR))
                .expect_stderr("no control socket");
        }
        "134" => {
            boot("panic", &[], &[]).expect_status(s(status::GUEST_ABORT));
        }
        "139" => {
            for kind in ["breakpoint", "port", "gp"] {
                boot("fault", &[], &[kind])
                    .expect_status(s(status::GUEST_FAULT))
                    .expect_stderr("vector");
            }
        }
        "140" => {
            boot("hostile", &[], &["in-hypercall-port"])
                .expect_status(s(status::VM_FAILURE))
                .expect_stderr("VM failure");
            boot("hostile", &[], &["byte-out"]).expect_status(s(status::VM_FAILURE));
        }
        "120" => migrated_away(tmp),
        "143" => {
            let g = waiting(&["--stop-timeout", "0.1"], &["ignore"]);
            g.signal(libc::SIGTERM);
            g.finish()
                .expect_status(s(status::SIGTERM))
                .expect_stderr("SIGTERM");
        }
        "130" => {
            let g = waiting(&[], &["ignore"]);
            g.signal(libc::SIGINT);
            g.finish()
                .expect_status(s(status::SIGINT))
                .expect_stderr("SIGINT");
        }
        "159" => {
            // A monitor built with `test-hooks` (as `cargo xtask test` builds
            // it) makes the vCPU thread call `execve` once its list is in.
            let img = image("shutdown");
            let mut c = duet_tests::duet_cmd(&["run", img.to_str().unwrap()]);
            c.env("DUET_TEST_SECCOMP_PROBE", "vcpu")
                .env_remove("DUET_TEST_SECCOMP_LOG");
            duet_tests::run_cmd(c, std::time::Duration::from_secs(60))
                .expect_status(s(status::SECCOMP))
                .expect_stderr("duet: seccomp: the vcpu thread made system call 59 (execve)");
        }
        other => panic!(
            "README.md's exit-status row {other:?} has no check in tests/tests/exit_status.rs"
        ),
    }
}

#[test]
fn every_row_of_the_readme_exit_status_table_holds() {
    let tmp = temp_dir("exit-status");
    for (row, _) in readme_table() {
        provoke(&row, &tmp);
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}
