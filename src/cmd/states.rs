//! `tcpdoctor states`: counts per state, streamed; with `--by`, counts per key.

use crate::collect::procfs::owners::{self, Wanted};
use crate::collect::sockets::{self, SocketQuery};
use crate::model::{GroupBy, GroupKey, GroupedCounts, Owners, StateCounts, StateSummary};
use crate::render::states::{GroupRow, Groups, StatesReport};
use crate::settings::{Common, StatesSettings};

use super::CmdError;

pub fn run(common: &Common, s: &StatesSettings) -> Result<StatesReport, CmdError> {
    let query = SocketQuery {
        states: s.states,
        ipv4: s.ipv4,
        ipv6: s.ipv6,
        tcp_info: false,
        source: common.source,
    };
    let mut notices = Vec::new();
    // Grouping by process needs the owner map before the dump streams past; every other
    // grouping is decided from the socket alone.
    let scan = (s.by == Some(GroupBy::Process))
        .then(|| owners::scan(&common.proc_root, Wanted::All, common.threads));
    let owner_map: Option<&Owners> = scan.as_ref().map(|(o, _)| o);

    let mut summary = StateSummary::default();
    let mut groups = GroupedCounts::default();
    let mut unowned = 0u64;
    let report = sockets::stream(&query, &common.proc_root, |sock| {
        summary.add(sock);
        let Some(by) = s.by else {
            return;
        };
        let key = match by {
            GroupBy::Process => {
                if sock.inode == 0 {
                    GroupKey::NoDescriptor
                } else {
                    match owner_map.and_then(|o| o.map.first(sock.inode)) {
                        Some(o) => GroupKey::Process(o.pid),
                        None => {
                            unowned += 1;
                            GroupKey::OwnerUnknown
                        }
                    }
                }
            }
            GroupBy::Peer => GroupKey::Peer(sock.remote.canonical_ip()),
            GroupBy::LocalPort => GroupKey::Port(sock.local.port),
            GroupBy::RemotePort => GroupKey::Port(sock.remote.port),
        };
        groups.add(key, sock);
    })?;
    notices.extend(report.notices);
    if let Some((_, stats)) = &scan {
        notices.extend(owners::missing_owner_notice(
            unowned,
            stats,
            owners::effective_uid(),
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
                comm: match key {
                    GroupKey::Process(pid) => owner_map
                        .and_then(|o| o.process(*pid))
                        .map(|p| p.comm.clone()),
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
    Ok(StatesReport {
        source: report.source,
        states: s.states,
        summary,
        groups,
        notices,
    })
}
