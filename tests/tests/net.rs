//! Networking end to end: each test makes its own network namespace with a
//! TAP, boots a guest on it and talks to the guest from inside the
//! namespace. Needs root and /dev/net/tun.

use duet_tests::netns::{http_get, DhcpServer, Netns, GUEST_IP, GUEST_MAC, TAP};
use duet_tests::{boot, status};
use std::io::{Read, Write};
use std::net::{Shutdown, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Internet checksum.
fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn raw_socket(domain: i32, ty: i32, proto: i32) -> OwnedFd {
    // SAFETY: socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(domain, ty, proto) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd we own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Sends ICMP echo requests to the guest from a raw socket; returns how many
/// of `count` got a reply with the right id, sequence and payload.
fn ping(ns: &Netns, count: u16) -> u16 {
    ns.run(|| {
        let s = raw_socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: SO_RCVTIMEO takes a timeval, which `tv` is.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        let dst = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(
                    GUEST_IP.parse::<std::net::Ipv4Addr>().unwrap().octets(),
                ),
            },
            sin_zero: [0; 8],
        };
        let mut answered = 0;
        for seq in 0..count {
            // The first requests may go unanswered while ARP resolves.
            for _try in 0..5 {
                let mut pkt = vec![8u8, 0, 0, 0, 0x12, 0x34];
                pkt.extend_from_slice(&seq.to_be_bytes());
                pkt.extend((0..56).map(|i| (i as u8) ^ (seq as u8)));
                let c = checksum(&pkt);
                pkt[2..4].copy_from_slice(&c.to_be_bytes());
                // SAFETY: sendto with our buffer and a sockaddr_in.
                let n = unsafe {
                    libc::sendto(
                        s.as_raw_fd(),
                        pkt.as_ptr().cast(),
                        pkt.len(),
                        0,
                        (&dst as *const libc::sockaddr_in).cast(),
                        size_of::<libc::sockaddr_in>() as u32,
                    )
                };
                assert_eq!(n, pkt.len() as isize);
                let mut buf = [0u8; 1500];
                // SAFETY: recv into our buffer.
                let n = unsafe { libc::recv(s.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n <= 0 {
                    continue;
                }
                let r = &buf[..n as usize];
                let ihl = usize::from(r[0] & 0xf) * 4;
                let icmp = &r[ihl..];
                if icmp[0] == 0 && icmp[4..8] == pkt[4..8] && icmp[8..] == pkt[8..] {
                    answered += 1;
                    break;
                }
            }
        }
        answered
    })
}

fn boot_httpd(ns: &Netns) -> duet_tests::netns::Guest {
    ns.boot("httpd", &[], &[])
}

#[test]
fn ping_the_guest() {
    let ns = Netns::create();
    let g = boot_httpd(&ns);
    ns.connect(80); // waits for the guest to be up
    assert_eq!(ping(&ns, 4), 4, "{:#?}", g.stop());
}

fn curl(ns: &Netns, path: &str) -> String {
    let o = ns
        .command("curl")
        .args(["-sS", "-m", "10", "--retry", "3", "--retry-connrefused"])
        .arg(format!("http://{GUEST_IP}{path}"))
        .output()
        .expect("run curl (cargo xtask test installs it if missing)");
    assert!(o.status.success(), "curl {path}: {o:?}");
    String::from_utf8(o.stdout).unwrap()
}

/// The number after `"key":` in a flat JSON object.
fn json_u64(json: &str, key: &str) -> u64 {
    let at = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("{key} in {json}"));
    json[at + key.len() + 3..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
fn apachebench_gets_every_answer_on_both_transports() {
    for transport in ["virtio", "hypercall"] {
        let ns = Netns::create();
        let g = ns.boot_transport("httpd", transport, &[], &[]);
        ns.connect(80);
        let o = ns
            .command("ab")
            .args(["-q", "-n", "200", "-c", "4", "-s", "10"])
            .arg(format!("http://{GUEST_IP}/"))
            .output()
            .expect("run ab (Debian apache2-utils; cargo xtask test installs it if missing)");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "ab on {transport}: {o:?}");
        assert!(
            out.contains("Complete requests:      200"),
            "{transport}: {out}"
        );
        assert!(
            out.contains("Failed requests:        0"),
            "{transport}: {out}"
        );
        // The guest saw them all: 200 plus this one.
        let stats = curl(&ns, "/stats");
        assert_eq!(json_u64(&stats, "requests"), 201, "{transport}: {stats}");
        drop(g);
    }
}

#[test]
fn curl_gets_the_page_and_stats() {
    let ns = Netns::create();
    let g = boot_httpd(&ns);
    ns.connect(80);
    let page = curl(&ns, "/");
    assert!(page.contains("Hello from a Duet unikernel"), "{page}");
    let s1 = curl(&ns, "/stats");
    let s2 = curl(&ns, "/stats");
    assert!(
        s1.trim_start().starts_with('{') && s1.trim_end().ends_with('}'),
        "{s1}"
    );
    // The page, then this request (the probe connection sent none).
    assert_eq!(json_u64(&s1, "requests"), 2, "{s1}");
    assert_eq!(json_u64(&s2, "requests"), 3, "{s2}");
    assert!(
        json_u64(&s2, "rx_frames") > json_u64(&s1, "rx_frames"),
        "{s1} {s2}"
    );
    assert!(json_u64(&s2, "tx_frames") > 0, "{s2}");
    let missing = curl(&ns, "/nope");
    assert!(missing.contains("not found"), "{missing}");
    drop(g);
}

#[test]
fn dhcp_leases_the_address() {
    let ns = Netns::create();
    let _dhcp = DhcpServer::start(&ns);
    let g = ns.boot_with_ip("httpd", "dhcp", &[], &[]);
    // Only the leased address can answer.
    assert!(http_get(ns.connect(80), "/").contains("200 OK"));
    g.stop()
        .expect_stdout(&format!("httpd: listening on {GUEST_IP}:80"));
}

#[test]
fn fifty_concurrent_connections_all_answered() {
    let ns = Netns::create();
    let _g = boot_httpd(&ns);
    drop(ns.connect(80));
    // All 50 open at once, then all requests, then all responses.
    let mut conns: Vec<_> = (0..50).map(|_| ns.connect(80)).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        let path = if i % 2 == 0 { "/" } else { "/stats" };
        write!(c, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    }
    for (i, mut c) in conns.into_iter().enumerate() {
        let mut r = String::new();
        c.read_to_string(&mut r).unwrap();
        assert!(r.starts_with("HTTP/1.0 200 OK"), "connection {i}: {r}");
        let want = if i % 2 == 0 {
            "Hello from"
        } else {
            "\"requests\":"
        };
        assert!(r.contains(want), "connection {i}: {r}");
    }
}

#[test]
fn an_idle_connection_does_not_hold_up_others() {
    let ns = Netns::create();
    let _g = boot_httpd(&ns);
    // Connected, request half sent: httpd must serve others meanwhile.
    let mut idle = ns.connect(80);
    idle.write_all(b"GET / HT").unwrap();
    let stats = http_get(ns.connect(80), "/stats");
    assert_eq!(json_u64(&stats, "open"), 2, "{stats}");
    idle.write_all(b"TP/1.0\r\n\r\n").unwrap();
    let mut r = String::new();
    idle.read_to_string(&mut r).unwrap();
    assert!(r.contains("Hello from"), "{r}");
}

/// FNV-1a, enough to notice a changed, lost or reordered byte.
fn fnv(h: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *h = (*h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
}

#[test]
fn tcp_echo_of_10_mib_is_intact() {
    const TOTAL: usize = 10 << 20;
    let ns = Netns::create();
    let _g = ns.boot("echo", &[], &["tcp", "7"]);
    let s = ns.connect(7);
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let mut x = 0x1234_5678u32;
        let mut chunk = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < TOTAL {
            for b in chunk.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            w.write_all(&chunk).unwrap();
            fnv(&mut h, &chunk);
            sent += chunk.len();
        }
        w.shutdown(Shutdown::Write).unwrap();
        h
    });
    let mut r = s;
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        fnv(&mut h, &buf[..n]);
        got += n;
    }
    assert_eq!(got, TOTAL);
    assert_eq!(h, writer.join().unwrap(), "echoed data differs");
}

#[test]
fn udp_echo() {
    let ns = Netns::create();
    let _g = ns.boot("echo", &[], &["udp", "7"]);
    let sock: UdpSocket = ns.run(|| UdpSocket::bind("10.0.0.1:0").unwrap());
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 2048];
    for (i, len) in [1usize, 17, 512, 1000, 1472].into_iter().enumerate() {
        let msg: Vec<u8> = (0..len).map(|j| (j * 7 + i) as u8).collect();
        let mut ok = false;
        // Retries cover the guest still booting and ARP; a retry's late
        // echo of an earlier datagram is skipped.
        'tries: for _ in 0..20 {
            sock.send_to(&msg, (GUEST_IP, 7)).unwrap();
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                assert_eq!(from.to_string(), format!("{GUEST_IP}:7"));
                if n != msg.len() {
                    assert!(n < msg.len(), "datagram {i}: a {n}-byte echo");
                    continue;
                }
                assert_eq!(&buf[..n], &msg[..], "datagram {i}");
                ok = true;
                break 'tries;
            }
        }
        assert!(ok, "no echo for a {len}-byte datagram");
    }
}

/// Sends raw Ethernet frames out of the namespace's TAP (to the guest).
fn inject(ns: &Netns, frames: &[Vec<u8>]) -> usize {
    ns.run(|| {
        let s = raw_socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        let name = std::ffi::CString::new(TAP).unwrap();
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex > 0);
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&GUEST_MAC);
        frames
            .iter()
            .filter(|f| {
                // SAFETY: sendto with our buffer and a sockaddr_ll.
                let n = unsafe {
                    libc::sendto(
                        s.as_raw_fd(),
                        f.as_ptr().cast(),
                        f.len(),
                        0,
                        (&addr as *const libc::sockaddr_ll).cast(),
                        size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                n == f.len() as isize
            })
            .count()
    })
}

#[test]
fn malformed_frames_do_not_crash_guest_or_monitor() {
    let ns = Netns::create();
    let mut g = boot_httpd(&ns);
    drop(ns.connect(80));
    let mut x = 0x9e37_79b9u32;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let mut frames = Vec::new();
    for i in 0..300usize {
        let len = match i % 4 {
            0 => 14,
            1 => 14 + rnd() as usize % 40,
            _ => 14 + rnd() as usize % 1500,
        };
        let mut f: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        f[..6].copy_from_slice(if i % 3 == 0 { &[0xff; 6] } else { &GUEST_MAC });
        // Mostly IPv4 and ARP, with garbage headers, some garbage types.
        let ty: [u8; 2] = match i % 5 {
            0..=2 => [0x08, 0x00],
            3 => [0x08, 0x06],
            _ => [rnd() as u8, rnd() as u8],
        };
        f[12..14].copy_from_slice(&ty);
        if ty == [0x08, 0x00] && f.len() >= 34 {
            // A plausible IPv4 header to the guest with a random rest, so
            // the checks past the IP header get exercised too.
            f[14] = 0x40 | (rnd() as u8 % 16);
            f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        }
        frames.push(f);
    }
    let sent = inject(&ns, &frames);
    assert!(sent >= 250, "only {sent} frames injected");
    let stats = http_get(ns.connect(80), "/stats");
    assert!(stats.contains("200 OK"), "{stats}");
    assert!(json_u64(&stats, "rx_frames") >= sent as u64, "{stats}");
    assert!(g.running());
    let o = g.stop();
    assert!(!o.stderr.contains("panicked"), "{o:#?}");
}

#[test]
fn vanishing_tap_is_reported_and_the_monitor_survives() {
    for transport in ["virtio", "hypercall"] {
        let ns = Netns::create();
        let g = ns.boot_transport("httpd", transport, &[], &[]);
        assert!(http_get(ns.connect(80), "/").contains("200 OK"));
        ns.ip(&["link", "del", TAP]);
        // httpd exits with 3 once the device fails: the monitor ran on.
        let o = g.wait(Duration::from_secs(20));
        o.expect_status(3)
            .expect_stderr("tap tap0: receive failed")
            .expect_stderr("has vanished")
            .expect_stdout("network device lost: host I/O error");
    }
}

#[test]
fn bad_network_calls_get_error_codes() {
    let ns = Netns::create();
    // The raw network hypercalls' error codes: a hypercall NIC.
    let o = ns
        .boot_transport("netbad", "hypercall", &[], &[])
        .wait(Duration::from_secs(20));
    o.expect_status(0);
    for line in [
        "send-no-device -> Err(NoDev)",
        "send-zero -> Err(Inval)",
        "send-runt -> Err(Inval)",
        "send-too-big -> Err(TooBig)",
        "send-beyond-memory -> Err(Fault)",
        "send-overflow -> Err(Fault)",
        "recv-no-device -> Err(NoDev)",
        "recv-small-buffer -> Err(Inval)",
        "recv-readonly -> Err(Fault)",
        "recv-beyond-memory -> Err(Fault)",
        "batch-zero -> Err(Inval)",
        "batch-too-many -> Err(TooBig)",
        "batch-table-beyond-memory -> Err(Fault)",
        "batch-table-readonly -> Err(Fault)",
        "batch-bad-frame -> Err(Fault)",
        "batch-good-then-bad -> Ok(1)",
        "send-ok -> Ok(60)",
    ] {
        o.expect_stdout(line);
    }
}

#[test]
fn bad_net_options_fail_before_boot() {
    let img = duet_tests::image("hello");
    let img = img.to_str().unwrap();
    boot("hello", &["--net", "tap=tap0,mac=01:00:00:00:00:01"], &[])
        .expect_status(2)
        .expect_stderr("not a unicast MAC address");
    boot("hello", &["--net", "tap=tap0,mac=02:00:00:00:00"], &[])
        .expect_status(2)
        .expect_stderr("not a unicast MAC address");
    boot("hello", &["--net", "tap0"], &[])
        .expect_status(2)
        .expect_stderr("is not tap=NAME");
    // Inside a namespace of our own, so nothing is ever created in the host's.
    let ns = Netns::create();
    let o = duet_tests::run_cmd(
        {
            let mut c = ns.command(duet_tests::paths().bin.to_str().unwrap());
            c.args(["run", img, "--net", "tap=tap0", "--net", "tap=tap0"]);
            c
        },
        Duration::from_secs(20),
    );
    o.expect_status(i32::from(status::MONITOR_ERROR))
        .expect_stderr("tap tap0 is given twice");
    // No such TAP and no right to create it: root without CAP_NET_ADMIN.
    let o = duet_tests::run_cmd(
        {
            let mut c = ns.command("setpriv");
            c.args(["--bounding-set", "-net_admin", "--inh-caps", "-net_admin"])
                .arg(&duet_tests::paths().bin)
                .args(["run", img, "--net", "tap=duetnosuch0"]);
            c
        },
        Duration::from_secs(20),
    );
    o.expect_status(i32::from(status::MONITOR_ERROR))
        .expect_stderr("tap duetnosuch0 does not exist and this process may not create it");
}

#[test]
fn an_idle_server_sleeps_in_the_monitor() {
    let ns = Netns::create();
    let g = boot_httpd(&ns);
    ns.connect(80);
    let before = duet_tests::cpu_time_ms(g.pid());
    std::thread::sleep(std::time::Duration::from_millis(500));
    let after = duet_tests::cpu_time_ms(g.pid());
    assert!(
        after - before < 50.0,
        "an idle httpd cost the monitor {} ms of CPU in 500 ms",
        after - before
    );
    drop(g);
}
