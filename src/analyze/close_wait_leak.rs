//! Rule `close_wait_leak`: processes that hold CLOSE_WAIT sockets. The peer closed its
//! side; the application never called close(). Nothing in the kernel ends this state.

use std::collections::BTreeMap;

use serde_json::json;

use super::util::{pct, process_label, top_counts};
use super::Thresholds;
use crate::model::{CloseWaitSocket, Evidence, Finding, FixStep, Nature, Severity, Snapshot};

pub const ID: &str = "close_wait_leak";

/// Per-process tally.
#[derive(Default)]
struct Leak<'a> {
    sockets: Vec<&'a CloseWaitSocket>,
}

pub fn check(s: &Snapshot, t: &Thresholds) -> Vec<Finding> {
    // Sockets still in an accept queue (inode 0) are a different problem: see
    // close_wait_unaccepted. Owned-but-unattributed sockets are grouped under `None`.
    let mut by_pid: BTreeMap<Option<u32>, Leak> = BTreeMap::new();
    for cw in s.sockets.close_wait.iter().filter(|c| c.inode != 0) {
        by_pid
            .entry(cw.owner.map(|o| o.pid))
            .or_default()
            .sockets
            .push(cw);
    }
    let mut findings: Vec<(u64, Finding)> = by_pid
        .into_iter()
        .filter_map(|(pid, leak)| {
            finding_for(s, t, pid, &leak).map(|f| (leak.sockets.len() as u64, f))
        })
        .collect();
    findings.sort_by_key(|f| std::cmp::Reverse(f.0));
    findings.into_iter().map(|(_, f)| f).collect()
}

fn finding_for(s: &Snapshot, t: &Thresholds, pid: Option<u32>, leak: &Leak) -> Option<Finding> {
    let count = leak.sockets.len() as u64;
    let oldest_ms = leak.sockets.iter().filter_map(|c| c.idle_ms).max();
    let old_enough = oldest_ms.is_some_and(|ms| u64::from(ms) >= t.close_wait_age_s * 1000);
    let proc_facts = pid.and_then(|p| s.process(p));
    let soft_limit = proc_facts
        .and_then(|p| p.nofile_soft)
        .and_then(|l| l.value());
    let limit_share = soft_limit.map(|l| pct(count, l));

    let severity = if count >= t.close_wait_critical || limit_share.is_some_and(|p| p >= 50.0) {
        Severity::Critical
    } else if count >= t.close_wait_warn || old_enough {
        Severity::Warning
    } else {
        // A handful of young CLOSE_WAIT sockets is an application between read() and
        // close(); not worth a line.
        return None;
    };

    let who = match pid {
        Some(p) => process_label(s, p),
        None => "processes tcpdoctor could not see".to_string(),
    };
    let eof_unread = leak.sockets.iter().filter(|c| c.recv_q > 0).count();
    let eof_read = leak.sockets.len() - eof_unread;

    // Who the peers are (by address), and which side of the connection the leak is on:
    // a server leaks on its service port, a client towards one remote ip:port.
    let peers = top_counts(leak.sockets.iter().map(|c| c.remote.canonical_ip()));
    let local_ports = top_counts(leak.sockets.iter().map(|c| c.local.port));
    let remotes = top_counts(
        leak.sockets
            .iter()
            .map(|c| crate::model::Endpoint::new(c.remote.canonical_ip(), c.remote.port)),
    );
    let mut evidence = vec![Evidence::new("CLOSE_WAIT sockets", count)];
    if let Some(ms) = oldest_ms {
        evidence.push(Evidence::new(
            "oldest (peer last heard)",
            crate::model::units::human_duration_ms(u64::from(ms)),
        ));
    }
    evidence.push(Evidence::new(
        "EOF never read (Recv-Q > 0)",
        format!("{eof_unread} of {count}"),
    ));
    evidence.push(Evidence::new(
        "EOF read, never closed (Recv-Q 0)",
        format!("{eof_read} of {count}"),
    ));
    if let (Some(l), Some(p)) = (soft_limit, proc_facts) {
        evidence.push(Evidence::new(
            "descriptors",
            format!(
                "{count} CLOSE_WAIT = {:.1}% of the soft limit {l}; {} open in all",
                pct(count, l),
                p.open_fds
            ),
        ));
    }
    for (ip, n) in peers.iter().take(5) {
        evidence.push(Evidence::new("peer", format!("{ip}: {n}")));
    }
    if let Some((port, n)) = local_ports.first() {
        evidence.push(Evidence::new("local port", format!("{port}: {n}")));
    }
    // Descriptors counted again at check's second reading: how soon the limit comes.
    evidence.extend(super::runway::descriptor_evidence(s, pid));

    let recv_hint = if eof_unread >= eof_read {
        "Most of them still have the EOF unread (Recv-Q > 0): the code stopped using these connections without reading to the end, typically a pooled connection abandoned after an error or a response body that was never consumed."
    } else {
        "Most of them read the EOF (Recv-Q 0) and were still not closed: look for a path that sees read() return 0 (or an exception) and returns without close()."
    };
    let why = format!(
        "The peer closed its side (FIN received) and {who} never called close() on these sockets. The kernel has no timer for CLOSE_WAIT: no sysctl, keepalive or timeout ends it; each one holds a file descriptor until the process closes it or exits. {recv_hint}"
    );
    let pid_arg = pid.map_or(String::new(), |p| format!(" --pid {p}"));
    let mut fix: Vec<FixStep> = vec![
        FixStep::run(
            "List them",
            format!("tcpdoctor sockets --state close-wait{pid_arg} -i"),
        ),
        FixStep::say("Fix the code path that drops connections without close(): close in a finally/defer/with block on every path, errors included."),
        FixStep::say("Pooled HTTP clients: evict idle and expired connections (e.g. Apache HttpClient evictIdleConnections, Go http.Transport IdleConnTimeout) and always consume or close response bodies (Go resp.Body.Close(), Python `with requests.get(...)`, release the entity in Java)."),
        FixStep::say("Keep-alive agents (Node.js and similar): set a free-socket / idle timeout shorter than the server's keep-alive timeout so the client closes first."),
    ];
    // The ss -K filter that covers the most of these sockets.
    let selector = match (local_ports.first(), remotes.first()) {
        (Some((_, ln)), Some((r, rn))) if rn > ln => {
            Some(format!("dst {} dport = :{}", r.address, r.port))
        }
        (Some((lp, _)), _) => Some(format!("sport = :{lp}")),
        _ => None,
    };
    if let Some(sel) = selector {
        fix.push(FixStep::run(
            "Stopgap only: destroy the sockets (needs CONFIG_INET_DIAG_DESTROY and CAP_NET_ADMIN); the process still holds the leaked descriptors, so restart it to get them back",
            format!("ss -K state close-wait {sel}"),
        ));
    }
    let title = match oldest_ms {
        Some(ms) => format!(
            "{who} leaks CLOSE_WAIT: {count} sockets, oldest idle {}",
            crate::model::units::human_duration_ms(u64::from(ms))
        ),
        None => format!("{who} leaks CLOSE_WAIT: {count} sockets"),
    };
    Some(Finding {
        rule_id: ID,
        namespaces: Vec::new(),
        nature: Nature::Live,
        severity,
        title,
        evidence,
        why,
        fix,
        proposed: Vec::new(),
        data: json!({
            "pid": pid,
            "comm": proc_facts.map(|p| p.comm.clone()),
            "count": count,
            "oldest_idle_ms": oldest_ms,
            "eof_unread": eof_unread,
            "eof_read_not_closed": eof_read,
            "nofile_soft": soft_limit,
            "local_ports": local_ports.iter().take(20).map(|(p, n)| json!({"port": p, "count": n})).collect::<Vec<_>>(),
            "peers": peers.iter().take(20).map(|(ip, n)| json!({"address": ip.to_string(), "count": n})).collect::<Vec<_>>(),
            "descriptor_runway": super::runway::descriptor_json(s, pid),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Limit, Owner, ProcessFacts};

    fn cw(pid: Option<u32>, recv_q: u32, idle_ms: u32, peer_port: u16) -> CloseWaitSocket {
        CloseWaitSocket {
            local: Endpoint::new("10.0.0.1".parse().expect("ip"), 41000),
            remote: Endpoint::new("10.0.0.2".parse().expect("ip"), peer_port),
            inode: 100,
            recv_q,
            owner: pid.map(|pid| Owner { pid, fd: 9 }),
            idle_ms: Some(idle_ms),
            cookie: None,
            still_there: None,
        }
    }

    fn snapshot_with(sockets: Vec<CloseWaitSocket>) -> Snapshot {
        let mut s = Snapshot::default();
        s.processes.insert(
            42,
            ProcessFacts {
                pid: 42,
                comm: "java".into(),
                uid: 1000,
                cmdline: "java -jar app.jar".into(),
                open_fds: 900,
                nofile_soft: Some(Limit::Value(1024)),
                nofile_hard: Some(Limit::Value(4096)),
                detached_tcp_fds: None,
            },
        );
        s.sockets.close_wait = sockets;
        s
    }

    #[test]
    fn fires_for_a_process_over_the_count_threshold() {
        let s = snapshot_with(
            (0u32..25)
                .map(|i| cw(Some(42), u32::from(i % 2 == 0), 5_000 + i, 8080))
                .collect(),
        );
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].rule_id, ID);
        assert_eq!(f[0].severity, Severity::Warning);
        assert!(
            f[0].title
                .starts_with("java (pid 42) leaks CLOSE_WAIT: 25 sockets"),
            "{}",
            f[0].title
        );
        assert_eq!(f[0].data["pid"], 42);
        assert_eq!(f[0].data["count"], 25);
        assert_eq!(f[0].data["eof_unread"], 13);
        assert_eq!(f[0].data["oldest_idle_ms"], 5024);
        // One local port, one remote endpoint: a tie, so the local port is the selector.
        assert!(
            f[0].fix
                .iter()
                .any(|l| l.mentions("ss -K state close-wait sport = :41000")),
            "{:?}",
            f[0].fix
        );
    }

    #[test]
    fn client_side_leak_towards_one_server_uses_a_destination_selector() {
        let s = snapshot_with(
            (0u16..12)
                .map(|i| {
                    let mut c = cw(Some(42), 1, 1_000, 5432);
                    c.local.port = 40000 + i;
                    c
                })
                .collect(),
        );
        let f = check(&s, &Thresholds::default());
        assert!(
            f[0].fix
                .iter()
                .any(|l| l.mentions("ss -K state close-wait dst 10.0.0.2 dport = :5432")),
            "{:?}",
            f[0].fix
        );
        assert_eq!(f[0].data["peers"][0]["count"], 12);
    }

    #[test]
    fn old_sockets_fire_even_when_few_and_half_the_fd_limit_is_critical() {
        let old = snapshot_with(vec![cw(Some(42), 1, 600_000, 80)]);
        assert_eq!(
            check(&old, &Thresholds::default())[0].severity,
            Severity::Warning
        );
        let many = snapshot_with((0..600).map(|_| cw(Some(42), 0, 1_000, 80)).collect());
        assert_eq!(
            check(&many, &Thresholds::default())[0].severity,
            Severity::Critical
        );
    }

    #[test]
    fn does_not_fire_for_a_few_young_sockets_or_unaccepted_ones() {
        let few = snapshot_with((0..3).map(|_| cw(Some(42), 1, 2_000, 80)).collect());
        assert!(check(&few, &Thresholds::default()).is_empty());
        let mut unaccepted: Vec<_> = (0..50).map(|_| cw(None, 1, 2_000, 80)).collect();
        for u in &mut unaccepted {
            u.inode = 0;
        }
        assert!(check(&snapshot_with(unaccepted), &Thresholds::default()).is_empty());
    }

    #[test]
    fn unattributed_sockets_are_grouped_not_dropped() {
        let s = snapshot_with((0..12).map(|_| cw(None, 1, 2_000, 80)).collect());
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].data["pid"], serde_json::Value::Null);
        assert!(f[0].title.contains("could not see"));
    }
}
