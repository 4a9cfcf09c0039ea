//! What `check` learns from its second look and from the descriptors: CLOSE_WAIT
//! sockets still there `--interval` later (a leak, not a slow closer), and descriptors
//! of TCP sockets the peer reset that no socket table lists any more. Real sockets in
//! a private network namespace; needs root.

mod common;

use common::netns::Netns;
use common::run::{wait_for, RUN_TIMEOUT};
use serde_json::Value;
use std::time::Duration;

/// `check --json` inside `ns`, only that namespace.
fn check(ns: &Netns, interval: &str) -> Value {
    let out = ns.run_tcpdoctor(&["check", "--json", "--interval", interval]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check --json is not JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn only_namespace(v: &Value) -> &Value {
    let all = v["namespaces"].as_array().expect("namespaces");
    assert_eq!(all.len(), 1, "{all:#?}");
    &all[0]
}

/// CLOSE_WAIT sockets `ss` lists in the namespace.
fn ss_close_wait(ns: &Netns) -> u64 {
    ns.ss_state_counts(&[])
        .get("CLOSE_WAIT")
        .copied()
        .unwrap_or(0)
}

#[test]
#[ignore = "needs root"]
fn a_close_wait_leak_is_still_there_at_the_second_look() {
    let ns = Netns::new("cwrecheck");
    let farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "[::1]:0",
        "--close-wait",
        "7",
        "--close-wait-read",
        "2",
        "--established",
        "3",
        "--hold-secs",
        "300",
    ]);
    assert_eq!(farm.ready.expected("CLOSE_WAIT"), 9);
    assert_eq!(ss_close_wait(&ns), 9);
    let v = check(&ns, "0.5");
    let n = only_namespace(&v);
    assert_eq!(n["close_wait"]["sockets"], 9, "{n:#}");
    // Nobody closes them: every one is still there at the second dump.
    assert_eq!(n["close_wait"]["still_there"], 9, "{n:#}");
    let after = n["close_wait"]["rechecked_after_ms"]
        .as_u64()
        .expect("re-checked");
    // The second look comes 0.5 s after the collection started, the first a few ms
    // into it: about 500 ms apart, never less than half of it.
    assert!(after >= 250, "{n:#}");
    // Both dumps fall within one run; the run's own bound (RUN_TIMEOUT) caps it.
    assert!(after < RUN_TIMEOUT.as_millis() as u64, "{n:#}");
    drop(farm);
}

#[test]
#[ignore = "needs root"]
fn descriptors_of_close_wait_sockets_reset_by_the_peer_are_counted_as_detached() {
    let ns = Netns::new("detached");
    // 6 CLOSE_WAIT connections reset by their peers (3 IPv4, 3 IPv6: round robin over
    // the listeners), 2 left in CLOSE_WAIT, 4 ESTABLISHED: only the 6 are detached.
    let farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "[::1]:0",
        "--close-wait",
        "6",
        "--reset-close-wait",
        "--close-wait-read",
        "2",
        "--established",
        "4",
        "--hold-secs",
        "300",
    ]);
    let worker = farm.ready.workers[0].pid;
    // The reset sockets are gone from every table `ss` reads.
    assert_eq!(ss_close_wait(&ns), 2);
    assert_eq!(farm.ready.expected("CLOSE_WAIT"), 2);
    let v = check(&ns, "0.2");
    let n = only_namespace(&v);
    assert_eq!(n["counts"]["total"]["CLOSE_WAIT"], 2, "{n:#}");
    assert_eq!(n["close_wait"]["still_there"], 2, "{n:#}");
    let d = &n["detached_tcp_fds"];
    assert_eq!(d["total"], 6, "{n:#}");
    let processes = d["processes"].as_array().expect("processes");
    assert_eq!(processes.len(), 1, "{d:#}");
    assert_eq!(processes[0]["pid"], worker);
    assert_eq!(processes[0]["comm"], "sockfarm");
    assert_eq!(processes[0]["count"], 6);

    // The same farm without the reset: nothing detached.
    drop(farm);
    let calm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--close-wait",
        "6",
        "--established",
        "4",
        "--hold-secs",
        "300",
    ]);
    let v = check(&ns, "0.2");
    let n = only_namespace(&v);
    assert_eq!(n["detached_tcp_fds"]["total"], 0, "{n:#}");
    assert_eq!(n["close_wait"]["still_there"], 6, "{n:#}");
    drop(calm);
}

/// The soft RLIMIT_NOFILE of `pid` from /proc/PID/limits.
fn nofile_soft(pid: u32) -> f64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no soft limit in {limits}"))
}

#[test]
#[ignore = "needs root"]
fn descriptors_of_a_growing_leak_are_counted_again_and_the_limit_is_dated() {
    let ns = Netns::new("cwrunway");
    // The parent leaks 3 connections every 500 ms, holding both ends: +6 descriptors a
    // step, 12 per second.
    let farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--close-wait",
        "12",
        "--grow-close-wait",
        "3",
        "--grow-every-ms",
        "500",
        "--grow-steps",
        "100",
        "--hold-secs",
        "120",
    ]);
    let parent = farm.ready.pid;
    // The first step comes 500 ms after the ready line: wait (bounded) until the parent
    // holds at least 6 CLOSE_WAIT beside the worker's 12, so check's first look finds
    // some to judge, and judge the leak from 3 (the worker's 12 are another finding).
    let grown = wait_for(RUN_TIMEOUT, Duration::from_millis(50), || {
        let n = ns
            .ss_state_counts(&[])
            .get("CLOSE_WAIT")
            .copied()
            .unwrap_or(0);
        (n >= 18).then_some(n)
    });
    assert!(grown.is_some(), "the farm's leak did not grow");
    let out = ns.run_tcpdoctor(&[
        "check",
        "--json",
        "--interval",
        "2",
        "--threshold",
        "close_wait_warn=3",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check --json is not JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let leak = v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["rule_id"] == "close_wait_leak" && f["data"]["pid"] == parent)
        .unwrap_or_else(|| panic!("no leak finding for pid {parent}: {:#}", v["findings"]));
    let r = &leak["data"]["descriptor_runway"];
    let num = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r:#}"));
    // About 2 s between the scan and the recount: 3 to 5 steps of 6.
    let growth = num("growth_per_s");
    assert!((6.0..=18.0).contains(&growth), "{growth}/s: {r:#}");
    let over = num("over_ms");
    assert!((1500.0..=4000.0).contains(&over), "{r:#}");
    // 2 to 6 steps of 6 descriptors (the first count is the owner scan's, a little
    // before the interval starts).
    let gained = (growth * over / 1000.0).round();
    assert!((12.0..=36.0).contains(&gained), "{gained} gained: {r:#}");
    assert_eq!(num("soft_limit"), nofile_soft(parent), "{r:#}");
    let open = num("open_fds");
    // Every leaked connection is two of its descriptors, plus its listeners and stdio.
    let close_wait = leak["data"]["count"].as_f64().expect("count");
    assert!(
        open >= 2.0 * close_wait,
        "{open} open, {close_wait} CLOSE_WAIT"
    );
    // growth_per_s is printed to 0.01/s, so the time left recomputed from it agrees
    // to about 0.1%.
    let left = (num("soft_limit") - open) / growth;
    assert!(
        (num("exhausted_in_s") - left).abs() <= left * 0.001 + 0.01,
        "{} s, expected {left}: {r:#}",
        num("exhausted_in_s")
    );
    assert!(
        leak["evidence"]
            .as_array()
            .expect("evidence")
            .iter()
            .any(|e| e["label"] == "descriptors growing"
                && e["value"]
                    .as_str()
                    .is_some_and(|t| t.contains("it is reached in about"))),
        "{:#}",
        leak["evidence"]
    );
}
