//! Live guests for the snapshot section: monitors started in one process
//! group of their own, their stdout merged into one pipe the harness reads
//! line by line, their memory read from `/proc`, and all of them killed
//! (by that group's id) when the [`Group`] is dropped, also on error.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufRead, BufReader, PipeWriter};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Processes started together; killed together when dropped.
pub struct Group {
    /// The group's id: the first process's pid.
    pgid: Option<i32>,
    /// The processes the harness started itself (to reap them).
    children: Vec<Child>,
    /// Write end of the shared stdout pipe, handed to each process.
    writer: Option<PipeWriter>,
    /// Lines read from the pipe by a reader thread.
    lines: Receiver<String>,
    /// Where the processes' stderr goes, for error messages.
    log: PathBuf,
}

impl Group {
    /// An empty group whose processes' stderr goes to `log`.
    pub fn new(log: &Path) -> Result<Group> {
        let (reader, writer) = std::io::pipe().context("creating a pipe")?;
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Group {
            pgid: None,
            children: Vec::new(),
            writer: Some(writer),
            lines: rx,
            log: log.to_path_buf(),
        })
    }

    /// Starts `cmd` in the group (stdin closed, stdout into the shared
    /// pipe, stderr appended to the log); returns its pid.
    pub fn spawn(&mut self, cmd: &mut Command) -> Result<u32> {
        let w = self.writer.as_ref().context("the group is closed")?;
        let out = w.try_clone().context("duplicating the pipe")?;
        let err = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(self.pgid.unwrap_or(0));
        let child = cmd.spawn().with_context(|| format!("cannot run {cmd:?}"))?;
        let pid = child.id();
        self.pgid.get_or_insert(pid as i32);
        self.children.push(child);
        Ok(pid)
    }

    /// Waits until `n` lines starting with `prefix` have been printed (by
    /// all the processes together), for at most `limit`.
    pub fn wait_lines(&mut self, prefix: &str, n: usize, limit: Duration) -> Result<()> {
        let end = Instant::now() + limit;
        let mut seen = 0;
        while seen < n {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => seen += 1,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    bail!(
                        "only {seen} of {n} `{prefix}` lines after {:.1} s; exited: [{}]; \
                         stderr tail:\n{}",
                        limit.as_secs_f64(),
                        self.exited().join(", "),
                        self.log_tail()
                    )
                }
            }
        }
        Ok(())
    }

    /// Statuses of the harness's own children that have already ended.
    fn exited(&mut self) -> Vec<String> {
        self.children
            .iter_mut()
            .filter_map(|c| Some(format!("{} {}", c.id(), c.try_wait().ok()??)))
            .collect()
    }

    /// The last lines of the stderr log.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// Every live process in the group (clones the monitor started too).
    pub fn members(&self) -> Vec<u32> {
        let Some(pgid) = self.pgid else {
            return Vec::new();
        };
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| live_group(*pid) == Some(pgid))
            .collect()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.writer = None;
        if let Some(pgid) = self.pgid {
            // SAFETY: kill(2) with a negative id signals only the group
            // this harness created; it touches no memory.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        // Clones are not our children: wait (a little) until they are gone.
        let end = Instant::now() + Duration::from_secs(5);
        while !self.members().is_empty() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The process group of `pid` (field 5 of `/proc/PID/stat`), or `None`
/// when it is gone or a zombie (waiting to be reaped, holding no memory).
fn live_group(pid: u32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: fields restart after ')'.
    let mut f = stat[stat.rfind(')')? + 1..].split_whitespace();
    if matches!(f.next()?, "Z" | "X") {
        return None;
    }
    f.nth(1)?.parse().ok()
}

/// A process's memory: resident (RSS) and proportional (PSS) set, in KiB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Memory {
    /// Resident set size.
    pub rss_kib: f64,
    /// Proportional set size: shared pages divided among their users.
    pub pss_kib: f64,
}

/// Reads `pid`'s RSS and PSS from `/proc/PID/smaps_rollup`.
pub fn memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_rollup(&text).with_context(|| format!("no Rss/Pss lines in {path}"))
}

/// The `Rss:` and `Pss:` lines of a `smaps_rollup` text.
fn parse_rollup(text: &str) -> Option<Memory> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let v = l.strip_prefix(name)?.trim().strip_suffix("kB")?;
            v.trim().parse::<f64>().ok()
        })
    };
    Some(Memory {
        rss_kib: field("Rss:")?,
        pss_kib: field("Pss:")?,
    })
}

/// `MemAvailable` from `/proc/meminfo`, in KiB.
pub fn mem_available_kib() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    text.lines()
        .find_map(|l| {
            let v = l.strip_prefix("MemAvailable:")?.trim().strip_suffix("kB")?;
            v.trim().parse().ok()
        })
        .context("no MemAvailable line in /proc/meminfo")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollup() {
        let t = "55d0-7ffd ---p 00000000 00:00 0  [rollup]\nRss:                3688 kB\n\
                 Pss:                 480 kB\nPss_Anon:            400 kB\n";
        assert_eq!(
            parse_rollup(t),
            Some(Memory {
                rss_kib: 3688.0,
                pss_kib: 480.0
            })
        );
        assert_eq!(parse_rollup("Rss: 1 kB\n"), None);
    }

    #[test]
    fn own_group() {
        let me = std::process::id();
        // SAFETY: getpgrp(2) has no preconditions.
        let pgrp = unsafe { libc::getpgrp() };
        assert_eq!(live_group(me), Some(pgrp));
    }
}
