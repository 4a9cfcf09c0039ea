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
pub mod orphans;
pub mod sysctl_audit;
pub mod time_wait_pressure;
pub mod trend;
pub mod util;

use serde::{Deserialize, Serialize};

use crate::model::{Finding, Snapshot};

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

/// A rule: its stable id and its check.
pub struct Rule {
    pub id: &'static str,
    pub check: fn(&Snapshot, &Thresholds) -> Vec<Finding>,
}

/// Every rule, in the order the report lists them within a severity.
pub const RULES: &[Rule] = &[
    Rule {
        id: close_wait_leak::ID,
        check: close_wait_leak::check,
    },
    Rule {
        id: close_wait_unaccepted::ID,
        check: close_wait_unaccepted::check,
    },
    Rule {
        id: listen_overflow::ID,
        check: listen_overflow::check,
    },
    Rule {
        id: ephemeral_port_exhaustion::ID,
        check: ephemeral_port_exhaustion::check,
    },
    Rule {
        id: time_wait_pressure::ID,
        check: time_wait_pressure::check,
    },
    Rule {
        id: orphans::ID,
        check: orphans::check,
    },
    Rule {
        id: fd_exhaustion::ID,
        check: fd_exhaustion::check,
    },
    Rule {
        id: conntrack_table::ID,
        check: conntrack_table::check,
    },
    Rule {
        id: sysctl_audit::ID,
        check: sysctl_audit::check,
    },
    Rule {
        id: kernel_log::ID,
        check: kernel_log::check,
    },
];

/// Runs every rule; findings come back worst first, then in rule order.
pub fn run(snapshot: &Snapshot, t: &Thresholds) -> Vec<Finding> {
    let mut out: Vec<Finding> = RULES.iter().flat_map(|r| (r.check)(snapshot, t)).collect();
    // Stable sort keeps rule order within one severity.
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}
