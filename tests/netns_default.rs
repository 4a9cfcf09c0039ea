//! Which namespaces `check` reads when not told, and what it calls them: run inside a
//! network namespace (`ip netns exec X tcpdoctor check`) it reads X only, as `ss`
//! would, and calls it X; the initial namespace is "host" wherever it appears, and is
//! the reference host-wide evidence and sysctl comparisons use. Without root, the
//! report says what it could not see. Real namespaces; needs root.

mod common;

use std::process::Output;

use common::netns::Netns;
use common::run::{run_bounded, RUN_TIMEOUT};
use common::TCPDOCTOR;
use serde_json::Value;

/// tcpdoctor inside `ns` with exactly `args` (no `--netns current` added).
fn run_inside(ns: &Netns, args: &[&str]) -> Output {
    let mut cmd = ns.command(TCPDOCTOR, args);
    cmd.env("NO_COLOR", "1");
    run_bounded(&mut cmd, RUN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}); status {}, stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn namespaces(v: &Value) -> &Vec<Value> {
    v["namespaces"].as_array().expect("namespaces")
}

fn notice<'a>(v: &'a Value, code: &str) -> Option<&'a str> {
    v["missing_evidence"]
        .as_array()
        .expect("missing_evidence")
        .iter()
        .find(|n| n["code"] == code)
        .and_then(|n| n["message"].as_str())
}

#[test]
#[ignore = "needs root"]
fn check_inside_a_namespace_reads_only_it_and_calls_the_initial_one_host() {
    let ns = Netns::new("default");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40999");
    // A service port outside the namespace's range: a listener inside it would be the
    // audit's finding about this range, and the drift rule leaves such keys to it.
    let farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:18080",
        "--close-wait",
        "3",
        "--established",
        "2",
        "--hold-secs",
        "300",
    ]);

    // No --netns: this namespace only, by its ip netns name.
    let v = json(&run_inside(&ns, &["check", "--json", "--interval", "0.2"]));
    assert_eq!(v["netns_scope"], "selected", "{v:#}");
    let only = namespaces(&v);
    assert_eq!(only.len(), 1, "{only:#?}");
    let x = &only[0];
    assert_eq!(x["name"], ns.name());
    assert_eq!(x["kind"], "ip-netns");
    assert_eq!(
        (x["current"].as_bool(), x["initial"].as_bool()),
        (Some(true), Some(false))
    );
    for state in ["ESTABLISHED", "CLOSE_WAIT", "FIN_WAIT2", "LISTEN"] {
        assert_eq!(
            v["counts"]["total"][state],
            farm.ready.expected(state),
            "{state}: only this namespace's sockets"
        );
    }
    assert!(
        notice(&v, "netns_current_only").is_none(),
        "asked for: not a gap"
    );
    // The report's first lines (totals, then scope) say which namespace it is about.
    let human = run_inside(&ns, &["check", "--interval", "0"]);
    let first = String::from_utf8_lossy(&human.stdout)
        .lines()
        .take(2)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        first.contains(&format!("in network namespace {}", ns.name())),
        "{first}"
    );

    // --netns all from inside: the initial namespace first, named "host".
    let v = json(&run_inside(
        &ns,
        &["--netns", "all", "check", "--json", "--interval", "0"],
    ));
    let all = namespaces(&v);
    let host = &all[0];
    assert_eq!(host["name"], "host", "{host:#}");
    assert_eq!(host["kind"], "host");
    assert_eq!(
        (host["initial"].as_bool(), host["current"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(
        all.iter().filter(|n| n["initial"] == true).count(),
        1,
        "one initial namespace"
    );
    assert_eq!(all.iter().filter(|n| n["name"] == "host").count(), 1);
    let x = all
        .iter()
        .find(|n| n["name"] == ns.name())
        .expect("this namespace, by its name");
    assert_eq!(
        (x["current"].as_bool(), x["initial"].as_bool()),
        (Some(true), Some(false))
    );
    // The host's port range is the host's, not this namespace's 40000-40999.
    let host_range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .expect("host range")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert_ne!(host_range, "40000 40999");
    let drift = v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| {
            f["rule_id"] == "netns_sysctl_drift"
                && f["data"]["sysctl"] == "net.ipv4.ip_local_port_range"
        })
        .expect("the namespace's range differs from the host's");
    assert_eq!(drift["data"]["host"], host_range.as_str(), "{drift:#}");
    assert!(drift.to_string().contains(ns.name()), "{drift:#}");
    drop(farm);
}

#[test]
#[ignore = "needs root"]
fn without_root_the_report_says_what_it_could_not_see() {
    let ns = Netns::new("nonroot");
    let other = Netns::new("nonrootother");
    // Root's farm: its descriptors, including two of reset connections, are not
    // readable by uid 65534.
    let farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--close-wait",
        "2",
        "--reset-close-wait",
        "--close-wait-read",
        "3",
        "--hold-secs",
        "300",
    ]);
    let out =
        ns.run_tcpdoctor_unprivileged(&["--netns", "all", "check", "--json", "--interval", "0"]);
    let v = json(&out);
    // Every socket is still counted.
    assert_eq!(v["counts"]["total"]["CLOSE_WAIT"], 3, "{v:#}");
    // The namespaces it saw but could not enter are named, the newest first (ten of
    // them; other tests may have made newer ones meanwhile).
    let unread = notice(&v, "netns_current_only").expect("netns_current_only");
    assert!(unread.contains("needs root"), "{unread}");
    let seen: u64 = unread
        .split("reading ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a count of namespaces: {unread}"));
    assert!(seen >= 1, "{unread}");
    assert!(
        unread.contains(other.name()) || (seen > 10 && unread.contains(" more)")),
        "{unread}"
    );
    // How many processes' descriptors it could not read, and what that hides.
    let fds = notice(&v, "fd_counts_partial").expect("fd_counts_partial");
    assert!(fds.contains("as uid 65534"), "{fds}");
    assert!(fds.contains("closed sockets they still hold"), "{fds}");
    let owners = notice(&v, "owners_partial").expect("owners_partial");
    assert!(
        owners.starts_with("run as root to see the owners of"),
        "{owners}"
    );
    // The farm's detached descriptors are not counted, and the report does not claim
    // any: it only counted what it could read.
    let n = &namespaces(&v)[0];
    assert_eq!(n["name"], ns.name());
    assert_eq!(n["detached_tcp_fds"]["total"], 0, "{n:#}");

    // Root sees them, and has no such gaps.
    let v = json(&ns.run_tcpdoctor(&["check", "--json", "--interval", "0"]));
    assert_eq!(namespaces(&v)[0]["detached_tcp_fds"]["total"], 2);
    assert!(
        notice(&v, "fd_counts_partial").is_none(),
        "{:#}",
        v["missing_evidence"]
    );
    drop(farm);
}
