//! What each command shows, as plain data: `check`, `states` and `sockets` build these,
//! renderers turn them into bytes. Neither side imports the other; both import this.

use super::{
    Finding, GroupBy, GroupKey, HostSnapshot, NetnsInfo, Notice, Owners, Socket, SocketFilter,
    Source, StateCounts, StateSet, StateSummary,
};

/// What `lint` shows: each configuration looked at (with its load error, if any) and
/// the findings of the rules that judge configurations alone.
#[derive(Debug, Clone)]
pub struct LintReport {
    /// `nginx`.
    pub target: &'static str,
    pub configs: Vec<super::nginx::NginxInstance>,
    pub findings: Vec<Finding>,
    pub notices: Vec<Notice>,
}

impl LintReport {
    /// Some configuration could not be read or parsed.
    pub fn failed(&self) -> bool {
        self.configs.iter().any(|c| c.error.is_some())
    }
}

/// What `check` shows.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub hostname: String,
    pub host: HostSnapshot,
    pub findings: Vec<Finding>,
}

impl CheckReport {
    /// What could not be seen that may hide a problem (other namespaces, owners,
    /// counters, the kernel log...): the notices whose code
    /// [hides problems](super::NoticeCode::hides_problems).
    pub fn gaps(&self) -> Vec<Notice> {
        self.host.gaps()
    }

    /// Whether everything the rules judge was seen: no finding can be missing for lack
    /// of evidence. `check` exits 4 instead of 0 when it found no problem but this is
    /// false.
    pub fn complete(&self) -> bool {
        self.host.complete()
    }
}

/// Everything `states` shows.
#[derive(Debug, Clone)]
pub struct StatesReport {
    pub source: Source,
    /// States that were asked for; the others were not counted.
    pub states: StateSet,
    pub summary: StateSummary,
    pub groups: Option<Groups>,
    /// Every namespace on the host was read (`--netns all`).
    pub netns_all: bool,
    /// The namespaces read and their own counts (one: the current one, by default).
    pub namespaces: Vec<NamespaceCounts>,
    pub notices: Vec<Notice>,
}

/// One namespace's counts.
#[derive(Debug, Clone)]
pub struct NamespaceCounts {
    pub info: NetnsInfo,
    pub summary: StateSummary,
}

#[derive(Debug, Clone)]
pub struct Groups {
    pub by: GroupBy,
    /// Rows shown, biggest first.
    pub rows: Vec<GroupRow>,
    /// Groups in all (rows may be cut by --top).
    pub total_groups: usize,
    /// Counts of the groups not shown.
    pub rest: StateCounts,
}

#[derive(Debug, Clone)]
pub struct GroupRow {
    pub key: GroupKey,
    /// Process name for process groups, namespace name for namespace groups.
    pub name: Option<String>,
    pub counts: StateCounts,
}

impl GroupRow {
    /// The text shown in the first column.
    pub fn label(&self) -> String {
        match self.key {
            GroupKey::Process(pid) => match &self.name {
                Some(c) => format!("{c} ({pid})"),
                None => format!("pid {pid}"),
            },
            GroupKey::Netns(inode) => match &self.name {
                Some(n) => format!("{n} (net:[{inode}])"),
                None => format!("net:[{inode}]"),
            },
            GroupKey::NoDescriptor => "(no fd: time-wait, orphan, unaccepted)".to_string(),
            GroupKey::OwnerUnknown => "(owner not visible)".to_string(),
            GroupKey::Peer(ip) if ip.is_unspecified() => "* (listeners)".to_string(),
            GroupKey::Peer(ip) => ip.to_string(),
            GroupKey::Port(p) => p.to_string(),
        }
    }
}

/// Everything `sockets` shows.
#[derive(Debug, Clone)]
pub struct SocketsReport {
    pub source: Source,
    /// Matching sockets, in display order, already cut to `--limit`.
    pub sockets: Vec<Socket>,
    /// How many matched before `--limit`.
    pub matched: usize,
    /// `None` when owners were not looked up (`--no-owners`).
    pub owners: Option<Owners>,
    /// The filters the sockets were chosen by: owners they asked for (`--comm`,
    /// `--pid`) are shown first.
    pub filter: SocketFilter,
    pub tcp_info: bool,
    /// The namespaces read, when there are several (`--netns`); empty otherwise.
    pub namespaces: Vec<NetnsInfo>,
    /// Index into `namespaces` of each socket (same order as `sockets`); empty when
    /// `namespaces` is.
    pub netns_of: Vec<u16>,
    pub notices: Vec<Notice>,
}

impl SocketsReport {
    /// The namespace of the `i`th socket, when several were read.
    pub fn netns(&self, i: usize) -> Option<&NetnsInfo> {
        self.namespaces.get(usize::from(*self.netns_of.get(i)?))
    }
}
