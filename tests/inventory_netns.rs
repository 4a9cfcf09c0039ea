//! `states` and `sockets` on real sockets: a private network namespace per test, filled
//! by `sockfarm` with known sockets, then tcpdoctor's output is compared with what was
//! built and with `ss` on the same namespace. Needs root (namespaces): `#[ignore]`d.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::netns::{Farm, Netns};
use common::report::{endpoint, socket_pairs};
use common::run::{run_bounded, success_json, RUN_TIMEOUT};
use common::{require_root, KERNEL_STATES, TCPDOCTOR};

/// One v4 farm and one v6 farm in the same namespace, so per-family counts are known.
struct TwoFamilies {
    ns: Netns,
    v4: Farm,
    v6: Farm,
}

const FARM_ARGS: [&str; 10] = [
    "--established",
    "3",
    "--close-wait",
    "4",
    "--close-wait-read",
    "2",
    "--time-wait",
    "5",
    "--hold-secs",
    "300",
];

fn two_families(tag: &str) -> TwoFamilies {
    let ns = Netns::new(tag);
    let mut a4 = vec!["--listen", "127.0.0.1:0"];
    a4.extend_from_slice(&FARM_ARGS);
    let mut a6 = vec!["--listen", "[::1]:0"];
    a6.extend_from_slice(&FARM_ARGS);
    let v4 = ns.spawn_farm(&a4);
    let v6 = ns.spawn_farm(&a6);
    TwoFamilies { ns, v4, v6 }
}

#[test]
#[ignore = "needs root"]
fn states_counts_every_state_exactly_per_family_and_matches_ss() {
    require_root();
    let f = two_families("states");
    let v = success_json(&f.ns.run_tcpdoctor(&["states", "--json"]));
    assert_eq!(v["source"], "netlink");
    let ss4 = f.ns.ss_state_counts(&["-4"]);
    let ss6 = f.ns.ss_state_counts(&["-6"]);
    for state in KERNEL_STATES {
        let want4 = f.v4.ready.expected(state);
        let want6 = f.v6.ready.expected(state);
        assert_eq!(v["counts"]["ipv4"][state], want4, "ipv4 {state}");
        assert_eq!(v["counts"]["ipv6"][state], want6, "ipv6 {state}");
        assert_eq!(v["counts"]["total"][state], want4 + want6, "total {state}");
        assert_eq!(ss4.get(state).copied().unwrap_or(0), want4, "ss -4 {state}");
        assert_eq!(ss6.get(state).copied().unwrap_or(0), want6, "ss -6 {state}");
    }
    // The farm made what the issue asks for.
    for state in [
        "ESTABLISHED",
        "LISTEN",
        "CLOSE_WAIT",
        "TIME_WAIT",
        "FIN_WAIT2",
    ] {
        assert!(f.v4.ready.expected(state) > 0, "{state} present");
    }
    // Both families come from one TCPDIAG_GETSOCK walk; -4 and -6 each send a
    // SOCK_DIAG_BY_FAMILY request. The two kinds of request agree exactly.
    let only4 = success_json(&f.ns.run_tcpdoctor(&["states", "-4", "--json"]));
    let only6 = success_json(&f.ns.run_tcpdoctor(&["states", "-6", "--json"]));
    assert_eq!(only4["counts"]["ipv4"], v["counts"]["ipv4"]);
    assert_eq!(only6["counts"]["ipv6"], v["counts"]["ipv6"]);
    assert_eq!(only4["counts"]["ipv6"]["total"], 0);
    // The /proc fallback sees the same sockets.
    let p = success_json(
        &f.ns
            .run_tcpdoctor(&["--source", "proc", "states", "--json"]),
    );
    assert_eq!(p["source"], "proc");
    assert_eq!(p["counts"], v["counts"]);
    // --state restricts (kernel-side filter), spelled three ways.
    let r = success_json(&f.ns.run_tcpdoctor(&[
        "states",
        "--state",
        "close-wait,TIME_WAIT,fin_wait2",
        "--json",
    ]));
    assert_eq!(r["counts"]["total"]["total"], 2 * (6 + 5 + 6));
    assert_eq!(r["counts"]["total"]["ESTABLISHED"], 0);
}

#[test]
#[ignore = "needs root"]
fn states_human_table_lists_all_states_and_totals() {
    require_root();
    let f = two_families("table");
    let out = f.ns.run_tcpdoctor(&["states"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 13, "{text}");
    let total: Vec<&str> = lines[12].split_whitespace().collect();
    let want4: u64 = f.v4.ready.expected.values().sum();
    let want6: u64 = f.v6.ready.expected.values().sum();
    assert_eq!(
        total,
        vec![
            "TOTAL".to_string(),
            want4.to_string(),
            want6.to_string(),
            (want4 + want6).to_string()
        ]
    );
    assert!(
        !text.contains('\x1b'),
        "no colors when NO_COLOR is set / not a tty"
    );
}

#[test]
#[ignore = "needs root"]
fn every_close_wait_is_attributed_to_the_holding_child_pid_and_fd() {
    require_root();
    let f = two_families("owners");
    let v = success_json(
        &f.ns
            .run_tcpdoctor(&["sockets", "--state", "close-wait", "--json"]),
    );
    let socks = v["sockets"].as_array().expect("array");
    let mut expected: BTreeMap<(String, String), (u32, i32)> = BTreeMap::new();
    for farm in [&f.v4, &f.v6] {
        for (pid, s) in farm
            .ready
            .sockets(|w| &w.close_wait)
            .into_iter()
            .chain(farm.ready.sockets(|w| &w.close_wait_read))
        {
            expected.insert((s.local.clone(), s.remote.clone()), (pid, s.fd));
        }
    }
    assert_eq!(socks.len(), expected.len());
    assert_eq!(v["matched"], 12);
    for s in socks {
        let key = (endpoint(&s["local"]), endpoint(&s["remote"]));
        let (pid, fd) = expected
            .get(&key)
            .unwrap_or_else(|| panic!("unexpected socket {key:?}"));
        let owners = s["owners"].as_array().expect("owners");
        assert_eq!(owners.len(), 1, "{s}");
        assert_eq!(owners[0]["pid"], *pid, "{key:?}");
        assert_eq!(owners[0]["fd"], *fd, "{key:?}");
        assert_eq!(owners[0]["comm"], "sockfarm");
        assert_ne!(s["inode"], 0);
    }
    // Recv-Q: 1 (FIN not read) for --close-wait, 0 for --close-wait-read.
    let ones = socks.iter().filter(|s| s["recv_q"] == 1).count();
    let zeros = socks.iter().filter(|s| s["recv_q"] == 0).count();
    assert_eq!((ones, zeros), (8, 4));
    assert!(
        v["notices"].as_array().is_some_and(|n| n.is_empty()),
        "root sees every owner: {}",
        v["notices"]
    );
}

#[test]
#[ignore = "needs root"]
fn time_wait_sockets_show_remaining_time_within_60s_and_no_owner() {
    require_root();
    let f = two_families("tw");
    let v = success_json(
        &f.ns
            .run_tcpdoctor(&["sockets", "--state", "time-wait", "--json"]),
    );
    let socks = v["sockets"].as_array().expect("array");
    assert_eq!(socks.len(), 10);
    for s in socks {
        assert_eq!(s["state"], "TIME_WAIT");
        assert_eq!(s["timer"]["kind"], "timewait");
        let ms = s["timer"]["remaining_ms"].as_u64().expect("remaining_ms");
        assert!(ms > 0 && ms <= 60_000, "remaining {ms} ms");
        assert_eq!(s["inode"], 0);
        assert_eq!(s["owners"], serde_json::json!([]));
    }
    // The same through /proc (10 ms resolution).
    let p = success_json(&f.ns.run_tcpdoctor(&[
        "--source",
        "proc",
        "sockets",
        "--state",
        "time-wait",
        "--json",
    ]));
    for s in p["sockets"].as_array().expect("array") {
        let ms = s["timer"]["remaining_ms"].as_u64().expect("remaining_ms");
        assert!(ms > 0 && ms <= 60_000 && ms % 10 == 0, "remaining {ms} ms");
    }
    // Human table shows the timer.
    let out = f.ns.run_tcpdoctor(&["sockets", "--state", "time-wait"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().filter(|l| l.contains("timewait ")).count(),
        10,
        "{text}"
    );
}

#[test]
#[ignore = "needs root"]
fn filters_return_exactly_the_expected_sockets() {
    require_root();
    let f = two_families("filters");
    let l4 = f.v4.ready.listeners[0].addr.clone();
    let port4 = f.v4.ready.listeners[0].port();
    let q =
        |args: &[&str]| success_json(&f.ns.run_tcpdoctor(&[&["sockets", "--json"], args].concat()));

    // --port: the listener plus both ends of every v4 connection except TIME_WAIT's server
    // side (gone): 1 + 2*3 + 2*4 + 2*2 + 5 = 24.
    let v = q(&["--port", &port4.to_string()]);
    let expect4: u64 = f.v4.ready.expected.values().sum();
    assert_eq!(v["matched"], expect4);

    // --local with the listener's port: server sides + listener.
    let v = q(&["--local", &format!(":{port4}")]);
    let server: BTreeSet<(String, String)> =
        f.v4.ready
            .sockets(|w| &w.established)
            .into_iter()
            .chain(f.v4.ready.sockets(|w| &w.close_wait))
            .chain(f.v4.ready.sockets(|w| &w.close_wait_read))
            .filter(|(_, s)| s.side == "server")
            .map(|(_, s)| (s.local.clone(), s.remote.clone()))
            .collect();
    let got = socket_pairs(&v);
    assert_eq!(got.len(), server.len() + 1);
    assert!(server.is_subset(&got));

    // --peer ip:port with a state: the TIME_WAIT clients of the v4 listener.
    let v = q(&["--peer", &l4, "--state", "time-wait"]);
    assert_eq!(v["matched"], 5);
    // --peer CIDR on IPv6.
    let v = q(&["--peer", "::1/128", "--state", "close-wait"]);
    assert_eq!(v["matched"], 6);
    // --pid of the v6 worker: everything it holds (not the listener, held by the parent).
    let w6 = f.v6.ready.workers[0].pid;
    let v = q(&["--pid", &w6.to_string()]);
    let c = &f.v6.ready.workers[0].counts;
    assert_eq!(
        v["matched"],
        c.established + c.close_wait + c.close_wait_read + c.fin_wait2
    );
    assert!(v["sockets"]
        .as_array()
        .expect("array")
        .iter()
        .all(|s| s["owners"][0]["pid"] == w6));
    // --comm matches both farms; an unknown name matches nothing.
    let v = q(&["--comm", "sockfarm", "--state", "listen"]);
    assert_eq!(v["matched"], 2);
    let v = q(&["--comm", "nginx"]);
    assert_eq!(v["matched"], 0);
    // --limit cuts the list but reports the match count.
    let v = q(&["--limit", "3"]);
    assert_eq!(v["shown"], 3);
    assert_eq!(v["sockets"].as_array().map(Vec::len), Some(3));
}

#[test]
#[ignore = "needs root"]
fn socket_list_matches_ss_socket_for_socket() {
    require_root();
    let f = two_families("vsss");
    let v = success_json(&f.ns.run_tcpdoctor(&["sockets", "--no-owners", "--json"]));
    let ours: BTreeSet<(String, String, String)> = v["sockets"]
        .as_array()
        .expect("array")
        .iter()
        .map(|s| {
            (
                s["state"].as_str().unwrap_or("").to_string(),
                endpoint(&s["local"]),
                endpoint(&s["remote"]),
            )
        })
        .collect();
    let theirs: BTreeSet<(String, String, String)> =
        f.ns.ss_rows(&["-tanH"])
            .into_iter()
            .filter_map(|r| {
                let state = r.kernel_state()?;
                // ss prints listeners' peers as 0.0.0.0:* / [::]:*.
                let fix = |e: &str| e.replace(":*", ":0");
                Some((state.to_string(), fix(&r.local), fix(&r.peer)))
            })
            .collect();
    assert_eq!(ours, theirs);
}

#[test]
#[ignore = "needs root"]
fn states_by_process_attributes_counts_to_the_right_pids() {
    require_root();
    let f = two_families("byproc");
    let v = success_json(
        &f.ns
            .run_tcpdoctor(&["states", "--by", "process", "--top", "0", "--json"]),
    );
    let rows = v["groups"]["rows"].as_array().expect("rows");
    let row = |pid: u32| {
        rows.iter()
            .find(|r| r["pid"] == pid)
            .unwrap_or_else(|| panic!("no row for {pid}"))
    };
    for farm in [&f.v4, &f.v6] {
        let w = &farm.ready.workers[0];
        let r = row(w.pid);
        assert_eq!(r["comm"], "sockfarm");
        assert_eq!(
            r["counts"]["CLOSE_WAIT"],
            w.counts.close_wait + w.counts.close_wait_read
        );
        assert_eq!(r["counts"]["ESTABLISHED"], w.counts.established);
        assert_eq!(r["counts"]["FIN_WAIT2"], w.counts.fin_wait2);
        assert_eq!(row(farm.ready.pid)["counts"]["LISTEN"], 1);
    }
    let no_fd = rows
        .iter()
        .find(|r| r["key"] == "no_fd")
        .expect("no_fd row");
    assert_eq!(no_fd["counts"]["TIME_WAIT"], 10);
}

#[test]
#[ignore = "needs root"]
fn unprivileged_run_counts_everything_and_says_what_it_cannot_see() {
    require_root();
    let f = two_families("nobody");
    let root = success_json(&f.ns.run_tcpdoctor(&["states", "--json"]));
    let out =
        f.ns.run_tcpdoctor_unprivileged(&["states", "--by", "process", "--json"]);
    let v = success_json(&out);
    assert_eq!(v["counts"], root["counts"], "every socket is still counted");
    let notices = v["notices"].as_array().expect("notices");
    let n = notices
        .iter()
        .find(|n| n["code"] == "owners_partial")
        .expect("owners_partial notice");
    // Sockets with a descriptor: listeners, ESTABLISHED, CLOSE_WAIT, FIN_WAIT2 of both farms.
    let with_fd: u64 = [&f.v4, &f.v6]
        .iter()
        .map(|fm| {
            fm.ready.expected("LISTEN")
                + fm.ready.expected("ESTABLISHED")
                + fm.ready.expected("CLOSE_WAIT")
                + fm.ready.expected("FIN_WAIT2")
        })
        .sum();
    let msg = n["message"].as_str().expect("message");
    assert!(
        msg.starts_with(&format!(
            "run as root to see the owners of {with_fd} sockets"
        )),
        "{msg}"
    );
    // Human mode prints it on stderr.
    let human = f.ns.run_tcpdoctor_unprivileged(&["sockets"]);
    assert!(human.status.success());
    let err = String::from_utf8_lossy(&human.stderr);
    assert!(err.contains("run as root to see the owners of"), "{err}");
}

#[test]
#[ignore = "needs root"]
fn closed_pipe_exits_quietly() {
    require_root();
    let ns = Netns::new("pipe");
    // More output than a pipe buffer (64 KiB) holds, so the write really hits EPIPE.
    let _farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--established",
        "600",
        "--quiet-fds",
        "--hold-secs",
        "300",
    ]);
    let out = run_bounded(
        ns.command(
            "bash",
            &[
                "-c",
                "\"$0\" sockets | head -1 >/dev/null; echo \"rc=${PIPESTATUS[0]}\"",
                TCPDOCTOR,
            ],
        )
        .env("NO_COLOR", "1"),
        RUN_TIMEOUT,
    )
    .expect("bash runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "rc=0");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sockets -i` on a listener: the kernel sends its queue lengths only (tcp_get_info
/// returns early for listeners), so timings, RTT and byte counts are unknown: null in
/// JSON and "-" in the table, never "0ms". Connected sockets keep their numbers.
#[test]
#[ignore = "needs root"]
fn listener_timings_are_unknown_not_zero() {
    require_root();
    let ns = Netns::new("lsninfo");
    let _farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--established",
        "2",
        "--hold-secs",
        "300",
    ]);
    let v = success_json(&ns.run_tcpdoctor(&["sockets", "-i", "--json"]));
    let sockets = v["sockets"].as_array().expect("sockets");
    let listeners: Vec<&serde_json::Value> =
        sockets.iter().filter(|s| s["state"] == "LISTEN").collect();
    assert_eq!(listeners.len(), 1, "{v:#}");
    let info = listeners[0]["tcp_info"]
        .as_object()
        .expect("tcp_info object");
    assert!(!info.is_empty());
    for (k, field) in info {
        assert!(field.is_null(), "LISTEN {k} = {field}");
    }
    let established: Vec<&serde_json::Value> = sockets
        .iter()
        .filter(|s| s["state"] == "ESTABLISHED")
        .collect();
    assert_eq!(established.len(), 4);
    for s in established {
        assert!(s["tcp_info"]["rtt_us"].is_u64(), "{s:#}");
        assert!(s["tcp_info"]["last_ack_recv_ms"].is_u64(), "{s:#}");
    }
    let out = ns.run_tcpdoctor(&["sockets", "-i", "--state", "listen"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let header: Vec<&str> = text
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    let row: Vec<&str> = text
        .lines()
        .nth(1)
        .expect("row")
        .split_whitespace()
        .collect();
    for col in ["RTT", "LASTRCV", "LASTACK"] {
        let i = header.iter().position(|h| *h == col).expect(col);
        assert_eq!(row[i], "-", "{col}:\n{text}");
    }
}

/// A socket held by two processes (inherited across fork): `--comm NAME` shows the
/// owner it matched first, in the table and in the JSON, whichever one the scan found
/// first.
#[test]
#[ignore = "needs root"]
fn comm_filter_shows_the_owner_it_matched() {
    require_root();
    let ns = Netns::new("comm");
    let farm = ns.spawn_farm(&["--listen", "127.0.0.1:0", "--hold-secs", "300"]);
    let port = farm.ready.listeners[0].port().to_string();
    // bash opens a connection on fd 3, starts `sleep` (which inherits it), prints the
    // sleep's pid, and becomes `tail`: one socket, two owners with different names.
    // tail's stdout is not the pipe: `tail -f` exits once its output has no reader.
    let script = "exec 3<>/dev/tcp/127.0.0.1/$0; sleep 300 >/dev/null & echo $!; exec tail -f /dev/null >/dev/null";
    let mut holder = ns
        .command("bash", &["-c", script, &port])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("spawn bash");
    let mut line = String::new();
    {
        use std::io::BufRead;
        let stdout = holder.stdout.take().expect("stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("sleep pid");
    }
    let sleep_pid: i32 = line.trim().parse().expect("pid line");
    let tail_pid = holder.id();
    // Both hold it once `tail` has replaced bash: wait for its name (bounded).
    let ready = common::run::wait_for(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(20),
        || {
            std::fs::read_to_string(format!("/proc/{tail_pid}/comm"))
                .ok()
                .filter(|c| c.trim() == "tail")
        },
    );
    let result = std::panic::catch_unwind(|| {
        assert!(ready.is_some(), "bash did not become tail");
        for (comm, pid) in [("sleep", sleep_pid as u32), ("tail", tail_pid)] {
            let v = success_json(&ns.run_tcpdoctor(&[
                "sockets",
                "--comm",
                comm,
                "--state",
                "established",
                "--json",
            ]));
            let sockets = v["sockets"].as_array().expect("sockets");
            assert_eq!(sockets.len(), 1, "{comm}: {v:#}");
            let owners = sockets[0]["owners"].as_array().expect("owners");
            assert_eq!(owners.len(), 2, "{v:#}");
            assert_eq!(owners[0]["comm"], comm, "{v:#}");
            assert_eq!(owners[0]["pid"], pid, "{v:#}");
            let out = ns.run_tcpdoctor(&["sockets", "--comm", comm, "--state", "established"]);
            let text = String::from_utf8_lossy(&out.stdout);
            let row = text.lines().nth(1).expect("row");
            assert!(
                row.ends_with(&format!("{comm} pid={pid} fd=3 +1")),
                "{comm}:\n{text}"
            );
        }
    });
    // Ours to end, by pid.
    // SAFETY: plain syscalls on pids this test started (the sleep is tail's child).
    unsafe {
        libc::kill(sleep_pid, libc::SIGKILL);
    }
    let _ = holder.kill();
    let _ = holder.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
