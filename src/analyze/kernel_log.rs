//! Rule `kernel_log`: kernel messages that explain a TCP problem, each distinct message
//! once with how often it is still in the ring buffer and when it was last printed. Each
//! finding names the rule whose numbers it explains. An unreadable log gives no finding
//! here (the report lists it as missing evidence).

use std::collections::BTreeMap;

use serde_json::json;

use super::Thresholds;
use crate::model::{Evidence, Finding, FixStep, KernelLogEntry, Nature, Severity, Snapshot};

pub const ID: &str = "kernel_log";

/// A kernel message the doctor knows, matched as a case-sensitive substring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// Old kernels only: current ones just count TcpExtTCPTimeWaitOverflow.
    TimeWaitOverflow,
    OrphanOverflow,
    TcpMemExhausted,
    SynFlood,
    ConntrackFull,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::TimeWaitOverflow,
        Kind::OrphanOverflow,
        Kind::TcpMemExhausted,
        Kind::SynFlood,
        Kind::ConntrackFull,
    ];

    fn needle(self) -> &'static str {
        match self {
            Kind::TimeWaitOverflow => "time wait bucket table overflow",
            Kind::OrphanOverflow => "too many orphaned sockets",
            Kind::TcpMemExhausted => "out of memory -- consider tuning tcp_mem",
            Kind::SynFlood => "Possible SYN flooding on port",
            Kind::ConntrackFull => "nf_conntrack: table full, dropping packet",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::TimeWaitOverflow => "time_wait_overflow",
            Kind::OrphanOverflow => "too_many_orphans",
            Kind::TcpMemExhausted => "tcp_mem_exhausted",
            Kind::SynFlood => "syn_flood",
            Kind::ConntrackFull => "conntrack_full",
        }
    }

    /// The rule whose numbers this message explains.
    fn related_rule(self) -> &'static str {
        match self {
            Kind::TimeWaitOverflow => "time_wait_pressure",
            // tcp_check_oom() prints both the orphan and the tcp_mem message; the orphans
            // rule is where sockstat's orphan and mem counts are compared with the limits.
            Kind::OrphanOverflow | Kind::TcpMemExhausted => "orphans",
            Kind::SynFlood => "listen_overflow",
            Kind::ConntrackFull => "conntrack_table",
        }
    }
}

/// What the kernel did about a full SYN queue.
fn syn_action(message: &str) -> &'static str {
    if message.contains("Sending cookies") {
        "cookies"
    } else if message.contains("Dropping request") {
        "dropping"
    } else {
        "unknown"
    }
}

/// The listener from "Possible SYN flooding on port 0.0.0.0:443. Sending cookies." —
/// also "[::]:443" (IPv6) and plain "443" (older kernels).
fn syn_target(message: &str) -> (Option<String>, Option<u16>) {
    let Some((_, rest)) = message.split_once("Possible SYN flooding on port ") else {
        return (None, None);
    };
    let target = rest
        .split(". ")
        .next()
        .unwrap_or(rest)
        .trim()
        .trim_end_matches('.');
    match target.rsplit_once(':') {
        Some((addr, port)) => (
            Some(addr.trim_matches(|c| c == '[' || c == ']').to_string()),
            port.parse().ok(),
        ),
        None => (None, target.parse().ok()),
    }
}

/// One distinct message: the entries that matched it, summed.
struct Seen<'a> {
    count: u64,
    last_seen_s: u64,
    latest: &'a KernelLogEntry,
}

type Key = (Kind, Option<u16>, Option<String>, &'static str);

pub fn check(s: &Snapshot, _t: &Thresholds) -> Vec<Finding> {
    let Some(log) = &s.kernel_log else {
        return Vec::new();
    };
    let mut seen: BTreeMap<Key, Seen> = BTreeMap::new();
    for e in log {
        let Some(kind) = Kind::ALL
            .into_iter()
            .find(|k| e.message.contains(k.needle()))
        else {
            continue;
        };
        let key = if kind == Kind::SynFlood {
            let (addr, port) = syn_target(&e.message);
            (kind, port, addr, syn_action(&e.message))
        } else {
            (kind, None, None, "")
        };
        let entry = seen.entry(key).or_insert(Seen {
            count: 0,
            last_seen_s: e.last_seen_s,
            latest: e,
        });
        entry.count += e.count;
        if e.last_seen_s >= entry.last_seen_s {
            entry.last_seen_s = e.last_seen_s;
            entry.latest = e;
        }
    }
    let mut out: Vec<(u64, Finding)> = seen
        .iter()
        .map(|(key, v)| (v.count, finding(key, v)))
        .collect();
    out.sort_by(|a, b| b.1.severity.cmp(&a.1.severity).then(b.0.cmp(&a.0)));
    out.into_iter().map(|(_, f)| f).collect()
}

fn finding(key: &Key, v: &Seen) -> Finding {
    let (kind, port, addr, action) = key;
    let (kind, port, action) = (*kind, *port, *action);
    let port_text = port.map_or_else(|| "a listener".to_string(), |p| format!("port {p}"));
    let severity = match kind {
        Kind::TcpMemExhausted | Kind::ConntrackFull => Severity::Critical,
        Kind::SynFlood if action == "cookies" => Severity::Info,
        _ => Severity::Warning,
    };
    // Settings are proposed by the rule each message explains (related_rule), never
    // here: one cause, one proposal.
    let (title, why, mut fix): (String, String, Vec<FixStep>) = match kind {
        Kind::TimeWaitOverflow => (
            "Kernel log: TIME_WAIT table overflow, connections skipped TIME_WAIT".into(),
            "Older kernels print this when the number of TIME_WAIT entries reaches tcp_max_tw_buckets; the closing connection is then destroyed at once instead of waiting out TIME_WAIT. Current kernels print nothing and only count it in TcpExtTCPTimeWaitOverflow.".into(),
            vec![
                FixStep::run("Compare the limit", "sysctl net.ipv4.tcp_max_tw_buckets"),
                FixStep::run("The entries in use (tw)", "grep TCP: /proc/net/sockstat"),
                FixStep::run("The overflows counted", "nstat -az TcpExtTCPTimeWaitOverflow"),
                FixStep::say("Do not lower tcp_max_tw_buckets; restore its default if it was lowered, and cut the churn with connection reuse (HTTP keep-alive, pools) on the side that closes first."),
            ],
        ),
        Kind::OrphanOverflow => (
            "Kernel log: too many orphaned sockets, connections were reset".into(),
            "Orphans are connections the application already closed that are still sending data or waiting for the peer (FIN_WAIT1, LAST_ACK, CLOSING). When they exceed tcp_max_orphans (for idle or failing ones already at a half or a quarter of it), or TCP memory runs short, the kernel resets them and prints this. Both limits are host-wide, so one busy container can cause resets for everyone.".into(),
            vec![
                FixStep::run("Compare the orphans and TCP memory now", "grep TCP: /proc/net/sockstat"),
                FixStep::run("Their limits", "sysctl net.ipv4.tcp_max_orphans net.ipv4.tcp_mem"),
                FixStep::run(
                    "See who they talk to",
                    "ss -tan state fin-wait-1 or state last-ack or state closing | awk '{print $5}' | sort | uniq -c | sort -rn | head",
                ),
                FixStep::say("Do not lower tcp_max_orphans; orphans usually mean peers that stopped reading or vanished. A tcp_orphan_retries of 0 already means 8 retries."),
            ],
        ),
        Kind::TcpMemExhausted => (
            "Kernel log: TCP ran out of memory (tcp_mem), connections were reset".into(),
            "The memory used by all TCP socket buffers on the host reached the limit in tcp_mem (counted in pages); the kernel then resets orphaned connections and squeezes the buffers of every other one. It is host-wide, usually caused by many connections whose buffers are full because a peer or the application is not reading.".into(),
            vec![
                FixStep::run("Compare the memory in use (mem, in pages)", "grep TCP: /proc/net/sockstat"),
                FixStep::run("The limits in tcp_mem (min, pressure, max, in pages)", "sysctl net.ipv4.tcp_mem"),
                FixStep::run(
                    "Find sockets holding data: a large Recv-Q means the application is not reading",
                    "ss -tn | sort -k2,2nr | head",
                ),
                FixStep::run(
                    "A large Send-Q means the peer is not reading",
                    "ss -tn | sort -k3,3nr | head",
                ),
                FixStep::say("Raise the third value of tcp_mem only if the host has the memory for it; fix the slow readers first."),
            ],
        ),
        Kind::SynFlood => {
            let what = if action == "cookies" {
                "answered new SYNs with syncookies (connections still work, with fewer TCP options)"
            } else if action == "dropping" {
                "dropped new connection attempts"
            } else {
                "had to cookie or drop new connection attempts"
            };
            let ss_filter = port.map_or_else(String::new, |p| format!(" 'sport = :{p}'"));
            (
                format!(
                    "Kernel log: SYN queue of {port_text} overflowed, the kernel {}",
                    match action {
                        "cookies" => "sent syncookies",
                        "dropping" => "dropped SYNs",
                        _ => "cookied or dropped SYNs",
                    }
                ),
                format!(
                    "More handshakes were pending on {port_text} than its listen backlog allows, so the kernel {what}. It prints this once per listener, so the count understates it: the counters TcpExtTCPReqQFullDoCookies and TcpExtTCPReqQFullDrop have the real numbers. Either a SYN flood or an ordinary burst bigger than the backlog."
                ),
                vec![
                    FixStep::run(
                        "The counters",
                        "nstat -az TcpExtTCPReqQFullDoCookies TcpExtTCPReqQFullDrop TcpExtListenOverflows TcpExtListenDrops",
                    ),
                    FixStep::run("The backlog in use (Send-Q on a listener)", format!("ss -ltn{ss_filter}")),
                    FixStep::say("If it is real load: raise the application's listen backlog and net.core.somaxconn together, then restart the service."),
                    FixStep::say("Keep net.ipv4.tcp_syncookies=1 so a flood costs options rather than connections."),
                ],
            )
        }
        Kind::ConntrackFull => (
            "Kernel log: conntrack table full, packets of new connections dropped".into(),
            "Netfilter tracks every flow; when nf_conntrack_max entries exist, packets that would create a new one are dropped, so new TCP connections time out in connect(). Closed connections keep their entry for nf_conntrack_tcp_timeout_time_wait (120 s by default) after the sockets are gone.".into(),
            vec![
                FixStep::run(
                    "Compare the count with the limit",
                    "sysctl net.netfilter.nf_conntrack_count net.netfilter.nf_conntrack_max",
                ),
                FixStep::run("Drops per CPU (drop, early_drop)", "conntrack -S"),
                FixStep::say("See the conntrack_table finding for raising the limit, cutting churn and exempting local traffic with notrack."),
            ],
        ),
    };
    fix.push(FixStep::run(
        "Recent occurrences with wall-clock times",
        format!("dmesg -T | grep -F '{}'", kind.needle()),
    ));

    let mut evidence = vec![
        Evidence::new("message", &v.latest.message),
        Evidence::new("times in the kernel log", v.count),
        Evidence::new(
            "last printed",
            format!(
                "{} after boot",
                crate::model::units::human_duration_ms(v.last_seen_s.saturating_mul(1000))
            ),
        ),
        Evidence::new("explains", kind.related_rule()),
    ];
    if kind == Kind::SynFlood {
        evidence.insert(1, Evidence::new("listener", &port_text));
    }
    Finding {
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
            "kind": kind.name(),
            "pattern": kind.needle(),
            "message": v.latest.message,
            "count": v.count,
            "last_seen_s": v.last_seen_s,
            "related_rule": kind.related_rule(),
            "port": port,
            "address": addr,
            "action": (kind == Kind::SynFlood).then_some(action),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(message: &str, count: u64, last_seen_s: u64) -> KernelLogEntry {
        KernelLogEntry {
            message: message.into(),
            count,
            last_seen_s,
        }
    }

    fn snapshot(log: Vec<KernelLogEntry>) -> Snapshot {
        Snapshot {
            kernel_log: Some(log),
            ..Default::default()
        }
    }

    #[test]
    fn each_distinct_message_once_with_count_and_related_rule() {
        let s = snapshot(vec![
            entry("nf_conntrack: nf_conntrack: table full, dropping packet", 30, 500),
            entry("nf_conntrack: nf_conntrack: table full, dropping packet", 7, 900),
            entry("TCP: too many orphaned sockets", 3, 100),
            entry("TCP: out of memory -- consider tuning tcp_mem", 1, 101),
            entry(
                "TCP: request_sock_TCP: Possible SYN flooding on port 0.0.0.0:443. Sending cookies.  Check SNMP counters.",
                1,
                50,
            ),
            entry(
                "TCP: request_sock_TCPv6: Possible SYN flooding on port [::]:8080. Dropping request.  Check SNMP counters.",
                2,
                60,
            ),
            entry("TCP: time wait bucket table overflow", 4, 10),
            entry("e1000: eth0 NIC Link is Up", 1, 5),
        ]);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 6, "{f:#?}");
        assert!(f.windows(2).all(|w| w[0].severity >= w[1].severity));

        let ct = f
            .iter()
            .find(|x| x.data["kind"] == "conntrack_full")
            .expect("conntrack");
        assert_eq!(ct.severity, Severity::Critical);
        assert_eq!(ct.data["count"], 37);
        assert_eq!(ct.data["last_seen_s"], 900);
        assert_eq!(ct.data["related_rule"], "conntrack_table");
        // Critical ones sorted by count: conntrack (37) before tcp_mem (1).
        assert_eq!(f[0].data["kind"], "conntrack_full");

        let syn: Vec<_> = f.iter().filter(|x| x.data["kind"] == "syn_flood").collect();
        assert_eq!(syn.len(), 2);
        let v6 = syn.iter().find(|x| x.data["port"] == 8080).expect("8080");
        assert_eq!(v6.data["address"], "::");
        assert_eq!(v6.data["action"], "dropping");
        assert_eq!(v6.severity, Severity::Warning);
        assert_eq!(v6.data["related_rule"], "listen_overflow");
        let v4 = syn.iter().find(|x| x.data["port"] == 443).expect("443");
        assert_eq!(v4.data["address"], "0.0.0.0");
        assert_eq!(v4.severity, Severity::Info);

        let tw = f
            .iter()
            .find(|x| x.data["kind"] == "time_wait_overflow")
            .expect("tw");
        assert_eq!(tw.data["related_rule"], "time_wait_pressure");
        assert_eq!(tw.data["count"], 4);
        let orphans = f
            .iter()
            .find(|x| x.data["kind"] == "too_many_orphans")
            .expect("orphans");
        assert_eq!(orphans.data["related_rule"], "orphans");
    }

    #[test]
    fn syn_target_forms() {
        assert_eq!(
            syn_target("Possible SYN flooding on port 80. Sending cookies."),
            (None, Some(80))
        );
        assert_eq!(
            syn_target("Possible SYN flooding on port 10.1.2.3:8443. Dropping request."),
            (Some("10.1.2.3".into()), Some(8443))
        );
        assert_eq!(syn_target("unrelated"), (None, None));
    }

    #[test]
    fn does_not_fire_on_unreadable_empty_or_unrelated_logs() {
        let t = Thresholds::default();
        assert!(check(&Snapshot::default(), &t).is_empty());
        assert!(check(&snapshot(vec![]), &t).is_empty());
        // Case-sensitive, as the kernel prints it.
        assert!(check(
            &snapshot(vec![
                entry("eth0: link up", 1, 1),
                entry("TCP: Too Many Orphaned Sockets", 1, 1),
            ]),
            &t
        )
        .is_empty());
    }
}
