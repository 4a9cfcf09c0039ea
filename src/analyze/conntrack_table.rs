//! Rule `conntrack_table`: the netfilter connection-tracking table filling up. Only when
//! nf_conntrack is loaded (its sysctls exist); conntrack entries are not sockets, and
//! their timeouts never change a socket's state.

use serde_json::json;

use super::util::pct;
use super::Thresholds;
use crate::model::units;
use crate::model::{
    Evidence, Finding, FixStep, Nature, Severity, Snapshot, SysctlChange, TcpState,
};

pub const ID: &str = "conntrack_table";

/// `nf_conntrack_tcp_timeout_time_wait` default (nf_conntrack_proto_tcp.c), seconds.
const CT_TIME_WAIT_DEFAULT: u64 = 120;

/// What the kernel prints when the table is full (see kernel_log).
const TABLE_FULL: &str = "nf_conntrack: table full, dropping packet";

pub fn check(s: &Snapshot, t: &Thresholds) -> Vec<Finding> {
    finding(s, t).into_iter().collect()
}

fn sysctl_u64(s: &Snapshot, key: &str) -> Option<u64> {
    s.sysctl_i64(key).and_then(|v| u64::try_from(v).ok())
}

fn finding(s: &Snapshot, t: &Thresholds) -> Option<Finding> {
    // Absent keys: the module is not loaded, nothing is tracked.
    let count = sysctl_u64(s, "net.netfilter.nf_conntrack_count")?;
    let max = sysctl_u64(s, "net.netfilter.nf_conntrack_max")?;
    if max == 0 {
        return None;
    }
    let share = pct(count, max);
    let mut severity = if share >= t.conntrack_critical_pct {
        Severity::Critical
    } else if share >= t.conntrack_warn_pct {
        Severity::Warning
    } else {
        return None;
    };
    let full_logged: u64 = s
        .kernel_log
        .iter()
        .flatten()
        .filter(|e| e.message.contains(TABLE_FULL))
        .map(|e| e.count)
        .sum();
    if full_logged > 0 {
        // Packets have already been dropped, not just about to be.
        severity = Severity::Critical;
    }
    let tw_timeout = sysctl_u64(s, "net.netfilter.nf_conntrack_tcp_timeout_time_wait");
    let tw_s = tw_timeout.unwrap_or(CT_TIME_WAIT_DEFAULT).max(1);
    // Every closed connection holds an entry for tw_s seconds, so this many closes per
    // second fill the table on their own.
    let close_rate = max / tw_s;
    let local_tw = s.summary.total().get(TcpState::TimeWait);
    // The busiest server port by TIME_WAIT: a candidate for a notrack exemption.
    let notrack_port = s
        .sockets
        .time_wait
        .by_listen_port
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(p, _)| *p);

    let mut evidence = vec![
        Evidence::new(
            "conntrack entries",
            format!("{count} of nf_conntrack_max {max} ({share:.1}%)"),
        ),
        Evidence::new(
            "entry lifetime after close (nf_conntrack_tcp_timeout_time_wait)",
            match tw_timeout {
                Some(v) => format!("{v} s (default {CT_TIME_WAIT_DEFAULT})"),
                None => format!("unknown (default {CT_TIME_WAIT_DEFAULT} s)"),
            },
        ),
        Evidence::new(
            "closed connections per second that alone fill the table",
            close_rate,
        ),
        Evidence::new("TIME_WAIT sockets on this host", local_tw),
    ];
    if full_logged > 0 {
        evidence.insert(
            1,
            Evidence::new(
                "\"table full, dropping packet\" in the kernel log",
                full_logged,
            ),
        );
    }

    let title = if full_logged > 0 {
        format!("Conntrack table {share:.1}% full ({count} of {max}) and already dropping packets")
    } else {
        format!("Conntrack table {share:.1}% full: {count} of {max} entries")
    };
    let why = format!(
        "Netfilter keeps an entry for every flow this host accepts, opens or forwards, and a closed TCP connection keeps its entry for nf_conntrack_tcp_timeout_time_wait ({tw_s} s here) after both sockets are gone; about {} per second are enough to fill the table. At nf_conntrack_max the kernel drops packets that would start a new flow (\"{TABLE_FULL}\"), so new connections time out in connect() while existing ones keep working. Conntrack timeouts only age these entries; they never change a socket's state.",
        units::count(close_rate, "short connection", "short connections")
    );
    let proposed = max.saturating_mul(2);
    let port = notrack_port.map_or_else(|| "PORT".to_string(), |p| p.to_string());
    let mut fix = vec![
        FixStep::run("Count the entries", "conntrack -C"),
        FixStep::run("Drops and failed inserts per CPU (drop, early_drop, insert_failed)", "conntrack -S"),
        FixStep::run(
            "What fills it (TIME_WAIT entries mean connection churn)",
            "conntrack -L -p tcp 2>/dev/null | awk '{print $4}' | sort | uniq -c | sort -rn",
        ),
        FixStep::run(
            "More room now; each entry costs kernel memory, so size it to the host",
            format!("sysctl -w net.netfilter.nf_conntrack_max={proposed}"),
        ),
        FixStep::run("The hash table's size now", "sysctl net.netfilter.nf_conntrack_buckets"),
        FixStep::run(
            "Grow it in proportion, as root, so lookups stay short",
            "echo NEW_SIZE > /sys/module/nf_conntrack/parameters/hashsize",
        ),
        FixStep::run(
            "Keep it after reboot: the proposed settings, as a file for /etc/sysctl.d/",
            "tcpdoctor check --emit-sysctl",
        ),
        FixStep::say("List nf_conntrack in /etc/modules-load.d/ as well: the key only exists once the module is loaded."),
        FixStep::say("Less churn: reuse connections (HTTP keep-alive, connection pools) for the short-lived ones; every reused connection is one entry instead of one per request."),
        FixStep::run(
            format!("Exempt heavy local traffic that needs no NAT or stateful filtering (here port {port}) with nftables"),
            format!(
                "nft 'add table inet notrack_local; add chain inet notrack_local pre {{ type filter hook prerouting priority raw; }}; add rule inet notrack_local pre tcp dport {port} notrack; add chain inet notrack_local out {{ type filter hook output priority raw; }}; add rule inet notrack_local out tcp sport {port} notrack'"
            ),
        ),
        FixStep::run(
            "Or with iptables, incoming",
            format!("iptables -t raw -A PREROUTING -p tcp --dport {port} -j NOTRACK"),
        ),
        FixStep::run(
            "With iptables, outgoing",
            format!("iptables -t raw -A OUTPUT -p tcp --sport {port} -j NOTRACK"),
        ),
        FixStep::say("Untracked packets no longer match 'ct state established,related' rules: accept them explicitly (nft: ct state untracked accept; iptables: -m conntrack --ctstate UNTRACKED -j ACCEPT), and never exempt traffic that is NATed."),
    ];
    let mut changes = vec![SysctlChange {
        key: "net.netfilter.nf_conntrack_max".into(),
        value: proposed.to_string(),
        was: Some(max.to_string()),
        why: format!(
            "Was {max}, with {count} entries in use. Twice the room; grow the hash table in proportion, and load nf_conntrack at boot (/etc/modules-load.d/) or this key does not exist when the file is read. Host-wide."
        ),
    }];
    if tw_s > CT_TIME_WAIT_DEFAULT {
        fix.push(FixStep::run(
            format!("The entry lifetime after close (nf_conntrack_tcp_timeout_time_wait) was raised to {tw_s} s; the default {CT_TIME_WAIT_DEFAULT} s frees entries sooner"),
            format!("sysctl -w net.netfilter.nf_conntrack_tcp_timeout_time_wait={CT_TIME_WAIT_DEFAULT}"),
        ));
        changes.push(SysctlChange {
            key: "net.netfilter.nf_conntrack_tcp_timeout_time_wait".into(),
            value: CT_TIME_WAIT_DEFAULT.to_string(),
            was: Some(tw_s.to_string()),
            why: format!(
                "Was {tw_s}. Closed connections free their conntrack entry after the default {CT_TIME_WAIT_DEFAULT} s; sockets are not affected."
            ),
        });
    }
    let mut f = Finding::new(ID, severity, Nature::Live, title);
    f.evidence = evidence;
    f.why = why;
    f.fix = fix;
    f.proposed = changes;
    f.data = json!({
        "count": count,
        "max": max,
        "pct": (share * 10.0).round() / 10.0,
        "tcp_timeout_time_wait_s": tw_timeout,
        "closes_per_s_to_fill": close_rate,
        "local_time_wait": local_tw,
        "table_full_logged": full_logged,
        "proposed_max": proposed,
        "notrack_port": notrack_port,
    });
    Some(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::KernelLogEntry;

    fn snapshot(count: &str, max: &str) -> Snapshot {
        let mut s = Snapshot::default();
        s.sysctls
            .insert("net.netfilter.nf_conntrack_count".into(), count.into());
        s.sysctls
            .insert("net.netfilter.nf_conntrack_max".into(), max.into());
        s.sysctls.insert(
            "net.netfilter.nf_conntrack_tcp_timeout_time_wait".into(),
            "120".into(),
        );
        s
    }

    #[test]
    fn fires_near_the_limit_with_churn_numbers() {
        let mut s = snapshot("222822", "262144");
        s.sockets.time_wait.by_listen_port.insert(8080, 900);
        s.sockets.time_wait.by_listen_port.insert(443, 40);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].rule_id, ID);
        assert_eq!(f[0].severity, Severity::Warning);
        assert_eq!(f[0].data["count"], 222_822);
        assert_eq!(f[0].data["pct"], 85.0);
        assert_eq!(f[0].data["closes_per_s_to_fill"], 2184);
        assert_eq!(f[0].data["notrack_port"], 8080);
        assert!(f[0]
            .fix
            .iter()
            .any(|l| l.mentions("tcp dport 8080 notrack")));
        assert!(f[0].fix.iter().any(|l| l.mentions("-j NOTRACK")));
        assert!(f[0].why.contains("never change a socket's state"));
        let keys: Vec<(&str, &str)> = f[0]
            .proposed
            .iter()
            .map(|c| (c.key.as_str(), c.value.as_str()))
            .collect();
        assert_eq!(keys, vec![("net.netfilter.nf_conntrack_max", "524288")]);
        let mut raised = snapshot("222822", "262144");
        raised.sysctls.insert(
            "net.netfilter.nf_conntrack_tcp_timeout_time_wait".into(),
            "600".into(),
        );
        let f = check(&raised, &Thresholds::default());
        assert_eq!(f[0].proposed.len(), 2);
        assert_eq!(f[0].proposed[1].value, "120");
        assert_eq!(f[0].proposed[1].was.as_deref(), Some("600"));

        let critical = snapshot("260000", "262144");
        assert_eq!(
            check(&critical, &Thresholds::default())[0].severity,
            Severity::Critical
        );
    }

    #[test]
    fn logged_drops_make_it_critical() {
        let mut s = snapshot("215000", "262144");
        s.kernel_log = Some(vec![KernelLogEntry {
            message: "nf_conntrack: nf_conntrack: table full, dropping packet".into(),
            count: 12,
            last_seen_s: 40,
        }]);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f[0].severity, Severity::Critical);
        assert_eq!(f[0].data["table_full_logged"], 12);
    }

    #[test]
    fn does_not_fire_without_the_module_or_at_low_usage() {
        assert!(check(&Snapshot::default(), &Thresholds::default()).is_empty());
        assert!(check(&snapshot("1200", "262144"), &Thresholds::default()).is_empty());
        assert!(check(&snapshot("5", "0"), &Thresholds::default()).is_empty());
    }
}
