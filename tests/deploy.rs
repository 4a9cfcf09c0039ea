//! The deploy files shipped in deploy/ (README there): the Prometheus alert rules
//! (`promtool check rules`, and `promtool test rules` on made-up series: each alert
//! fires as intended), the Grafana dashboard (valid JSON, every query parses and uses
//! only metrics and labels the exporter serves, per the `serve_metrics_schema`
//! snapshot), and the systemd unit (least privilege, and as root: its capabilities are
//! enough for a real exporter to see other users' sockets and every namespace).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::fixtures::{read_repo_file, repo_path, TempDir};
use common::netns::Netns;
use common::prom::{known_metrics, promtool, promtool_rules, Scrape};
use common::run::assert_reachable_by_others;
use common::serve::{scrape, Served};
use common::{require_root, TCPDOCTOR};

const ALERTS: &str = "deploy/prometheus/alerts.yml";
const UNIT: &str = "deploy/systemd/tcpdoctor.service";

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
fn alert_rules_pass_promtool_check() {
    let Some(promtool) = promtool("promtool check rules") else {
        return;
    };
    promtool_rules(promtool, "check", &repo_path(ALERTS));
}

#[test]
fn dashboard_queries_use_exported_metrics_and_parse() {
    let known = known_metrics();
    let text = read_repo_file("deploy/grafana/tcpdoctor.json");
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
    let Some(promtool) = promtool("dashboard PromQL syntax") else {
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
    let file = tmp.path().join("dashboard_rules.yml");
    std::fs::write(&file, rules).expect("write rules");
    promtool_rules(promtool, "check", &file);
}

#[test]
fn alert_rules_use_exported_metrics_and_fire_as_intended() {
    let known = known_metrics();
    let path = repo_path(ALERTS);
    let text = read_repo_file(ALERTS);
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
    let Some(promtool) = promtool("promtool test rules") else {
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
      # Ephemeral ports, one destination in three namespaces with three ranges: the
      # host's 28,232 (2,000 left: 7%), a pod's 1,000 (500 left: 50%, which over the
      # host's range read 1.8%), another pod's 100 (3 left: 3%).
      - series: 'tcpdoctor_ephemeral_ports_usable{{instance="h1",job="t",netns="host",local_ip="10.0.0.1",destination="10.0.0.7:5432"}}'
        values: '28232x40'
      - series: 'tcpdoctor_ephemeral_ports_headroom{{instance="h1",job="t",netns="host",local_ip="10.0.0.1",destination="10.0.0.7:5432"}}'
        values: '2000x40'
      - series: 'tcpdoctor_ephemeral_ports_usable{{instance="h1",job="t",netns="host",local_ip="10.0.0.1",destination="10.0.0.8:443"}}'
        values: '28232x40'
      - series: 'tcpdoctor_ephemeral_ports_headroom{{instance="h1",job="t",netns="host",local_ip="10.0.0.1",destination="10.0.0.8:443"}}'
        values: '28000x40'
      - series: 'tcpdoctor_ephemeral_ports_usable{{instance="h1",job="t",netns="pod default/api",local_ip="10.0.0.1",destination="10.0.0.7:5432"}}'
        values: '1000x40'
      - series: 'tcpdoctor_ephemeral_ports_headroom{{instance="h1",job="t",netns="pod default/api",local_ip="10.0.0.1",destination="10.0.0.7:5432"}}'
        values: '500x40'
      - series: 'tcpdoctor_ephemeral_ports_usable{{instance="h1",job="t",netns="pod default/batch",local_ip="10.0.0.1",destination="10.0.0.7:5432"}}'
        values: '100x40'
      - series: 'tcpdoctor_ephemeral_ports_headroom{{instance="h1",job="t",netns="pod default/batch",local_ip="10.0.0.1",destination="10.0.0.7:5432"}}'
        values: '3x40'
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
          - exp_labels: {{severity: warning, instance: h1, job: t, netns: host, local_ip: 10.0.0.1, destination: "10.0.0.7:5432"}}
            exp_annotations:
              summary: "h1: ephemeral ports towards 10.0.0.7:5432 from 10.0.0.1 in netns host below 20%"
              description: "Only 7.084% of the usable ephemeral ports of netns host are left towards 10.0.0.7:5432. Reuse connections (keep-alive, pooling), widen ip_local_port_range in that namespace, or add source addresses."
          - exp_labels: {{severity: warning, instance: h1, job: t, netns: "pod default/batch", local_ip: 10.0.0.1, destination: "10.0.0.7:5432"}}
            exp_annotations:
              summary: "h1: ephemeral ports towards 10.0.0.7:5432 from 10.0.0.1 in netns pod default/batch below 20%"
              description: "Only 3% of the usable ephemeral ports of netns pod default/batch are left towards 10.0.0.7:5432. Reuse connections (keep-alive, pooling), widen ip_local_port_range in that namespace, or add source addresses."
      - eval_time: 35m
        alertname: TcpEphemeralPortsNearlyExhausted
        exp_alerts:
          - exp_labels: {{severity: critical, instance: h1, job: t, netns: "pod default/batch", local_ip: 10.0.0.1, destination: "10.0.0.7:5432"}}
            exp_annotations:
              summary: "h1: ephemeral ports towards 10.0.0.7:5432 nearly exhausted in netns pod default/batch"
              description: "3% left; new connections from 10.0.0.1 to 10.0.0.7:5432 in netns pod default/batch will fail with 'Cannot assign requested address'."
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
    let file = tmp.path().join("alerts_test.yml");
    std::fs::write(&file, test).expect("write test");
    promtool_rules(promtool, "test", &file);
}

#[test]
fn systemd_unit_runs_serve_with_least_privilege() {
    let unit = read_repo_file(UNIT);
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
#[ignore = "needs root"]
fn the_unit_capabilities_are_enough_to_see_other_users_owners() {
    require_root();
    // The systemd unit runs the exporter as a dynamic uid with CAP_SYS_PTRACE,
    // CAP_DAC_READ_SEARCH, CAP_SYSLOG and CAP_SYS_ADMIN only. Do the same with setpriv
    // and check that root's farm is attributed and every namespace read (and, without
    // the capabilities, that neither is).
    assert_reachable_by_others(Path::new(TCPDOCTOR));
    let unit = read_repo_file(UNIT);
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
        let s = Scrape::parse(&ns.run_inside(move || scrape(addr)));
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
