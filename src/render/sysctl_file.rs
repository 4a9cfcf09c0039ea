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
        // A finding about several namespaces (one cause found in each) proposes its
        // settings for every one of them.
        let about: Vec<Option<u64>> = if f.namespaces.is_empty() {
            vec![primary]
        } else {
            f.namespaces.iter().map(|n| Some(n.inode)).collect()
        };
        for c in &f.proposed {
            let host_wide = !PER_NETNS_SYSCTLS.contains(&c.key.as_str());
            for about in &about {
                let target = if host_wide || *about == current {
                    current
                } else {
                    *about
                };
                if !order.contains(&target) {
                    order.push(target);
                }
                add(settings.entry(target).or_default(), f, c);
            }
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

/// A key that two findings propose different values for, in one namespace: a bug in
/// the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The namespace's name, or "this namespace" for the one tcpdoctor runs in.
    pub namespace: String,
    pub key: String,
    /// Each rule with the value it proposes.
    pub values: Vec<(&'static str, String)>,
}

/// Every [`Conflict`] in the report's proposals; none when the rules agree.
pub fn conflicts(r: &CheckReport) -> Vec<Conflict> {
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
                    Conflict {
                        namespace: name.clone(),
                        key: s.key,
                        values,
                    }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::analyze::{self, Thresholds};
    use crate::model::{
        CounterSample, Endpoint, HostSnapshot, ListenerSocket, NetnsKind, Owner, PortUse, Snapshot,
        Sockstat, StateCounts, TcpState,
    };

    fn set(s: &mut Snapshot, pairs: &[(&str, &str)]) {
        for (k, v) in pairs {
            s.sysctls.insert((*k).into(), (*v).into());
        }
    }

    /// A namespace at the live 6.18 defaults (kernel-facts.md, Appendix A).
    fn namespace(inode: u64, name: &str, current: bool) -> Snapshot {
        let mut s = Snapshot {
            netns: Some(NetnsInfo {
                inode,
                name: name.into(),
                kind: if current {
                    NetnsKind::Host
                } else {
                    NetnsKind::IpNetns
                },
                current,
                initial: current,
                container: None,
                ip_netns: if current {
                    Vec::new()
                } else {
                    vec![name.into()]
                },
                processes: 1,
                first_pid: Some(100),
            }),
            ..Snapshot::default()
        };
        set(
            &mut s,
            &[
                ("net.ipv4.tcp_fin_timeout", "60"),
                ("net.ipv4.tcp_keepalive_time", "7200"),
                ("net.ipv4.tcp_max_tw_buckets", "131072"),
                ("net.ipv4.tcp_orphan_retries", "0"),
                ("net.ipv4.tcp_syn_linear_timeouts", "4"),
                ("net.ipv4.tcp_syn_retries", "6"),
                ("net.ipv4.tcp_synack_retries", "5"),
                ("net.ipv4.tcp_syncookies", "1"),
                ("net.ipv4.tcp_tw_reuse", "2"),
                ("net.ipv4.ip_local_port_range", "32768 60999"),
                ("net.ipv4.ip_local_reserved_ports", ""),
                ("net.ipv4.tcp_timestamps", "1"),
                ("net.ipv4.tcp_abort_on_overflow", "0"),
                ("net.ipv4.tcp_ehash_entries", "262144"),
                ("net.core.somaxconn", "4096"),
                ("net.netfilter.nf_conntrack_count", "100"),
                ("net.netfilter.nf_conntrack_max", "262144"),
                ("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "120"),
            ],
        );
        if current {
            set(
                &mut s,
                &[
                    ("net.ipv4.tcp_max_orphans", "131072"),
                    ("fs.file-nr", "2000 0 2466183"),
                    ("fs.nr_open", "1048576"),
                ],
            );
        }
        s.counters = Some(CounterSample {
            interval_ms: 1000,
            ..CounterSample::default()
        });
        s
    }

    fn lo(port: u16) -> Endpoint {
        Endpoint::new("127.0.0.1".parse().expect("ip"), port)
    }

    fn listener(port: u16, accept_queue: u32, backlog: u32) -> ListenerSocket {
        ListenerSocket {
            local: lo(port),
            accept_queue,
            backlog,
            backlog_known: true,
            inode: u64::from(port),
            owner: Some(Owner { pid: 100, fd: 3 }),
        }
    }

    /// Outgoing connections to a loopback service, closed client first: TIME_WAIT on
    /// loopback that the default tcp_tw_reuse=2 already recycles.
    fn loopback_clients(s: &mut Snapshot, time_wait: u64, established: u64) {
        let mut counts = StateCounts::default();
        counts.0[TcpState::TimeWait.index()] = time_wait;
        counts.0[TcpState::Established.index()] = established;
        s.sockets.port_use.push(PortUse {
            local_ip: "127.0.0.1".parse().expect("ip"),
            remote: lo(5432),
            counts,
            sample_owner: Some(Owner { pid: 100, fd: 4 }),
            usable: s.ephemeral_ports().usable(),
            time_wait_ages: Default::default(),
            tw_reuse: false,
        });
        s.sockets.time_wait.client_side += time_wait;
        s.sockets
            .time_wait
            .by_destination
            .insert(lo(5432), time_wait);
        s.summary.ipv4.0[TcpState::TimeWait.index()] += time_wait;
        s.summary.ipv4.0[TcpState::Established.index()] += 2 * established;
        s.sockstat = Some(Sockstat {
            tw: time_wait,
            ..Sockstat::default()
        });
    }

    /// Everything at once, in two namespaces: folklore sysctls, a full accept queue,
    /// orphans, a nearly full file table and conntrack table, and a port shortage.
    fn trouble() -> HostSnapshot {
        let mut host = namespace(1, "host", true);
        set(
            &mut host,
            &[
                ("net.ipv4.tcp_tw_recycle", "1"),
                ("net.ipv4.tcp_fin_timeout", "120"),
                ("net.ipv4.tcp_timestamps", "0"),
                ("net.ipv4.tcp_max_tw_buckets", "5000"),
                ("net.ipv4.tcp_syn_retries", "2"),
                ("net.ipv4.tcp_synack_retries", "2"),
                ("net.ipv4.ip_local_port_range", "40000 50000"),
                ("net.core.somaxconn", "3000"),
                ("net.ipv4.tcp_keepalive_time", "600"),
                ("net.ipv4.tcp_syncookies", "0"),
                ("net.ipv4.tcp_abort_on_overflow", "1"),
                ("net.netfilter.nf_conntrack_count", "250000"),
                ("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "600"),
                ("fs.file-nr", "2400000 0 2466183"),
            ],
        );
        host.sockets.listeners = vec![listener(8080, 3001, 3000), listener(45000, 0, 128)];
        loopback_clients(&mut host, 9000, 50);
        host.summary.ipv4.0[TcpState::FinWait1.index()] = 30_000;
        if let Some(st) = host.sockstat.as_mut() {
            st.orphan = 40_000;
        }
        let mut pod = namespace(2, "pod-a", false);
        set(
            &mut pod,
            &[
                ("net.core.somaxconn", "128"),
                ("net.ipv4.tcp_syncookies", "2"),
                ("net.ipv4.tcp_max_tw_buckets", "1000"),
                ("net.ipv4.tcp_ehash_entries", "-262144"),
                ("net.netfilter.nf_conntrack_count", "250000"),
            ],
        );
        pod.sockets.listeners = vec![listener(80, 129, 128)];
        let calm = namespace(3, "calm", false);
        HostSnapshot {
            namespaces: vec![host, pod, calm],
            all_namespaces: true,
            missing: Vec::new(),
        }
    }

    fn report(host: HostSnapshot) -> CheckReport {
        let findings = analyze::run_host(&host, &Thresholds::default());
        CheckReport {
            hostname: "web-1".into(),
            host,
            findings,
        }
    }

    /// (section, key, value) for every setting line of the file: live lines in the
    /// first section, commented-out lines in each namespace section.
    fn lines_in_file(text: &str) -> BTreeSet<(String, String, String)> {
        let mut section = "this namespace".to_string();
        let mut out = BTreeSet::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# --- network namespace ") {
                section = rest.split(" (net:[").next().unwrap_or(rest).to_string();
                continue;
            }
            let (commented, body) = match l.strip_prefix("# ") {
                Some(b) => (true, b),
                None => (false, l),
            };
            let Some((k, v)) = body.split_once(" = ") else {
                continue;
            };
            if k.contains(' ') || !k.contains('.') {
                continue;
            }
            assert_eq!(
                commented,
                section != "this namespace",
                "{l}: live lines only for the namespace tcpdoctor runs in"
            );
            out.insert((section.clone(), k.to_string(), v.to_string()));
        }
        out
    }

    /// The union of the findings' proposals, computed here without the renderer.
    fn union(r: &CheckReport) -> BTreeSet<(String, String, String)> {
        let mut out = BTreeSet::new();
        for f in &r.findings {
            let names: Vec<Option<String>> = if f.namespaces.is_empty() {
                vec![None]
            } else {
                f.namespaces.iter().map(|n| Some(n.name.clone())).collect()
            };
            for c in &f.proposed {
                let host_wide = !PER_NETNS_SYSCTLS.contains(&c.key.as_str());
                for ns in &names {
                    let section = match ns {
                        Some(n) if n != "host" && !host_wide => n.clone(),
                        _ => "this namespace".to_string(),
                    };
                    out.insert((section, c.key.clone(), c.value.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn file_is_exactly_the_union_of_the_findings_proposals() {
        let r = report(trouble());
        let text = render(&r);
        let want = union(&r);
        assert_eq!(lines_in_file(&text), want, "{text}");
        // The trouble host proposes in both namespaces, host-wide keys once.
        for (section, key, value) in [
            ("this namespace", "net.ipv4.tcp_timestamps", "1"),
            ("this namespace", "net.ipv4.tcp_max_tw_buckets", "131072"),
            ("this namespace", "net.ipv4.tcp_syn_retries", "6"),
            ("this namespace", "net.ipv4.tcp_synack_retries", "5"),
            ("this namespace", "net.ipv4.tcp_syncookies", "1"),
            ("this namespace", "net.ipv4.tcp_abort_on_overflow", "0"),
            ("this namespace", "net.core.somaxconn", "8192"),
            // The ports are short here, so ephemeral_port_exhaustion's widening wins
            // over the audit's parity fix (which defers to it).
            (
                "this namespace",
                "net.ipv4.ip_local_port_range",
                "32768 65535",
            ),
            ("this namespace", "net.ipv4.tcp_orphan_retries", "3"),
            ("this namespace", "fs.file-max", "4932366"),
            ("this namespace", "net.netfilter.nf_conntrack_max", "524288"),
            (
                "this namespace",
                "net.netfilter.nf_conntrack_tcp_timeout_time_wait",
                "120",
            ),
            ("pod-a", "net.core.somaxconn", "4096"),
            ("pod-a", "net.ipv4.tcp_syncookies", "1"),
            ("pod-a", "net.ipv4.tcp_max_tw_buckets", "131072"),
        ] {
            assert!(
                want.contains(&(section.into(), key.into(), value.into())),
                "{section} {key} = {value} missing in\n{text}"
            );
        }
        // Not proposed: recycle (gone on new kernels), a raised fin_timeout that no
        // orphaned FIN_WAIT2 explains, keepalive, tw_reuse for loopback TIME_WAIT.
        for key in [
            "net.ipv4.tcp_tw_recycle",
            "net.ipv4.tcp_fin_timeout",
            "net.ipv4.tcp_keepalive_time",
            "net.ipv4.tcp_tw_reuse",
        ] {
            assert!(!want.iter().any(|(_, k, _)| k == key), "{key} in\n{text}");
        }
        assert!(!text.contains("tcp_tw_reuse = "), "{text}");
        // Every setting line has its reason right above it.
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if !l.is_empty() && !l.starts_with('#') {
                assert!(lines[i - 1].starts_with('#'), "{l} has no comment");
            }
        }
        assert!(text.contains("# --- network namespace pod-a (net:[2]) ---"));
        assert!(
            !text.contains("namespace calm"),
            "nothing for calm: no section"
        );
        let joined = text.replace("\n# ", " ");
        assert!(
            joined.contains("ip netns exec pod-a sysctl -w KEY=VALUE"),
            "{text}"
        );
        assert!(text.contains("Containers start from the kernel defaults"));
        assert!(text.contains("# Not here on purpose: net.ipv4.tcp_tw_recycle."));
        assert!(text.contains("It is on right now on this (pre-4.12) kernel"));
        // Two findings propose abort_on_overflow=0 here: one line, both named.
        assert_eq!(
            text.matches("\nnet.ipv4.tcp_abort_on_overflow = 0").count(),
            1
        );
        assert!(
            text.contains("proposed by listen_overflow, sysctl_audit"),
            "{text}"
        );
    }

    /// One key, one value, per namespace, across every rule: two findings that propose
    /// different values for a key are a bug.
    #[test]
    fn no_two_findings_propose_different_values_for_one_key() {
        let mut hosts = vec![trouble()];
        // Each namespace of the trouble host alone, as the primary.
        for i in 0..3 {
            let mut h = trouble();
            let mut one = h.namespaces.swap_remove(i);
            if let Some(n) = one.netns.as_mut() {
                n.current = true;
            }
            hosts.push(HostSnapshot {
                namespaces: vec![one],
                all_namespaces: false,
                missing: Vec::new(),
            });
        }
        // A shortage of ports next to a same-parity range and a lowered tw limit.
        let mut busy = namespace(1, "host", true);
        set(
            &mut busy,
            &[
                ("net.ipv4.ip_local_port_range", "40000 40100"),
                ("net.ipv4.tcp_max_tw_buckets", "10000"),
                ("net.ipv4.tcp_tw_reuse", "0"),
            ],
        );
        loopback_clients(&mut busy, 90, 5);
        busy.sockstat = Some(Sockstat {
            tw: 9_990,
            ..Sockstat::default()
        });
        hosts.push(HostSnapshot {
            namespaces: vec![busy],
            all_namespaces: false,
            missing: Vec::new(),
        });
        let mut proposals = 0;
        for h in hosts {
            let r = report(h);
            proposals += r.findings.iter().map(|f| f.proposed.len()).sum::<usize>();
            let c = conflicts(&r);
            assert!(c.is_empty(), "{c:#?}\n{:#?}", r.findings);
        }
        assert!(
            proposals > 20,
            "the hosts exercise the proposals: {proposals}"
        );
    }

    /// The old file proposed tcp_tw_reuse=1 and a wider port range for any host with
    /// outgoing connections; a healthy one now gets nothing.
    #[test]
    fn healthy_host_with_loopback_time_wait_and_outgoing_connections_changes_nothing() {
        let mut host = namespace(1, "host", true);
        host.sockets.listeners = vec![listener(5432, 0, 4096)];
        loopback_clients(&mut host, 800, 20);
        let r = report(HostSnapshot {
            namespaces: vec![host],
            all_namespaces: false,
            missing: Vec::new(),
        });
        assert!(
            r.findings.iter().all(|f| f.proposed.is_empty()),
            "{:#?}",
            r.findings
        );
        let text = render(&r);
        assert!(text.contains("# Nothing to change:"), "{text}");
        assert!(lines_in_file(&text).is_empty(), "{text}");
        assert!(!text.contains("tcp_tw_reuse ="), "{text}");
        assert!(!text.contains("It is on right now"), "{text}");
    }

    #[test]
    fn proposals_only_for_other_namespaces_are_commented_out() {
        let mut h = trouble();
        h.namespaces[0] = namespace(1, "host", true);
        set(
            &mut h.namespaces[1],
            &[("net.netfilter.nf_conntrack_count", "10")],
        );
        let r = report(h);
        let text = render(&r);
        assert!(
            text.replace("\n# ", " ")
                .contains("Nothing to change in the namespace tcpdoctor ran in."),
            "{text}"
        );
        let lines = lines_in_file(&text);
        assert!(!lines.is_empty());
        assert!(
            lines.iter().all(|(section, _, _)| section == "pod-a"),
            "{text}"
        );
        // A pod's nearly full conntrack table: the limit is host-wide, so it is a live
        // line for the host.
        let mut h = trouble();
        h.namespaces[0] = namespace(1, "host", true);
        let r = report(h);
        let lines = lines_in_file(&render(&r));
        assert!(lines.contains(&(
            "this namespace".into(),
            "net.netfilter.nf_conntrack_max".into(),
            "524288".into()
        )));
    }

    /// One cause in two namespaces is one finding naming both (analyze::merge): its
    /// proposals still go to each namespace's section.
    #[test]
    fn a_finding_about_several_namespaces_proposes_for_each() {
        let mut h = trouble();
        h.namespaces[0] = namespace(1, "host", true);
        let mut second = namespace(4, "pod-b", false);
        set(
            &mut second,
            &[
                ("net.core.somaxconn", "128"),
                ("net.ipv4.tcp_syncookies", "2"),
                ("net.ipv4.tcp_max_tw_buckets", "1000"),
                ("net.ipv4.tcp_ehash_entries", "-262144"),
            ],
        );
        h.namespaces.push(second);
        let r = report(h);
        let cookies: Vec<&Finding> = r
            .findings
            .iter()
            .filter(|f| f.data["sysctl"] == "net.ipv4.tcp_syncookies")
            .collect();
        assert_eq!(cookies.len(), 1, "one cause, one finding");
        assert_eq!(cookies[0].namespaces.len(), 2);
        let lines = lines_in_file(&render(&r));
        for pod in ["pod-a", "pod-b"] {
            assert!(
                lines.contains(&(pod.into(), "net.ipv4.tcp_syncookies".into(), "1".into())),
                "{pod}: {lines:?}"
            );
        }
        assert_eq!(lines, union(&r));
    }

    #[test]
    fn conflicting_proposals_are_shown_not_settled() {
        let mut r = report(trouble());
        let f = r
            .findings
            .iter_mut()
            .find(|f| f.rule_id == "sysctl_audit" && f.data["sysctl"] == "net.ipv4.tcp_syn_retries")
            .expect("syn_retries finding");
        let mut other = f.clone();
        other.rule_id = "listen_overflow";
        other.proposed[0].value = "3".into();
        r.findings.push(other);
        let c = conflicts(&r);
        assert_eq!(c.len(), 1, "{c:#?}");
        assert_eq!(c[0].key, "net.ipv4.tcp_syn_retries");
        assert!(render(&r)
            .contains("tcpdoctor bug: listen_overflow proposes net.ipv4.tcp_syn_retries = 3"));
    }

    /// For the rules whose advice this file renders: commands are in `command`, never
    /// in the prose, and every sentence of an explanation or a step starts with a capital
    /// (titles may start with a setting or a process name).
    #[test]
    fn fix_steps_keep_commands_apart_and_read_as_sentences() {
        const RULES: &[&str] = &[
            "sysctl_audit",
            "listen_overflow",
            "orphans",
            "fd_exhaustion",
            "conntrack_table",
            "kernel_log",
            "netns_sysctl_drift",
        ];
        let mut h = trouble();
        h.namespaces[0].kernel_log = Some(vec![crate::model::KernelLogEntry {
            message: "TCP: too many orphaned sockets".into(),
            count: 2,
            last_seen_s: 9,
        }]);
        h.namespaces[0].processes.insert(
            100,
            crate::model::ProcessFacts {
                pid: 100,
                comm: "app".into(),
                uid: 0,
                cmdline: String::new(),
                open_fds: 1000,
                nofile_soft: Some(crate::model::Limit::Value(1024)),
                nofile_hard: Some(crate::model::Limit::Value(4096)),
                detached_tcp_fds: None,
            },
        );
        // The checks the trouble host leaves out, in its third namespace.
        let calm = &mut h.namespaces[2];
        set(
            calm,
            &[
                ("net.ipv4.tcp_fin_timeout", "10"),
                ("net.ipv4.tcp_tw_reuse", "1"),
                ("net.ipv4.tcp_tw_recycle", "0"),
                ("net.ipv4.ip_local_port_range", "1024 65000"),
            ],
        );
        calm.sockets.time_wait.server_side = 300;
        calm.sockets.listeners = vec![listener(6379, 0, 511)];
        let r = report(h);
        let mut seen = BTreeSet::new();
        let mut lowercase = Vec::new();
        for f in r.findings.iter().filter(|f| RULES.contains(&f.rule_id)) {
            seen.insert(f.rule_id);
            for st in &f.fix {
                for cmd in [
                    "sysctl -w",
                    "sysctl net.",
                    "ss -t",
                    "ss -l",
                    "nstat ",
                    "grep ",
                    "prlimit ",
                    "conntrack -C",
                    "conntrack -S",
                    "conntrack -L",
                    "dmesg",
                    "cat /proc",
                ] {
                    assert!(
                        !st.text.contains(cmd),
                        "{cmd:?} in the prose of {}: {st:?}",
                        f.rule_id
                    );
                }
            }
            for sentence in std::iter::once(f.why.as_str())
                .chain(f.fix.iter().map(|st| st.text.as_str()))
                .flat_map(|t| t.split(". "))
            {
                let first = sentence.trim_start().chars().next();
                if first.is_none_or(|c| c.is_lowercase()) {
                    lowercase.push(format!("{}: {sentence}", f.rule_id));
                }
            }
        }
        assert!(
            lowercase.is_empty(),
            "sentences starting lowercase: {lowercase:#?}"
        );
        assert_eq!(seen.len(), RULES.len(), "every rule is exercised: {seen:?}");
    }
}
