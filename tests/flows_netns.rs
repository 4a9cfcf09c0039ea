//! The connection tracer in `check`, `watch` and `serve`, against real processes: a
//! churn server and client (sockfarm churn mode, each its own process) in a private
//! network namespace, and tcpdoctor on the host narrowed to it (`--netns NAME`).
//! `check`'s report must name the right pid and destination with the measured rate,
//! count failed connect() calls and resets exactly, stay quiet about a keep-alive
//! client, and, without root, say once that it did not trace and change nothing else;
//! `watch` shows the client in its churn panel; `serve` counts its connections exactly.
//! Root (BPF, namespaces) and the sockfarm helper:
//! `cargo test --features sockfarm --test flows_netns -- --include-ignored`.

mod common;

use serde_json::Value;

use common::churn::{run_client, start_server, Lines, TracedCheck};
use common::netns::Netns;
use common::prom::Scrape;
use common::report::findings;
use common::run::{code_and_json, run_bounded};
use common::serve::{scrape, Served};
use common::{require_root, sockfarm, TCPDOCTOR};

/// The one finding of `rule` whose `data[key]` is `value`.
fn finding_with<'a>(v: &'a Value, rule: &str, key: &str, value: u64) -> &'a Value {
    let found: Vec<&Value> = findings(v, rule)
        .into_iter()
        .filter(|f| f["data"][key] == value)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {rule} finding with {key} = {value} in {:#}",
        v["findings"]
    );
    found[0]
}

/// The namespace's traced flow of `pid` in `direction`.
fn flow<'a>(v: &'a Value, pid: u32, direction: &str) -> &'a Value {
    let ns = &v["namespaces"][0];
    ns["flows"]["flows"]
        .as_array()
        .unwrap_or_else(|| panic!("no traced flows in {ns:#}"))
        .iter()
        .find(|f| f["pid"] == pid && f["direction"] == direction)
        .unwrap_or_else(|| panic!("no {direction} flow of pid {pid} in {:#}", ns["flows"]))
}

/// A sockfarm client in `ns` that opens `count` connections to `to` and holds them
/// (`--churn-hold`); its failures are in its result line.
fn hold_connections(ns: &Netns, to: &str, count: &str, what: &str) -> Lines {
    Lines::spawn(
        ns.command(
            sockfarm(),
            &[
                "--churn-connect",
                to,
                "--churn-count",
                count,
                "--churn-hold",
                "--hold-secs",
                "300",
            ],
        ),
        what,
    )
}

#[test]
#[ignore = "needs root"]
fn a_client_at_a_known_rate_is_named_with_its_destination_and_rate() {
    require_root();
    let ns = Netns::new("cfrate");
    let (server, port) = start_server(&ns, &[]);
    // 200 connections/s for 7 s; check's interval (3 s) lies inside.
    let to = format!("127.0.0.1:{port}");
    let client = Lines::spawn(
        ns.command(
            sockfarm(),
            &[
                "--churn-connect",
                &to,
                "--churn-count",
                "1400",
                "--churn-rate",
                "200",
                "--hold-secs",
                "300",
            ],
        ),
        "churn client",
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let check = TracedCheck::start(&ns, "3", &[]);
    let (code, v) = check.finish();
    let client_pid = client.pid();
    assert_eq!(client.next_json()["connected"], 1400);
    client.finish();
    server.finish();

    // The flow: the client's pid, its destination, 200/s within 10%.
    let out = flow(&v, client_pid, "active");
    assert_eq!(out["remote"], to, "{out:#}");
    assert_eq!(out["comm"], "sockfarm");
    assert_eq!(out["closer"], "local", "{out:#}");
    let rate = out["opened_per_s"].as_f64().expect("rate");
    assert!(
        (180.0..=220.0).contains(&rate),
        "{rate}/s measured for 200/s: {out:#}"
    );

    // The finding names them: who opens, to where, how fast, who closes first.
    let f = findings(&v, "time_wait_pressure");
    assert_eq!(f.len(), 1, "{:#}", v["findings"]);
    let title = f[0]["title"].as_str().expect("title");
    assert!(
        title.starts_with(&format!("sockfarm (pid {client_pid}) opens "))
            && title.contains(&format!("connections/s to {to} and closes first")),
        "{title}"
    );
    let c = &f[0]["data"]["traced"]["closers"][0];
    assert_eq!(c["pid"], client_pid);
    assert_eq!(c["remote"], to);
    let rate = c["opened_per_s"].as_f64().expect("rate");
    assert!((180.0..=220.0).contains(&rate), "{c:#}");
    assert!(
        code == 0 || code == 1,
        "exit {code}; missing evidence: {:#}",
        v["missing_evidence"]
    );
}

#[test]
#[ignore = "needs root"]
fn a_narrowed_port_range_gives_the_exact_count_of_eaddrnotavail_and_the_pid() {
    require_root();
    let ns = Netns::new("cfports");
    // The listener first: its own port must not come out of the narrowed range.
    let (server, port) = start_server(&ns, &[]);
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40009");
    // One client holds all 10 ports before check looks (its first reading sees them)...
    let to = format!("127.0.0.1:{port}");
    let hold = |count: &str, what: &str| hold_connections(&ns, &to, count, what);
    let holder = hold("10", "holding client");
    assert_eq!(holder.next_json()["connected"], 10);
    // Long enough for a client started on a loaded machine to fall inside.
    let check = TracedCheck::start(&ns, "6", &[]);
    // ...and another, while it traces, finds none: 27 connect() calls, 27 failures.
    let c = hold("27", "failing client");
    let client = c.pid();
    let result = c.next_json();
    assert_eq!(result["connected"], 0, "{result}");
    assert_eq!(result["failed"]["EADDRNOTAVAIL"], 27, "{result}");
    let (code, v) = check.finish();
    c.finish();
    holder.finish();
    server.finish();

    // One cause, one critical finding: the ports toward it, all 10 held, and the 27
    // failures named with the failing pid. connect_failures leaves them to it.
    let e = findings(&v, "ephemeral_port_exhaustion");
    assert_eq!(e.len(), 1, "{:#}", v["findings"]);
    assert_eq!(e[0]["severity"], "critical");
    assert!(
        e[0]["title"].as_str().expect("title").starts_with(&format!(
            "sockfarm (pid {client}) failed 27 connect() calls with EADDRNOTAVAIL toward {to} in "
        )),
        "{}",
        e[0]["title"]
    );
    let d = &e[0]["data"]["destinations"][0];
    assert_eq!(d["traced"]["eaddrnotavail"], 27, "{d:#}");
    assert_eq!(d["traced"]["pid"], client, "{d:#}");
    assert!(
        findings(&v, "connect_failures").is_empty(),
        "{:#}",
        v["findings"]
    );
    assert_eq!(d["runway"]["exhausted_in_s"], 0.0, "{d:#}");
    assert_eq!(code, 2, "critical");
}

#[test]
#[ignore = "needs root"]
fn so_linger_zero_closes_are_resets_named_by_the_sending_pid() {
    require_root();
    let ns = Netns::new("cfrst");
    let (server, port) = start_server(&ns, &["--churn-closer", "client", "--churn-linger0"]);
    // The client's 40 connections take 0.2 s, but starting it can take seconds on a
    // loaded machine: an interval long enough that they all fall inside.
    let check = TracedCheck::start(&ns, "6", &[]);
    let (client, result) = run_client(
        &ns,
        port,
        &[
            "--churn-count",
            "40",
            "--churn-rate",
            "200",
            "--churn-closer",
            "client",
            "--churn-linger0",
        ],
    );
    assert_eq!(result["connected"], 40, "{result}");
    let (_, v) = check.finish();
    let server_pid = server.pid();
    server.finish();

    let sent = finding_with(&v, "connection_resets", "pid", u64::from(client));
    assert_eq!(sent["data"]["resets_sent"], 40, "{sent:#}");
    assert_eq!(sent["data"]["resets_received"], 0, "{sent:#}");
    assert!(
        sent["title"].as_str().expect("title").starts_with(&format!(
            "sockfarm (pid {client}) resets its connections to 127.0.0.1:{port}: 40 resets sent"
        )),
        "{}",
        sent["title"]
    );
    let received = finding_with(&v, "connection_resets", "pid", u64::from(server_pid));
    assert_eq!(received["data"]["resets_received"], 40, "{received:#}");
    assert_eq!(received["data"]["resets_sent"], 0, "{received:#}");
}

#[test]
#[ignore = "needs root"]
fn a_keep_alive_client_makes_no_churn_finding() {
    require_root();
    let ns = Netns::new("cfkeep");
    let (server, port) = start_server(&ns, &[]);
    let check = TracedCheck::start(&ns, "2", &[]);
    let to = format!("127.0.0.1:{port}");
    let c = Lines::spawn(
        ns.command(
            sockfarm(),
            &[
                "--churn-connect",
                &to,
                "--churn-keepalive",
                "--churn-count",
                "40",
                "--churn-rate",
                "40",
                "--hold-secs",
                "300",
            ],
        ),
        "keep-alive client",
    );
    let client = c.pid();
    assert_eq!(c.next_json()["exchanged"], 40);
    let (_, v) = check.finish();
    c.finish();
    server.finish();

    // Traced: one connection, opened and still open.
    let out = flow(&v, client, "active");
    assert_eq!(out["opened"], 1, "{out:#}");
    assert_eq!(out["closed"]["local"], 0, "{out:#}");
    for rule in [
        "time_wait_pressure",
        "ephemeral_port_exhaustion",
        "connect_failures",
        "connection_resets",
    ] {
        assert!(findings(&v, rule).is_empty(), "{rule}: {:#}", v["findings"]);
    }
}

/// Findings as (rule, severity), state counts and notice codes: what must not change.
fn shape(v: &Value) -> (Vec<(String, String)>, Value, Vec<String>) {
    let findings = v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| (f["rule_id"].to_string(), f["severity"].to_string()))
        .collect();
    let notices = v["missing_evidence"]
        .as_array()
        .expect("notices")
        .iter()
        .map(|n| n["code"].as_str().unwrap_or("").to_string())
        .filter(|c| c != "trace_unavailable")
        .collect();
    (findings, v["counts"].clone(), notices)
}

#[test]
#[ignore = "needs root"]
fn without_root_one_notice_says_so_and_the_rest_of_check_is_unchanged() {
    require_root();
    let ns = Netns::new("cfnoroot");
    let _farm = ns.spawn_farm(&[
        "--listen",
        "127.0.0.1:0",
        "--close-wait",
        "20",
        "--established",
        "2",
    ]);
    let args = ["check", "--json", "--netns", "current", "--interval", "0.3"];
    let (code, traced) = code_and_json(&ns.run_tcpdoctor_unprivileged(&args));
    let mut no_trace: Vec<&str> = args.to_vec();
    no_trace.push("--no-trace");
    let (code_off, off) = code_and_json(&ns.run_tcpdoctor_unprivileged(&no_trace));

    let notices: Vec<&Value> = traced["missing_evidence"]
        .as_array()
        .expect("notices")
        .iter()
        .filter(|n| n["code"] == "trace_unavailable")
        .collect();
    assert_eq!(notices.len(), 1, "{:#}", traced["missing_evidence"]);
    let message = notices[0]["message"].as_str().expect("message");
    assert!(
        !message.contains('\n') && message.contains("needs root"),
        "{message}"
    );
    assert!(traced["namespaces"][0].get("flows").is_none());
    // --no-trace asks for none: no notice.
    assert!(off["missing_evidence"]
        .as_array()
        .expect("notices")
        .iter()
        .all(|n| n["code"] != "trace_unavailable"));
    // Everything else as it was: findings, counts, other notices, exit code.
    assert_eq!(shape(&traced), shape(&off));
    assert_eq!(code, code_off);
    assert!(!findings(&traced, "close_wait_leak").is_empty());

    // The human report says it once, as a note.
    let human =
        ns.run_tcpdoctor_unprivileged(&["check", "--netns", "current", "--interval", "0.3"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert_eq!(
        text.matches("connections were not traced").count(),
        1,
        "{text}"
    );
}

#[test]
#[ignore = "needs root"]
fn watch_shows_the_client_in_its_churn_panel() {
    require_root();
    let ns = Netns::new("cfwatch");
    let (server, port) = start_server(&ns, &[]);
    let to = format!("127.0.0.1:{port}");
    let client = Lines::spawn(
        ns.command(
            sockfarm(),
            &[
                "--churn-connect",
                &to,
                "--churn-count",
                "1000",
                "--churn-rate",
                "200",
                "--hold-secs",
                "300",
            ],
        ),
        "churn client",
    );
    let mut cmd = std::process::Command::new(TCPDOCTOR);
    cmd.args([
        "watch",
        "--headless",
        "--samples",
        "3",
        "--interval",
        "1",
        "--max-cpu",
        "0",
        "--netns",
        ns.name(),
    ]);
    let out = run_bounded(&mut cmd, std::time::Duration::from_secs(120)).expect("watch runs");
    let client_pid = client.pid();
    assert_eq!(client.next_json()["connected"], 1000);
    client.finish();
    server.finish();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 3);
    // Samples after the first cover a whole interval.
    for l in &lines[1..] {
        let churn = l["churn"]
            .as_array()
            .unwrap_or_else(|| panic!("churn in {l}"));
        let row = churn
            .iter()
            .find(|r| r["pid"] == client_pid)
            .unwrap_or_else(|| panic!("client {client_pid} in {churn:#?}"));
        assert_eq!(row["peer"], to, "{row}");
        assert_eq!(row["closer"], "local 100%", "{row}");
        let rate = row["opened_per_s"].as_f64().expect("rate");
        assert!((160.0..=240.0).contains(&rate), "{rate}/s for 200/s: {row}");
    }
}

#[test]
#[ignore = "needs root"]
fn serve_counts_the_connections_of_the_client_exactly() {
    require_root();
    let ns = Netns::new("cfserve");
    let (server, port) = start_server(&ns, &[]);
    let mut cmd = ns.command(
        TCPDOCTOR,
        &[
            "--netns",
            "current",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cache",
            "0",
        ],
    );
    cmd.env("NO_COLOR", "1");
    let mut served = Served::start(cmd);
    let addr = served.addr;
    // The first collection attaches the tracer.
    let first = Scrape::parse(&ns.run_inside(move || scrape(addr)));
    assert_eq!(first.must("tcpdoctor_tracer_attached", &[]), 1.0);
    let (client, result) = run_client(
        &ns,
        port,
        &[
            "--churn-count",
            "100",
            "--churn-rate",
            "500",
            "--churn-linger0",
        ],
    );
    assert_eq!(result["connected"], 100, "{result}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let second = Scrape::parse(&ns.run_inside(move || scrape(addr)));
    let third = Scrape::parse(&ns.run_inside(move || scrape(addr)));

    // connect() finding no port: 10 ports, a client holding them, another failing 27
    // times (the series the TcpConnectNoFreePort alert reads).
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40009");
    let to = format!("127.0.0.1:{port}");
    let hold = |count: &str, what: &str| hold_connections(&ns, &to, count, what);
    let holder = hold("10", "holding client");
    assert_eq!(holder.next_json()["connected"], 10);
    let failing = hold("27", "failing client");
    assert_eq!(failing.next_json()["failed"]["EADDRNOTAVAIL"], 27);
    let fourth = Scrape::parse(&ns.run_inside(move || scrape(addr)));
    failing.finish();
    holder.finish();
    served.terminate();
    server.finish();
    assert_eq!(
        fourth.must(
            "tcpdoctor_connect_failures_total",
            &[("comm", "sockfarm"), ("errno", "EADDRNOTAVAIL")]
        ),
        27.0
    );
    let opened = |s: &Scrape| {
        s.value(
            "tcpdoctor_connections_opened_total",
            &[("comm", "sockfarm"), ("direction", "active")],
        )
        .unwrap_or(0.0)
    };
    // Nothing else in this namespace opens connections: the client's 100 exactly,
    // and the counter stays there.
    assert_eq!(opened(&second), 100.0, "pid {client}");
    assert_eq!(opened(&third), 100.0);
    // The server is a sockfarm too, in the same namespace: it accepted them all and
    // received every reset.
    assert_eq!(
        second.must(
            "tcpdoctor_connections_opened_total",
            &[("comm", "sockfarm"), ("direction", "passive")]
        ),
        100.0
    );
    assert_eq!(
        second.must(
            "tcpdoctor_connection_resets_total",
            &[
                ("comm", "sockfarm"),
                ("direction", "passive"),
                ("sent_by", "peer")
            ]
        ),
        100.0
    );
    assert_eq!(
        second.must(
            "tcpdoctor_connection_resets_total",
            &[
                ("comm", "sockfarm"),
                ("direction", "active"),
                ("sent_by", "local")
            ]
        ),
        100.0
    );
    assert_eq!(
        second.must(
            "tcpdoctor_connections_closed_total",
            &[
                ("comm", "sockfarm"),
                ("direction", "active"),
                ("first_closer", "local")
            ]
        ),
        100.0
    );
}
