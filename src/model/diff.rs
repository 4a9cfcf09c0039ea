//! What `tcpdoctor diff BEFORE AFTER` shows, as plain data: two recordings of a host
//! side by side, the proof that a fix worked (or did not).

use serde::Serialize;

use super::{Notice, Severity, StateCounts};

/// One side of the comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffSide {
    /// What was read: `snapshot 'before.tdsnap'`, `'ss.txt' (ss)`.
    pub origin: String,
    pub hostname: String,
    /// 0 when the recording does not say (imported text).
    pub taken_at_unix_ms: u64,
}

/// Counts of one group (a process, a destination) on each side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupDelta {
    /// `nginx`, `127.0.0.1:5432`, `served :8080`.
    pub key: String,
    /// Pids the group had on each side (a process restarted by the fix has new ones).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pids_before: Vec<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pids_after: Vec<u32>,
    pub before: StateCounts,
    pub after: StateCounts,
}

impl GroupDelta {
    /// How far the counts moved, for ordering: the sum of per-state changes.
    pub fn movement(&self) -> u64 {
        self.before
            .0
            .iter()
            .zip(self.after.0.iter())
            .map(|(a, b)| a.abs_diff(*b))
            .sum()
    }
}

/// A finding as the comparison names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FindingRef {
    pub rule_id: &'static str,
    pub severity: Severity,
    pub title: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

/// A finding on both sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FindingPair {
    pub before: FindingRef,
    pub after: FindingRef,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FindingsDelta {
    /// Before only: fixed.
    pub resolved: Vec<FindingRef>,
    /// After only.
    pub new: Vec<FindingRef>,
    pub unchanged: Vec<FindingPair>,
}

/// A rate on each side, per second; `None` when that side has no rate (one reading).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateDelta {
    /// `TcpExt.ListenOverflows`, `time_wait_closing`.
    pub name: String,
    pub before: Option<f64>,
    pub after: Option<f64>,
}

/// Everything `diff` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffReport {
    pub before: DiffSide,
    pub after: DiffSide,
    /// Sockets per state, every state.
    pub states_before: StateCounts,
    pub states_after: StateCounts,
    /// Per process name, most moved first (cut to `--top`, the rest summed in
    /// `processes_rest`).
    pub processes: Vec<GroupDelta>,
    pub processes_rest: Option<GroupDelta>,
    /// Per destination (remote address:port of connections this host opened) or port
    /// served (`served :PORT`), most moved first.
    pub destinations: Vec<GroupDelta>,
    pub destinations_rest: Option<GroupDelta>,
    pub findings: FindingsDelta,
    /// Only rates that either side has.
    pub rates: Vec<RateDelta>,
    pub notices: Vec<Notice>,
}
