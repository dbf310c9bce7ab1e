//! kvd's settings, from the environment (`duet run --env K=V`).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `PORT` | 6379 | TCP port |
//! | `APPENDFSYNC` | `everysec` | `always`, `everysec` or `no`, as in Redis |
//! | `KVD_DISK` | the first disk | the disk (by name) holding the log |
//! | `KVD_MAXCLIENTS` | from `--mem` (256 at 64 MiB) | connections served at once |
//! | `KVD_MAXMEMORY` | half the heap limit | bytes in use above which writes get `-OOM` |
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

/// What one connection may cost in heap, for the default `maxclients`:
/// socket buffers (2 × 16 KiB) plus request and reply buffers.
pub const PER_CLIENT: u64 = 64 * 1024;

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
        let maxmemory = size("KVD_MAXMEMORY", heap / 2)?;
        let max_request = size("KVD_MAX_REQUEST", 1 << 20)?.clamp(1024, 1 << 30) as usize;
        Ok(Config {
            port,
            fsync,
            disk: duet::env::var("KVD_DISK"),
            maxclients,
            maxmemory,
            limits: Limits {
                max_args: 1024 * 1024,
                max_bulk: max_request as u64,
                max_request,
            },
            input_budget: ((heap / 8) as usize).max(max_request),
            compact_percent: size("KVD_COMPACT_PERCENT", 100)?,
            compact_min: size("KVD_COMPACT_MIN", 1 << 20)?,
            crash_at: duet::env::var("KVD_CRASH_AT"),
        })
    }
}
