//! Rules: pure functions from a [`Snapshot`] to [`Finding`]s. No I/O and no clock here
//! (time comes in the snapshot), so every rule is tested on hand-built snapshots.
//! One rule per file; each exports `ID` and `check`.

pub mod close_wait_leak;
pub mod close_wait_unaccepted;
pub mod conntrack_table;
pub mod ephemeral_port_exhaustion;
pub mod fd_exhaustion;
pub mod kernel_log;
pub mod listen_overflow;
pub mod netns_sysctl_drift;
pub mod orphans;
pub mod sysctl_audit;
pub mod time_wait_pressure;
pub mod trend;
pub mod util;

use serde::{Deserialize, Serialize};

use crate::model::{Finding, FixStep, HostSnapshot, NetnsInfo, Snapshot};

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
        id: time_wait_pressure::ID,
        scope: Scope::Namespace,
        check: time_wait_pressure::check,
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
    Rule {
        id: kernel_log::ID,
        scope: Scope::Host,
        check: kernel_log::check,
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

/// Fix steps are written for the namespace they run in. For a finding about another
/// namespace each command is pointed at it, so that it works pasted into the user's
/// shell: `tcpdoctor` commands get `--netns`, others run inside it through
/// `ip netns exec NAME` or `nsenter -t PID -n`. Steps whose commands are still in
/// their prose (not in `command`) get one closing step saying where to run them.
pub fn point_commands_at(f: &mut Finding, ns: &NetnsInfo) {
    let selector = match ns.ip_netns.first() {
        Some(n) => n.clone(),
        None if ns.first_pid.is_some() && ns.kind != crate::model::NetnsKind::Container => {
            ns.first_pid.map(|p| p.to_string()).unwrap_or_default()
        }
        None => format!("'{}'", ns.name.replace('\'', "")),
    };
    let enter = match (ns.ip_netns.first(), ns.first_pid) {
        (Some(n), _) => Some(format!("ip netns exec {n}")),
        (None, Some(pid)) => Some(format!("nsenter -t {pid} -n")),
        (None, None) => None,
    };
    let mut prose_commands = false;
    for step in &mut f.fix {
        if let Some(cmd) = &mut step.command {
            if let Some(rest) = cmd.strip_prefix("tcpdoctor ") {
                let (sub, args) = rest.split_once(' ').unwrap_or((rest, ""));
                *cmd = format!("tcpdoctor {sub} --netns {selector} {args}")
                    .trim_end()
                    .to_string();
            } else {
                match &enter {
                    Some(e) => *cmd = format!("{e} {cmd}"),
                    None => *cmd = format!("nsenter --net=<a file of net:[{}]> {cmd}", ns.inode),
                }
            }
        } else {
            prose_commands |= ["ss ", "sysctl -w", "nstat"]
                .iter()
                .any(|c| step.text.contains(c));
        }
    }
    if prose_commands {
        let how = match &enter {
            Some(e) => format!("{e} COMMAND"),
            None => format!("nsenter --net=<a file of net:[{}]> COMMAND", ns.inode),
        };
        f.fix.push(FixStep::say(format!(
            "The ss and sysctl commands above act on the network namespace they run in: run them inside {} ({how}). For a container, set sysctls in its spec (Kubernetes securityContext.sysctls, docker run --sysctl); a change made with nsenter is lost when it restarts.",
            ns.name
        )));
    }
}

/// Runs the rules on every namespace of `host`: namespace rules on each, host-wide
/// rules on the primary only, then the cross-namespace rules. When more than one
/// namespace was looked at, each namespace finding names its namespace. Worst first;
/// within a severity, by namespace order, then rule order.
pub fn run_host(host: &HostSnapshot, t: &Thresholds) -> Vec<Finding> {
    let several = host.namespaces.len() > 1 || host.all_namespaces;
    let mut out = Vec::new();
    for (i, snap) in host.namespaces.iter().enumerate() {
        for rule in RULES {
            if rule.scope == Scope::Host && i > 0 {
                continue;
            }
            for mut f in (rule.check)(snap, t) {
                if let (Scope::Namespace, Some(ns)) = (rule.scope, &snap.netns) {
                    // Name the namespace when there are several, or when it is not
                    // the one tcpdoctor runs in; point commands at it in that case.
                    if several || !ns.current {
                        f.namespaces = vec![ns.to_ref()];
                    }
                    if !ns.current {
                        point_commands_at(&mut f, ns);
                    }
                }
                out.push(f);
            }
        }
    }
    for rule in HOST_RULES {
        out.extend((rule.check)(host, t));
    }
    out.sort_by_key(Finding::rank);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Nature, NetnsKind, Severity};

    fn finding(fix: &[&str]) -> Finding {
        let mut f = Finding::new("close_wait_leak", Severity::Warning, Nature::Live, "t");
        f.fix = fix
            .iter()
            .map(|s| match s.split_once(": ") {
                Some((text, cmd)) => FixStep::run(text, cmd),
                None => FixStep::say(*s),
            })
            .collect();
        f
    }

    fn ns(ip: &[&str], pid: Option<u32>) -> NetnsInfo {
        NetnsInfo {
            inode: 4026532198,
            name: "pod default/web".into(),
            kind: NetnsKind::Container,
            current: false,
            initial: false,
            container: None,
            ip_netns: ip.iter().map(|s| s.to_string()).collect(),
            processes: 1,
            first_pid: pid,
        }
    }

    #[test]
    fn commands_of_another_namespace_say_where_to_run() {
        let mut f = finding(&[
            "List them: tcpdoctor sockets --state close-wait --pid 9 -i",
            "Stopgap: ss -K state close-wait sport = :80",
        ]);
        point_commands_at(&mut f, &ns(&[], Some(4242)));
        assert_eq!(
            f.fix[0].command.as_deref(),
            Some("tcpdoctor sockets --netns 'pod default/web' --state close-wait --pid 9 -i")
        );
        assert_eq!(
            f.fix[1].command.as_deref(),
            Some("nsenter -t 4242 -n ss -K state close-wait sport = :80")
        );
        assert_eq!(f.fix.len(), 2, "every command is pointed: no closing note");

        let mut g = finding(&["Set: sysctl -w net.ipv4.tcp_fin_timeout=30"]);
        point_commands_at(&mut g, &ns(&["blue"], Some(1)));
        assert_eq!(
            g.fix[0].command.as_deref(),
            Some("ip netns exec blue sysctl -w net.ipv4.tcp_fin_timeout=30")
        );
        let mut h = finding(&["then run ss -tan in it"]);
        point_commands_at(&mut h, &ns(&["blue"], Some(1)));
        assert!(
            h.fix[1].text.contains("ip netns exec blue COMMAND"),
            "{}",
            h.fix[1].text
        );
    }

    #[test]
    fn steps_without_commands_are_left_alone() {
        let mut f = finding(&["Fix the code path that drops connections."]);
        point_commands_at(&mut f, &ns(&[], Some(1)));
        assert_eq!(f.fix.len(), 1);
    }
}
