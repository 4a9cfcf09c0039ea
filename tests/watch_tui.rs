//! `tcpdoctor watch` without a terminal: a `WatchApp` fed hand-made snapshots on an
//! injected clock (no sleeps), drawn into ratatui's `TestBackend` at 80x24 and 120x40
//! and compared with golden screens (insta snapshots in tests/snapshots/; how to update
//! them: tests/README.md), plus key handling.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ratatui::backend::TestBackend;
use ratatui::Terminal;
use serde_json::json;

use tcpdoctor::analyze::{self, Thresholds};
use tcpdoctor::model::{
    CloseWaitSocket, CounterSample, Endpoint, Evidence, Finding, FixStep, Nature, Owner, PortUse,
    ProcessFacts, Severity, Snapshot, StateCounts, TcpState,
};
use tcpdoctor::render::watch::{draw, Key, Overlay, SortKey, WatchApp, WatchConfig};

const T0_UNIX_MS: u64 = 1_700_000_000_000;
const STEP_MS: u64 = 2_000;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test ip")
}

fn ep(s: &str, port: u16) -> Endpoint {
    Endpoint::new(ip(s), port)
}

fn process(pid: u32, comm: &str) -> ProcessFacts {
    ProcessFacts {
        pid,
        comm: comm.to_string(),
        uid: 1000,
        cmdline: comm.to_string(),
        open_fds: 100,
        nofile_soft: None,
        nofile_hard: None,
        detached_tcp_fds: None,
    }
}

fn close_waits(pid: u32, n: u64, idle_ms: u32) -> Vec<CloseWaitSocket> {
    (0..n)
        .map(|i| CloseWaitSocket {
            local: ep("10.0.0.1", 8080),
            remote: ep("10.0.0.9", 40_000 + i as u16),
            inode: 1_000 + u64::from(pid) * 1_000 + i,
            recv_q: 1,
            owner: Some(Owner {
                pid,
                fd: 10 + i as u32,
            }),
            idle_ms: Some(idle_ms),
            cookie: None,
            still_there: None,
        })
        .collect()
}

fn counts(pairs: &[(TcpState, u64)]) -> StateCounts {
    let mut c = StateCounts::default();
    for (s, n) in pairs {
        c.0[s.index()] = *n;
    }
    c
}

/// Sample `i` of a host where `api-server` (pid 4242) leaks 4 CLOSE_WAIT per sample,
/// `nginx` (pid 5151) holds a stable 3, and a crawler churns towards 10.0.0.5:5432.
fn sample(i: u64) -> Snapshot {
    let leak = 10 + 4 * i;
    let mut s = Snapshot {
        taken_at_unix_ms: T0_UNIX_MS + i * STEP_MS,
        owners_known: true,
        ..Snapshot::default()
    };
    s.summary.ipv4 = counts(&[
        (TcpState::Established, 120 + 5 * (i % 3)),
        (TcpState::TimeWait, 1_500 + 100 * i),
        (TcpState::CloseWait, leak + 3),
        (TcpState::FinWait2, 2),
        (TcpState::Listen, 3),
    ]);
    s.sockets.close_wait = close_waits(4242, leak, 30_000 + 2_000 * i as u32);
    s.sockets.close_wait.extend(close_waits(5151, 3, 900));
    s.processes.insert(4242, process(4242, "api-server"));
    s.processes.insert(5151, process(5151, "nginx"));
    s.processes.insert(6000, process(6000, "crawler"));
    let tw = &mut s.sockets.time_wait;
    tw.by_destination
        .insert(ep("10.0.0.5", 5432), 1_200 + 100 * i);
    tw.by_destination.insert(ep("10.0.0.7", 6379), 60);
    tw.by_listen_port.insert(8080, 240);
    s.sockets.port_use = vec![
        PortUse {
            local_ip: ip("10.0.0.1"),
            remote: ep("10.0.0.5", 5432),
            counts: counts(&[
                (TcpState::TimeWait, 1_200 + 100 * i),
                (TcpState::Established, 20_000),
            ]),
            sample_owner: Some(Owner { pid: 6000, fd: 3 }),
            usable: 28_232,
            time_wait_ages: Default::default(),
            tw_reuse: false,
        },
        PortUse {
            local_ip: ip("10.0.0.1"),
            remote: ep("10.0.0.7", 6379),
            counts: counts(&[(TcpState::TimeWait, 60), (TcpState::Established, 4)]),
            sample_owner: Some(Owner { pid: 5151, fd: 9 }),
            usable: 28_232,
            time_wait_ages: Default::default(),
            tw_reuse: false,
        },
    ];
    s.sysctls
        .insert("net.ipv4.ip_local_port_range".into(), "32768 60999".into());
    let mut c = CounterSample {
        interval_ms: if i == 0 { 0 } else { STEP_MS },
        ..CounterSample::default()
    };
    for (key, per_s) in [
        ("Tcp.ActiveOpens", 25 + i),
        ("Tcp.PassiveOpens", 40),
        ("TcpExt.ListenOverflows", 0),
        ("TcpExt.TCPTimeWaitOverflow", 0),
        ("Tcp.OutRsts", i % 2),
        ("Tcp.EstabResets", 0),
    ] {
        let base = 1_000_000_i64;
        c.before.insert(key.to_string(), base);
        let grow = if i == 0 { 0 } else { per_s as i64 * 2 };
        c.after.insert(key.to_string(), base + grow);
    }
    s.counters = Some(c);
    s
}

fn findings() -> Vec<Finding> {
    vec![
        Finding {
            rule_id: "ephemeral_port_exhaustion",
            namespaces: Vec::new(),
            nature: Nature::Live,
            proposed: Vec::new(),
            severity: Severity::Critical,
            title: "Ephemeral ports towards 10.0.0.5:5432 from 10.0.0.1 at 80%: 22200 of 28232 used"
                .to_string(),
            evidence: vec![
                Evidence::new("usable ephemeral ports per destination", "28232"),
                Evidence::new("10.0.0.1 -> 10.0.0.5:5432", "22200 used (78.6%)"),
            ],
            why: "Each outgoing connection takes a local port that only has to be unique per destination."
                .to_string(),
            fix: vec![
                FixStep::say("Reuse connections (keep-alive, a pool)."),
                FixStep::run(
                    "Widen the range",
                    "sysctl -w net.ipv4.ip_local_port_range=\"15000 64999\"",
                ),
            ],
            data: json!({}),
        },
        Finding {
            rule_id: "close_wait_leak",
            namespaces: Vec::new(),
            nature: Nature::Live,
            proposed: Vec::new(),
            severity: Severity::Warning,
            title: "api-server (pid 4242) leaks CLOSE_WAIT: 30 sockets, oldest idle 40.0s".to_string(),
            evidence: vec![Evidence::new("CLOSE_WAIT sockets", "30")],
            why: "The peer closed its side and api-server never called close().".to_string(),
            fix: vec![FixStep::run(
                "List them",
                "tcpdoctor sockets --state close-wait --pid 4242 -i",
            )],
            data: json!({}),
        },
        Finding {
            rule_id: "sysctl_audit",
            namespaces: Vec::new(),
            nature: Nature::Live,
            proposed: Vec::new(),
            severity: Severity::Info,
            title: "tcp_fin_timeout is 30: it does not shorten TIME_WAIT".to_string(),
            evidence: vec![],
            why: "TIME_WAIT lasts 60 s on Linux whatever tcp_fin_timeout says.".to_string(),
            fix: vec![],
            data: json!({}),
        },
    ]
}

fn config() -> WatchConfig {
    WatchConfig {
        hostname: "db-proxy-1".to_string(),
        color: false,
        ..WatchConfig::default()
    }
}

/// An app that took `n` samples, 2 s apart on the injected clock.
fn app_after(n: u64) -> WatchApp {
    let mut app = WatchApp::new(config());
    for i in 0..n {
        assert!(app.ingest(i * STEP_MS, &sample(i), findings()));
    }
    app
}

fn render(app: &WatchApp, w: u16, h: u16) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
    term.draw(|f| draw(f, app)).expect("draw");
    let buf = term.backend().buffer();
    let mut out = String::new();
    for y in 0..h {
        let mut line = String::new();
        for x in 0..w {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[test]
fn dashboard_80x24_golden() {
    let app = app_after(6);
    let screen = render(&app, 80, 24);
    assert_golden!("watch_80x24", &screen);
    // Whatever the goldens say, the essentials are on the smallest supported screen.
    for needle in [
        "tcpdoctor watch on db-proxy-1",
        "CLOSE_WAIT",
        "api-server",
        "LEAK +120/min",
        "10.0.0.5:5432",
        "CRIT",
        "q quit",
    ] {
        assert!(screen.contains(needle), "{needle:?} missing:\n{screen}");
    }
    assert!(screen.lines().all(|l| l.chars().count() <= 80));
}

#[test]
fn dashboard_120x40_golden() {
    let app = app_after(8);
    let screen = render(&app, 120, 40);
    assert_golden!("watch_120x40", &screen);
    for needle in [
        "nginx",
        "stable",
        ":8080 served",
        "TIME_WAIT overflows",
        "INFO",
    ] {
        assert!(screen.contains(needle), "{needle:?} missing:\n{screen}");
    }
}

#[test]
fn finding_popup_and_help_80x24_golden() {
    let mut app = app_after(3);
    app.handle_key(Key::Down);
    app.handle_key(Key::Enter);
    assert_golden!("watch_80x24_finding", render(&app, 80, 24));
    app.handle_key(Key::Esc);
    app.handle_key(Key::Char('?'));
    assert_golden!("watch_80x24_help", render(&app, 80, 24));
}

#[test]
fn small_terminal_degrades_to_findings() {
    let app = app_after(2);
    let screen = render(&app, 50, 12);
    assert!(screen.contains("CLOSE_WAIT 17  TIME_WAIT 1600"), "{screen}");
    assert!(screen.contains("CRIT"), "{screen}");
    // Tiny sizes draw without panicking.
    for (w, h) in [(1, 1), (10, 3), (80, 5), (30, 24)] {
        render(&app, w, h);
    }
}

#[test]
fn before_the_first_sample() {
    let app = WatchApp::new(config());
    let screen = render(&app, 80, 24);
    assert!(screen.contains("collecting the first sample"), "{screen}");
}

#[test]
fn leak_is_confirmed_only_after_repeated_growth() {
    let app = app_after(2);
    let row = |app: &WatchApp, pid: u32| {
        app.visible_processes()
            .into_iter()
            .find(|r| r.pid == pid)
            .and_then(|r| r.trend.clone())
            .expect("row with trend")
    };
    assert!(!row(&app, 4242).confirmed_leak);
    let app = app_after(5);
    let leak = row(&app, 4242);
    assert!(leak.confirmed_leak);
    // +4 every 2 s.
    assert!((leak.growth_per_min - 120.0).abs() < 1e-9, "{leak:?}");
    let stable = row(&app, 5151);
    assert!(!stable.confirmed_leak);
    assert_eq!(stable.growth_per_min, 0.0);
}

#[test]
fn p_pauses_ingestion() {
    let mut app = app_after(2);
    app.handle_key(Key::Char('p'));
    assert!(app.is_paused());
    assert!(!app.ingest(10 * STEP_MS, &sample(10), findings()));
    assert_eq!(app.samples(), 2);
    assert!(render(&app, 80, 24).contains("PAUSED"));
    app.handle_key(Key::Char('p'));
    assert!(!app.is_paused());
    assert!(app.ingest(11 * STEP_MS, &sample(11), findings()));
    assert_eq!(app.samples(), 3);
}

#[test]
fn s_cycles_the_sort() {
    let mut app = app_after(5);
    let pids =
        |app: &WatchApp| -> Vec<u32> { app.visible_processes().iter().map(|r| r.pid).collect() };
    assert_eq!(app.sort(), SortKey::CloseWait);
    assert_eq!(pids(&app), vec![4242, 5151]);
    app.handle_key(Key::Char('s'));
    assert_eq!(app.sort(), SortKey::Growth);
    assert_eq!(pids(&app), vec![4242, 5151]);
    app.handle_key(Key::Char('s'));
    assert_eq!(app.sort(), SortKey::Name);
    assert_eq!(pids(&app), vec![4242, 5151]); // api-server < nginx
    let tw: Vec<String> = app
        .visible_time_wait()
        .iter()
        .map(|r| r.label.clone())
        .collect();
    assert_eq!(tw, vec!["10.0.0.5:5432", "10.0.0.7:6379", ":8080 served"]);
    app.handle_key(Key::Char('s'));
    assert_eq!(app.sort(), SortKey::CloseWait);
    assert!(render(&app, 80, 24).contains("s sort: count"));
}

#[test]
fn growth_sort_puts_the_fastest_leaker_first() {
    // nginx has more CLOSE_WAIT, api-server grows: count order and growth order differ.
    let mut app = WatchApp::new(config());
    for i in 0..4u64 {
        let mut s = sample(0);
        s.sockets.close_wait = close_waits(4242, 2 + i, 1_000);
        s.sockets.close_wait.extend(close_waits(5151, 50, 1_000));
        app.ingest(i * STEP_MS, &s, Vec::new());
    }
    let pids =
        |app: &WatchApp| -> Vec<u32> { app.visible_processes().iter().map(|r| r.pid).collect() };
    assert_eq!(pids(&app), vec![5151, 4242]);
    app.handle_key(Key::Char('s'));
    assert_eq!(pids(&app), vec![4242, 5151]);
}

#[test]
fn slash_filter_narrows_rows() {
    let mut app = app_after(3);
    app.handle_key(Key::Char('/'));
    assert!(app.is_editing_filter());
    for c in "NGI".chars() {
        app.handle_key(Key::Char(c));
    }
    // Keys go to the filter while editing: 'q' does not quit.
    app.handle_key(Key::Char('q'));
    app.handle_key(Key::Backspace);
    assert!(!app.should_quit());
    app.handle_key(Key::Enter);
    assert!(!app.is_editing_filter());
    assert_eq!(app.filter(), "NGI");
    let procs: Vec<u32> = app.visible_processes().iter().map(|r| r.pid).collect();
    assert_eq!(procs, vec![5151]);
    // The port table matches the owning process name too; no TIME_WAIT label has "ngi".
    assert_eq!(app.visible_ports().len(), 1);
    assert!(app.visible_time_wait().is_empty());
    assert!(render(&app, 80, 24).contains("filter: NGI"));

    // An address substring.
    app.handle_key(Key::Char('/'));
    for _ in 0..3 {
        app.handle_key(Key::Backspace);
    }
    for c in "6379".chars() {
        app.handle_key(Key::Char(c));
    }
    app.handle_key(Key::Enter);
    let tw: Vec<&str> = app
        .visible_time_wait()
        .iter()
        .map(|r| r.label.as_str())
        .collect();
    assert_eq!(tw, vec!["10.0.0.7:6379"]);
    assert!(app.visible_processes().is_empty());
    // Esc clears it.
    app.handle_key(Key::Esc);
    assert_eq!(app.filter(), "");
    assert_eq!(app.visible_processes().len(), 2);
}

#[test]
fn enter_opens_the_selected_finding_and_esc_closes_it() {
    let mut app = app_after(2);
    app.handle_key(Key::Down);
    assert_eq!(app.selected(), 1);
    app.handle_key(Key::Enter);
    match app.overlay() {
        Overlay::Finding { finding, .. } => assert_eq!(finding.rule_id, "close_wait_leak"),
        other => panic!("expected the finding popup, got {other:?}"),
    }
    let screen = render(&app, 80, 24);
    assert!(screen.contains("never called close()"), "{screen}");
    assert!(
        screen.contains("tcpdoctor sockets --state close-wait --pid 4242"),
        "{screen}"
    );
    // Selection does not run past the end.
    app.handle_key(Key::Esc);
    assert_eq!(app.overlay(), &Overlay::None);
    for _ in 0..10 {
        app.handle_key(Key::Char('j'));
    }
    assert_eq!(app.selected(), 2);
    app.handle_key(Key::Char('k'));
    assert_eq!(app.selected(), 1);
}

#[test]
fn q_and_ctrl_c_request_quit() {
    let mut app = app_after(1);
    assert!(!app.should_quit());
    app.handle_key(Key::Char('q'));
    assert!(app.should_quit());
    let mut app = app_after(1);
    app.handle_key(Key::Char('/'));
    app.handle_key(Key::Interrupt);
    assert!(app.should_quit());
}

#[test]
fn real_rules_feed_the_findings_list() {
    // The run loop hands the app what analyze::run says about the same snapshot.
    let mut app = WatchApp::new(config());
    let mut pids = BTreeMap::new();
    for i in 0..4 {
        let s = sample(i);
        let f = analyze::run(&s, &Thresholds::default());
        pids.insert(i, f.len());
        app.ingest(i * STEP_MS, &s, f);
    }
    let v = app.view().expect("view");
    assert!(
        v.findings.iter().any(|f| f.rule_id == "close_wait_leak"),
        "{:?}",
        v.findings.iter().map(|f| f.rule_id).collect::<Vec<_>>()
    );
    app.handle_key(Key::Enter);
    assert!(matches!(app.overlay(), Overlay::Finding { .. }));
    render(&app, 80, 24);
}

/// The real binary on a pseudo-terminal (util-linux `script`): it enters the alternate
/// screen, draws, and on `q` or SIGTERM leaves it and shows the cursor again. Bounded:
/// every wait has a deadline, and the child is killed (by its own pid) if it overstays.
mod on_a_pty {
    use std::io::Write;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use crate::common::run::{
        kill_if_running, run_bounded, wait_exit as wait_exit_within, wait_for, SETUP_TIMEOUT,
    };

    const ENTER_ALT: &[u8] = b"\x1b[?1049h";
    const LEAVE_ALT: &[u8] = b"\x1b[?1049l";
    const SHOW_CURSOR: &[u8] = b"\x1b[?25h";

    fn has(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// Kills the `script` child (by its own pid) if a test fails while it runs.
    struct Running(Child);

    impl Drop for Running {
        fn drop(&mut self) {
            kill_if_running(&mut self.0);
        }
    }

    fn start(log: &std::path::Path) -> Option<Running> {
        if run_bounded(Command::new("script").arg("--version"), SETUP_TIMEOUT).is_err() {
            eprintln!("SKIP: util-linux `script` not installed");
            return None;
        }
        let _ = std::fs::remove_file(log);
        let inner = format!(
            "stty rows 24 cols 80; exec {} watch --interval 0.5 --samples 200",
            env!("CARGO_BIN_EXE_tcpdoctor")
        );
        let child = Command::new("script")
            .args(["-qfec", &inner])
            .arg(log)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn script");
        Some(Running(child))
    }

    /// Waits (bounded) until the log shows a drawn dashboard.
    fn wait_drawn(log: &std::path::Path) -> Vec<u8> {
        wait_for(Duration::from_secs(30), Duration::from_millis(50), || {
            let d = std::fs::read(log).unwrap_or_default();
            // ratatui moves the cursor over blanks, so look for one word: the findings
            // panel's title appears once the first sample is drawn.
            (has(&d, ENTER_ALT) && has(&d, b"Findings:")).then_some(d)
        })
        .unwrap_or_else(|| panic!("nothing drawn within 30 s"))
    }

    /// True if it exited with status 0 (bounded); fails the test if it did not exit.
    fn wait_exit(child: &mut Child) -> bool {
        match wait_exit_within(child, Duration::from_secs(15)) {
            Some(status) => status.success(),
            None => {
                kill_if_running(child);
                panic!("tcpdoctor watch did not exit within 15 s");
            }
        }
    }

    fn assert_restored(log: &std::path::Path) {
        let d = std::fs::read(log).expect("log");
        let leave = d
            .windows(LEAVE_ALT.len())
            .rposition(|w| w == LEAVE_ALT)
            .unwrap_or_else(|| {
                panic!(
                    "alternate screen never left: {:?}",
                    String::from_utf8_lossy(&d)
                )
            });
        assert!(has(&d[leave..], SHOW_CURSOR), "cursor not shown again");
    }

    #[test]
    fn q_restores_the_terminal() {
        let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("watch_q.log");
        let Some(mut running) = start(&log) else {
            return;
        };
        let child = &mut running.0;
        wait_drawn(&log);
        child
            .stdin
            .as_mut()
            .expect("stdin")
            .write_all(b"q")
            .expect("send q");
        assert!(wait_exit(child), "exit status not 0");
        assert_restored(&log);
    }

    #[test]
    fn sigterm_restores_the_terminal() {
        let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("watch_term.log");
        let Some(mut running) = start(&log) else {
            return;
        };
        let child = &mut running.0;
        wait_drawn(&log);
        // SIGTERM to tcpdoctor itself (`script` would stop recording if it got it): the
        // child of `script`, the shell that exec'd tcpdoctor.
        let children = format!("/proc/{0}/task/{0}/children", child.id());
        let pid: i32 = std::fs::read_to_string(&children)
            .ok()
            .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()))
            .unwrap_or_else(|| panic!("no child in {children}"));
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_eq!(comm.trim(), "tcpdoctor");
        // SAFETY: plain syscall; `pid` is the tcpdoctor this test started, still running
        // (the dashboard was just drawn and it only exits on q or a signal).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        wait_exit(child);
        assert_restored(&log);
    }
}

#[test]
fn open_explanation_follows_its_finding_across_samples() {
    let mut app = app_after(1);
    app.handle_key(Key::Char('j'));
    app.handle_key(Key::Enter);
    let mut next = findings();
    next[1].title = "api-server (pid 4242) leaks CLOSE_WAIT: 34 sockets, oldest idle 42.0s".into();
    app.ingest(STEP_MS, &sample(1), next);
    match app.overlay() {
        Overlay::Finding { finding, .. } => assert!(finding.title.contains("34 sockets")),
        other => panic!("popup closed: {other:?}"),
    }
}

#[test]
fn header_says_how_many_namespaces_the_samples_cover() {
    let mut app = app_after(2);
    let one = render(&app, 120, 40);
    assert!(!one.contains("netns"), "one namespace: no mention\n{one}");
    app.set_namespaces(12, true);
    let all = render(&app, 120, 40);
    let first = all.lines().next().unwrap_or_default();
    assert!(first.contains("in all 12 netns"), "{first}");
    app.set_namespaces(3, false);
    let some = render(&app, 120, 40);
    assert!(some
        .lines()
        .next()
        .unwrap_or_default()
        .contains("in 3 netns"));
}

#[test]
fn findings_name_their_namespace() {
    let mut app = WatchApp::new(config());
    let mut f = findings();
    f[0].namespaces = vec![tcpdoctor::model::NetnsRef {
        inode: 4026532198,
        name: "pod default/web".into(),
    }];
    app.ingest(0, &sample(0), f);
    let screen = render(&app, 120, 40);
    assert!(screen.contains("[pod default/web]"), "{screen}");
}

#[test]
fn header_shows_when_the_cpu_cap_spaces_samples_out() {
    let mut app = app_after(2);
    app.set_spacing(std::time::Duration::from_secs(2));
    let line = render(&app, 120, 40)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains("every 2.0s") && !line.contains("CPU cap"),
        "{line}"
    );
    app.set_spacing(std::time::Duration::from_millis(6600));
    let line = render(&app, 120, 40)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(line.contains("(CPU cap; --max-cpu)"), "{line}");
}

#[test]
fn headless_lines_name_a_process_whose_close_wait_fell_to_zero() {
    let mut app = app_after(2);
    // nginx (5151) closed its 3 CLOSE_WAIT sockets but still runs: its trend stays,
    // with its name.
    let mut s = sample(2);
    s.sockets
        .close_wait
        .retain(|c| c.owner.map(|o| o.pid) != Some(5151));
    app.ingest(2 * STEP_MS, &s, findings());
    let mut out = Vec::new();
    tcpdoctor::render::watch::write_sample_line(&mut out, &app, &[]).expect("line");
    let line: serde_json::Value = serde_json::from_slice(&out).expect("json");
    let nginx = line["close_wait"]
        .as_array()
        .expect("close_wait")
        .iter()
        .find(|t| t["pid"] == 5151)
        .unwrap_or_else(|| panic!("nginx trend kept: {line:#}"));
    assert_eq!(nginx["current"], 0);
    assert_eq!(nginx["comm"], "nginx");
}

/// At 80 columns, with every field long (a long host name, all 12 namespaces, the CPU
/// cap, paused), whole fields leave the header: no figure is ever cut, and the count,
/// the cadence and PAUSED stay.
#[test]
fn header_at_80_columns_drops_whole_fields_never_figures() {
    let mut app = WatchApp::new(WatchConfig {
        hostname: "ip-10-20-30-40.eu-west-1.compute.internal".to_string(),
        color: false,
        ..WatchConfig::default()
    });
    for i in 0..2 {
        assert!(app.ingest(i * STEP_MS, &sample(i), findings()));
    }
    app.set_namespaces(12, true);
    app.set_spacing(std::time::Duration::from_millis(6600));
    let header = |app: &WatchApp| {
        render(app, 80, 24)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let sockets = format!(": {} TCP sockets", sample(1).summary.total().total());
    let full = header(&app);
    assert!(full.chars().count() <= 80, "{full}");
    assert!(full.contains(&sockets), "{full}");
    assert!(full.ends_with("every 6.6s (CPU cap)"), "{full}");
    assert!(!full.contains("UTC"), "the clock leaves first: {full}");
    // Every field left whole, or not at all.
    for field in [
        " in all 12 netns",
        " on ip-10-20-30-40.eu-west-1.compute.internal",
    ] {
        let word = field.split_whitespace().last().unwrap_or_default();
        assert!(
            !full.contains(word) || full.contains(field),
            "{field:?} cut: {full}"
        );
    }
    app.handle_key(Key::Char('p'));
    assert!(app.is_paused());
    let paused = header(&app);
    assert!(paused.starts_with("tcpdoctor watch PAUSED"), "{paused}");
    assert!(
        paused.contains(&sockets) && paused.contains("every 6.6s"),
        "{paused}"
    );
    assert!(paused.chars().count() <= 80, "{paused}");
    // Wide enough: everything.
    let wide = render(&app, 160, 40);
    let first = wide.lines().next().unwrap_or_default();
    assert!(
        first.contains(" on ip-10-20-30-40.eu-west-1.compute.internal")
            && first.contains("in all 12 netns")
            && first.contains("UTC")
            && first.contains("(CPU cap; --max-cpu)"),
        "{first}"
    );
}

/// Sample `i` with traced flows: the crawler (pid 6000) opens 300/s to 10.0.0.5:5432
/// and closes first, java (pid 91) fails with EADDRNOTAVAIL toward 10.0.0.7:443, nginx
/// (pid 5151) accepts on :8080 and its clients close first.
fn traced_sample(i: u64) -> Snapshot {
    use tcpdoctor::model::{
        ConnectFailures, Direction, FlowCounts, FlowKey, FlowPeer, FlowRow, NamespaceFlows,
    };
    let row = |pid: u32, comm: &str, direction, peer, counts| FlowRow {
        key: FlowKey {
            pid,
            netns: 1,
            direction,
            peer,
        },
        comm: comm.to_string(),
        netns_name: "host".to_string(),
        counts,
    };
    let mut s = sample(i);
    s.processes.insert(91, process(91, "java"));
    s.flows = Some(NamespaceFlows {
        duration_ms: STEP_MS,
        flows: vec![
            row(
                6000,
                "crawler",
                Direction::Active,
                FlowPeer::Remote(ep("10.0.0.5", 5432)),
                FlowCounts {
                    opened: 600,
                    closed_local: 600,
                    ..FlowCounts::default()
                },
            ),
            row(
                91,
                "java",
                Direction::Active,
                FlowPeer::Remote(ep("10.0.0.7", 443)),
                FlowCounts {
                    opened: 4,
                    closed_local: 4,
                    connect_failures: ConnectFailures {
                        eaddrnotavail: 1312,
                        ..ConnectFailures::default()
                    },
                    ..FlowCounts::default()
                },
            ),
            row(
                5151,
                "nginx",
                Direction::Passive,
                FlowPeer::ListeningPort(8080),
                FlowCounts {
                    opened: 80,
                    closed_peer: 78,
                    closed_local: 2,
                    ..FlowCounts::default()
                },
            ),
        ],
        ..NamespaceFlows::default()
    });
    s
}

#[test]
fn churn_panel_80x24_golden() {
    let mut app = WatchApp::new(config());
    for i in 0..4 {
        assert!(app.ingest(i * STEP_MS, &traced_sample(i), findings()));
    }
    let screen = render(&app, 80, 24);
    assert_golden!("watch_80x24_churn", &screen);
    for needle in [
        "Churn: process -> destination, last 2.0s",
        "crawler",
        "10.0.0.5:5432",
        "300.0",
        "local 100%",
        "1312 EADDRNOTAVAIL",
    ] {
        assert!(screen.contains(needle), "{needle:?} missing:\n{screen}");
    }
    assert!(screen.lines().all(|l| l.chars().count() <= 80));
    // The filter narrows it as it does the other tables.
    app.handle_key(Key::Char('/'));
    for c in "java".chars() {
        app.handle_key(Key::Char(c));
    }
    app.handle_key(Key::Enter);
    let rows = app.visible_churn().expect("traced");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].pid, 91);
    // Not traced: no panel, the usual layout.
    let plain = render(&app_after(4), 80, 24);
    assert!(!plain.contains("Churn"), "{plain}");
}

#[test]
fn headless_lines_carry_the_churn_rows() {
    let mut app = WatchApp::new(config());
    app.ingest(0, &traced_sample(0), findings());
    let mut out = Vec::new();
    tcpdoctor::render::watch::write_sample_line(&mut out, &app, &[]).expect("line");
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    // Most connect() calls first, the failed ones included.
    assert_eq!(v["churn"][0]["pid"], 91);
    assert_eq!(v["churn"][0]["failed"], 1312);
    assert_eq!(v["churn"][0]["failed_errno"], "EADDRNOTAVAIL");
    assert_eq!(v["churn"][1]["pid"], 6000);
    assert_eq!(v["churn"][1]["opened_per_s"], 300.0);
    let mut plain = WatchApp::new(config());
    plain.ingest(0, &sample(0), findings());
    let mut out = Vec::new();
    tcpdoctor::render::watch::write_sample_line(&mut out, &plain, &[]).expect("line");
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert!(v["churn"].is_null(), "{v}");
}

#[test]
fn a_confirmed_leak_says_when_its_descriptors_run_out() {
    let mut app = WatchApp::new(config());
    for i in 0..6 {
        let mut s = sample(i);
        // 4 more CLOSE_WAIT per 2 s sample = 120/min; 1000 of 1024 descriptors open.
        let mut p = process(4242, "api-server");
        p.open_fds = 1000;
        p.nofile_soft = Some(tcpdoctor::model::Limit::Value(1024));
        s.processes.insert(4242, p);
        app.ingest(i * STEP_MS, &s, findings());
    }
    let row = app
        .visible_processes()
        .into_iter()
        .find(|r| r.pid == 4242)
        .expect("api-server")
        .clone();
    // 24 left at 2/s.
    assert_eq!(row.fds_exhausted_in_s, Some(12.0));
    let screen = render(&app, 120, 40);
    assert!(
        screen.contains("LEAK +120/min, fds out in 12.0s"),
        "{screen}"
    );
}
