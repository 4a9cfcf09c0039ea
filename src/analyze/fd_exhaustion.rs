//! Rule `fd_exhaustion`: descriptor limits about to be hit. Two different limits with two
//! different errors: the host-wide file table (fs.file-max, ENFILE) and each process's
//! soft RLIMIT_NOFILE (EMFILE, "Too many open files"). Reads only the snapshot.

use std::collections::BTreeMap;

use serde_json::json;

use super::util::{pct, process_label};
use super::Thresholds;
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

#[cfg(test)]
mod tests {
    use super::*;
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
}
