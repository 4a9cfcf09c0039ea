//! Proves the sockfarm test helper: in a fresh network namespace the states it
//! claims to have built (`expected`) are exactly what `ss` sees, and it refuses,
//! reports and exits the way the other real-socket tests rely on.

mod common;

use std::collections::BTreeMap;

use common::netns::{Netns, FARM_READY_TIMEOUT};
use common::{require_root, KERNEL_STATES};

/// Asserts that every one of the 11 states has exactly the expected count.
fn assert_counts_match(expected: &BTreeMap<String, u64>, seen: &BTreeMap<String, u64>, ns: &Netns) {
    for state in KERNEL_STATES {
        let want = expected.get(state).copied();
        assert!(
            want.is_some(),
            "ready line lacks state {state}: {expected:?}"
        );
        let have = seen.get(state).copied().unwrap_or(0);
        assert_eq!(
            have,
            want.unwrap_or(0),
            "{state}: ss sees {have}, farm expected {want:?}\nss -tanH:\n{}",
            String::from_utf8_lossy(&ns.run_ss(&["-tanH"]).stdout)
        );
    }
}

/// Every fd the farm lists must be an open socket of the worker that lists it.
fn assert_fds_are_sockets(pid: u32, fd: i32) {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd/{fd}: {e}"));
    assert!(
        link.to_string_lossy().starts_with("socket:["),
        "/proc/{pid}/fd/{fd} -> {} is not a socket",
        link.display()
    );
}

#[test]
#[ignore = "needs root"]
fn farm_states_match_ss_exactly() {
    require_root();
    let ns = Netns::new("smoke");
    let farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "[::1]:0",
        "--established",
        "3",
        "--close-wait",
        "2",
        "--time-wait",
        "4",
    ]);
    let ready = &farm.ready;
    assert_eq!(
        ready.pid,
        farm.pid(),
        "ip netns exec must exec the farm, not fork it"
    );
    assert_eq!(ready.expected("ESTABLISHED"), 6);
    assert_eq!(ready.expected("CLOSE_WAIT"), 2);
    assert_eq!(ready.expected("FIN_WAIT2"), 2);
    assert_eq!(ready.expected("TIME_WAIT"), 4);
    assert_eq!(ready.expected("LISTEN"), 2);

    assert_counts_match(&ready.expected, &ns.ss_state_counts(&[]), &ns);

    // --close-wait leaves the EOF unread: Recv-Q counts the FIN (kernel-facts §8).
    let close_waits: Vec<_> = ns
        .ss_rows(&["-tanH"])
        .into_iter()
        .filter(|r| r.state == "CLOSE-WAIT")
        .collect();
    assert_eq!(close_waits.len(), 2);
    for r in &close_waits {
        assert_eq!(
            r.recv_q, 1,
            "CLOSE_WAIT {} <- {} should have Recv-Q 1",
            r.local, r.peer
        );
    }
    for list in [
        ready.sockets(|w| &w.established),
        ready.sockets(|w| &w.close_wait),
        ready.sockets(|w| &w.fin_wait2),
    ] {
        for (pid, s) in list {
            assert_fds_are_sockets(pid, s.fd);
        }
    }
    assert_eq!(ready.sockets(|w| &w.established).len(), 6);
    let families: Vec<bool> = ready
        .listeners
        .iter()
        .map(|l| l.addr.starts_with('['))
        .collect();
    assert_eq!(families, [false, true], "one IPv4 and one IPv6 listener");

    let (status, stderr) = farm.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "farm should exit 0 on stdin EOF: {status:?}; stderr: {stderr}"
    );
    let listeners = ns.ss_rows(&["-tlnH"]);
    assert!(
        listeners.is_empty(),
        "listeners left after the farm exited: {listeners:?}"
    );
}

#[test]
#[ignore = "needs root"]
fn farm_builds_backlog_and_read_close_wait_across_workers() {
    require_root();
    let ns = Netns::new("backlog");
    let farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--backlog-listen",
        "127.0.0.1:0",
        "--source-ips",
        "127.0.0.2,127.0.0.3",
        "--processes",
        "2",
        "--established",
        "4",
        "--close-wait",
        "1",
        "--close-wait-read",
        "3",
        "--unaccepted",
        "2",
        "--time-wait",
        "2",
    ]);
    let ready = &farm.ready;
    assert_eq!(ready.workers.len(), 2);
    // 2 per established pair, 2 per unaccepted (client + queued child).
    assert_eq!(ready.expected("ESTABLISHED"), 12);
    assert_eq!(ready.expected("CLOSE_WAIT"), 4);
    assert_eq!(ready.expected("LISTEN"), 3);
    assert_counts_match(&ready.expected, &ns.ss_state_counts(&[]), &ns);

    let mut recv_qs: Vec<u64> = ns
        .ss_rows(&["-tanH"])
        .into_iter()
        .filter(|r| r.state == "CLOSE-WAIT")
        .map(|r| r.recv_q)
        .collect();
    recv_qs.sort_unstable();
    assert_eq!(recv_qs, [0, 0, 0, 1], "three read to EOF, one did not");

    let backlog = ready
        .listeners
        .iter()
        .find(|l| l.role == "backlog")
        .unwrap_or_else(|| panic!("no backlog listener in {:?}", ready.listeners));
    assert_eq!(backlog.queued, 2);
    let listen_rows = ns.ss_rows(&["-tlnH"]);
    let queued = listen_rows
        .iter()
        .find(|r| r.local == backlog.addr)
        .unwrap_or_else(|| panic!("{} not in {listen_rows:?}", backlog.addr));
    assert_eq!(queued.recv_q, 2, "LISTEN Recv-Q is the accept queue length");

    // Only the parent owns the listeners; workers closed their inherited copies.
    let owners = ns.run_ss(&["-tlnpH"]);
    let owners = String::from_utf8_lossy(&owners.stdout);
    for w in &ready.workers {
        assert!(
            !owners.contains(&format!("pid={},", w.pid)),
            "worker {} still owns a listener:\n{owners}",
            w.pid
        );
    }
    assert_eq!(
        owners.matches(&format!("pid={},", ready.pid)).count(),
        3,
        "{owners}"
    );

    // Client ends came from the requested source addresses.
    for (pid, s) in ready.sockets(|w| &w.fin_wait2) {
        assert_fds_are_sockets(pid, s.fd);
        assert!(
            s.local.starts_with("127.0.0.2:") || s.local.starts_with("127.0.0.3:"),
            "client {} not from --source-ips",
            s.local
        );
    }
    let made: u64 = ready.workers.iter().map(|w| w.counts.time_wait_made).sum();
    assert_eq!(made, 2);
}

#[test]
#[ignore = "needs root"]
fn farm_refuses_more_fds_than_one_worker_may_hold() {
    require_root();
    let ns = Netns::new("fdlimit");
    let err = ns
        .spawn_farm_within(
            &["--listen", "127.0.0.1:0", "--established", "20000"],
            FARM_READY_TIMEOUT,
        )
        .err()
        .unwrap_or_else(|| panic!("a farm of 40000 fds in one worker should be refused"));
    assert!(
        err.contains("--processes 3"),
        "error should name the fix: {err}"
    );
}

#[test]
#[ignore = "needs root"]
fn farm_refuses_listeners_off_loopback() {
    require_root();
    let ns = Netns::new("offlo");
    let err = ns
        .spawn_farm_within(&["--listen", "10.1.2.3:80"], FARM_READY_TIMEOUT)
        .err()
        .unwrap_or_else(|| panic!("a non-loopback listener should be refused"));
    assert!(err.contains("not a loopback address"), "{err}");
}
