//! What every command can reach: the keyspace, the log, the settings and
//! the counters `INFO` shows.

use crate::aof::Log;
use crate::config::Config;
use crate::db::Db;
use crate::record::Record;

/// Counters.
#[derive(Default)]
pub struct Stats {
    /// Commands executed.
    pub commands: u64,
    /// Connections accepted.
    pub connections: u64,
    /// Connections turned away (`maxclients`).
    pub rejected: u64,
    /// Error replies sent.
    pub errors: u64,
    /// Reads that found their key.
    pub hits: u64,
    /// Reads that did not.
    pub misses: u64,
}

/// Where the data persists.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// No disk: memory only.
    Memory,
    /// A read-only disk was loaded; changes stay in memory.
    ReadOnly,
    /// The log on a writable disk.
    Log,
}

/// The server's state.
pub struct State {
    /// The keyspace.
    pub db: Db,
    /// The log, with a writable disk.
    pub log: Option<Log>,
    /// Where the data persists.
    pub persistence: Persistence,
    /// The disk's name, with one.
    pub disk: Option<&'static str>,
    /// Settings.
    pub cfg: Config,
    /// Counters.
    pub stats: Stats,
    /// Guest monotonic ns at start.
    pub started_ns: u64,
    /// Connections open now.
    pub clients: usize,
    /// The log length at which an automatic compaction last failed (no
    /// retry until it has grown by `compact_min`).
    pub compact_failed_at: Option<u64>,
}

/// Wall-clock ms (exitless: the TSC and the clock page).
pub fn now_ms() -> u64 {
    duet::time::wall_ns() / 1_000_000
}

/// Guest monotonic ns.
pub fn mono_ns() -> u64 {
    duet::time::monotonic_ns()
}

impl State {
    /// Logs a write (nothing without a writable disk).
    pub fn log(&mut self, rec: Record) {
        if let Some(l) = &mut self.log {
            l.append(&rec);
        }
    }

    /// Logs writes that stand or fall together (one record).
    pub fn log_group(&mut self, recs: &[Record]) {
        if let Some(l) = &mut self.log {
            l.append_group(recs);
        }
    }

    /// Heap bytes in use.
    pub fn used_memory() -> u64 {
        duet::allocator::stats().0 as u64
    }

    /// Compacts the log now; returns an error message on failure.
    pub fn compact(&mut self) -> Result<(), alloc::string::String> {
        let Some(log) = &mut self.log else {
            return Err("kvd has no writable disk to rewrite the log on".into());
        };
        log.compact(&self.db, now_ms(), mono_ns())
            .map_err(|e| alloc::format!("log rewrite failed: {e}"))
    }
}
