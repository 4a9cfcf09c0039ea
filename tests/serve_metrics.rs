//! What `tcpdoctor serve` exports, scraped over real HTTP: the exact metrics of a socket
//! farm in a private network namespace (root; the scraping thread enters the
//! namespace), and of a captured /proc tree (any user), checked against the snapshots
//! and by `promtool check metrics`. Every child and every wait is bounded.

mod common;

use common::fixtures::{repo_path, NETNS_MIXED};
use common::netns::Netns;
use common::prom::{promtool_check_metrics, scrub_values, Scrape};
use common::serve::{collections_total, replay_command, scrape, Served};
use common::{require_root, KERNEL_STATES, TCPDOCTOR};

#[test]
fn serve_fixture_replay_matches_golden_and_promtool() {
    let mut served = Served::start(replay_command(&repo_path(NETNS_MIXED), &["--top", "3"]));
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
    assert_golden!("serve_fixture_netns_mixed", scrub_values(&body));
    promtool_check_metrics(&body);
    assert_eq!(served.terminate().and_then(|s| s.code()), Some(0));
}

#[test]
#[ignore = "needs root"]
fn serve_in_netns_reports_the_farm_exactly_over_http() {
    require_root();
    let ns = Netns::new("serve");
    // No TIME_WAIT reuse: every TIME_WAIT port stays unavailable, so headroom is usable
    // minus used exactly, however long the scrape takes (with the loopback default, entries
    // older than tcp_tw_reuse_delay would count as free).
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0");
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
    let listen_port = farm.ready.listeners[0].port();

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
    let body = ns.run_inside(move || scrape(addr));
    let s = Scrape::parse(&body);

    // Every state, both families; exact counts. The exporter adds its own listener and
    // the scrape's connection (ESTABLISHED at both ends while it is collected).
    for state in KERNEL_STATES {
        let label = state.to_ascii_lowercase();
        let mut want = farm.ready.expected(state) as f64;
        match state {
            "LISTEN" => want += 1.0,
            "ESTABLISHED" => want += 2.0,
            // Exact only until the farm's first TIME_WAIT may expire.
            "TIME_WAIT" if !farm.ready.time_wait_still_exact() => continue,
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
            &[("netns", ns.name()), ("destination", &dest)]
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
    let at = [("netns", ns.name()), ("listen", l.addr.as_str())];
    assert_eq!(
        s.must("tcpdoctor_listener_accept_queue", &at),
        l.queued as f64
    );
    assert_eq!(
        s.must("tcpdoctor_listener_backlog", &at),
        f64::from(l.backlog)
    );
    // Ports towards the farm's listener, in this namespace (its label is its name).
    let labels = [
        ("netns", ns.name()),
        ("local_ip", "127.0.0.1"),
        ("destination", dest.as_str()),
    ];
    let usable = s.must("tcpdoctor_ephemeral_ports_usable", &labels);
    let range = ns.read_sysctl("net.ipv4.ip_local_port_range");
    let bounds: Vec<f64> = range
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(usable, bounds[1] - bounds[0] + 1.0, "range {range}");
    // Client ends: ESTABLISHED clients, FIN_WAIT2 (the CLOSE_WAIT peers), TIME_WAIT.
    let used = (worker.counts.established / 2 + worker.counts.fin_wait2) as f64 + tw;
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

    // Findings: every rule and severity present. The farm's CLOSE_WAIT sockets are
    // seconds old and a scrape looks once: a warning that they are not closed yet
    // (close_wait_slow_close), not a leak, which needs a second look or silent peers.
    assert_eq!(
        s.must(
            "tcpdoctor_finding",
            &[("rule", "close_wait_slow_close"), ("severity", "warning")]
        ),
        1.0
    );
    assert_eq!(
        s.must(
            "tcpdoctor_finding",
            &[("rule", "close_wait_leak"), ("severity", "warning")]
        ),
        0.0
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
    assert_golden!("serve_metrics_schema", s.schema());

    // --cache 0: each scrape collects anew, one collection per scrape.
    let again = ns.run_inside(move || scrape(addr));
    assert_eq!(collections_total(&again), 2.0);

    // SIGTERM: exits 0 (within the bounded wait).
    assert_eq!(served.terminate().and_then(|st| st.code()), Some(0));
    assert!(
        served.stderr().contains("shutting down"),
        "{}",
        served.stderr()
    );
}
