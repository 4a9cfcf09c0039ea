//! `tcpdoctor serve` scraped over real HTTP: inside a private network namespace with a
//! socket farm (root; the test thread that scrapes enters the namespace with setns), and
//! on captured /proc fixtures (any user) for golden output, shared collections, total
//! failure and shutdown. Also checks the shipped alerts and dashboard against the
//! metrics the exporter really serves. Every child and every wait is bounded.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{require_root, run_bounded, Netns, TCPDOCTOR};

/// How long the exporter may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one HTTP exchange may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the exporter may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

// ---------------------------------------------------------------------------------------
// The exporter process and HTTP.

/// A running `tcpdoctor serve`; killed (by its pid) if the test did not stop it.
struct Served {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Served {
    /// Starts `cmd` (a `tcpdoctor ... serve --listen 127.0.0.1:0 ...` command) and waits
    /// for the address it prints.
    fn start(mut cmd: Command) -> Served {
        let shown = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        if let Some(pipe) = child.stderr.take() {
            let log = Arc::clone(&stderr);
            thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let (Some(t), Some(addr)) = (&tx, listening_addr(&line)) {
                        let _ = t.send(addr);
                        tx = None;
                    }
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let err = stderr.lock().map(|s| s.clone()).unwrap_or_default();
                panic!("{shown}: no listening line within {START_TIMEOUT:?}; stderr: {err}");
            }
        };
        Served {
            child,
            addr,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// SIGTERM, then a bounded wait. Returns the exit status (None: still running after
    /// STOP_TIMEOUT, then killed).
    fn terminate(&mut self) -> Option<ExitStatus> {
        // SAFETY: plain syscall on our own unreaped child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `127.0.0.1:9469` from "tcpdoctor serve: listening on http://127.0.0.1:9469/metrics".
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("listening on http://").nth(1)?;
    rest.split('/').next()?.parse().ok()
}

/// One HTTP/1.0 exchange (so the answer is never chunked): (status, headers, body).
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
    write!(s, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read answer to {path}: {e}"));
    let text = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (status, head.to_string(), body.to_string())
}

fn scrape(addr: SocketAddr) -> String {
    let (status, head, body) = http(addr, "GET", "/metrics");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body
}

/// Runs `f` on a thread that has entered the network namespace `ns` (setns on
/// /run/netns/NAME): its sockets live there; the test's other threads are unaffected.
fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{}", ns.name());
    thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: a valid namespace fd; setns affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("scrape thread")
}

// ---------------------------------------------------------------------------------------
// The exposition format, parsed.

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Scrape {
    /// Family name -> type, in output order.
    types: Vec<(String, String)>,
    samples: Vec<Sample>,
}

impl Scrape {
    fn parse(body: &str) -> Scrape {
        let mut s = Scrape::default();
        let mut helped = BTreeSet::new();
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default();
                assert!(helped.insert(name.to_string()), "HELP twice for {name}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let (name, kind) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
                assert!(helped.contains(name), "TYPE without HELP: {line}");
                s.types.push((name.to_string(), kind.to_string()));
            } else if !line.is_empty() {
                s.samples.push(parse_sample(line));
            }
        }
        for smp in &s.samples {
            assert!(
                s.types.iter().any(|(n, _)| *n == smp.name),
                "sample without TYPE: {}",
                smp.name
            );
        }
        s
    }

    fn family(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    /// The value of the one sample of `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let hits: Vec<_> = self
            .family(name)
            .into_iter()
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(hits.len() <= 1, "{name} {labels:?} matches {hits:?}");
        hits.first().map(|s| s.value)
    }

    fn must(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }

    /// "name type label,label" per family, in output order: what a scrape promises
    /// regardless of this host's values.
    fn schema(&self) -> String {
        let mut out = String::new();
        for (name, kind) in &self.types {
            let labels = self
                .samples
                .iter()
                .find(|s| s.name == *name)
                .map(|s| s.labels.keys().cloned().collect::<Vec<_>>().join(","))
                // Families whose samples come and go with this host's state.
                .unwrap_or_else(|| match name.as_str() {
                    "tcpdoctor_partial_data_notices" => "code".to_string(),
                    _ => String::new(),
                });
            out.push_str(&format!("{name} {kind} {labels}\n"));
        }
        out
    }
}

/// `name{k="v",...} value` with the format's escapes in label values.
fn parse_sample(line: &str) -> Sample {
    let bad = || -> ! { panic!("malformed sample line {line:?}") };
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| bad());
    let name = &line[..name_end];
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name in {line:?}"
    );
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        loop {
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                bad();
            }
            let mut val = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => val.push('\n'),
                        Some((_, '\\')) => val.push('\\'),
                        Some((_, '"')) => val.push('"'),
                        _ => bad(),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => val.push(c),
                    None => bad(),
                }
            }
            assert!(
                labels.insert(key.clone(), val).is_none(),
                "label {key} twice in {line:?}"
            );
            match chars.next() {
                Some((_, ',')) => continue,
                Some((i, '}')) => {
                    rest = &r[i + 1..];
                    break;
                }
                _ => bad(),
            }
        }
    }
    let value = match rest.trim() {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| bad()),
    };
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}

/// The body with every sample value replaced by `<v>`: names, types, help and label sets.
fn scrub_values(body: &str) -> String {
    body.lines()
        .map(|l| {
            if l.starts_with('#') {
                l.to_string()
            } else {
                match l.rfind(' ') {
                    Some(i) => format!("{} <v>", &l[..i]),
                    None => l.to_string(),
                }
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Compares with `tests/golden/NAME`; `UPDATE_GOLDEN=1` rewrites it instead.
fn golden(name: &str, actual: &str) {
    let path = manifest("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(manifest("tests/golden")).expect("golden dir");
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    if expected != actual {
        let diff: Vec<String> = expected
            .lines()
            .zip(actual.lines())
            .filter(|(a, b)| a != b)
            .take(10)
            .map(|(a, b)| format!("- {a}\n+ {b}"))
            .collect();
        panic!(
            "{} differs (UPDATE_GOLDEN=1 to accept; {} vs {} lines):\n{}",
            path.display(),
            expected.lines().count(),
            actual.lines().count(),
            diff.join("\n")
        );
    }
}

/// The metric families (and their labels) the exporter serves, from the schema golden.
fn known_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let path = manifest("tests/golden/serve_metrics_schema.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter_map(|l| {
            let mut it = l.split(' ');
            let name = it.next()?.to_string();
            let _kind = it.next()?;
            let labels = it
                .next()
                .unwrap_or("")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            Some((name, labels))
        })
        .collect()
}

fn promtool() -> Option<&'static str> {
    let ok = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some("promtool")
}

/// `promtool check rules FILE` or `promtool test rules FILE` (bounded); fails the test
/// with promtool's output unless it succeeds.
fn promtool_rules(promtool: &str, verb: &str, file: &Path) {
    let out = run_bounded(
        Command::new(promtool).args([verb, "rules"]).arg(file),
        Duration::from_secs(60),
    )
    .expect("promtool");
    assert!(
        out.status.success(),
        "promtool {verb} rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `promtool check metrics` on the body: valid exposition, and no lint complaints.
fn promtool_check_metrics(body: &str) {
    let Some(promtool) = promtool() else {
        eprintln!("SKIP: promtool check metrics: promtool is not installed (.ci/run installs it)");
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(body.as_bytes()).expect("feed promtool");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// Captured /proc trees (no root needed).

static TMP_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let n = TMP_COUNTER.fetch_add(1, Ordering::SeqCst);
        let p =
            std::env::temp_dir().join(format!("tcpdoctor-serve-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read fixture dir") {
        let e = e.expect("dir entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy fixture file");
        }
    }
}

/// `tcpdoctor --proc-root ROOT --source proc serve --listen 127.0.0.1:0 EXTRA...`.
fn replay_command(root: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(TCPDOCTOR);
    cmd.arg("--proc-root")
        .arg(root)
        .args(["--source", "proc", "serve", "--listen", "127.0.0.1:0"])
        .args(extra);
    cmd
}

const FIXTURE: &str = "tests/fixtures/proc/netns_mixed";

#[test]
fn serve_fixture_replay_matches_golden_and_promtool() {
    let mut served = Served::start(replay_command(&manifest(FIXTURE), &["--top", "3"]));
    let body = scrape(served.addr);
    let s = Scrape::parse(&body);
    // The capture's exact numbers (see the fixture's ss-tanoiHe.txt).
    assert_eq!(
        s.must(
            "tcpdoctor_sockets",
            &[("state", "close_wait"), ("family", "ipv4")]
        ),
        3.0
    );
    assert_eq!(s.family("tcpdoctor_sockets").len(), 22);
    assert_eq!(s.must("tcpdoctor_source_up", &[("source", "sockets")]), 1.0);
    assert_eq!(
        s.must("tcpdoctor_socket_reader_info", &[("reader", "proc")]),
        1.0
    );
    // Top 3 of 8 destinations (10, 4, 2 ports), the other 5 (6 ports) folded.
    assert_eq!(s.family("tcpdoctor_ephemeral_ports_used").len(), 4);
    assert_eq!(
        s.must(
            "tcpdoctor_ephemeral_ports_used",
            &[("destination", "other")]
        ),
        6.0
    );
    golden("serve_fixture_netns_mixed.prom", &scrub_values(&body));
    promtool_check_metrics(&body);
    let (status, _, index) = http(served.addr, "GET", "/");
    assert_eq!(status, 200);
    assert!(index.contains("/metrics"));
    let (status, _, _) = http(served.addr, "GET", "/nope");
    assert_eq!(status, 404);
    let (status, _, _) = http(served.addr, "POST", "/metrics");
    assert_eq!(status, 405);
    assert_eq!(served.terminate().and_then(|s| s.code()), Some(0));
}

/// Opens the FIFO for writing once a reader has it open (bounded), and writes `content`.
fn feed_fifo(path: &Path, content: &[u8], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(mut f) => {
                f.write_all(content).expect("write fifo");
                return true;
            }
            // ENXIO: nobody has it open for reading yet.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("open fifo {}: {e}", path.display()),
        }
    }
    false
}

fn collections_total(body: &str) -> f64 {
    Scrape::parse(body).must("tcpdoctor_collections_total", &[])
}

#[test]
fn concurrent_scrapes_share_one_collection() {
    // Replay a capture whose /proc/net/netstat is a FIFO: a collection blocks reading it
    // until the test writes it, so "a scrape arrives while a collection runs" is exact.
    let tmp = TempDir::new("fifo");
    let root = tmp.0.join("proc");
    copy_tree(&manifest(FIXTURE), &root);
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
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut opened = None;
    while Instant::now() < deadline && opened.is_none() {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
        {
            Ok(f) => opened = Some(f),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("open fifo: {e}"),
        }
    }
    let mut writer = opened.expect("the first scrape never started a collection");
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
    let mut served = Served::start(replay_command(&manifest(FIXTURE), &["--cache", "3600"]));
    let a = scrape(served.addr);
    let b = scrape(served.addr);
    assert_eq!(collections_total(&a), 1.0);
    assert_eq!(collections_total(&b), 1.0);
    assert_eq!(served.terminate().and_then(|s| s.code()), Some(0));
}

#[test]
fn total_collection_failure_still_answers_200_with_source_down() {
    let tmp = TempDir::new("empty");
    let mut served = Served::start(replay_command(&tmp.0, &[]));
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
    let mut served = Served::start(replay_command(&manifest(FIXTURE), &[]));
    let addr = served.addr.to_string();
    let out = run_bounded(
        Command::new(TCPDOCTOR).args(["serve", "--listen", &addr]),
        Duration::from_secs(30),
    )
    .expect("second serve");
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("'{addr}'")) && err.contains("--listen"),
        "{err}"
    );
    // Two signals back to back (as timeout(1) sends them): still a clean exit.
    // SAFETY: plain syscalls on our own child's pid.
    unsafe {
        libc::kill(served.pid() as libc::pid_t, libc::SIGINT);
        libc::kill(served.pid() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    let mut code = None;
    while Instant::now() < deadline && code.is_none() {
        code = served.child.try_wait().ok().flatten().map(|s| s.code());
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(code, Some(Some(0)), "exit 0 on SIGINT then SIGTERM");
}

// ---------------------------------------------------------------------------------------
// Real sockets in a private network namespace (root).

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[test]
fn serve_in_netns_reports_the_farm_exactly_over_http() {
    if !require_root("serve_in_netns_reports_the_farm_exactly_over_http") {
        return;
    }
    let ns = Netns::new("serve");
    let farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--established",
        "3",
        "--close-wait",
        "12",
        "--time-wait",
        "4",
        "--hold-secs",
        "300",
    ]);
    let worker = &farm.ready.workers[0];
    let wpid = worker.pid.to_string();
    let listen_port = farm.ready.listeners[0]
        .addr
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();

    let mut cmd = ns.command(
        TCPDOCTOR,
        &[
            "--netns",
            "current",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--top",
            "2",
            "--cache",
            "0",
        ],
    );
    cmd.env("NO_COLOR", "1");
    let mut served = Served::start(cmd);
    let addr = served.addr;
    let body = in_netns(&ns, move || scrape(addr));
    let s = Scrape::parse(&body);

    // Every state, both families; exact counts. The exporter adds its own listener and
    // the scrape's connection (ESTABLISHED at both ends while it is collected).
    for state in common::KERNEL_STATES {
        let label = state.to_ascii_lowercase();
        let mut want = farm.ready.expected(state) as f64;
        match state {
            "LISTEN" => want += 1.0,
            "ESTABLISHED" => want += 2.0,
            // Exact only until the farm's first TIME_WAIT may expire.
            "TIME_WAIT" if farm.ready.time_wait_valid_until_unix_ms.unwrap_or(0) < unix_ms() => {
                continue
            }
            _ => {}
        }
        let got = s.must(
            "tcpdoctor_sockets",
            &[("state", &label), ("family", "ipv4")],
        );
        assert_eq!(got, want, "{state} ipv4");
        let v6 = s.must(
            "tcpdoctor_sockets",
            &[("state", &label), ("family", "ipv6")],
        );
        assert_eq!(v6, 0.0, "{state} ipv6");
    }
    assert_eq!(s.family("tcpdoctor_sockets").len(), 22);

    // The leaking worker, by comm and pid, with its exact count; nobody else.
    let cw = "tcpdoctor_process_close_wait_sockets";
    assert_eq!(
        s.must(cw, &[("comm", "sockfarm"), ("pid", &wpid)]),
        worker.counts.close_wait as f64
    );
    assert_eq!(s.must(cw, &[("pid", "other")]), 0.0);
    assert_eq!(s.must(cw, &[("pid", "unowned")]), 0.0);
    // Sockets held, top 2: the worker (both ends of its connections), then the exporter
    // (its listener and the scrape); the farm parent's listener and this test's end of
    // the scrape fold into "other"; TIME_WAIT has no descriptor.
    let held = "tcpdoctor_process_sockets";
    let worker_holds =
        worker.counts.established + worker.counts.close_wait + worker.counts.fin_wait2;
    assert_eq!(s.must(held, &[("pid", &wpid)]), worker_holds as f64);
    assert_eq!(
        s.must(
            held,
            &[("comm", "tcpdoctor"), ("pid", &served.pid().to_string())]
        ),
        2.0
    );
    assert_eq!(s.must(held, &[("pid", "other")]), 2.0);
    assert_eq!(
        s.must(held, &[("pid", "unowned")]),
        farm.ready.expected("TIME_WAIT") as f64
    );
    assert_eq!(s.family(held).len(), 4);

    // TIME_WAIT and ephemeral ports towards the farm's listener.
    let dest = format!("127.0.0.1:{listen_port}");
    let tw = farm.ready.expected("TIME_WAIT") as f64;
    assert_eq!(
        s.must(
            "tcpdoctor_time_wait_destination_sockets",
            &[("destination", &dest)]
        ),
        tw
    );
    // The farm's clients closed first: every TIME_WAIT is client side.
    assert_eq!(
        s.must("tcpdoctor_time_wait_sockets", &[("side", "client")]),
        tw
    );
    assert_eq!(
        s.must("tcpdoctor_time_wait_sockets", &[("side", "server")]),
        0.0
    );
    // The farm's listener: what sockfarm saw at ready time (it accepts everything).
    let l = &farm.ready.listeners[0];
    let at = [("listen", l.addr.as_str())];
    assert_eq!(
        s.must("tcpdoctor_listener_accept_queue", &at),
        l.queued as f64
    );
    assert_eq!(
        s.must("tcpdoctor_listener_backlog", &at),
        f64::from(l.backlog)
    );
    let usable = s.must("tcpdoctor_ephemeral_ports_usable", &[]);
    let range = ns.read_sysctl("net.ipv4.ip_local_port_range");
    let bounds: Vec<f64> = range
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(usable, bounds[1] - bounds[0] + 1.0, "range {range}");
    // Client ends: ESTABLISHED clients, FIN_WAIT2 (the CLOSE_WAIT peers), TIME_WAIT.
    let used = (worker.counts.established / 2 + worker.counts.fin_wait2) as f64 + tw;
    let labels = [("local_ip", "127.0.0.1"), ("destination", dest.as_str())];
    assert_eq!(s.must("tcpdoctor_ephemeral_ports_used", &labels), used);
    assert_eq!(
        s.must("tcpdoctor_ephemeral_ports_headroom", &labels),
        usable - used
    );

    // Descriptor headroom is consistent, for at most --top processes.
    let fds = s.family("tcpdoctor_process_fd_headroom");
    assert!(!fds.is_empty() && fds.len() <= 2, "{fds:?}");
    for f in fds {
        let pid = [("pid", f.labels["pid"].as_str())];
        let limit = s.must("tcpdoctor_process_fd_limit", &pid);
        let open = s.must("tcpdoctor_process_open_fds", &pid);
        assert_eq!(f.value, limit - open);
    }
    assert!(s.must("tcpdoctor_file_table_max", &[]) > 0.0);

    // Findings: every rule and severity present; the leak fires as a warning.
    assert_eq!(
        s.must(
            "tcpdoctor_finding",
            &[("rule", "close_wait_leak"), ("severity", "warning")]
        ),
        1.0
    );
    assert_eq!(s.family("tcpdoctor_finding").len() % 3, 0);
    assert!(s
        .value("tcpdoctor_tcpext_listenoverflows_total", &[])
        .is_some());
    assert!(s.value("tcpdoctor_tcp_activeopens_total", &[]).is_some());
    for src in [
        "sockets",
        "owners",
        "counters",
        "sysctls",
        "sockstat",
        "kernel_log",
    ] {
        assert_eq!(
            s.must("tcpdoctor_source_up", &[("source", src)]),
            1.0,
            "{src}"
        );
    }
    assert_eq!(
        s.must("tcpdoctor_socket_reader_info", &[("reader", "netlink")]),
        1.0
    );

    // Process names only: no label carries a command line (the farm's and the
    // exporter's own flags, or a binary's path).
    for smp in &s.samples {
        for (k, v) in &smp.labels {
            assert!(
                !v.contains("--") && !v.contains('/') && !v.contains("sockfarm "),
                "label {k}={v:?} looks like a command line"
            );
        }
    }
    assert!(!body.contains("--close-wait") && !body.contains("--hold-secs"));

    promtool_check_metrics(&body);
    golden("serve_metrics_schema.txt", &s.schema());

    // --cache 0: each scrape collects anew, one collection per scrape.
    let again = in_netns(&ns, move || scrape(addr));
    assert_eq!(collections_total(&again), 2.0);

    // SIGTERM: exits 0 (within the bounded wait).
    assert_eq!(served.terminate().and_then(|st| st.code()), Some(0));
    assert!(
        served.stderr().contains("shutting down"),
        "{}",
        served.stderr()
    );
}

#[test]
fn the_unit_capabilities_are_enough_to_see_other_users_owners() {
    if !require_root("the_unit_capabilities_are_enough_to_see_other_users_owners") {
        return;
    }
    // The systemd unit runs the exporter as a dynamic uid with CAP_SYS_PTRACE,
    // CAP_DAC_READ_SEARCH, CAP_SYSLOG and CAP_SYS_ADMIN only. Do the same with setpriv
    // and check that root's farm is attributed and every namespace read (and, without
    // the capabilities, that neither is).
    common::assert_reachable_by_others(Path::new(TCPDOCTOR));
    let unit =
        std::fs::read_to_string(manifest("deploy/systemd/tcpdoctor.service")).expect("unit file");
    assert!(unit.contains(
        "AmbientCapabilities=CAP_SYS_PTRACE CAP_DAC_READ_SEARCH CAP_SYSLOG CAP_SYS_ADMIN\n"
    ));
    let ns = Netns::new("servecaps");
    let farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--close-wait",
        "3",
        "--hold-secs",
        "300",
    ]);
    let wpid = farm.ready.workers[0].pid.to_string();
    for (with_caps, expect_owner) in [(true, true), (false, false)] {
        let mut args = vec![
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--no-new-privs",
        ];
        if with_caps {
            args.extend([
                "--inh-caps=-all,+sys_ptrace,+dac_read_search,+syslog,+sys_admin",
                "--ambient-caps=-all,+sys_ptrace,+dac_read_search,+syslog,+sys_admin",
                "--bounding-set=-all,+sys_ptrace,+dac_read_search,+syslog,+sys_admin",
            ]);
        } else {
            args.extend(["--inh-caps=-all", "--bounding-set=-all"]);
        }
        // All top-N rows: other namespaces on the machine may hold bigger leakers.
        // `--netns all`: run inside the test's namespace, the default is that one only.
        args.extend([
            TCPDOCTOR,
            "--netns",
            "all",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--top",
            "10000",
        ]);
        let mut served = Served::start(ns.command("setpriv", &args));
        let addr = served.addr;
        let s = Scrape::parse(&in_netns(&ns, move || scrape(addr)));
        let cw = s.value(
            "tcpdoctor_process_close_wait_sockets",
            &[("comm", "sockfarm"), ("pid", &wpid)],
        );
        let current_only = s.value(
            "tcpdoctor_partial_data_notices",
            &[("code", "netns_current_only")],
        );
        if expect_owner {
            assert_eq!(cw, Some(3.0), "with the unit's capabilities");
            assert!(
                s.must("tcpdoctor_netns_read", &[]) >= 2.0,
                "every namespace"
            );
            assert_eq!(current_only, None);
        } else {
            assert_eq!(cw, None, "without capabilities the owner is invisible");
            assert_eq!(s.must("tcpdoctor_netns_read", &[]), 1.0);
            assert_eq!(current_only, Some(1.0), "the report says why");
            assert_eq!(
                s.must(
                    "tcpdoctor_process_close_wait_sockets",
                    &[("pid", "unowned")]
                ),
                3.0
            );
        }
        assert_eq!(s.must("tcpdoctor_source_up", &[("source", "sockets")]), 1.0);
        assert_eq!(served.terminate().and_then(|st| st.code()), Some(0));
    }
}

// ---------------------------------------------------------------------------------------
// The shipped alerts, dashboard and unit.

/// Every `tcpdoctor_*` metric a PromQL text selects, with the label names its `{...}`
/// matchers use.
fn selectors(promql: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = promql;
    while let Some(i) = rest.find("tcpdoctor_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].to_string();
        let mut labels = Vec::new();
        let after = &tail[end..];
        if let Some(inner) = after.strip_prefix('{') {
            let close = inner.find('}').unwrap_or(inner.len());
            for m in inner[..close].split(',') {
                let key: String = m
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !key.is_empty() {
                    labels.push(key);
                }
            }
        }
        out.push((name, labels));
        rest = &tail[end..];
    }
    out
}

fn assert_known(what: &str, promql: &str, known: &BTreeMap<String, BTreeSet<String>>) {
    let found = selectors(promql);
    assert!(
        !found.is_empty() || !promql.contains("tcpdoctor"),
        "{what}: {promql}"
    );
    for (name, labels) in found {
        let have = known
            .get(&name)
            .unwrap_or_else(|| panic!("{what}: unknown metric {name} in {promql}"));
        for l in labels {
            assert!(
                have.contains(&l) || l == "instance" || l == "job",
                "{what}: {name} has no label {l} (has {have:?}) in {promql}"
            );
        }
    }
}

/// Every string under a key named `key`, anywhere in the JSON.
fn strings_under(v: &serde_json::Value, key: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match x {
                    serde_json::Value::String(s) if k == key => out.push(s.clone()),
                    _ => strings_under(x, key, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings_under(x, key, out)),
        _ => {}
    }
}

#[test]
fn dashboard_queries_use_exported_metrics_and_parse() {
    let known = known_metrics();
    let text =
        std::fs::read_to_string(manifest("deploy/grafana/tcpdoctor.json")).expect("dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    assert_eq!(dash["uid"], "tcpdoctor");
    let mut exprs = Vec::new();
    strings_under(&dash, "expr", &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    for e in &exprs {
        assert_known("dashboard", e, &known);
    }
    let mut defs = Vec::new();
    strings_under(&dash["templating"], "definition", &mut defs);
    for d in &defs {
        assert_known("dashboard variable", d, &known);
    }
    // Every panel has a unique id and a grid position.
    let panels = dash["panels"].as_array().expect("panels");
    let ids: BTreeSet<_> = panels.iter().map(|p| p["id"].as_u64()).collect();
    assert_eq!(ids.len(), panels.len());
    assert!(panels.iter().all(|p| p["gridPos"]["w"].as_u64().is_some()));

    // PromQL syntax: promtool parses each expression as a recording rule.
    let Some(promtool) = promtool() else {
        eprintln!("SKIP: dashboard PromQL syntax: promtool is not installed");
        return;
    };
    let tmp = TempDir::new("dash");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let quoted = serde_json::to_string(e).expect("quote");
        rules.push_str(&format!(
            "      - record: dashboard:expr{i}\n        expr: {quoted}\n"
        ));
    }
    let file = tmp.0.join("dashboard_rules.yml");
    std::fs::write(&file, rules).expect("write rules");
    promtool_rules(promtool, "check", &file);
}

#[test]
fn alert_rules_use_exported_metrics_and_fire_as_intended() {
    let known = known_metrics();
    let path = manifest("deploy/prometheus/alerts.yml");
    let text = std::fs::read_to_string(&path).expect("alerts");
    let exprs: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter(|l| l.contains("tcpdoctor_"))
        .filter(|l| !l.contains("summary:") && !l.contains("description:"))
        .collect();
    assert!(exprs.len() >= 8, "{exprs:?}");
    for e in exprs {
        assert_known("alerts.yml", e, &known);
    }
    let Some(promtool) = promtool() else {
        eprintln!("SKIP: promtool test rules: promtool is not installed");
        return;
    };
    let tmp = TempDir::new("alerts");
    let test = format!(
        r#"rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'tcpdoctor_process_close_wait_sockets{{instance="h1",job="t",comm="leaky",pid="42"}}'
        values: '100+5x40'
      - series: 'tcpdoctor_process_close_wait_sockets{{instance="h1",job="t",comm="steady",pid="43"}}'
        values: '500x40'
      - series: 'tcpdoctor_process_close_wait_sockets{{instance="h1",job="t",comm="other",pid="other"}}'
        values: '500+5x40'
      - series: 'tcpdoctor_ephemeral_ports_usable{{instance="h1",job="t"}}'
        values: '28232x40'
      - series: 'tcpdoctor_ephemeral_ports_headroom{{instance="h1",job="t",local_ip="10.0.0.1",destination="10.0.0.7:5432"}}'
        values: '2000x40'
      - series: 'tcpdoctor_ephemeral_ports_headroom{{instance="h1",job="t",local_ip="10.0.0.1",destination="10.0.0.8:443"}}'
        values: '28000x40'
      - series: 'tcpdoctor_tcpext_tcptimewaitoverflow_total{{instance="h1",job="t"}}'
        values: '0+60x40'
      - series: 'tcpdoctor_tcpext_listenoverflows_total{{instance="h1",job="t"}}'
        values: '7x40'
      - series: 'tcpdoctor_process_fd_headroom{{instance="h1",job="t",comm="nginx",pid="7"}}'
        values: '24x40'
      - series: 'tcpdoctor_process_fd_limit{{instance="h1",job="t",comm="nginx",pid="7"}}'
        values: '1024x40'
    alert_rule_test:
      - eval_time: 35m
        alertname: TcpCloseWaitGrowing
        exp_alerts:
          - exp_labels: {{severity: warning, instance: h1, job: t, comm: leaky, pid: "42"}}
            exp_annotations:
              summary: "leaky (pid 42) on h1 leaks CLOSE_WAIT sockets"
              description: "275 CLOSE_WAIT sockets, still growing after 15 minutes. The application does not close() connections after the peer closed them. Run `tcpdoctor check` on the host for the evidence and the fix."
      - eval_time: 35m
        alertname: TcpEphemeralPortHeadroomLow
        exp_alerts:
          - exp_labels: {{severity: warning, instance: h1, job: t, local_ip: 10.0.0.1, destination: "10.0.0.7:5432"}}
            exp_annotations:
              summary: "h1: ephemeral ports towards 10.0.0.7:5432 from 10.0.0.1 below 20%"
              description: "Only 7.084% of the usable ephemeral ports are left towards 10.0.0.7:5432. Reuse connections (keep-alive, pooling), widen ip_local_port_range, or add source addresses."
      - eval_time: 35m
        alertname: TcpEphemeralPortsNearlyExhausted
        exp_alerts: []
      - eval_time: 35m
        alertname: TcpTimeWaitOverflowRising
        exp_alerts:
          - exp_labels: {{severity: warning, instance: h1, job: t}}
            exp_annotations:
              summary: "h1: TIME_WAIT entries dropped (tcp_max_tw_buckets reached)"
              description: "1/s connections skip TIME_WAIT. Raise net.ipv4.tcp_max_tw_buckets and reduce connection churn; do not lower it."
      - eval_time: 35m
        alertname: TcpListenOverflowsRising
        exp_alerts: []
      - eval_time: 35m
        alertname: ProcessFdHeadroomLow
        exp_alerts:
          - exp_labels: {{severity: warning, instance: h1, job: t, comm: nginx, pid: "7"}}
            exp_annotations:
              summary: "nginx (pid 7) on h1 is close to its open-file limit"
              description: "2.344% of its soft RLIMIT_NOFILE is left; accept() and connect() will fail with EMFILE ('Too many open files')."
"#,
        rules = path.display()
    );
    let file = tmp.0.join("alerts_test.yml");
    std::fs::write(&file, test).expect("write test");
    promtool_rules(promtool, "test", &file);
}

#[test]
fn systemd_unit_runs_serve_with_least_privilege() {
    let unit =
        std::fs::read_to_string(manifest("deploy/systemd/tcpdoctor.service")).expect("unit file");
    let settings: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect();
    for want in [
        "ExecStart=/usr/local/bin/tcpdoctor serve",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        // CAP_SYS_ADMIN only to join the network namespaces of containers (setns).
        "CapabilityBoundingSet=CAP_SYS_PTRACE CAP_DAC_READ_SEARCH CAP_SYSLOG CAP_SYS_ADMIN",
        "RestrictNamespaces=net",
        "DeviceAllow=/dev/kmsg r",
    ] {
        assert!(settings.contains(&want), "missing {want:?}");
    }
    for never in [
        "CAP_NET_ADMIN",
        "CAP_BPF",
        "PrivateNetwork=yes",
        "ProtectKernelLogs=yes",
        "PrivateDevices=yes",
        "ProtectProc=invisible",
    ] {
        assert!(
            !settings.iter().any(|l| l.contains(never)),
            "{never} would blind or over-privilege the exporter"
        );
    }
}

#[test]
fn serve_all_namespaces_labels_each_namespace() {
    if !require_root("serve_all_namespaces_labels_each_namespace") {
        return;
    }
    // The exporter runs in one namespace and reads every namespace on the machine;
    // the sockets are in another.
    let home = Netns::new("servehome");
    let other = Netns::new("serveother");
    // 100 ephemeral ports there: its 6 clients (FIN_WAIT2) hold 6 of them.
    other.sysctl("net.ipv4.ip_local_port_range", "40000 40099");
    let farm = other.spawn_farm(&[
        "--listen",
        "127.0.0.1:5000",
        "--close-wait",
        "6",
        "--hold-secs",
        "300",
    ]);
    let mut cmd = home.command(
        TCPDOCTOR,
        &[
            "--netns",
            "all",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--top",
            "10000",
            "--cache",
            "0",
        ],
    );
    cmd.env("NO_COLOR", "1");
    let mut served = Served::start(cmd);
    let addr = served.addr;
    let body = in_netns(&home, move || scrape(addr));
    let s = Scrape::parse(&body);
    for (state, want) in [("close_wait", 6.0), ("fin_wait2", 6.0), ("listen", 1.0)] {
        assert_eq!(
            s.must(
                "tcpdoctor_netns_sockets",
                &[("netns", other.name()), ("state", state)]
            ),
            want,
            "{state}"
        );
    }
    assert!(
        s.must("tcpdoctor_netns_read", &[]) >= 3.0,
        "host, home, other"
    );
    // Against that namespace's own range, not the home namespace's default one.
    assert_eq!(
        s.must(
            "tcpdoctor_netns_ephemeral_ports_headroom",
            &[("netns", other.name())]
        ),
        94.0
    );
    // The leak's process is in the per-process series (comm/pid only).
    let wpid = farm.ready.workers[0].pid.to_string();
    assert_eq!(
        s.must(
            "tcpdoctor_process_close_wait_sockets",
            &[("comm", "sockfarm"), ("pid", &wpid)]
        ),
        6.0
    );
    promtool_check_metrics(&body);
    assert!(served.terminate().is_some_and(|st| st.success()));
    drop(farm);
}
