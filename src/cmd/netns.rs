//! Which network namespaces a command reads (`--netns`), in what order, and what each
//! is called. Policy only: discovery, entering and reading are in `collect`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;

use crate::collect::cgroup::{self, RuntimeRoots};
use crate::collect::netns::{self, Discovered, Discovery, NsTarget};
use crate::collect::replay::{Capture, Uses};
use crate::model::units::count;
use crate::model::{name_namespace, Container, NetnsInfo, NetnsKind, Notice, NoticeCode};
use crate::settings::{Common, NetnsChoice};

use super::CmdError;

/// The namespaces to read, the one that carries host-wide evidence first: the initial
/// (host) namespace when it is read, else the current one.
#[derive(Debug)]
pub struct Selection {
    pub targets: Vec<NsTarget>,
    /// Every namespace on the host is included.
    pub all: bool,
    pub notices: Vec<Notice>,
}

impl Selection {
    /// Several namespaces (their names then go on every row and finding).
    pub fn several(&self) -> bool {
        self.targets.len() > 1 || self.all
    }

    fn only(target: NsTarget, notices: Vec<Notice>) -> Selection {
        Selection {
            targets: vec![target],
            all: false,
            notices,
        }
    }
}

/// What a command is for, which decides what no `--netns` means and which evidence a
/// replayed capture must be checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `check`, `watch`, `serve`: every namespace, when run from the host's own.
    Diagnosis,
    /// `states`, `sockets`: the current namespace, as `ss` does.
    Sockets { owners: bool },
}

/// The namespace of a replayed capture: "host" when its sysctls are those of an
/// initial namespace, else "captured" (a container's or an `ip netns` namespace).
fn captured(dir: &Path) -> NetnsInfo {
    let initial = netns::sysctls_look_initial(dir);
    NetnsInfo {
        inode: 0,
        name: if initial { "host" } else { "captured" }.into(),
        kind: if initial {
            NetnsKind::Host
        } else {
            NetnsKind::Unnamed
        },
        current: true,
        initial,
        container: None,
        ip_netns: Vec::new(),
        processes: 0,
        first_pid: None,
    }
}

/// The current namespace when discovery could not place it.
fn bare_current(inode: u64, initial: bool) -> NetnsInfo {
    let (name, kind) = name_namespace(initial, None, &[], None);
    NetnsInfo {
        inode,
        name: if initial { name } else { "current".into() },
        kind,
        current: true,
        initial,
        container: None,
        ip_netns: Vec::new(),
        processes: 0,
        first_pid: None,
    }
}

/// Resolves `--netns` for a command.
pub fn select(common: &Common, purpose: Purpose) -> Result<Selection, CmdError> {
    select_cached(common, purpose, &mut ContainerCache::default())
}

/// The container of each namespace seen so far, by inode. A namespace keeps its
/// container for life, so repeated selections (`watch`, `serve`) identify each one
/// once instead of re-reading cgroups and runtime state every sample.
#[derive(Debug, Default)]
pub struct ContainerCache(BTreeMap<u64, Option<Container>>);

/// [`select`], reusing and updating `cache`.
pub fn select_cached(
    common: &Common,
    purpose: Purpose,
    cache: &mut ContainerCache,
) -> Result<Selection, CmdError> {
    let proc_root = common.proc_root.as_path();
    let mut notices = Vec::new();

    if common.replay {
        // A replayed capture has one namespace and nothing to enter.
        let capture = Capture::open(proc_root)?;
        if !matches!(common.netns, NetnsChoice::Default | NetnsChoice::Current) {
            notices.push(Notice::new(
                NoticeCode::NetnsReplay,
                "--netns is ignored with --proc-root: a captured folder holds one namespace",
            ));
        }
        let uses = match purpose {
            Purpose::Diagnosis => Uses::Diagnosis,
            Purpose::Sockets { owners } => Uses::Sockets { owners },
        };
        notices.extend(capture.notice(uses));
        return Ok(Selection::only(
            NsTarget::here(captured(proc_root)),
            notices,
        ));
    }

    let discovery = netns::discover(proc_root, Path::new("/run/netns"));
    let current = discovery.current;
    let initial = netns::initial_inode(proc_root, current);
    let privileged = netns::may_enter_others(proc_root);
    let roots = RuntimeRoots::host();
    // Forget namespaces that are gone; identify new ones on first sight.
    cache.0.retain(|inode, _| discovery.get(*inode).is_some());
    let cache = RefCell::new(cache);
    let info_of = |d: &Discovered| {
        let known = cache.borrow().0.get(&d.inode).cloned();
        let container = known.unwrap_or_else(|| {
            let c = identify(proc_root, d, &roots);
            cache.borrow_mut().0.insert(d.inode, c.clone());
            c
        });
        describe(proc_root, d, current, initial, container)
    };
    let current_info = || -> NetnsInfo {
        match current.and_then(|c| discovery.get(c)) {
            Some(d) => info_of(d),
            None => bare_current(
                current.unwrap_or(0),
                current.is_some() && current == initial,
            ),
        }
    };
    let here = || NsTarget::here(current_info());

    let want_all = match &common.netns {
        NetnsChoice::All => true,
        // Run from the host's own namespace, a diagnosis looks at every namespace; run
        // inside one (`ip netns exec X tcpdoctor`, a container), at that one, as `ss`
        // would.
        NetnsChoice::Default => {
            purpose == Purpose::Diagnosis && current.is_some() && current == initial
        }
        NetnsChoice::Current => false,
        NetnsChoice::Path(p) => {
            let inode = netns::nsfs_file_inode(proc_root, p)
                .map_err(|e| CmdError::Netns(format!("--netns {e}")))?;
            let mut d = discovery.get(inode).cloned().unwrap_or_else(|| Discovered {
                inode,
                pids: Vec::new(),
                ip_netns: Vec::new(),
                paths: vec![p.clone()],
            });
            if !d.paths.contains(p) {
                d.paths.insert(0, p.clone());
            }
            return one(&d, info_of(&d), current, notices);
        }
        NetnsChoice::Pid(pid) => {
            let link = proc_root.join(pid.to_string()).join("ns/net");
            let inode = netns::ns_link_inode(&link).ok().flatten().ok_or_else(|| {
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
        return Ok(Selection::only(here(), notices));
    }
    if !privileged {
        notices.push(others_not_read(&discovery, current));
        return Ok(Selection::only(here(), notices));
    }

    let described: Vec<(&Discovered, NetnsInfo)> = discovery
        .namespaces
        .iter()
        .map(|d| (d, info_of(d)))
        .collect();
    let mut sel = open_all(&described, current, notices);
    if sel.targets.is_empty() {
        sel.targets.push(here());
    }
    Ok(sel)
}

/// Namespaces named in the `netns_current_only` notice before "and N more".
const UNREAD_NAMED: usize = 10;

/// The notice of a run that wanted every namespace but may not enter them (not root):
/// which namespaces it saw but did not read (the newest first: inodes grow with
/// creation), and how many processes' namespaces it could not see.
fn others_not_read(discovery: &Discovery, current: Option<u64>) -> Notice {
    let mut others: Vec<&Discovered> = discovery
        .namespaces
        .iter()
        .filter(|d| Some(d.inode) != current)
        .collect();
    others.sort_by_key(|d| std::cmp::Reverse(d.inode));
    let name = |d: &Discovered| match d.ip_netns.first() {
        Some(n) => format!("{n} (net:[{}])", d.inode),
        None => format!("net:[{}]", d.inode),
    };
    let seen = match others.len() {
        0 => String::new(),
        n => {
            let mut named: Vec<String> =
                others.iter().take(UNREAD_NAMED).map(|d| name(d)).collect();
            if n > UNREAD_NAMED {
                named.push(format!("{} more", n - UNREAD_NAMED));
            }
            format!(
                "{} it can see ({})",
                count(n as u64, "other namespace", "other namespaces"),
                named.join(", ")
            )
        }
    };
    let unseen = match discovery.denied {
        0 => String::new(),
        1 => "the namespace of 1 process it cannot inspect".to_string(),
        n => format!("the namespaces of {n} processes it cannot inspect"),
    };
    let what = match (seen.is_empty(), unseen.is_empty()) {
        (false, false) => format!("{seen} and {unseen}"),
        (false, true) => seen,
        (true, false) => unseen,
        (true, true) => "any other namespace".to_string(),
    };
    Notice::new(
        NoticeCode::NetnsCurrentOnly,
        format!(
            "looked at this network namespace only: reading {what} needs root (CAP_SYS_ADMIN); containers' sockets and sysctls are not in this report"
        ),
    )
}

/// Opens every namespace but the current one (read where it is). One that vanished
/// since discovery, or cannot be opened, becomes a `netns_unreadable` notice. Once a
/// handle is open the namespace cannot go away under the reader: the open file keeps
/// it alive, so a later exit of its processes only empties it. Order: the initial
/// namespace (it carries the host-wide evidence), the current one, then by name.
fn open_all(
    described: &[(&Discovered, NetnsInfo)],
    current: Option<u64>,
    mut notices: Vec<Notice>,
) -> Selection {
    let mut targets = Vec::new();
    for (d, info) in described {
        if Some(d.inode) == current {
            targets.push(NsTarget::here(info.clone()));
            continue;
        }
        match NsTarget::open(d, info.clone()) {
            Ok(t) => targets.push(t),
            Err(e) => notices.push(Notice::new(
                if matches!(e, netns::NetnsError::Vanished) {
                    NoticeCode::NetnsVanished
                } else {
                    NoticeCode::NetnsUnreadable
                },
                format!("netns {} (net:[{}]) skipped: {e}", info.name, d.inode),
            )),
        }
    }
    targets.sort_by(|a, b| {
        let rank = |t: &NsTarget| (!t.info.initial, !t.info.current);
        rank(a)
            .cmp(&rank(b))
            .then(a.info.name.cmp(&b.info.name))
            .then(a.info.inode.cmp(&b.info.inode))
    });
    Selection {
        targets,
        all: true,
        notices,
    }
}

fn one(
    d: &Discovered,
    info: NetnsInfo,
    current: Option<u64>,
    notices: Vec<Notice>,
) -> Result<Selection, CmdError> {
    if Some(d.inode) == current {
        return Ok(Selection::only(NsTarget::here(info), notices));
    }
    let name = info.name.clone();
    let target = NsTarget::open(d, info)
        .map_err(|e| CmdError::Netns(format!("netns {name} (net:[{}]): {e}", d.inode)))?;
    Ok(Selection::only(target, notices))
}

/// `--netns NAME` matches the ip netns name, the display name, the container or pod
/// name, or a container id prefix of 6+ characters.
pub(super) fn name_matches(info: &NetnsInfo, name: &str) -> bool {
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

/// The container or pod that owns a namespace, from the cgroups of its first processes
/// (in a pod the first is usually the sandbox, "pause").
fn identify(proc_root: &Path, d: &Discovered, roots: &RuntimeRoots) -> Option<Container> {
    d.pids
        .iter()
        .take(3)
        .find_map(|pid| cgroup::identify(proc_root, *pid, roots))
        .map(|mut c| {
            // A pod's containers share its namespace: name the namespace after the pod.
            if c.pod.is_some() {
                c.name = None;
            }
            c
        })
}

fn describe(
    proc_root: &Path,
    d: &Discovered,
    current: Option<u64>,
    initial: Option<u64>,
    container: Option<Container>,
) -> NetnsInfo {
    let is_current = Some(d.inode) == current;
    let is_initial = Some(d.inode) == initial;
    let first_pid = d.pids.first().copied();
    let comm = first_pid.and_then(|pid| netns::comm_of(proc_root, pid));
    let (name, kind) = name_namespace(
        is_initial,
        container.as_ref(),
        &d.ip_netns,
        first_pid.map(|p| (comm.as_deref().unwrap_or(""), p)),
    );
    NetnsInfo {
        inode: d.inode,
        name,
        kind,
        current: is_current,
        initial: is_initial,
        container,
        ip_netns: d.ip_netns.clone(),
        processes: d.pids.len() as u64,
        first_pid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(d: &Discovered, name: &str) -> NetnsInfo {
        NetnsInfo {
            inode: d.inode,
            name: name.to_string(),
            kind: NetnsKind::IpNetns,
            current: false,
            initial: false,
            container: None,
            ip_netns: d.ip_netns.clone(),
            processes: 0,
            first_pid: None,
        }
    }

    #[test]
    #[ignore = "needs root"]
    fn a_namespace_gone_between_discovery_and_reading_is_a_note() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            panic!("needs root (ip netns add); as root, run: cargo test --features sockfarm -- --include-ignored, or bash .ci/run");
        }
        let names: Vec<String> = ["stay", "gone"]
            .iter()
            .map(|t| format!("tdt-sel-{t}-{}", std::process::id()))
            .collect();
        for n in &names {
            let ok = std::process::Command::new("ip")
                .args(["netns", "add", n])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "ip netns add {n}");
        }
        let discovery = netns::discover(Path::new("/proc"), Path::new("/run/netns"));
        let find = |n: &String| {
            discovery
                .namespaces
                .iter()
                .find(|d| d.ip_netns.contains(n))
                .expect("discovered")
        };
        let (stay, gone) = (find(&names[0]), find(&names[1]));
        // Destroyed after discovery, before it is opened.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &names[1]])
            .status();
        let described = vec![(stay, info(stay, "stay")), (gone, info(gone, "gone"))];
        let sel = open_all(&described, discovery.current, Vec::new());
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &names[0]])
            .status();
        assert_eq!(sel.targets.len(), 1, "the other one is still read");
        assert_eq!(sel.targets[0].info.name, "stay");
        assert_eq!(sel.notices.len(), 1);
        assert_eq!(sel.notices[0].code, NoticeCode::NetnsVanished);
        assert!(
            sel.notices[0].message.contains("gone")
                && sel.notices[0].message.contains("no longer exists"),
            "{}",
            sel.notices[0].message
        );
    }

    #[test]
    fn containers_are_identified_once_per_namespace_and_forgotten_when_gone() {
        use crate::collect::sockets::SourcePref;
        use crate::model::Runtime;
        let common = Common {
            source: SourcePref::Auto,
            proc_root: "/proc".into(),
            replay: false,
            color: false,
            threads: 1,
            owner_scan: crate::collect::owners::OwnerScan::default(),
            netns: NetnsChoice::Current,
            from: Vec::new(),
        };
        let current = netns::discover(Path::new("/proc"), Path::new("/run/netns"))
            .current
            .expect("own namespace");
        let mut cache = ContainerCache::default();
        // What an earlier sample found for our namespace, and a namespace since gone.
        let seen = Container {
            runtime: Runtime::Docker,
            id: "4f9e2c1a0b3d".repeat(5) + "abcd",
            name: Some("redis".into()),
            pod: None,
        };
        cache.0.insert(current, Some(seen.clone()));
        cache.0.insert(1, None);
        let sel =
            select_cached(&common, Purpose::Sockets { owners: false }, &mut cache).expect("select");
        let ns = &sel.targets[0].info;
        assert_eq!(
            ns.container.as_ref(),
            Some(&seen),
            "from the cache, not re-read"
        );
        // The initial namespace is "host" whatever else it is; another is named after
        // its container.
        let expected = if ns.initial { "host" } else { "docker redis" };
        assert_eq!(ns.name, expected);
        assert!(!cache.0.contains_key(&1));
        assert!(cache.0.contains_key(&current));
    }

    #[test]
    fn names_match_ip_netns_container_and_pod() {
        use crate::model::{Pod, Runtime};
        let mut i = NetnsInfo {
            inode: 1,
            name: "pod default/web".into(),
            kind: NetnsKind::Container,
            current: false,
            initial: false,
            container: Some(Container {
                runtime: Runtime::Containerd,
                id: "4f9e2c1a0b3d5e6f".into(),
                name: None,
                pod: Some(Pod {
                    uid: "3f2a1b4c-0000".into(),
                    namespace: Some("default".into()),
                    name: Some("web".into()),
                }),
            }),
            ip_netns: vec!["blue".into()],
            processes: 1,
            first_pid: Some(9),
        };
        for yes in [
            "blue",
            "pod default/web",
            "default/web",
            "web",
            "4f9e2c",
            "3f2a1b4c-0000",
        ] {
            assert!(name_matches(&i, yes), "{yes}");
        }
        for no in ["4f9e2", "green", "other/web", ""] {
            assert!(!name_matches(&i, no), "{no}");
        }
        i.container = None;
        assert!(!name_matches(&i, "web"));
    }
}
