//! Server commands: `INFO`, `CONFIG GET`, `COMMAND`, `SELECT`,
//! `BGREWRITEAOF`.

use crate::aof::Fsync;
use crate::glob;
use crate::reply::{self, error_bytes, wrong_arity, NOT_INT};
use crate::resp::parse_i64;
use crate::state::{mono_ns, Persistence, State};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

/// `INFO [section ...]`: a few real fields per section, in Redis's format.
pub fn info(st: &mut State, a: &[&[u8]], out: &mut Vec<u8>) {
    let want = |name: &str| {
        a.len() == 1
            || a[1..].iter().any(|s| {
                s.eq_ignore_ascii_case(name.as_bytes())
                    || s.eq_ignore_ascii_case(b"all")
                    || s.eq_ignore_ascii_case(b"everything")
                    || s.eq_ignore_ascii_case(b"default")
            })
    };
    let mut t = String::new();
    let section = |t: &mut String, name: &str, body: String| {
        if want(name) {
            if !t.is_empty() {
                t.push_str("\r\n");
            }
            let _ = write!(t, "# {name}\r\n{body}");
        }
    };
    let up = mono_ns().saturating_sub(st.started_ns) / 1_000_000_000;
    let net = duet::net::init().ok();
    section(
        &mut t,
        "Server",
        format!(
            "redis_version:7.0.0\r\nkvd_version:{}\r\nredis_mode:standalone\r\nos:Duet unikernel\r\narch_bits:64\r\nmultiplexing_api:smoltcp\r\ntcp_port:{}\r\nuptime_in_seconds:{up}\r\nuptime_in_days:{}\r\nnet_transport:{}\r\n",
            env!("CARGO_PKG_VERSION"),
            st.cfg.port,
            up / 86400,
            net.map_or("none", |n| if n.single_frame { "single-frame" } else { "batched" }),
        ),
    );
    section(
        &mut t,
        "Clients",
        format!(
            "connected_clients:{}\r\nmaxclients:{}\r\n",
            st.clients, st.cfg.maxclients
        ),
    );
    let used = State::used_memory();
    let heap = duet::rt::boot_info().heap_limit;
    section(
        &mut t,
        "Memory",
        format!(
            "used_memory:{used}\r\nused_memory_human:{:.2}M\r\nmaxmemory:{}\r\ntotal_system_memory:{heap}\r\n",
            used as f64 / f64::from(1 << 20),
            st.cfg.maxmemory
        ),
    );
    let mut p = format!(
        "loading:0\r\naof_enabled:{}\r\n",
        u8::from(st.persistence == Persistence::Log)
    );
    if let Some(log) = &st.log {
        let s = log.stats;
        let _ = write!(
            p,
            "appendfsync:{}\r\naof_current_size:{}\r\naof_base_size:{}\r\naof_rewrites:{}\r\naof_last_write_status:ok\r\nkvd_log_records_replayed:{}\r\nkvd_log_writes:{}\r\nkvd_log_flushes:{}\r\nkvd_log_capacity:{}\r\n",
            log.fsync().name(),
            log.len(),
            log.base,
            s.rewrites,
            s.replayed,
            s.writes,
            s.flushes,
            log.capacity()
        );
    }
    if let Some(d) = st.disk {
        let _ = write!(
            p,
            "kvd_disk:{d}\r\nkvd_disk_read_only:{}\r\n",
            u8::from(st.persistence == Persistence::ReadOnly)
        );
    }
    section(&mut t, "Persistence", p);
    let n = duet::net::stats();
    section(
        &mut t,
        "Stats",
        format!(
            "total_connections_received:{}\r\ntotal_commands_processed:{}\r\nrejected_connections:{}\r\nexpired_keys:{}\r\nkeyspace_hits:{}\r\nkeyspace_misses:{}\r\ntotal_error_replies:{}\r\nkvd_net_rx_frames:{}\r\nkvd_net_tx_frames:{}\r\nkvd_net_exits:{}\r\n",
            st.stats.connections,
            st.stats.commands,
            st.stats.rejected,
            st.db.expired,
            st.stats.hits,
            st.stats.misses,
            st.stats.errors,
            n.rx_frames,
            n.tx_frames,
            n.rx_calls + n.tx_calls
        ),
    );
    let keyspace = if st.db.len() > 0 {
        format!(
            "db0:keys={},expires={},avg_ttl=0\r\n",
            st.db.len(),
            st.db.expires_len()
        )
    } else {
        String::new()
    };
    section(&mut t, "Keyspace", keyspace);
    reply::bulk(out, t.as_bytes());
}

/// The parameters `CONFIG GET` knows, with their values.
fn params(st: &State) -> [(&'static str, String); 9] {
    let fsync = st.log.as_ref().map_or(Fsync::EverySec, |l| l.fsync());
    let aof = if st.persistence == Persistence::Log {
        "yes"
    } else {
        "no"
    };
    [
        ("save", String::new()),
        ("appendonly", aof.into()),
        ("appendfsync", fsync.name().into()),
        ("maxclients", format!("{}", st.cfg.maxclients)),
        ("maxmemory", format!("{}", st.cfg.maxmemory)),
        ("port", format!("{}", st.cfg.port)),
        ("proto-max-bulk-len", format!("{}", st.cfg.limits.max_bulk)),
        (
            "auto-aof-rewrite-percentage",
            format!("{}", st.cfg.compact_percent),
        ),
        (
            "auto-aof-rewrite-min-size",
            format!("{}", st.cfg.compact_min),
        ),
    ]
}

fn unknown_subcommand(out: &mut Vec<u8>, sub: &[u8], cmd: &str) {
    let mut m = b"ERR unknown subcommand '".to_vec();
    m.extend_from_slice(sub);
    m.extend_from_slice(format!("'. Try {cmd} HELP.").as_bytes());
    error_bytes(out, &m);
}

/// `CONFIG GET pattern ...` (what clients and redis-benchmark ask).
pub fn config(st: &mut State, a: &[&[u8]], out: &mut Vec<u8>) {
    let sub = a[1];
    if sub.eq_ignore_ascii_case(b"set") {
        return reply::error(
            out,
            "ERR kvd does not change settings at run time; pass them with --env at start",
        );
    }
    if !sub.eq_ignore_ascii_case(b"get") {
        return unknown_subcommand(out, sub, "CONFIG");
    }
    if a.len() < 3 {
        return wrong_arity(out, "config|get");
    }
    let params = params(st);
    let mut taken = [false; 9];
    let mut hits: Vec<(&[u8], &str)> = Vec::new();
    for &pat in &a[2..] {
        for (i, (name, value)) in params.iter().enumerate() {
            if taken[i] {
                continue;
            }
            if name.as_bytes().eq_ignore_ascii_case(pat) {
                // An exact name comes back as it was asked.
                hits.push((pat, value));
            } else if glob::matches(&pat.to_ascii_lowercase(), name.as_bytes()) {
                hits.push((name.as_bytes(), value));
            } else {
                continue;
            }
            taken[i] = true;
        }
    }
    reply::array(out, hits.len() * 2);
    for (name, value) in hits {
        reply::bulk(out, name);
        reply::bulk(out, value.as_bytes());
    }
}

/// `COMMAND`: clients ask for `DOCS` (redis-cli) or a count (`count`, the
/// commands the table holds); kvd has no documents to give, which they
/// accept.
pub fn command(_: &mut State, a: &[&[u8]], out: &mut Vec<u8>, count: usize) {
    match a.get(1) {
        None => reply::array(out, 0),
        Some(s) if s.eq_ignore_ascii_case(b"docs") => reply::array(out, 0),
        Some(s) if s.eq_ignore_ascii_case(b"count") => reply::int(out, count as i64),
        Some(s) => unknown_subcommand(out, s, "COMMAND"),
    }
}

/// `SELECT 0` works; kvd has one database.
pub fn select(_: &mut State, a: &[&[u8]], out: &mut Vec<u8>) {
    match parse_i64(a[1]) {
        None => reply::error(out, NOT_INT),
        Some(0) => reply::simple(out, "OK"),
        Some(_) => reply::error(out, "ERR DB index is out of range"),
    }
}

/// `BGREWRITEAOF`: compacts the log now (in the foreground: kvd has one
/// thread), then answers as Redis does when it starts one.
pub fn bgrewriteaof(st: &mut State, _: &[&[u8]], out: &mut Vec<u8>) {
    match st.compact() {
        Ok(()) => reply::simple(out, "Background append only file rewriting started"),
        Err(m) => reply::error(out, &format!("ERR {m}")),
    }
}
