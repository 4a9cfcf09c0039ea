//! `tcpdoctor trace` against real connections: a server and a client process (the
//! sockfarm churn mode) in a private network namespace, the tracer running on the host
//! with `--netns` set to that namespace and `--json`, and its numbers checked against
//! what the processes did: counts, rates, pids, who closed first, resets, failed
//! connect() calls. Root only (BPF, namespaces) and the sockfarm helper: run with
//! `cargo test --features sockfarm --test trace -- --include-ignored`.
//! Every child and every wait is bounded; children are killed by pid.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::churn::{run_client, start_server, Lines, STOP_TIMEOUT};
use common::netns::Netns;
use common::run::run_bounded;
use common::{require_root, sockfarm, TCPDOCTOR};

/// `tcpdoctor trace --json` on the host, narrowed to `ns`, started and attached (its
/// first interval line has arrived).
fn start_trace(ns: &Netns, extra: &[&str]) -> Lines {
    let mut cmd = Command::new(TCPDOCTOR);
    cmd.args([
        "trace",
        "--json",
        "--interval",
        "0.25",
        "--netns",
        ns.name(),
    ])
    .args(extra);
    let t = Lines::spawn(cmd, "tcpdoctor trace");
    let first = t.next_json();
    assert_eq!(first["record"], "interval", "{first}");
    t
}

/// The summary line among the tracer's last lines.
fn summary(lines: &[Value]) -> &Value {
    let s = lines.last().expect("lines after SIGTERM");
    assert_eq!(s["record"], "summary", "{s}");
    s
}

/// The flow of `pid` in `direction` (active: to `port`; passive: on `port`).
fn flow<'a>(s: &'a Value, pid: u32, direction: &str, port: u16) -> &'a Value {
    let flows = s["flows"].as_array().expect("flows");
    let found: Vec<&Value> = flows
        .iter()
        .filter(|f| {
            f["pid"] == pid
                && f["direction"] == direction
                && match direction {
                    "active" => f["remote"] == format!("127.0.0.1:{port}"),
                    _ => f["local_port"] == port,
                }
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {direction} flow of pid {pid} (port {port}) in {s:#}"
    );
    found[0]
}

/// `got` is `want`, or lower by at most the program runs the kernel skipped during the
/// run (`missed_runs`, host-wide: an interrupt's softirq that re-enters a program already
/// running on that CPU is not run). Rare, but a busy machine has interrupts.
#[track_caller]
fn counted(got: &Value, want: u64, s: &Value, what: &str) {
    let n = got
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: {got} is not a count"));
    let missed = s["losses"]["missed_runs"].as_u64().unwrap_or(0);
    assert!(
        n <= want && n + missed >= want,
        "{what}: counted {n}, expected {want} ({missed} program runs missed)"
    );
}

/// Lets the last FINs, resets and closes of a run reach the tracer's tables.
fn settle() {
    thread::sleep(Duration::from_millis(500));
}

#[test]
#[ignore = "needs root"]
fn short_connections_at_a_known_rate_are_counted_exactly_and_at_that_rate() {
    require_root();
    let ns = Netns::new("tracerate");
    let trace = start_trace(&ns, &[]);
    let (server, port) = start_server(&ns, &[]);
    let (client, result) = run_client(&ns, port, &["--churn-count", "300", "--churn-rate", "100"]);
    assert_eq!(result["connected"], 300, "{result}");
    settle();
    let lines = trace.terminate();
    let server_pid = server.pid();
    server.finish();
    let s = summary(&lines);

    let out = flow(s, client, "active", port);
    counted(&out["opened"], 300, s, format!("{out:#}").as_str());
    counted(&out["closed"]["local"], 300, s, format!("{out:#}").as_str());
    assert_eq!(out["closed"]["peer"], 0);
    assert_eq!(out["closer"], "local");
    counted(
        &out["lifetimes"]["count"],
        300,
        s,
        "out['lifetimes']['count']",
    );
    assert_eq!(out["comm"], "sockfarm");
    let inc = flow(s, server_pid, "passive", port);
    counted(&inc["opened"], 300, s, format!("{inc:#}").as_str());
    counted(&inc["closed"]["peer"], 300, s, format!("{inc:#}").as_str());
    assert_eq!(inc["closer"], "peer");
    counted(&s["totals"]["opened"], 600, s, "s['totals']['opened']");
    assert_eq!(s["losses"]["flows_full"], 0);

    // The rate: the intervals wholly inside the client's 3 s, where it connected at
    // 100/s. Interval starts are relative to the tracer's start; the client's window
    // is found from the intervals themselves (first and last with its opens).
    let intervals: Vec<&Value> = lines.iter().filter(|l| l["record"] == "interval").collect();
    let opened_by_client = |l: &Value| -> u64 {
        l["flows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["pid"] == client && f["direction"] == "active")
            .map(|f| f["opened"].as_u64().unwrap_or(0))
            .sum()
    };
    let active: Vec<usize> = (0..intervals.len())
        .filter(|&i| opened_by_client(intervals[i]) > 0)
        .collect();
    let (first, last) = (active[0], active[active.len() - 1]);
    assert!(
        last > first + 2,
        "the 3 s run spans several 0.25 s intervals"
    );
    let inner = &intervals[first + 1..last];
    let opened: u64 = inner.iter().map(|l| opened_by_client(l)).sum();
    let ms: u64 = inner
        .iter()
        .map(|l| l["duration_ms"].as_u64().unwrap_or(0))
        .sum();
    let rate = opened as f64 * 1000.0 / ms as f64;
    assert!(
        (90.0..=110.0).contains(&rate),
        "{opened} connections in {ms} ms = {rate:.1}/s, expected 100/s ±10%"
    );
    for l in inner {
        let f = l["flows"]
            .as_array()
            .and_then(|v| v.iter().find(|f| f["pid"] == client))
            .expect("client flow in each inner interval");
        let per_s = f["opened_per_s"].as_f64().expect("rate");
        assert!(per_s > 0.0 && per_s < 400.0, "{f}");
    }
}

/// Events of one run: (kind, pid, local port, remote port, old state, new state).
fn events(lines: &[Value]) -> Vec<(String, u64, u64, u64, String, String)> {
    lines
        .iter()
        .filter(|l| l["record"] == "event")
        .map(|e| {
            let s = |v: &Value| v.as_str().unwrap_or("").to_string();
            (
                s(&e["kind"]),
                e["pid"].as_u64().unwrap_or(0),
                e["local"]["port"].as_u64().unwrap_or(0),
                e["remote"]["port"].as_u64().unwrap_or(0),
                s(&e["old_state"]),
                s(&e["new_state"]),
            )
        })
        .collect()
}

#[test]
#[ignore = "needs root"]
fn each_side_closing_first_is_counted_for_its_own_pid() {
    require_root();
    for closer in ["client", "server"] {
        let ns = Netns::new(&format!("traceclose{closer}"));
        let trace = start_trace(&ns, &["--events", "--events-limit", "100000"]);
        let (server, port) = start_server(&ns, &["--churn-closer", closer]);
        let (client, result) = run_client(
            &ns,
            port,
            &[
                "--churn-count",
                "50",
                "--churn-rate",
                "100",
                "--churn-closer",
                closer,
            ],
        );
        assert_eq!(result["connected"], 50, "{result}");
        settle();
        let mut lines = Vec::new();
        // Events came before the summary, on the same stream.
        while let Ok(l) = trace.rx.try_recv() {
            lines.push(serde_json::from_str::<Value>(&l).expect("json"));
        }
        lines.extend(trace.terminate());
        let server_pid = server.pid();
        server.finish();
        let s = summary(&lines);

        let (client_first, server_first) = if closer == "client" { (50, 0) } else { (0, 50) };
        let out = flow(s, client, "active", port);
        counted(&out["opened"], 50, s, format!("{closer}: {out:#}").as_str());
        counted(
            &out["closed"]["local"],
            client_first,
            s,
            format!("{closer}: {out:#}").as_str(),
        );
        counted(
            &out["closed"]["peer"],
            server_first,
            s,
            format!("{closer}: {out:#}").as_str(),
        );
        let inc = flow(s, server_pid, "passive", port);
        counted(&inc["opened"], 50, s, format!("{closer}: {inc:#}").as_str());
        counted(
            &inc["closed"]["local"],
            server_first,
            s,
            format!("{closer}: {inc:#}").as_str(),
        );
        counted(
            &inc["closed"]["peer"],
            client_first,
            s,
            format!("{closer}: {inc:#}").as_str(),
        );
        assert_eq!(s["losses"]["events_rate_limited"], 0);
        assert_eq!(s["losses"]["events_ring_full"], 0);

        // Every state change is attributed by its socket: the client's sockets (remote
        // port = the server's) to the client, the server's (local port) to the server,
        // whichever task the softirq that made the change interrupted.
        let ev = events(&lines);
        let states: Vec<_> = ev.iter().filter(|e| e.0 == "state").collect();
        assert!(
            states.len() >= 50 * 8,
            "{closer}: only {} state events",
            states.len()
        );
        for (kind, pid, local, remote, old, new) in &states {
            let owner = if *local == u64::from(port) {
                u64::from(server_pid)
            } else {
                assert_eq!(*remote, u64::from(port), "{kind} {old}->{new}");
                u64::from(client)
            };
            assert_eq!(
                *pid, owner,
                "{closer}: {old} -> {new} local :{local} remote :{remote}"
            );
        }
        // The side that closed first went ESTABLISHED -> FIN_WAIT1 50 times, the other
        // ESTABLISHED -> CLOSE_WAIT.
        let (first_pid, other_pid) = if closer == "client" {
            (u64::from(client), u64::from(server_pid))
        } else {
            (u64::from(server_pid), u64::from(client))
        };
        let count = |pid: u64, old: &str, new: &str| {
            states
                .iter()
                .filter(|e| e.1 == pid && e.4 == old && e.5 == new)
                .count()
        };
        let seen = |pid: u64, old: &str, new: &str, want: u64| {
            counted(&Value::from(count(pid, old, new) as u64), want, s, closer);
        };
        seen(first_pid, "ESTABLISHED", "FIN_WAIT1", 50);
        seen(other_pid, "ESTABLISHED", "CLOSE_WAIT", 50);
        assert_eq!(count(other_pid, "ESTABLISHED", "FIN_WAIT1"), 0, "{closer}");
        seen(u64::from(client), "SYN_SENT", "ESTABLISHED", 50);
        seen(u64::from(server_pid), "SYN_RECV", "ESTABLISHED", 50);
    }
}

#[test]
#[ignore = "needs root"]
fn a_narrowed_port_range_gives_an_exact_count_of_eaddrnotavail() {
    require_root();
    let ns = Netns::new("traceports");
    let trace = start_trace(&ns, &[]);
    // The listener first: its own port must not come out of the narrowed range.
    let (server, port) = start_server(&ns, &[]);
    // 10 ports (40000 and 40009 differ in parity, so the kernel does not complain).
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40009");
    assert!(!(40000..=40009).contains(&port), "listener on {port}");
    // Holds each connection: the 11th and later connect() calls find no port.
    let to = format!("127.0.0.1:{port}");
    let c = Lines::spawn(
        ns.command(
            sockfarm(),
            &[
                "--churn-connect",
                &to,
                "--churn-count",
                "37",
                "--churn-hold",
                "--hold-secs",
                "300",
            ],
        ),
        "churn client",
    );
    let client = c.pid();
    let result = c.next_json();
    assert_eq!(result["connected"], 10, "{result}");
    assert_eq!(result["failed"]["EADDRNOTAVAIL"], 27, "{result}");
    settle();
    let lines = trace.terminate();
    c.finish();
    server.finish();
    let s = summary(&lines);
    let out = flow(s, client, "active", port);
    counted(&out["opened"], 10, s, format!("{out:#}").as_str());
    counted(
        &out["connect_failures"]["EADDRNOTAVAIL"],
        27,
        s,
        format!("{out:#}").as_str(),
    );
    let others: u64 = out["connect_failures"]
        .as_object()
        .expect("failures")
        .iter()
        .filter(|(k, _)| *k != "EADDRNOTAVAIL")
        .map(|(_, v)| v.as_u64().unwrap_or(0))
        .sum();
    assert_eq!(others, 0, "{out:#}");
    assert_eq!(out["closed"]["local"], 0, "still held");
}

#[test]
#[ignore = "needs root"]
fn so_linger_zero_closes_are_resets_sent_by_the_closing_pid() {
    require_root();
    for closer in ["client", "server"] {
        let ns = Netns::new(&format!("tracerst{closer}"));
        let trace = start_trace(&ns, &[]);
        let (server, port) = start_server(&ns, &["--churn-closer", closer, "--churn-linger0"]);
        let (client, result) = run_client(
            &ns,
            port,
            &[
                "--churn-count",
                "40",
                "--churn-rate",
                "200",
                "--churn-closer",
                closer,
                "--churn-linger0",
            ],
        );
        assert_eq!(result["connected"], 40, "{result}");
        settle();
        let lines = trace.terminate();
        let server_pid = server.pid();
        server.finish();
        let s = summary(&lines);
        let out = flow(s, client, "active", port);
        let inc = flow(s, server_pid, "passive", port);
        let (aborter, other) = if closer == "client" {
            (out, inc)
        } else {
            (inc, out)
        };
        counted(
            &aborter["resets"]["sent"],
            40,
            s,
            format!("{closer}: {aborter:#}").as_str(),
        );
        assert_eq!(aborter["resets"]["received"], 0, "{closer}: {aborter:#}");
        counted(
            &aborter["closed"]["local"],
            40,
            s,
            format!("{closer}: {aborter:#}").as_str(),
        );
        counted(
            &other["resets"]["received"],
            40,
            s,
            format!("{closer}: {other:#}").as_str(),
        );
        assert_eq!(other["resets"]["sent"], 0, "{closer}: {other:#}");
        counted(
            &other["closed"]["peer"],
            40,
            s,
            format!("{closer}: {other:#}").as_str(),
        );
        // No reset went to a flow without an owner.
        for f in s["flows"].as_array().expect("flows") {
            assert_ne!(f["pid"], 0, "{closer}: unattributed flow {f:#}");
        }
    }
}

#[test]
#[ignore = "needs root"]
fn a_keep_alive_client_opens_once_and_closes_nothing() {
    require_root();
    let ns = Netns::new("tracekeep");
    let trace = start_trace(&ns, &[]);
    let (server, port) = start_server(&ns, &[]);
    let to = format!("127.0.0.1:{port}");
    let c = Lines::spawn(
        ns.command(
            sockfarm(),
            &[
                "--churn-connect",
                &to,
                "--churn-keepalive",
                "--churn-count",
                "40",
                "--churn-rate",
                "40",
                "--hold-secs",
                "300",
            ],
        ),
        "keep-alive client",
    );
    let client = c.pid();
    let result = c.next_json();
    assert_eq!(result["exchanged"], 40, "{result}");
    settle();
    // Stopped while the connection is still open.
    let lines = trace.terminate();
    c.finish();
    let server_pid = server.pid();
    server.finish();
    let s = summary(&lines);
    let out = flow(s, client, "active", port);
    counted(&out["opened"], 1, s, format!("{out:#}").as_str());
    assert_eq!(out["closed"]["local"], 0, "{out:#}");
    assert_eq!(out["closed"]["peer"], 0, "{out:#}");
    assert_eq!(out["closed"]["unknown"], 0, "{out:#}");
    let inc = flow(s, server_pid, "passive", port);
    counted(&inc["opened"], 1, s, format!("{inc:#}").as_str());
    counted(&s["totals"]["opened"], 2, s, "s['totals']['opened']");
    assert_eq!(s["totals"]["closed_per_s"], 0.0);
    assert_eq!(s["totals"]["resets"]["sent"], 0);
}

#[test]
#[ignore = "needs root"]
fn without_privilege_trace_says_so_in_one_line_and_exits_3() {
    require_root();
    let ns = Netns::new("tracenopriv");
    let out = ns.run_tcpdoctor_unprivileged(&["trace", "--duration", "1"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.contains("needs root"), "{err}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn bad_trace_flags_are_refused_in_one_line() {
    for args in [
        vec!["trace", "--interval", "0"],
        vec!["trace", "--duration", "-1"],
        // --events-limit without --events
        vec!["trace", "--events-limit", "5"],
    ] {
        let out = run_bounded(Command::new(TCPDOCTOR).args(&args), Duration::from_secs(30))
            .expect("runs");
        assert_eq!(out.status.code(), Some(3), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
    }
}

#[test]
#[ignore = "needs root"]
fn a_listener_and_a_connection_open_before_tracing_are_named() {
    require_root();
    let ns = Netns::new("traceearly");
    let (server, port) = start_server(&ns, &[]);
    let to = format!("127.0.0.1:{port}");
    let early = Lines::spawn(
        ns.command(
            sockfarm(),
            &[
                "--churn-connect",
                &to,
                "--churn-keepalive",
                "--churn-count",
                "5",
                "--hold-secs",
                "300",
            ],
        ),
        "keep-alive client",
    );
    let early_pid = early.pid();
    assert_eq!(early.next_json()["exchanged"], 5);
    // Both the listener and the connection exist before the tracer starts.
    let trace = start_trace(&ns, &[]);
    early.finish(); // closes its connection first
    let (client, result) = run_client(&ns, port, &["--churn-count", "20", "--churn-rate", "200"]);
    assert_eq!(result["connected"], 20, "{result}");
    settle();
    let lines = trace.terminate();
    let server_pid = server.pid();
    server.finish();
    let s = summary(&lines);

    // The listener's owner came from the owner scan at start.
    let inc = flow(s, server_pid, "passive", port);
    counted(
        &inc["opened"],
        20,
        s,
        format!("only the new ones: {inc:#}").as_str(),
    );
    assert_eq!(
        inc["closed"]["peer"], 21,
        "the new ones and the early one: {inc:#}"
    );
    // The early connection's owner came from its close() call.
    let gone = flow(s, early_pid, "active", port);
    assert_eq!(gone["opened"], 0, "{gone:#}");
    counted(&gone["closed"]["local"], 1, s, format!("{gone:#}").as_str());
    assert_eq!(
        gone["lifetimes"]["count"], 0,
        "its start was not seen: {gone:#}"
    );
    let out = flow(s, client, "active", port);
    counted(&out["opened"], 20, s, format!("{out:#}").as_str());
    assert!(
        s["losses"]["untracked_connections"].as_u64() >= Some(2),
        "{s:#}"
    );
}

#[test]
#[ignore = "needs root"]
fn events_are_capped_by_the_limit_in_the_kernel() {
    require_root();
    let ns = Netns::new("tracecap");
    let trace = start_trace(&ns, &["--events", "--events-limit", "100"]);
    let (server, port) = start_server(&ns, &[]);
    // About ten events per connection, as fast as the client can: thousands in well
    // under a second.
    let (_, result) = run_client(&ns, port, &["--churn-count", "400"]);
    assert_eq!(result["connected"], 400, "{result}");
    let burst_ms = result["elapsed_ms"].as_u64().expect("elapsed");
    settle();
    let lines = trace.terminate();
    server.finish();
    let s = summary(&lines);
    let sent = lines.iter().filter(|l| l["record"] == "event").count() as u64;
    let cpus = thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    // Each CPU may send ceil(100 / cpus) in each of its one-second windows; a burst of
    // T ms touches at most ceil(T / 1000) + 1 of them.
    let windows = burst_ms.div_ceil(1000) + 1;
    let cap = 100u64.div_ceil(cpus) * cpus * windows;
    assert!(
        sent > 0 && sent <= cap,
        "{sent} events, cap {cap} ({burst_ms} ms)"
    );
    assert_eq!(s["losses"]["events_sent"], sent, "{s:#}");
    // The rest of the ~4000 events were dropped in the kernel, and counted.
    let limited = s["losses"]["events_rate_limited"].as_u64().unwrap_or(0);
    assert!(
        sent + limited >= 3000,
        "{sent} sent, {limited} limited: {s:#}"
    );
}

#[test]
#[ignore = "needs root"]
fn ipv6_connections_are_traced_with_their_address() {
    require_root();
    let ns = Netns::new("tracev6");
    let trace = start_trace(&ns, &[]);
    let server = Lines::spawn(
        ns.command(
            sockfarm(),
            &["--churn-serve", "[::1]:0", "--hold-secs", "300"],
        ),
        "churn server v6",
    );
    let ready = server.next_json();
    let listen = ready["listen"].as_str().expect("listen").to_string();
    let port: u16 = listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let c = Lines::spawn(
        ns.command(
            sockfarm(),
            &[
                "--churn-connect",
                &listen,
                "--churn-count",
                "20",
                "--churn-rate",
                "200",
                "--hold-secs",
                "300",
            ],
        ),
        "churn client v6",
    );
    let client = c.pid();
    assert_eq!(c.next_json()["connected"], 20);
    c.finish();
    settle();
    let lines = trace.terminate();
    let server_pid = server.pid();
    server.finish();
    let s = summary(&lines);
    let flows = s["flows"].as_array().expect("flows");
    let out = flows
        .iter()
        .find(|f| f["pid"] == client)
        .unwrap_or_else(|| panic!("client flow in {s:#}"));
    assert_eq!(out["remote"], format!("[::1]:{port}"), "{out:#}");
    counted(&out["opened"], 20, s, "out['opened']");
    counted(&out["closed"]["local"], 20, s, "out['closed']['local']");
    let inc = flow(s, server_pid, "passive", port);
    counted(&inc["closed"]["peer"], 20, s, format!("{inc:#}").as_str());
}

#[test]
#[ignore = "needs root"]
fn the_human_summary_shows_the_counts_per_process() {
    require_root();
    let ns = Netns::new("tracehuman");
    // Not a terminal: no live table, only the summary at the end (SIGTERM).
    let mut cmd = Command::new(TCPDOCTOR);
    cmd.args(["trace", "--netns", ns.name()]);
    let mut child = cmd
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tcpdoctor trace");
    // It says on stderr that it runs (once attached).
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut first = String::new();
    err.read_line(&mut first).expect("stderr line");
    assert!(first.contains("tracing"), "{first}");
    let (server, port) = start_server(&ns, &["--churn-closer", "server"]);
    let (client, result) = run_client(
        &ns,
        port,
        &[
            "--churn-count",
            "100",
            "--churn-rate",
            "200",
            "--churn-closer",
            "server",
        ],
    );
    assert_eq!(result["connected"], 100, "{result}");
    settle();
    // SAFETY: plain syscall on our own unreaped child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_TIMEOUT;
    while child.try_wait().ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "trace did not stop");
        thread::sleep(Duration::from_millis(20));
    }
    let server_pid = server.pid();
    server.finish();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut text)
        .expect("read stdout");
    assert!(
        text.contains("outgoing: 100 connections opened")
            && text.contains("incoming: 100 connections opened"),
        "{text}"
    );
    let row = |pid: u32| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(pid.to_string().as_str()))
            .unwrap_or_else(|| panic!("no row for pid {pid}:\n{text}"))
            .to_string()
    };
    let out = row(client);
    assert!(out.contains(&format!("out  127.0.0.1:{port}")), "{out}");
    assert!(out.contains("peer 100%"), "the server closed first: {out}");
    let inc = row(server_pid);
    assert!(inc.contains(&format!("in   :{port}")), "{inc}");
    assert!(inc.contains("local 100%"), "{inc}");
}

/// One TCP segment (IPv4, no options) from 127.0.0.1:`sport` to 127.0.0.1:`dport` with
/// `flags`, checksum included, for a raw socket (the kernel adds the IP header).
fn tcp_segment(sport: u16, dport: u16, flags: u8) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..8].copy_from_slice(&1000u32.to_be_bytes());
    h[8..12].copy_from_slice(&2000u32.to_be_bytes());
    h[12] = 5 << 4; // 20-byte header
    h[13] = flags;
    h[14..16].copy_from_slice(&1024u16.to_be_bytes());
    // Checksum over the pseudo-header (source, destination, protocol 6, length 20).
    let mut sum: u32 = 0x7f00 + 0x0001 + 0x7f00 + 0x0001 + 6 + 20;
    for pair in h.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    h[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    h
}

/// Resets this host sends for segments no socket wanted: a SYN to a port nothing
/// listens on is counted for that port; any other segment (a late one of a connection
/// gone here, toward its ephemeral port) is counted with the others under port 0,
/// never one flow per port, which filled the flow table on a busy server.
#[test]
#[ignore = "needs root"]
fn resets_for_segments_of_gone_connections_share_one_flow() {
    require_root();
    const ACKS: u16 = 30;
    const SYNS: u64 = 5;
    let ns = Netns::new("tracerst0");
    let trace = start_trace(&ns, &[]);
    ns.run_inside(|| {
        // SAFETY: plain socket calls on a descriptor this closure owns and closes.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let to = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
                },
                sin_zero: [0; 8],
            };
            let send = |seg: [u8; 20]| {
                let n = libc::sendto(
                    fd,
                    seg.as_ptr().cast(),
                    seg.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
                assert_eq!(n, 20, "sendto: {}", std::io::Error::last_os_error());
            };
            // ACKs to 30 ports no connection uses (as after the connections closed).
            for i in 0..ACKS {
                send(tcp_segment(5555, 41_000 + i, 0x10));
            }
            for _ in 0..SYNS {
                send(tcp_segment(5556, 39_999, 0x02));
            }
            libc::close(fd);
        }
    });
    settle();
    let lines = trace.terminate();
    let s = summary(&lines);
    let flows = s["flows"].as_array().expect("flows");
    let per_port: Vec<&Value> = flows
        .iter()
        .filter(|f| {
            f["local_port"]
                .as_u64()
                .is_some_and(|p| (41_000..41_000 + u64::from(ACKS)).contains(&p))
        })
        .collect();
    assert!(per_port.is_empty(), "one flow per port: {per_port:#?}");
    let gone = flow(s, 0, "passive", 0);
    counted(
        &gone["resets"]["sent"],
        u64::from(ACKS),
        s,
        "resets under port 0",
    );
    let refused = flow(s, 0, "passive", 39_999);
    counted(&refused["resets"]["sent"], SYNS, s, "resets for the SYNs");
}
