//! `check --emit-sysctl`: the kernel settings the findings propose, as a commented file
//! for /etc/sysctl.d/. It prints exactly the union of every finding's `proposed` and
//! decides nothing itself, so the file cannot disagree with the report. Settings for
//! the namespace tcpdoctor runs in (and host-wide ones) are live lines; those for other
//! network namespaces follow in a commented-out section each, because loading the file
//! does not reach them.

use std::collections::BTreeMap;
use std::io::{self, Write};

use crate::model::{CheckReport, Finding, NetnsInfo, PER_NETNS_SYSCTLS};

/// Where the file is meant to go.
pub const FILE: &str = "/etc/sysctl.d/90-tcpdoctor.conf";

/// Comment lines are wrapped to this width.
const WIDTH: usize = 88;

/// One key's proposal in one namespace: its value, the value it replaces, why, and the
/// rules that propose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub value: String,
    pub was: Option<String>,
    /// Each distinct reason, in report order.
    pub why: Vec<String>,
    pub rules: Vec<&'static str>,
    /// Other values proposed for the same key in the same namespace, with the rule
    /// that proposed each: a bug in the rules (a test checks there are none), shown in
    /// the file rather than settled silently.
    pub conflicts: Vec<(&'static str, String)>,
}

/// The settings of one namespace, in report order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// `None`: the namespace tcpdoctor runs in (and host-wide keys).
    pub netns: Option<NetnsInfo>,
    pub settings: Vec<Setting>,
}

/// The findings' proposals grouped by the namespace they are for: the one tcpdoctor
/// runs in first (with every host-wide key), then the others in report order. Sections
/// without settings are left out, except the first.
pub fn sections(r: &CheckReport) -> Vec<Section> {
    let infos: Vec<&NetnsInfo> = r
        .host
        .namespaces
        .iter()
        .filter_map(|s| s.netns.as_ref())
        .collect();
    let current = infos.iter().find(|n| n.current).map(|n| n.inode);
    let primary = r
        .host
        .primary()
        .and_then(|s| s.netns.as_ref())
        .map(|n| n.inode);
    // Section index by namespace inode; the live section is the current namespace's (or
    // the only one, when namespaces were not looked at).
    let mut order: Vec<Option<u64>> = vec![current];
    let mut settings: BTreeMap<Option<u64>, Vec<Setting>> = BTreeMap::new();
    for f in &r.findings {
        let about = f.namespaces.first().map(|n| n.inode).or(primary);
        for c in &f.proposed {
            let host_wide = !PER_NETNS_SYSCTLS.contains(&c.key.as_str());
            let target = if host_wide || about == current {
                current
            } else {
                about
            };
            if !order.contains(&target) {
                order.push(target);
            }
            add(settings.entry(target).or_default(), f, c);
        }
    }
    // Other namespaces in the order the report lists them.
    let rank = |k: &Option<u64>| {
        infos
            .iter()
            .position(|n| Some(n.inode) == *k)
            .unwrap_or(usize::MAX)
    };
    order[1..].sort_by_key(rank);
    order
        .into_iter()
        .enumerate()
        .filter_map(|(i, k)| {
            let s = settings.remove(&k).unwrap_or_default();
            (i == 0 || !s.is_empty()).then(|| Section {
                netns: if i == 0 {
                    None
                } else {
                    infos
                        .iter()
                        .find(|n| Some(n.inode) == k)
                        .map(|n| (*n).clone())
                },
                settings: s,
            })
        })
        .collect()
}

fn add(list: &mut Vec<Setting>, f: &Finding, c: &crate::model::SysctlChange) {
    match list.iter_mut().find(|s| s.key == c.key) {
        Some(s) if s.value == c.value => {
            if !s.rules.contains(&f.rule_id) {
                s.rules.push(f.rule_id);
            }
            if !s.why.contains(&c.why) {
                s.why.push(c.why.clone());
            }
            if s.was.is_none() {
                s.was.clone_from(&c.was);
            }
        }
        Some(s) => s.conflicts.push((f.rule_id, c.value.clone())),
        None => list.push(Setting {
            key: c.key.clone(),
            value: c.value.clone(),
            was: c.was.clone(),
            why: vec![c.why.clone()],
            rules: vec![f.rule_id],
            conflicts: Vec::new(),
        }),
    }
}

/// Every key two findings propose different values for, in one namespace: a bug in
/// the rules. `(namespace name or "this namespace", key, values with their rules)`.
pub fn conflicts(r: &CheckReport) -> Vec<(String, String, Vec<(&'static str, String)>)> {
    sections(r)
        .into_iter()
        .flat_map(|sec| {
            let name = sec
                .netns
                .as_ref()
                .map_or("this namespace".to_string(), |n| n.name.clone());
            sec.settings
                .into_iter()
                .filter(|s| !s.conflicts.is_empty())
                .map(move |s| {
                    let mut values: Vec<(&'static str, String)> =
                        s.rules.iter().map(|r| (*r, s.value.clone())).collect();
                    values.extend(s.conflicts);
                    (name.clone(), s.key, values)
                })
        })
        .collect()
}

pub fn write(out: &mut impl Write, r: &CheckReport) -> io::Result<()> {
    let sections = sections(r);
    let host = if r.hostname.is_empty() {
        "this host".to_string()
    } else {
        r.hostname.clone()
    };
    writeln!(out, "# {FILE}")?;
    comment(
        out,
        &format!(
            "Proposed by tcpdoctor check on {host}: each setting fixes one of its findings, named above it (tcpdoctor check shows the evidence). Read it before installing it; load it with: sysctl -p {FILE}"
        ),
    )?;
    comment(
        out,
        "Remove older lines that set the same keys (grep -rn KEY /etc/sysctl.conf /etc/sysctl.d /usr/lib/sysctl.d /run/sysctl.d): when two files set a key, the one read last wins.",
    )?;
    let total: usize = sections.iter().map(|s| s.settings.len()).sum();
    let main = &sections[0];
    if main
        .settings
        .iter()
        .any(|s| PER_NETNS_SYSCTLS.contains(&s.key.as_str()))
    {
        comment(
            out,
            "Most net.* keys are per network namespace: this file sets them only in the namespace it is loaded in (the host's, at boot). Containers start from the kernel defaults and need their own settings (Kubernetes securityContext.sysctls, docker run --sysctl).",
        )?;
    }
    if total == 0 {
        out.write_all(b"\n")?;
        comment(
            out,
            "Nothing to change: no finding of this check proposes a kernel setting.",
        )?;
    } else if main.settings.is_empty() {
        out.write_all(b"\n")?;
        comment(
            out,
            "Nothing to change in the namespace tcpdoctor ran in. Settings for other network namespaces follow, commented out.",
        )?;
    }
    for s in &main.settings {
        write_setting(out, s, false)?;
    }
    for sec in &sections[1..] {
        let (name, inode, enter) = match &sec.netns {
            Some(n) => (
                n.name.as_str(),
                n.inode,
                n.ip_netns
                    .first()
                    .map(|ip| format!("ip netns exec {ip} sysctl -w KEY=VALUE"))
                    .unwrap_or_else(|| "its container's spec".to_string()),
            ),
            None => ("another namespace", 0, "its container's spec".to_string()),
        };
        out.write_all(b"\n")?;
        writeln!(out, "# --- network namespace {name} (net:[{inode}]) ---")?;
        comment(
            out,
            &format!(
                "Loading this file does not reach it: a container's namespace starts from the kernel defaults, not from the host's files. Set these for it (Kubernetes securityContext.sysctls, docker run --sysctl; here: {enter}). They are commented out so that the host does not take them."
            ),
        )?;
        for s in &sec.settings {
            write_setting(out, s, true)?;
        }
    }
    out.write_all(b"\n")?;
    comment(
        out,
        "Not here on purpose: net.ipv4.tcp_tw_recycle. Linux 4.12 removed it; before that it dropped connections from clients behind NAT. Delete any line that sets it.",
    )?;
    if recycle_on(&r.findings) {
        comment(
            out,
            "It is on right now on this (pre-4.12) kernel: sysctl -w net.ipv4.tcp_tw_recycle=0",
        )?;
    }
    Ok(())
}

/// Whether the audit found tcp_tw_recycle switched on (a kernel older than 4.12).
fn recycle_on(findings: &[Finding]) -> bool {
    findings.iter().any(|f| {
        f.rule_id == "sysctl_audit"
            && f.data["sysctl"] == "net.ipv4.tcp_tw_recycle"
            && f.data["value"].as_str().is_some_and(|v| v.trim() != "0")
    })
}

fn write_setting(out: &mut impl Write, s: &Setting, commented: bool) -> io::Result<()> {
    out.write_all(b"\n")?;
    let was = match s.was.as_deref() {
        Some("") => "was empty".to_string(),
        Some(w) => format!("was {w}"),
        None => "value now unknown".to_string(),
    };
    comment(
        out,
        &format!("{}: {was}; proposed by {}.", s.key, s.rules.join(", ")),
    )?;
    for why in &s.why {
        comment(out, why)?;
    }
    for (rule, value) in &s.conflicts {
        comment(
            out,
            &format!(
                "tcpdoctor bug: {rule} proposes {} = {value} as well; please report it.",
                s.key
            ),
        )?;
    }
    let prefix = if commented { "# " } else { "" };
    writeln!(out, "{prefix}{} = {}", s.key, s.value)
}

/// `text` as `# ` comment lines of at most [`WIDTH`] characters.
fn comment(out: &mut impl Write, text: &str) -> io::Result<()> {
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && 2 + line.len() + 1 + word.len() > WIDTH {
            writeln!(out, "# {line}")?;
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        writeln!(out, "# {line}")?;
    }
    Ok(())
}

/// The file as a string (tests and callers that are not writers).
pub fn render(r: &CheckReport) -> String {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = write(&mut out, r);
    String::from_utf8_lossy(&out).into_owned()
}
