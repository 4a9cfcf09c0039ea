//! `--from`: which namespaces of a recording a command reads, chosen as a live run
//! would choose them (`--netns`, and what no `--netns` means for the command). Policy
//! only: reading the recording is `collect::snapshot`'s.

use crate::collect::snapshot::Recorded;
use crate::model::HostSnapshot;
use crate::settings::{Common, NetnsChoice};

use super::netns::{name_matches, Purpose};
use super::CmdError;

/// Opens what `--from` names.
pub fn open(common: &Common) -> Result<Recorded, CmdError> {
    Ok(Recorded::open(&common.from)?)
}

/// The namespaces of `rec` a command reads (indexes, the one carrying host-wide
/// evidence first), and whether that is every namespace the recording holds of the
/// host.
pub fn select(
    rec: &Recorded,
    common: &Common,
    purpose: Purpose,
) -> Result<(Vec<usize>, bool), CmdError> {
    let n = rec.namespaces.len();
    let all: Vec<usize> = (0..n).collect();
    let current = || {
        rec.namespaces
            .iter()
            .position(|ns| ns.info.as_ref().is_some_and(|i| i.current))
            .unwrap_or(0)
    };
    let choice = match &common.netns {
        NetnsChoice::Default => match purpose {
            Purpose::Diagnosis => return Ok((all, rec.all_namespaces)),
            Purpose::Sockets { .. } => vec![current()],
        },
        NetnsChoice::All => return Ok((all, rec.all_namespaces)),
        NetnsChoice::Current => vec![current()],
        NetnsChoice::Name(name) => matching(rec, |i| name_matches(i, name)),
        NetnsChoice::Path(p) => {
            // /run/netns/NAME names an ip netns namespace; other paths say nothing
            // a recording can match.
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            matching(rec, |i| i.ip_netns.contains(&name))
        }
        NetnsChoice::Pid(pid) => matching(rec, |i| {
            i.first_pid == Some(*pid)
                || rec
                    .namespaces
                    .iter()
                    .any(|ns| ns.inode() == i.inode && ns.processes.contains_key(pid))
        }),
    };
    match choice.as_slice() {
        [] => Err(CmdError::Netns(format!(
            "--netns: {} holds no such namespace; it holds: {}",
            rec.origin,
            rec.namespaces
                .iter()
                .filter_map(|ns| ns.info.as_ref().map(|i| i.name.clone()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        _ => Ok((choice, false)),
    }
}

fn matching(rec: &Recorded, pred: impl Fn(&crate::model::NetnsInfo) -> bool) -> Vec<usize> {
    rec.namespaces
        .iter()
        .enumerate()
        .filter(|(_, ns)| ns.info.as_ref().is_some_and(&pred))
        .map(|(k, _)| k)
        .collect()
}

/// The recording as `check` would have seen it, for `purpose`.
pub fn host(
    rec: &mut Recorded,
    common: &Common,
    purpose: Purpose,
    by_process: bool,
) -> Result<HostSnapshot, CmdError> {
    let (selected, all) = select(rec, common, purpose)?;
    Ok(rec.host_snapshot(&selected, all, by_process)?)
}
