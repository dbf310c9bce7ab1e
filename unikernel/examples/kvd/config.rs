//! kvd's settings, from the environment (`duet run --env K=V`).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `PORT` | 6379 | TCP port |
//! | `APPENDFSYNC` | `everysec` | `always`, `everysec` or `no`, as in Redis |
//! | `KVD_DISK` | the first disk | the disk (by name) holding the log |
//! | `KVD_MAXCLIENTS` | from `--mem` (256 at 64 MiB) | connections served at once |
//! | `KVD_MAXMEMORY` | what connections leave of the heap | bytes in use above which writes get `-OOM` |
//! | `KVD_MAX_REQUEST` | 1M | largest request (and argument) |
//! | `KVD_COMPACT_PERCENT` | 100 | compact when the log exceeds the live data by this much |
//! | `KVD_COMPACT_MIN` | 1M | ... and is at least this large |
//! | `KVD_CRASH_AT` | — | stop at a compaction step (tests; see `aof.rs`) |
//!
//! Sizes take a `K`, `M` or `G` suffix (powers of 1024).

use crate::aof::Fsync;
use crate::resp::Limits;
use alloc::format;
use alloc::string::String;

/// Every setting.
pub struct Config {
    /// TCP port.
    pub port: u16,
    /// `APPENDFSYNC`.
    pub fsync: Fsync,
    /// `KVD_DISK`.
    pub disk: Option<&'static str>,
    /// Connections served at once; more are told so and closed.
    pub maxclients: usize,
    /// Listening sockets kept ready: connections that can arrive at once
    /// (smoltcp answers a SYN with a reset when none is free).
    pub backlog: usize,
    /// Heap bytes in use above which commands that add data are refused.
    pub maxmemory: u64,
    /// Request bounds.
    pub limits: Limits,
    /// Bytes of partly received requests all clients together may hold.
    pub input_budget: usize,
    /// Compaction trigger: growth over the live data, in percent.
    pub compact_percent: u64,
    /// Compaction trigger: smallest log worth compacting.
    pub compact_min: u64,
    /// `KVD_CRASH_AT`.
    pub crash_at: Option<&'static str>,
}

/// Socket buffer per direction.
pub const SOCKET_BUFFER: usize = 16 * 1024;
/// Most listening sockets kept ready.
pub const BACKLOG: usize = 256;
/// What one connection may cost in heap, for the defaults: socket buffers
/// plus request and reply buffers.
pub const PER_CLIENT: u64 = 64 * 1024;
/// Heap kept free for everything else (the log's buffers, compaction).
const RESERVE: u64 = 4 << 20;

fn size(key: &str, default: u64) -> Result<u64, String> {
    let Some(v) = duet::env::var(key) else {
        return Ok(default);
    };
    let (digits, shift) = match v.as_bytes().last() {
        Some(b'k' | b'K') => (&v[..v.len() - 1], 10),
        Some(b'm' | b'M') => (&v[..v.len() - 1], 20),
        Some(b'g' | b'G') => (&v[..v.len() - 1], 30),
        _ => (v, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{key}={v} is not a size (a number with an optional K, M or G)"))
}

impl Config {
    /// Reads the environment.
    pub fn from_env() -> Result<Config, String> {
        let port = match duet::env::var("PORT") {
            None => 6379,
            Some(p) => p
                .parse()
                .map_err(|_| format!("PORT={p} is not a port number"))?,
        };
        let fsync = match duet::env::var("APPENDFSYNC") {
            None | Some("everysec") => Fsync::EverySec,
            Some("always") => Fsync::Always,
            Some("no") => Fsync::No,
            Some(v) => return Err(format!("APPENDFSYNC={v}: use always, everysec or no")),
        };
        let heap = duet::rt::boot_info().heap_limit;
        // A quarter of the heap for connections by default.
        let clients = (heap / 4 / PER_CLIENT).clamp(16, 10_000);
        let maxclients = size("KVD_MAXCLIENTS", clients)?.max(1) as usize;
        let backlog = BACKLOG.min(maxclients);
        let max_request = size("KVD_MAX_REQUEST", 1 << 20)?.clamp(1024, 1 << 30) as usize;
        let input_budget = ((heap / 8) as usize).max(max_request);
        // The data gets what connections, the listening sockets and
        // partial requests cannot take at their most.
        let others = maxclients as u64 * PER_CLIENT
            + (backlog * 2 * SOCKET_BUFFER) as u64
            + input_budget as u64
            + RESERVE;
        let maxmemory = size("KVD_MAXMEMORY", heap.saturating_sub(others).max(heap / 8))?;
        Ok(Config {
            port,
            fsync,
            disk: duet::env::var("KVD_DISK"),
            maxclients,
            backlog,
            maxmemory,
            limits: Limits {
                max_args: 1024 * 1024,
                max_bulk: max_request as u64,
                max_request,
            },
            input_budget,
            compact_percent: size("KVD_COMPACT_PERCENT", 100)?,
            compact_min: size("KVD_COMPACT_MIN", 1 << 20)?,
            crash_at: duet::env::var("KVD_CRASH_AT"),
        })
    }
}
