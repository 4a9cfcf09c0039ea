//! Rules: pure functions from a [`Snapshot`] to [`Finding`]s. No I/O and no clock here
//! (time comes in the snapshot), so every rule is tested on hand-built snapshots.
//! One rule per file; each exports `ID` and `check`. Not rules: [`close_wait_common`]
//! and [`nginx_common`] (what a family of rules shares), [`merge`] (one finding per
//! cause across namespaces), [`pointing`] (fix commands pointed at a namespace),
//! [`runway`] (time until ports or descriptors run out), [`traced`] (flows the tracer
//! saw), [`trend`] and [`util`].

pub mod close_wait_common;
pub mod close_wait_leak;
pub mod close_wait_slow_close;
pub mod close_wait_unaccepted;
pub mod connect_failures;
pub mod connection_resets;
pub mod conntrack_table;
pub mod detached_descriptors;
pub mod ephemeral_port_exhaustion;
pub mod fd_exhaustion;
pub mod kernel_log;
pub mod listen_overflow;
pub mod merge;
pub mod netns_sysctl_drift;
pub mod nginx_client_keepalive;
pub mod nginx_common;
pub mod nginx_proxy_header_inheritance;
pub mod nginx_proxy_keepalive_headers;
pub mod nginx_upstream_keepalive;
pub mod nginx_worker_connections;
pub mod orphans;
pub mod pointing;
pub mod runway;
pub mod sysctl_audit;
pub mod sysctl_persisted;
pub mod time_wait_pressure;
pub mod traced;
pub mod trend;
pub mod util;

use serde::{Deserialize, Serialize};

use crate::model::{Finding, HostSnapshot, NetnsInfo, Snapshot};

pub use pointing::{point_commands, point_commands_at};

/// Thresholds the rules use. Every field can be set in the TOML config file (see
/// docs/config.md); percentages are of the limit the rule compares against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// CLOSE_WAIT sockets one process may hold before it is a warning...
    pub close_wait_warn: u64,
    /// ...and a critical finding.
    pub close_wait_critical: u64,
    /// A CLOSE_WAIT idle this long (seconds) is a leak even when few.
    pub close_wait_age_s: u64,
    /// TIME_WAIT as a share of tcp_max_tw_buckets.
    pub time_wait_warn_pct: f64,
    pub time_wait_critical_pct: f64,
    /// Ephemeral ports used towards one destination, share of the usable range.
    pub port_warn_pct: f64,
    pub port_critical_pct: f64,
    /// Open descriptors as a share of a process's soft RLIMIT_NOFILE, or of fs.file-max.
    pub fd_warn_pct: f64,
    pub fd_critical_pct: f64,
    /// Accept queue as a share of the listener's backlog.
    pub accept_queue_warn_pct: f64,
    /// Orphans as a share of tcp_max_orphans (the kernel may complain at 1/4 already).
    pub orphan_warn_pct: f64,
    pub orphan_critical_pct: f64,
    /// nf_conntrack_count as a share of nf_conntrack_max.
    pub conntrack_warn_pct: f64,
    pub conntrack_critical_pct: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            close_wait_warn: 10,
            close_wait_critical: 1000,
            close_wait_age_s: 300,
            time_wait_warn_pct: 50.0,
            time_wait_critical_pct: 80.0,
            port_warn_pct: 50.0,
            port_critical_pct: 80.0,
            fd_warn_pct: 80.0,
            fd_critical_pct: 95.0,
            accept_queue_warn_pct: 50.0,
            orphan_warn_pct: 20.0,
            orphan_critical_pct: 50.0,
            conntrack_warn_pct: 80.0,
            conntrack_critical_pct: 95.0,
        }
    }
}

/// What a rule's evidence covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Per network namespace (sockets, per-netns sysctls and counters): runs on every
    /// namespace looked at.
    Namespace,
    /// Host-wide (kernel log, orphans against tcp_max_orphans): runs once, on the
    /// primary namespace.
    Host,
}

/// A rule: its stable id, its scope and its check.
pub struct Rule {
    pub id: &'static str,
    pub scope: Scope,
    pub check: fn(&Snapshot, &Thresholds) -> Vec<Finding>,
}

/// A rule that compares namespaces with each other.
pub struct HostRule {
    pub id: &'static str,
    pub check: fn(&HostSnapshot, &Thresholds) -> Vec<Finding>,
}

/// Every rule, in the order the report lists them within a severity.
pub const RULES: &[Rule] = &[
    Rule {
        id: close_wait_leak::ID,
        scope: Scope::Namespace,
        check: close_wait_leak::check,
    },
    Rule {
        id: close_wait_unaccepted::ID,
        scope: Scope::Namespace,
        check: close_wait_unaccepted::check,
    },
    Rule {
        id: close_wait_slow_close::ID,
        scope: Scope::Namespace,
        check: close_wait_slow_close::check,
    },
    Rule {
        id: detached_descriptors::ID,
        scope: Scope::Namespace,
        check: detached_descriptors::check,
    },
    Rule {
        id: listen_overflow::ID,
        scope: Scope::Namespace,
        check: listen_overflow::check,
    },
    Rule {
        id: ephemeral_port_exhaustion::ID,
        scope: Scope::Namespace,
        check: ephemeral_port_exhaustion::check,
    },
    Rule {
        id: connect_failures::ID,
        scope: Scope::Namespace,
        check: connect_failures::check,
    },
    Rule {
        id: time_wait_pressure::ID,
        scope: Scope::Namespace,
        check: time_wait_pressure::check,
    },
    Rule {
        id: connection_resets::ID,
        scope: Scope::Namespace,
        check: connection_resets::check,
    },
    Rule {
        id: orphans::ID,
        scope: Scope::Host,
        check: orphans::check,
    },
    Rule {
        id: fd_exhaustion::ID,
        scope: Scope::Namespace,
        check: fd_exhaustion::check,
    },
    Rule {
        id: conntrack_table::ID,
        scope: Scope::Namespace,
        check: conntrack_table::check,
    },
    Rule {
        id: sysctl_audit::ID,
        scope: Scope::Namespace,
        check: sysctl_audit::check,
    },
    // The host's sysctl files, read for the primary namespace only.
    Rule {
        id: sysctl_persisted::ID,
        scope: Scope::Host,
        check: sysctl_persisted::check,
    },
    Rule {
        id: kernel_log::ID,
        scope: Scope::Host,
        check: kernel_log::check,
    },
    // nginx: configuration read from running masters (or `lint nginx`), judged with
    // the host's evidence.
    Rule {
        id: nginx_upstream_keepalive::ID,
        scope: Scope::Namespace,
        check: nginx_upstream_keepalive::check,
    },
    Rule {
        id: nginx_proxy_keepalive_headers::ID,
        scope: Scope::Namespace,
        check: nginx_proxy_keepalive_headers::check,
    },
    Rule {
        id: nginx_proxy_header_inheritance::ID,
        scope: Scope::Namespace,
        check: nginx_proxy_header_inheritance::check,
    },
    Rule {
        id: nginx_client_keepalive::ID,
        scope: Scope::Namespace,
        check: nginx_client_keepalive::check,
    },
    Rule {
        id: nginx_worker_connections::ID,
        scope: Scope::Namespace,
        check: nginx_worker_connections::check,
    },
];

/// Rules across namespaces.
pub const HOST_RULES: &[HostRule] = &[HostRule {
    id: netns_sysctl_drift::ID,
    check: netns_sysctl_drift::check,
}];

/// Runs every rule on one snapshot; findings come back worst first, then in rule order.
pub fn run(snapshot: &Snapshot, t: &Thresholds) -> Vec<Finding> {
    let mut out: Vec<Finding> = RULES.iter().flat_map(|r| (r.check)(snapshot, t)).collect();
    // Stable sort keeps rule order within one rank.
    out.sort_by_key(Finding::rank);
    out
}

/// Runs the rules on every namespace of `host`: namespace rules on each, host-wide
/// rules on the primary only, then the cross-namespace rules.
///
/// When more than one namespace was looked at, or another than tcpdoctor's own, each
/// namespace finding names the namespaces it is about, and the same cause found in
/// several namespaces ([`merge::same_cause`]) is one finding naming them all. Commands
/// in the fixes are then pointed at those namespaces ([`point_commands`]), so they work
/// pasted into the user's shell.
///
/// Order: worst first; within a severity, live problems before settings
/// ([`Finding::rank`]); then namespace order (the current one first), then rule order.
pub fn run_host(host: &HostSnapshot, t: &Thresholds) -> Vec<Finding> {
    let several = host.namespaces.len() > 1 || host.all_namespaces;
    // Each cause: the findings made of it, each with the namespace it was found in
    // (`None`: not named, host-wide or a run in tcpdoctor's own namespace only), with
    // commands as the rules wrote them.
    let mut causes: Vec<Vec<(Finding, Option<&NetnsInfo>)>> = Vec::new();
    for (i, snap) in host.namespaces.iter().enumerate() {
        for rule in RULES {
            if rule.scope == Scope::Host && i > 0 {
                continue;
            }
            for f in (rule.check)(snap, t) {
                let named = match (rule.scope, &snap.netns) {
                    (Scope::Namespace, Some(ns)) if several || !ns.current => Some(ns),
                    _ => None,
                };
                let same = named.and_then(|ns| {
                    causes.iter().position(|found| {
                        found
                            .iter()
                            .all(|(_, seen)| seen.is_some_and(|s| s.inode != ns.inode))
                            && merge::same_cause(&found[0].0, &f)
                    })
                });
                match same {
                    Some(k) => causes[k].push((f, named)),
                    None => causes.push(vec![(f, named)]),
                }
            }
        }
    }
    let mut out: Vec<Finding> = causes
        .into_iter()
        .filter_map(|found| {
            let namespaces: Vec<&NetnsInfo> = found.iter().filter_map(|(_, ns)| *ns).collect();
            if namespaces.is_empty() {
                return found.into_iter().next().map(|(f, _)| f);
            }
            let pairs: Vec<(Finding, &NetnsInfo)> = found
                .into_iter()
                .filter_map(|(f, ns)| ns.map(|ns| (f, ns)))
                .collect();
            let mut one = merge::merge(&pairs);
            point_commands(&mut one, &namespaces);
            Some(one)
        })
        .collect();
    for rule in HOST_RULES {
        out.extend((rule.check)(host, t));
    }
    // Stable: namespace order, then rule order, within one rank.
    out.sort_by_key(Finding::rank);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NetnsKind, Severity};

    fn snapshot(inode: u64, name: &str, current: bool, syncookies: &str) -> Snapshot {
        let mut s = Snapshot::default();
        s.sysctls
            .insert("net.ipv4.tcp_syncookies".into(), syncookies.into());
        s.netns = Some(NetnsInfo {
            inode,
            name: name.into(),
            kind: if current {
                NetnsKind::Host
            } else {
                NetnsKind::IpNetns
            },
            current,
            initial: current,
            container: None,
            ip_netns: if current { vec![] } else { vec![name.into()] },
            processes: 1,
            first_pid: Some(inode as u32),
        });
        s
    }

    fn cookies(findings: &[Finding]) -> Vec<&Finding> {
        findings
            .iter()
            .filter(|f| f.data["sysctl"] == "net.ipv4.tcp_syncookies")
            .collect()
    }

    fn commands(f: &Finding) -> Vec<&str> {
        f.fix.iter().filter_map(|s| s.command.as_deref()).collect()
    }

    /// `--netns blue` alone: the finding names blue and its commands enter it.
    #[test]
    fn one_other_namespace_is_named_and_pointed_at() {
        let host = HostSnapshot {
            namespaces: vec![snapshot(7, "blue", false, "0")],
            all_namespaces: false,
            missing: Vec::new(),
        };
        let found = run_host(&host, &Thresholds::default());
        let f = cookies(&found);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].namespaces.len(), 1);
        assert!(
            commands(f[0]).contains(&"ip netns exec blue sysctl -w net.ipv4.tcp_syncookies=1"),
            "{:?}",
            commands(f[0])
        );
    }

    /// The same setting in the host's namespace and two others: one finding, one loop
    /// over the three; a different value elsewhere is another cause.
    #[test]
    fn same_cause_in_several_namespaces_is_one_finding() {
        let host = HostSnapshot {
            namespaces: vec![
                snapshot(1, "host", true, "0"),
                snapshot(7, "blue", false, "0"),
                snapshot(8, "red", false, "2"),
                snapshot(9, "green", false, "0"),
            ],
            all_namespaces: true,
            missing: Vec::new(),
        };
        let found = run_host(&host, &Thresholds::default());
        let f = cookies(&found);
        assert_eq!(f.len(), 2, "{f:#?}");
        let off = f
            .iter()
            .find(|f| f.data["value"] == "0")
            .expect("syncookies=0");
        let names: Vec<&str> = off.namespaces.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["host", "blue", "green"]);
        assert_eq!(off.severity, Severity::Warning);
        assert!(
            commands(off).contains(&"for ns in /proc/$$/ns/net /run/netns/blue /run/netns/green; do nsenter --net=\"$ns\" sysctl -w net.ipv4.tcp_syncookies=1; done"),
            "{:?}",
            commands(off)
        );
        let red = f
            .iter()
            .find(|f| f.data["value"] == "2")
            .expect("syncookies=2");
        assert_eq!(red.namespaces.len(), 1);
    }
}
