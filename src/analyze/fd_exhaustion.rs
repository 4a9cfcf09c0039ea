//! Rule `fd_exhaustion`: descriptor limits about to be hit. Two different limits with two
//! different errors: the host-wide file table (fs.file-max, ENFILE) and each process's
//! soft RLIMIT_NOFILE (EMFILE, "Too many open files"). Reads only the snapshot.

use std::collections::BTreeMap;

use serde_json::json;

use super::util::{pct, process_label};
use super::Thresholds;
use crate::model::persisted::NofileSource;
use crate::model::units::count;
use crate::model::{
    Evidence, Finding, FixStep, Limit, Nature, ProcessFacts, Severity, Snapshot, SysctlChange,
};

pub const ID: &str = "fd_exhaustion";

/// The kernel's default ceiling for a hard RLIMIT_NOFILE (fs.nr_open, `sysctl_nr_open`).
const NR_OPEN_DEFAULT: u64 = 1_048_576;

/// Processes named one by one in the evidence of a grouped finding.
const EVIDENCE_PROCESSES: usize = 5;

pub fn check(s: &Snapshot, t: &Thresholds) -> Vec<Finding> {
    let mut out: Vec<Finding> = file_table_finding(s, t).into_iter().collect();
    out.extend(process_findings(s, t));
    out
}

fn severity_for(share: f64, t: &Thresholds) -> Option<Severity> {
    if share >= t.fd_critical_pct {
        Some(Severity::Critical)
    } else if share >= t.fd_warn_pct {
        Some(Severity::Warning)
    } else {
        None
    }
}

fn nr_open(s: &Snapshot) -> u64 {
    s.sysctl_i64("fs.nr_open")
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(NR_OPEN_DEFAULT)
}

fn file_table_finding(s: &Snapshot, t: &Thresholds) -> Option<Finding> {
    let ft = s.file_table()?;
    if ft.max == 0 {
        return None;
    }
    let share = pct(ft.allocated, ft.max);
    let severity = severity_for(share, t)?;

    let mut holders: Vec<&ProcessFacts> = s.processes.values().collect();
    holders.sort_by(|a, b| b.open_fds.cmp(&a.open_fds).then(a.pid.cmp(&b.pid)));
    holders.truncate(5);

    let mut evidence = vec![
        Evidence::new(
            "file handles allocated (fs.file-nr)",
            format!("{} of {} ({share:.1}%)", ft.allocated, ft.max),
        ),
        Evidence::new("fs.file-max", ft.max),
    ];
    for p in &holders {
        evidence.push(Evidence::new(
            "biggest holder",
            format!("{}: {} open", process_label(s, p.pid), p.open_fds),
        ));
    }

    // Doubling is a step, not a target: the file table is cheap (about 1 KiB of kernel
    // memory per open file), the real question is who holds them.
    let proposed = ft.max.saturating_mul(2);
    // alloc_empty_file() (fs/file_table.c): the limit is not applied to callers with
    // CAP_SYS_ADMIN in the initial user namespace.
    let why = format!(
        "The fs.file-max limit caps open files across the whole host; once {} are allocated, open(), socket() and accept() fail with ENFILE (\"Too many open files in system\") and the kernel logs \"VFS: file-max limit {} reached\". Processes with CAP_SYS_ADMIN in the host's initial user namespace are spared, so a root daemon may keep working while other services fail (root inside a container with its own user namespace is not spared). This is the only descriptor problem that raising fs.file-max fixes; it is host-wide, so a container shares it and cannot change it.",
        ft.max, ft.max
    );
    let fix = vec![
        FixStep::run("Check (allocated, 0, max)", "cat /proc/sys/fs/file-nr"),
        FixStep::run(
            "Find the holders",
            "for p in /proc/[0-9]*; do echo \"$(ls $p/fd 2>/dev/null | wc -l) $p $(cat $p/comm 2>/dev/null)\"; done | sort -rn | head",
        ),
        FixStep::run("Raise it now", format!("sysctl -w fs.file-max={proposed}")),
        FixStep::run(
            "Keep it after reboot: the proposed settings, as a file for /etc/sysctl.d/",
            "tcpdoctor check --emit-sysctl",
        ),
        FixStep::run(
            "If one process holds most of them and they are CLOSE_WAIT sockets, the leak is the bug",
            format!(
                "tcpdoctor sockets --pid {} --state close-wait",
                holders.first().map_or("PID".to_string(), |p| p.pid.to_string())
            ),
        ),
    ];
    let mut f = Finding::new(
        ID,
        severity,
        Nature::Live,
        format!(
            "Host file table {share:.1}% full: {} of fs.file-max {} allocated",
            ft.allocated, ft.max
        ),
    );
    f.evidence = evidence;
    f.why = why;
    f.fix = fix;
    f.proposed = vec![SysctlChange {
        key: "fs.file-max".into(),
        value: proposed.to_string(),
        was: Some(ft.max.to_string()),
        why: format!(
            "Was {}, and {} were allocated. Twice the limit: a file costs about 1 KiB of kernel memory, and the real question is who holds them. Host-wide.",
            ft.max, ft.allocated
        ),
    }];
    f.data = json!({
            "scope": "system",
            "allocated": ft.allocated,
            "max": ft.max,
            "pct": round1(share),
            "proposed_file_max": proposed,
            "top_holders": holders.iter().map(|p| json!({"pid": p.pid, "comm": p.comm, "open_fds": p.open_fds})).collect::<Vec<_>>(),
    });
    Some(f)
}

/// Name, uid, soft limit and hard limit (`Some(None)`: unlimited) shared by a group.
type GroupKey<'a> = (&'a str, u32, u64, Option<Option<u64>>);

/// One process over the threshold.
struct Offender<'a> {
    p: &'a ProcessFacts,
    soft: u64,
    share: f64,
    severity: Severity,
    close_wait: u64,
}

fn process_findings(s: &Snapshot, t: &Thresholds) -> Vec<Finding> {
    let mut close_wait: BTreeMap<u32, u64> = BTreeMap::new();
    for c in &s.sockets.close_wait {
        if let Some(o) = c.owner {
            *close_wait.entry(o.pid).or_default() += 1;
        }
    }
    // Workers of one program share one limit (nginx, php-fpm, gunicorn): group them by
    // name, user and limits so the report shows one finding that names every pid.
    let mut groups: BTreeMap<GroupKey, Vec<Offender>> = BTreeMap::new();
    for p in s.processes.values() {
        // Unlimited or unreadable soft limits cannot be compared against.
        let Some(soft) = p.nofile_soft.and_then(Limit::value) else {
            continue;
        };
        if soft == 0 {
            continue;
        }
        let share = pct(p.open_fds, soft);
        let Some(severity) = severity_for(share, t) else {
            continue;
        };
        groups
            .entry((
                p.comm.as_str(),
                p.uid,
                soft,
                p.nofile_hard.map(Limit::value),
            ))
            .or_default()
            .push(Offender {
                p,
                soft,
                share,
                severity,
                close_wait: close_wait.get(&p.pid).copied().unwrap_or(0),
            });
    }
    let mut findings: Vec<(f64, Finding)> = groups
        .into_values()
        .filter_map(|mut group| {
            group.sort_by(|a, b| b.share.total_cmp(&a.share).then(a.p.pid.cmp(&b.p.pid)));
            let worst = group.first()?.share;
            Some((worst, group_finding(s, &group)?))
        })
        .collect();
    findings.sort_by(|a, b| b.0.total_cmp(&a.0));
    findings.into_iter().map(|(_, f)| f).collect()
}

/// A soft limit worth proposing: room for four times today's use, at least 65536, and
/// never above the hard ceiling the kernel allows (fs.nr_open).
fn proposed_limit(open_fds: u64, nr_open: u64) -> u64 {
    open_fds
        .saturating_mul(4)
        .max(65_536)
        .checked_next_power_of_two()
        .unwrap_or(nr_open)
        .min(nr_open)
}

fn limit_text(l: Option<Limit>) -> String {
    match l {
        Some(Limit::Value(v)) => v.to_string(),
        Some(Limit::Unlimited) => "unlimited".to_string(),
        None => "unknown".to_string(),
    }
}

fn group_finding(s: &Snapshot, group: &[Offender]) -> Option<Finding> {
    let worst = group.first()?;
    let severity = group.iter().map(|o| o.severity).max()?;
    let pid = worst.p.pid;
    let soft = worst.soft;
    let hard = worst.p.nofile_hard;
    let nr_open = nr_open(s);
    let max_open = group.iter().map(|o| o.p.open_fds).max().unwrap_or(0);
    let target = proposed_limit(max_open, nr_open);
    // prlimit cannot raise the hard limit above fs.nr_open; keep a higher existing hard.
    let new_hard = match hard.and_then(Limit::value) {
        Some(h) if h > target => h,
        _ => target,
    };
    let cw_total: u64 = group.iter().map(|o| o.close_wait).sum();
    let fds_total: u64 = group.iter().map(|o| o.p.open_fds).sum();
    let cw_dominant = cw_total > 0 && cw_total * 4 >= fds_total;

    let who = if group.len() == 1 {
        process_label(s, pid)
    } else if worst.p.comm.is_empty() {
        format!("{} processes", group.len())
    } else {
        format!("{} ({} processes)", worst.p.comm, group.len())
    };
    let title = format!(
        "{who} near the open-files limit: {} of {soft} descriptors in use ({:.1}%{})",
        worst.p.open_fds,
        worst.share,
        if group.len() > 1 {
            format!(", worst pid {pid}")
        } else {
            String::new()
        }
    );

    let mut evidence = Vec::new();
    for o in group.iter().take(EVIDENCE_PROCESSES) {
        evidence.push(Evidence::new(
            format!("pid {}", o.p.pid),
            format!(
                "{} open of soft limit {} ({:.1}%), hard limit {}",
                o.p.open_fds,
                o.soft,
                o.share,
                limit_text(o.p.nofile_hard)
            ),
        ));
    }
    if group.len() > EVIDENCE_PROCESSES {
        evidence.push(Evidence::new(
            "not shown",
            count(
                (group.len() - EVIDENCE_PROCESSES) as u64,
                "more process",
                "more processes",
            ),
        ));
    }
    if cw_total > 0 {
        evidence.push(Evidence::new(
            "of these, CLOSE_WAIT sockets",
            format!("{cw_total} of {fds_total} descriptors"),
        ));
    }
    evidence.push(Evidence::new("fs.nr_open", nr_open));

    let mut why = format!(
        "When a process holds as many descriptors as its soft RLIMIT_NOFILE ({soft} here), its next open(), socket() or accept() fails with EMFILE, \"Too many open files\", however many the host as a whole has left. That limit is per process and is set by whoever started it; fs.file-max is a different, host-wide limit (ENFILE), so raising it changes nothing here."
    );
    if cw_dominant {
        why.push_str(&format!(
            " {cw_total} of the {fds_total} descriptors are CLOSE_WAIT sockets the program never closed: a higher limit only postpones the failure."
        ));
    }

    let pids: Vec<String> = group.iter().map(|o| o.p.pid.to_string()).collect();
    let mut fix = Vec::new();
    if cw_dominant {
        fix.push(FixStep::run(
            "The limit is not the bug: find the leak",
            format!("tcpdoctor sockets --pid {pid} --state close-wait"),
        ));
    }
    fix.push(FixStep::run(
        "Check the limits the process really has",
        format!("grep 'open files' /proc/{pid}/limits"),
    ));
    fix.push(FixStep::run(
        "Count the descriptors it holds",
        format!("ls /proc/{pid}/fd | wc -l"),
    ));
    if group.len() == 1 {
        fix.push(FixStep::run(
            "Relief now, without a restart",
            format!("prlimit --pid {pid} --nofile={target}:{new_hard}"),
        ));
    } else {
        fix.push(FixStep::run(
            "Relief now, without a restart",
            format!(
                "for p in {}; do prlimit --pid $p --nofile={target}:{new_hard}; done",
                pids.join(" ")
            ),
        ));
    }
    // Where the limit is set, read from the host's files (issue 12); without that,
    // the ways a limit is usually set.
    let origin = s.nofile_origin(pid);
    match origin.filter(|o| o.source != NofileSource::Unknown) {
        Some(o) => {
            evidence.extend(limit_source::evidence(o, worst.p));
            fix.extend(limit_source::fix_steps(o, target, new_hard));
        }
        None => {
            fix.push(FixStep::run(
                "A systemd service: find its unit",
                format!("systemctl status {pid}"),
            ));
            fix.push(FixStep::run(
                format!("In the editor that opens, add \"[Service]\" and \"LimitNOFILE={target}\""),
                "systemctl edit UNIT",
            ));
            fix.push(FixStep::run(
                "Restart it: the limit applies to the new process",
                "systemctl restart UNIT",
            ));
            fix.push(FixStep::say(
                "/etc/security/limits.conf is applied by pam_limits to login sessions only and does not reach services; DefaultLimitNOFILE= in /etc/systemd/system.conf changes every service (systemd 252 defaults to 1024:524288, keeping the soft 1024 for select() users).",
            ));
            fix.push(FixStep::say(format!(
                "Started from a login shell or su: raise it in /etc/security/limits.conf (\"USER soft nofile {target}\" and \"USER hard nofile {new_hard}\"); it applies to new sessions only. In a container: the runtime's ulimit option (for docker run, --ulimit nofile={target}:{new_hard})."
            )));
        }
    }
    fix.push(FixStep::say(format!(
        "The hard limit cannot exceed fs.nr_open ({nr_open}); setting it higher fails with EPERM. Programs may also raise their own soft limit up to the hard one with setrlimit(RLIMIT_NOFILE) at startup."
    )));

    let mut f = Finding::new(ID, severity, Nature::Live, title);
    f.evidence = evidence;
    f.why = why;
    f.fix = fix;
    f.data = json!({
            "scope": "process",
            "comm": worst.p.comm,
            "worst_pid": pid,
            "suggested_nofile": {"soft": target, "hard": new_hard},
            "nr_open": nr_open,
            "close_wait": cw_total,
            "limit_origin": origin.map(|o| serde_json::to_value(o).unwrap_or(serde_json::Value::Null)),
            "processes": group.iter().map(|o| json!({
                "pid": o.p.pid,
                "comm": o.p.comm,
                "uid": o.p.uid,
                "open_fds": o.p.open_fds,
                "nofile_soft": o.soft,
                "nofile_hard": o.p.nofile_hard.and_then(Limit::value),
                "pct": round1(o.share),
                "close_wait": o.close_wait,
                "severity": o.severity.name(),
            })).collect::<Vec<_>>(),
    });
    Some(f)
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Where a process's limit is set (collect::limits_source), in words and as the change to
/// make: the line in the unit, drop-in, system.conf or limits file, or a new drop-in.
mod limit_source {
    use crate::model::nginx::SourceRef;
    use crate::model::persisted::{NofileOrigin, NofilePair, NofileSource};
    use crate::model::{Evidence, FixStep, Limit, ProcessFacts};

    fn limit(l: Limit) -> String {
        match l {
            Limit::Value(v) => v.to_string(),
            Limit::Unlimited => "infinity".to_string(),
        }
    }

    fn pair(p: NofilePair) -> String {
        if p.soft == p.hard {
            limit(p.soft)
        } else {
            format!("{}:{}", limit(p.soft), limit(p.hard))
        }
    }

    /// One line saying who sets the limit, plus a line when the process runs with
    /// another limit than that.
    pub fn evidence(o: &NofileOrigin, p: &ProcessFacts) -> Vec<Evidence> {
        let unit = o.unit.as_ref().map_or("", |u| u.name.as_str());
        let conf = o.configured.map(pair).unwrap_or_default();
        let at = o.at.as_ref().map(ToString::to_string).unwrap_or_default();
        let text = match o.source {
            NofileSource::Unit => format!("LimitNOFILE={conf} at {at} (unit {unit})"),
            NofileSource::ManagerDefault => format!(
                "DefaultLimitNOFILE={conf} at {at}: the unit {unit} sets no LimitNOFILE="
            ),
            NofileSource::SystemdDefault => format!(
                "systemd's default {conf}: neither the unit {unit} nor system.conf sets one"
            ),
            NofileSource::PamLimits => format!(
                "{at} (\"{}\"), a login session of {}",
                o.at.as_ref().map_or("", |a| a.text.trim()),
                o.user.as_deref().unwrap_or("its user")
            ),
            NofileSource::PamUnset => format!(
                "a login session of {}: no nofile line in limits.conf or limits.d, so the login daemon's limit",
                o.user.as_deref().unwrap_or("its user")
            ),
            NofileSource::ContainerRuntime => {
                let c = o.container.as_deref().unwrap_or("a container");
                match (&o.at, o.unit.is_some()) {
                    (Some(at), false) => format!("{c}: docker's default-ulimits {conf} at {at}"),
                    (Some(at), true) => {
                        format!("{c}: inherited from {unit}, LimitNOFILE={conf} at {at}")
                    }
                    (None, true) => format!(
                        "{c}: inherited from {unit}, which sets none: systemd's default {conf} (or system.conf's)"
                    ),
                    (None, false) => format!("{c}: its runtime's default"),
                }
            }
            NofileSource::ParentShell => match &o.parent {
                Some(pp) => format!("inherited from its parent shell, {} (pid {})", pp.comm, pp.pid),
                None => "inherited from its parent shell".to_string(),
            },
            NofileSource::Unknown => "unknown".to_string(),
        };
        let mut out = vec![Evidence::new("limit set by", text)];
        for other in &o.overridden {
            out.push(Evidence::new("also set (overridden)", other.to_string()));
        }
        if o.matches == Some(false) {
            out.push(Evidence::new(
                "but the process runs with",
                format!(
                    "{}:{}: changed after it started (by the program itself, a wrapper's ulimit -n, or prlimit)",
                    p.nofile_soft.map_or("?".to_string(), limit),
                    p.nofile_hard.map_or("?".to_string(), limit)
                ),
            ));
        }
        out
    }

    /// `at`'s `Key=value` line with a new value, the key spelled as written.
    fn key_line(at: &SourceRef, value: &str) -> String {
        match at.text.split_once('=') {
            Some((left, _)) => format!("{left}={value}"),
            None => at.text.clone(),
        }
    }

    /// `at`'s limits.conf line with its value field replaced (comment kept).
    fn limits_line(at: &SourceRef, value: &str) -> String {
        let body_end = at.text.find('#').unwrap_or(at.text.len());
        let body = &at.text[..body_end];
        // The fourth field starts after three runs of non-blanks.
        let mut fields = 0;
        let mut in_field = false;
        for (i, c) in body.char_indices() {
            let blank = c == ' ' || c == '\t';
            if !blank && !in_field {
                fields += 1;
                if fields == 4 {
                    let end = body[i..].find([' ', '\t']).map_or(body.len(), |e| i + e);
                    return format!("{}{value}{}", &at.text[..i], &at.text[end..]);
                }
            }
            in_field = !blank;
        }
        at.text.clone()
    }

    fn new_file(path: &str, lines: &[String]) -> String {
        let mut p = format!("--- /dev/null\n+++ {path}\n@@ -0,0 +1,{} @@\n", lines.len());
        for l in lines {
            p.push('+');
            p.push_str(l);
            p.push('\n');
        }
        p
    }

    /// A systemd service's limit: edit the line when it is the administrator's (/etc),
    /// else a new drop-in in /etc (a vendor file is replaced on upgrade).
    fn unit_steps(o: &NofileOrigin, unit: &str, value: &str) -> Vec<FixStep> {
        let mut out = Vec::new();
        match &o.at {
            Some(at) if o.source == NofileSource::Unit && at.file.starts_with("/etc/") => {
                out.push(FixStep::patch(
                    format!("Raise it where it is set, {at}"),
                    crate::analyze::nginx_common::replace(at, &[key_line(at, value)]),
                ));
            }
            _ => {
                let dir = format!("/etc/systemd/system/{unit}.d");
                // Drop-ins apply in file-name order: the new one must come after the
                // one that sets the limit now.
                let current =
                    o.at.as_ref()
                        .filter(|a| a.file.contains(".d/"))
                        .map(|a| a.file.rsplit('/').next().unwrap_or("").to_string());
                let name = match current {
                    Some(c) if c.as_str() >= "override.conf" => "zz-nofile.conf",
                    _ => "override.conf",
                };
                let path = format!("{dir}/{name}");
                let exists = o.unit.as_ref().is_some_and(|u| u.dropins.contains(&path));
                let lines = ["[Service]".to_string(), format!("LimitNOFILE={value}")];
                if exists {
                    out.push(FixStep::say(format!(
                        "Add to {path}, under [Service]: LimitNOFILE={value}"
                    )));
                } else {
                    out.push(FixStep::patch(
                        format!(
                            "Set it for {unit} alone in a drop-in (what systemctl edit {unit} writes); drop-ins override the unit file and survive package upgrades"
                        ),
                        new_file(&path, &lines),
                    ));
                }
            }
        }
        out.push(FixStep::run(
            "Make systemd read it",
            "systemctl daemon-reload",
        ));
        out.push(FixStep::run(
            "Restart it: the limit applies to the new process",
            format!("systemctl restart {unit}"),
        ));
        out
    }

    /// The change that raises the limit where it is set, to `target` (soft) and
    /// `new_hard`.
    pub fn fix_steps(o: &NofileOrigin, target: u64, new_hard: u64) -> Vec<FixStep> {
        let value = format!("{target}:{new_hard}");
        let unit = o.unit.as_ref().map(|u| u.name.clone());
        match (o.source, unit) {
            (NofileSource::ContainerRuntime, _) if o.at.is_some() && o.unit.is_none() => vec![
                FixStep::say(format!(
                    "Raise docker's default in {} (\"default-ulimits\": {{\"nofile\": {{\"Name\": \"nofile\", \"Soft\": {target}, \"Hard\": {new_hard}}}}}), then restart dockerd; containers get it when they are created again. For this container alone: docker run --ulimit nofile={target}:{new_hard}.",
                    o.at.as_ref().map(ToString::to_string).unwrap_or_default()
                )),
            ],
            (NofileSource::ContainerRuntime, Some(u)) => {
                let mut v = unit_steps(o, &u, &value);
                v.push(FixStep::say(format!(
                    "Containers keep the limit they were created with: create them again afterwards, or give this one its own (docker run --ulimit nofile={target}:{new_hard}, or the pod's container runtime settings)."
                )));
                v
            }
            (NofileSource::Unit | NofileSource::ManagerDefault | NofileSource::SystemdDefault, Some(u)) => {
                unit_steps(o, &u, &value)
            }
            (NofileSource::PamLimits, _) => {
                let mut v = Vec::new();
                let mut lines: Vec<&SourceRef> = o.at.iter().collect();
                lines.extend(o.overridden.iter());
                for at in lines {
                    let kind = at.text.split_whitespace().nth(1).unwrap_or("");
                    let n = if kind.eq_ignore_ascii_case("hard") {
                        new_hard
                    } else {
                        target
                    };
                    v.push(FixStep::patch(
                        format!("Raise it where it is set, {at}"),
                        crate::analyze::nginx_common::replace(at, &[limits_line(at, &n.to_string())]),
                    ));
                }
                v.push(FixStep::say(
                    "pam_limits applies it when a session opens: log in again, then restart the program from the new session.",
                ));
                v
            }
            (NofileSource::PamUnset, _) => {
                let user = o.user.clone().unwrap_or_else(|| "USER".to_string());
                vec![
                    FixStep::patch(
                        format!("Give {user}'s login sessions a limit"),
                        new_file(
                            "/etc/security/limits.d/90-nofile.conf",
                            &[
                                format!("{user} soft nofile {target}"),
                                format!("{user} hard nofile {new_hard}"),
                            ],
                        ),
                    ),
                    FixStep::say("pam_limits applies it when a session opens: log in again, then restart the program from the new session. A long-running program is better off as a systemd service with LimitNOFILE=."),
                ]
            }
            (NofileSource::ParentShell, _) => {
                let who = o
                    .parent
                    .as_ref()
                    .map(|p| format!("{} (pid {})", p.comm, p.pid))
                    .unwrap_or_else(|| "its parent shell".to_string());
                vec![FixStep::say(format!(
                    "It inherited the limit from {who}: raise it there before starting the program (ulimit -n {target}, up to that shell's hard limit), or run the program as a systemd service with LimitNOFILE={value}."
                ))]
            }
            (NofileSource::ContainerRuntime, None) => vec![FixStep::say(format!(
                "Give the container its own limit with the runtime's ulimit option (docker or podman run --ulimit nofile={target}:{new_hard}; Kubernetes: the container runtime's default), then create it again."
            ))],
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::nginx::SourceRef;
    use crate::model::persisted::{NofileOrigin, NofilePair, UnitFiles};
    use crate::model::{CloseWaitSocket, Endpoint, Owner};

    fn proc(pid: u32, comm: &str, open_fds: u64, soft: Limit) -> ProcessFacts {
        ProcessFacts {
            pid,
            comm: comm.into(),
            uid: 33,
            cmdline: comm.into(),
            open_fds,
            nofile_soft: Some(soft),
            nofile_hard: Some(Limit::Value(524_288)),
            detached_tcp_fds: None,
        }
    }

    fn snapshot(procs: Vec<ProcessFacts>) -> Snapshot {
        let mut s = Snapshot::default();
        for p in procs {
            s.processes.insert(p.pid, p);
        }
        s
    }

    #[test]
    fn fires_per_program_worst_first_naming_every_pid() {
        let s = snapshot(vec![
            proc(10, "nginx", 1000, Limit::Value(1024)),
            proc(11, "nginx", 850, Limit::Value(1024)),
            proc(12, "nginx", 100, Limit::Value(1024)),
            proc(20, "java", 3300, Limit::Value(4096)),
            proc(30, "sshd", 5000, Limit::Unlimited),
        ]);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 2, "{f:#?}");
        assert_eq!(f[0].severity, Severity::Critical);
        assert_eq!(f[0].data["worst_pid"], 10);
        let pids: Vec<_> = f[0].data["processes"]
            .as_array()
            .expect("array")
            .iter()
            .map(|p| p["pid"].as_u64().expect("pid"))
            .collect();
        assert_eq!(pids, vec![10, 11]);
        assert_eq!(f[0].data["processes"][0]["open_fds"], 1000);
        assert_eq!(f[0].data["processes"][0]["pct"], 97.7);
        assert_eq!(f[0].data["processes"][1]["severity"], "warning");
        assert!(f[0].title.contains("nginx (2 processes)"), "{}", f[0].title);
        assert!(f[0]
            .fix
            .iter()
            .any(|l| l.mentions("for p in 10 11; do prlimit --pid $p --nofile=65536:524288")));
        assert!(f[0].fix.iter().any(|l| l.mentions("LimitNOFILE=65536")));
        assert!(f[0].proposed.is_empty(), "process limits are not sysctls");
        assert_eq!(f[1].severity, Severity::Warning);
        assert_eq!(f[1].data["worst_pid"], 20);
        assert!(f[1].title.starts_with("java (pid 20)"), "{}", f[1].title);
    }

    #[test]
    fn close_wait_heavy_process_is_told_the_limit_is_not_the_bug() {
        let mut s = snapshot(vec![proc(42, "app", 1000, Limit::Value(1024))]);
        s.sockets.close_wait = (0..600)
            .map(|i| CloseWaitSocket {
                local: Endpoint::new("10.0.0.1".parse().expect("ip"), 40000 + i),
                remote: Endpoint::new("10.0.0.2".parse().expect("ip"), 80),
                inode: 1 + u64::from(i),
                recv_q: 1,
                owner: Some(Owner { pid: 42, fd: 3 }),
                idle_ms: None,
                cookie: None,
                still_there: None,
            })
            .collect();
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].data["close_wait"], 600);
        assert!(f[0].fix[0].mentions("tcpdoctor sockets --pid 42 --state close-wait"));
    }

    #[test]
    fn host_file_table_fires_from_file_nr() {
        let mut s = snapshot(vec![proc(1, "init", 10, Limit::Value(1024))]);
        s.sysctls.insert("fs.file-nr".into(), "9600 0 10000".into());
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Critical);
        assert_eq!(f[0].data["scope"], "system");
        assert_eq!(f[0].data["pct"], 96.0);
        assert_eq!(f[0].data["proposed_file_max"], 20_000);
        assert_eq!(f[0].proposed.len(), 1);
        assert_eq!(f[0].proposed[0].key, "fs.file-max");
        assert_eq!(f[0].proposed[0].value, "20000");
        assert_eq!(f[0].proposed[0].was.as_deref(), Some("10000"));
        assert!(f[0].why.contains("CAP_SYS_ADMIN"), "{}", f[0].why);
        assert!(f[0].fix.iter().any(
            |st| st.command.as_deref() == Some("tcpdoctor sockets --pid 1 --state close-wait")
        ));

        let mut s = Snapshot::default();
        s.sysctls.insert("fs.file-nr".into(), "8500 0 10000".into());
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Warning);
        assert_eq!(f[0].data["allocated"], 8_500);
    }

    #[test]
    fn does_not_fire_below_threshold_or_without_limits() {
        let mut s = snapshot(vec![
            proc(10, "nginx", 500, Limit::Value(1024)),
            proc(11, "big", 900_000, Limit::Unlimited),
        ]);
        let mut unknown = proc(12, "hidden", 5000, Limit::Value(1024));
        unknown.nofile_soft = None;
        s.processes.insert(12, unknown);
        s.sysctls
            .insert("fs.file-nr".into(), "577 0 2466183".into());
        assert!(check(&s, &Thresholds::default()).is_empty());
        assert!(check(&Snapshot::default(), &Thresholds::default()).is_empty());
    }

    #[test]
    fn proposed_limit_respects_nr_open() {
        assert_eq!(proposed_limit(1000, NR_OPEN_DEFAULT), 65_536);
        assert_eq!(proposed_limit(100_000, NR_OPEN_DEFAULT), 524_288);
        assert_eq!(proposed_limit(900_000, NR_OPEN_DEFAULT), NR_OPEN_DEFAULT);
        assert_eq!(proposed_limit(1000, 32_768), 32_768);
    }

    fn origin(source: NofileSource, file: &str, line: u32, text: &str) -> NofileOrigin {
        NofileOrigin {
            source,
            configured: Some(NofilePair {
                soft: Limit::Value(1024),
                hard: Limit::Value(524_288),
            }),
            matches: Some(true),
            at: (!file.is_empty()).then(|| SourceRef {
                file: file.into(),
                line,
                text: text.into(),
            }),
            overridden: Vec::new(),
            unit: Some(UnitFiles {
                name: "app.service".into(),
                file: Some("/usr/lib/systemd/system/app.service".into()),
                dropins: Vec::new(),
            }),
            user: None,
            container: None,
            parent: None,
        }
    }

    fn flagged_with(o: NofileOrigin) -> Finding {
        let mut s = snapshot(vec![proc(10, "app", 1000, Limit::Value(1024))]);
        s.nofile_origins.insert(10, o);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1, "{f:#?}");
        f.into_iter().next().expect("one")
    }

    fn patches(f: &Finding) -> Vec<&str> {
        f.fix.iter().filter_map(|s| s.patch.as_deref()).collect()
    }

    /// An administrator's line is changed where it is.
    #[test]
    fn names_the_unit_line_and_patches_it() {
        let f = flagged_with(origin(
            NofileSource::Unit,
            "/etc/systemd/system/app.service.d/limits.conf",
            2,
            "LimitNOFILE=1024:524288",
        ));
        let by = f
            .evidence
            .iter()
            .find(|e| e.label == "limit set by")
            .expect("origin evidence");
        assert_eq!(
            by.value,
            "LimitNOFILE=1024:524288 at /etc/systemd/system/app.service.d/limits.conf:2 (unit app.service)"
        );
        assert_eq!(
            patches(&f),
            vec!["--- /etc/systemd/system/app.service.d/limits.conf\n+++ /etc/systemd/system/app.service.d/limits.conf\n@@ -2 +2,1 @@\n-LimitNOFILE=1024:524288\n+LimitNOFILE=65536:524288\n"]
        );
        assert!(f
            .fix
            .iter()
            .any(|st| st.command.as_deref() == Some("systemctl restart app.service")));
        // The generic steps give way to the specific ones.
        assert!(!f.fix.iter().any(|st| st.mentions("systemctl edit UNIT")));
        assert_eq!(f.data["limit_origin"]["source"], "unit");
        assert_eq!(f.data["limit_origin"]["at"]["line"], 2);
        assert_eq!(
            f.data["limit_origin"]["configured"],
            json!({"soft": 1024, "hard": 524_288})
        );
    }

    /// A package's unit file is overridden from a new drop-in in /etc; the systemd
    /// default too.
    #[test]
    fn vendor_units_and_defaults_get_a_new_dropin() {
        for (source, file) in [
            (NofileSource::Unit, "/usr/lib/systemd/system/app.service"),
            (NofileSource::SystemdDefault, ""),
        ] {
            let f = flagged_with(origin(source, file, 6, "LimitNOFILE=1024:524288"));
            assert_eq!(
                patches(&f),
                vec!["--- /dev/null\n+++ /etc/systemd/system/app.service.d/override.conf\n@@ -0,0 +1,2 @@\n+[Service]\n+LimitNOFILE=65536:524288\n"],
                "{source:?}"
            );
        }
        // A drop-in named after override.conf sets it now: the new one must sort later.
        let f = flagged_with(origin(
            NofileSource::Unit,
            "/usr/lib/systemd/system/app.service.d/zlimits.conf",
            2,
            "LimitNOFILE=1024",
        ));
        assert!(patches(&f)[0].contains("+++ /etc/systemd/system/app.service.d/zz-nofile.conf"));
    }

    #[test]
    fn login_sessions_get_the_limits_conf_line() {
        let mut o = origin(
            NofileSource::PamLimits,
            "/etc/security/limits.conf",
            4,
            "alice    soft    nofile    1024   # note",
        );
        o.unit = None;
        o.user = Some("alice".into());
        let f = flagged_with(o);
        assert_eq!(
            patches(&f),
            vec!["--- /etc/security/limits.conf\n+++ /etc/security/limits.conf\n@@ -4 +4,1 @@\n-alice    soft    nofile    1024   # note\n+alice    soft    nofile    65536   # note\n"]
        );
        assert!(f
            .evidence
            .iter()
            .any(|e| e.value.contains("a login session of alice")));
    }

    #[test]
    fn a_limit_changed_after_start_is_said() {
        let mut o = origin(
            NofileSource::Unit,
            "/etc/systemd/system/app.service",
            5,
            "LimitNOFILE=4096",
        );
        o.matches = Some(false);
        let f = flagged_with(o);
        assert!(f
            .evidence
            .iter()
            .any(|e| e.label == "but the process runs with"
                && e.value.starts_with("1024:524288: changed after it started")));
    }

    /// Nothing the files explain: the generic steps stay.
    #[test]
    fn unknown_origin_keeps_the_generic_steps() {
        let mut o = origin(NofileSource::Unknown, "", 0, "");
        o.unit = None;
        let f = flagged_with(o);
        assert!(f.fix.iter().any(|st| st.mentions("systemctl edit UNIT")));
        assert!(!f.evidence.iter().any(|e| e.label == "limit set by"));
    }
}
