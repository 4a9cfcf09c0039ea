//! `tcpdoctor kill` on real sockets: leaked CLOSE_WAIT sockets of one process are
//! destroyed while another process's stay, checked with `ss` before and after; the
//! safeguards (selector, never LISTEN, ESTABLISHED only with --force, asking, dry run),
//! a socket that vanishes while the user is asked, another namespace by name, JSON,
//! TIME_WAIT, and a run without CAP_NET_ADMIN. The real-socket tests need root
//! (namespaces, other processes' descriptors): `#[ignore]`d.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use common::netns::{Farm, Netns};
use common::report::{endpoint, socket_pairs};
use common::run::{
    code_and_json, kill_if_running, must_run, run_bounded, run_tcpdoctor, wait_exit, wait_for,
    SETUP_TIMEOUT,
};
use common::{in_ci, require_root, TCPDOCTOR};

/// (local, remote) as sockfarm and `ss` print them.
type Pair = (String, String);

/// Two processes leaking CLOSE_WAIT in one namespace: A holds 4 (two IPv4, two IPv6),
/// B holds 2 (IPv4).
struct TwoLeakers {
    ns: Netns,
    a: Farm,
    b: Farm,
}

fn two_leakers(tag: &str) -> TwoLeakers {
    let ns = Netns::new(tag);
    let a = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "[::1]:0",
        "--close-wait",
        "4",
        "--hold-secs",
        "300",
    ]);
    let b = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--close-wait",
        "2",
        "--hold-secs",
        "300",
    ]);
    let t = TwoLeakers { ns, a, b };
    // What was built is what ss sees, before anything is destroyed.
    assert_eq!(close_wait_pairs(&t.a).len(), 4);
    assert_eq!(close_wait_pairs(&t.b).len(), 2);
    assert_eq!(
        ss_close_wait_of(&t.ns, worker(&t.a)),
        close_wait_pairs(&t.a)
    );
    assert_eq!(
        ss_close_wait_of(&t.ns, worker(&t.b)),
        close_wait_pairs(&t.b)
    );
    t
}

/// The one worker process of a farm: it holds the connections.
fn worker(f: &Farm) -> u32 {
    assert_eq!(f.ready.workers.len(), 1, "one worker");
    f.ready.workers[0].pid
}

/// The CLOSE_WAIT sockets a farm built.
fn close_wait_pairs(f: &Farm) -> BTreeSet<Pair> {
    f.ready
        .sockets(|w| &w.close_wait)
        .into_iter()
        .map(|(_, s)| (s.local.clone(), s.remote.clone()))
        .collect()
}

/// The CLOSE_WAIT sockets `ss` shows held by `pid`.
fn ss_close_wait_of(ns: &Netns, pid: u32) -> BTreeSet<Pair> {
    ns.ss_rows_with_pids()
        .into_iter()
        .filter(|(row, pids)| row.kernel_state() == Some("CLOSE_WAIT") && pids.contains(&pid))
        .map(|(row, _)| (row.local, row.peer))
        .collect()
}

/// How many sockets in `state` (kernel spelling) `ss` shows held by `pid`.
fn ss_count_of(ns: &Netns, state: &str, pid: u32) -> usize {
    ns.ss_rows_with_pids()
        .iter()
        .filter(|(row, pids)| row.kernel_state() == Some(state) && pids.contains(&pid))
        .count()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// The stdout lines of a human result table whose RESULT column is `result`.
fn result_rows<'a>(stdout: &'a str, result: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .filter(|l| {
            l.strip_prefix(result)
                .is_some_and(|rest| rest.starts_with("  "))
        })
        .collect()
}

/// The only line of `stderr` that tcpdoctor itself wrote (notes aside), checked to be
/// one line.
fn error_line(out: &Output) -> String {
    let err = text(&out.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("tcpdoctor:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    lines[0].to_string()
}

#[test]
#[ignore = "needs root"]
fn kill_pid_destroys_exactly_that_processes_close_wait_and_reminds_of_descriptors() {
    require_root();
    let t = two_leakers("pid");
    let (a, b) = (worker(&t.a), worker(&t.b));
    let mine = close_wait_pairs(&t.a);
    let theirs = close_wait_pairs(&t.b);

    let out =
        t.ns.run_tcpdoctor(&["kill", "--pid", &a.to_string(), "--yes"]);
    let stdout = text(&out.stdout);
    assert_eq!(code(&out), 0, "{stdout}\n{}", text(&out.stderr));
    // One row per socket of A, each destroyed and shown with its holder.
    let rows = result_rows(&stdout, "destroyed");
    assert_eq!(rows.len(), mine.len(), "{stdout}");
    for (local, remote) in &mine {
        assert!(
            rows.iter().any(|r| r.contains(&format!(" {local} "))
                && r.contains(&format!(" {remote} "))
                && r.contains(&format!("sockfarm pid={a} fd="))),
            "{local} -> {remote} not reported destroyed:\n{stdout}"
        );
    }
    assert!(stdout.contains("\n4 sockets: 4 destroyed.\n"), "{stdout}");
    // The reminder, with A's count.
    assert!(
        stdout.contains("Reminder: the processes still hold the descriptors"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("  sockfarm (pid {a}): 4 descriptors stay open\n")),
        "{stdout}"
    );
    assert!(stdout.contains("ECONNABORTED"), "{stdout}");
    assert!(!stdout.contains(&format!("pid {b}")), "{stdout}");

    // ss: none left for A, every one of B's still there.
    assert!(ss_close_wait_of(&t.ns, a).is_empty());
    assert_eq!(ss_close_wait_of(&t.ns, b), theirs);
    // What the reminder says is true: A still holds each descriptor, still a socket.
    for (_, s) in t.a.ready.sockets(|w| &w.close_wait) {
        let link = std::fs::read_link(format!("/proc/{a}/fd/{}", s.fd))
            .unwrap_or_else(|e| panic!("fd {} of {a} closed: {e}", s.fd));
        assert!(
            link.to_string_lossy().starts_with("socket:["),
            "{}",
            link.display()
        );
    }
}

#[test]
#[ignore = "needs root"]
fn dry_run_lists_and_no_terminal_refuses_and_neither_destroys() {
    require_root();
    let t = two_leakers("dry");
    let a = worker(&t.a);
    let mine = close_wait_pairs(&t.a);
    let pid = a.to_string();

    let out = t.ns.run_tcpdoctor(&["kill", "--pid", &pid, "--dry-run"]);
    let stdout = text(&out.stdout);
    assert_eq!(code(&out), 0, "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.starts_with("Would destroy 4 sockets (dry run: nothing is destroyed):\n"),
        "{stdout}"
    );
    for (local, remote) in &mine {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("CLOSE_WAIT") && l.contains(local) && l.contains(remote)),
            "{local} -> {remote} not listed:\n{stdout}"
        );
    }

    let (c, v) = code_and_json(&t.ns.run_tcpdoctor(&["kill", "--pid", &pid, "-n", "--json"]));
    assert_eq!(c, 0);
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["confirmation"], "dry_run");
    assert_eq!(v["outcomes"]["would_destroy"], 4);
    assert_eq!(v["outcomes"]["destroyed"], 0);
    assert_eq!(socket_pairs(&v), mine);

    // No --yes and stdin not a terminal: refused before anything is read.
    let out = t.ns.run_tcpdoctor(&["kill", "--pid", &pid]);
    assert_eq!(code(&out), 3);
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let line = error_line(&out);
    assert!(
        line.contains("not a terminal") && line.contains("--yes") && line.contains("--dry-run"),
        "{line}"
    );

    assert_eq!(ss_close_wait_of(&t.ns, a), mine, "nothing destroyed");
    assert_eq!(
        ss_close_wait_of(&t.ns, worker(&t.b)),
        close_wait_pairs(&t.b)
    );
}

#[test]
#[ignore = "needs root"]
fn established_only_with_force_and_listen_never() {
    require_root();
    let ns = Netns::new("estab");
    let farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--established",
        "2",
        "--hold-secs",
        "300",
    ]);
    let w = worker(&farm).to_string();
    let port = farm.ready.listeners[0].port().to_string();
    let listener_pid = farm.pid();
    let listening = |ns: &Netns| ss_count_of(ns, "LISTEN", listener_pid);
    assert_eq!(ss_count_of(&ns, "ESTABLISHED", worker(&farm)), 4);
    assert_eq!(listening(&ns), 1);

    for (args, want) in [
        (
            vec!["kill", "--state", "established", "--pid", &w, "--yes"],
            "add --force",
        ),
        (
            vec![
                "kill", "--state", "listen", "--force", "--port", &port, "--yes",
            ],
            "never destroys LISTEN",
        ),
        (
            vec![
                "kill", "--state", "all", "--force", "--port", &port, "--yes",
            ],
            "never destroys LISTEN",
        ),
        (
            vec![
                "kill",
                "--state",
                "close-wait,listen",
                "--force",
                "--pid",
                &listener_pid.to_string(),
                "--yes",
            ],
            "never destroys LISTEN",
        ),
    ] {
        let out = ns.run_tcpdoctor(&args);
        assert_eq!(code(&out), 3, "{args:?}: {}", text(&out.stderr));
        let line = error_line(&out);
        assert!(line.contains(want), "{args:?}: {line}");
    }
    assert_eq!(ss_count_of(&ns, "ESTABLISHED", worker(&farm)), 4);
    assert_eq!(listening(&ns), 1);

    // With --force: every ESTABLISHED socket of the worker. Both ends of each
    // connection belong to it: destroying one end resets the other, which may then be
    // gone when its own request comes. Either way none is left, and none failed.
    let (c, v) = code_and_json(&ns.run_tcpdoctor(&[
        "kill",
        "--state",
        "established",
        "--force",
        "--pid",
        &w,
        "--yes",
        "--json",
    ]));
    assert_eq!(c, 0, "{v:#}");
    assert_eq!(v["matched"], 4);
    let destroyed = v["outcomes"]["destroyed"].as_u64().expect("count");
    let gone = v["outcomes"]["already_gone"].as_u64().expect("count");
    assert!(destroyed >= 2, "at least one end of each connection: {v:#}");
    assert_eq!(destroyed + gone, 4, "{v:#}");
    for s in v["sockets"].as_array().expect("sockets") {
        assert_eq!(s["state"], "ESTABLISHED");
    }
    assert_eq!(ss_count_of(&ns, "ESTABLISHED", worker(&farm)), 0);
    assert_eq!(listening(&ns), 1, "the listener is untouched");
}

/// Refusals that need no socket at all: one line naming what to change, exit 3,
/// nothing on stdout. Runs as any user.
#[test]
fn unsafe_requests_are_refused_in_one_line_before_anything_is_read() {
    for (args, want) in [
        (
            vec!["kill", "--yes"],
            "needs a selector: --pid, --port or --peer",
        ),
        (
            vec!["kill", "--state", "close-wait", "--yes"],
            "needs a selector",
        ),
        (
            vec![
                "kill", "--port", "80", "--state", "listen", "--force", "--yes",
            ],
            "never destroys LISTEN",
        ),
        (
            vec!["kill", "--port", "80", "--state", "established", "--yes"],
            "add --force",
        ),
        (
            vec!["kill", "--port", "80", "--state", "connected", "--yes"],
            "add --force",
        ),
        (vec!["kill", "--port", "80"], "add --yes"),
        (
            vec!["--proc-root", "/tmp", "kill", "--port", "80", "--yes"],
            "--proc-root",
        ),
        (
            vec!["--source", "proc", "kill", "--port", "80", "--yes"],
            "--source proc",
        ),
    ] {
        let out = run_tcpdoctor(&args);
        assert_eq!(code(&out), 3, "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
        let line = error_line(&out);
        assert!(line.contains(want), "{args:?}: {line}");
    }
}

#[test]
#[ignore = "needs root"]
fn netns_by_name_from_the_host_with_json_per_socket() {
    require_root();
    let t = two_leakers("json");
    let (a, b) = (worker(&t.a), worker(&t.b));
    let mine = close_wait_pairs(&t.a);
    let pid = a.to_string();

    // From the host without --netns: A is not there. Nothing is destroyed, and the
    // hint says where A is.
    let out = run_tcpdoctor(&["--netns", "current", "kill", "--pid", &pid, "--yes"]);
    let stdout = text(&out.stdout);
    assert_eq!(code(&out), 0, "{stdout}");
    assert!(
        stdout.starts_with("No CLOSE_WAIT socket matches: nothing to destroy.\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "pid {a} is in another network namespace (net:[{}]): add --netns {a}",
            t.a.ready.netns_inode()
        )),
        "{stdout}"
    );

    let (c, v) = code_and_json(&run_tcpdoctor(&[
        "--netns",
        t.ns.name(),
        "kill",
        "--pid",
        &pid,
        "--yes",
        "--json",
    ]));
    assert_eq!(c, 0, "{v:#}");
    assert_eq!(v["schema_version"], 2);
    assert_eq!(v["command"], "kill");
    assert_eq!(v["dry_run"], false);
    assert_eq!(v["confirmation"], "yes_flag");
    assert_eq!(v["states"], serde_json::json!(["CLOSE_WAIT"]));
    assert_eq!(v["matched"], 4);
    assert_eq!(v["outcomes"]["destroyed"], 4);
    for other in [
        "would_destroy",
        "not_tried",
        "already_gone",
        "not_permitted",
        "unsupported",
        "failed",
    ] {
        assert_eq!(v["outcomes"][other], 0, "{other}");
    }
    assert_eq!(v["stopped"], Value::Null);
    assert_eq!(socket_pairs(&v), mine);
    for s in v["sockets"].as_array().expect("sockets") {
        assert_eq!(s["outcome"], "destroyed", "{s}");
        assert_eq!(s["state"], "CLOSE_WAIT");
        assert!(s["cookie"].as_u64().is_some(), "{s}");
        assert_eq!(s["owners"][0]["pid"], a, "{s}");
        assert_eq!(s["owners"][0]["comm"], "sockfarm");
        // The descriptor it was shown with is the farm's for that connection.
        let fd = t
            .a
            .ready
            .sockets(|w| &w.close_wait)
            .into_iter()
            .find(|(_, f)| f.local == endpoint(&s["local"]) && f.remote == endpoint(&s["remote"]))
            .map(|(_, f)| f.fd)
            .expect("a farm socket");
        assert_eq!(s["owners"][0]["fd"], fd);
    }
    assert_eq!(
        v["descriptors_kept"],
        serde_json::json!([{"pid": a, "comm": "sockfarm", "descriptors": 4}])
    );
    assert!(ss_close_wait_of(&t.ns, a).is_empty());
    assert_eq!(ss_close_wait_of(&t.ns, b), close_wait_pairs(&t.b));
}

#[test]
#[ignore = "needs root"]
fn time_wait_sockets_can_be_destroyed_and_hold_no_descriptor() {
    require_root();
    let ns = Netns::new("tw");
    let farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--time-wait",
        "3",
        "--exact-time-wait",
        "--hold-secs",
        "300",
    ]);
    let port = farm.ready.listeners[0].port().to_string();
    let tw = |ns: &Netns| {
        ns.ss_state_counts(&[])
            .get("TIME_WAIT")
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(tw(&ns), 3);
    let (c, v) = code_and_json(&ns.run_tcpdoctor(&[
        "kill",
        "--state",
        "time-wait",
        "--port",
        &port,
        "--yes",
        "--json",
    ]));
    assert_eq!(c, 0, "{v:#}");
    assert_eq!(v["outcomes"]["destroyed"], 3, "{v:#}");
    for s in v["sockets"].as_array().expect("sockets") {
        assert_eq!(s["inode"], 0);
        assert_eq!(s["owners"], serde_json::json!([]));
    }
    assert_eq!(v["descriptors_kept"], serde_json::json!([]));
    assert_eq!(tw(&ns), 0);
    assert_eq!(ss_count_of(&ns, "LISTEN", farm.pid()), 1);
}

#[test]
#[ignore = "needs root"]
fn without_cap_net_admin_one_line_says_so_and_nothing_is_destroyed() {
    require_root();
    let t = two_leakers("noadmin");
    let a = worker(&t.a);
    let port = t.a.ready.listeners[0].port().to_string();
    let out =
        t.ns.run_tcpdoctor_unprivileged(&["kill", "--port", &port, "--yes"]);
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let line = error_line(&out);
    assert!(
        line.contains("needs CAP_NET_ADMIN") && line.ends_with("nothing was destroyed"),
        "{line}"
    );
    assert_eq!(ss_close_wait_of(&t.ns, a), close_wait_pairs(&t.a));
}

/// tcpdoctor on a pseudo-terminal (util-linux `script`), answering its question.
mod on_a_terminal {
    use super::*;

    /// Kills the `script` child (by its own pid) if a test fails while it runs.
    struct Running(Child);

    impl Drop for Running {
        fn drop(&mut self) {
            kill_if_running(&mut self.0);
        }
    }

    fn have_script() -> bool {
        let ok = run_bounded(Command::new("script").arg("--version"), SETUP_TIMEOUT)
            .is_ok_and(|o| o.status.success());
        assert!(ok || !in_ci(), "util-linux `script` is needed under CI");
        if !ok {
            eprintln!("SKIP: util-linux `script` not installed");
        }
        ok
    }

    /// Runs `tcpdoctor ARGS` on a terminal; once the question is shown runs `meanwhile`,
    /// then types `answer`. Returns the exit status and everything the terminal showed.
    pub fn answer(
        args: &[&str],
        log: &Path,
        meanwhile: impl FnOnce(),
        answer: &str,
    ) -> (i32, String) {
        let _ = std::fs::remove_file(log);
        let inner = format!("exec {TCPDOCTOR} {}", args.join(" "));
        let child = Command::new("script")
            .args(["-qfec", &inner])
            .arg(log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn script");
        let mut running = Running(child);
        wait_for(Duration::from_secs(60), Duration::from_millis(50), || {
            let shown = std::fs::read_to_string(log).unwrap_or_default();
            shown.contains("[y/N]").then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "no question within 60 s: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        });
        meanwhile();
        running
            .0
            .stdin
            .as_mut()
            .expect("stdin")
            .write_all(answer.as_bytes())
            .expect("type the answer");
        let status = wait_exit(&mut running.0, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("tcpdoctor kill did not exit within 60 s"));
        (
            status.code().unwrap_or(-1),
            std::fs::read_to_string(log).expect("log").replace('\r', ""),
        )
    }

    #[test]
    #[ignore = "needs root"]
    fn no_means_nothing_and_a_socket_gone_before_yes_is_already_gone() {
        require_root();
        if !have_script() {
            return;
        }
        let t = two_leakers("ask");
        let a = worker(&t.a);
        let mine = close_wait_pairs(&t.a);
        let pid = a.to_string();
        let args = ["--netns", t.ns.name(), "kill", "--pid", &pid];
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));

        // No: nothing destroyed, exit 1.
        let (c, shown) = answer(&args, &dir.join("kill_no.log"), || {}, "n\n");
        assert_eq!(c, 1, "{shown}");
        assert!(shown.contains("4 sockets to destroy:"), "{shown}");
        assert!(
            shown.contains("Destroy these 4 sockets? The kernel resets each connection. [y/N] n"),
            "{shown}"
        );
        assert!(shown.contains("Nothing destroyed."), "{shown}");
        assert_eq!(ss_close_wait_of(&t.ns, a), mine);

        // Yes, but one of the listed sockets is destroyed by someone else while the
        // question waits: it is reported already gone, not as an error.
        let (victim_local, victim_remote) = mine
            .iter()
            .find(|(l, _)| l.starts_with("127.0.0.1:"))
            .cloned()
            .expect("an IPv4 socket");
        let (c, shown) = answer(
            &args,
            &dir.join("kill_yes.log"),
            || {
                must_run(&mut t.ns.command(
                    "ss",
                    &["-tnK", "state", "close-wait", "dst", victim_remote.as_str()],
                ));
                assert!(!ss_close_wait_of(&t.ns, a)
                    .contains(&(victim_local.clone(), victim_remote.clone())));
            },
            "y\n",
        );
        assert_eq!(c, 0, "{shown}");
        let gone = result_rows(&shown, "already gone");
        assert_eq!(gone.len(), 1, "{shown}");
        assert!(
            gone[0].contains(&format!(" {victim_local} "))
                && gone[0].contains(&format!(" {victim_remote} ")),
            "{shown}"
        );
        assert_eq!(result_rows(&shown, "destroyed").len(), 3, "{shown}");
        assert!(
            shown.contains("\n4 sockets: 3 destroyed, 1 already gone.\n"),
            "{shown}"
        );
        assert!(
            shown.contains(&format!("  sockfarm (pid {a}): 3 descriptors stay open")),
            "{shown}"
        );
        assert!(ss_close_wait_of(&t.ns, a).is_empty());
        assert_eq!(
            ss_close_wait_of(&t.ns, worker(&t.b)),
            close_wait_pairs(&t.b)
        );
    }
}
