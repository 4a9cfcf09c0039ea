//! What `check` learns from its second look and from the descriptors: CLOSE_WAIT
//! sockets still there `--interval` later (a leak, not a slow closer), and descriptors
//! of TCP sockets the peer reset that no socket table lists any more. Real sockets in
//! a private network namespace; needs root.

mod common;

use common::netns::Netns;
use common::run::RUN_TIMEOUT;
use serde_json::Value;

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
    assert!(after > 0, "{n:#}");
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
