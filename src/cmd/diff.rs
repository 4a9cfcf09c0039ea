//! `tcpdoctor diff BEFORE AFTER`: two recordings of a host (snapshots or imported
//! text), each read as `--from` reads it, compared: sockets per state, per process and
//! per destination, the findings resolved, new and unchanged, and the rates that moved.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::analyze;
use crate::collect::snapshot::{Recorded, RecordedQuery};
use crate::model::diff::{
    DiffReport, DiffSide, FindingPair, FindingRef, FindingsDelta, GroupDelta, RateDelta,
};
use crate::model::{EphemeralPorts, Finding, Notice, StateCounts, StateSet, TcpState};
use crate::settings::DiffSettings;

use super::CmdError;

/// Counters whose rate the comparison shows, when either side has it.
const RATES: &[&str] = &[
    "TcpExt.ListenOverflows",
    "TcpExt.ListenDrops",
    "TcpExt.TCPTimeWaitOverflow",
    "TcpExt.TCPAbortOnMemory",
    "Tcp.ActiveOpens",
    "Tcp.PassiveOpens",
    "Tcp.AttemptFails",
    "Tcp.EstabResets",
    "Tcp.OutRsts",
    "Tcp.RetransSegs",
];

/// One side, read.
struct Side {
    meta: DiffSide,
    states: StateCounts,
    /// name -> (pids, counts)
    processes: BTreeMap<String, (BTreeSet<u32>, StateCounts)>,
    destinations: BTreeMap<String, StateCounts>,
    findings: Vec<Finding>,
    rates: BTreeMap<String, f64>,
    notices: Vec<Notice>,
}

const NO_FD: &str = "(no fd: time-wait, orphan, unaccepted)";
const NOT_VISIBLE: &str = "(owner not visible)";

fn read_side(path: &Path, s: &DiffSettings) -> Result<Side, CmdError> {
    let paths = [path.to_path_buf()];
    // First pass: every socket, grouped.
    let mut rec = Recorded::open(&paths)?;
    let meta = DiffSide {
        origin: rec.origin.clone(),
        hostname: rec.hostname.clone(),
        taken_at_unix_ms: rec.taken_at_unix_ms,
    };
    let ports: BTreeMap<u64, EphemeralPorts> = rec
        .namespaces
        .iter()
        .map(|ns| {
            (
                ns.inode(),
                EphemeralPorts::from_sysctls(
                    ns.sysctls
                        .get("net.ipv4.ip_local_port_range")
                        .map(String::as_str),
                    ns.sysctls
                        .get("net.ipv4.ip_local_reserved_ports")
                        .map(String::as_str),
                ),
            )
        })
        .collect();
    let owners = rec.owners.take();
    let mut states = StateCounts::default();
    let mut processes: BTreeMap<String, (BTreeSet<u32>, StateCounts)> = BTreeMap::new();
    let mut destinations: BTreeMap<String, StateCounts> = BTreeMap::new();
    let mut listening: BTreeSet<(u64, u16)> = BTreeSet::new();
    let default_ports = EphemeralPorts::default();
    let query = RecordedQuery {
        states: StateSet::all(),
        ipv4: true,
        ipv6: true,
        tcp_info: false,
    };
    let mut notices = rec.stream(&query, |ns, sock| {
        states.add(sock.state);
        let (name, pid) = if sock.inode == 0 {
            (NO_FD.to_string(), None)
        } else {
            match owners.as_ref().and_then(|o| o.map.first(sock.inode)) {
                Some(o) => (
                    owners
                        .as_ref()
                        .and_then(|w| w.process(o.pid))
                        .map_or_else(|| format!("pid {}", o.pid), |p| p.comm.clone()),
                    Some(o.pid),
                ),
                None => (NOT_VISIBLE.to_string(), None),
            }
        };
        let e = processes.entry(name).or_default();
        e.0.extend(pid);
        e.1.add(sock.state);
        if sock.state == TcpState::Listen {
            listening.insert((ns, sock.local.port));
            return;
        }
        let eph = ports.get(&ns).unwrap_or(&default_ports);
        let served =
            listening.contains(&(ns, sock.local.port)) || !eph.is_ephemeral(sock.local.port);
        let key = if served {
            format!("served :{}", sock.local.port)
        } else {
            crate::model::Endpoint::new(sock.remote.canonical_ip(), sock.remote.port).to_string()
        };
        destinations.entry(key).or_default().add(sock.state);
    })?;
    // Second pass: the host as check sees it, and its findings.
    let mut rec = Recorded::open(&paths)?;
    let all: Vec<usize> = (0..rec.namespaces.len()).collect();
    let all_ns = rec.all_namespaces;
    let host = rec.host_snapshot(&all, all_ns, false)?;
    let findings = analyze::run_host(&host, &s.thresholds);
    notices.extend(host.all_missing());
    let merged = host.merged();
    let mut rates = BTreeMap::new();
    if let Some(c) = &merged.counters {
        for k in RATES {
            if let Some(r) = c.rate(k) {
                rates.insert((*k).to_string(), r);
            }
        }
    }
    let tw = &merged.sockets.time_wait;
    let mut ages = tw.client_ages;
    ages.merge(&tw.server_ages);
    if let Some(r) = ages.closing_rate(tw.policy.len_ms) {
        rates.insert("time_wait_closing".into(), r.per_s);
    }
    Ok(Side {
        meta,
        states,
        processes,
        destinations,
        findings,
        rates,
        notices,
    })
}

/// A finding's identity across the two sides: its rule, namespaces and title with
/// the numbers left out (counts and pids change; what it is about does not).
fn identity(f: &Finding) -> String {
    let mut title = String::with_capacity(f.title.len());
    let mut in_num = false;
    for c in f.title.chars() {
        if c.is_ascii_digit() || (in_num && c == '.') {
            if !in_num {
                title.push('#');
            }
            in_num = true;
        } else {
            in_num = false;
            title.push(c);
        }
    }
    let ns: Vec<&str> = f.namespaces.iter().map(|n| n.name.as_str()).collect();
    format!("{}|{}|{}", f.rule_id, ns.join(","), title)
}

fn reference(f: &Finding) -> FindingRef {
    FindingRef {
        rule_id: f.rule_id,
        severity: f.severity,
        title: f.title.clone(),
        namespaces: f.namespaces.iter().map(|n| n.name.clone()).collect(),
    }
}

/// Most moved first, cut to `top` with the rest summed.
fn ranked(mut rows: Vec<GroupDelta>, top: usize) -> (Vec<GroupDelta>, Option<GroupDelta>) {
    rows.sort_by(|a, b| {
        b.movement()
            .cmp(&a.movement())
            .then(b.after.total().cmp(&a.after.total()))
            .then(a.key.cmp(&b.key))
    });
    if rows.len() <= top {
        return (rows, None);
    }
    let rest_rows = rows.split_off(top);
    let mut rest = GroupDelta {
        key: format!("{} more", rest_rows.len()),
        pids_before: Vec::new(),
        pids_after: Vec::new(),
        before: StateCounts::default(),
        after: StateCounts::default(),
    };
    for r in &rest_rows {
        rest.before.merge(&r.before);
        rest.after.merge(&r.after);
    }
    (rows, Some(rest))
}

pub fn run(s: &DiffSettings) -> Result<DiffReport, CmdError> {
    let before = read_side(&s.before, s)?;
    let after = read_side(&s.after, s)?;

    let names: BTreeSet<&String> = before
        .processes
        .keys()
        .chain(after.processes.keys())
        .collect();
    let processes: Vec<GroupDelta> = names
        .into_iter()
        .map(|n| {
            let b = before.processes.get(n);
            let a = after.processes.get(n);
            GroupDelta {
                key: n.clone(),
                pids_before: b
                    .map(|(p, _)| p.iter().copied().collect())
                    .unwrap_or_default(),
                pids_after: a
                    .map(|(p, _)| p.iter().copied().collect())
                    .unwrap_or_default(),
                before: b.map(|(_, c)| *c).unwrap_or_default(),
                after: a.map(|(_, c)| *c).unwrap_or_default(),
            }
        })
        .collect();
    let keys: BTreeSet<&String> = before
        .destinations
        .keys()
        .chain(after.destinations.keys())
        .collect();
    let destinations: Vec<GroupDelta> = keys
        .into_iter()
        .map(|k| GroupDelta {
            key: k.clone(),
            pids_before: Vec::new(),
            pids_after: Vec::new(),
            before: before.destinations.get(k).copied().unwrap_or_default(),
            after: after.destinations.get(k).copied().unwrap_or_default(),
        })
        .collect();
    let (processes, processes_rest) = ranked(processes, s.top);
    let (destinations, destinations_rest) = ranked(destinations, s.top);

    let mut findings = FindingsDelta::default();
    let after_ids: Vec<String> = after.findings.iter().map(identity).collect();
    let before_ids: Vec<String> = before.findings.iter().map(identity).collect();
    for (f, id) in before.findings.iter().zip(&before_ids) {
        match after_ids.iter().position(|a| a == id) {
            Some(k) => findings.unchanged.push(FindingPair {
                before: reference(f),
                after: reference(&after.findings[k]),
            }),
            None => findings.resolved.push(reference(f)),
        }
    }
    for (f, id) in after.findings.iter().zip(&after_ids) {
        if !before_ids.contains(id) {
            findings.new.push(reference(f));
        }
    }

    let rate_names: BTreeSet<&String> = before.rates.keys().chain(after.rates.keys()).collect();
    // The rates that moved, or that are not zero on a side.
    let rates = rate_names
        .into_iter()
        .map(|n| RateDelta {
            name: n.clone(),
            before: before.rates.get(n).copied(),
            after: after.rates.get(n).copied(),
        })
        .filter(|r| r.before != r.after || r.before.is_some_and(|v| v != 0.0))
        .collect();

    let mut notices = Vec::new();
    for (side, list) in [("before", &before.notices), ("after", &after.notices)] {
        for n in list {
            let n = Notice::new(n.code, format!("{side}: {}", n.message));
            if !notices.contains(&n) {
                notices.push(n);
            }
        }
    }
    Ok(DiffReport {
        before: before.meta,
        after: after.meta,
        states_before: before.states,
        states_after: after.states,
        processes,
        processes_rest,
        destinations,
        destinations_rest,
        findings,
        rates,
        notices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Nature, Severity};

    #[test]
    fn a_finding_is_the_same_one_when_only_its_numbers_moved() {
        let a = Finding::new(
            "close_wait_leak",
            Severity::Warning,
            Nature::Live,
            "web (pid 41) leaks CLOSE_WAIT: 14 sockets, oldest idle 3.0s",
        );
        let b = Finding::new(
            "close_wait_leak",
            Severity::Critical,
            Nature::Live,
            "web (pid 977) leaks CLOSE_WAIT: 9000 sockets, oldest idle 12.5s",
        );
        let c = Finding::new(
            "close_wait_leak",
            Severity::Warning,
            Nature::Live,
            "api (pid 41) leaks CLOSE_WAIT: 14 sockets, oldest idle 3.0s",
        );
        assert_eq!(identity(&a), identity(&b));
        assert_ne!(identity(&a), identity(&c));
    }

    #[test]
    fn groups_are_ranked_by_movement_and_the_rest_summed() {
        let g = |key: &str, b: u64, a: u64| {
            let mut before = StateCounts::default();
            let mut after = StateCounts::default();
            for _ in 0..b {
                before.add(TcpState::CloseWait);
            }
            for _ in 0..a {
                after.add(TcpState::CloseWait);
            }
            GroupDelta {
                key: key.into(),
                pids_before: Vec::new(),
                pids_after: Vec::new(),
                before,
                after,
            }
        };
        let (rows, rest) = ranked(vec![g("a", 1, 1), g("b", 10, 0), g("c", 0, 3)], 2);
        assert_eq!(
            rows.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            vec!["b", "c"]
        );
        let rest = rest.expect("rest");
        assert_eq!((rest.key.as_str(), rest.before.total()), ("1 more", 1));
    }
}
