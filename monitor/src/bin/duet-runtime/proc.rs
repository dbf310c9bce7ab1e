//! The monitor process seen from outside: liveness (a zombie counts as
//! gone: it waits only for the engine to reap it), start time, signals.

use anyhow::{bail, Result};
use std::time::{Duration, Instant};

/// Fields of /proc/PID/stat after the command name: (state, starttime).
fn stat(pid: i32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: split after the last ')'.
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    // starttime is field 22 of the whole line, 20th after the name.
    let start = f.get(19)?.parse().ok()?;
    Some((state, start))
}

/// The start time of `pid` (clock ticks since boot), if it exists.
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, t)| t)
}

/// Whether `pid` is the process that started at `start` and has not exited.
pub fn alive(pid: i32, start: u64) -> bool {
    pid > 0 && matches!(stat(pid), Some((st, t)) if t == start && st != 'Z' && st != 'X')
}

/// Whether some thread of `pid` is blocked opening a FIFO nobody has opened
/// from the other side (the monitor waiting for `start`).
pub fn waiting_on_fifo(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("wchan"))
            .is_ok_and(|w| w.trim() == "wait_for_partner")
    })
}

/// Sends `sig` to `pid`.
pub fn signal(pid: i32, sig: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) has no memory arguments.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until `pid` (started at `start`) is gone or a zombie; false on timeout.
pub fn wait_gone(pid: i32, start: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid, start) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Parses a signal as engines write it: `TERM`, `SIGTERM`, `15`.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        bail!("signal {n} is out of range (1-64)");
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Ok(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ABRT" => libc::SIGABRT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "WINCH" => libc::SIGWINCH,
        _ => bail!("unknown signal {s:?}; use a name such as TERM or KILL, or a number"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("SIGKILL").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id() as i32;
        let t = start_time(me).unwrap();
        assert!(alive(me, t));
        assert!(!alive(me, t + 1));
        assert!(!alive(0, t));
    }

    #[test]
    fn a_reaped_child_is_gone() {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id() as i32;
        let t = start_time(pid).unwrap_or(0);
        c.wait().unwrap();
        assert!(wait_gone(pid, t, Duration::from_secs(1)));
    }

    #[test]
    fn fifo_wait_is_seen() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        let cf = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(cf.as_ptr(), 0o600) }, 0);
        let mut c = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("echo x > {}", f.display()))
            .spawn()
            .unwrap();
        let pid = c.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !waiting_on_fifo(pid) {
            assert!(Instant::now() < deadline, "never saw the FIFO wait");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::fs::read(&f).unwrap();
        c.wait().unwrap();
    }
}
