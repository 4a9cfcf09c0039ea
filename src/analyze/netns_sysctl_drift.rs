//! Namespaces whose TCP sysctls differ from the host's. Most TCP knobs are per network
//! namespace and a new namespace starts from the kernel defaults, so tuning written to
//! the host's /etc/sysctl.d never reaches containers. One finding per knob, listing the
//! namespaces that differ and their values.
//!
//! One cause, one finding: a difference the sysctl audit already reports as a problem
//! is left to it. A host value the audit flags is not tuning the containers lack, and a
//! namespace whose own value the audit flags has its own finding.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::{sysctl_audit, Thresholds};
use crate::model::units::count;
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

pub fn check(h: &HostSnapshot, t: &Thresholds) -> Vec<Finding> {
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
    // What the audit already reports, per namespace.
    let flagged: Vec<BTreeSet<&str>> = h
        .namespaces
        .iter()
        .map(|s| sysctl_audit::flagged_keys(s, t))
        .collect();
    let mut out = Vec::new();
    for key in WATCHED {
        let Some(host_value) = host.sysctl(key) else {
            continue;
        };
        if flagged[0].contains(key) {
            continue;
        }
        // value -> namespaces with it
        let mut differing: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut compared = 0usize;
        for (s, flagged) in h.namespaces.iter().zip(&flagged).skip(1) {
            let (Some(v), Some(ns)) = (s.sysctl(key), s.netns.as_ref()) else {
                continue;
            };
            compared += 1;
            if v != host_value && !flagged.contains(key) {
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
                format!(
                    "{n} of {}",
                    count(compared as u64, "other namespace", "other namespaces")
                ),
            ),
        ];
        let mut data_values = Vec::new();
        for (value, names) in &differing {
            let mut shown: Vec<&str> = names.iter().take(SHOWN).copied().collect();
            if names.len() > SHOWN {
                shown.push("...");
            }
            evidence.push(Evidence::new(
                format!(
                    "{value} in {}",
                    count(names.len() as u64, "namespace", "namespaces")
                ),
                shown.join(", "),
            ));
            data_values.push(json!({"value": value, "namespaces": names}));
        }
        let mut f = Finding::new(
            ID,
            Severity::Info,
            Nature::Config,
            format!(
                "{} the host's {short} ({host_value})",
                if n == 1 {
                    "1 network namespace does not use".to_string()
                } else {
                    format!("{n} network namespaces do not use")
                }
            ),
        );
        f.evidence = evidence;
        f.why = format!(
            "The setting {key} is per network namespace. A container's namespace starts from the kernel default, not from the host's value, and /etc/sysctl.conf or /etc/sysctl.d on the host only set the host's own namespace. Tuning that fixed the host does not apply to these containers."
        );
        f.fix = vec![
            FixStep::say(format!(
                "If the host value is the one you want, set it for each container: Kubernetes pod securityContext.sysctls (name: {key}), or the --sysctl option of docker run and podman run."
            )),
            FixStep::run(
                "Check one",
                format!("nsenter -t <pid of a process in it> -n sysctl {key}"),
            ),
        ];
        f.data = json!({"sysctl": key, "host": host_value, "differing": data_values});
        out.push(f);
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
            ns("host", true, "32768 65535"),
            ns("pod-a", false, "32768 60999"),
            ns("pod-b", false, "32768 65535"),
        ]);
        let f = check(&h, &Thresholds::default());
        assert_eq!(f.len(), 1);
        assert!(
            f[0].title
                .starts_with("1 network namespace does not use the host's"),
            "{}",
            f[0].title
        );
        assert!(f[0]
            .evidence
            .iter()
            .any(|e| e.label == "32768 60999 in 1 namespace" && e.value == "pod-a"));
        assert!(f[0]
            .evidence
            .iter()
            .any(|e| e.value == "1 of 2 other namespaces"));
        assert_eq!(f[0].data["differing"][0]["namespaces"][0], "pod-a");
    }

    fn with(mut s: Snapshot, key: &str, value: &str) -> Snapshot {
        s.sysctls.insert(key.into(), value.into());
        s
    }

    /// One cause, one finding: a host value the audit flags (tcp_fin_timeout=15) is not
    /// tuning the pods lack, and a pod whose own value the audit flags (somaxconn 128)
    /// has its audit finding; only the healthy difference (somaxconn 8192 on the host,
    /// the default in pod-a) is drift.
    #[test]
    fn drift_does_not_repeat_an_audit_finding() {
        let fin = "net.ipv4.tcp_fin_timeout";
        let smc = "net.core.somaxconn";
        let h = host(vec![
            with(
                with(ns("host", true, "32768 60999"), fin, "15"),
                smc,
                "8192",
            ),
            with(
                with(ns("pod-a", false, "32768 60999"), fin, "60"),
                smc,
                "4096",
            ),
            with(
                with(ns("pod-b", false, "32768 60999"), fin, "60"),
                smc,
                "128",
            ),
        ]);
        let t = Thresholds::default();
        let f = check(&h, &t);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].data["sysctl"], smc);
        assert_eq!(
            f[0].data["differing"],
            json!([{"value": "4096", "namespaces": ["pod-a"]}])
        );
        // The audit does report both of the left-out differences.
        assert!(sysctl_audit::flagged_keys(&h.namespaces[0], &t).contains(fin));
        assert!(sysctl_audit::flagged_keys(&h.namespaces[2], &t).contains(smc));
        // Without the audit's problems, both differences are drift.
        let h = host(vec![
            with(
                with(ns("host", true, "32768 60999"), fin, "90"),
                smc,
                "8192",
            ),
            with(
                with(ns("pod-a", false, "32768 60999"), fin, "60"),
                smc,
                "4096",
            ),
        ]);
        assert_eq!(check(&h, &t).len(), 2);
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
