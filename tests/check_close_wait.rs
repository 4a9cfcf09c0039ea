//! `check` on real CLOSE_WAIT sockets in a private network namespace: a server that
//! closes half a second after its peers is slow, not leaking; a leak three seconds old
//! is a leak; a client-side leak is grouped by its destination, and its `ss -K` line
//! acts on exactly those sockets (whose descriptors then count as detached); descriptors
//! of sockets the peer reset name their process and exact count; as an unprivileged
//! user, sockets whose owner cannot be seen are grouped by their port. Needs root and
//! the sockfarm helper (`cargo test --features sockfarm -- --include-ignored`).

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;

use common::churn;
use common::netns::Netns;
use common::report::findings;
use common::require_root;
use common::run::{code_and_json, wait_for};

/// `check --json --interval SECS` inside `ns` (its namespace only): exit code and JSON.
fn check(ns: &Netns, interval: &str) -> (i32, Value) {
    code_and_json(&ns.run_tcpdoctor(&["check", "--json", "--interval", interval]))
}

/// CLOSE_WAIT sockets `ss` lists in `ns`, with `filter` (ss filter words).
fn ss_close_wait(ns: &Netns, filter: &[&str]) -> u64 {
    let mut args = vec!["-tanH", "state", "close-wait"];
    args.extend_from_slice(filter);
    let out = ns.run_ss(&args);
    assert!(out.status.success(), "ss {args:?}");
    String::from_utf8_lossy(&out.stdout).lines().count() as u64
}

/// The one finding of `rule`, or a failure listing them all.
fn only<'a>(v: &'a Value, rule: &str) -> &'a Value {
    let f = findings(v, rule);
    assert_eq!(f.len(), 1, "one {rule} in {:#}", v["findings"]);
    f[0]
}

fn commands(f: &Value) -> Vec<String> {
    f["fix"]
        .as_array()
        .expect("fix")
        .iter()
        .filter_map(|s| s["command"].as_str().map(str::to_string))
        .collect()
}

/// Issue 9, item 2: a server that closes each connection 0.5 s after the client's FIN,
/// under steady churn (100 connections/s, so about 50 in CLOSE_WAIT at any moment), is
/// reported as slow to close with a delay near 0.5 s, never as a leak.
#[test]
#[ignore = "needs root"]
fn a_server_closing_half_a_second_after_its_peers_is_slow_not_leaking() {
    require_root();
    let ns = Netns::new("cwslow");
    let (server, port) = churn::start_server(&ns, &["--churn-close-delay-ms", "500"]);
    let to = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let _client = churn::spawn_farm(
        &ns,
        &[
            "--churn-connect",
            &to,
            "--churn-count",
            "6000",
            "--churn-rate",
            "100",
        ],
        "churn client",
    );
    // Steady state: more than close_wait_warn (10) waiting for their close, and the
    // churn older than the delay (before, the oldest have not waited 0.5 s yet).
    let sport = format!(":{port}");
    wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
        (ss_close_wait(&ns, &["sport", "=", &sport]) >= 20).then_some(())
    })
    .expect("the slow closer's CLOSE_WAIT sockets");
    std::thread::sleep(Duration::from_secs(2).saturating_sub(started.elapsed()));
    let (_, v) = check(&ns, "1");
    assert!(
        findings(&v, "close_wait_leak").is_empty(),
        "a slow closer is not a leak: {:#}",
        v["findings"]
    );
    // Clients that close right after connecting leave a few children in CLOSE_WAIT in
    // the accept queue for a moment; the server accepts them: not "not accepting".
    assert!(
        findings(&v, "close_wait_unaccepted").is_empty(),
        "{:#}",
        v["findings"]
    );
    let f = only(&v, "close_wait_slow_close");
    assert_eq!(f["severity"], "warning");
    assert_eq!(f["data"]["verdict"], "slow_close", "{f:#}");
    assert_eq!(f["data"]["pid"], server.pid(), "{f:#}");
    let delay = f["data"]["close_delay_ms"].as_u64().expect("a delay");
    // Closed 500 ms after the FIN, by a thread that looks every 2 ms; a loaded machine
    // adds scheduling delay, never takes any away.
    assert!((450..=1500).contains(&delay), "delay {delay} ms: {f:#}");
    assert!(
        f["title"]
            .as_str()
            .is_some_and(|t| t.contains("is slow to close: closes about")),
        "{f:#}"
    );
    assert!(f["data"]["closed_meanwhile"].as_u64() > Some(0), "{f:#}");
    assert!(f["data"]["count"].as_u64() >= Some(10), "{f:#}");
    assert_eq!(f["data"]["served_ports"][0]["port"], port, "{f:#}");
    assert_eq!(f["data"]["pattern"], "eof_read", "it read each EOF: {f:#}");
}

/// Issue 9, item 2: a real leak only 3 s old (nobody will ever close these) is still a
/// leak: every socket is still there at the second look and none was closed.
#[test]
#[ignore = "needs root"]
fn a_leak_three_seconds_old_is_a_leak() {
    require_root();
    let ns = Netns::new("cwyoung");
    let farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--close-wait",
        "12",
        "--established",
        "2",
        "--hold-secs",
        "300",
    ]);
    let made = Instant::now();
    let worker = farm.ready.workers[0].pid;
    let port = farm.ready.listeners[0].port();
    std::thread::sleep(Duration::from_secs(3).saturating_sub(made.elapsed()));
    let (code, v) = check(&ns, "1");
    assert!(
        findings(&v, "close_wait_slow_close").is_empty(),
        "{:#}",
        v["findings"]
    );
    let f = only(&v, "close_wait_leak");
    assert_eq!(code, 1, "a warning exits 1");
    assert_eq!(f["data"]["verdict"], "still_there", "{f:#}");
    assert_eq!(f["data"]["pid"], worker, "{f:#}");
    assert_eq!(f["data"]["leaked"], 12, "{f:#}");
    assert_eq!(f["data"]["still_there"], 12, "{f:#}");
    assert_eq!(f["data"]["closed_meanwhile"], 0, "{f:#}");
    let oldest = f["data"]["oldest_idle_ms"].as_u64().expect("tcp_info ages");
    assert!(
        (2_900..=60_000).contains(&oldest),
        "oldest {oldest} ms: {f:#}"
    );
    // Server ends: grouped by the port served, never by the clients' ephemeral ports.
    assert_eq!(
        f["data"]["served_ports"],
        serde_json::json!([{"port": port, "count": 12, "peers": [{"address": "127.0.0.1", "count": 12}]}]),
        "{f:#}"
    );
    assert_eq!(f["data"]["destinations"], serde_json::json!([]), "{f:#}");
    assert_eq!(f["evidence"][1]["label"], format!("served port {port}"));
    assert!(
        commands(f).contains(&format!("ss -K state close-wait sport = :{port}")),
        "{f:#}"
    );
    // The farm's clients shut down their side and never sent: Recv-Q 1 on a served port.
    assert_eq!(f["data"]["pattern"], "idle_keepalive", "{f:#}");
    drop(farm);
}

/// Issue 9, item 7: a client that leaks towards one server (20 ephemeral local ports,
/// one destination) is one group, the destination, with its `ss -K` line; that line,
/// run as given, destroys exactly those 20 sockets, after which the client holds 20
/// descriptors of closed sockets that `detached_descriptors` names.
#[test]
#[ignore = "needs root"]
fn a_client_side_leak_is_grouped_by_destination_and_its_kill_line_works() {
    require_root();
    let ns = Netns::new("cwclient");
    let (_server, port) = churn::start_server(&ns, &["--churn-closer", "server"]);
    let to = format!("127.0.0.1:{port}");
    let client = churn::spawn_farm(
        &ns,
        &[
            "--churn-connect",
            &to,
            "--churn-count",
            "20",
            "--churn-hold",
            "--churn-closer",
            "server",
        ],
        "churn client",
    );
    let result = client.next_json();
    assert_eq!(result["connected"], 20, "{result}");
    let dport = format!(":{port}");
    wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        (ss_close_wait(&ns, &["dport", "=", &dport]) == 20).then_some(())
    })
    .expect("20 client ends in CLOSE_WAIT");

    let (_, v) = check(&ns, "0.5");
    let f = only(&v, "close_wait_leak");
    assert_eq!(f["data"]["pid"], client.pid(), "{f:#}");
    assert_eq!(f["data"]["leaked"], 20);
    assert_eq!(
        f["data"]["destinations"],
        serde_json::json!([{"address": "127.0.0.1", "port": port, "count": 20}]),
        "{f:#}"
    );
    assert_eq!(f["data"]["served_ports"], serde_json::json!([]), "{f:#}");
    assert_eq!(f["evidence"][1]["label"], format!("to 127.0.0.1:{port}"));
    assert_eq!(f["evidence"][1]["value"], "20 sockets");
    assert_eq!(f["data"]["pattern"], "idle_pooled", "{f:#}");
    assert!(
        f["why"]
            .as_str()
            .is_some_and(|w| w.contains("idle pooled connections")),
        "{f:#}"
    );
    let kill = format!("ss -K state close-wait dst 127.0.0.1 dport = :{port}");
    assert!(commands(f).contains(&kill), "{f:#}");
    assert!(findings(&v, "detached_descriptors").is_empty());

    // The stopgap as printed: the 20 sockets leave every table, the descriptors stay.
    let words: Vec<&str> = kill.split_whitespace().collect();
    let out = ns.run_ss(&words[1..]);
    assert!(
        out.status.success(),
        "{kill}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ss_close_wait(&ns, &[]), 0);
    let (_, v) = check(&ns, "0.2");
    assert!(findings(&v, "close_wait_leak").is_empty());
    let d = only(&v, "detached_descriptors");
    assert_eq!(d["data"]["pid"], client.pid(), "{d:#}");
    assert_eq!(d["data"]["count"], 20, "{d:#}");
}

/// Issue 9, advice on keepalive/RST: descriptors of CLOSE_WAIT sockets the peer reset
/// (gone from every table, still open in the process) name the process and the exact
/// count; the same farm without the reset has none.
#[test]
#[ignore = "needs root"]
fn descriptors_of_reset_close_wait_sockets_name_the_process_and_count() {
    require_root();
    let ns = Netns::new("cwdetach");
    let farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--close-wait",
        "13",
        "--reset-close-wait",
        "--established",
        "3",
        "--hold-secs",
        "300",
    ]);
    let worker = farm.ready.workers[0].pid;
    assert_eq!(
        ss_close_wait(&ns, &[]),
        0,
        "the reset ones left every table"
    );
    let (code, v) = check(&ns, "0.2");
    let d = only(&v, "detached_descriptors");
    assert_eq!(code, 1, "a warning exits 1");
    assert_eq!(d["data"]["pid"], worker, "{d:#}");
    assert_eq!(d["data"]["comm"], "sockfarm");
    assert_eq!(d["data"]["count"], 13, "{d:#}");
    assert_eq!(
        d["title"],
        format!(
            "sockfarm (pid {worker}) holds 13 descriptors of TCP sockets the kernel has closed"
        )
    );
    assert!(
        commands(d).contains(&format!("ls -l /proc/{worker}/fd | grep -c socket")),
        "{d:#}"
    );
    drop(farm);

    let calm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--close-wait",
        "13",
        "--established",
        "3",
        "--hold-secs",
        "300",
    ]);
    let (_, v) = check(&ns, "0.5");
    assert!(
        findings(&v, "detached_descriptors").is_empty(),
        "{:#}",
        v["findings"]
    );
    // Not reset: they are a CLOSE_WAIT leak instead.
    assert_eq!(only(&v, "close_wait_leak")["data"]["leaked"], 13);
    drop(calm);
}

/// Issue 9, item 9: as an unprivileged user the owner of root's sockets is not visible.
/// They are one finding per served port (never one pseudo-process for everything
/// unseen), saying why and how to find the owner.
#[test]
#[ignore = "needs root"]
fn sockets_whose_owner_is_not_visible_are_grouped_by_port() {
    require_root();
    let ns = Netns::new("cwunseen");
    let farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--close-wait",
        "24",
        "--hold-secs",
        "300",
    ]);
    let ports: Vec<u16> = farm.ready.listeners.iter().map(|l| l.port()).collect();
    let out = ns.run_tcpdoctor_unprivileged(&["check", "--json", "--interval", "0.5"]);
    let (_, v) = code_and_json(&out);
    let leaks = findings(&v, "close_wait_leak");
    assert_eq!(leaks.len(), 2, "one per served port: {:#}", v["findings"]);
    for port in &ports {
        let f = leaks
            .iter()
            .find(|f| f["data"]["served_ports"][0]["port"] == *port)
            .unwrap_or_else(|| panic!("no finding for port {port}: {leaks:#?}"));
        assert_eq!(f["data"]["pid"], Value::Null);
        assert_eq!(f["data"]["owner_visible"], false);
        assert_eq!(
            f["data"]["leaked"], 12,
            "round robin over the listeners: {f:#}"
        );
        assert_eq!(
            f["title"].as_str().map(|t| t.starts_with(&format!(
                "CLOSE_WAIT leak on port {port} (owner not visible): 12 sockets"
            ))),
            Some(true),
            "{f:#}"
        );
        let owner = f["evidence"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["label"] == "owner"))
            .unwrap_or_else(|| panic!("owner line: {f:#}"));
        assert!(
            owner["value"]
                .as_str()
                .is_some_and(|v| v.contains("run as root")),
            "{owner}"
        );
        let cmds = commands(f);
        assert!(
            cmds.contains(&format!("ss -tanp state close-wait sport = :{port}")),
            "{cmds:?}"
        );
        assert!(
            cmds.contains(&format!(
                "tcpdoctor sockets --state close-wait --local :{port} -i"
            )),
            "{cmds:?}"
        );
    }
    drop(farm);
}
