//! `--proc-root DIR` replays a captured host and nothing else: a folder that is not a
//! capture is a clear error, live sockets next to the replay never leak into it, the
//! evidence the capture lacks is named, counters are read once (no wait, no rates),
//! and a capture made with the recipe in docs/replay.md replays what was live.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::netns::Netns;
use common::run::{run_bounded, RUN_TIMEOUT};
use common::TCPDOCTOR;
use serde_json::Value;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/proc/netns_mixed"
);

fn tcpdoctor(args: &[&str]) -> Output {
    run_bounded(
        Command::new(TCPDOCTOR).args(args).env("NO_COLOR", "1"),
        RUN_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"))
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

fn notice<'a>(notices: &'a Value, code: &str) -> Option<&'a str> {
    notices
        .as_array()
        .expect("notices array")
        .iter()
        .find(|n| n["code"] == code)
        .and_then(|n| n["message"].as_str())
}

/// A fresh temporary folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("tcpdoctor-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn replaying_a_folder_that_is_not_a_capture_fails_naming_it() {
    let empty = TempDir::new("notacapture");
    for (dir, why) in [
        ("/nonexistent/tcpdoctor-replay", "No such file or directory"),
        (empty.path(), "holds no net/tcp"),
    ] {
        for source in [&[][..], &["--source", "proc"][..]] {
            for command in [&["check"][..], &["states"][..], &["sockets", "--json"][..]] {
                let mut args: Vec<&str> = source.to_vec();
                args.extend(["--proc-root", dir]);
                args.extend(command);
                let out = tcpdoctor(&args);
                let err = String::from_utf8_lossy(&out.stderr);
                assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
                assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
                assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
                assert!(err.contains(&format!("'{dir}'")), "{args:?}: {err}");
                assert!(err.contains(why), "{args:?}: {err}");
            }
        }
    }
    // sock_diag answers for this machine: it cannot replay anything.
    let out = tcpdoctor(&["--source", "netlink", "--proc-root", FIXTURE, "states"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--source netlink") && err.contains(FIXTURE),
        "{err}"
    );
}

#[test]
#[ignore = "needs root"]
fn a_replay_reads_only_the_capture_and_names_what_it_lacks() {
    // Live sockets where the replay runs: none of them may show up in it.
    let ns = Netns::new("replaylive");
    let farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--close-wait",
        "5",
        "--established",
        "3",
        "--hold-secs",
        "300",
    ]);
    assert_eq!(farm.ready.expected("CLOSE_WAIT"), 5);
    let run = |args: &[&str], timeout: Duration| -> Output {
        let mut cmd = ns.command(TCPDOCTOR, args);
        cmd.env("NO_COLOR", "1");
        run_bounded(&mut cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
    };

    // A minute-long counter interval would make a run that waits for a second reading
    // outlast the 20 s bound: a replay reads its counters once and never waits.
    let out = run(
        &[
            "--proc-root",
            FIXTURE,
            "check",
            "--json",
            "--interval",
            "60",
        ],
        Duration::from_secs(20),
    );
    let v = json(&out);
    assert_eq!(v["source"], "proc");
    // The capture's counts (tests/fixtures/proc/netns_mixed/NOTE.md), nothing live.
    assert_eq!(v["counts"]["total"]["total"], 48, "{:#}", v["counts"]);
    assert_eq!(v["counts"]["total"]["CLOSE_WAIT"], 4);
    assert_eq!(v["counts"]["total"]["ESTABLISHED"], 26);
    assert_eq!(v["counter_interval_ms"], 0, "one reading: no rates");
    let namespaces = v["namespaces"].as_array().expect("namespaces");
    assert_eq!(namespaces.len(), 1);
    // The capture is of a child namespace (no tcp_max_orphans): not "host".
    assert_eq!(namespaces[0]["name"], "captured");
    assert_eq!(namespaces[0]["initial"], false);
    let missing = notice(&v["missing_evidence"], "replay_missing").expect("replay_missing");
    for what in ["kmsg (kernel log)", "PID/fd/ (socket owners)", "no rates"] {
        assert!(missing.contains(what), "{what}: {missing}");
    }
    assert!(missing.contains(FIXTURE), "names the folder: {missing}");
    assert!(
        notice(&v["missing_evidence"], "kernel_log_unavailable").is_none(),
        "the capture's gaps are said once"
    );

    let out = run(&["--proc-root", FIXTURE, "states", "--json"], RUN_TIMEOUT);
    let v = json(&out);
    assert_eq!(v["counts"]["total"]["total"], 48);
    assert!(
        notice(&v["notices"], "replay_missing").is_none(),
        "states uses only sockets, which the capture has"
    );
    let out = run(
        &[
            "--proc-root",
            FIXTURE,
            "sockets",
            "--state",
            "close-wait",
            "--json",
        ],
        RUN_TIMEOUT,
    );
    let v = json(&out);
    assert_eq!(v["matched"], 4);
    let missing = notice(&v["notices"], "replay_missing").expect("owners asked for");
    assert!(missing.contains("PID/fd/ (socket owners)"), "{missing}");
}

/// The ```sh block of docs/replay.md's "Capture" section.
fn capture_recipe() -> String {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/replay.md"))
        .expect("docs/replay.md");
    let section = doc.split("## Capture").nth(1).expect("a Capture section");
    let block = section.split("```sh\n").nth(1).expect("a sh block");
    block.split("```").next().expect("closed block").to_string()
}

#[test]
#[ignore = "needs root"]
fn a_capture_made_with_the_documented_recipe_replays_what_was_live() {
    let ns = Netns::new("replaycap");
    let farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "[::1]:0",
        "--close-wait",
        "12",
        "--established",
        "3",
        "--hold-secs",
        "300",
    ]);
    let worker = farm.ready.workers[0].pid;
    let dir = TempDir::new("capture");
    let out = run_bounded(
        &mut ns.command("sh", &["-c", &capture_recipe(), "capture.sh", dir.path()]),
        RUN_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "capture failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let expected: Vec<(String, u64)> = ["ESTABLISHED", "CLOSE_WAIT", "FIN_WAIT2", "LISTEN"]
        .iter()
        .map(|s| (s.to_string(), farm.ready.expected(s)))
        .collect();
    // The live sockets are gone before the replay, which runs on the host.
    drop(farm);
    drop(ns);

    let out = tcpdoctor(&["--proc-root", dir.path(), "check", "--json"]);
    let v = json(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the CLOSE_WAIT pile is a warning: {v:#}"
    );
    for (state, n) in &expected {
        assert_eq!(v["counts"]["total"][state.as_str()], *n, "{state}");
    }
    assert_eq!(v["hostname"], hostname.trim());
    // A capture is one look, and /proc/net/tcp gives no ages: a slow closer and a
    // young leak look alike, so it is reported as not judged rather than as a leak.
    let leak: Vec<&Value> = v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["rule_id"] == "close_wait_slow_close")
        .collect();
    assert_eq!(leak.len(), 1, "{:#}", v["findings"]);
    assert_eq!(leak[0]["data"]["verdict"], "not_rechecked", "{:#}", leak[0]);
    // The owner comes from the captured descriptor links.
    assert_eq!(leak[0]["data"]["pid"], worker, "{:#}", leak[0]);
    assert_eq!(leak[0]["data"]["count"], 12);
    assert_eq!(leak[0]["data"]["comm"], "sockfarm");
    let missing = notice(&v["missing_evidence"], "replay_missing").expect("rates are said");
    assert!(
        !missing.contains("lacks"),
        "the recipe captures everything a replay reads: {missing}"
    );
    assert!(
        notice(&v["missing_evidence"], "owners_partial").is_none(),
        "{:#}",
        v["missing_evidence"]
    );
}
