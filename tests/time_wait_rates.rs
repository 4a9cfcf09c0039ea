//! TIME_WAIT and ephemeral-port numbers of `tcpdoctor check` against real connection
//! churn: a bounded load generator in this test process opens and closes loopback
//! connections at a known rate inside a private network namespace (its threads enter
//! the namespace with setns), and the report's closing rates, unavailable ports,
//! sustainable rates and served-port groups are compared with what the generator did
//! and what the kernel let it do. Needs root (namespaces, sysctls).

mod common;

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::netns::Netns;
use serde_json::Value;

/// Moves the calling thread into the namespace: sockets it makes afterwards live there.
/// setns(CLONE_NEWNET) changes only this thread.
fn enter(ns: &str) {
    let f = File::open(format!("/run/netns/{ns}")).unwrap_or_else(|e| panic!("netns {ns}: {e}"));
    // SAFETY: plain syscall on a descriptor we own for the duration of the call.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// A loopback listener in the namespace, served on its own thread until `stop`. Each
/// connection is read to EOF and closed (the client closes first), or closed at once
/// (`server_closes_first`).
struct Server {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(ns: &str, addr: &str, server_closes_first: bool) -> Server {
        let (ns, addr) = (ns.to_string(), addr.to_string());
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (stop, accepted) = (Arc::clone(&stop), Arc::clone(&accepted));
            thread::spawn(move || {
                enter(&ns);
                let l = TcpListener::bind(&addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                l.set_nonblocking(true).expect("nonblocking listener");
                let _ = ready_tx.send(());
                // Bounded: the test stops it; 120 s at most in any case.
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match l.accept() {
                        Ok((mut c, _)) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            if !server_closes_first {
                                let _ = c.set_nonblocking(false);
                                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                                let mut buf = [0u8; 64];
                                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_micros(200))
                        }
                        Err(e) => panic!("accept on {addr}: {e}"),
                    }
                }
                // Dropping `l` here closes the listener.
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("listener ready");
        Server {
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// Waits (5 s at most) until `n` connections were accepted, so that none is left in
    /// the accept queue (reset when the listener closes, without TIME_WAIT).
    fn wait_accepted(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.accepted.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops accepting and closes the listener.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the load generator did: when each connection closed (since `started`), and how
/// often connect() found no free local port.
struct Churn {
    started: Instant,
    closed_at: Vec<Duration>,
    eaddrnotavail: u64,
}

impl Churn {
    /// Connections closed per second between `from` and `to` (since `started`).
    fn rate(&self, from: Duration, to: Duration) -> f64 {
        let n = self
            .closed_at
            .iter()
            .filter(|t| **t >= from && **t < to)
            .count();
        n as f64 / (to - from).as_secs_f64()
    }
}

/// Opens `rate` connections per second to `dst` for `secs` from the namespace, each
/// closed by the client at once, so that it ends in TIME_WAIT here. With
/// `retry_when_full`, a connect() that finds no free local port (EADDRNOTAVAIL) is tried
/// again every 2 ms; the schedule then slips and the generator runs as fast as the
/// kernel hands out ports. Bounded by `secs` (plus one second for a last connect).
fn churn(
    ns: &str,
    dst: SocketAddr,
    rate: u32,
    secs: f64,
    retry_when_full: bool,
) -> JoinHandle<Churn> {
    let ns = ns.to_string();
    thread::spawn(move || {
        enter(&ns);
        let started = Instant::now();
        let stop_at = started + Duration::from_secs_f64(secs);
        let period = Duration::from_secs(1) / rate;
        let mut closed_at = Vec::with_capacity((f64::from(rate) * secs) as usize + 1);
        let mut eaddrnotavail = 0u64;
        for i in 0..(f64::from(rate) * secs) as u32 {
            let due = started + period * i;
            let now = Instant::now();
            if now >= stop_at {
                break;
            }
            if due > now {
                thread::sleep(due - now);
            }
            loop {
                match TcpStream::connect(dst) {
                    Ok(s) => {
                        drop(s);
                        closed_at.push(started.elapsed());
                        break;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                        eaddrnotavail += 1;
                        if !retry_when_full || Instant::now() >= stop_at {
                            break;
                        }
                        thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => panic!("connect {dst}: {e}"),
                }
            }
        }
        Churn {
            started,
            closed_at,
            eaddrnotavail,
        }
    })
}

/// `check --json` in the namespace (default 1 s counter interval); the report.
fn check(ns: &Netns) -> Value {
    let out = ns.run_tcpdoctor(&["check", "--json"]);
    assert!(
        out.status.code().is_some_and(|c| c < 3),
        "check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check --json is not JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn finding<'a>(v: &'a Value, rule: &str) -> Option<&'a Value> {
    v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["rule_id"] == rule)
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// `got` within `pct` percent of `want`.
fn near(got: f64, want: f64, pct: f64) -> bool {
    (got - want).abs() <= want * pct / 100.0
}

#[test]
#[ignore = "needs root"]
fn loopback_closing_rate_is_measured_and_reusable_time_wait_is_not_unavailable() {
    common::require_root();
    let ns = Netns::new("twrate");
    // 2000 ports. With tcp_tw_reuse=2 the kernel takes loopback TIME_WAIT ports over
    // from about 1 s of age even while other ports are free (live 6.18: 1200
    // connections in 3 s left ~800 TIME_WAIT, TWRecycled ~400), so the count over 60 s
    // says little. A limit low enough that time_wait_pressure reports them (50% warns).
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 41999");
    ns.sysctl("net.ipv4.tcp_max_tw_buckets", "1200");
    let server = Server::start(ns.name(), "127.0.0.1:5001", false);
    let dst: SocketAddr = "127.0.0.1:5001".parse().expect("addr");
    let load = churn(ns.name(), dst, 400, 4.0, false);
    thread::sleep(Duration::from_millis(2300));
    let check_from = Instant::now();
    let v = check(&ns);
    let check_to = Instant::now();
    let done = load.join().expect("load generator");
    server.stop();
    assert_eq!(
        done.eaddrnotavail, 0,
        "2000 ports are plenty at 400/s with reuse"
    );
    // What the generator really did around the check (it may lag a busy machine).
    let from = check_from - done.started;
    let to = check_to - done.started;
    let real = done.rate(from.saturating_sub(Duration::from_secs(1)), to);
    assert!(real > 300.0, "the generator could not keep up: {real}/s");

    let f = finding(&v, "time_wait_pressure").unwrap_or_else(|| {
        panic!(
            "no time_wait_pressure at {real}/s: {:#} {:#}",
            v["counts"]["total"], v["findings"]
        )
    });
    let data = &f["data"];
    // Host-wide: TcpExt.TW over the counter interval.
    assert_eq!(data["closes_per_s_source"], "counters", "{data:#}");
    let measured = num(&data["closes_per_s"]);
    assert!(
        near(measured, real, 10.0),
        "counters say {measured}/s, the generator made {real}/s"
    );
    // Per destination, from the TIME_WAIT ages of one dump.
    let d = &data["top_destinations"][0];
    assert_eq!(
        (d["address"].as_str(), d["port"].as_u64()),
        (Some("127.0.0.1"), Some(5001)),
        "{d:#}"
    );
    let per_s = num(&d["per_s"]);
    eprintln!(
        "generator {real:.1}/s; TcpExt.TW {measured}/s; ages {per_s}/s; {} TIME_WAIT, {} young, {} unavailable",
        d["count"], d["young"], d["unavailable"]
    );
    assert!(
        near(per_s, real, 10.0),
        "ages say {per_s}/s, the generator made {real}/s: {d:#}"
    );
    assert!(
        f["title"]
            .as_str()
            .is_some_and(|t| t.contains("tcp_tw_reuse takes their ports back after 1s")),
        "{}",
        f["title"]
    );
    // Loopback with tcp_tw_reuse=2: only TIME_WAIT younger than 1 s is unavailable,
    // about one second of connections, far fewer than the TIME_WAIT held.
    assert_eq!(d["tw_reuse_applies"], true);
    let (count, young, unavailable) = (num(&d["count"]), num(&d["young"]), num(&d["unavailable"]));
    assert!(
        near(young, real, 15.0),
        "{young} TIME_WAIT under 1 s at {real}/s: {d:#}"
    );
    assert!(unavailable >= young && unavailable <= young + 3.0, "{d:#}");
    assert!(
        count - young >= 100.0,
        "too few reusable TIME_WAIT to tell: {d:#}"
    );
    assert!(
        unavailable < count,
        "reusable TIME_WAIT counted as unavailable: {d:#}"
    );
    assert_eq!(num(&d["headroom"]), num(&d["usable"]) - unavailable);
    // And the port rule sees no problem in 2000 ports at 400/s with reuse.
    assert!(
        finding(&v, "ephemeral_port_exhaustion").is_none(),
        "{:#}",
        v["findings"]
    );
}

#[test]
#[ignore = "needs root"]
fn narrowed_range_sustainable_rate_matches_what_the_kernel_sustains_with_reuse() {
    common::require_root();
    let ns = Netns::new("twsustain");
    // 200 ports: at 400/s offered, the kernel hands each port out again once its
    // TIME_WAIT is tcp_tw_reuse_delay (1 s) old, about 200 connections per second.
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40199");
    assert_eq!(ns.read_sysctl("net.ipv4.tcp_tw_reuse"), "2");
    let server = Server::start(ns.name(), "127.0.0.1:5002", false);
    let dst: SocketAddr = "127.0.0.1:5002".parse().expect("addr");
    let load = churn(ns.name(), dst, 400, 5.0, true);
    thread::sleep(Duration::from_millis(2500));
    let v = check(&ns);
    let done = load.join().expect("load generator");
    server.stop();
    assert!(done.eaddrnotavail > 0, "the 200 ports never ran out");
    // Steady state: after the first 200 connections used every port once.
    let kernel = done.rate(Duration::from_millis(1500), Duration::from_millis(4500));
    assert!(kernel > 120.0 && kernel < 260.0, "{kernel}/s");

    let f = finding(&v, "ephemeral_port_exhaustion")
        .unwrap_or_else(|| panic!("no ephemeral_port_exhaustion: {:#}", v["findings"]));
    let d = &f["data"]["destinations"][0];
    assert_eq!(
        (d["remote_ip"].as_str(), d["remote_port"].as_u64()),
        (Some("127.0.0.1"), Some(5002))
    );
    assert_eq!(d["tw_reuse_applies"], true);
    assert_eq!(f["data"]["usable"], 200);
    let sustainable = num(&d["sustainable_per_s"]);
    eprintln!(
        "kernel sustained {kernel:.1}/s ({} EADDRNOTAVAIL); tcpdoctor: sustainable {sustainable}/s, closing {}/s, {} unavailable",
        done.eaddrnotavail, d["closes_per_s"], d["unavailable"]
    );
    assert!(
        near(sustainable, kernel, 10.0),
        "tcpdoctor says {sustainable}/s sustainable, the kernel sustained {kernel}/s: {d:#}"
    );
    let closing = num(&d["closes_per_s"]);
    assert!(
        near(closing, kernel, 10.0),
        "closing {closing}/s, the kernel sustained {kernel}/s: {d:#}"
    );
    // Every port busy: critical, and the title says the destination is at its limit.
    assert_eq!(f["severity"], "critical", "{f:#}");
    assert!(
        f["title"]
            .as_str()
            .is_some_and(|t| t.contains("TIME_WAIT ports reused after 1s")),
        "{}",
        f["title"]
    );
    // Loopback under the default tcp_tw_reuse=2: never a proposal of 1.
    let proposed = f["proposed"].as_array().cloned().unwrap_or_default();
    assert!(
        proposed.iter().all(|p| p["key"] != "net.ipv4.tcp_tw_reuse"),
        "{proposed:#?}"
    );
    assert!(
        proposed
            .iter()
            .any(|p| p["key"] == "net.ipv4.ip_local_port_range" && p["value"] == "32768 65535"),
        "{proposed:#?}"
    );
}

#[test]
#[ignore = "needs root"]
fn server_side_time_wait_after_the_listener_exits_is_one_served_port_group() {
    common::require_root();
    let ns = Netns::new("twserved");
    ns.sysctl("net.ipv4.tcp_max_tw_buckets", "400");
    // One service inside the ephemeral range (32768-60999), one outside it. The
    // server closes first, so the TIME_WAIT is on the served ports.
    let inside = Server::start(ns.name(), "127.0.0.1:45000", true);
    let outside = Server::start(ns.name(), "127.0.0.1:8080", true);
    let clients = {
        let ns = ns.name().to_string();
        thread::spawn(move || {
            enter(&ns);
            for (port, n) in [(45000u16, 200), (8080, 100)] {
                for _ in 0..n {
                    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                    c.set_read_timeout(Some(Duration::from_secs(2)))
                        .expect("timeout");
                    // Wait for the server's FIN, then close our side.
                    let mut buf = [0u8; 16];
                    while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                }
            }
        })
    };
    clients.join().expect("clients");
    // Both services exit: their TIME_WAIT stays, their listeners do not.
    assert_eq!(inside.stop(), 200);
    assert_eq!(outside.stop(), 100);
    thread::sleep(Duration::from_millis(200));
    let states = ns.ss_state_counts(&[]);
    let tw = states.get("TIME_WAIT").copied().unwrap_or(0);
    assert_eq!(
        tw, 300,
        "the server-closed connections are in TIME_WAIT: {states:?}"
    );
    assert!(!ns.ss_state_counts(&[]).contains_key("LISTEN"));

    let v = check(&ns);
    let f = finding(&v, "time_wait_pressure")
        .unwrap_or_else(|| panic!("no time_wait_pressure: {:#}", v["findings"]));
    let data = &f["data"];
    assert_eq!(
        (data["server_side"].as_u64(), data["client_side"].as_u64()),
        (Some(300), Some(0)),
        "{data:#}"
    );
    assert_eq!(data["closer"], "server");
    let served: Vec<(u64, u64)> = data["top_listen_ports"]
        .as_array()
        .expect("served ports")
        .iter()
        .map(|r| {
            (
                r["port"].as_u64().unwrap_or(0),
                r["count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(served, vec![(45000, 200), (8080, 100)]);
    assert_eq!(
        data["top_destinations"],
        Value::Array(Vec::new()),
        "no one-socket destinations"
    );
    assert!(
        f["title"]
            .as_str()
            .is_some_and(|t| t.contains("mostly as a server")),
        "{}",
        f["title"]
    );
    assert!(
        f["evidence"]
            .as_array()
            .expect("evidence")
            .iter()
            .all(|e| !e["label"]
                .as_str()
                .unwrap_or("")
                .starts_with("client side, towards")),
        "{:#}",
        f["evidence"]
    );
    // Nor do the peers' ports look like port use.
    assert!(
        finding(&v, "ephemeral_port_exhaustion").is_none(),
        "{:#}",
        v["findings"]
    );
}

#[test]
#[ignore = "needs root"]
fn without_tw_reuse_every_time_wait_port_counts_as_unavailable() {
    common::require_root();
    let ns = Netns::new("twnoreuse");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 41999");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0");
    let server = Server::start(ns.name(), "127.0.0.1:5003", false);
    let dst: SocketAddr = "127.0.0.1:5003".parse().expect("addr");
    let done = churn(ns.name(), dst, 400, 3.0, false)
        .join()
        .expect("load generator");
    let made = done.closed_at.len() as u64;
    server.wait_accepted(made);
    assert_eq!(done.eaddrnotavail, 0);
    assert!(made > 900, "{made} connections");
    // Until every connection towards it has ended (in TIME_WAIT, or reset when a
    // starved server let its accept queue overflow) and the count holds still; 5 s at
    // most. TIME_WAIT then lasts 60 s: the count holds while the check runs.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = u64::MAX;
    let time_wait = loop {
        let out = ns.run_ss(&["-tanH", "dst", "127.0.0.1:5003"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let tw = text.lines().filter(|l| l.starts_with("TIME-WAIT")).count() as u64;
        let others = text.lines().count() as u64 - tw;
        if (others == 0 && tw == last) || Instant::now() > deadline {
            assert_eq!(others, 0, "{text}");
            break tw;
        }
        last = tw;
        thread::sleep(Duration::from_millis(100));
    };
    server.stop();
    assert!(
        time_wait * 100 >= made * 95,
        "{time_wait} TIME_WAIT of {made}"
    );

    let v = check(&ns);
    let f = finding(&v, "ephemeral_port_exhaustion")
        .unwrap_or_else(|| panic!("no ephemeral_port_exhaustion: {:#}", v["findings"]));
    let d = &f["data"]["destinations"][0];
    assert_eq!(d["tw_reuse_applies"], false, "{d:#}");
    assert_eq!(d["time_wait"], time_wait);
    // Every TIME_WAIT port is unavailable, young or not.
    assert!(num(&d["time_wait_young"]) < time_wait as f64, "{d:#}");
    assert_eq!(d["unavailable"], time_wait);
    assert_eq!(d["used"], time_wait);
    assert_eq!(d["headroom"], 2000 - time_wait);
    // One connection per port per 60 s.
    assert!(
        near(num(&d["sustainable_per_s"]), 2000.0 / 60.0, 1.0),
        "{d:#}"
    );
    assert!(
        f["title"]
            .as_str()
            .is_some_and(|t| t.contains("no TIME_WAIT reuse: each port held 60s")),
        "{}",
        f["title"]
    );
    // Loopback: the fix is the kernel default 2, never 1.
    let proposed = f["proposed"].as_array().cloned().unwrap_or_default();
    assert!(
        proposed
            .iter()
            .any(|p| p["key"] == "net.ipv4.tcp_tw_reuse" && p["value"] == "2"),
        "{proposed:#?}"
    );
    assert!(proposed.iter().all(|p| p["value"] != "1"), "{proposed:#?}");
}
