//! `tcpdoctor states`: counts per state, streamed; with `--by`, counts per key. With
//! `--netns`, each selected namespace is read on worker threads and the counts added up
//! (and kept per namespace for `--by netns` and the JSON).

use crate::collect::netns::{self, settle};
use crate::collect::owners::{self, Wanted};
use crate::collect::sockets::{self, SocketQuery, StreamReport};
use crate::model::{
    GroupBy, GroupKey, GroupRow, GroupedCounts, Groups, NamespaceCounts, Notice, Owners, Source,
    StateCounts, StateSummary, StatesReport,
};
use crate::settings::{Common, StatesSettings};

use super::netns::{select, Purpose};
use super::CmdError;

/// What one namespace gave.
struct Part {
    summary: StateSummary,
    groups: GroupedCounts,
    unowned: u64,
    report: StreamReport,
}

pub fn run(common: &Common, s: &StatesSettings) -> Result<StatesReport, CmdError> {
    if !common.from.is_empty() {
        return run_recorded(common, s);
    }
    let owners_needed = s.by == Some(GroupBy::Process);
    let selection = select(
        common,
        Purpose::Sockets {
            owners: owners_needed,
        },
    )?;
    let query = SocketQuery {
        states: s.states,
        ipv4: s.ipv4,
        ipv6: s.ipv6,
        tcp_info: false,
        source: common.source,
    };
    let mut notices: Vec<Notice> = selection.notices.clone();
    // Grouping by process needs the owner map before the dumps stream past; every other
    // grouping is decided from the socket alone.
    let scan =
        owners_needed.then(|| owners::scan(&common.proc_root, Wanted::All, &common.owner_scan));
    let owner_map: Option<&Owners> = scan.as_ref().map(|(o, _)| o);
    let targets = &selection.targets;
    let parts = netns::for_each(targets, &common.proc_root, common.threads, |t, roots| {
        let inode = t.info.inode;
        let mut summary = StateSummary::default();
        let mut groups = GroupedCounts::default();
        let mut unowned = 0u64;
        let report = sockets::stream(&query, &roots.net, |sock| {
            summary.add(sock);
            if let Some(by) = s.by {
                let key = group_key(by, sock, inode, owner_map, &mut unowned);
                groups.add(key, sock);
            }
        });
        report.map(|report| Part {
            summary,
            groups,
            unowned,
            report,
        })
    });

    let single = targets.len() == 1;
    let mut settled = Vec::new();
    for (t, part) in targets.iter().zip(parts) {
        if let Some(part) = settle(part, &t.info, single, &mut notices)? {
            settled.push((t.info.clone(), part));
        }
    }
    Ok(report(
        s,
        settled,
        scan.as_ref(),
        common.replay,
        selection.all,
        notices,
    ))
}

/// The row a socket counts in.
fn group_key(
    by: GroupBy,
    sock: &crate::model::Socket,
    netns: u64,
    owner_map: Option<&Owners>,
    unowned: &mut u64,
) -> GroupKey {
    match by {
        GroupBy::Process => {
            if sock.inode == 0 {
                GroupKey::NoDescriptor
            } else {
                match owner_map.and_then(|o| o.map.first(sock.inode)) {
                    Some(o) => GroupKey::Process(o.pid),
                    None => {
                        *unowned += 1;
                        GroupKey::OwnerUnknown
                    }
                }
            }
        }
        GroupBy::Peer => GroupKey::Peer(sock.remote.canonical_ip()),
        GroupBy::LocalPort => GroupKey::Port(sock.local.port),
        GroupBy::RemotePort => GroupKey::Port(sock.remote.port),
        GroupBy::Netns => GroupKey::Netns(netns),
    }
}

/// `states --from`: the recorded namespaces, counted in one pass over the recording.
fn run_recorded(common: &Common, s: &StatesSettings) -> Result<StatesReport, CmdError> {
    let mut rec = super::from::open(common)?;
    let owners_needed = s.by == Some(GroupBy::Process);
    let (selected, all) = super::from::select(
        &rec,
        common,
        Purpose::Sockets {
            owners: owners_needed,
        },
    )?;
    let mut notices = rec.missing.clone();
    let inodes: Vec<u64> = selected
        .iter()
        .map(|i| rec.namespaces[*i].inode())
        .collect();
    let mut parts: Vec<Part> = selected
        .iter()
        .map(|i| Part {
            summary: StateSummary::default(),
            groups: GroupedCounts::default(),
            unowned: 0,
            report: StreamReport {
                source: rec.namespaces[*i].source.unwrap_or(Source::Proc),
                notices: Vec::new(),
            },
        })
        .collect();
    let owners = rec.owners.take();
    if owners_needed && owners.is_none() {
        notices.push(crate::collect::import::no_owners_notice(&rec.origin));
    }
    let query = crate::collect::snapshot::RecordedQuery {
        states: s.states,
        ipv4: s.ipv4,
        ipv6: s.ipv6,
        tcp_info: false,
    };
    let streamed = rec.stream(&query, |ns, sock| {
        let Some(k) = inodes.iter().position(|i| *i == ns) else {
            return;
        };
        let part = &mut parts[k];
        part.summary.add(sock);
        if let Some(by) = s.by {
            let key = group_key(by, sock, ns, owners.as_ref(), &mut part.unowned);
            part.groups.add(key, sock);
        }
    })?;
    notices.extend(streamed);
    let settled = selected
        .iter()
        .zip(parts)
        .filter_map(|(i, p)| Some((rec.namespaces[*i].info.clone()?, p)))
        .collect();
    let scan = owners.map(|o| (o, crate::collect::owners::ScanStats::default()));
    Ok(report(s, settled, scan.as_ref(), true, all, notices))
}

/// The report from each namespace's counts.
fn report(
    s: &StatesSettings,
    settled: Vec<(crate::model::NetnsInfo, Part)>,
    scan: Option<&(Owners, crate::collect::owners::ScanStats)>,
    replay: bool,
    netns_all: bool,
    mut notices: Vec<Notice>,
) -> StatesReport {
    let owner_map: Option<&Owners> = scan.map(|(o, _)| o);
    let mut summary = StateSummary::default();
    let mut groups = GroupedCounts::default();
    let mut unowned = 0u64;
    let mut source: Option<Source> = None;
    let mut namespaces = Vec::new();
    for (info, part) in settled {
        let info = &info;
        source.get_or_insert(part.report.source);
        for n in part.report.notices {
            if !notices.contains(&n) {
                notices.push(n);
            }
        }
        summary.ipv4.merge(&part.summary.ipv4);
        summary.ipv6.merge(&part.summary.ipv6);
        groups.merge(&part.groups);
        unowned += part.unowned;
        namespaces.push(NamespaceCounts {
            info: info.clone(),
            summary: part.summary,
        });
    }
    if let Some((_, stats)) = scan {
        notices.extend(owners::missing_owner_notice(
            unowned,
            stats,
            owners::effective_uid(),
            replay,
        ));
    }

    let groups = s.by.map(|by| {
        let sorted = groups.sorted();
        let total_groups = sorted.len();
        let keep = if s.top == 0 {
            total_groups
        } else {
            s.top.min(total_groups)
        };
        let mut rest = StateCounts::default();
        for (_, c) in &sorted[keep..] {
            rest.merge(c);
        }
        let rows = sorted[..keep]
            .iter()
            .map(|(key, counts)| GroupRow {
                key: *key,
                name: match key {
                    GroupKey::Process(pid) => owner_map
                        .and_then(|o| o.process(*pid))
                        .map(|p| p.comm.clone()),
                    GroupKey::Netns(inode) => namespaces
                        .iter()
                        .find(|n| n.info.inode == *inode)
                        .map(|n| n.info.name.clone()),
                    _ => None,
                },
                counts: *counts,
            })
            .collect();
        Groups {
            by,
            rows,
            total_groups,
            rest,
        }
    });
    StatesReport {
        source: source.unwrap_or(Source::Netlink),
        states: s.states,
        summary,
        groups,
        netns_all,
        namespaces,
        notices,
    }
}
