//! Leak provenance against a real leaking program: a small C program, compiled here
//! with frame pointers, opens connections to its own listener (whose thread closes
//! each accepted end at once) from two functions: `leak_connections()` never closes
//! its sockets (they sit in CLOSE_WAIT), `good_connections()` reads the EOF and closes.
//! `tcpdoctor trace --leaks --json` runs on the host, narrowed to the test's private
//! namespace, and must attribute the leaked sockets to the first function, by the
//! addresses of its code, under the thread name that made them; the properly closed
//! ones must not appear. A second listener resets its connections: descriptors the
//! program keeps after the reset are detached leaks, those it closes are not. Root only
//! (BPF, namespaces) and a C compiler (`cc`):
//! `cargo test --features sockfarm --test leaks -- --include-ignored`.
//! Every child and every wait is bounded; children are killed by pid.

mod common;

use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use common::churn::Lines;
use common::fixtures::TempDir;
use common::netns::Netns;
use common::{require_root, TCPDOCTOR};

/// The leaking program. Its client thread is named `leaker-7`; both functions open
/// their sockets through `dial()`, so the frame under connect() is the function that
/// called `dial()` (the libc wrapper sets up no frame of its own, so the function
/// calling connect() directly is the one a frame-pointer walk cannot see).
const PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static int listener;
static int leaked_total;
static int good_total;
static int held_total;
static int closed_total;

static void *serve(void *arg) {
    (void)arg;
    for (;;) {
        int c = accept(listener, NULL, NULL);
        if (c < 0) return NULL;
        close(c); /* the server closes its end at once: the client's goes CLOSE_WAIT */
    }
}

/* The second listener resets every connection (linger 0): the kernel closes the
 * client's socket while the client still holds its descriptor. */
static int resetter;

static void *reset_all(void *arg) {
    (void)arg;
    struct linger l = { 1, 0 };
    for (;;) {
        int c = accept(resetter, NULL, NULL);
        if (c < 0) return NULL;
        setsockopt(c, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        close(c);
    }
}

static void wait_reset(int s) {
    char b;
    while (read(s, &b, 1) > 0) {}
}

static int dial(int port) {
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) { perror("connect"); exit(2); }
    return s;
}

void leak_connections(int port, int n) {
    for (int i = 0; i < n; i++) {
        dial(port); /* never closed */
        leaked_total++;
    }
}

void good_connections(int port, int n) {
    char b;
    for (int i = 0; i < n; i++) {
        int s = dial(port);
        while (read(s, &b, 1) > 0) {}
        close(s);
        good_total++;
    }
}

/* Reset by the peer, and the descriptor kept: detached. */
void hold_after_reset(int port, int n) {
    for (int i = 0; i < n; i++) {
        wait_reset(dial(port));
        held_total++;
    }
}

/* Reset by the peer, then closed: nothing leaks. */
void close_after_reset(int port, int n) {
    for (int i = 0; i < n; i++) {
        int s = dial(port);
        wait_reset(s);
        close(s);
        closed_total++;
    }
}

struct job { int port, leak, good, rport, held, closed; };

static void *client(void *arg) {
    struct job *j = arg;
    pthread_setname_np(pthread_self(), "leaker-7");
    leak_connections(j->port, j->leak);
    good_connections(j->port, j->good);
    hold_after_reset(j->rport, j->held);
    close_after_reset(j->rport, j->closed);
    return NULL;
}

static int listen_any(int *fd) {
    struct sockaddr_in a = {0};
    socklen_t len = sizeof a;
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    *fd = socket(AF_INET, SOCK_STREAM, 0);
    if (bind(*fd, (struct sockaddr *)&a, sizeof a) || listen(*fd, 128)) exit(3);
    getsockname(*fd, (struct sockaddr *)&a, &len);
    return ntohs(a.sin_port);
}

/* leaky LEAK GOOD [HELD CLOSED] */
int main(int argc, char **argv) {
    if (argc != 3 && argc != 5) return 2;
    alarm(120); /* bounded even if the test dies */
    pthread_t st, rt, ct;
    struct job j = { listen_any(&listener), atoi(argv[1]), atoi(argv[2]),
                     listen_any(&resetter), argc == 5 ? atoi(argv[3]) : 0,
                     argc == 5 ? atoi(argv[4]) : 0 };
    pthread_create(&st, NULL, serve, NULL);
    pthread_create(&rt, NULL, reset_all, NULL);
    pthread_create(&ct, NULL, client, &j);
    pthread_join(ct, NULL);
    printf("{\"pid\":%d,\"port\":%d,\"leaked\":%d,\"good\":%d,\"held\":%d,\"closed\":%d,"
           "\"leak_fn\":\"%p\",\"good_fn\":\"%p\",\"held_fn\":\"%p\",\"closed_fn\":\"%p\"}\n",
           getpid(), j.port, leaked_total, good_total, held_total, closed_total,
           (void *)leak_connections, (void *)good_connections, (void *)hold_after_reset,
           (void *)close_after_reset);
    fflush(stdout);
    char b;
    while (read(0, &b, 1) > 0) {} /* hold the sockets until the test closes stdin */
    return 0;
}
"#;

/// Compiles the program into `dir`: frame pointers, no optimisation.
fn compile(dir: &TempDir) -> String {
    let src = dir.path().join("leaky.c");
    let bin = dir.path().join("leaky");
    std::fs::write(&src, PROGRAM).expect("write leaky.c");
    let out = Command::new("cc")
        .args(["-O0", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("cc (install build-essential)");
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin.to_string_lossy().into_owned()
}

/// Size of function `name` in `bin` (`nm -S`), to turn its printed address into the
/// range of its code.
fn function_size(bin: &str, name: &str) -> u64 {
    let out = Command::new("nm")
        .args(["-S", bin])
        .output()
        .expect("nm (binutils)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.split_whitespace().last() == Some(name))
        .unwrap_or_else(|| panic!("{name} not in nm -S {bin}:\n{text}"));
    let size = line.split_whitespace().nth(1).expect("size column");
    u64::from_str_radix(size, 16).expect("hex size")
}

fn hex(v: &Value) -> u64 {
    let s = v.as_str().expect("address string");
    u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex address")
}

fn frames_in(group: &Value, range: (u64, u64)) -> bool {
    group["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .filter_map(|f| f["addr"].as_u64())
        .any(|a| range.0 <= a && a < range.1)
}

/// The two tests run one at a time: a recorder records every namespace, so each would
/// see the other's sockets.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The leaky program running in `ns` after its work: its ready line, the code ranges
/// of its functions, and the child (closing its stdin ends it).
struct Leaky {
    ready: Value,
    pid: u32,
    leak_range: (u64, u64),
    good_range: (u64, u64),
    held_range: (u64, u64),
    closed_range: (u64, u64),
    child: Lines,
}

/// How many connections each function of the program opens.
#[derive(Clone, Copy)]
struct Work {
    /// Left in CLOSE_WAIT (`leak_connections`).
    leak: u64,
    /// Closed after the peer's FIN (`good_connections`).
    good: u64,
    /// Reset by the peer, the descriptor kept (`hold_after_reset`).
    held: u64,
    /// Reset by the peer, then closed (`close_after_reset`).
    closed: u64,
}

fn run_leaky(ns: &Netns, bin: &str, w: Work) -> Leaky {
    let args = [w.leak, w.good, w.held, w.closed].map(|n| n.to_string());
    let mut cmd = ns.command(bin, &[&args[0], &args[1], &args[2], &args[3]]);
    cmd.stderr(Stdio::inherit());
    let child = Lines::spawn(cmd, "leaky");
    let ready = child.next_json();
    assert_eq!(ready["leaked"], w.leak, "{ready}");
    assert_eq!(ready["good"], w.good, "{ready}");
    assert_eq!(ready["held"], w.held, "{ready}");
    assert_eq!(ready["closed"], w.closed, "{ready}");
    let pid = ready["pid"].as_u64().expect("pid") as u32;
    let range = |key: &str, name: &str| {
        let start = hex(&ready[key]);
        (start, start + function_size(bin, name))
    };
    Leaky {
        pid,
        leak_range: range("leak_fn", "leak_connections"),
        good_range: range("good_fn", "good_connections"),
        held_range: range("held_fn", "hold_after_reset"),
        closed_range: range("closed_fn", "close_after_reset"),
        ready,
        child,
    }
}

/// `tcpdoctor check --json` from the host, narrowed to `ns`.
fn check_json(ns: &Netns) -> Value {
    let mut cmd = Command::new(TCPDOCTOR);
    cmd.args(["check", "--json", "--netns", ns.name()])
        .env("NO_COLOR", "1");
    let out = common::run::run_bounded(&mut cmd, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check --json ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The last `leaks` record among a recorder's lines (its look at SIGTERM).
fn last_leaks(lines: &[Value]) -> &Value {
    lines
        .iter()
        .rev()
        .find(|l| l["record"] == "leaks")
        .unwrap_or_else(|| panic!("a leaks record after SIGTERM: {lines:?}"))
}

/// Process `pid` among the leakers of a `leaks` record.
fn leaker(leaks: &Value, pid: u32) -> &Value {
    leaks["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("pid {pid} among the leakers: {leaks:#}"))
}

/// The `rule` finding of `check --json` about process `pid`.
fn finding_of<'a>(report: &'a Value, rule: &str, pid: u32) -> &'a Value {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["rule_id"] == rule && f["data"]["pid"] == pid)
        .unwrap_or_else(|| panic!("a {rule} finding of pid {pid}: {report:#}"))
}

/// `trace --leaks --json` on the host, narrowed to `ns`, attached; `extra` arguments
/// after the others.
fn start_recorder(ns: &Netns, extra: &[&str]) -> Lines {
    let mut cmd = Command::new(TCPDOCTOR);
    cmd.args([
        "trace",
        "--leaks",
        "--json",
        "--interval",
        "0.25",
        "--leak-age",
        "1",
        "--leak-every",
        "1",
        "--netns",
        ns.name(),
    ]);
    cmd.args(extra);
    let trace = Lines::spawn(cmd, "tcpdoctor trace --leaks");
    let first = trace.next_json();
    assert_eq!(first["record"], "interval", "attached: {first}");
    trace
}

#[test]
#[ignore = "needs root"]
fn trace_leaks_attributes_leaked_sockets_to_the_function_that_opened_them() {
    require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const LEAK: u64 = 40;
    const GOOD: u64 = 25;
    let dir = TempDir::new("leaky");
    let bin = compile(&dir);
    let ns = Netns::new("leaks");
    let trace = start_recorder(&ns, &[]);
    let Leaky {
        ready,
        pid,
        leak_range,
        good_range,
        child: prog,
        ..
    } = run_leaky(
        &ns,
        &bin,
        Work {
            leak: LEAK,
            good: GOOD,
            held: 0,
            closed: 0,
        },
    );

    // Idle past --leak-age, then the last look at SIGTERM.
    thread::sleep(Duration::from_millis(2500));
    let lines = trace.terminate();
    let leaks = last_leaks(&lines);
    let summary = lines.last().expect("summary");
    assert_eq!(summary["record"], "summary", "{summary}");
    drop(prog.finish());

    let p = leaker(leaks, pid);
    assert_eq!(p["comm"], "leaky", "{p:#}");
    // Every leaked socket is in CLOSE_WAIT and counted; the good ones are gone.
    assert_eq!(p["close_wait"], LEAK, "{p:#}");
    assert_eq!(p["leaked"], LEAK, "{p:#}");
    let groups = p["groups"].as_array().expect("groups");
    let in_leak: u64 = groups
        .iter()
        .filter(|g| frames_in(g, leak_range))
        .map(|g| g["count"].as_u64().expect("count"))
        .sum();
    assert!(
        in_leak * 100 >= LEAK * 95,
        "{in_leak} of {LEAK} attributed to leak_connections {leak_range:x?}: {p:#}"
    );
    assert!(
        !groups.iter().any(|g| frames_in(g, good_range)),
        "a group through good_connections {good_range:x?}: {p:#}"
    );
    // By name: the frame in the program's own code nearest the connect() (the dial()
    // helper between them has no frame of its own on the stack: glibc's wrapper sets up
    // none, so the walk goes from the wrapper straight to dial's caller).
    let biggest = groups
        .iter()
        .max_by_key(|g| g["count"].as_u64())
        .expect("a group");
    assert_eq!(
        biggest["call_site"]["symbol"], "leak_connections",
        "{biggest:#}"
    );
    for g in groups.iter().filter(|g| frames_in(g, leak_range)) {
        assert_eq!(g["via"], "connect", "{g:#}");
        assert_eq!(g["of"], LEAK, "{g:#}");
        assert_eq!(g["threads"], serde_json::json!(["leaker-*"]), "{g:#}");
        let port = ready["port"].as_u64().expect("port");
        assert_eq!(
            g["destinations"][0]["remote"],
            format!("127.0.0.1:{port}"),
            "{g:#}"
        );
        let (first, last) = (
            g["first_unix_ms"].as_u64().expect("first"),
            g["last_unix_ms"].as_u64().expect("last"),
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        assert!(
            first <= last && last <= now && now - first < 120_000,
            "{g:#}"
        );
    }
    // The accepted ends were closed at once by the program's server thread: their
    // records went with them, and every socket it opened was recorded.
    let table = &leaks["table"];
    assert_eq!(table["evicted"], 0, "{table}");
    assert_eq!(table["failed"], 0, "{table}");
}

/// `check` run while a recorder runs finds it and names, in its close_wait_leak
/// finding, where the leaked sockets were opened (frames in `leak_connections`, never
/// in `good_connections`); once the recorder is gone the finding says how to record.
#[test]
#[ignore = "needs root"]
fn check_joins_its_leak_finding_to_a_running_recorder() {
    require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const LEAK: u64 = 30;
    const GOOD: u64 = 10;
    let dir = TempDir::new("leaky-check");
    let bin = compile(&dir);
    let ns = Netns::new("leakchk");
    let trace = start_recorder(&ns, &[]);
    let leaky = run_leaky(
        &ns,
        &bin,
        Work {
            leak: LEAK,
            good: GOOD,
            held: 0,
            closed: 0,
        },
    );

    let report = check_json(&ns);
    let f = finding_of(&report, "close_wait_leak", leaky.pid);
    assert_eq!(f["data"]["leaked"], LEAK, "{f:#}");
    let p = &f["data"]["provenance"];
    assert_eq!(p["attributed"], LEAK, "{p:#}");
    let groups = p["groups"].as_array().expect("groups");
    let in_leak: u64 = groups
        .iter()
        .filter(|g| frames_in(g, leaky.leak_range))
        .map(|g| g["count"].as_u64().expect("count"))
        .sum();
    assert!(in_leak * 100 >= LEAK * 95, "{in_leak} of {LEAK}: {p:#}");
    assert!(
        !groups.iter().any(|g| frames_in(g, leaky.good_range)),
        "{p:#}"
    );
    let evidence: Vec<String> = f["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .filter(|e| e["label"] == "opened")
        .map(|e| e["value"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        evidence
            .iter()
            .any(|e| e.starts_with(&format!("{LEAK} of {LEAK}, "))
                && e.contains("by threads leaker-*")
                && e.contains("connect() to 127.0.0.1:")),
        "{evidence:?}"
    );
    // Ours, or one that was recording before it (a `serve` running on this host: the
    // oldest recorder is joined first); never a process that is not tcpdoctor.
    let recorder = p["recorder"].as_str().unwrap_or_default();
    let pid: u32 = recorder
        .rsplit_once("(pid ")
        .and_then(|(_, rest)| rest.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no pid in the recorder's name: {p:#}"));
    if pid != trace.pid() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_eq!(comm.trim(), "tcpdoctor", "{p:#}");
    }

    drop(trace.terminate());
    // Without our recorder: no origin from it. Another recorder on this host (a
    // parallel serve test) would have recorded these sockets too; then it is named.
    let report = check_json(&ns);
    let f = finding_of(&report, "close_wait_leak", leaky.pid);
    let p = &f["data"]["provenance"];
    if p.is_null() {
        let steps: Vec<&str> = f["fix"]
            .as_array()
            .expect("fix")
            .iter()
            .filter_map(|s| s["command"].as_str())
            .collect();
        assert!(
            steps.iter().any(|c| c.starts_with("tcpdoctor trace")
                && c.contains(&format!("--leaks --pid {} --duration 300", leaky.pid))),
            "{steps:?}"
        );
    } else {
        assert!(
            !p["recorder"]
                .as_str()
                .unwrap_or_default()
                .contains("trace --leaks --json --interval 0.25"),
            "our recorder is gone: {p:#}"
        );
    }
    drop(leaky.child.finish());
}

/// Descriptors of sockets the peer reset are leaks no socket table shows: the
/// recorder attributes those the program still holds (`hold_after_reset`) to the
/// function that opened them, and none of those it closed after the reset
/// (`close_after_reset`), although their records stay in the table (marked closed
/// under a descriptor) until it needs the room. `check`, run meanwhile, counts the
/// same descriptors and joins them to the recording.
#[test]
#[ignore = "needs root"]
fn only_descriptors_still_held_after_a_reset_are_attributed_as_detached() {
    require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const WORK: Work = Work {
        leak: 10,
        good: 5,
        held: 12,
        closed: 20,
    };
    let dir = TempDir::new("leaky-reset");
    let bin = compile(&dir);
    let ns = Netns::new("leakrst");
    let trace = start_recorder(&ns, &[]);
    let leaky = run_leaky(&ns, &bin, WORK);

    let report = check_json(&ns);
    let d = finding_of(&report, "detached_descriptors", leaky.pid);
    assert_eq!(d["data"]["count"], WORK.held, "{d:#}");
    let f = finding_of(&report, "close_wait_leak", leaky.pid);
    let p = &f["data"]["provenance"];
    assert_eq!(p["attributed"], WORK.leak + WORK.held, "{p:#}");
    let opened: Vec<&str> = f["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .filter(|e| e["label"] == "opened")
        .filter_map(|e| e["value"].as_str())
        .collect();
    // One line per call site, each of all the leaked descriptors.
    let all = WORK.leak + WORK.held;
    for (n, site) in [
        (WORK.held, "hold_after_reset"),
        (WORK.leak, "leak_connections"),
    ] {
        assert!(
            opened
                .iter()
                .any(|e| e.starts_with(&format!("{n} of {all}, at {site} ("))),
            "{opened:?}"
        );
    }

    // Idle past --leak-age, then the last look at SIGTERM.
    thread::sleep(Duration::from_millis(1500));
    let lines = trace.terminate();
    let leaks = last_leaks(&lines);
    drop(leaky.child.finish());

    let p = leaker(leaks, leaky.pid);
    assert_eq!(p["close_wait"], WORK.leak, "{p:#}");
    assert_eq!(p["detached"], WORK.held, "{p:#}");
    assert_eq!(p["leaked"], WORK.leak + WORK.held, "{p:#}");
    let groups = p["groups"].as_array().expect("groups");
    let count_in = |range| -> u64 {
        groups
            .iter()
            .filter(|g| frames_in(g, range))
            .map(|g| g["count"].as_u64().expect("count"))
            .sum()
    };
    let held = count_in(leaky.held_range);
    assert!(
        held * 100 >= WORK.held * 95,
        "{held} of {} attributed to hold_after_reset: {p:#}",
        WORK.held
    );
    assert!(count_in(leaky.leak_range) * 100 >= WORK.leak * 95, "{p:#}");
    for (name, range) in [
        ("close_after_reset", leaky.closed_range),
        ("good_connections", leaky.good_range),
    ] {
        assert!(
            !groups.iter().any(|g| frames_in(g, range)),
            "a group through {name}: {p:#}"
        );
    }
    // The records of the closed descriptors are still in the table (the recorder
    // records every namespace, so others may be there too).
    let table = &leaks["table"];
    let present = table["present"].as_u64().expect("present");
    assert!(
        present >= WORK.leak + WORK.held + WORK.closed,
        "{present} records: {table}"
    );
}

/// The leaky program, idle after its work, has two threads blocked in accept(): each
/// holds a descriptor number reserved for the connection it waits for, which the size
/// of /proc/PID/fd counts and its listing does not. `check`'s second look must not
/// take those for growth: no descriptor runway, no "descriptors growing".
#[test]
#[ignore = "needs root"]
fn threads_blocked_in_accept_are_not_growing_descriptors() {
    require_root();
    let dir = TempDir::new("leaky-idle");
    let bin = compile(&dir);
    let ns = Netns::new("leakidle");
    let leaky = run_leaky(
        &ns,
        &bin,
        Work {
            leak: 12,
            good: 0,
            held: 0,
            closed: 0,
        },
    );
    let report = check_json(&ns);
    drop(leaky.child.finish());
    let f = finding_of(&report, "close_wait_leak", leaky.pid);
    assert_eq!(f["data"]["count"], 12, "{f:#}");
    assert!(f["data"]["descriptor_runway"].is_null(), "{f:#}");
    assert!(
        !f["evidence"]
            .as_array()
            .expect("evidence")
            .iter()
            .any(|e| e["label"] == "descriptors growing"),
        "{f:#}"
    );
}

/// An origin table smaller than the leak: every leaked socket's record is either still
/// in the table or counted as pushed out (none was closed), the leak is attributed only
/// as far as records remain, and a notice says to raise --leak-table.
#[test]
#[ignore = "needs root"]
fn a_full_origin_table_counts_the_records_it_pushed_out() {
    require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const TABLE: u64 = 1024;
    const LEAK: u64 = 1500;
    let dir = TempDir::new("leaky-full");
    let bin = compile(&dir);
    let ns = Netns::new("leakfull");
    let trace = start_recorder(&ns, &["--leak-table", &TABLE.to_string()]);
    let leaky = run_leaky(
        &ns,
        &bin,
        Work {
            leak: LEAK,
            good: 0,
            held: 0,
            closed: 0,
        },
    );
    // Idle past --leak-age, then the last look at SIGTERM.
    thread::sleep(Duration::from_millis(1500));
    let lines = trace.terminate();
    drop(leaky.child.finish());
    let leaks = last_leaks(&lines);
    let table = &leaks["table"];
    let num = |k: &str| table[k].as_u64().unwrap_or_else(|| panic!("{k}: {table}"));
    assert_eq!(num("capacity"), TABLE, "{table}");
    assert!(num("present") <= TABLE, "{table}");
    // Our sockets are all still open: their records were not removed at a close.
    assert!(num("evicted") >= LEAK - TABLE, "{table}");
    let p = leaker(leaks, leaky.pid);
    assert_eq!(p["leaked"], LEAK, "{p:#}");
    let attributed = p["attributed"].as_u64().expect("attributed");
    assert!(attributed <= TABLE, "{p:#}");
    assert!(
        attributed + num("evicted") >= LEAK,
        "{attributed} attributed: {table}"
    );
    let notices: Vec<&str> = leaks["notices"]
        .as_array()
        .expect("notices")
        .iter()
        .filter_map(|n| n["message"].as_str())
        .collect();
    assert!(
        notices.iter().any(|n| n.contains(&format!(
            "the origin table ({TABLE} entries) overflowed: {} records were pushed out",
            num("evicted")
        )) && n.ends_with("raise --leak-table")),
        "{:#}",
        leaks["notices"]
    );
}
