//! `tcpdoctor sockets`: matching sockets with their owners.
//!
//! The dump and the /proc owner scan are independent, so they run at the same time:
//! the scan on worker threads, the dump on this one.

use crate::collect::procfs::owners::{self, Wanted};
use crate::collect::sockets::{self, SocketQuery};
use crate::model::Socket;
use crate::render::sockets::SocketsReport;
use crate::settings::{Common, SocketsSettings};

use super::CmdError;

pub fn run(common: &Common, s: &SocketsSettings) -> Result<SocketsReport, CmdError> {
    let query = SocketQuery {
        states: s.states,
        ipv4: s.ipv4,
        ipv6: s.ipv6,
        tcp_info: s.tcp_info,
        source: common.source,
    };
    let mut list: Vec<Socket> = Vec::new();
    let (dump, scan) = std::thread::scope(|scope| {
        let scan = s
            .owners
            .then(|| scope.spawn(|| owners::scan(&common.proc_root, Wanted::All, common.threads)));
        let dump = sockets::stream(&query, &common.proc_root, |sock| {
            if s.filter.matches_socket(sock) {
                list.push(*sock);
            }
        });
        // A panic in the scan is a bug; treat it as "no owners" rather than abort.
        (dump, scan.and_then(|h| h.join().ok()))
    });
    let dump = dump?;
    let mut notices = dump.notices;

    let (owners, stats) = match scan {
        Some((o, st)) => (Some(o), Some(st)),
        None => (None, None),
    };
    if let Some(o) = &owners {
        list.retain(|sock| s.filter.matches_owner(sock, o));
        let unowned = list
            .iter()
            .filter(|sock| sock.inode != 0 && o.map.first(sock.inode).is_none())
            .count() as u64;
        if let Some(st) = &stats {
            notices.extend(owners::missing_owner_notice(
                unowned,
                st,
                owners::effective_uid(),
            ));
        }
    }
    list.sort_unstable_by_key(|a| (a.state, a.local, a.remote));
    let matched = list.len();
    if let Some(limit) = s.limit {
        list.truncate(limit);
    }
    Ok(SocketsReport {
        source: dump.source,
        sockets: list,
        matched,
        owners,
        tcp_info: s.tcp_info,
        notices,
    })
}
