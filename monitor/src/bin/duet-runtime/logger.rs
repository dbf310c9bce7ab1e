//! Logs to `--log FILE` (as JSON lines with `--log-format json`, the way
//! runc writes them and containerd's shim reads them back) or to stderr.
//! Quiet by default: warnings and errors only, everything with `--debug`
//! or `DUET_RUNTIME_LOG=debug`.

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;

struct Logger {
    sink: Mutex<Sink>,
    json: bool,
    level: log::LevelFilter,
}

enum Sink {
    File(File),
    Stderr,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let level = r.level().as_str().to_ascii_lowercase();
        let line = if self.json {
            serde_json::json!({
                "level": level,
                "msg": r.args().to_string(),
                "time": crate::state::rfc3339_now(),
            })
            .to_string()
        } else {
            format!("duet-runtime: {level}: {}", r.args())
        };
        let Ok(mut sink) = self.sink.lock() else {
            return;
        };
        // A log line that cannot be written is dropped: logging must not fail a command.
        let _ = match &mut *sink {
            Sink::File(f) => writeln!(f, "{line}"),
            Sink::Stderr => writeln!(std::io::stderr(), "{line}"),
        };
    }

    fn flush(&self) {}
}

/// Installs the logger. Returns whether logs go to a file (so errors are
/// also printed to stderr for the engine).
pub fn init(g: &crate::args::Global) -> bool {
    let level = if g.debug {
        log::LevelFilter::Debug
    } else {
        std::env::var("DUET_RUNTIME_LOG")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(log::LevelFilter::Warn)
    };
    let file = g.log.as_ref().and_then(|p| {
        File::options()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| eprintln!("duet-runtime: cannot open log {}: {e}", p.display()))
            .ok()
    });
    let to_file = file.is_some();
    let logger = Logger {
        sink: Mutex::new(file.map_or(Sink::Stderr, Sink::File)),
        json: g.log_json && to_file,
        level,
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
    to_file
}
