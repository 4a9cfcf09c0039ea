//! How `tcpdoctor serve` behaves as an HTTP server, on a replayed /proc capture (any
//! user): its paths and methods, scrapes sharing one collection or a cached one, a
//! scrape when nothing can be collected, signals and a busy port. Every child and every
//! wait is bounded.

mod common;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::thread;
use std::time::Duration;

use common::fixtures::{copy_tree, repo_path, TempDir, NETNS_MIXED};
use common::prom::{promtool_check_metrics, Scrape};
use common::run::{run_tcpdoctor, wait_for};
use common::serve::{collections_total, http, replay_command, scrape, Served, STOP_TIMEOUT};

/// The FIFO opened for writing once a reader has it open (bounded): None if no reader
/// came within `within`.
fn fifo_writer(path: &Path, within: Duration) -> Option<File> {
    wait_for(within, Duration::from_millis(5), || {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => Some(f),
            // ENXIO: nobody has it open for reading yet.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => None,
            Err(e) => panic!("open fifo {}: {e}", path.display()),
        }
    })
}

/// Writes `content` into the FIFO once a reader has it open; false if none came.
fn feed_fifo(path: &Path, content: &[u8], within: Duration) -> bool {
    match fifo_writer(path, within) {
        Some(mut f) => {
            f.write_all(content).expect("write fifo");
            true
        }
        None => false,
    }
}

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
    // Replay a capture whose /proc/net/netstat is a FIFO: a collection blocks reading it
    // until the test writes it, so "a scrape arrives while a collection runs" is exact.
    let tmp = TempDir::new("fifo");
    let root = tmp.path().join("proc");
    copy_tree(&repo_path(NETNS_MIXED), &root);
    let fifo = root.join("net/netstat");
    let netstat = std::fs::read(&fifo).expect("fixture netstat");
    std::fs::remove_file(&fifo).expect("rm netstat");
    let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).expect("path");
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");

    let mut served = Served::start(replay_command(&root, &["--cache", "0"]));
    let addr = served.addr;
    let first = thread::spawn(move || scrape(addr));
    // The first collection is now blocked on the FIFO: wait until it opened it...
    let mut writer = fifo_writer(&fifo, Duration::from_secs(30))
        .expect("the first scrape never started a collection");
    // ...then send two more scrapes while it is still running, and give them ample time
    // to reach the exporter and wait.
    let others: Vec<_> = (0..2)
        .map(|_| thread::spawn(move || scrape(addr)))
        .collect();
    thread::sleep(Duration::from_millis(500));
    writer.write_all(&netstat).expect("write fifo");
    drop(writer);
    // A scrape that started a collection of its own would block on the FIFO until its
    // HTTP read timeout and fail the test: bounded either way.
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
    let feeder = {
        let (fifo, netstat) = (fifo.clone(), netstat.clone());
        thread::spawn(move || feed_fifo(&fifo, &netstat, Duration::from_secs(30)))
    };
    let again = scrape(addr);
    assert!(
        feeder.join().expect("feeder"),
        "second collection never read the FIFO"
    );
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
