//! Namespaces whose TCP sysctls differ from the host's. Most TCP knobs are per network
//! namespace and a new namespace starts from the kernel defaults, so tuning written to
//! the host's /etc/sysctl.d never reaches containers. One finding per knob, listing the
//! namespaces that differ and their values.

use std::collections::BTreeMap;

use serde_json::json;

use super::Thresholds;
use crate::model::{Evidence, Finding, FixStep, HostSnapshot, Nature, NetnsKind, Severity};

pub const ID: &str = "netns_sysctl_drift";

/// Knobs whose difference changes how connections end or how many can be made.
const WATCHED: &[&str] = &[
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_max_tw_buckets",
    "net.ipv4.tcp_timestamps",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.tcp_keepalive_time",
    "net.core.somaxconn",
];

/// Namespaces listed by name in the evidence of one finding.
const SHOWN: usize = 8;

pub fn check(h: &HostSnapshot, _t: &Thresholds) -> Vec<Finding> {
    // Only meaningful when the reference is the host's own (initial) namespace.
    let Some(host) = h.primary() else {
        return Vec::new();
    };
    if host.netns.as_ref().is_none_or(|n| !n.initial) || h.namespaces.len() < 2 {
        return Vec::new();
    }
    let host_name = host
        .netns
        .as_ref()
        .filter(|n| n.kind == NetnsKind::Host)
        .map_or("this namespace".to_string(), |n| n.name.clone());
    let mut out = Vec::new();
    for key in WATCHED {
        let Some(host_value) = host.sysctl(key) else {
            continue;
        };
        // value -> namespaces with it
        let mut differing: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut compared = 0usize;
        for s in &h.namespaces[1..] {
            let (Some(v), Some(ns)) = (s.sysctl(key), s.netns.as_ref()) else {
                continue;
            };
            compared += 1;
            if v != host_value {
                differing.entry(v).or_default().push(ns.name.as_str());
            }
        }
        let n: usize = differing.values().map(Vec::len).sum();
        if n == 0 {
            continue;
        }
        let short = key.rsplit('.').next().unwrap_or(key);
        let mut evidence = vec![
            Evidence::new(format!("{host_name} ({key})"), host_value),
            Evidence::new(
                "namespaces that differ",
                format!("{n} of {compared} other namespaces"),
            ),
        ];
        let mut data_values = Vec::new();
        for (value, names) in &differing {
            let mut shown: Vec<&str> = names.iter().take(SHOWN).copied().collect();
            if names.len() > SHOWN {
                shown.push("...");
            }
            evidence.push(Evidence::new(
                format!("{value} in {} namespaces", names.len()),
                shown.join(", "),
            ));
            data_values.push(json!({"value": value, "namespaces": names}));
        }
        out.push(Finding {
            rule_id: ID,
            namespaces: Vec::new(),
            nature: Nature::Config,
            severity: Severity::Info,
            title: format!(
                "{n} network namespaces do not use the host's {short} ({host_value})"
            ),
            evidence,
            why: format!(
                "{key} is set per network namespace. A container's namespace starts from the kernel default, not from the host's value, and /etc/sysctl.conf or /etc/sysctl.d on the host only set the host's own namespace. Tuning that fixed the host does not apply to these containers."
            ),
            proposed: Vec::new(),
            fix: vec![
                FixStep::say(format!(
                    "If the host value is the one you want, set it for each container: Kubernetes pod securityContext.sysctls (name: {key}), docker run --sysctl {key}=..., podman run --sysctl."
                )),
                FixStep::run(
                    "Check one",
                    format!("nsenter -t <pid of a process in it> -n sysctl {key}"),
                ),
            ],
            data: json!({"sysctl": key, "host": host_value, "differing": data_values}),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NetnsInfo, Snapshot};

    fn ns(name: &str, initial: bool, port_range: &str) -> Snapshot {
        let mut s = Snapshot {
            netns: Some(NetnsInfo {
                inode: name.len() as u64,
                name: name.to_string(),
                kind: if initial {
                    NetnsKind::Host
                } else {
                    NetnsKind::IpNetns
                },
                current: initial,
                initial,
                container: None,
                ip_netns: Vec::new(),
                processes: 1,
                first_pid: Some(1),
            }),
            ..Snapshot::default()
        };
        s.sysctls
            .insert("net.ipv4.ip_local_port_range".into(), port_range.into());
        s
    }

    fn host(namespaces: Vec<Snapshot>) -> HostSnapshot {
        HostSnapshot {
            namespaces,
            all_namespaces: true,
            missing: Vec::new(),
        }
    }

    #[test]
    fn fires_for_a_pod_at_the_kernel_default() {
        let h = host(vec![
            ns("host", true, "1024 65000"),
            ns("pod-a", false, "32768 60999"),
            ns("pod-b", false, "1024 65000"),
        ]);
        let f = check(&h, &Thresholds::default());
        assert_eq!(f.len(), 1);
        assert!(
            f[0].title.starts_with("1 network namespaces"),
            "{}",
            f[0].title
        );
        assert!(f[0]
            .evidence
            .iter()
            .any(|e| e.label == "32768 60999 in 1 namespaces" && e.value == "pod-a"));
        assert_eq!(f[0].data["differing"][0]["namespaces"][0], "pod-a");
    }

    #[test]
    fn silent_when_all_agree_or_host_not_primary() {
        let same = host(vec![
            ns("host", true, "1024 65000"),
            ns("pod-a", false, "1024 65000"),
        ]);
        assert!(check(&same, &Thresholds::default()).is_empty());
        let no_host = host(vec![
            ns("pod-a", false, "1024 65000"),
            ns("pod-b", false, "32768 60999"),
        ]);
        assert!(check(&no_host, &Thresholds::default()).is_empty());
        // Run inside pod-a (`ip netns exec`), it is the current namespace but not the
        // host's: its values are no reference.
        let mut inside = no_host.clone();
        if let Some(n) = &mut inside.namespaces[0].netns {
            n.current = true;
        }
        assert!(check(&inside, &Thresholds::default()).is_empty());
    }
}
