//! Replaying captures that someone corrupted or built to hurt (`--proc-root`): names
//! that are 10 MB long or full of escape sequences, FIFOs and devices where files were
//! expected, and random corruptions of the captured host in tests/fixtures. Whatever
//! the input, tcpdoctor ends (no hang), without a panic, with an exit code it
//! documents, and prints nothing that drives a terminal.
//!
//! The random campaign runs a few dozen corruptions in CI; by hand, as many as wanted:
//! `TCPDOCTOR_FUZZ_RUNS=16000 cargo test --release --test replay_fuzz -- --nocapture`
//! (`TCPDOCTOR_FUZZ_SEED` picks another sequence). TESTING.md keeps the figures.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::fixtures::{netns_mixed_with_owners, NETNS_MIXED_PID};
use common::fuzz::{self, Rng};
use common::run::run_bounded;
use common::TCPDOCTOR;

/// Far above what a replay of this capture takes (tens of milliseconds); a run that
/// needs it has hung.
const HANG: Duration = Duration::from_secs(30);

/// The commands a replay serves, and what they print.
const COMMANDS: &[&[&str]] = &[
    &["states", "--by", "process"],
    &["states", "--by", "process", "--json"],
    &["states", "--by", "peer"],
    &["sockets"],
    &["sockets", "--json"],
    &["check"],
    &["check", "--json"],
];

/// How one run ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Exit(i32),
    Panic(String),
    Hang,
}

fn replay(dir: &Path, args: &[&str]) -> (End, Option<Output>) {
    let mut cmd = Command::new(TCPDOCTOR);
    cmd.arg("--proc-root")
        .arg(dir)
        .args(args)
        .env("NO_COLOR", "1");
    match run_bounded(&mut cmd, HANG) {
        Err(e) if e.contains("did not finish") => (End::Hang, None),
        Err(e) => panic!("{e}"),
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let end = match out.status.code() {
                Some(101) | None => {
                    End::Panic(stderr.lines().take(3).collect::<Vec<_>>().join(" / "))
                }
                _ if stderr.contains("panicked") => End::Panic(stderr.into_owned()),
                Some(c) => End::Exit(c),
            };
            (end, Some(out))
        }
    }
}

/// Exit codes tcpdoctor documents (cli.rs after_help): 0-4.
fn documented(code: i32) -> bool {
    (0..=4).contains(&code)
}

/// The first `n` characters of `s`.
fn ellipsize(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Nothing in the output moves the cursor, retitles the window or reorders text.
fn assert_inert(out: &Output, what: &str) {
    for (name, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let text = String::from_utf8_lossy(bytes);
        let bad = text
            .chars()
            .find(|c| (c.is_control() && *c != '\n') || ('\u{202a}'..='\u{202e}').contains(c));
        if let Some(c) = bad {
            let line = text.lines().find(|l| l.contains(c)).unwrap_or("");
            panic!("{what}: {name} holds {c:?}: {:?}", ellipsize(line, 300));
        }
    }
}

#[test]
fn names_from_a_corrupted_capture_neither_panic_nor_reach_the_terminal() {
    let cap = netns_mixed_with_owners("hostile-names");
    let comm = cap.path().join(NETNS_MIXED_PID).join("comm");
    let mut rng = Rng::new(fuzz::seed());
    let random: Vec<u8> = (0..100_000).map(|_| rng.next_u64() as u8).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a 10 MB line", vec![b'A'; 10 << 20]),
        ("random bytes", random),
        (
            "escape sequences",
            b"x\x1b[31mred\x1b]0;owned\x07\r\n".to_vec(),
        ),
        ("bidi override", "a\u{202e}fdp.exe\n".as_bytes().to_vec()),
        ("NULs", b"\0\0\0".to_vec()),
        ("empty", Vec::new()),
        ("multi-byte at the cut", "é".repeat(5000).into_bytes()),
    ];
    for (what, bytes) in cases {
        std::fs::write(&comm, &bytes).expect("write comm");
        std::fs::write(cap.path().join(NETNS_MIXED_PID).join("cmdline"), &bytes)
            .expect("write cmdline");
        for args in COMMANDS {
            let (end, out) = replay(cap.path(), args);
            let label = format!("{what}: {}", args.join(" "));
            assert!(
                matches!(end, End::Exit(c) if documented(c)),
                "{label}: {end:?}"
            );
            let out = out.expect("output");
            assert_inert(&out, &label);
            // The 10 MB name is not printed whole, nor its command line (which the JSON
            // of `sockets` repeats for each of the ~40 sockets, cut to 4096 characters).
            assert!(
                out.stdout.len() < 1 << 20,
                "{label}: {} bytes",
                out.stdout.len()
            );
            if args.contains(&"--json") {
                let v: serde_json::Value =
                    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{label}: {e}"));
                if let Some(rows) = v["groups"]["rows"].as_array() {
                    for r in rows {
                        if let Some(c) = r["comm"].as_str() {
                            assert!(
                                c.chars().count() <= 64,
                                "{label}: comm of {} chars",
                                c.len()
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Makes `path` a FIFO (nobody ever writes to it).
fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path; mkfifo has no other preconditions.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {}",
        path.display()
    );
}

/// Regression (issue 16): a FIFO anywhere in a capture blocked the replay forever;
/// `net/tcp` linked to /dev/zero grew to 12-14 GB, to /dev/urandom it never ended.
#[test]
fn fifos_and_devices_in_a_capture_are_refused_without_hanging() {
    let pid = NETNS_MIXED_PID;
    let places = [
        "net/tcp".to_string(),
        "net/tcp6".to_string(),
        "net/netstat".to_string(),
        "net/snmp".to_string(),
        "net/sockstat".to_string(),
        "sys/net/ipv4/ip_local_port_range".to_string(),
        "sys/fs/file-nr".to_string(),
        "kmsg".to_string(),
        format!("{pid}/comm"),
        format!("{pid}/cmdline"),
        format!("{pid}/limits"),
    ];
    for place in &places {
        for kind in ["fifo", "/dev/zero", "/dev/urandom"] {
            let cap = netns_mixed_with_owners("hostile-kinds");
            let path = cap.path().join(place);
            if kind == "fifo" {
                mkfifo(&path);
            } else {
                let _ = std::fs::remove_file(&path);
                std::os::unix::fs::symlink(kind, &path).expect("symlink");
            }
            for args in [&["check", "--json"][..], &["states", "--by", "process"][..]] {
                let started = Instant::now();
                let (end, out) = replay(cap.path(), args);
                let label = format!("{place} as {kind}: {}", args.join(" "));
                assert_ne!(end, End::Hang, "{label}");
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "{label}: {:?}",
                    started.elapsed()
                );
                let End::Exit(code) = end else {
                    panic!("{label}: {end:?}");
                };
                let out = out.expect("output");
                let stderr = String::from_utf8_lossy(&out.stderr);
                if place.starts_with("net/tcp") {
                    // The sockets are the replay: without them it is an error naming the file.
                    assert_eq!(code, 3, "{label}: {stderr}");
                    assert!(
                        stderr.contains(place.as_str()) && stderr.contains("not a regular file"),
                        "{label}: {stderr}"
                    );
                    assert_eq!(stderr.lines().count(), 1, "{label}: {stderr}");
                } else {
                    // Anything else is evidence the report goes without.
                    assert!(
                        documented(code) && code != 3,
                        "{label}: exit {code}: {stderr}"
                    );
                }
            }
        }
    }
}

/// What a campaign of random corruptions gave.
#[derive(Debug, Default)]
struct Tally {
    runs: usize,
    by_code: std::collections::BTreeMap<i32, usize>,
    panics: Vec<String>,
    hangs: Vec<String>,
}

#[test]
fn random_corruptions_of_a_capture_never_panic_or_hang() {
    let runs = fuzz::runs(40);
    let seed = fuzz::seed();
    let mut rng = Rng::new(seed);
    let pristine = netns_mixed_with_owners("fuzz-pristine");
    let files: Vec<_> = fuzz::files_under(pristine.path())
        .into_iter()
        .filter_map(|p| p.strip_prefix(pristine.path()).ok().map(Path::to_path_buf))
        .filter(|p| !p.ends_with("NOTE.md") && !p.ends_with("roles.json"))
        .collect();
    let mut tally = Tally::default();
    let started = Instant::now();
    for run in 0..runs {
        let cap = netns_mixed_with_owners("fuzz-run");
        let mut what = Vec::new();
        for _ in 0..=rng.below(3) {
            let rel = rng.pick(&files).clone();
            let path = cap.path().join(&rel);
            if rng.chance(40) {
                // Not a file at all.
                let kind = *rng.pick(&["fifo", "/dev/zero", "/dev/urandom"]);
                if kind == "fifo" {
                    mkfifo(&path);
                } else {
                    let _ = std::fs::remove_file(&path);
                    let _ = std::os::unix::fs::symlink(kind, &path);
                }
                what.push(format!("{} -> {kind}", rel.display()));
                continue;
            }
            // A file this run already turned into a FIFO or a device link is not read
            // back (a read of /dev/zero never ends).
            if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
                continue;
            }
            let Ok(mut data) = std::fs::read(&path) else {
                continue;
            };
            for _ in 0..=rng.below(4) {
                fuzz::mutate(&mut rng, &mut data);
            }
            std::fs::write(&path, &data).expect("write corrupted file");
            what.push(format!("{} ({} bytes)", rel.display(), data.len()));
        }
        let args = *rng.pick(COMMANDS);
        let label = format!(
            "run {run} (seed {seed}): {} after {}",
            args.join(" "),
            what.join(", ")
        );
        // TCPDOCTOR_FUZZ_TRACE=1: each run's description before it runs (to find the
        // run that crashes or hangs the harness itself).
        if std::env::var_os("TCPDOCTOR_FUZZ_TRACE").is_some() {
            eprintln!("{label}");
        }
        let (end, out) = replay(cap.path(), args);
        tally.runs += 1;
        match end {
            End::Exit(c) => {
                *tally.by_code.entry(c).or_default() += 1;
                assert!(documented(c), "{label}: exit {c}");
                if let Some(out) = out {
                    assert_inert(&out, &label);
                }
            }
            End::Panic(p) => tally.panics.push(format!("{label}: {p}")),
            End::Hang => tally.hangs.push(label),
        }
    }
    eprintln!(
        "replay fuzz: {} runs in {:.0?}, exit codes {:?}, {} panics, {} hangs (seed {seed})",
        tally.runs,
        started.elapsed(),
        tally.by_code,
        tally.panics.len(),
        tally.hangs.len()
    );
    assert!(
        tally.panics.is_empty(),
        "panics:\n{}",
        tally.panics.join("\n")
    );
    assert!(tally.hangs.is_empty(), "hangs:\n{}", tally.hangs.join("\n"));
}
