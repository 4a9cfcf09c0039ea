//! `tcpdoctor sockets`: matching sockets with their owners.
//!
//! The dumps and the /proc owner scan are independent, so they run at the same time:
//! the scan on its own threads, the dumps on worker threads (one namespace at a time
//! each, with `--netns`).

use crate::collect::netns::{self, settle};
use crate::collect::owners::{self, Wanted};
use crate::collect::sockets::{self, SocketQuery};
use crate::model::{Notice, Socket, SocketsReport, Source};
use crate::settings::{Common, SocketsSettings};

use super::netns::{select, Purpose};
use super::CmdError;

pub fn run(common: &Common, s: &SocketsSettings) -> Result<SocketsReport, CmdError> {
    if !common.from.is_empty() {
        return run_recorded(common, s);
    }
    let selection = select(common, Purpose::Sockets { owners: s.owners })?;
    let query = SocketQuery {
        states: s.states,
        ipv4: s.ipv4,
        ipv6: s.ipv6,
        tcp_info: s.tcp_info,
        source: common.source,
    };
    let targets = &selection.targets;
    if s.owners {
        // Dump and scan start together only if the BPF programs are loaded first.
        owners::prepare(&common.proc_root, &common.owner_scan);
    }
    let (dumps, scan) = std::thread::scope(|scope| {
        let scan = s.owners.then(|| {
            scope.spawn(|| owners::scan(&common.proc_root, Wanted::All, &common.owner_scan))
        });
        let dumps = netns::for_each(targets, &common.proc_root, common.threads, |_, roots| {
            let mut list: Vec<Socket> = Vec::new();
            sockets::stream(&query, &roots.net, |sock| {
                if s.filter.matches_socket(sock) {
                    list.push(*sock);
                }
            })
            .map(|r| (r, list))
        });
        // A panic in the scan is a bug; treat it as "no owners" rather than abort.
        (dumps, scan.and_then(|h| h.join().ok()))
    });

    let several = selection.several();
    let single = targets.len() == 1;
    let mut notices: Vec<Notice> = selection.notices.clone();
    let mut source: Option<Source> = None;
    // (namespace index, socket)
    let mut list: Vec<(u16, Socket)> = Vec::new();
    for (i, (t, dump)) in targets.iter().zip(dumps).enumerate() {
        let info = &t.info;
        let Some((report, sockets)) = settle(dump, info, single, &mut notices)? else {
            continue;
        };
        source.get_or_insert(report.source);
        for n in report.notices {
            if !notices.contains(&n) {
                notices.push(n);
            }
        }
        let idx = u16::try_from(i).unwrap_or(u16::MAX);
        list.extend(sockets.into_iter().map(|s| (idx, s)));
    }

    let (owners, stats) = match scan {
        Some((o, st)) => (Some(o), Some(st)),
        None => (None, None),
    };
    let namespaces = if several {
        targets.iter().map(|t| t.info.clone()).collect()
    } else {
        Vec::new()
    };
    Ok(finish(
        s,
        list,
        owners,
        stats,
        common.replay,
        source,
        namespaces,
        notices,
    ))
}

/// `sockets --from`: the recorded namespaces' sockets, in one pass over the recording.
fn run_recorded(common: &Common, s: &SocketsSettings) -> Result<SocketsReport, CmdError> {
    let mut rec = super::from::open(common)?;
    let (selected, all) = super::from::select(&rec, common, Purpose::Sockets { owners: s.owners })?;
    let mut notices = rec.missing.clone();
    let inodes: Vec<u64> = selected
        .iter()
        .map(|i| rec.namespaces[*i].inode())
        .collect();
    let query = crate::collect::snapshot::RecordedQuery {
        states: s.states,
        ipv4: s.ipv4,
        ipv6: s.ipv6,
        tcp_info: s.tcp_info,
    };
    let mut list: Vec<(u16, Socket)> = Vec::new();
    let streamed = rec.stream(&query, |ns, sock| {
        if let Some(k) = inodes.iter().position(|i| *i == ns) {
            if s.filter.matches_socket(sock) {
                list.push((u16::try_from(k).unwrap_or(u16::MAX), *sock));
            }
        }
    })?;
    notices.extend(streamed);
    let owners = if s.owners { rec.owners.take() } else { None };
    if s.owners && owners.is_none() {
        notices.push(crate::collect::import::no_owners_notice(&rec.origin));
    }
    let source = selected
        .first()
        .and_then(|i| rec.namespaces[*i].source)
        .or(Some(Source::Proc));
    let namespaces = if selected.len() > 1 || all {
        selected
            .iter()
            .filter_map(|i| rec.namespaces[*i].info.clone())
            .collect()
    } else {
        Vec::new()
    };
    let stats = owners
        .as_ref()
        .map(|_| crate::collect::owners::ScanStats::default());
    Ok(finish(
        s, list, owners, stats, true, source, namespaces, notices,
    ))
}

/// Owner filters, order and `--limit`, as for a live read.
#[allow(clippy::too_many_arguments)]
fn finish(
    s: &SocketsSettings,
    mut list: Vec<(u16, Socket)>,
    owners: Option<crate::model::Owners>,
    stats: Option<crate::collect::owners::ScanStats>,
    replay: bool,
    source: Option<Source>,
    namespaces: Vec<crate::model::NetnsInfo>,
    mut notices: Vec<Notice>,
) -> SocketsReport {
    if let Some(o) = &owners {
        list.retain(|(_, sock)| s.filter.matches_owner(sock, o));
        let unowned = list
            .iter()
            .filter(|(_, sock)| sock.inode != 0 && o.map.first(sock.inode).is_none())
            .count() as u64;
        if let Some(st) = &stats {
            notices.extend(owners::missing_owner_notice(
                unowned,
                st,
                owners::effective_uid(),
                replay,
            ));
        }
    }
    // Namespaces in their selection order (the current one first), then as `ss` sorts.
    list.sort_unstable_by_key(|(ns, a)| (*ns, a.state, a.local, a.remote));
    let matched = list.len();
    if let Some(limit) = s.limit {
        list.truncate(limit);
    }
    let (netns_of, sockets): (Vec<u16>, Vec<Socket>) = list.into_iter().unzip();
    let several = !namespaces.is_empty();
    SocketsReport {
        source: source.unwrap_or(Source::Netlink),
        sockets,
        matched,
        owners,
        filter: s.filter.clone(),
        tcp_info: s.tcp_info,
        namespaces,
        netns_of: if several { netns_of } else { Vec::new() },
        notices,
    }
}
