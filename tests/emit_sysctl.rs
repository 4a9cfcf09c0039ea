//! `tcpdoctor check --emit-sysctl`: the file holds exactly the settings the findings
//! propose. Real sockets and real sysctls in a private network namespace (needs root:
//! `cargo test --test emit_sysctl -- --include-ignored`), plus the flag's usage error.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::netns::Netns;
use common::require_root;
use common::run::{run_bounded, stdout_json, RUN_TIMEOUT};
use common::TCPDOCTOR;
use serde_json::Value;

/// The live setting lines of an emitted file, `key -> value`; panics on a key set twice.
fn settings(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for l in text.lines() {
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (k, v) = l
            .split_once(" = ")
            .unwrap_or_else(|| panic!("not a setting line: {l:?}\n{text}"));
        assert!(
            out.insert(k.to_string(), v.to_string()).is_none(),
            "{k} set twice:\n{text}"
        );
    }
    out
}

fn emit(ns: &Netns) -> String {
    let out = ns.run_tcpdoctor(&["check", "--emit-sysctl", "--interval", "0"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The JSON report's proposals, `key -> value`, checking that no two disagree.
fn proposed_in_json(ns: &Netns) -> BTreeMap<String, String> {
    let out = ns.run_tcpdoctor(&["check", "--json", "--interval", "0"]);
    let v: Value = stdout_json(&out);
    let mut map = BTreeMap::new();
    for f in v["findings"].as_array().expect("findings") {
        for c in f["proposed"].as_array().into_iter().flatten() {
            let key = c["key"].as_str().expect("key").to_string();
            let value = c["value"].as_str().expect("value").to_string();
            if let Some(old) = map.insert(key.clone(), value.clone()) {
                assert_eq!(old, value, "two values proposed for {key}: {v:#}");
            }
        }
    }
    map
}

/// The folklore settings of many hosts, set in a fresh namespace with a service,
/// connections to it and client-side TIME_WAIT on loopback: the file fixes exactly the
/// three that hurt. tcp_fin_timeout=10 does not shorten TIME_WAIT but harms nothing, and
/// loopback TIME_WAIT is already reused under the default tcp_tw_reuse=2, so neither
/// those nor a wider port range are proposed.
#[test]
#[ignore = "needs root"]
fn folklore_namespace_gets_exactly_the_fixes() {
    require_root();
    let ns = Netns::new("emitfolk");
    for (k, v) in [
        ("net.ipv4.tcp_max_tw_buckets", "5000"),
        ("net.ipv4.tcp_syncookies", "0"),
        ("net.ipv4.tcp_abort_on_overflow", "1"),
        ("net.ipv4.tcp_fin_timeout", "10"),
    ] {
        ns.sysctl(k, v);
    }
    let farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:5000",
        "--established",
        "5",
        "--time-wait",
        "20",
        "--hold-secs",
        "300",
    ]);
    // The kernel default for this namespace: half the established hash it uses (a
    // negative tcp_ehash_entries means the host's table, shared).
    let ehash: i64 = ns
        .read_sysctl("net.ipv4.tcp_ehash_entries")
        .parse()
        .expect("tcp_ehash_entries is a number");
    let default_tw = (ehash.unsigned_abs() / 2).to_string();
    assert_ne!(default_tw, "0");

    let text = emit(&ns);
    let want: BTreeMap<String, String> = [
        ("net.ipv4.tcp_max_tw_buckets", default_tw.as_str()),
        ("net.ipv4.tcp_syncookies", "1"),
        ("net.ipv4.tcp_abort_on_overflow", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(settings(&text), want, "{text}");
    // Each setting says what it was.
    assert!(
        text.contains("# net.ipv4.tcp_max_tw_buckets: was 5000;"),
        "{text}"
    );
    assert!(text.contains("# Not here on purpose: net.ipv4.tcp_tw_recycle."));
    // The JSON report proposes the same, and nothing was written.
    assert_eq!(proposed_in_json(&ns), want);
    assert_eq!(ns.read_sysctl("net.ipv4.tcp_max_tw_buckets"), "5000");
    assert_eq!(ns.read_sysctl("net.ipv4.tcp_syncookies"), "0");
    drop(farm);
}

/// A healthy namespace making outgoing loopback connections that leave TIME_WAIT: the
/// file proposes nothing (the old one proposed tcp_tw_reuse=1 and a wider range).
#[test]
#[ignore = "needs root"]
fn healthy_namespace_with_loopback_time_wait_changes_nothing() {
    require_root();
    let ns = Netns::new("emitcalm");
    let farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:5000",
        "--established",
        "5",
        "--time-wait",
        "50",
        "--hold-secs",
        "300",
    ]);
    let counts = ns.ss_state_counts(&[]);
    assert!(
        counts.get("TIME_WAIT").copied().unwrap_or(0) >= 50,
        "the farm left client TIME_WAIT: {counts:?}"
    );
    let text = emit(&ns);
    assert!(settings(&text).is_empty(), "{text}");
    assert!(text.contains("# Nothing to change:"), "{text}");
    assert!(proposed_in_json(&ns).is_empty());
    drop(farm);
}

/// `--json` and `--emit-sysctl` ask for two different documents on stdout: refused with
/// one line on stderr and the usage exit code, before anything is collected.
#[test]
fn json_with_emit_sysctl_is_a_one_line_usage_error() {
    let out = run_bounded(
        Command::new(TCPDOCTOR).args(["check", "--json", "--emit-sysctl"]),
        RUN_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("tcpdoctor: ") && err.contains("--emit-sysctl") && err.contains("--json"),
        "{err}"
    );
}
