//! Rule `ephemeral_port_exhaustion`: local ports from `ip_local_port_range` used towards
//! one destination. A connect() needs a local port unique per (source ip, destination ip,
//! destination port), so the range runs out per destination, not per host. Pure: reads
//! the snapshot only.
//!
//! One finding lists every destination at or above `port_warn_pct`; the worst one names
//! the severity and the title.

use std::net::IpAddr;

use serde_json::json;

use super::util::{
    counter, counter_interval_ms, owner_label, pct, unreserved_listeners_in, widened_port_range,
};
use super::Thresholds;
use crate::model::{
    Evidence, Finding, FixStep, Nature, PortRange, PortUse, Severity, Snapshot, TcpState,
};

pub const ID: &str = "ephemeral_port_exhaustion";

/// Destinations shown in the evidence.
const TOP: usize = 5;

/// What the numbers are for one destination.
struct DestinationUse<'a> {
    entry: &'a PortUse,
    used: u64,
    time_wait: u64,
    headroom: u64,
    used_pct: f64,
    /// tcp_tw_reuse lets connect() take over this destination's TIME_WAIT ports.
    reuse_applies: bool,
    /// The share the severity is judged on: sockets that cannot be reused.
    binding_pct: f64,
    severity: Severity,
}

pub fn check(s: &Snapshot, t: &Thresholds) -> Vec<Finding> {
    if s.sockets.port_use.is_empty() {
        return Vec::new();
    }
    let ports = s.ephemeral_ports();
    let range = ports.range;
    let reserved_text = s.sysctl("net.ipv4.ip_local_reserved_ports").unwrap_or("");
    let usable = ports.usable();
    let time_wait_s = s.time_wait_len_s();
    let tw_reuse = s.sysctl_i64("net.ipv4.tcp_tw_reuse");
    let timestamps = s.sysctl_i64("net.ipv4.tcp_timestamps");

    let mut flagged: Vec<DestinationUse> = s
        .sockets
        .port_use
        .iter()
        .filter_map(|e| assess(e, usable, tw_reuse, timestamps, t))
        .collect();
    if flagged.is_empty() {
        return Vec::new();
    }
    flagged.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(b.used_pct.total_cmp(&a.used_pct))
            .then(a.entry.remote.cmp(&b.entry.remote))
    });
    let worst = &flagged[0];
    let severity = worst.severity;
    let attempt_fails = counter(s, "Tcp.AttemptFails");
    let interval_ms = counter_interval_ms(s);
    let max_new_per_s = usable as f64 / time_wait_s as f64;

    let worst_who = owner_label(s, worst.entry.sample_owner);
    let more = match flagged.len() {
        1 => String::new(),
        n => format!("; {} more destinations near the limit", n - 1),
    };
    let title = format!(
        "Ephemeral ports towards {} from {} at {:.0}%: {} of {} used, {} left ({worst_who}){more}",
        worst.entry.remote,
        worst.entry.local_ip,
        worst.used_pct,
        worst.used,
        usable,
        worst.headroom
    );

    let mut evidence = vec![Evidence::new(
        "usable ephemeral ports per destination",
        format!(
            "{usable} (ip_local_port_range {}-{}{}, {} reserved inside)",
            range.low,
            range.high,
            if !ports.range_seen {
                " assumed: not visible"
            } else {
                ""
            },
            ports.reserved_inside()
        ),
    )];
    for d in flagged.iter().take(TOP) {
        evidence.push(Evidence::new(
            format!("{} -> {}", d.entry.local_ip, d.entry.remote),
            format!(
                "{} used ({:.1}%): {}; {} left; {}",
                d.used,
                d.used_pct,
                state_breakdown(d.entry),
                d.headroom,
                owner_label(s, d.entry.sample_owner)
            ),
        ));
    }
    evidence.push(Evidence::new(
        "most new connections one destination sustains",
        format!("~{max_new_per_s:.0}/s ({usable} ports held 60 s each in TIME_WAIT)"),
    ));
    evidence.push(Evidence::new(
        format!("closing rate towards {}", worst.entry.remote),
        format!(
            "~{:.1}/s ({} in TIME_WAIT)",
            worst.time_wait as f64 / time_wait_s as f64,
            worst.time_wait
        ),
    ));
    if attempt_fails.total.is_some() {
        evidence.push(Evidence::new(
            "Tcp.AttemptFails (connects failed after the SYN)",
            attempt_fails.describe(interval_ms),
        ));
    }
    evidence.push(Evidence::new(
        "tcp_tw_reuse",
        match tw_reuse {
            Some(0) => "0 (off)".to_string(),
            Some(1) => "1 (outgoing connections reuse TIME_WAIT ports)".to_string(),
            Some(2) => "2 (loopback destinations only)".to_string(),
            Some(v) => v.to_string(),
            None => "not visible".to_string(),
        },
    ));
    if flagged.iter().any(|d| d.reuse_applies) {
        evidence.push(Evidence::new(
            "judged on",
            "sockets other than TIME_WAIT where tcp_tw_reuse applies (their TIME_WAIT ports can be taken over)",
        ));
    }
    let listeners_in_range = unreserved_listeners_in(s, range)
        .into_keys()
        .collect::<Vec<u16>>();
    if !listeners_in_range.is_empty() {
        evidence.push(Evidence::new(
            "listening ports inside the range, not reserved",
            join_ports(&listeners_in_range),
        ));
    }

    let why = format!(
        "Each outgoing connection takes a local port from ip_local_port_range that only has to be unique for its (source IP, destination IP, destination port), so this host has {usable} ports for every such pair. A port stays taken while the connection is open and for 60 s more in TIME_WAIT when this host closes first, so one destination absorbs at most ~{max_new_per_s:.0} new connections per second. Once none is left, connect() fails at once with EADDRNOTAVAIL (\"Cannot assign requested address\") without sending a SYN, so Tcp.AttemptFails (attempts that failed after the SYN) does not count it: look for that error in the logs of {worst_who}."
    );

    let fix = fix(s, worst, range, reserved_text, tw_reuse, timestamps);

    vec![Finding {
        rule_id: ID,
        namespaces: Vec::new(),
        nature: Nature::Live,
        severity,
        title,
        evidence,
        why,
        fix: fix.into_iter().map(FixStep::from).collect(),
        proposed: Vec::new(),
        data: json!({
            "port_range": [range.low, range.high],
            "port_range_assumed": !ports.range_seen,
            "reserved_in_range": ports.reserved_inside(),
            "usable": usable,
            "max_new_per_s": (max_new_per_s * 100.0).round() / 100.0,
            "tcp_tw_reuse": tw_reuse,
            "tcp_timestamps": timestamps,
            "attempt_fails": attempt_fails.json(),
            "interval_ms": interval_ms,
            "listening_ports_in_range": listeners_in_range,
            "destinations": flagged.iter().map(|d| json!({
                "local_ip": d.entry.local_ip.to_string(),
                "remote_ip": d.entry.remote.canonical_ip().to_string(),
                "remote_port": d.entry.remote.port,
                "used": d.used,
                "time_wait": d.time_wait,
                "established": d.entry.counts.get(TcpState::Established),
                "headroom": d.headroom,
                "used_pct": (d.used_pct * 100.0).round() / 100.0,
                "judged_pct": (d.binding_pct * 100.0).round() / 100.0,
                "tw_reuse_applies": d.reuse_applies,
                "severity": d.severity,
                "pid": d.entry.sample_owner.map(|o| o.pid),
                "comm": d.entry.sample_owner.and_then(|o| s.process(o.pid)).map(|p| p.comm.clone()),
            })).collect::<Vec<_>>(),
        }),
    }]
}

fn assess<'a>(
    entry: &'a PortUse,
    usable: u64,
    tw_reuse: Option<i64>,
    timestamps: Option<i64>,
    t: &Thresholds,
) -> Option<DestinationUse<'a>> {
    let used = entry.counts.total();
    let time_wait = entry.counts.get(TcpState::TimeWait);
    let used_pct = if usable == 0 {
        100.0
    } else {
        pct(used, usable)
    };
    // tcp_tw_reuse: 1 = every outgoing connection, 2 = loopback only; both need TCP
    // timestamps (tcp_twsk_unique()). An absent sysctl is not assumed to be on.
    let timestamps_on = timestamps != Some(0);
    let loopback = entry.local_ip.is_loopback() || entry.remote.canonical_ip().is_loopback();
    let reuse_applies = timestamps_on
        && match tw_reuse {
            Some(1) => true,
            Some(2) => loopback,
            _ => false,
        };
    let binding_pct = if !reuse_applies {
        used_pct
    } else if usable == 0 {
        100.0
    } else {
        pct(used - time_wait, usable)
    };
    // Reuse can fail (a peer without timestamps, TIME_WAIT younger than ~1 s), so a
    // range nearly full of TIME_WAIT stays a warning even where reuse applies.
    let severity = if binding_pct >= t.port_critical_pct {
        Severity::Critical
    } else if binding_pct >= t.port_warn_pct || (reuse_applies && used_pct >= t.port_critical_pct) {
        Severity::Warning
    } else {
        return None;
    };
    Some(DestinationUse {
        entry,
        used,
        time_wait,
        headroom: usable.saturating_sub(used),
        used_pct,
        reuse_applies,
        binding_pct,
        severity,
    })
}

fn state_breakdown(e: &PortUse) -> String {
    let parts: Vec<String> = TcpState::ALL
        .iter()
        .filter(|st| e.counts.get(**st) > 0)
        .map(|st| format!("{} {}", e.counts.get(*st), st.name()))
        .collect();
    parts.join(", ")
}

/// Local listening ports inside `range` that are not reserved (connect() skips ports a
/// bind() holds, and a service started later may find its port taken).
fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn fix(
    s: &Snapshot,
    worst: &DestinationUse,
    range: PortRange,
    reserved_text: &str,
    tw_reuse: Option<i64>,
    timestamps: Option<i64>,
) -> Vec<String> {
    let who = owner_label(s, worst.entry.sample_owner);
    let dst = worst.entry.remote;
    let dst_ip: IpAddr = dst.canonical_ip();
    let mut fix = vec![
        format!(
            "Reuse connections to {dst} in {who}: a connection pool or HTTP keep-alive turns thousands of short connections (and their TIME_WAIT ports) into a few long ones."
        ),
        "Spread the load: ports run out per (source IP, destination IP, destination port), so another source IP on this host, or another destination IP or port for the same service (more backend listeners), adds a full range each.".to_string(),
        "If the application binds a source IP before connect(), set IP_BIND_ADDRESS_NO_PORT on the socket (Linux 4.2+): without it bind(ip, 0) takes a port for all destinations and fails with EADDRINUSE long before any one destination is full.".to_string(),
    ];
    if let Some(wide) = widened_port_range(range) {
        let (lo, hi) = (wide.low, wide.high);
        let in_new: Vec<u16> = unreserved_listeners_in(s, wide).into_keys().collect();
        let reserve = match (reserved_text.trim(), in_new.is_empty()) {
            (_, true) => "and list any service port inside it in net.ipv4.ip_local_reserved_ports".to_string(),
            ("", false) => format!(
                "and reserve the listening ports inside it: `sysctl -w net.ipv4.ip_local_reserved_ports={}`",
                join_ports(&in_new)
            ),
            (old, false) => format!(
                "and reserve the listening ports inside it: `sysctl -w net.ipv4.ip_local_reserved_ports={old},{}`",
                join_ports(&in_new)
            ),
        };
        fix.push(format!(
            "Widen the range, clear of service ports: `sysctl -w net.ipv4.ip_local_port_range=\"{lo} {hi}\"` (start and end of different parity, as the kernel prefers) {reserve}. Both are per network namespace; persist them in /etc/sysctl.d/. Do not use 1024-65535: it collides with services that start later."
        ));
    }
    match (tw_reuse, timestamps) {
        (_, Some(0)) => fix.push("tcp_timestamps is 0 here: set `sysctl -w net.ipv4.tcp_timestamps=1`; without timestamps tcp_tw_reuse can never reuse a TIME_WAIT port and PAWS is off.".to_string()),
        (Some(1), _) => fix.push("tcp_tw_reuse is already 1: if ports still run out, check that the peer sends TCP timestamps (some load balancers and Windows hosts do not); reuse needs them.".to_string()),
        _ => fix.push(format!(
            "For outgoing connections, `sysctl -w net.ipv4.tcp_tw_reuse=1` lets connect() take over a port whose TIME_WAIT is about a second old; it needs TCP timestamps on both ends and does nothing for connections this host accepts. The default 2 does this for loopback destinations only{}.",
            match tw_reuse { Some(v) => format!(" (now {v})"), None => String::new() }
        )),
    }
    fix.push(format!(
        "Watch it: ss -tan src {} dst {dst_ip} dport = :{} | awk 'NR>1 {{print $1}}' | sort | uniq -c",
        worst.entry.local_ip, dst.port
    ));
    fix
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, ListenerSocket, Owner, ProcessFacts, StateCounts};

    fn counts(established: u64, time_wait: u64) -> StateCounts {
        let mut c = StateCounts::default();
        c.0[TcpState::Established.index()] = established;
        c.0[TcpState::TimeWait.index()] = time_wait;
        c
    }

    fn port_use(remote: &str, port: u16, c: StateCounts) -> PortUse {
        PortUse {
            local_ip: "10.0.0.1".parse().expect("ip"),
            remote: Endpoint::new(remote.parse().expect("ip"), port),
            counts: c,
            sample_owner: Some(Owner { pid: 42, fd: 7 }),
            usable: 28_232,
        }
    }

    fn snapshot(entries: Vec<PortUse>) -> Snapshot {
        let mut s = Snapshot::default();
        s.sysctls
            .insert("net.ipv4.ip_local_port_range".into(), "32768 60999".into());
        // 1000 reserved inside (40000-40999), 8080 outside, 50000 twice (overlap).
        s.sysctls.insert(
            "net.ipv4.ip_local_reserved_ports".into(),
            "8080,40000-40999,50000,49990-50010".into(),
        );
        s.sysctls.insert("net.ipv4.tcp_tw_reuse".into(), "0".into());
        s.processes.insert(
            42,
            ProcessFacts {
                pid: 42,
                comm: "crawler".into(),
                uid: 1000,
                cmdline: "crawler".into(),
                open_fds: 100,
                nofile_soft: None,
                nofile_hard: None,
                detached_tcp_fds: None,
            },
        );
        s.sockets.port_use = entries;
        s
    }

    #[test]
    fn usable_ports_subtract_reserved_inside_only_once() {
        let usable = |r: &str, res: &str| {
            crate::model::EphemeralPorts::from_sysctls(Some(r), Some(res)).usable()
        };
        assert_eq!(usable("32768 60999", ""), 28232);
        assert_eq!(
            usable("32768 60999", "8080,40000-40999,50000,49990-50010"),
            28232 - 1000 - 21
        );
        assert_eq!(usable("100 200", "50-150,140-160"), 40);
        assert_eq!(usable("100 100", "100"), 0);
    }

    #[test]
    fn fires_with_exact_headroom_and_percentages() {
        // usable = 28232 - 1000 - 21 = 27211.
        let s = snapshot(vec![
            port_use("10.0.0.5", 5432, counts(1_211, 23_000)), // 24211 = 88.98%
            port_use("10.0.0.6", 443, counts(100, 14_000)),    // 14100 = 51.82%
            port_use("10.0.0.7", 80, counts(10, 100)),         // small: not listed
        ]);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        let f = &f[0];
        assert_eq!(f.rule_id, ID);
        assert_eq!(f.severity, Severity::Critical);
        assert_eq!(f.data["usable"], 27_211);
        assert_eq!(f.data["reserved_in_range"], 1_021);
        let d = f.data["destinations"].as_array().expect("array");
        assert_eq!(d.len(), 2);
        assert_eq!(d[0]["remote_ip"], "10.0.0.5");
        assert_eq!(d[0]["used"], 24_211);
        assert_eq!(d[0]["headroom"], 3_000);
        assert_eq!(d[0]["used_pct"], 88.98);
        assert_eq!(d[0]["severity"], "critical");
        assert_eq!(d[0]["comm"], "crawler");
        assert_eq!(d[1]["headroom"], 13_111);
        assert_eq!(d[1]["used_pct"], 51.82);
        assert_eq!(d[1]["severity"], "warning");
        assert_eq!(f.data["max_new_per_s"], 453.52);
        assert_eq!(
            f.title,
            "Ephemeral ports towards 10.0.0.5:5432 from 10.0.0.1 at 89%: 24211 of 27211 used, \
             3000 left (crawler (pid 42)); 1 more destinations near the limit"
        );
        assert!(f.why.contains("EADDRNOTAVAIL"));
        assert!(f.fix.iter().any(|l| l.mentions("IP_BIND_ADDRESS_NO_PORT")));
        assert!(f.fix.iter().any(|l| l.mentions("tcp_tw_reuse=1")));
    }

    #[test]
    fn wider_range_suggestion_reserves_listening_ports_inside_it() {
        let mut s = snapshot(vec![port_use("10.0.0.5", 5432, counts(0, 27_000))]);
        s.sockets.listeners.push(ListenerSocket {
            // Outside today's range, inside the widened one.
            local: Endpoint::new("0.0.0.0".parse().expect("ip"), 62000),
            accept_queue: 0,
            backlog: 511,
            backlog_known: true,
            inode: 9,
            owner: None,
        });
        let f = check(&s, &Thresholds::default());
        assert!(
            f[0].fix
                .iter()
                .any(|l| l.mentions("ip_local_port_range=\"32768 65535\"")
                    && l.mentions(
                        "ip_local_reserved_ports=8080,40000-40999,50000,49990-50010,62000"
                    )),
            "{:?}",
            f[0].fix
        );
    }

    #[test]
    fn loopback_time_wait_with_default_reuse_is_not_critical() {
        let mut s = snapshot(vec![PortUse {
            local_ip: "127.0.0.1".parse().expect("ip"),
            ..port_use("127.0.0.1", 6379, counts(50, 27_000))
        }]);
        s.sysctls.insert("net.ipv4.tcp_tw_reuse".into(), "2".into());
        let f = check(&s, &Thresholds::default());
        assert_eq!(f[0].severity, Severity::Warning);
        assert_eq!(f[0].data["destinations"][0]["tw_reuse_applies"], true);
        // Half the range held by live connections is still judged on them.
        let live = snapshot(vec![port_use("10.0.0.5", 5432, counts(14_000, 0))]);
        assert_eq!(
            check(&live, &Thresholds::default())[0].severity,
            Severity::Warning
        );
    }

    #[test]
    fn does_not_fire_below_the_warning_share() {
        let s = snapshot(vec![port_use("10.0.0.5", 5432, counts(500, 9_000))]);
        assert!(check(&s, &Thresholds::default()).is_empty());
        assert!(check(&Snapshot::default(), &Thresholds::default()).is_empty());
    }
}
