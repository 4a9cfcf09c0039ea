//! The human `check` report on a hand-built host of 12 network namespaces: what the
//! first screen says (insta snapshots), with the real rules run on it. Nothing here
//! needs root or touches the OS.
//!
//! The host: `java` leaks CLOSE_WAIT in the host's namespace, a cart pod is running out
//! of ephemeral ports towards one destination, ten web pods carry the same folklore
//! sysctls (one cause each: one finding naming ten namespaces), one namespace could not
//! be read, and another has no IPv6.

mod common;

use std::net::IpAddr;

use tcpdoctor::analyze::{self, Thresholds};
use tcpdoctor::model::{
    CheckReport, CloseWaitSocket, CounterSample, Endpoint, HostSnapshot, Limit, NetnsInfo,
    NetnsKind, Notice, NoticeCode, Owner, PortUse, ProcessFacts, Snapshot, Source, StateCounts,
    TcpState,
};
use tcpdoctor::render::check::{write_human, HumanView};
use tcpdoctor::render::Style;

const T0_UNIX_MS: u64 = 1_795_300_000_000;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn ep(s: &str, port: u16) -> Endpoint {
    Endpoint::new(ip(s), port)
}

fn counts(pairs: &[(TcpState, u64)]) -> StateCounts {
    let mut c = StateCounts::default();
    for (s, n) in pairs {
        c.0[s.index()] = *n;
    }
    c
}

/// A namespace with the kernel defaults of 6.18 (kernel-facts.md, Appendix A).
fn namespace(inode: u64, name: &str, kind: NetnsKind, pid: u32) -> Snapshot {
    let mut s = Snapshot {
        taken_at_unix_ms: T0_UNIX_MS,
        source: Some(Source::Netlink),
        owners_known: true,
        netns: Some(NetnsInfo {
            inode,
            name: name.to_string(),
            kind,
            current: kind == NetnsKind::Host,
            initial: kind == NetnsKind::Host,
            container: None,
            ip_netns: Vec::new(),
            processes: 1,
            first_pid: Some(pid),
        }),
        counters: Some(CounterSample {
            interval_ms: 1000,
            ..CounterSample::default()
        }),
        ..Snapshot::default()
    };
    for (k, v) in [
        ("net.ipv4.tcp_fin_timeout", "60"),
        ("net.ipv4.tcp_keepalive_time", "7200"),
        ("net.ipv4.tcp_max_tw_buckets", "131072"),
        ("net.ipv4.tcp_syn_retries", "6"),
        ("net.ipv4.tcp_syn_linear_timeouts", "4"),
        ("net.ipv4.tcp_synack_retries", "5"),
        ("net.ipv4.tcp_syncookies", "1"),
        ("net.ipv4.tcp_tw_reuse", "2"),
        ("net.ipv4.ip_local_port_range", "32768 60999"),
        ("net.ipv4.ip_local_reserved_ports", ""),
        ("net.ipv4.tcp_timestamps", "1"),
        ("net.ipv4.tcp_abort_on_overflow", "0"),
        ("net.ipv4.tcp_ehash_entries", "262144"),
        ("net.core.somaxconn", "4096"),
    ] {
        s.sysctls.insert(k.into(), v.into());
    }
    s
}

fn process(pid: u32, comm: &str, open_fds: u64) -> ProcessFacts {
    ProcessFacts {
        pid,
        comm: comm.into(),
        uid: 1000,
        cmdline: format!("{comm} --serve"),
        open_fds,
        nofile_soft: Some(Limit::Value(65536)),
        nofile_hard: Some(Limit::Value(65536)),
        detached_tcp_fds: None,
    }
}

/// The host's own namespace: java (pid 4242) holds 40 CLOSE_WAIT sockets towards
/// PostgreSQL, silent for 41 minutes and still there at the re-check; tcp_keepalive_time
/// lowered.
fn host_ns() -> Snapshot {
    let mut s = namespace(4026531840, "host", NetnsKind::Host, 1);
    s.sysctls
        .insert("net.ipv4.tcp_keepalive_time".into(), "600".into());
    s.summary.ipv4 = counts(&[
        (TcpState::Established, 212),
        (TcpState::CloseWait, 40),
        (TcpState::TimeWait, 35),
        (TcpState::Listen, 4),
    ]);
    s.processes.insert(4242, process(4242, "java", 900));
    s.sockets.close_wait = (0..40u16)
        .map(|i| CloseWaitSocket {
            local: ep("10.0.0.1", 41000 + i),
            remote: ep("10.0.0.7", 5432),
            inode: 90_000 + u64::from(i),
            recv_q: 1,
            owner: Some(Owner {
                pid: 4242,
                fd: 100 + u32::from(i),
            }),
            idle_ms: Some(2_462_000 + u32::from(i)),
            cookie: Some(7_000 + u64::from(i)),
            still_there: Some(true),
        })
        .collect();
    s.close_wait_recheck_ms = Some(1000);
    s
}

/// A pod whose client uses 26,900 of the 28,232 usable ports towards one destination.
fn cart_ns() -> Snapshot {
    let mut s = namespace(4026532301, "pod shop/cart-7d9f", NetnsKind::Container, 5100);
    s.summary.ipv4 = counts(&[
        (TcpState::Established, 900),
        (TcpState::TimeWait, 26_000),
        (TcpState::Listen, 1),
    ]);
    s.processes.insert(5100, process(5100, "cart", 1200));
    s.sockets.port_use = vec![PortUse {
        local_ip: ip("10.244.1.17"),
        remote: ep("10.96.0.40", 443),
        counts: counts(&[(TcpState::Established, 900), (TcpState::TimeWait, 26_000)]),
        sample_owner: Some(Owner { pid: 5100, fd: 12 }),
        usable: 28_232,
        time_wait_ages: Default::default(),
        tw_reuse: false,
    }];
    s.sockets
        .time_wait
        .by_destination
        .insert(ep("10.96.0.40", 443), 26_000);
    s.sockets.time_wait.client_side = 26_000;
    s
}

/// Ten web pods with the same folklore: syncookies off and a low TIME_WAIT limit.
fn web_ns(n: u64) -> Snapshot {
    let mut s = namespace(
        4026532400 + n,
        &format!("pod shop/web-{n}"),
        NetnsKind::Container,
        6000 + n as u32,
    );
    s.sysctls
        .insert("net.ipv4.tcp_syncookies".into(), "0".into());
    s.sysctls
        .insert("net.ipv4.tcp_max_tw_buckets".into(), "5000".into());
    s.summary.ipv4 = counts(&[
        (TcpState::Established, 20 + n),
        (TcpState::TimeWait, if n == 3 { 4100 } else { 30 }),
        (TcpState::Listen, 1),
    ]);
    if n == 7 {
        s.missing.push(Notice::new(
            NoticeCode::Ipv6Unavailable,
            "IPv6 is disabled in this namespace (no /proc/net/tcp6): IPv4 sockets only",
        ));
    }
    s
}

fn twelve_namespaces() -> CheckReport {
    let mut namespaces = vec![host_ns(), cart_ns()];
    namespaces.extend((1..=10).map(web_ns));
    let host = HostSnapshot {
        namespaces,
        all_namespaces: true,
        missing: vec![Notice::new(
            NoticeCode::NetnsUnreadable,
            "netns pod shop/batch-1 (net:[4026532999]) skipped: it vanished before it could be read",
        )],
    };
    let findings = analyze::run_host(&host, &Thresholds::default());
    CheckReport {
        hostname: "node-7".into(),
        host,
        findings,
    }
}

fn render(r: &CheckReport, width: usize, verbose: bool) -> String {
    let mut out = Vec::new();
    let view = HumanView {
        style: Style { color: false },
        verbose,
        width,
    };
    write_human(&mut out, r, view).expect("render");
    String::from_utf8(out).expect("utf8")
}

/// The first screen at 100 columns (a pipe): totals and what was not seen on top, one
/// line per finding with live problems first, details for the warnings, notes once.
#[test]
fn first_screen_of_twelve_namespaces() {
    let r = twelve_namespaces();
    let text = render(&r, 100, false);
    assert_golden!("check_first_screen_12_netns", text);
}

/// At 80 columns nothing wraps mid-figure: lines are cut between words.
#[test]
fn first_screen_at_80_columns() {
    let r = twelve_namespaces();
    let text = render(&r, 80, false);
    assert_golden!("check_first_screen_12_netns_80", text);
}

#[test]
fn first_screen_shape() {
    let r = twelve_namespaces();
    let text = render(&r, 100, false);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() <= 85, "{} lines:\n{text}", lines.len());
    assert!(
        lines
            .iter()
            .all(|l| l.chars().count() <= 100 || l.contains("$ ")),
        "only commands may run past the width:\n{text}"
    );
    // Totals and completeness first; what was not seen right under them.
    assert!(lines[0].contains("INCOMPLETE view"), "{text}");
    assert!(
        lines[..8].iter().any(|l| l.contains("pod shop/batch-1")),
        "{text}"
    );
    // One line per finding, worst first and live before configuration.
    let rules: Vec<&str> = lines
        .iter()
        .skip_while(|l| !l.is_empty())
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(rules.len(), r.findings.len(), "{text}");
    // The same folklore in ten pods is one finding naming them.
    let cookies: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.data["sysctl"] == "net.ipv4.tcp_syncookies")
        .collect();
    assert_eq!(cookies.len(), 1);
    assert_eq!(cookies[0].namespaces.len(), 10);
    // The per-namespace note is said once.
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(
        flat.matches("a container starts from the kernel defaults")
            .count(),
        1,
        "{text}"
    );
    // Info findings are one line without --verbose; their details with it.
    let verbose = render(&r, 100, true);
    assert!(verbose.lines().count() > lines.len());
    assert!(
        verbose.contains("4026532410"),
        "every namespace with --verbose"
    );
}

/// A handful of findings (a leak, the same folklore in two pods, a lowered keepalive):
/// the whole report fits a terminal.
#[test]
fn a_handful_of_findings_fits_forty_lines() {
    let pod = |n| {
        let mut s = web_ns(n);
        s.sysctls
            .insert("net.ipv4.tcp_max_tw_buckets".into(), "131072".into());
        s
    };
    let host = HostSnapshot {
        namespaces: vec![host_ns(), pod(1), pod(2)],
        all_namespaces: true,
        missing: Vec::new(),
    };
    let r = CheckReport {
        hostname: "node-7".into(),
        findings: analyze::run_host(&host, &Thresholds::default()),
        host,
    };
    assert_eq!(r.findings.len(), 3, "{:#?}", r.findings);
    let text = render(&r, 100, false);
    assert!(
        text.lines().count() <= 40,
        "{} lines:\n{text}",
        text.lines().count()
    );
    assert!(
        text.starts_with(
            "tcpdoctor check on node-7: 3 findings (2 warnings, 1 info), complete view\n"
        ),
        "{text}"
    );
    assert_golden!("check_first_screen_handful", text);
}

/// Nothing found, nothing missing: the header says both, and nothing else is printed
/// but the state line.
#[test]
fn quiet_host_is_two_lines_and_a_state_line() {
    let host = HostSnapshot {
        namespaces: vec![namespace(4026531840, "host", NetnsKind::Host, 1)],
        all_namespaces: false,
        missing: Vec::new(),
    };
    let r = CheckReport {
        hostname: "node-7".into(),
        findings: analyze::run_host(&host, &Thresholds::default()),
        host,
    };
    assert!(r.complete());
    let text = render(&r, 100, false);
    assert_eq!(
        text,
        "tcpdoctor check on node-7: no problems found, complete view\n  0 TCP sockets in the host network namespace (sockets via netlink, counters over 1.0 s)\n  (no TCP sockets)\n"
    );
}
