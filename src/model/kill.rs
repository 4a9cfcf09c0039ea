//! What `tcpdoctor kill` selected and what happened to each socket, as plain data:
//! `cmd::kill` builds it, `render::kill` prints it. No I/O here.

use std::collections::BTreeMap;

use super::{NetnsInfo, Notice, Owner, Owners, Socket, SocketFilter, StateSet};

/// What happened to one selected socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillOutcome {
    /// `--dry-run`: listed only.
    WouldDestroy,
    /// Not asked of the kernel: the user declined, or an earlier answer showed that
    /// none could be (see [`KillStop`]).
    NotTried,
    /// The kernel reset the connection and unhashed the socket.
    Destroyed,
    /// The socket was gone when the request came (closed, reset, or its 4-tuple now
    /// belongs to another socket: the cookie no longer matches). Nothing was destroyed,
    /// and nothing needs to be.
    AlreadyGone,
    /// No CAP_NET_ADMIN in the socket's network namespace (EPERM).
    NotPermitted,
    /// The kernel cannot destroy this socket (EOPNOTSUPP): built without
    /// CONFIG_INET_DIAG_DESTROY, or a TIME_WAIT socket before Linux 6.0.
    Unsupported,
    /// Any other error, with its errno.
    Failed { errno: i32 },
}

impl KillOutcome {
    /// The name used in JSON.
    pub fn name(self) -> &'static str {
        match self {
            KillOutcome::WouldDestroy => "would_destroy",
            KillOutcome::NotTried => "not_tried",
            KillOutcome::Destroyed => "destroyed",
            KillOutcome::AlreadyGone => "already_gone",
            KillOutcome::NotPermitted => "not_permitted",
            KillOutcome::Unsupported => "unsupported",
            KillOutcome::Failed { .. } => "failed",
        }
    }

    /// Every name, in the order JSON counts list them.
    pub const NAMES: [&'static str; 7] = [
        "would_destroy",
        "not_tried",
        "destroyed",
        "already_gone",
        "not_permitted",
        "unsupported",
        "failed",
    ];

    /// The request was answered with an error (gone sockets are not errors).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            KillOutcome::NotPermitted | KillOutcome::Unsupported | KillOutcome::Failed { .. }
        )
    }
}

/// Why the remaining sockets were not tried: the first answer showed that no request
/// can succeed, so the rest are not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillStop {
    /// EOPNOTSUPP for a connection (not TIME_WAIT): the kernel was built without
    /// CONFIG_INET_DIAG_DESTROY.
    Unsupported,
    /// EPERM: no CAP_NET_ADMIN in the namespace.
    NotPermitted,
}

impl KillStop {
    pub fn name(self) -> &'static str {
        match self {
            KillStop::Unsupported => "unsupported",
            KillStop::NotPermitted => "not_permitted",
        }
    }
}

/// How the destruction was confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// `--dry-run`: nothing is asked, nothing destroyed.
    DryRun,
    /// `--yes`.
    Flag,
    /// The user answered yes on the terminal.
    Answered,
    /// The user answered anything else.
    Declined,
}

/// One selected socket.
#[derive(Debug, Clone)]
pub struct KillRow {
    /// Index into [`KillReport::namespaces`].
    pub netns: u16,
    pub socket: Socket,
    /// Every (pid, fd) holding it, the processes `--pid` named first; empty when no
    /// descriptor refers to it (inode 0) or its owner could not be seen.
    pub owners: Vec<Owner>,
    pub outcome: KillOutcome,
}

/// Everything `kill` shows: the selection, then each socket's outcome.
#[derive(Debug, Clone)]
pub struct KillReport {
    /// States asked for (never LISTEN).
    pub states: StateSet,
    pub filter: SocketFilter,
    pub confirmation: Confirmation,
    /// Selected sockets: by namespace, state, local then remote endpoint.
    pub rows: Vec<KillRow>,
    /// Owners of the selected sockets (processes by pid).
    pub owners: Owners,
    /// The namespaces read; [`KillRow::netns`] indexes it.
    pub namespaces: Vec<NetnsInfo>,
    /// More than one namespace was read: rows name theirs.
    pub several: bool,
    pub stopped: Option<KillStop>,
    pub notices: Vec<Notice>,
    /// Why nothing matched, when a likely reason is known (a `--pid` in another
    /// network namespace).
    pub hints: Vec<String>,
}

impl KillReport {
    /// How many rows had this outcome name ([`KillOutcome::name`]).
    pub fn count(&self, name: &str) -> u64 {
        self.rows
            .iter()
            .filter(|r| r.outcome.name() == name)
            .count() as u64
    }

    /// Rows whose request failed.
    pub fn failures(&self) -> u64 {
        self.rows.iter().filter(|r| r.outcome.is_failure()).count() as u64
    }

    /// The namespace of a row.
    pub fn netns(&self, row: &KillRow) -> Option<&NetnsInfo> {
        self.namespaces.get(usize::from(row.netns))
    }

    /// Processes that still hold descriptors of destroyed sockets: pid -> how many
    /// destroyed sockets it holds. Destroying a socket does not close descriptors: the
    /// process's next call on each fails (ECONNABORTED once, then EOF or EPIPE) and the
    /// descriptor stays open until the process closes it.
    pub fn descriptors_kept(&self) -> BTreeMap<u32, u64> {
        let mut by_pid: BTreeMap<u32, u64> = BTreeMap::new();
        for r in &self.rows {
            if r.outcome != KillOutcome::Destroyed {
                continue;
            }
            // A socket shared after fork counts once per process holding it.
            let mut pids: Vec<u32> = r.owners.iter().map(|o| o.pid).collect();
            pids.sort_unstable();
            pids.dedup();
            for pid in pids {
                *by_pid.entry(pid).or_insert(0) += 1;
            }
        }
        by_pid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Family, TcpState};

    fn row(outcome: KillOutcome, owners: &[(u32, u32)]) -> KillRow {
        KillRow {
            netns: 0,
            socket: Socket {
                family: Family::V4,
                state: TcpState::CloseWait,
                local: Endpoint::new("127.0.0.1".parse().expect("ip"), 8080),
                remote: Endpoint::new("127.0.0.1".parse().expect("ip"), 40000),
                inode: if owners.is_empty() { 0 } else { 9 },
                uid: 0,
                recv_q: 1,
                send_q: 0,
                timer: None,
                cookie: Some(1),
                tcp_info: None,
            },
            owners: owners
                .iter()
                .map(|(pid, fd)| Owner { pid: *pid, fd: *fd })
                .collect(),
            outcome,
        }
    }

    fn report(rows: Vec<KillRow>) -> KillReport {
        KillReport {
            states: [TcpState::CloseWait].into_iter().collect(),
            filter: SocketFilter::default(),
            confirmation: Confirmation::Flag,
            rows,
            owners: Owners::default(),
            namespaces: Vec::new(),
            several: false,
            stopped: None,
            notices: Vec::new(),
            hints: Vec::new(),
        }
    }

    #[test]
    fn kept_descriptors_count_destroyed_sockets_per_process() {
        let r = report(vec![
            row(KillOutcome::Destroyed, &[(10, 3)]),
            row(KillOutcome::Destroyed, &[(10, 4), (11, 4)]),
            // The same process holding one socket twice (dup) counts it once.
            row(KillOutcome::Destroyed, &[(12, 5), (12, 6)]),
            row(KillOutcome::AlreadyGone, &[(10, 7)]),
            row(KillOutcome::Failed { errno: 5 }, &[(10, 8)]),
            row(KillOutcome::Destroyed, &[]),
        ]);
        let kept: Vec<(u32, u64)> = r.descriptors_kept().into_iter().collect();
        assert_eq!(kept, vec![(10, 2), (11, 1), (12, 1)]);
        assert_eq!(r.count("destroyed"), 4);
        assert_eq!(r.count("already_gone"), 1);
        assert_eq!(r.failures(), 1);
    }

    #[test]
    fn outcome_names_are_the_listed_ones() {
        for o in [
            KillOutcome::WouldDestroy,
            KillOutcome::NotTried,
            KillOutcome::Destroyed,
            KillOutcome::AlreadyGone,
            KillOutcome::NotPermitted,
            KillOutcome::Unsupported,
            KillOutcome::Failed { errno: 1 },
        ] {
            assert!(KillOutcome::NAMES.contains(&o.name()), "{o:?}");
        }
        assert!(!KillOutcome::AlreadyGone.is_failure());
        assert!(KillOutcome::NotPermitted.is_failure());
    }
}
