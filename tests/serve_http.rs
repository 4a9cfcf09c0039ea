//! How `tcpdoctor serve` behaves as an HTTP server, on a replayed /proc capture (any
//! user): its paths and methods, scrapes sharing one collection or a cached one, a
//! scrape when nothing can be collected, signals and a busy port. Every child and every
//! wait is bounded.

mod common;

use std::thread;
use std::time::Duration;

use common::fixtures::{repo_path, TempDir, NETNS_MIXED};
use common::prom::{promtool_check_metrics, Scrape};
use common::run::{run_tcpdoctor, wait_for};
use common::serve::{
    collections_total, has_open, http, replay_command, scrape, slow_capture, Served, STOP_TIMEOUT,
};

#[test]
fn index_answers_unknown_paths_404_and_other_methods_405() {
    let mut served = Served::start(replay_command(&repo_path(NETNS_MIXED), &[]));
    let (status, _, index) = http(served.addr, "GET", "/");
    assert_eq!(status, 200);
    assert!(index.contains("/metrics"));
    let (status, _, _) = http(served.addr, "GET", "/nope");
    assert_eq!(status, 404);
    let (status, _, _) = http(served.addr, "POST", "/metrics");
    assert_eq!(status, 405);
    assert_eq!(served.terminate().and_then(|s| s.code()), Some(0));
}

#[test]
fn concurrent_scrapes_share_one_collection() {
    // Replay a capture whose net/tcp is 60 MB (its lines repeated, which the parser
    // passes on once): a collection reads it for a second or more, long enough for
    // two more scrapes to arrive while it runs. (A FIFO used to block the collection
    // until the test fed it; a replay now refuses FIFOs, issue 16.)
    let tmp = TempDir::new("big");
    let (root, tcp) = slow_capture(tmp.path());

    let mut served = Served::start(replay_command(&root, &["--cache", "0"]));
    let (addr, pid) = (served.addr, served.pid());
    let first = thread::spawn(move || scrape(addr));
    // The first collection is reading net/tcp now...
    wait_for(Duration::from_secs(30), Duration::from_millis(2), || {
        has_open(pid, &tcp).then_some(())
    })
    .expect("the first scrape never started a collection");
    // ...send two more scrapes while it still runs.
    let others: Vec<_> = (0..2)
        .map(|_| thread::spawn(move || scrape(addr)))
        .collect();
    let bodies: Vec<String> = std::iter::once(first)
        .chain(others)
        .map(|h| h.join().expect("scrape"))
        .collect();
    let counts: Vec<f64> = bodies.iter().map(|b| collections_total(b)).collect();
    assert_eq!(
        counts,
        vec![1.0, 1.0, 1.0],
        "one collection for three scrapes"
    );
    assert!(bodies.iter().all(|b| *b == bodies[0]), "same result served");
    // --cache 0: a scrape after it is over collects again.
    let again = scrape(addr);
    assert_eq!(collections_total(&again), 2.0);
    assert_eq!(served.terminate().and_then(|s| s.code()), Some(0));
}

#[test]
fn cached_results_are_reused_within_cache_seconds() {
    let mut served = Served::start(replay_command(
        &repo_path(NETNS_MIXED),
        &["--cache", "3600"],
    ));
    let a = scrape(served.addr);
    let b = scrape(served.addr);
    assert_eq!(collections_total(&a), 1.0);
    assert_eq!(collections_total(&b), 1.0);
    assert_eq!(served.terminate().and_then(|s| s.code()), Some(0));
}

#[test]
fn total_collection_failure_still_answers_200_with_source_down() {
    let tmp = TempDir::new("empty");
    let mut served = Served::start(replay_command(tmp.path(), &[]));
    let body = scrape(served.addr);
    let s = Scrape::parse(&body);
    assert_eq!(s.must("tcpdoctor_source_up", &[("source", "sockets")]), 0.0);
    assert_eq!(s.must("tcpdoctor_collection_failures_total", &[]), 1.0);
    assert!(s.family("tcpdoctor_sockets").is_empty(), "nothing invented");
    promtool_check_metrics(&body);
    assert!(
        served.stderr().contains("collection failed"),
        "{}",
        served.stderr()
    );
    assert_eq!(served.terminate().and_then(|s| s.code()), Some(0));
}

#[test]
fn sigint_and_repeated_signals_stop_cleanly_and_a_busy_port_is_named() {
    let mut served = Served::start(replay_command(&repo_path(NETNS_MIXED), &[]));
    let addr = served.addr.to_string();
    let out = run_tcpdoctor(&["serve", "--listen", &addr]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("'{addr}'")) && err.contains("--listen"),
        "{err}"
    );
    // Two signals back to back (as timeout(1) sends them): still a clean exit.
    served.signal(libc::SIGINT);
    served.signal(libc::SIGTERM);
    let code = served.wait(STOP_TIMEOUT).map(|s| s.code());
    assert_eq!(code, Some(Some(0)), "exit 0 on SIGINT then SIGTERM");
}
