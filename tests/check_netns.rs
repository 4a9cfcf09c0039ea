//! `tcpdoctor check` on real conditions made in private network namespaces: each test
//! builds one problem (or none) and asserts the JSON report and the exit code.
//! Needs root (namespaces, sysctls, prlimit): `#[ignore = "needs root"]`.

mod common;

use std::process::Command;

use common::netns::Netns;
use common::report::findings;
use common::require_root;
use common::run::{code_and_json, must_run};
use serde_json::Value;

/// Runs `check --json` (short counter interval) and returns (exit code, report).
fn check(ns: &Netns, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["check", "--json"];
    if !extra.contains(&"--interval") {
        args.extend_from_slice(&["--interval", "0.2"]);
    }
    args.extend_from_slice(extra);
    code_and_json(&ns.run_tcpdoctor(&args))
}

fn worst(v: &Value) -> &str {
    v["status"].as_str().unwrap_or("?")
}

#[test]
#[ignore = "needs root"]
fn close_wait_leak_names_the_child_pid_and_count() {
    require_root();
    let ns = Netns::new("cwleak");
    let farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--close-wait",
        "20",
        "--established",
        "2",
        "--hold-secs",
        "300",
    ]);
    let worker = farm.ready.workers[0].pid;
    let (code, v) = check(&ns, &[]);
    let f = findings(&v, "close_wait_leak");
    assert_eq!(f.len(), 1, "{:#}", v["findings"]);
    assert_eq!(f[0]["data"]["pid"], worker);
    assert_eq!(f[0]["data"]["count"], 20);
    assert_eq!(f[0]["data"]["eof_unread"], 20);
    assert_eq!(f[0]["data"]["comm"], "sockfarm");
    assert_eq!(f[0]["severity"], "warning");
    assert_eq!(code, 1, "warnings exit 1");
    assert_eq!(v["counts"]["total"]["CLOSE_WAIT"], 20);
}

#[test]
#[ignore = "needs root"]
fn narrowed_port_range_storm_reports_exact_headroom_then_eaddrnotavail() {
    require_root();
    let ns = Netns::new("ports");
    // 100 ephemeral ports; tcp_tw_reuse off so TIME_WAIT really holds its port.
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40099");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0");
    let storm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:5000",
        "--time-wait",
        "60",
        "--hold-secs",
        "300",
    ]);
    let (code, v) = check(&ns, &[]);
    let f = findings(&v, "ephemeral_port_exhaustion");
    assert_eq!(f.len(), 1, "{:#}", v["findings"]);
    let dests = f[0]["data"]["destinations"]
        .as_array()
        .expect("destinations");
    assert_eq!(
        dests.len(),
        1,
        "only 127.0.0.1 -> 127.0.0.1:5000: {dests:#?}"
    );
    let d = &dests[0];
    // 60 TIME_WAIT clients hold 60 of the 100 ports.
    assert_eq!(d["used"], 60, "{d:#}");
    assert_eq!(d["time_wait"], 60, "{d:#}");
    assert_eq!(d["headroom"], 40, "{d:#}");
    assert_eq!(f[0]["data"]["usable"], 100);
    assert_eq!(
        f[0]["severity"], "warning",
        "60% is over the 50% warning, under 80%"
    );
    assert_eq!(code, 1);

    // The TIME_WAIT sockets outlive the farm. A new client needing more than the 40
    // ports left gets "Cannot assign requested address" from connect().
    let _ = storm.stop();
    let err = match ns.spawn_farm_within(
        &[
            "--listen",
            "127.0.0.1:5000",
            "--time-wait",
            "45",
            "--hold-secs",
            "60",
        ],
        std::time::Duration::from_secs(60),
    ) {
        Ok(_) => panic!("connect() should have failed once the 100 ports were used"),
        Err(e) => e,
    };
    assert!(
        err.contains("Cannot assign requested address") || err.contains("os error 99"),
        "{err}"
    );
}

#[test]
#[ignore = "needs root"]
fn low_fd_limit_near_exhaustion_names_the_process() {
    require_root();
    let ns = Netns::new("fds");
    let farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--established",
        "25",
        "--hold-secs",
        "300",
    ]);
    let worker = farm.ready.workers[0].pid;
    let open = std::fs::read_dir(format!("/proc/{worker}/fd"))
        .expect("fd dir")
        .count();
    // Lower the worker's limit just above what it holds: over 80%, under 95%.
    let limit = (open as f64 / 0.9).ceil() as usize;
    must_run(Command::new("prlimit").args([
        "--pid",
        &worker.to_string(),
        &format!("--nofile={limit}:{limit}"),
    ]));
    let (code, v) = check(&ns, &[]);
    let f = findings(&v, "fd_exhaustion");
    assert_eq!(f.len(), 1, "{:#}", v["findings"]);
    let procs = f[0]["data"]["processes"].as_array().expect("processes");
    let p = procs
        .iter()
        .find(|p| p["pid"] == worker)
        .unwrap_or_else(|| panic!("pid {worker} not named: {procs:#?}"));
    assert_eq!(p["open_fds"], open as u64);
    assert_eq!(p["nofile_soft"], limit as u64);
    assert_eq!(f[0]["severity"], "warning");
    assert_eq!(code, 1);
}

#[test]
#[ignore = "needs root"]
fn folklore_sysctls_are_flagged() {
    require_root();
    let ns = Netns::new("sysctl");
    ns.sysctl("net.ipv4.tcp_fin_timeout", "10");
    ns.sysctl("net.ipv4.tcp_timestamps", "0");
    let _farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--established",
        "2",
        "--hold-secs",
        "300",
    ]);
    let (code, v) = check(&ns, &[]);
    let audit = findings(&v, "sysctl_audit");
    let about = |key: &str| audit.iter().find(|f| f["data"]["sysctl"] == key).copied();
    let fin = about("net.ipv4.tcp_fin_timeout")
        .unwrap_or_else(|| panic!("no tcp_fin_timeout finding: {audit:#?}"));
    assert_eq!(fin["data"]["value"], "10");
    assert!(
        fin["why"].as_str().is_some_and(|w| w.contains("TIME_WAIT")),
        "{fin:#}"
    );
    let ts = about("net.ipv4.tcp_timestamps")
        .unwrap_or_else(|| panic!("no tcp_timestamps finding: {audit:#?}"));
    assert_eq!(ts["severity"], "warning");
    assert!(code >= 1);

    // --emit-sysctl proposes the fixes and writes nothing.
    let out = ns.run_tcpdoctor(&["check", "--emit-sysctl", "--interval", "0"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("net.ipv4.tcp_timestamps = 1"), "{text}");
    assert!(
        !text.contains("tcp_fin_timeout = "),
        "explained, not changed: {text}"
    );
    assert_eq!(
        ns.read_sysctl("net.ipv4.tcp_timestamps"),
        "0",
        "nothing written"
    );
}

#[test]
#[ignore = "needs root"]
fn healthy_namespace_has_no_warnings_and_exits_zero() {
    require_root();
    let ns = Netns::new("healthy");
    let _farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--established",
        "5",
        "--hold-secs",
        "300",
    ]);
    let (code, v) = check(&ns, &[]);
    let bad: Vec<&Value> = v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["severity"] != "info")
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    assert!(worst(&v) == "ok" || worst(&v) == "info", "{}", worst(&v));
    assert_eq!(code, 0);
    assert_eq!(v["counts"]["total"]["ESTABLISHED"], 10);
    // The human report says so too.
    let out = ns.run_tcpdoctor(&["check", "--interval", "0.2"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.ends_with(": no problems found, complete view")
            || first.contains("info), complete view"),
        "{text}"
    );
}

#[test]
#[ignore = "needs root"]
fn listener_that_never_accepts_gives_unaccepted_close_wait_and_overflow() {
    require_root();
    let ns = Netns::new("listen");
    // Backlog 4: the kernel queues 5; those clients give up (FIN), 3 more are dropped.
    let farm = ns.spawn_farm(&[
        "--backlog-listen",
        "127.0.0.1:0",
        "--backlog",
        "4",
        "--unaccepted",
        "5",
        "--give-up",
        "--overflow",
        "3",
        "--hold-secs",
        "300",
    ]);
    let listen_port = farm.ready.listeners[0].port();
    // SYN retransmits (1 s, then 3 s) hit the full queue during a 2.5 s sample.
    let (code, v) = check(&ns, &["--interval", "2.5"]);
    assert_eq!(v["counts"]["total"]["CLOSE_WAIT"], 5);
    assert_eq!(v["counts"]["total"]["SYN_SENT"], 3);

    let cw = findings(&v, "close_wait_unaccepted");
    assert_eq!(cw.len(), 1, "{:#}", v["findings"]);
    assert_eq!(cw[0]["data"]["count"], 5);
    assert_eq!(cw[0]["data"]["local_port"], listen_port);
    assert_eq!(cw[0]["data"]["listener"]["pid"], farm.ready.pid);
    assert_eq!(
        cw[0]["severity"], "critical",
        "the listener's queue is full"
    );
    // Owned CLOSE_WAIT and unaccepted are different findings.
    assert!(
        findings(&v, "close_wait_leak").is_empty(),
        "{:#}",
        v["findings"]
    );

    let lo = findings(&v, "listen_overflow");
    assert_eq!(lo.len(), 1, "{:#}", v["findings"]);
    assert_eq!(lo[0]["severity"], "critical");
    let l = &lo[0]["data"]["listeners"][0];
    assert_eq!(l["port"], listen_port);
    assert_eq!(l["accept_queue"], 5);
    assert_eq!(l["backlog"], 4);
    assert_eq!(l["full"], true);
    assert!(
        lo[0]["data"]["listen_overflows"]["total"]
            .as_u64()
            .unwrap_or(0)
            >= 3,
        "{:#}",
        lo[0]["data"]
    );
    assert_eq!(code, 2, "critical exits 2");
}
