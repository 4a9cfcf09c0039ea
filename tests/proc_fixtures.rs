//! The /proc/net/tcp{,6} fallback parser and the CLI replaying a captured host
//! (tests/fixtures/proc/*, see NOTE.md there), cross-checked with `ss` output taken at
//! the same moment.

mod common;

use std::fs::File;
use std::io::BufReader;

use common::fixtures::proc_fixture;
use common::run::{run_tcpdoctor, stdout_json};
use common::ss;
use tcpdoctor::collect::procfs::net_tcp;
use tcpdoctor::model::{Endpoint, Family, Socket, StateSet, TcpState, TimerKind};

fn parse_file(name: &str, file: &str, family: Family) -> (Vec<Socket>, net_tcp::ProcTcpStats) {
    let path = proc_fixture(name).join("net").join(file);
    let f = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    let stats = net_tcp::parse(
        BufReader::new(f),
        family,
        StateSet::all(),
        &mut |s: &Socket| out.push(*s),
    )
    .expect("read fixture");
    (out, stats)
}

/// (state, local, remote, recv-q, inode) per socket line of `ss -tanoiHe`.
fn ss_rows(family: Family) -> Vec<(TcpState, Endpoint, Endpoint, u32, u64)> {
    let text = std::fs::read_to_string(proc_fixture("netns_mixed").join("ss-tanoiHe.txt"))
        .expect("ss fixture");
    ss::parse_lines(&text, family)
        .into_iter()
        .map(|l| (l.state, l.local, l.remote, l.recv_q, l.inode.unwrap_or(0)))
        .collect()
}

fn check(file: &str, family: Family, expect_total: usize) {
    let (socks, stats) = parse_file("netns_mixed", file, family);
    assert_eq!(stats.skipped, 0, "{file}: {:?}", stats.first_error);
    assert_eq!(socks.len(), expect_total);
    let mut ours: Vec<_> = socks
        .iter()
        .map(|s| (s.state, s.local, s.remote, s.recv_q, s.inode))
        .collect();
    let mut theirs = ss_rows(family);
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs, "{file} differs from ss -tanoiHe");
}

#[test]
fn proc_net_tcp_matches_ss() {
    check("tcp", Family::V4, 34);
}

#[test]
fn proc_net_tcp6_with_mapped_addresses_matches_ss() {
    check("tcp6", Family::V6, 14);
}

#[test]
fn proc_timewait_timer_is_in_hundredths_of_a_second() {
    let (socks, _) = parse_file("netns_mixed", "tcp", Family::V4);
    let tw: Vec<_> = socks
        .iter()
        .filter(|s| s.state == TcpState::TimeWait)
        .collect();
    assert_eq!(tw.len(), 2);
    for s in tw {
        let t = s.timer.expect("timer");
        assert_eq!(t.kind, TimerKind::TimeWait);
        assert!(t.remaining_ms > 50_000 && t.remaining_ms <= 60_000, "{t:?}");
        assert_eq!(t.remaining_ms % 10, 0);
    }
}

#[test]
fn host_idle_capture_has_one_listener() {
    let (v4, _) = parse_file("host_idle", "tcp", Family::V4);
    let (v6, s6) = parse_file("host_idle", "tcp6", Family::V6);
    assert_eq!(v4.len(), 1);
    assert_eq!(v4[0].state, TcpState::Listen);
    assert_eq!(v4[0].local.port, 2024);
    assert_eq!((v6.len(), s6.skipped), (0, 0));
}

fn fixture_root() -> String {
    proc_fixture("netns_mixed").display().to_string()
}

#[test]
fn cli_states_replays_captured_host_exactly() {
    let r = fixture_root();
    let out = run_tcpdoctor(&["--source", "proc", "--proc-root", &r, "states", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = stdout_json(&out);
    assert_eq!(v["schema_version"], 2);
    assert_eq!(v["source"], "proc");
    let c = &v["counts"];
    let expect4 = [
        ("LISTEN", 5),
        ("ESTABLISHED", 19),
        ("CLOSE_WAIT", 3),
        ("FIN_WAIT2", 3),
        ("TIME_WAIT", 2),
        ("SYN_SENT", 1),
        ("SYN_RECV", 1),
        ("LAST_ACK", 0),
        ("total", 34),
    ];
    for (k, n) in expect4 {
        assert_eq!(c["ipv4"][k], n, "ipv4 {k}");
    }
    let expect6 = [
        ("LISTEN", 3),
        ("ESTABLISHED", 7),
        ("CLOSE_WAIT", 1),
        ("FIN_WAIT2", 1),
        ("TIME_WAIT", 1),
        ("SYN_SENT", 0),
        ("SYN_RECV", 1),
        ("total", 14),
    ];
    for (k, n) in expect6 {
        assert_eq!(c["ipv6"][k], n, "ipv6 {k}");
    }
    assert_eq!(c["total"]["total"], 48);
    // Every state is present, zeros included.
    assert_eq!(c["total"].as_object().map(|o| o.len()), Some(12));
}

#[test]
fn cli_states_table_golden() {
    let r = fixture_root();
    let out = run_tcpdoctor(&["--source", "proc", "--proc-root", &r, "states"]);
    assert!(out.status.success());
    assert_golden!(
        "states_table_netns_mixed",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn cli_states_by_local_port_and_state_filter() {
    let r = fixture_root();
    let out = run_tcpdoctor(&[
        "--source",
        "proc",
        "--proc-root",
        &r,
        "states",
        "--by",
        "local-port",
        "--state",
        "close_wait,LISTEN",
        "--json",
    ]);
    assert!(out.status.success());
    let v = stdout_json(&out);
    assert_eq!(v["states"], serde_json::json!(["CLOSE_WAIT", "LISTEN"]));
    assert_eq!(
        v["counts"]["total"]["ESTABLISHED"], 0,
        "not asked, not counted"
    );
    let rows = v["groups"]["rows"].as_array().expect("rows");
    // Port 7001 holds 1 listener and 3 CLOSE_WAIT server sides: the biggest group.
    assert_eq!(rows[0]["port"], 7001);
    assert_eq!(rows[0]["counts"]["CLOSE_WAIT"], 3);
    assert_eq!(rows[0]["counts"]["LISTEN"], 1);
    assert_eq!(rows[0]["counts"]["total"], 4);
}

#[test]
fn cli_sockets_filters_on_replayed_host() {
    let r = fixture_root();
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "--source",
            "proc",
            "--proc-root",
            &r,
            "sockets",
            "--no-owners",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = run_tcpdoctor(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout_json(&out)
    };
    let cw = run(&["--state", "close-wait", "-4"]);
    assert_eq!(cw["matched"], 3);
    let mut q: Vec<u64> = cw["sockets"]
        .as_array()
        .expect("list")
        .iter()
        .map(|s| s["recv_q"].as_u64().expect("q"))
        .collect();
    q.sort();
    assert_eq!(q, vec![1, 1, 101]);
    // --peer with address and port, narrowed by state: the two TIME_WAIT clients of 7001.
    let peer = run(&["--peer", "127.0.0.1:7001", "--state", "time-wait"]);
    assert_eq!(peer["matched"], 2);
    let mapped = run(&["--peer", "127.0.0.0/8:7001", "-6"]);
    assert_eq!(
        mapped["matched"], 1,
        "the ::ffff:127.0.0.1 client matches an IPv4 CIDR"
    );
    let limited = run(&["--limit", "2"]);
    assert_eq!(
        (limited["matched"].as_u64(), limited["shown"].as_u64()),
        (Some(48), Some(2))
    );
    let port = run(&["--port", "7002"]);
    // Listener + 2 unaccepted children (server side) + 2 clients.
    assert_eq!(port["matched"], 5);
}

#[test]
fn cli_bad_values_give_one_line_error_naming_them() {
    for (args, needle) in [
        (vec!["states", "--state", "half-open"], "'half-open'"),
        (vec!["sockets", "--peer", "10.0.0.0/33"], "'10.0.0.0/33'"),
        (vec!["sockets", "--port", "http"], "'http'"),
        (vec!["states", "--by", "colour"], "'colour'"),
        (vec!["states", "--bogus"], "'--bogus'"),
    ] {
        let out = run_tcpdoctor(&args);
        assert_eq!(out.status.code(), Some(3), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one line for {args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn cli_missing_proc_root_is_an_error_naming_the_path() {
    let out = run_tcpdoctor(&[
        "--source",
        "proc",
        "--proc-root",
        "/nonexistent/tcpdoctor",
        "states",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'/nonexistent/tcpdoctor/net/tcp'"), "{err}");
}

/// /proc/net/tcp shows 0 where netlink shows a listener's backlog: replaying the capture
/// (listeners 7002 and 7003 hold queued connections) must not call their queues full.
#[test]
fn cli_check_on_proc_source_does_not_judge_unknown_backlogs() {
    let r = fixture_root();
    let out = run_tcpdoctor(&[
        "--source",
        "proc",
        "--proc-root",
        &r,
        "check",
        "--interval",
        "0",
        "--json",
    ]);
    let v = stdout_json(&out);
    assert_eq!(v["source"], "proc");
    assert_eq!(v["counts"]["total"]["LISTEN"], 8);
    for f in v["findings"].as_array().expect("findings") {
        if f["rule_id"] == "listen_overflow" || f["rule_id"] == "close_wait_unaccepted" {
            assert_ne!(f["severity"], "critical", "{f:#}");
            let full = f["data"]["listeners"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|l| l["full"] == true);
            assert!(!full, "{f:#}");
        }
    }
}
