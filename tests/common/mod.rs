//! One harness for every integration test file (each `mod common;`s it and uses a
//! part): how to run the tests that need root and the sockfarm helper, and
//! - `run`: bounded runs of tcpdoctor and other commands, bounded waits, JSON output;
//! - `netns`, `farm`: throwaway network namespaces and the socket farms built in them;
//! - `churn`: children printing JSON lines, the churn server and client, a traced check;
//! - `report`: lookups in tcpdoctor's JSON reports (findings, namespaces, endpoints);
//! - `ss`: `ss` output, live or captured, parsed;
//! - `fixtures`, `cgroup`: paths into the repository, scratch folders, test cgroups;
//! - `fuzz`: a seeded generator and the mutations the fuzz tests apply to captured input;
//! - `java`: a JVM leaking connections through Apache HttpClient (issue 13), its perf map;
//! - `prom`, `serve`: the Prometheus exposition format, promtool, a running exporter
//!   and hostile HTTP exchanges with it;
//! - `pty`: a child on a pseudo-terminal the test can hang up;
//! - `snapshot`: golden output as insta snapshots;
//! - `tools`: external programs a test needs (skipped outside CI when missing).
//!
//! Every child process and every wait here is bounded in time; nothing sends traffic
//! outside loopback. Nothing here is built into tcpdoctor.

// Each integration test binary compiles this module and uses a different part.
#![allow(dead_code)]

pub mod cgroup;
pub mod churn;
pub mod farm;
pub mod fixtures;
pub mod fuzz;
pub mod java;
pub mod netns;
pub mod prom;
pub mod pty;
pub mod report;
pub mod run;
pub mod serve;
pub mod snapshot;
pub mod ss;
pub mod tools;

/// How to run the tests that need root and the `sockfarm` helper.
pub const HOW_TO_RUN: &str = "cargo test --features sockfarm -- --include-ignored, or bash .ci/run";

/// The `sockfarm` helper binary. Cargo builds it only with `--features sockfarm`, so the
/// suite still compiles without the feature, and a test that needs the helper then
/// fails saying how to run it. The feature is checked, not just the path: cargo sets
/// `CARGO_BIN_EXE_sockfarm` without the feature too, and the file there may be a stale
/// build from an earlier run with it.
pub fn sockfarm() -> &'static str {
    match option_env!("CARGO_BIN_EXE_sockfarm") {
        Some(path) if cfg!(feature = "sockfarm") => path,
        _ => panic!(
            "needs the sockfarm helper, built only with the `sockfarm` feature; run: {HOW_TO_RUN}"
        ),
    }
}

/// The tcpdoctor binary under test.
pub const TCPDOCTOR: &str = env!("CARGO_BIN_EXE_tcpdoctor");

/// Fails the test unless it runs as root. Every test that calls it is marked
/// `#[ignore = "needs root"]`, so a plain `cargo test` lists it as ignored instead of
/// passing it unseen, and `--include-ignored` as another user fails here, saying why.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "needs root (network namespaces, cgroups, BPF, other processes' sockets, setpriv); as root, run: {HOW_TO_RUN}"
        );
    }
}

/// True under CI (`CI` set and not empty), where a missing tool is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// The 11 TCP states in kernel spelling, in state-code order (tcp_states.h).
pub const KERNEL_STATES: [&str; 11] = [
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
];
