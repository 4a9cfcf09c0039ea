//! `tcpdoctor serve` against clients that try to starve it (issue 16): hundreds of slow
//! and idle connections, endless and oversized headers, 100,000 header lines, HTTP/2.0,
//! fewer descriptors than connections; and what a scraper relies on: keep-alive answers
//! that leave in one segment with TCP_NODELAY, SIGHUP, SIGTERM during a scrape.
//! Nothing here is timed as a performance figure: every wait is a generous bound, and
//! what is asserted is that answers come and connections end, not how fast
//! (bench/slow_clients.sh measures that).

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::thread;
use std::time::{Duration, Instant};

use common::fixtures::{repo_path, TempDir, NETNS_MIXED};
use common::netns::Netns;
use common::run::wait_for;
use common::serve::{
    closed_by_server, collections_total, get_within, has_open, keep_alive_get, proc_status,
    raw_exchange, replay_command, scrape, server_end_of, slow_capture, sockopt_int, tcp_info,
    Served, STOP_TIMEOUT,
};
use common::TCPDOCTOR;

/// A scrape's timeout, as Prometheus's default `scrape_timeout`.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// The exporter's own bounds (src/live/serve.rs): an unfinished request head is dropped
/// after 5 s, an idle kept-alive connection after 10 s. Attack connections must be gone
/// within this (the larger, plus slack for a loaded machine).
const CLOSED_WITHIN: Duration = Duration::from_secs(10 + 10);

/// Opens `n` connections to `addr` and sends each `first` (perhaps nothing).
fn open_many(addr: SocketAddr, n: usize, first: &[u8]) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut s = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT)
                .unwrap_or_else(|e| panic!("attack connection {i}: {e}"));
            if !first.is_empty() {
                s.write_all(first).expect("send a partial request");
            }
            s
        })
        .collect()
}

/// Sends a header that never ends (up to `limit` bytes) until the server closes.
/// Returns how many bytes went out.
fn endless_header(addr: SocketAddr, limit: usize) -> usize {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT) else {
        return 0;
    };
    let _ = s.set_write_timeout(Some(SCRAPE_TIMEOUT));
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0;
    if s.write_all(b"GET /metrics HTTP/1.1\r\nX-Big: ").is_err() {
        return 0;
    }
    while sent < limit {
        match s.write(&chunk) {
            Ok(n) if n > 0 => sent += n,
            _ => break,
        }
    }
    sent
}

/// A scrape's outcome: (status, body) or what went wrong.
type Got = Result<(u16, String), String>;

struct Attack {
    /// Each scrape during the attack: its result and how long it took.
    scrapes: Vec<(Got, Duration)>,
    /// Attack connections the server had not closed by the deadline.
    still_open: usize,
    attack_connections: usize,
    /// Bytes each endless header got out before the server closed it.
    endless_sent: Vec<usize>,
    hundred_thousand_lines: Option<u16>,
    http2: Option<u16>,
    sixteen_mb: (Option<u16>, bool),
    rss_before_kb: u64,
    rss_peak_kb: u64,
    threads_peak: u64,
    after: Got,
}

/// The attack, from a thread inside the namespace: slow and idle connections beyond the
/// cap, hostile heads, and a scrape every 250 ms meanwhile.
fn attack(addr: SocketAddr, pid: u32) -> Attack {
    let first = get_within(addr, "/metrics", SCRAPE_TIMEOUT);
    assert!(matches!(first, Ok((200, _))), "{first:?}");
    let rss_before_kb = proc_status(pid, "VmRSS").expect("VmRSS");

    // Eight unfinished 100 MB headers (they pushed tiny_http to 980 MB).
    let endless: Vec<_> = (0..8)
        .map(|_| thread::spawn(move || endless_header(addr, 100 << 20)))
        .collect();
    let opened = Instant::now();
    let mut held = open_many(addr, 600, b"GET /metrics HTTP/1.1\r\nHost: slow\r\n");
    held.extend(open_many(addr, 200, b""));
    let attack_connections = held.len();

    // Heads that must be refused, not buffered nor served.
    let mut lines = b"GET /metrics HTTP/1.1\r\n".to_vec();
    for _ in 0..100_000 {
        lines.extend_from_slice(b"a: b\r\n");
    }
    lines.extend_from_slice(b"\r\n");
    let hundred_thousand_lines = raw_exchange(addr, lines, SCRAPE_TIMEOUT).status();
    let http2 = raw_exchange(
        addr,
        b"GET /metrics HTTP/2.0\r\n\r\n".to_vec(),
        SCRAPE_TIMEOUT,
    )
    .status();
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
    big.resize(16 << 20, b'a');
    big.extend_from_slice(b"\r\n\r\n");
    let r = raw_exchange(addr, big, SCRAPE_TIMEOUT);
    let sixteen_mb = (r.status(), r.closed);

    // Scrapes while the slow connections are held (they time out after 5 s; this runs
    // for 8), with memory and threads sampled.
    let mut scrapes = Vec::new();
    let (mut rss_peak_kb, mut threads_peak) = (rss_before_kb, 0);
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let t = Instant::now();
        let r = get_within(addr, "/metrics", SCRAPE_TIMEOUT);
        scrapes.push((r, t.elapsed()));
        rss_peak_kb = rss_peak_kb.max(proc_status(pid, "VmRSS").unwrap_or(0));
        threads_peak = threads_peak.max(proc_status(pid, "Threads").unwrap_or(0));
        thread::sleep(Duration::from_millis(250));
    }
    let endless_sent = endless
        .into_iter()
        .map(|h| h.join().expect("endless header thread"))
        .collect();
    let deadline = opened + CLOSED_WITHIN;
    let still_open = held
        .iter_mut()
        .map(|s| closed_by_server(s, deadline))
        .filter(|closed| !closed)
        .count();
    drop(held);
    let after = get_within(addr, "/metrics", SCRAPE_TIMEOUT);
    Attack {
        scrapes,
        still_open,
        attack_connections,
        endless_sent,
        hundred_thousand_lines,
        http2,
        sixteen_mb,
        rss_before_kb,
        rss_peak_kb,
        threads_peak,
        after,
    }
}

#[test]
#[ignore = "needs root"]
fn slow_and_hostile_clients_never_starve_scrapes() {
    let ns = Netns::new("slowcl");
    let cmd = ns.command(
        TCPDOCTOR,
        &[
            "--netns",
            "current",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cache",
            "0",
        ],
    );
    let mut served = Served::start(cmd);
    let (addr, pid) = (served.addr, served.pid());
    let a = ns.run_inside(move || attack(addr, pid));

    let slowest = a.scrapes.iter().map(|(_, t)| *t).max().unwrap_or_default();
    eprintln!(
        "{} scrapes during the attack, slowest {slowest:?}; RSS {} kB before, {} kB at most; {} threads at most",
        a.scrapes.len(),
        a.rss_before_kb,
        a.rss_peak_kb,
        a.threads_peak
    );
    let failed: Vec<_> = a
        .scrapes
        .iter()
        .filter(|(r, took)| !matches!(r, Ok((200, _))) || *took > SCRAPE_TIMEOUT)
        .map(|(r, took)| format!("{:?} after {took:?}", r.as_ref().map(|(s, _)| s)))
        .collect();
    assert!(a.scrapes.len() >= 5, "only {} scrapes", a.scrapes.len());
    assert!(
        failed.is_empty(),
        "{} of {} scrapes failed during the attack: {failed:?}\n{}",
        failed.len(),
        a.scrapes.len(),
        served.stderr()
    );
    assert_eq!(
        a.still_open,
        0,
        "of {} slow and idle connections, {} were still open {CLOSED_WITHIN:?} after they were opened",
        a.attack_connections,
        a.still_open
    );
    assert_eq!(a.hundred_thousand_lines, Some(431), "100,000 header lines");
    assert_eq!(a.http2, Some(505), "an HTTP/2.0 request line");
    // The 16 MB header is refused after 8 KiB and its connection closed once the
    // server has discarded 1 MiB more: the client sees the 431, or a reset that beat it.
    assert!(a.sixteen_mb.1, "16 MB header: connection not closed");
    assert!(
        matches!(a.sixteen_mb.0, None | Some(431)),
        "16 MB header: {:?}",
        a.sixteen_mb.0
    );
    assert!(
        a.endless_sent.iter().all(|&n| n < 100 << 20),
        "an endless header was read to its end: {:?}",
        a.endless_sent
    );
    // Bounded memory and threads: at most 512 connections of at most 12 KiB each, one
    // loop thread and one collecting thread (plus the collection's owner-scan threads).
    // tiny_http reached 980 MB and a thread per connection.
    assert!(
        a.rss_peak_kb < a.rss_before_kb + 48 * 1024,
        "RSS {} kB before, {} kB at the peak",
        a.rss_before_kb,
        a.rss_peak_kb
    );
    assert!(a.threads_peak < 100, "{} threads", a.threads_peak);
    assert!(
        matches!(a.after, Ok((200, _))),
        "after the attack: {:?}",
        a.after
    );
    // What was dropped is logged as a summary at most every 10 s.
    let logged = wait_for(Duration::from_secs(15), Duration::from_millis(100), || {
        let log = served.stderr();
        (log.contains("dropped to admit new ones") && log.contains("timed out")).then_some(())
    });
    assert!(logged.is_some(), "{}", served.stderr());
    assert!(served.wait(Duration::ZERO).is_none(), "the exporter died");
    assert_eq!(served.terminate().and_then(|s| s.code()), Some(0));
}

/// Sets process `pid`'s soft open-files limit (the hard one stays 64).
fn set_nofile(pid: u32, n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: 64,
    };
    // SAFETY: prlimit on our own child with a valid struct; the old value is not asked.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit {pid}: {}", std::io::Error::last_os_error());
}

/// The lowest descriptor number `pid` does not use (what the kernel gives next).
fn lowest_free_fd(pid: u32) -> u64 {
    let used: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !used.contains(n)).unwrap_or(0)
}

#[test]
fn more_connections_than_descriptors_never_lose_the_listener() {
    // Started under `--nofile 64` (as prlimit(1) would), it caps itself at 16
    // connections: 200 slow clients are dropped oldest first.
    let mut cmd = replay_command(&repo_path(NETNS_MIXED), &["--cache", "0"]);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut served = Served::start(cmd);
    let (addr, pid) = (served.addr, served.pid());
    assert!(
        served
            .stderr()
            .contains("at most 16 connections at once (open-files limit 64)"),
        "{}",
        served.stderr()
    );
    let held = open_many(addr, 200, b"GET / HTTP/1.1\r\n");
    for _ in 0..3 {
        let r = get_within(addr, "/metrics", SCRAPE_TIMEOUT);
        assert!(matches!(r, Ok((200, _))), "{r:?}\n{}", served.stderr());
    }

    // Now lower its limit so that accept(2) itself fails with EMFILE (its cap was set
    // at start): it drops its oldest connection to admit each new one and keeps the
    // listening socket. The kernel refuses a descriptor when the lowest free number is
    // at the limit (not when the count is): the limit goes to the lowest number free
    // now. Fresh connections first, so that none of those held reaches its 5 s head
    // timeout (freeing a number below the limit) before the new ones come.
    let fresh = open_many(addr, 20, b"GET / HTTP/1.1\r\n");
    thread::sleep(Duration::from_millis(200));
    set_nofile(pid, lowest_free_fd(pid));
    let more = open_many(addr, 100, b"GET / HTTP/1.1\r\n");
    for _ in 0..3 {
        let r = get_within(addr, "/", SCRAPE_TIMEOUT);
        assert!(matches!(r, Ok((200, _))), "{r:?}\n{}", served.stderr());
    }
    let said = wait_for(Duration::from_secs(15), Duration::from_millis(100), || {
        served
            .stderr()
            .contains("for lack of descriptors")
            .then_some(())
    });
    assert!(said.is_some(), "EMFILE never met: {}", served.stderr());
    drop((held, fresh, more));
    // Room again: a whole scrape, collection included.
    set_nofile(pid, 64);
    let body = scrape(addr);
    assert!(collections_total(&body) >= 4.0);
    assert!(served.wait(Duration::ZERO).is_none(), "the exporter died");
    assert_eq!(served.terminate().and_then(|s| s.code()), Some(0));
}

#[test]
fn hostile_heads_get_their_status_and_a_close() {
    let mut served = Served::start(replay_command(&repo_path(NETNS_MIXED), &[]));
    let addr = served.addr;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("HTTP/2.0", b"GET /metrics HTTP/2.0\r\n\r\n".to_vec(), 505),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            505,
        ),
        (
            "9 KB header",
            {
                let mut h = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
                h.resize(9000, b'a');
                h.extend_from_slice(b"\r\n\r\n");
                h
            },
            431,
        ),
        (
            "101 header lines",
            {
                let mut h = b"GET /metrics HTTP/1.1\r\n".to_vec();
                for _ in 0..101 {
                    h.extend_from_slice(b"a: b\r\n");
                }
                h.extend_from_slice(b"\r\n");
                h
            },
            431,
        ),
        ("no version", b"GET /metrics\r\n\r\n".to_vec(), 400),
        (
            "TLS hello",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\n\n".to_vec(),
            400,
        ),
        (
            "POST with a body",
            b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            405,
        ),
    ];
    for (what, request, want) in cases {
        let r = raw_exchange(addr, request, SCRAPE_TIMEOUT);
        assert_eq!(
            r.status(),
            Some(want),
            "{what}: {:?}",
            String::from_utf8_lossy(&r.answer)
        );
        assert!(r.closed, "{what}: connection left open");
    }
    // A head of exactly 100 header lines is served.
    let mut h = b"GET / HTTP/1.1\r\nConnection: close\r\n".to_vec();
    for _ in 0..99 {
        h.extend_from_slice(b"a: b\r\n");
    }
    h.extend_from_slice(b"\r\n");
    assert_eq!(raw_exchange(addr, h, SCRAPE_TIMEOUT).status(), Some(200));
    // Pipelined requests are answered in order.
    let r = raw_exchange(
        addr,
        b"GET / HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
        SCRAPE_TIMEOUT,
    );
    let text = String::from_utf8_lossy(&r.answer);
    assert!(
        text.starts_with("HTTP/1.1 200 ") && text.contains("HTTP/1.1 404 ") && r.closed,
        "{text}"
    );
    assert_eq!(served.terminate().and_then(|s| s.code()), Some(0));
}

#[test]
fn kept_alive_scrapes_leave_in_one_segment_with_nodelay() {
    let mut served = Served::start(replay_command(&repo_path(NETNS_MIXED), &["--cache", "0"]));
    let mut s = TcpStream::connect_timeout(&served.addr, SCRAPE_TIMEOUT).expect("connect");
    // Two scrapes on one connection, as Prometheus reuses it.
    let (a, _, body_a) = keep_alive_get(&mut s, "/metrics");
    let (b, _, body_b) = keep_alive_get(&mut s, "/metrics");
    assert_eq!((a, b), (200, 200));
    let (a, b) = (
        String::from_utf8_lossy(&body_a),
        String::from_utf8_lossy(&body_b),
    );
    assert_eq!((collections_total(&a), collections_total(&b)), (1.0, 2.0));

    // The server's end of this connection: TCP_NODELAY set, and each small answer
    // (headers and body) left as one segment. Two writes, as tiny_http made, are two
    // segments, and without TCP_NODELAY the second waited for the delayed ACK.
    let server = server_end_of(served.pid(), &s);
    assert_eq!(
        sockopt_int(&server, libc::IPPROTO_TCP, libc::TCP_NODELAY),
        1
    );
    let before = tcp_info(&server).tcpi_data_segs_out;
    for _ in 0..3 {
        let (status, _, body) = keep_alive_get(&mut s, "/");
        assert_eq!(status, 200);
        assert!(String::from_utf8_lossy(&body).contains("/metrics"));
    }
    let (status, _, _) = keep_alive_get(&mut s, "/nope");
    assert_eq!(status, 404);
    let segments = tcp_info(&server).tcpi_data_segs_out - before;
    assert_eq!(segments, 4, "four small answers, one segment each");
    assert_eq!(served.terminate().and_then(|s| s.code()), Some(0));
}

#[test]
fn sighup_reads_the_thresholds_again_and_keeps_serving() {
    let tmp = TempDir::new("hup");
    let config = tmp.path().join("tcpdoctor.toml");
    std::fs::write(&config, "close_wait_warn = 10\n").expect("write config");
    let config_arg = config.to_string_lossy().into_owned();
    let mut served = Served::start(replay_command(
        &repo_path(NETNS_MIXED),
        &["--cache", "3600", "--config", &config_arg],
    ));
    let addr = served.addr;
    // netns_mixed's CLOSE_WAIT holders have fewer than 10 each and more than 1: the
    // threshold decides whether they are findings, so the series shows which
    // thresholds a collection used.
    let slow = |body: &str| {
        common::prom::Scrape::parse(body).must(
            "tcpdoctor_finding",
            &[("rule", "close_wait_slow_close"), ("severity", "warning")],
        )
    };
    let first = scrape(addr);
    assert_eq!(collections_total(&first), 1.0);
    assert_eq!(slow(&first), 0.0, "close_wait_warn = 10");
    assert_eq!(collections_total(&scrape(addr)), 1.0, "cached");

    std::fs::write(&config, "close_wait_warn = 1\n").expect("write config");
    served.signal(libc::SIGHUP);
    let said = wait_for(Duration::from_secs(15), Duration::from_millis(50), || {
        served
            .stderr()
            .contains("thresholds read again")
            .then_some(())
    });
    assert!(said.is_some(), "{}", served.stderr());
    // The cached result was dropped: the next scrape collects with the new thresholds.
    let reloaded = scrape(addr);
    assert_eq!(collections_total(&reloaded), 2.0);
    assert_eq!(slow(&reloaded), 2.0, "close_wait_warn = 1 applied");

    // A file that no longer parses: the old thresholds stay, the exporter stays up.
    std::fs::write(&config, "close_wait_warn = [\n").expect("write config");
    served.signal(libc::SIGHUP);
    let said = wait_for(Duration::from_secs(15), Duration::from_millis(50), || {
        served
            .stderr()
            .contains("keeping the previous thresholds")
            .then_some(())
    });
    assert!(said.is_some(), "{}", served.stderr());
    let kept = scrape(addr);
    assert_eq!(collections_total(&kept), 2.0, "cache kept");
    assert_eq!(
        slow(&kept),
        2.0,
        "the cached answer, made with close_wait_warn = 1"
    );
    assert!(served.wait(Duration::ZERO).is_none(), "SIGHUP killed it");
    assert_eq!(served.terminate().and_then(|s| s.code()), Some(0));
}

#[test]
fn sigterm_during_a_scrape_finishes_it_and_exits_0() {
    let tmp = TempDir::new("term");
    let (root, tcp) = slow_capture(tmp.path());
    let mut served = Served::start(replay_command(&root, &["--cache", "0"]));
    let (addr, pid) = (served.addr, served.pid());
    let scraping = thread::spawn(move || scrape(addr));
    wait_for(Duration::from_secs(30), Duration::from_millis(2), || {
        has_open(pid, &tcp).then_some(())
    })
    .expect("the scrape never started a collection");
    served.signal(libc::SIGTERM);
    let body = scraping.join().expect("the scrape in flight was answered");
    assert_eq!(collections_total(&body), 1.0);
    let code = served.wait(STOP_TIMEOUT).map(|s| s.code());
    assert_eq!(code, Some(Some(0)));
}
