//! `kvd`, the Redis-protocol server, against real Redis tools: redis-cli
//! replies compared with redis-server's for the same script, redis-benchmark
//! with 100 clients, hostile input, and template clones. Each test runs in
//! its own network namespace (root, /dev/net/tun); disk durability is in
//! `kvd_disk.rs`.

use duet_tests::netns::Netns;
use duet_tests::redis::{
    guest_net_opts, kvd_addr, redis_benchmark, redis_cli, start_kvd, Client, RedisServer, Reply,
};
use duet_tests::{image, paths, temp_dir, Background};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

/// Every command kvd serves, with its options and errors, one per line;
/// run through redis-cli against kvd and redis-server, the outputs must be
/// equal. Keys stay few (SCAN returns everything at once) and the patterns
/// match one key each, so hash-table order cannot show.
const SCRIPT: &str = include_str!("kvd_script.txt");

#[test]
fn every_command_replies_as_redis_server_does() {
    let ns = Netns::create();
    let _kvd = start_kvd(&ns, &[]);
    let redis = RedisServer::start(&ns, 6380, &[]);
    let want = redis_cli(&ns, redis.addr, SCRIPT);
    let got = redis_cli(&ns, kvd_addr(), SCRIPT);
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    for (i, (w, g)) in w.iter().zip(&g).enumerate() {
        assert_eq!(
            g, w,
            "reply line {i} differs; redis-server:\n{want}\nkvd:\n{got}"
        );
    }
    assert_eq!(g.len(), w.len(), "redis-server:\n{want}\nkvd:\n{got}");
    // The script ran: not an empty comparison.
    assert!(want.contains("ERR unknown command 'FOO'"), "{want}");
}

/// Sends `bytes`, shuts the write side, and returns all the server sent
/// back before closing.
fn exchange(ns: &Netns, addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut c = Client::connect(ns, addr);
    c.send_raw(bytes);
    let _ = c.stream().shutdown(Shutdown::Write);
    c.read_to_close()
}

#[test]
fn malformed_requests_get_redis_server_errors() {
    let ns = Netns::create();
    let _kvd = start_kvd(&ns, &[]);
    let redis = RedisServer::start(&ns, 6380, &[]);
    let mut cases: Vec<Vec<u8>> = [
        "*abc\r\n",
        "*1\r\n$1073741824\r\n",
        "*1\r\nx3\r\n",
        "$3\r\n",
        "SET \"a b\r\n",
        "*-1\r\nPING\r\n",
        "*0\r\nPING\r\n",
        "\r\nPING\r\n",
        "*1\r\n$-1\r\n",
        "*1\r\n$abc\r\n",
        "*1\r\n$4\r\nPINGxx*1\r\n$4\r\nPING\r\n",
        "PING\nPING\n",
        "  PING   a  \r\n",
        "*1 \r\n$4\r\nPING\r\n",
        "*01\r\n$4\r\nPING\r\n",
        "*1\r\n$+4\r\nPING\r\n",
        "PING \"a\\x41\" 'b c'\r\nECHO \"a\\x41\\n\"\r\nECHO 'it\\'s'\r\n",
        "ECHO \"a\"b\r\n",
        "*1\r\n$4\r\nPING\r\n*1\r\n$4",
        "*2\r\n$4\r\nECHO\r\n$0\r\n\r\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    cases.push(vec![b'A'; 70_000]);
    cases.push([b"*1".as_slice(), &[b'1'; 70_000]].concat());
    cases.push([b"*1\r\n$1".as_slice(), &[b'1'; 70_000]].concat());
    cases.push(format!("*1\r\n${}\r\n", "9".repeat(40)).into_bytes());
    for case in &cases {
        let want = exchange(&ns, redis.addr, case);
        let got = exchange(&ns, kvd_addr(), case);
        let shown = String::from_utf8_lossy(&case[..case.len().min(60)]);
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "request {shown:?}"
        );
    }
}

/// The value of `field` in an `INFO` reply.
fn info_field(info: &str, field: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in INFO:\n{info}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn keys_scan_and_info_over_many_keys() {
    let ns = Netns::create();
    let _kvd = start_kvd(&ns, &[]);
    let mut c = Client::connect(&ns, kvd_addr());
    for i in 0..500 {
        c.send(&["SET", &format!("key:{i}"), "v"]);
    }
    c.send(&["EXPIRE", "key:7", "1000"]);
    for _ in 0..501 {
        c.read();
    }
    let Reply::Array(Some(all)) = c.call(&["KEYS", "*"]) else {
        panic!("KEYS * is not an array")
    };
    let mut keys: Vec<String> = all.iter().map(Reply::text).collect();
    keys.sort();
    let mut want: Vec<String> = (0..500).map(|i| format!("key:{i}")).collect();
    want.sort();
    assert_eq!(keys, want);
    // A full SCAN iteration in small steps visits every key exactly once.
    let (mut cursor, mut seen) = ("0".to_string(), Vec::new());
    loop {
        let Reply::Array(Some(r)) = c.call(&["SCAN", &cursor, "COUNT", "7"]) else {
            panic!("SCAN reply is not an array")
        };
        cursor = r[0].text();
        let Reply::Array(Some(batch)) = &r[1] else {
            panic!("SCAN keys are not an array")
        };
        seen.extend(batch.iter().map(Reply::text));
        if cursor == "0" {
            break;
        }
    }
    seen.sort();
    assert_eq!(seen, want);
    let info = c.call(&["INFO"]).text();
    assert_eq!(info_field(&info, "connected_clients"), 1, "{info}");
    assert!(info.contains("db0:keys=500,expires=1,"), "{info}");
    assert!(info_field(&info, "used_memory") > 500 * 8, "{info}");
    assert!(
        info_field(&info, "total_commands_processed") >= 503,
        "{info}"
    );
    assert!(info.contains("uptime_in_seconds:"), "{info}");
    let only = c.call(&["INFO", "keyspace"]).text();
    assert!(
        only.starts_with("# Keyspace\r\n") && !only.contains("# Server"),
        "{only}"
    );
}

#[test]
fn redis_benchmark_with_100_clients_then_get_sees_the_last_values() {
    let ns = Netns::create();
    let _kvd = start_kvd(&ns, &[]);
    let addr = kvd_addr();
    let tests = "ping,set,get,incr,mset";
    let out = redis_benchmark(&ns, addr, &["-n", "20000", "-c", "100", "-q", "-t", tests]);
    let pipelined = redis_benchmark(
        &ns,
        addr,
        &[
            "-n", "20000", "-c", "100", "-P", "16", "-q", "-t", "set,incr",
        ],
    );
    for t in [
        "PING_INLINE",
        "PING_MBULK",
        "SET",
        "GET",
        "INCR",
        "MSET (10 keys)",
    ] {
        assert!(
            out.contains(&format!("{t}: ")) && out.contains("requests per second"),
            "{out}"
        );
    }
    assert!(pipelined.contains("INCR: "), "{pipelined}");
    let mut c = Client::connect(&ns, addr);
    // Every INCR of both runs landed exactly once.
    assert_eq!(c.call(&["GET", "counter:__rand_int__"]).text(), "40000");
    assert_eq!(c.call(&["GET", "key:__rand_int__"]).bytes().len(), 3);
    let info = c.call(&["INFO", "stats"]).text();
    // redis-benchmark does not show error replies: the server counts them.
    assert_eq!(info_field(&info, "total_error_replies"), 0, "{info}");
}

#[test]
fn hostile_clients_get_errors_and_others_are_still_served() {
    let ns = Netns::create();
    let kvd = start_kvd(&ns, &["--env", "KVD_MAXCLIENTS=300"]);
    let addr = kvd_addr();
    let mut keeper = Client::connect(&ns, addr);
    assert_eq!(
        keeper.call(&["SET", "survivor", "yes"]),
        Reply::Simple("OK".into())
    );
    // A bulk length of 1 GiB is refused before anything is buffered, and
    // the closed connection takes the rest of the client's bytes (2 MiB)
    // without stalling it.
    let mut req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1073741824\r\n".to_vec();
    req.extend(std::iter::repeat_n(b'z', 2 << 20));
    let mut c = Client::connect(&ns, addr);
    c.stream()
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    c.send_raw(&req);
    let _ = c.stream().shutdown(Shutdown::Write);
    assert_eq!(
        c.read_to_close(),
        b"-ERR Protocol error: invalid bulk length\r\n"
    );
    // Arguments adding up past KVD_MAX_REQUEST (1 MiB by default).
    let big = vec![b'x'; 600_000];
    let mut req = b"*5\r\n$4\r\nMSET\r\n$1\r\na\r\n$600000\r\n".to_vec();
    req.extend_from_slice(&big);
    req.extend_from_slice(b"\r\n$1\r\nb\r\n$600000\r\n");
    let r = exchange(&ns, addr, &req);
    assert_eq!(
        String::from_utf8_lossy(&r),
        "-ERR Protocol error: request larger than 1048576 bytes (KVD_MAX_REQUEST)\r\n"
    );
    // Malformed RESP.
    let r = exchange(&ns, addr, b"*2\r\n$3\r\nGET\r\n#oops\r\n");
    assert_eq!(r, b"-ERR Protocol error: expected '$', got '#'\r\n");
    // Clients that vanish in the middle of a command, small and large.
    for partial in [
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\nabc".to_vec(),
        [
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$900000\r\n".as_slice(),
            &big,
        ]
        .concat(),
    ] {
        let mut c = Client::connect(&ns, addr);
        c.send_raw(&partial);
        drop(c);
    }
    // 1,000 connections opened at once: each is served, told the server is
    // full, or refused; none hangs.
    let outcomes = ns.run(|| {
        let threads: Vec<_> = (0..10)
            .map(|_| {
                std::thread::spawn(move || {
                    let conns: Vec<_> = (0..100)
                        .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
                        .collect();
                    conns.into_iter().map(ping_outcome).collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect::<Vec<_>>()
    });
    let count = |o: &str| outcomes.iter().filter(|x| **x == o).count();
    let (pong, full, refused) = (count("pong"), count("full"), count("refused"));
    eprintln!("1000 connections: {pong} served, {full} told the server is full, {refused} refused");
    assert_eq!(pong + full + refused, 1000, "{outcomes:?}");
    assert!(pong >= 200, "only {pong} of 1000 served");
    // kvd serves on, its data intact.
    assert_eq!(keeper.call(&["GET", "survivor"]).text(), "yes");
    let mut fresh = Client::connect(&ns, addr);
    assert_eq!(fresh.call(&["PING"]), Reply::Simple("PONG".into()));
    assert_eq!(fresh.call(&["GET", "k"]), Reply::Bulk(None));
    let info = fresh.call(&["INFO", "stats"]).text();
    assert!(
        info_field(&info, "rejected_connections") as usize >= full,
        "{info}"
    );
    let o = kvd.kill();
    assert!(
        !o.stderr.contains("panicked") && !o.stderr.contains("aborted"),
        "{o:#?}"
    );
}

/// What became of one of many simultaneous connections after a PING.
fn ping_outcome(c: std::io::Result<TcpStream>) -> &'static str {
    let Ok(mut s) = c else { return "refused" };
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    if s.write_all(b"PING\r\n").is_err() {
        return "refused";
    }
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.ends_with(b"\r\n") {
                    break;
                }
            }
            // A reset: refused after the handshake.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return "refused",
            Err(e) => {
                return if e.kind() == std::io::ErrorKind::WouldBlock {
                    "hung"
                } else {
                    "error"
                }
            }
        }
    }
    match got.as_slice() {
        b"+PONG\r\n" => "pong",
        b"-ERR max number of clients reached\r\n" => "full",
        b"" => "refused",
        _ => "garbled",
    }
}

#[test]
fn template_clones_answer_get_for_the_preloaded_keys() {
    let dir = temp_dir("kvd-template");
    let disk = dir.join("kvd.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let disk_s = disk.to_str().unwrap();
    let ns0 = Netns::create();
    {
        let kvd = start_kvd(&ns0, &["--disk", disk_s, "--env", "APPENDFSYNC=always"]);
        let mut c = Client::connect(&ns0, kvd_addr());
        for i in 0..100 {
            c.send(&["SET", &format!("pre:{i}"), &format!("value {i}")]);
        }
        for _ in 0..100 {
            assert_eq!(c.read(), Reply::Simple("OK".into()));
        }
        kvd.kill();
    }
    // The template loads the log once, from the disk attached read-only.
    let store = dir.join("store");
    let img = image("kvd");
    let mut create = ns0.command(paths().bin.to_str().unwrap());
    create
        .args(["template", "create", "kvd-warm"])
        .arg(&img)
        .arg("--store")
        .arg(&store)
        .args(["--mem", "128M", "--disk", &format!("{disk_s},ro")])
        .args(guest_net_opts());
    let o = duet_tests::run_cmd(create, Duration::from_secs(60));
    o.expect_status(0)
        .expect_stdout("kvd: 100 keys from the log on disk0")
        .expect_stderr("template `kvd-warm` created");
    drop(ns0);
    // Each clone needs its own TAP: `--clone-netns` puts clone I in
    // namespace PREFIX + I, each with its tap0.
    let prefix = format!("duet-kvdc-{}-", std::process::id());
    let nss: Vec<Netns> = (0..2)
        .map(|i| Netns::named(&format!("{prefix}{i}")))
        .collect();
    let clones = Background::start(&[
        "run",
        "--template",
        "kvd-warm",
        "--store",
        store.to_str().unwrap(),
        "--clones",
        "2",
        "--clone-netns",
        &prefix,
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while clones.stdout().matches("kvd: ready").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the clones did not come up: {}",
            clones.stdout()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        clones.stdout().matches("started from a template").count(),
        2
    );
    for (i, ns) in nss.iter().enumerate() {
        let mut c = Client::connect(ns, kvd_addr());
        for k in [0, 42, 99] {
            assert_eq!(
                c.call(&["GET", &format!("pre:{k}")]).text(),
                format!("value {k}")
            );
        }
        assert_eq!(c.call(&["DBSIZE"]), Reply::Int(100));
        // Each clone's changes are its own.
        assert_eq!(
            c.call(&["SET", "pre:0", &format!("clone {i}")]),
            Reply::Simple("OK".into())
        );
    }
    for (i, ns) in nss.iter().enumerate() {
        let mut c = Client::connect(ns, kvd_addr());
        assert_eq!(c.call(&["GET", "pre:0"]).text(), format!("clone {i}"));
    }
}
