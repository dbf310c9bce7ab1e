//! The progress line on stderr: rewritten in place on a terminal, one line
//! per step otherwise (so logs stay short).

use std::io::{IsTerminal, Write};

/// Progress of one step of a section.
pub struct Progress {
    label: String,
    total: usize,
    tty: bool,
}

impl Progress {
    /// Starts a step of `total` units.
    pub fn new(label: impl Into<String>, total: usize) -> Progress {
        let p = Progress {
            label: label.into(),
            total,
            tty: std::io::stderr().is_terminal(),
        };
        if !p.tty {
            eprintln!("bench: {} ({} runs)", p.label, p.total);
        }
        p.show(0);
        p
    }

    /// Shows that `done` units are done.
    pub fn show(&self, done: usize) {
        if self.tty {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[Kbench: {} {done}/{}", self.label, self.total);
            let _ = e.flush();
        }
    }

    /// Erases the progress line (on a terminal).
    pub fn clear() {
        if std::io::stderr().is_terminal() {
            eprint!("\r\x1b[K");
        }
    }
}
