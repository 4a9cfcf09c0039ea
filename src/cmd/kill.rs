//! `tcpdoctor kill`: which sockets to destroy, then destroying them. Data only: `main`
//! shows the selection, asks, and prints what happened.
//!
//! Two steps with the user in between. [`plan`] reads each selected namespace (a
//! sock_diag dump that keeps every socket's exact id, then one owner scan for the
//! sockets found), applies the selectors and keeps the namespace handles open;
//! nothing is destroyed there. [`execute`] goes back into each namespace and sends one
//! SOCK_DESTROY per selected socket, in the order they were shown.
//!
//! The safeguards on what may be asked (a selector, never LISTEN, ESTABLISHED only
//! with --force) are checked in `settings`; the states are checked again here on
//! every socket the kernel returned, and `collect::netlink::destroy` refuses a listener
//! or a socket without its cookie whatever the caller asks.

use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};

use rustc_hash::FxHashSet;

use crate::collect::netlink::destroy::{self, DestroyTarget};
use crate::collect::netlink::{DumpStats, SockDiag};
use crate::collect::netns;
use crate::collect::owners::{self, ScanStats, Wanted};
use crate::collect::sockets::CollectError;
use crate::model::{
    Confirmation, KillOutcome, KillReport, KillRow, KillStop, Notice, NoticeCode, Owners, TcpState,
};
use crate::settings::{Common, KillSettings};

use super::netns::{select, Purpose, Selection};
use super::CmdError;

/// The selection, ready to be shown and then executed or declined.
#[derive(Debug)]
pub struct KillPlan {
    /// Open handles on the namespaces read, to go back into them.
    selection: Selection,
    /// (namespace index, target), one per row of `report`, in the same order.
    targets: Vec<(usize, DestroyTarget)>,
    /// Every row's outcome is `WouldDestroy` (dry run) or `NotTried`.
    pub report: KillReport,
}

/// Reads the selected namespaces and picks the sockets to destroy. Destroys nothing.
pub fn plan(common: &Common, s: &KillSettings) -> Result<KillPlan, CmdError> {
    let selection = select(common, Purpose::Sockets { owners: true })?;
    let ns_targets = &selection.targets;
    let dumps = netns::for_each(ns_targets, &common.proc_root, common.threads, |_, _| {
        let mut diag = SockDiag::open()?;
        let mut found: Vec<DestroyTarget> = Vec::new();
        let stats = destroy::list(&mut diag, s.states, |t| {
            // The kernel filtered by state already; a socket that comes back in another
            // state (LISTEN above all) is still never selected.
            if s.states.contains(t.socket.state)
                && t.socket.state != TcpState::Listen
                && s.filter.matches_socket(&t.socket)
            {
                found.push(t);
            }
        })?;
        Ok::<_, CollectError>((found, stats))
    });

    let single = ns_targets.len() == 1;
    let mut notices: Vec<Notice> = selection.notices.clone();
    let mut list: Vec<(usize, DestroyTarget)> = Vec::new();
    for (i, (target, dump)) in ns_targets.iter().zip(dumps).enumerate() {
        let info = &target.info;
        let Some((found, stats)) = netns::settle(dump, info, single, &mut notices)? else {
            continue;
        };
        notices.extend(dump_notices(
            &stats,
            (!single).then_some(info.name.as_str()),
        ));
        list.extend(found.into_iter().map(|t| (i, t)));
    }

    // Owners of the sockets in hand only: `--pid` selects by them, and every row
    // shows who holds the socket.
    let inodes: FxHashSet<u64> = list
        .iter()
        .map(|(_, t)| t.socket.inode)
        .filter(|i| *i != 0)
        .collect();
    let (owners, scan) = if inodes.is_empty() {
        (Owners::default(), ScanStats::default())
    } else {
        owners::scan(
            &common.proc_root,
            Wanted::Inodes(&inodes),
            &common.owner_scan,
        )
    };
    let unowned = list
        .iter()
        .filter(|(_, t)| t.socket.inode != 0 && owners.map.first(t.socket.inode).is_none())
        .count() as u64;
    notices.extend(owners::missing_owner_notice(
        unowned,
        &scan,
        owners::effective_uid(),
        common.replay,
    ));
    list.retain(|(_, t)| s.filter.matches_owner(&t.socket, &owners));
    // Namespaces in selection order (the current one first), then as `ss` sorts.
    list.sort_by_key(|(ns, t)| (*ns, t.socket.state, t.socket.local, t.socket.remote));

    let first = if s.dry_run {
        KillOutcome::WouldDestroy
    } else {
        KillOutcome::NotTried
    };
    let rows: Vec<KillRow> = list
        .iter()
        .map(|(ns, t)| KillRow {
            netns: u16::try_from(*ns).unwrap_or(u16::MAX),
            socket: t.socket,
            owners: s.filter.owners_of(&t.socket, &owners),
            outcome: first,
        })
        .collect();
    let hints = if rows.is_empty() {
        pid_hints(&common.proc_root, &s.filter.pids, &selection)
    } else {
        Vec::new()
    };
    let report = KillReport {
        states: s.states,
        filter: s.filter.clone(),
        confirmation: if s.dry_run {
            Confirmation::DryRun
        } else if s.yes {
            Confirmation::Flag
        } else {
            Confirmation::Answered
        },
        rows,
        owners,
        several: selection.several(),
        namespaces: selection.targets.iter().map(|t| t.info.clone()).collect(),
        stopped: None,
        notices,
        hints,
    };
    Ok(KillPlan {
        selection,
        targets: list,
        report,
    })
}

/// The user said no: nothing is sent to the kernel.
pub fn decline(plan: KillPlan) -> KillReport {
    let mut report = plan.report;
    report.confirmation = Confirmation::Declined;
    for r in &mut report.rows {
        r.outcome = KillOutcome::NotTried;
    }
    report
}

/// No stop yet; else a [`KillStop`] code + 1.
const GOING: u8 = 0;

/// Destroys every selected socket, namespace by namespace, one request each, and
/// records what the kernel answered. Once an answer shows that no request can succeed
/// (no CONFIG_INET_DIAG_DESTROY, no CAP_NET_ADMIN), the rest are not sent.
pub fn execute(common: &Common, plan: KillPlan) -> KillReport {
    let KillPlan {
        selection,
        targets,
        mut report,
    } = plan;
    if report.confirmation == Confirmation::DryRun {
        return report;
    }
    let wanted: FxHashSet<usize> = targets.iter().map(|(ns, _)| *ns).collect();
    let ns_targets: Vec<(usize, &netns::NsTarget)> = selection
        .targets
        .iter()
        .enumerate()
        .filter(|(i, _)| wanted.contains(i))
        .collect();
    let handles: Vec<&netns::NsTarget> = ns_targets.iter().map(|(_, t)| *t).collect();
    let stop = AtomicU8::new(GOING);
    // One worker: requests go out in the order shown, and a stop seen in one
    // namespace holds for the next.
    let results = netns::for_each(&handles, &common.proc_root, 1, |target, _| {
        let ns = ns_targets
            .iter()
            .find(|(_, t)| std::ptr::eq(*t, target))
            .map_or(usize::MAX, |(i, _)| *i);
        let mine = targets.iter().filter(|(n, _)| *n == ns).map(|(_, t)| t);
        let mut diag = match SockDiag::open() {
            Ok(d) => d,
            Err(e) => {
                let errno = match &e {
                    crate::collect::netlink::DumpError::Open(io) => io.raw_os_error(),
                    _ => None,
                };
                let o = KillOutcome::Failed {
                    errno: errno.unwrap_or(libc::EIO),
                };
                return mine.map(|_| o).collect::<Vec<_>>();
            }
        };
        mine.map(|t| {
            if stop.load(Ordering::Relaxed) != GOING {
                return KillOutcome::NotTried;
            }
            let o = diag.destroy(t);
            let halt = match o {
                // Before 6.0 a TIME_WAIT socket cannot be destroyed even where others can.
                KillOutcome::Unsupported if t.socket.state != TcpState::TimeWait => {
                    Some(KillStop::Unsupported)
                }
                KillOutcome::NotPermitted => Some(KillStop::NotPermitted),
                _ => None,
            };
            if let Some(h) = halt {
                stop.store(stop_code(h), Ordering::Relaxed);
            }
            o
        })
        .collect::<Vec<_>>()
    });
    // Rows are in `targets` order; hand each namespace's outcomes back in that order.
    let mut by_ns: Vec<(usize, std::vec::IntoIter<KillOutcome>)> = Vec::new();
    for ((i, target), r) in ns_targets.iter().zip(results) {
        match r {
            Ok(outcomes) => by_ns.push((*i, outcomes.into_iter())),
            Err(e) => {
                let info = &target.info;
                report.notices.push(Notice::new(
                    NoticeCode::NetnsUnreadable,
                    format!(
                        "netns {} (net:[{}]): nothing destroyed there: {e}",
                        info.name, info.inode
                    ),
                ));
            }
        }
    }
    for (row, (ns, _)) in report.rows.iter_mut().zip(&targets) {
        row.outcome = by_ns
            .iter_mut()
            .find(|(i, _)| i == ns)
            .and_then(|(_, it)| it.next())
            .unwrap_or(KillOutcome::NotTried);
    }
    report.stopped = match stop.load(Ordering::Relaxed) {
        GOING => None,
        c if c == stop_code(KillStop::Unsupported) => Some(KillStop::Unsupported),
        _ => Some(KillStop::NotPermitted),
    };
    report
}

fn stop_code(s: KillStop) -> u8 {
    match s {
        KillStop::Unsupported => 1,
        KillStop::NotPermitted => 2,
    }
}

/// Notes about a dump that was not clean.
fn dump_notices(stats: &DumpStats, netns: Option<&str>) -> Vec<Notice> {
    let prefix = netns.map_or(String::new(), |n| format!("netns {n}: "));
    let mut out = Vec::new();
    if stats.interrupted {
        out.push(Notice::new(
            NoticeCode::DumpInterrupted,
            format!("{prefix}the socket table changed while it was read: a socket may be missing from the list"),
        ));
    }
    if stats.skipped > 0 {
        out.push(Notice::new(
            NoticeCode::RecordsSkipped,
            format!(
                "{prefix}{} malformed sock_diag records skipped",
                stats.skipped
            ),
        ));
    }
    out
}

/// Why `--pid` matched nothing, when it can be told: no such process, or a process in
/// a network namespace that was not read.
fn pid_hints(proc_root: &Path, pids: &[u32], selection: &Selection) -> Vec<String> {
    let mut hints = Vec::new();
    for pid in pids {
        let link = proc_root.join(pid.to_string()).join("ns/net");
        match netns::ns_link_inode(&link) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                hints.push(format!("no process has pid {pid}"));
            }
            Ok(Some(inode)) if !selection.targets.iter().any(|t| t.info.inode == inode) => {
                hints.push(format!(
                    "pid {pid} is in another network namespace (net:[{inode}]): add --netns {pid}"
                ));
            }
            _ => {}
        }
    }
    hints
}
