//! A sosreport folder (extracted): where its plugins leave the captures tcpdoctor reads.
//! The networking plugin runs `ss -peaonmi`, `netstat -W -neopa`, `netstat -s` and
//! `nstat -zas` (saved under `sos_commands/networking/`, named after the command with
//! spaces as `_`) and copies `/proc/net/`; the kernel plugin saves `sysctl -a` and
//! `dmesg` under `sos_commands/kernel/`. Each `ip netns` namespace has its own copies
//! under `sos_commands/networking/namespaces/NAME/`, prefixed
//! `ip_netns_exec_NAME_`. Files are still told apart by their content.

use std::path::{Path, PathBuf};

use super::{read_capture, ImportedHost, ImportedNs};
use crate::collect::snapshot::{FromError, Recorded};
use crate::model::{NetnsInfo, NetnsKind};

/// The folder holding `sos_commands`: `dir` itself or its one `sosreport-*` child.
fn root(dir: &Path) -> Option<PathBuf> {
    if dir.join("sos_commands").is_dir() {
        return Some(dir.to_path_buf());
    }
    let mut kids = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("sos_commands").is_dir());
    let one = kids.next()?;
    kids.next().is_none().then_some(one)
}

pub fn is_sosreport(dir: &Path) -> bool {
    root(dir).is_some()
}

/// Files in `dir` whose name starts with one of `prefixes`, sorted.
fn named(dir: &Path, prefixes: &[&str]) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            prefixes.iter().any(|p| n.starts_with(p))
        })
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

fn add_all(ns: &mut ImportedNs, files: Vec<PathBuf>) -> Result<(), FromError> {
    for f in files {
        if let Some(c) = read_capture(&f)? {
            ns.add(c);
        }
    }
    Ok(())
}

pub fn open(dir: &Path) -> Result<Recorded, FromError> {
    let root = root(dir).ok_or_else(|| FromError::Import {
        what: format!("'{}'", dir.display()),
        why: "no sos_commands folder in it".into(),
    })?;
    let hostname = ["hostname", "sos_commands/host/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(root.join(p)).ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sosreport".into());
    let mut host = ImportedHost::new(format!("sosreport '{}'", root.display()), &hostname);
    let net = root.join("sos_commands/networking");
    let mut main = ImportedNs::new(NetnsInfo {
        inode: 0,
        name: "host".into(),
        kind: NetnsKind::Host,
        current: true,
        initial: true,
        container: None,
        ip_netns: Vec::new(),
        processes: 0,
        first_pid: None,
    });
    let proc_net = root.join("proc/net");
    let mut files: Vec<PathBuf> = ["tcp", "tcp6", "netstat", "snmp", "sockstat"]
        .iter()
        .map(|f| proc_net.join(f))
        .filter(|p| p.is_file())
        .collect();
    files.extend(named(&net, &["ss_", "netstat_", "nstat_"]));
    files.extend(named(
        &root.join("sos_commands/kernel"),
        &["sysctl_-a", "dmesg"],
    ));
    let file_nr = root.join("proc/sys/fs/file-nr");
    if file_nr.is_file() {
        files.push(file_nr);
    }
    add_all(&mut main, files)?;
    host.namespaces.push(main);

    let nsdir = net.join("namespaces");
    if let Ok(rd) = std::fs::read_dir(&nsdir) {
        let mut names: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        names.sort();
        for d in names {
            let name = d
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut ns = ImportedNs::new(NetnsInfo {
                inode: 0,
                name: name.clone(),
                kind: NetnsKind::IpNetns,
                current: false,
                initial: false,
                container: None,
                ip_netns: vec![name.clone()],
                processes: 0,
                first_pid: None,
            });
            let prefix = format!("ip_netns_exec_{name}_");
            let files = named(
                &d,
                &[
                    &format!("{prefix}ss_"),
                    &format!("{prefix}netstat_"),
                    &format!("{prefix}nstat_"),
                    &format!("{prefix}sysctl_-a"),
                ],
            );
            add_all(&mut ns, files)?;
            if !ns.is_empty() {
                host.namespaces.push(ns);
            }
        }
    }
    let mut rec = host.finish();
    rec.all_namespaces = rec.namespaces.len() > 1;
    Ok(rec)
}
