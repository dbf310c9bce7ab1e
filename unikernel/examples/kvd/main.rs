//! `kvd`: a key-value server speaking the Redis protocol (RESP2), so
//! `redis-cli`, `redis-benchmark` and Redis client libraries talk to it.
//!
//! ```sh
//! duet run kvd --net tap=tap0 --env IP=10.0.0.2/24 [--disk kvd.img] [--env APPENDFSYNC=always]
//! redis-cli -h 10.0.0.2 set colour blue
//! ```
//!
//! Commands: `PING ECHO GET SET (EX PX EXAT PXAT NX XX KEEPTTL GET) DEL
//! EXISTS INCR DECR INCRBY DECRBY MGET MSET EXPIRE PEXPIRE TTL PTTL
//! PERSIST TYPE DBSIZE KEYS SCAN FLUSHALL INFO CONFIG GET COMMAND SELECT
//! BGREWRITEAOF QUIT`, with redis-server's replies and errors.
//!
//! With a `--disk` every write goes to an append-only log on it, replayed
//! at start (`aof.rs`); without one the data lives in memory. A read-only
//! disk (`,ro`) is loaded and then served from memory. The guest marks
//! `duet::snapshot_point()` once its data is loaded, so `duet template
//! create` captures a warm store and `duet run --template` starts ready
//! copies of it. Settings come from `--env` (`config.rs`).
#![no_std]
#![no_main]

extern crate alloc;

mod admin;
mod aof;
mod commands;
mod config;
mod crc;
mod db;
mod glob;
mod inline;
mod keys;
mod record;
mod reply;
mod resp;
mod server;
mod state;
mod strings;
mod superblock;

use aof::{Log, Opened};
use config::Config;
use db::Db;
use duet::block::Disk;
use duet::net::TcpListener;
use state::{mono_ns, now_ms, Persistence, State, Stats};

duet::main!(main);

fn pick_disk(cfg: &Config) -> Result<Option<Disk>, alloc::string::String> {
    match cfg.disk {
        Some(name) => duet::block::disk(name)
            .map(Some)
            .ok_or_else(|| alloc::format!("KVD_DISK={name}: no such disk (see --disk ...,name=)")),
        None => Ok(duet::block::disks().next()),
    }
}

/// Loads the data: replays the log of the disk, if there is one.
fn load(
    cfg: &Config,
    db: &mut Db,
) -> Result<(Option<Log>, Persistence, Option<&'static str>), alloc::string::String> {
    let Some(disk) = pick_disk(cfg)? else {
        duet::println!("kvd: no disk: the data lives in memory");
        return Ok((None, Persistence::Memory, None));
    };
    let name = disk.name();
    let opened = Log::open(disk, cfg.fsync, cfg.crash_at, db, now_ms(), mono_ns())
        .map_err(|e| alloc::format!("disk {name}: {e}"))?;
    Ok(match opened {
        Opened::Log(log) => {
            duet::println!(
                "kvd: {} keys from the log on {name} ({} records, {} bytes; appendfsync {})",
                db.len(),
                log.stats.replayed,
                log.len(),
                cfg.fsync.name()
            );
            (Some(log), Persistence::Log, Some(name))
        }
        Opened::ReadOnly(n) => {
            duet::println!(
                "kvd: {} keys from the log on {name} ({n} records); the disk is read-only: changes stay in memory",
                db.len()
            );
            (None, Persistence::ReadOnly, Some(name))
        }
    })
}

fn main() -> i32 {
    let cfg = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            duet::println!("kvd: {e}");
            return 2;
        }
    };
    let mut db = Db::new(duet::rand::u64());
    let (mut log, persistence, disk) = match load(&cfg, &mut db) {
        Ok(l) => l,
        Err(e) => {
            duet::println!("kvd: {e}");
            return 2;
        }
    };
    // The warm point: a template taken here starts with the data loaded.
    if duet::snapshot_point() {
        duet::println!(
            "kvd: started from a template (clone {}) with {} keys",
            duet::identity().clone_index,
            db.len()
        );
        // Another run may have written the disk since the template was made.
        if let Some(l) = &mut log {
            if !l.still_current().unwrap_or(false) {
                duet::println!("kvd: the log changed since the template was made; reloading it");
                db = Db::new(duet::rand::u64());
                log = match load(&cfg, &mut db) {
                    Ok((l, _, _)) => l,
                    Err(e) => {
                        duet::println!("kvd: {e}");
                        return 2;
                    }
                };
            }
        }
    }
    let info = match duet::net::init() {
        Ok(i) => i,
        Err(e) => {
            duet::println!("kvd: {e}");
            return 2;
        }
    };
    let mut listener = match TcpListener::bind_with(cfg.port, cfg.backlog, config::SOCKET_BUFFER) {
        Ok(l) => l,
        Err(e) => {
            duet::println!("kvd: cannot listen on port {}: {e}", cfg.port);
            return 2;
        }
    };
    duet::println!(
        "kvd: ready on {}:{} (maxclients {}, maxmemory {} bytes, {} network hypercalls)",
        info.ip.0,
        cfg.port,
        cfg.maxclients,
        cfg.maxmemory,
        if info.single_frame {
            "single-frame"
        } else {
            "batched"
        }
    );
    let mut st = State {
        db,
        log,
        persistence,
        disk,
        cfg,
        stats: Stats::default(),
        started_ns: mono_ns(),
        clients: 0,
        compact_failed_at: None,
    };
    match server::run(&mut st, &mut listener) {
        Ok(()) => 0,
        Err(e) => {
            duet::println!("kvd: {e}; stopping");
            3
        }
    }
}
