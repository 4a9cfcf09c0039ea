//! Which network namespaces a command reads (`--netns`), and what each is called.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::collect::cgroup::{self, RuntimeRoots};
use crate::collect::netns::{self, Discovered, NetnsHandle, Target};
use crate::model::{name_namespace, Container, NetnsInfo, NetnsKind, Notice};
use crate::settings::{Common, NetnsChoice};

use super::CmdError;

/// The namespaces to read, the primary (host-wide evidence) first.
#[derive(Debug)]
pub struct Selection {
    pub infos: Vec<NetnsInfo>,
    /// `None`: read without entering (the current namespace, or a replay).
    handles: Vec<Option<NetnsHandle>>,
    /// Every namespace on the host is included.
    pub all: bool,
    pub notices: Vec<Notice>,
}

impl Selection {
    /// (index into `infos`, how to get there), in `infos` order.
    pub fn targets(&self) -> Vec<(usize, Target<'_>)> {
        self.handles
            .iter()
            .enumerate()
            .map(|(i, h)| (i, h.as_ref()))
            .collect()
    }

    /// Several namespaces (their names then go on every row and finding).
    pub fn several(&self) -> bool {
        self.infos.len() > 1 || self.all
    }

    fn only_current(info: NetnsInfo, notices: Vec<Notice>) -> Selection {
        Selection {
            infos: vec![info],
            handles: vec![None],
            all: false,
            notices,
        }
    }
}

/// Bit of CAP_SYS_ADMIN in the capability sets (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;

/// Whether this process may enter other network namespaces (CAP_SYS_ADMIN in its
/// effective set, from /proc/self/status).
pub fn can_enter_namespaces(proc_root: &Path) -> bool {
    let Ok(status) = std::fs::read_to_string(proc_root.join("self/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// Resolves `--netns` for a command. `default_all`: what no `--netns` means (all for
/// check/watch/serve, current for states/sockets).
pub fn select(common: &Common, default_all: bool) -> Result<Selection, CmdError> {
    let proc_root = common.proc_root.as_path();
    let live = proc_root == Path::new("/proc");
    let mut notices = Vec::new();

    if !live {
        // A replayed capture has one namespace and nothing to enter.
        if !matches!(common.netns, NetnsChoice::Default | NetnsChoice::Current) {
            notices.push(Notice::new(
                "netns_replay",
                "--netns is ignored with --proc-root: a captured folder holds one namespace",
            ));
        }
        let info = NetnsInfo {
            inode: 0,
            name: "host".into(),
            kind: NetnsKind::Current,
            current: true,
            container: None,
            ip_netns: Vec::new(),
            processes: 0,
            first_pid: None,
        };
        return Ok(Selection::only_current(info, notices));
    }

    let discovery = netns::discover(proc_root, Path::new("/run/netns"));
    let current = discovery.current;
    let privileged = can_enter_namespaces(proc_root);
    let roots = RuntimeRoots::host();
    let info_of = |d: &Discovered| describe(proc_root, d, current, &roots);
    let current_info = || -> NetnsInfo {
        match current.and_then(|c| discovery.get(c)) {
            Some(d) => info_of(d),
            None => NetnsInfo {
                inode: current.unwrap_or(0),
                name: "host".into(),
                kind: NetnsKind::Current,
                current: true,
                container: None,
                ip_netns: Vec::new(),
                processes: 0,
                first_pid: None,
            },
        }
    };

    let want_all = match &common.netns {
        NetnsChoice::All => true,
        NetnsChoice::Default => default_all,
        NetnsChoice::Current => false,
        NetnsChoice::Path(p) => {
            let inode = std::fs::metadata(p)
                .map_err(|e| CmdError::Netns(format!("--netns '{}': {e}", p.display())))?
                .ino();
            let d = discovery.get(inode).cloned().unwrap_or_else(|| Discovered {
                inode,
                pids: Vec::new(),
                ip_netns: Vec::new(),
                paths: vec![p.clone()],
            });
            let mut d = d;
            if !d.paths.contains(p) {
                d.paths.insert(0, p.clone());
            }
            return one(&d, info_of(&d), current, notices);
        }
        NetnsChoice::Pid(pid) => {
            let link = proc_root.join(pid.to_string()).join("ns/net");
            let inode = std::fs::read_link(&link)
                .ok()
                .and_then(|t| {
                    netns::parse_ns_link(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str()))
                })
                .ok_or_else(|| {
                    CmdError::Netns(format!(
                        "--netns {pid}: cannot read '{}' (no such process, or run as root)",
                        link.display()
                    ))
                })?;
            let d = discovery.get(inode).cloned().unwrap_or(Discovered {
                inode,
                pids: vec![*pid],
                ip_netns: Vec::new(),
                paths: vec![link],
            });
            return one(&d, info_of(&d), current, notices);
        }
        NetnsChoice::Name(name) => {
            let matches: Vec<(&Discovered, NetnsInfo)> = discovery
                .namespaces
                .iter()
                .map(|d| (d, info_of(d)))
                .filter(|(_, info)| name_matches(info, name))
                .collect();
            return match matches.as_slice() {
                [(d, info)] => one(d, info.clone(), current, notices),
                [] => Err(CmdError::Netns(format!(
                    "--netns '{name}': no network namespace has that name; list them with: tcpdoctor states --netns all --by netns{}",
                    if privileged { "" } else { " (as root)" }
                ))),
                many => Err(CmdError::Netns(format!(
                    "--netns '{name}' matches {} namespaces ({}); give a pid or a path instead",
                    many.len(),
                    many.iter()
                        .map(|(d, i)| format!("{} net:[{}]", i.name, d.inode))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            };
        }
    };

    if !want_all {
        return Ok(Selection::only_current(current_info(), notices));
    }
    if !privileged {
        let others = discovery
            .namespaces
            .iter()
            .filter(|d| Some(d.inode) != current)
            .count();
        let hidden = if discovery.denied > 0 {
            format!(
                " (and the namespaces of {} processes it cannot read)",
                discovery.denied
            )
        } else {
            String::new()
        };
        notices.push(Notice::new(
            "netns_current_only",
            format!(
                "looked at this network namespace only: entering the other {others}{hidden} needs root (CAP_SYS_ADMIN); containers' sockets and sysctls are not in this report"
            ),
        ));
        return Ok(Selection::only_current(current_info(), notices));
    }

    let mut infos = Vec::new();
    let mut handles = Vec::new();
    // The current namespace first: it is read without entering and carries the
    // host-wide evidence.
    let mut order: Vec<&Discovered> = discovery.namespaces.iter().collect();
    order.sort_by_key(|d| Some(d.inode) != current);
    let mut rest: Vec<(NetnsInfo, Option<NetnsHandle>)> = Vec::new();
    for d in order {
        let info = info_of(d);
        if Some(d.inode) == current {
            infos.push(info);
            handles.push(None);
            continue;
        }
        match NetnsHandle::open(d) {
            Ok(h) => rest.push((info, Some(h))),
            Err(e) => notices.push(Notice::new(
                "netns_unreadable",
                format!("netns {} (net:[{}]) skipped: {e}", info.name, d.inode),
            )),
        }
    }
    rest.sort_by(|a, b| a.0.name.cmp(&b.0.name).then(a.0.inode.cmp(&b.0.inode)));
    for (info, h) in rest {
        infos.push(info);
        handles.push(h);
    }
    if infos.is_empty() {
        infos.push(current_info());
        handles.push(None);
    }
    Ok(Selection {
        infos,
        handles,
        all: true,
        notices,
    })
}

fn one(
    d: &Discovered,
    info: NetnsInfo,
    current: Option<u64>,
    notices: Vec<Notice>,
) -> Result<Selection, CmdError> {
    if Some(d.inode) == current {
        return Ok(Selection::only_current(info, notices));
    }
    let handle = NetnsHandle::open(d)
        .map_err(|e| CmdError::Netns(format!("netns {} (net:[{}]): {e}", info.name, d.inode)))?;
    Ok(Selection {
        infos: vec![info],
        handles: vec![Some(handle)],
        all: false,
        notices,
    })
}

/// `--netns NAME` matches the ip netns name, the display name, the container or pod
/// name, or a container id prefix of 6+ characters.
fn name_matches(info: &NetnsInfo, name: &str) -> bool {
    if info.ip_netns.iter().any(|n| n == name) || info.name == name {
        return true;
    }
    let Some(c) = &info.container else {
        return false;
    };
    c.name.as_deref() == Some(name)
        || (name.len() >= 6 && c.id.starts_with(name))
        || c.pod.as_ref().is_some_and(|p| {
            p.name.as_deref() == Some(name)
                || p.uid == name
                || matches!((&p.namespace, &p.name), (Some(ns), Some(n)) if format!("{ns}/{n}") == name)
        })
}

/// Names a namespace: container or pod from its processes' cgroups, else its ip netns
/// name, else "host" for the current one, else its first process.
fn describe(
    proc_root: &Path,
    d: &Discovered,
    current: Option<u64>,
    roots: &RuntimeRoots,
) -> NetnsInfo {
    let is_current = Some(d.inode) == current;
    // The first few processes: in a pod the first is usually the sandbox ("pause").
    let container: Option<Container> = d
        .pids
        .iter()
        .take(3)
        .find_map(|pid| cgroup::identify(proc_root, *pid, roots))
        .map(|mut c| {
            // A pod's containers share its namespace: name the namespace after the pod.
            if c.pod.is_some() {
                c.name = None;
            }
            c
        });
    let first_pid = d.pids.first().copied();
    let comm = first_pid.and_then(|pid| {
        std::fs::read_to_string(proc_root.join(pid.to_string()).join("comm"))
            .ok()
            .map(|s| s.trim_end().to_string())
    });
    let (name, kind) = name_namespace(
        is_current,
        container.as_ref(),
        &d.ip_netns,
        first_pid.map(|p| (comm.as_deref().unwrap_or(""), p)),
    );
    NetnsInfo {
        inode: d.inode,
        name,
        kind,
        current: is_current,
        container,
        ip_netns: d.ip_netns.clone(),
        processes: d.pids.len() as u64,
        first_pid,
    }
}
