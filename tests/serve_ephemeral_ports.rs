//! Ephemeral ports as `serve` exports them and as the shipped alerts read them (root).
//! Real connections to one loopback destination from three private network namespaces
//! with three port ranges, scraped over HTTP by an exporter in a fourth one: each
//! namespace's used, usable and headroom series equal its sockets and its own sysctls
//! exactly, and `promtool test rules` on the scraped series fires the port alerts for
//! the namespace that is really running out and for no other.
//!
//! Issue 9 item 3, pinned here: a namespace with 1,000 ports, half of them used, was
//! alerted on as "1.8% left", its headroom divided by the exporter's own namespace's
//! 28,232 ports. Every child and every wait is bounded.

mod common;

use std::collections::BTreeMap;

use common::fixtures::{repo_path, TempDir};
use common::netns::Netns;
use common::prom::{promtool, promtool_check_metrics, promtool_rules, Sample, Scrape};
use common::serve::{scrape, Served};
use common::{require_root, TCPDOCTOR};

/// Where every farm connects, in its own namespace.
const DESTINATION: &str = "127.0.0.1:5000";
/// Labels Prometheus would add to every scraped series.
const INSTANCE: &str = "node1:9469";
const JOB: &str = "tcpdoctor";

/// One namespace of the test: its ports as set up and as the sockets use them.
struct Case {
    ns: Netns,
    usable: f64,
    clients: f64,
}

/// `n` connections to DESTINATION in a new namespace with this port range (and these
/// reserved ports); returns the namespace, its farm and its usable ports.
fn case(
    tag: &str,
    range: Option<&str>,
    reserved: Option<&str>,
    n: u64,
    extra: &[&str],
) -> (Case, common::netns::Farm) {
    let ns = Netns::new(tag);
    if let Some(r) = range {
        ns.sysctl("net.ipv4.ip_local_port_range", r);
    }
    if let Some(r) = reserved {
        ns.sysctl("net.ipv4.ip_local_reserved_ports", r);
    }
    let count = n.to_string();
    let mut args = vec![
        "--listen",
        DESTINATION,
        "--established",
        count.as_str(),
        "--hold-secs",
        "300",
    ];
    args.extend_from_slice(extra);
    let farm = ns.spawn_farm(&args);
    // The client ends: each holds one ephemeral port towards DESTINATION.
    let clients = farm
        .ready
        .sockets(|w| &w.established)
        .into_iter()
        .filter(|(_, s)| s.side == "client" && s.remote == DESTINATION)
        .count() as f64;
    assert_eq!(clients, n as f64, "the farm built what was asked");
    let usable = usable_ports(
        &ns.read_sysctl("net.ipv4.ip_local_port_range"),
        &ns.read_sysctl("net.ipv4.ip_local_reserved_ports"),
    );
    (
        Case {
            ns,
            usable,
            clients,
        },
        farm,
    )
}

/// Ports in `range` ("low high") that are not in `reserved` ("a-b,c"), counted here from
/// the sysctl text, independently of tcpdoctor.
fn usable_ports(range: &str, reserved: &str) -> f64 {
    let b: Vec<u32> = range
        .split_whitespace()
        .map(|p| p.parse().expect("port range"))
        .collect();
    let (low, high) = (b[0], b[1]);
    let mut taken = std::collections::BTreeSet::new();
    for part in reserved.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, z) = part.split_once('-').unwrap_or((part, part));
        let (a, z): (u32, u32) = (a.parse().expect("reserved"), z.parse().expect("reserved"));
        taken.extend((a..=z).filter(|p| (low..=high).contains(p)));
    }
    f64::from(high - low + 1) - taken.len() as f64
}

/// `name{labels}` in PromQL series notation, label values escaped.
fn series_selector(s: &Sample, extra: &[(&str, &str)]) -> String {
    let mut labels: BTreeMap<&str, &str> = s
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    labels.extend(extra.iter().copied());
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{}{{{}}}", s.name, inner.join(","))
}

/// A ratio as Prometheus' `humanizePercentage` prints it (Go's `%.4g` of ratio * 100),
/// for the values this test meets (0.1% to 100%).
fn humanize_percentage(ratio: f64) -> String {
    let pct = ratio * 100.0;
    let int_digits = if pct < 1.0 {
        1
    } else {
        pct.log10().floor() as i32 + 1
    };
    let decimals = (4 - int_digits).max(0) as usize;
    let s = format!("{pct:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}%")
}

#[test]
fn humanize_percentage_matches_prometheus() {
    // Values promtool printed in tests/deploy.rs.
    assert_eq!(humanize_percentage(2000.0 / 28232.0), "7.084%");
    assert_eq!(humanize_percentage(0.03), "3%");
    assert_eq!(humanize_percentage(24.0 / 1024.0), "2.344%");
    assert_eq!(humanize_percentage(0.5), "50%");
}

#[test]
#[ignore = "needs root"]
fn port_series_are_each_namespaces_own_and_alerts_fire_only_where_ports_run_out() {
    require_root();
    // 100 ports, 8 of them reserved: 92 usable; 88 connections leave 4 (4.3%).
    let (tight, _tight_farm) = case(
        "portstight",
        Some("40000 40099"),
        Some("40000-40007"),
        88,
        &[],
    );
    // 1,000 ports, 500 used: half left (the "1.8% left").
    let (half, _half_farm) = case(
        "portshalf",
        Some("40000 40999"),
        None,
        500,
        &["--processes", "2"],
    );
    // The kernel default, 28,232 ports: as many connections as the tight one.
    let (roomy, _roomy_farm) = case("portsroomy", None, None, 88, &[]);
    assert_eq!(tight.usable, 92.0);
    assert_eq!(half.usable, 1000.0);
    assert_eq!(roomy.usable, 28232.0);

    // The exporter runs in a fourth namespace (default range too) and reads them all.
    let home = Netns::new("portshome");
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
    let body = home.run_inside(move || scrape(addr));
    let s = Scrape::parse(&body);
    promtool_check_metrics(&body);

    let cases = [&tight, &half, &roomy];
    for c in cases {
        let at = [
            ("netns", c.ns.name()),
            ("local_ip", "127.0.0.1"),
            ("destination", DESTINATION),
        ];
        let what = c.ns.name();
        assert_eq!(
            s.must("tcpdoctor_ephemeral_ports_used", &at),
            c.clients,
            "{what}"
        );
        assert_eq!(
            s.must("tcpdoctor_ephemeral_ports_usable", &at),
            c.usable,
            "{what}"
        );
        assert_eq!(
            s.must("tcpdoctor_ephemeral_ports_headroom", &at),
            c.usable - c.clients,
            "{what}"
        );
        // Its only destination is also its tightest.
        let ns = [("netns", c.ns.name())];
        assert_eq!(
            s.must("tcpdoctor_netns_ephemeral_ports_headroom", &ns),
            c.usable - c.clients,
            "{what}"
        );
        assert_eq!(
            s.must("tcpdoctor_netns_ephemeral_ports_usable", &ns),
            c.usable,
            "{what}"
        );
    }
    // One destination in three namespaces: three series, no "tightest wins" merge.
    let towards: Vec<&Sample> = s
        .family("tcpdoctor_ephemeral_ports_headroom")
        .into_iter()
        .filter(|x| x.labels.get("destination").map(String::as_str) == Some(DESTINATION))
        .filter(|x| {
            cases
                .iter()
                .any(|c| x.labels.get("netns").map(String::as_str) == Some(c.ns.name()))
        })
        .collect();
    assert_eq!(towards.len(), 3, "{towards:?}");
    // Every usable series has a headroom series with exactly its labels, and back.
    let label_sets = |name: &str| -> Vec<BTreeMap<String, String>> {
        let mut v: Vec<_> = s
            .family(name)
            .into_iter()
            .map(|x| x.labels.clone())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        label_sets("tcpdoctor_ephemeral_ports_usable"),
        label_sets("tcpdoctor_ephemeral_ports_headroom")
    );

    // The shipped alerts on what was scraped: every series about these namespaces, as
    // Prometheus would store it, constant for 30 minutes.
    let ours: Vec<&str> = cases
        .iter()
        .map(|c| c.ns.name())
        .chain([home.name()])
        .collect();
    let mut input = String::new();
    for smp in &s.samples {
        let Some(netns) = smp.labels.get("netns") else {
            continue;
        };
        if !ours.contains(&netns.as_str()) {
            continue;
        }
        let selector = series_selector(smp, &[("instance", INSTANCE), ("job", JOB)]);
        let quoted = serde_json::to_string(&selector).expect("quote");
        input.push_str(&format!(
            "      - series: {quoted}\n        values: '{}x30'\n",
            smp.value
        ));
    }
    assert!(
        input.contains("tcpdoctor_ephemeral_ports_usable"),
        "{input}"
    );

    let t = tight.ns.name();
    let left = humanize_percentage((tight.usable - tight.clients) / tight.usable);
    assert_eq!(left, "4.348%");
    let labels = |severity: &str| {
        serde_json::json!({
            "severity": severity,
            "instance": INSTANCE,
            "job": JOB,
            "netns": t,
            "local_ip": "127.0.0.1",
            "destination": DESTINATION,
        })
    };
    let critical = serde_json::json!({
        "summary": format!("{INSTANCE}: ephemeral ports towards {DESTINATION} nearly exhausted in netns {t}"),
        "description": format!("{left} left; new connections from 127.0.0.1 to {DESTINATION} in netns {t} will fail with 'Cannot assign requested address'."),
    });
    let warning = serde_json::json!({
        "summary": format!("{INSTANCE}: ephemeral ports towards {DESTINATION} from 127.0.0.1 in netns {t} below 20%"),
        "description": format!("Only {left} of the usable ephemeral ports of netns {t} are left towards {DESTINATION}. Reuse connections (keep-alive, pooling), widen ip_local_port_range in that namespace, or add source addresses."),
    });
    let Some(promtool) = promtool("promtool test rules on scraped series") else {
        assert!(served.terminate().is_some_and(|st| st.success()));
        return;
    };
    let tmp = TempDir::new("scraped_alerts");
    let test = format!(
        "rule_files:\n  - {rules}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{input}    alert_rule_test:\n      - eval_time: 10m\n        alertname: TcpEphemeralPortsNearlyExhausted\n        exp_alerts:\n          - exp_labels: {cl}\n            exp_annotations: {ca}\n      - eval_time: 10m\n        alertname: TcpEphemeralPortHeadroomLow\n        exp_alerts:\n          - exp_labels: {wl}\n            exp_annotations: {wa}\n",
        rules = repo_path("deploy/prometheus/alerts.yml").display(),
        cl = labels("critical"),
        ca = critical,
        wl = labels("warning"),
        wa = warning,
    );
    let file = tmp.path().join("scraped_alerts_test.yml");
    std::fs::write(&file, &test).expect("write test");
    promtool_rules(promtool, "test", &file);

    assert!(served.terminate().is_some_and(|st| st.success()));
}
