//! Rule `connect_failures`: processes whose connect() calls failed while connections
//! were traced, by errno and destination. Pure: reads the snapshot's traced flows
//! only; without a tracer it never fires.
//!
//! EADDRNOTAVAIL ("Cannot assign requested address") leaves no trace anywhere else:
//! connect() fails before any SYN and the kernel counts it nowhere, so only the tracer
//! sees it. It means no local port was free toward that destination, and is critical at
//! the first one. Where this snapshot counts the ports toward that destination,
//! `ephemeral_port_exhaustion` reports it (who failed, how often, and the ports): this
//! rule then leaves it out, so one cause makes one critical finding. Other errnos say the destination or the path refused (ECONNREFUSED,
//! ETIMEDOUT, unreachable, a firewall's EPERM): a warning from [`MIN_FAILURES`] calls
//! of one process, fewer are the ordinary noise of a service restarting.

use std::collections::BTreeMap;

use serde_json::json;

use super::util::{rate_text, round2};
use super::{ephemeral_port_exhaustion, traced, Thresholds};
use crate::model::units::{count, human_duration_ms};
use crate::model::{
    ConnectFailures, Direction, Evidence, Finding, FixStep, FlowPeer, FlowRow, NamespaceFlows,
    Nature, Severity, Snapshot,
};

pub const ID: &str = "connect_failures";

/// Failed connect() calls of one process (other than EADDRNOTAVAIL) that make a
/// warning.
pub const MIN_FAILURES: u64 = 5;

/// Destinations listed in the evidence.
const TOP: usize = 5;

pub fn check(s: &Snapshot, _t: &Thresholds) -> Vec<Finding> {
    let Some(flows) = &s.flows else {
        return Vec::new();
    };
    // EADDRNOTAVAIL toward a destination whose ports are counted is the
    // ephemeral_port_exhaustion finding's (critical, with who and how often): here only
    // what it does not say. Per process, how many were left to it.
    let mut elsewhere: BTreeMap<u32, u64> = BTreeMap::new();
    let rows: Vec<FlowRow> = flows
        .flows
        .iter()
        .filter(|r| r.key.direction == Direction::Active && r.counts.connect_failures.total() > 0)
        .map(|r| {
            let mut r = r.clone();
            let failures = &mut r.counts.connect_failures;
            if let FlowPeer::Remote(e) = r.key.peer {
                if failures.eaddrnotavail > 0
                    && ephemeral_port_exhaustion::reports_eaddrnotavail_toward(s, e)
                {
                    *elsewhere.entry(r.key.pid).or_default() += failures.eaddrnotavail;
                    failures.eaddrnotavail = 0;
                }
            }
            r
        })
        .filter(|r| r.counts.connect_failures.total() > 0)
        .collect();
    let mut by_pid: BTreeMap<u32, Vec<&FlowRow>> = BTreeMap::new();
    for r in &rows {
        by_pid.entry(r.key.pid).or_default().push(r);
    }
    let mut out: Vec<(u64, Finding)> = by_pid
        .into_values()
        .filter_map(|rows| {
            let reported = elsewhere.get(&rows[0].key.pid).copied().unwrap_or(0);
            finding_for(s, flows, rows, reported)
        })
        .collect();
    out.sort_by(|a, b| b.1.severity.cmp(&a.1.severity).then(b.0.cmp(&a.0)));
    out.into_iter().map(|(_, f)| f).collect()
}

/// Every failure of `rows`, by errno.
fn sum(rows: &[&FlowRow]) -> ConnectFailures {
    let mut all = crate::model::FlowCounts::default();
    for r in rows {
        all.add(&r.counts);
    }
    all.connect_failures
}

/// `1312 EADDRNOTAVAIL, 3 ECONNREFUSED`: the errnos that occurred, most first.
fn errno_list(f: &ConnectFailures) -> String {
    let mut named: Vec<(&str, u64)> = f.named().into_iter().filter(|(_, n)| *n > 0).collect();
    named.sort_by_key(|x| std::cmp::Reverse(x.1));
    named
        .iter()
        .map(|(name, n)| format!("{n} {name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The finding of one process's failed connect() calls (`rows`, never empty);
/// `port_finding` EADDRNOTAVAIL of it were left to ephemeral_port_exhaustion.
fn finding_for(
    s: &Snapshot,
    flows: &NamespaceFlows,
    mut rows: Vec<&FlowRow>,
    port_finding: u64,
) -> Option<(u64, Finding)> {
    let all = sum(&rows);
    let total = all.total();
    let severity = if all.eaddrnotavail > 0 {
        Severity::Critical
    } else if total >= MIN_FAILURES {
        Severity::Warning
    } else {
        return None;
    };
    rows.sort_by(|a, b| {
        let key = |r: &FlowRow| {
            (
                r.counts.connect_failures.eaddrnotavail,
                r.counts.connect_failures.total(),
            )
        };
        key(b).cmp(&key(a)).then(a.key.cmp(&b.key))
    });
    let worst = rows[0];
    let pid = worst.key.pid;
    let who = traced::who(s, worst);
    let over = human_duration_ms(flows.duration_ms);
    let dest = match worst.key.peer {
        FlowPeer::Remote(e) => e.to_string(),
        FlowPeer::ListeningPort(p) => format!(":{p}"),
    };
    let more = match rows.len() {
        1 => String::new(),
        n => format!(
            " ({} more {})",
            n - 1,
            if n == 2 {
                "destination"
            } else {
                "destinations"
            }
        ),
    };
    let w = &worst.counts.connect_failures;
    let title = if w.eaddrnotavail > 0 {
        format!(
            "{who} failed {} with EADDRNOTAVAIL toward {dest} in {over}: no free local port{more}",
            count(w.eaddrnotavail, "connect() call", "connect() calls")
        )
    } else {
        format!(
            "{who} failed {} toward {dest} in {over}: {}{more}",
            count(w.total(), "connect() call", "connect() calls"),
            errno_list(w)
        )
    };

    let mut evidence = vec![Evidence::new(
        format!("failed connect() calls (traced over {over})"),
        format!(
            "{} ({}/s): {}",
            total,
            rate_text(flows.rate(total)),
            errno_list(&all)
        ),
    )];
    for r in rows.iter().take(TOP) {
        let c = &r.counts;
        let ports = match r.key.peer {
            FlowPeer::Remote(e) => s
                .sockets
                .port_use
                .iter()
                .filter(|p| p.remote == crate::model::Endpoint::new(e.canonical_ip(), e.port))
                .min_by_key(|p| p.headroom())
                .map(|p| {
                    format!(
                        "; local ports from {}: {} of {} unavailable, {} left",
                        p.local_ip,
                        p.unavailable(),
                        p.usable,
                        p.headroom()
                    )
                })
                .unwrap_or_default(),
            FlowPeer::ListeningPort(_) => String::new(),
        };
        evidence.push(Evidence::new(
            format!("toward {}", traced::where_to(r).trim_start_matches("to ")),
            format!(
                "{}; {} opened{ports}",
                errno_list(&c.connect_failures),
                c.opened
            ),
        ));
    }
    if port_finding > 0 {
        evidence.push(Evidence::new(
            "EADDRNOTAVAIL",
            format!(
                "{} more toward destinations whose ports ran out: in the ephemeral_port_exhaustion finding",
                port_finding
            ),
        ));
    }
    if !flows.all_errnos {
        evidence.push(Evidence::new(
            "errnos told apart",
            "EADDRNOTAVAIL and failures after the SYN (refused, timed out) only: this kernel refused the tracer's connect() hooks, so other failures before the SYN are not seen",
        ));
    }

    let mut why = Vec::new();
    if all.eaddrnotavail > 0 {
        why.push(format!(
            "EADDRNOTAVAIL (\"Cannot assign requested address\") means connect() found no free local port for that destination: each (source IP, destination IP, destination port) has the ports of ip_local_port_range ({} usable here), and every one was held by an open connection or a TIME_WAIT entry connect() may not take over yet. The call fails at once, without a SYN, and the kernel keeps no counter of it: only the tracer saw these.",
            s.ephemeral_ports().usable()
        ));
    }
    if all.econnrefused > 0 {
        why.push("ECONNREFUSED: the destination answered the SYN with a reset, so nothing listens on that port there (a service down or restarting), or a firewall rejects.".to_string());
    }
    if all.etimedout > 0 {
        why.push("ETIMEDOUT: no answer to the SYN and its retransmissions (net.ipv4.tcp_syn_retries): the host is down, or a firewall drops silently, or the listener's queues overflow.".to_string());
    }
    if all.enetunreach + all.ehostunreach > 0 {
        why.push("ENETUNREACH / EHOSTUNREACH: no route to the destination, or an ICMP unreachable came back.".to_string());
    }
    if all.eperm > 0 {
        why.push("EPERM / EACCES: a firewall rule, a cgroup BPF program or a security module refused the connection on this host.".to_string());
    }
    if all.eaddrinuse > 0 {
        why.push("EADDRINUSE: the socket was bound to an explicit local port whose connection to that destination already exists (bind() before connect(); IP_BIND_ADDRESS_NO_PORT avoids taking a port at bind()).".to_string());
    }
    if all.aborted + all.other > 0 {
        why.push("Others closed the socket while it was still connecting (an application connect timeout) or failed for another reason.".to_string());
    }
    let why = why.join(" ");

    let mut fix = Vec::new();
    if all.eaddrnotavail > 0 {
        fix.push(FixStep::say(format!(
            "Reuse connections to {dest} in {who}: a connection pool or HTTP keep-alive needs a handful of ports where a connection per request needs thousands."
        )));
        fix.push(FixStep::say("Spread the load: another source IP, or another destination IP or port for the same service, gives a full range of ports each."));
    }
    if total > all.eaddrnotavail {
        fix.push(FixStep::say(format!(
            "Check the service at {dest}: is it listening and reachable from here (firewall, routes)? Retry with backoff rather than at once."
        )));
    }
    if pid != 0 {
        fix.push(FixStep::run(
            format!("Watch each failed connect() of {who} as it happens, with the errno"),
            format!("tcpdoctor trace --pid {pid} --events"),
        ));
    }

    let data = json!({
        "pid": pid,
        "comm": worst.comm,
        "duration_ms": flows.duration_ms,
        "failed": total,
        "failed_per_s": round2(flows.rate(total)),
        "by_errno": all,
        "eaddrnotavail_in_port_finding": port_finding,
        "all_errnos": flows.all_errnos,
        "destinations": rows.iter().map(|r| traced::flow_json(flows, r)).collect::<Vec<_>>(),
    });
    let mut f = Finding::new(ID, severity, Nature::Live, title);
    f.evidence = evidence;
    f.why = why;
    f.fix = fix;
    f.data = data;
    Some((total, f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, FlowCounts, FlowKey};

    fn out(pid: u32, port: u16, f: ConnectFailures, opened: u64) -> FlowRow {
        FlowRow {
            key: FlowKey {
                pid,
                netns: 1,
                direction: Direction::Active,
                peer: FlowPeer::Remote(Endpoint::new("10.0.0.7".parse().expect("ip"), port)),
            },
            comm: "java".into(),
            netns_name: String::new(),
            counts: FlowCounts {
                opened,
                connect_failures: f,
                ..FlowCounts::default()
            },
        }
    }

    fn snapshot(rows: Vec<FlowRow>) -> Snapshot {
        Snapshot {
            flows: Some(NamespaceFlows {
                duration_ms: 1000,
                flows: rows,
                all_errnos: true,
                ..NamespaceFlows::default()
            }),
            ..Snapshot::default()
        }
    }

    #[test]
    fn eaddrnotavail_is_critical_and_names_the_process_and_destination() {
        let s = snapshot(vec![
            out(
                91,
                443,
                ConnectFailures {
                    eaddrnotavail: 1312,
                    ..ConnectFailures::default()
                },
                40,
            ),
            out(
                91,
                80,
                ConnectFailures {
                    econnrefused: 2,
                    ..ConnectFailures::default()
                },
                0,
            ),
        ]);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Critical);
        assert_eq!(
            f[0].title,
            "java (pid 91) failed 1312 connect() calls with EADDRNOTAVAIL toward 10.0.0.7:443 in 1.0s: no free local port (1 more destination)"
        );
        assert_eq!(f[0].data["pid"], 91);
        assert_eq!(f[0].data["failed"], 1314);
        assert_eq!(f[0].data["by_errno"]["EADDRNOTAVAIL"], 1312);
        assert_eq!(f[0].data["destinations"][0]["remote"], "10.0.0.7:443");
        assert!(f[0].why.contains("no counter") || f[0].why.contains("keeps no counter"));
        assert!(f[0]
            .fix
            .iter()
            .any(|s| s.command.as_deref() == Some("tcpdoctor trace --pid 91 --events")));
    }

    #[test]
    fn refused_connections_warn_from_a_handful_and_name_the_errno() {
        let refused = |n| ConnectFailures {
            econnrefused: n,
            ..ConnectFailures::default()
        };
        let s = snapshot(vec![out(7, 9090, refused(50), 0)]);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f[0].severity, Severity::Warning);
        assert_eq!(
            f[0].title,
            "java (pid 7) failed 50 connect() calls toward 10.0.0.7:9090 in 1.0s: 50 ECONNREFUSED"
        );
        assert!(f[0].why.contains("ECONNREFUSED"));
        // A couple of refusals (a service restarting) are no finding.
        assert!(check(
            &snapshot(vec![out(7, 9090, refused(2), 0)]),
            &Thresholds::default()
        )
        .is_empty());
    }

    /// A destination whose ports are counted: its EADDRNOTAVAIL is the
    /// ephemeral_port_exhaustion finding's, named there; here only the rest.
    #[test]
    fn eaddrnotavail_toward_counted_ports_is_left_to_the_port_finding() {
        let enotavail = |n| ConnectFailures {
            eaddrnotavail: n,
            ..ConnectFailures::default()
        };
        let mut s = snapshot(vec![out(91, 443, enotavail(27), 0)]);
        s.sockets.port_use.push(crate::model::PortUse {
            local_ip: "10.0.0.1".parse().expect("ip"),
            remote: Endpoint::new("10.0.0.7".parse().expect("ip"), 443),
            counts: crate::model::StateCounts::default(),
            sample_owner: None,
            usable: 10,
            time_wait_ages: crate::model::TimeWaitAges::default(),
            tw_reuse: false,
        });
        assert!(check(&s, &Thresholds::default()).is_empty());
        let ports = ephemeral_port_exhaustion::check(&s, &Thresholds::default());
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].severity, Severity::Critical);
        assert_eq!(
            ports[0].data["destinations"][0]["traced"]["eaddrnotavail"],
            27
        );

        // Refused elsewhere too: a warning about those, saying where the rest went.
        let refused = ConnectFailures {
            econnrefused: 6,
            ..ConnectFailures::default()
        };
        s.flows
            .as_mut()
            .expect("flows")
            .flows
            .push(out(91, 9090, refused, 0));
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Warning);
        assert_eq!(f[0].data["failed"], 6);
        assert_eq!(f[0].data["eaddrnotavail_in_port_finding"], 27);
        assert!(f[0].evidence.iter().any(|e| e.label == "EADDRNOTAVAIL"
            && e.value
                .starts_with("27 more toward destinations whose ports ran out")));
    }

    #[test]
    fn does_not_fire_without_failures_or_without_a_tracer() {
        let s = snapshot(vec![out(7, 443, ConnectFailures::default(), 500)]);
        assert!(check(&s, &Thresholds::default()).is_empty());
        assert!(check(&Snapshot::default(), &Thresholds::default()).is_empty());
    }
}
