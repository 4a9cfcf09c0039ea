//! Rule `sysctl_persisted`: what the host's sysctl files apply at every boot, judged
//! against the live kernel (the files are read by `collect::sysctl_files`, in
//! systemd-sysctl's order). Three kinds of finding, each naming file:line with the change
//! as a diff:
//! - a setting the sysctl audit would flag that is not live now but comes back at the
//!   next boot (the live value was fixed by hand, the file was not): one finding per key,
//!   with the audit's judgement of the value the file holds;
//! - keys the files set that this kernel does not have (`tcp_tw_recycle` since 4.12):
//!   one finding listing them;
//! - other values that differ from the live ones: one finding listing them (info).
//!
//! Missing keys and other differences are reported for the TCP, socket, port, conntrack
//! and descriptor keys only ([`in_scope`]); drift elsewhere is not a connection problem.
//!
//! One cause, one finding: where the audit flags a live value, the line that persists it
//! goes into the audit's own finding ([`for_audit`], which the audit calls) and nothing is
//! reported here. Interface keys (`net.ipv4.conf.eth1.*`) of an absent interface are not
//! reported: systemd applies them when the interface appears. Reads only the snapshot.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::sysctl_audit;
use super::Thresholds;
use crate::model::nginx::SourceRef;
use crate::model::persisted::{LiveValue, PersistedSysctl, PersistedSysctls};
use crate::model::units::count;
use crate::model::{Evidence, Finding, FixStep, Nature, Severity, Snapshot, SysctlChange};

pub const ID: &str = "sysctl_persisted";

/// The file `check --emit-sysctl` is meant for; a line in a file read after it wins.
const EMITTED_NAME: &str = "90-tcpdoctor.conf";

/// Keys listed one by one in a grouped finding.
const SHOWN: usize = 10;

/// Keys whose absence tcpdoctor can explain.
fn missing_hint(key: &str) -> Option<&'static str> {
    match key {
        "net.ipv4.tcp_tw_recycle" => Some("removed in Linux 4.12"),
        "net.ipv4.tcp_tw_timeout" => Some("only Alibaba Cloud Linux kernels have it"),
        k if k.starts_with("net.netfilter.") || k.starts_with("net.nf_conntrack") => {
            Some("the nf_conntrack module is not loaded")
        }
        k if k.starts_with("net.bridge.") => Some("the br_netfilter module is not loaded"),
        _ => None,
    }
}

/// The keys this rule reports when they are missing or differ from live: the TCP,
/// socket, port, conntrack and descriptor settings tcpdoctor reasons about. Other drift
/// (kernel.pid_max, fs.protected_*) is not a connection problem.
fn in_scope(key: &str) -> bool {
    [
        "net.ipv4.tcp_",
        "net.ipv4.ip_local_",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.ip_autobind_reuse",
        "net.ipv6.tcp_",
        "net.core.",
        "net.netfilter.nf_conntrack",
        "net.nf_conntrack",
        "fs.file-max",
        "fs.nr_open",
    ]
    .iter()
    .any(|p| key.starts_with(p))
}

/// A per-interface key (`net.ipv4.conf.eth1.rp_filter`) of an interface other than
/// `all`/`default`: systemd applies it when the interface shows up (sysctl.d(5)).
fn interface_key(key: &str) -> bool {
    let parts: Vec<&str> = key.split('.').collect();
    matches!(
        parts.as_slice(),
        ["net", "ipv4" | "ipv6", "conf" | "neigh", ifname, _, ..] if *ifname != "all" && *ifname != "default"
    )
}

pub fn check(s: &Snapshot, t: &Thresholds) -> Vec<Finding> {
    let Some(p) = &s.persisted_sysctls else {
        return Vec::new();
    };
    let live_flagged: BTreeSet<&str> = sysctl_audit::flagged_keys(s, t);
    let mut out = comes_back(s, p, t, &live_flagged);
    let reported: BTreeSet<String> = out
        .iter()
        .filter_map(|f| f.data["sysctl"].as_str().map(str::to_string))
        .collect();
    out.extend(missing_keys(p));
    out.extend(differs_from_live(p, &live_flagged, &reported));
    out
}

/// A sysctl file's name as systemd sorts it: /etc/sysctl.conf is read as the
/// `99-sysctl.conf` link to it.
fn sort_name(file: &str) -> &str {
    if file == crate::model::persisted::SYSCTL_CONF {
        "99-sysctl.conf"
    } else {
        file.rsplit('/').next().unwrap_or(file)
    }
}

fn at_json(at: &SourceRef) -> Value {
    json!({"file": at.file, "line": at.line})
}

/// The line `at` (a `key = value` line) with `value` instead, spelled as written: the
/// same key, `-` and spacing.
fn with_value(at: &SourceRef, value: &str) -> String {
    match at.text.split_once('=') {
        Some((left, right)) => {
            let gap = if right.starts_with([' ', '\t']) {
                " "
            } else {
                ""
            };
            format!("{left}={gap}{value}")
        }
        None => at.text.clone(),
    }
}

/// One change to a line of a configuration file.
enum Edit<'a> {
    Replace(&'a SourceRef, String),
    Delete(&'a SourceRef),
    InsertAfter(&'a SourceRef, String),
}

impl Edit<'_> {
    fn at(&self) -> &SourceRef {
        match self {
            Edit::Replace(a, _) | Edit::Delete(a) | Edit::InsertAfter(a, _) => a,
        }
    }
}

/// One unified diff for `edits`: a header per file, its hunks in line order, each
/// hunk's new line number shifted by the lines added or removed above it.
fn diff(edits: &[Edit]) -> String {
    let mut by_file: BTreeMap<&str, Vec<&Edit>> = BTreeMap::new();
    for e in edits {
        by_file.entry(e.at().file.as_str()).or_default().push(e);
    }
    let mut out = String::new();
    for (file, mut es) in by_file {
        es.sort_by_key(|e| e.at().line);
        out.push_str(&format!("--- {file}\n+++ {file}\n"));
        let mut offset: i64 = 0;
        for e in es {
            let l = i64::from(e.at().line);
            match e {
                Edit::Replace(at, new) => {
                    out.push_str(&format!(
                        "@@ -{l} +{},1 @@\n-{}\n+{new}\n",
                        l + offset,
                        at.text
                    ));
                }
                Edit::Delete(at) => {
                    // A hunk that leaves no line is numbered after the line before it.
                    out.push_str(&format!("@@ -{l} +{},0 @@\n-{}\n", l + offset - 1, at.text));
                    offset -= 1;
                }
                Edit::InsertAfter(at, new) => {
                    out.push_str(&format!(
                        "@@ -{l} +{},2 @@\n {}\n+{new}\n",
                        l + offset,
                        at.text
                    ));
                    offset += 1;
                }
            }
        }
    }
    out
}

/// A diff creating `path` with `lines`.
fn new_file(path: &str, lines: &[String]) -> String {
    let mut p = format!("--- /dev/null\n+++ {path}\n@@ -0,0 +1,{} @@\n", lines.len());
    for l in lines {
        p.push('+');
        p.push_str(l);
        p.push('\n');
    }
    p
}

/// Whether a sysctl file is the administrator's to edit. Files under /usr/lib and
/// /usr/local/lib belong to packages (an upgrade puts them back) and /run is rebuilt at
/// boot: those are overridden from /etc/sysctl.d instead.
fn admin_file(file: &str) -> bool {
    file.starts_with("/etc/")
}

/// The file in /etc/sysctl.d that overrides package files: read after every file that
/// sets one of `keys` now (files are read in name order).
fn override_file(after: &[&SourceRef]) -> String {
    let name = ["99-zz-local.conf", "zz-local.conf"]
        .into_iter()
        .find(|n| after.iter().all(|a| sort_name(&a.file) < *n))
        .unwrap_or("zz-local.conf");
    format!("/etc/sysctl.d/{name}")
}

/// Fix steps that make the files set `changes` (key, value) where `ps_at` and the other
/// persisted lines are, and delete `deletes`; lines in package files are overridden or
/// explained instead.
fn file_steps(
    p: &PersistedSysctls,
    text: String,
    changes: &[(String, String)],
    anchor: Option<&SourceRef>,
    deletes: &[&SourceRef],
) -> Vec<FixStep> {
    let mut edits: Vec<Edit> = Vec::new();
    let mut overrides: Vec<(String, String, &SourceRef)> = Vec::new();
    for (key, value) in changes {
        match p.get(key) {
            Some(other) if admin_file(&other.at.file) => {
                edits.push(Edit::Replace(&other.at, with_value(&other.at, value)))
            }
            Some(other) => overrides.push((key.clone(), value.clone(), &other.at)),
            None => match anchor {
                Some(a) if admin_file(&a.file) => {
                    edits.push(Edit::InsertAfter(a, format!("{key} = {value}")))
                }
                Some(a) => overrides.push((key.clone(), value.clone(), a)),
                None => {}
            },
        }
    }
    let mut vendor_deletes: Vec<&SourceRef> = Vec::new();
    for d in deletes {
        if admin_file(&d.file) {
            edits.push(Edit::Delete(d));
        } else {
            vendor_deletes.push(d);
        }
    }
    let mut out = Vec::new();
    if !edits.is_empty() {
        out.push(FixStep::patch(text.clone(), diff(&edits)));
    }
    if !overrides.is_empty() {
        let after: Vec<&SourceRef> = overrides.iter().map(|(_, _, a)| *a).collect();
        let path = override_file(&after);
        let lines: Vec<String> = overrides
            .iter()
            .map(|(k, v, _)| format!("{k} = {v}"))
            .collect();
        let from: Vec<String> = after.iter().map(|a| a.to_string()).collect();
        let why = format!(
            "{text}: {} {} a package's or is rebuilt at boot (/run), so the change goes into a file in /etc/sysctl.d read after it",
            from.join(", "),
            if from.len() == 1 { "is" } else { "are" }
        );
        if p.files.contains(&path) {
            out.push(FixStep::say(format!(
                "{why}: add to {path}: {}",
                lines.join("; ")
            )));
        } else {
            out.push(FixStep::patch(why, new_file(&path, &lines)));
        }
    }
    if !vendor_deletes.is_empty() {
        let at: Vec<String> = vendor_deletes.iter().map(|a| a.to_string()).collect();
        out.push(FixStep::say(format!(
            "{} is a package's or a runtime file: rather than deleting the line there (an upgrade puts it back), set the value you want from a file in /etc/sysctl.d read after it, or replace the whole file with one of the same name in /etc/sysctl.d.",
            at.join(", ")
        )));
    }
    out
}

/// The change that makes the files say what `proposed` says, or, with no proposal,
/// that drops the line at `ps.at` (the next boot then keeps the kernel default).
fn file_fix(p: &PersistedSysctls, ps: &PersistedSysctl, proposed: &[SysctlChange]) -> Vec<FixStep> {
    if proposed.is_empty() {
        return file_steps(
            p,
            format!(
                "Delete the line at {}, so that the next boot keeps the kernel default",
                ps.at
            ),
            &[],
            None,
            &[&ps.at],
        );
    }
    let set: Vec<String> = proposed
        .iter()
        .map(|c| format!("{} = {}", c.key, c.value))
        .collect();
    let changes: Vec<(String, String)> = proposed
        .iter()
        .map(|c| (c.key.clone(), c.value.clone()))
        .collect();
    file_steps(
        p,
        format!(
            "Make the sysctl files say {} ({} sets {} now), so that the next boot keeps it",
            set.join(" and "),
            ps.at,
            ps.short()
        ),
        &changes,
        Some(&ps.at),
        &[],
    )
}

/// Evidence lines about where a persisted setting comes from beyond its winning line.
fn origin_evidence(ps: &PersistedSysctl) -> Vec<Evidence> {
    let mut out = Vec::new();
    for o in &ps.overridden {
        out.push(Evidence::new(
            "also set (earlier, overridden)",
            format!("{} = {} at {}", ps.short(), o.value, o.at),
        ));
    }
    if let Some(glob) = &ps.glob {
        out.push(Evidence::new("set through the pattern", glob));
    }
    if let Some(pp) = &ps.procps_at {
        out.push(Evidence::new(
            "sysctl --system (procps) ends with",
            format!(
                "{} from {} (it reads /etc/sysctl.conf again last; boot uses systemd-sysctl's order)",
                pp.value, pp.at
            ),
        ));
    }
    out
}

/// What the sysctl audit adds to its finding about `key` when the host's sysctl files were
/// read: where the key is persisted (or that it is not), and the change to that file.
/// `None` when the files were not read (a namespace other than the host's, or a replay
/// without them): the audit then keeps its generic "find where it is set" step.
pub struct AuditNote {
    pub evidence: Vec<Evidence>,
    pub fix: Vec<FixStep>,
    pub data: Value,
}

pub fn for_audit(s: &Snapshot, key: &str, proposed: &[SysctlChange]) -> Option<AuditNote> {
    let p = s.persisted_sysctls.as_ref()?;
    let Some(ps) = p.get(key) else {
        return Some(AuditNote {
            evidence: vec![Evidence::new(
                "in the sysctl files",
                "not set: changed since boot (sysctl -w, a script, a container runtime), so the next boot brings the kernel default back",
            )],
            fix: Vec::new(),
            data: Value::Null,
        });
    };
    let same = !ps.differs_from_live();
    let mut evidence = vec![Evidence::new(
        "persisted at",
        format!(
            "{}: {} = {}{}",
            ps.at,
            ps.short(),
            ps.value,
            if same {
                " (written again at every boot)".to_string()
            } else {
                " (the live value was changed since boot; this one returns at the next boot)"
                    .to_string()
            }
        ),
    )];
    evidence.extend(origin_evidence(ps));
    let mut fix = file_fix(p, ps, proposed);
    if !proposed.is_empty() && sort_name(&ps.at.file) > EMITTED_NAME {
        fix.push(FixStep::say(format!(
            "{} is read after /etc/sysctl.d/{EMITTED_NAME}, so a file written from tcpdoctor check --emit-sysctl would lose to it at boot: change the line itself.",
            ps.at.file
        )));
    }
    let others: Vec<String> = ps
        .overridden
        .iter()
        .filter(|o| o.value == ps.value)
        .map(|o| o.at.to_string())
        .collect();
    if !others.is_empty() {
        fix.push(FixStep::say(format!(
            "The same value is also set at {}: change it there too, or it takes over once this line goes.",
            others.join(", ")
        )));
    }
    Some(AuditNote {
        evidence,
        fix,
        data: json!({
            "file": ps.at.file,
            "line": ps.at.line,
            "value": ps.value,
            "same_as_live": same,
        }),
    })
}

/// Settings the audit would flag that are not live now but come back at the next boot.
fn comes_back(
    s: &Snapshot,
    p: &PersistedSysctls,
    t: &Thresholds,
    live_flagged: &BTreeSet<&str>,
) -> Vec<Finding> {
    let changed: Vec<&PersistedSysctl> = p
        .settings
        .iter()
        .filter(|ps| ps.glob.is_none() && ps.differs_from_live())
        .collect();
    if changed.is_empty() {
        return Vec::new();
    }
    // The host as it will be after the next boot, as far as these keys go.
    let mut booted = s.clone();
    booted.persisted_sysctls = None;
    for ps in &changed {
        booted.sysctls.insert(
            ps.key.clone(),
            ps.value.split_whitespace().collect::<Vec<_>>().join(" "),
        );
    }
    let mut out = Vec::new();
    for f in sysctl_audit::check(&booted, t) {
        let Some(key) = f.data["sysctl"].as_str() else {
            continue;
        };
        if live_flagged.contains(key) {
            continue;
        }
        let Some(ps) = changed.iter().find(|ps| ps.key == key) else {
            continue;
        };
        let live = ps.live_value().unwrap_or("?");
        let mut x = Finding::new(
            ID,
            f.severity.min(Severity::Warning),
            Nature::Config,
            format!(
                "{}: back at the next boot from {} (live now {live})",
                f.title, ps.at
            ),
        );
        x.evidence = vec![
            Evidence::new(
                "persisted at",
                format!("{}: {} = {}", ps.at, ps.short(), ps.value),
            ),
            Evidence::new("live now", live),
        ];
        x.evidence.extend(origin_evidence(ps));
        // The audit's own evidence, past its first line (the key and the file's value).
        x.evidence.extend(f.evidence.iter().skip(1).cloned());
        x.why = format!(
            "The live value is {live}: it was changed since boot, by hand or by a program, but {} still says {}, and systemd-sysctl writes that again at every boot. {}",
            ps.at.file, ps.value, f.why
        );
        x.fix = file_fix(p, ps, &f.proposed);
        x.data = json!({
            "sysctl": ps.key,
            "value": ps.value,
            "live": live,
            "at": at_json(&ps.at),
            "ignore_errors": ps.ignore_errors,
            "overridden": ps.overridden.iter().map(|o| json!({"value": o.value, "at": at_json(&o.at)})).collect::<Vec<_>>(),
            "audit": {"title": f.title, "severity": f.severity.name(), "proposed": f.proposed.iter().map(|c| json!({"key": c.key, "value": c.value})).collect::<Vec<_>>()},
        });
        out.push(x);
    }
    out
}

/// Keys the files set that this kernel does not have.
fn missing_keys(p: &PersistedSysctls) -> Option<Finding> {
    let missing: Vec<&PersistedSysctl> = p
        .settings
        .iter()
        .filter(|ps| ps.live == LiveValue::Missing && in_scope(&ps.key) && !interface_key(&ps.key))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let named: Vec<String> = missing
        .iter()
        .take(3)
        .map(|ps| match missing_hint(&ps.key) {
            Some(h) => format!("{} ({h})", ps.key),
            None => ps.key.clone(),
        })
        .collect();
    let more = missing.len().saturating_sub(3);
    let mut f = Finding::new(
        ID,
        Severity::Info,
        Nature::Config,
        format!(
            "{} in the sysctl files {} not exist on this kernel: {}{}",
            count(missing.len() as u64, "key", "keys"),
            if missing.len() == 1 { "does" } else { "do" },
            named.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ),
    );
    for ps in missing.iter().take(SHOWN) {
        f.evidence.push(Evidence::new(
            ps.key.clone(),
            format!(
                "{} sets {}{}{}",
                ps.at,
                ps.value,
                missing_hint(&ps.key)
                    .map(|h| format!("; {h}"))
                    .unwrap_or_default(),
                if ps.ignore_errors {
                    "; errors ignored ('-')"
                } else {
                    ""
                }
            ),
        ));
    }
    if missing.len() > SHOWN {
        f.evidence.push(Evidence::new(
            "not shown",
            count((missing.len() - SHOWN) as u64, "more key", "more keys"),
        ));
    }
    f.why = "systemd-sysctl skips a key that /proc/sys does not have and logs a warning at every boot (a leading '-' turns it into a debug message). The key was removed from the kernel (tcp_tw_recycle went in 4.12 because it dropped connections from clients behind NAT), belongs to a module that is not loaded when systemd-sysctl runs, or was never a key. Such a line sets nothing; it only hides what the file really does.".into();
    f.fix.extend(file_steps(
        p,
        "Delete the lines that set nothing".to_string(),
        &[],
        None,
        &missing.iter().map(|ps| &ps.at).collect::<Vec<_>>(),
    ));
    f.fix.push(FixStep::say("A key of a module (nf_conntrack, br_netfilter) is set at boot only if the module is loaded before systemd-sysctl runs: list the module in /etc/modules-load.d/, or set the key from a udev rule when the module loads (sysctl.d(5)); then keep the line."));
    f.data = json!({
        "keys": missing.iter().map(|ps| json!({
            "sysctl": ps.key,
            "value": ps.value,
            "at": at_json(&ps.at),
            "ignore_errors": ps.ignore_errors,
            "hint": missing_hint(&ps.key),
        })).collect::<Vec<_>>(),
    });
    Some(f)
}

/// Other persisted values that differ from the live ones.
fn differs_from_live(
    p: &PersistedSysctls,
    live_flagged: &BTreeSet<&str>,
    reported: &BTreeSet<String>,
) -> Option<Finding> {
    let differ: Vec<&PersistedSysctl> = p
        .settings
        .iter()
        .filter(|ps| {
            ps.differs_from_live()
                && in_scope(&ps.key)
                && !live_flagged.contains(ps.key.as_str())
                && !reported.contains(&ps.key)
        })
        .collect();
    if differ.is_empty() {
        return None;
    }
    let mut f = Finding::new(
        ID,
        Severity::Info,
        Nature::Config,
        format!(
            "{} {} from what the sysctl files apply at boot: {}{}",
            count(
                differ.len() as u64,
                "live kernel setting",
                "live kernel settings"
            ),
            if differ.len() == 1 {
                "differs"
            } else {
                "differ"
            },
            differ
                .iter()
                .take(3)
                .map(|ps| ps.key.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if differ.len() > 3 {
                format!(" and {} more", differ.len() - 3)
            } else {
                String::new()
            }
        ),
    );
    for ps in differ.iter().take(SHOWN) {
        f.evidence.push(Evidence::new(
            ps.key.clone(),
            format!(
                "live {}; {} sets {}",
                ps.live_value().unwrap_or("?"),
                ps.at,
                ps.value
            ),
        ));
    }
    if differ.len() > SHOWN {
        f.evidence.push(Evidence::new(
            "not shown",
            count(
                (differ.len() - SHOWN) as u64,
                "more setting",
                "more settings",
            ),
        ));
    }
    f.why = "A value written with sysctl -w (or by a program or a container runtime) since boot lasts until the next boot; the files decide what the host starts with. Until the two agree, a reboot changes how the host behaves, and whoever tuned it live may not know.".into();
    let shown: Vec<&PersistedSysctl> = differ
        .iter()
        .copied()
        .filter(|ps| ps.glob.is_none())
        .take(SHOWN)
        .collect();
    let changes: Vec<(String, String)> = shown
        .iter()
        .map(|ps| (ps.key.clone(), ps.live_value().unwrap_or("").to_string()))
        .collect();
    f.fix.extend(file_steps(
        p,
        "To keep the live values after a reboot, write them into the files".to_string(),
        &changes,
        None,
        &[],
    ));
    f.fix.push(FixStep::run(
        if f.fix.is_empty() {
            "To go back to what the files say, apply them again"
        } else {
            "Or, to go back to what the files say, apply them again"
        },
        "sysctl --system",
    ));
    f.data = json!({
        "settings": differ.iter().map(|ps| json!({
            "sysctl": ps.key,
            "value": ps.value,
            "live": ps.live_value(),
            "at": at_json(&ps.at),
            "glob": ps.glob,
        })).collect::<Vec<_>>(),
    });
    Some(f)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::analyze::sysctl_audit;
    use crate::model::persisted::OverriddenLine;
    use crate::model::{Endpoint, ListenerSocket, HOST_WIDE_SYSCTLS, PER_NETNS_SYSCTLS};

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/persisted")
            .join(name)
    }

    /// The host persisted/overrides describes: its live sysctls, its one listener (port
    /// 2024) and its sysctl files.
    fn overrides_host() -> Snapshot {
        let root = fixture("overrides");
        let mut s = Snapshot::default();
        let keys: Vec<&str> = PER_NETNS_SYSCTLS
            .iter()
            .chain(HOST_WIDE_SYSCTLS)
            .copied()
            .collect();
        s.sysctls = crate::collect::sysctl::read(&root, &keys);
        s.sockets.listeners.push(ListenerSocket {
            local: Endpoint::new("0.0.0.0".parse().expect("ip"), 2024),
            accept_queue: 0,
            backlog: 128,
            backlog_known: true,
            inode: 1078,
            owner: None,
        });
        s.persisted_sysctls = Some(crate::collect::sysctl_files::collect(&root, &root).0);
        s
    }

    fn about<'a>(f: &'a [Finding], key: &str) -> Vec<&'a Finding> {
        f.iter().filter(|x| x.data["sysctl"] == key).collect()
    }

    fn patches(f: &Finding) -> Vec<&str> {
        f.fix.iter().filter_map(|s| s.patch.as_deref()).collect()
    }

    #[test]
    fn folklore_that_comes_back_at_boot_fires_with_file_and_line() {
        let s = overrides_host();
        let f = check(&s, &Thresholds::default());
        assert!(f
            .iter()
            .all(|x| x.rule_id == ID && x.nature == Nature::Config));

        // Lowered tcp_max_tw_buckets: live is the default, the file lowers it again.
        let tw = about(&f, "net.ipv4.tcp_max_tw_buckets");
        assert_eq!(tw.len(), 1, "{f:#?}");
        assert_eq!(tw[0].severity, Severity::Warning);
        assert!(
            tw[0]
                .title
                .contains("back at the next boot from /etc/sysctl.d/10-network.conf:2"),
            "{}",
            tw[0].title
        );
        assert_eq!(tw[0].data["live"], "131072");
        assert_eq!(tw[0].data["at"]["line"], 2);
        assert_eq!(
            patches(tw[0]),
            vec!["--- /etc/sysctl.d/10-network.conf\n+++ /etc/sysctl.d/10-network.conf\n@@ -2 +2,1 @@\n-net/ipv4/tcp_max_tw_buckets = 5000\n+net/ipv4/tcp_max_tw_buckets = 131072\n"]
        );
        assert!(
            tw[0].proposed.is_empty(),
            "the live value is fine: nothing for --emit-sysctl"
        );

        // tcp_fin_timeout set to shorten TIME_WAIT: the winning line is deleted.
        let fin = about(&f, "net.ipv4.tcp_fin_timeout");
        assert_eq!(fin.len(), 1);
        assert_eq!(fin[0].severity, Severity::Info);
        assert_eq!(
            patches(fin[0]),
            vec!["--- /etc/sysctl.d/99-zz-late.conf\n+++ /etc/sysctl.d/99-zz-late.conf\n@@ -2 +1,0 @@\n-net.ipv4.tcp_fin_timeout = 45\n"]
        );
        assert!(fin[0]
            .evidence
            .iter()
            .any(|e| e.label == "sysctl --system (procps) ends with"
                && e.value.starts_with("15 from /etc/sysctl.conf:3")));

        // A port range over a service's port, from a /run file: reserved from /etc.
        let range = about(&f, "net.ipv4.ip_local_port_range");
        let over = range
            .iter()
            .find(|x| x.severity == Severity::Warning)
            .expect("the overlap");
        assert!(over.title.contains("2024"), "{}", over.title);
        assert_eq!(
            patches(over),
            vec!["--- /dev/null\n+++ /etc/sysctl.d/99-zz-local.conf\n@@ -0,0 +1,1 @@\n+net.ipv4.ip_local_reserved_ports = 2024\n"]
        );

        // tcp_syncookies=0 is live: the audit reports it, with the line; not here.
        assert!(about(&f, "net.ipv4.tcp_syncookies").is_empty());

        // Keys this kernel lacks; an absent interface's key is not one of them.
        let missing = f
            .iter()
            .find(|x| x.data.get("keys").is_some())
            .expect("missing keys");
        let keys: Vec<&str> = missing.data["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .filter_map(|k| k["sysctl"].as_str())
            .collect();
        assert_eq!(
            keys,
            vec!["net.ipv4.tcp_tw_recycle", "net.ipv4.tcp_tw_timeout"]
        );
        assert!(
            missing
                .title
                .contains("tcp_tw_recycle (removed in Linux 4.12)"),
            "{}",
            missing.title
        );
        assert_eq!(
            patches(missing),
            vec!["--- /etc/sysctl.conf\n+++ /etc/sysctl.conf\n@@ -2 +1,0 @@\n-net.ipv4.tcp_tw_recycle = 1\n"]
        );

        // Other differences: a buffer size the audit has nothing to say about, set in a
        // package's file, so kept from /etc; the glob's rp_filter is no connection matter.
        let differ = f
            .iter()
            .find(|x| x.data.get("settings").is_some())
            .expect("differences");
        assert_eq!(differ.data["settings"][0]["sysctl"], "net.core.rmem_max");
        assert_eq!(differ.data["settings"][0]["live"], "212992");
        assert_eq!(differ.data["settings"].as_array().map(Vec::len), Some(1));
        assert!(
            differ.title.starts_with("1 live kernel setting differs"),
            "{}",
            differ.title
        );
        assert_eq!(
            patches(differ),
            vec!["--- /dev/null\n+++ /etc/sysctl.d/99-zz-local.conf\n@@ -0,0 +1,1 @@\n+net.core.rmem_max = 212992\n"]
        );
    }

    /// The audit's own finding carries the line that persists a live problem, and the
    /// patch that changes it, instead of the generic grep.
    #[test]
    fn the_audit_names_the_line_of_a_live_problem() {
        let s = overrides_host();
        let audit = sysctl_audit::check(&s, &Thresholds::default());
        let cookies = audit
            .iter()
            .find(|x| x.data["sysctl"] == "net.ipv4.tcp_syncookies")
            .expect("syncookies=0 is flagged");
        assert!(cookies.evidence.iter().any(|e| e.label == "persisted at"
            && e.value.starts_with(
                "/etc/sysctl.d/10-network.conf:4: tcp_syncookies = 0 (written again at every boot)"
            )));
        assert_eq!(
            patches(cookies),
            vec!["--- /etc/sysctl.d/10-network.conf\n+++ /etc/sysctl.d/10-network.conf\n@@ -4 +4,1 @@\n-net.ipv4.tcp_syncookies = 0\n+net.ipv4.tcp_syncookies = 1\n"]
        );
        assert!(!cookies.fix.iter().any(|st| st.mentions("grep -rn")));
        assert_eq!(cookies.data["persisted"]["line"], 4);
        // Still the one source of --emit-sysctl.
        assert_eq!(cookies.proposed.len(), 1);
    }

    #[test]
    fn a_line_read_after_the_emitted_file_is_said_to_win() {
        let mut s = overrides_host();
        let p = s.persisted_sysctls.as_mut().expect("read");
        let c = p
            .settings
            .iter_mut()
            .find(|x| x.key == "net.ipv4.tcp_syncookies")
            .expect("set");
        c.at = SourceRef {
            file: "/etc/sysctl.conf".into(),
            line: 7,
            text: "net.ipv4.tcp_syncookies=0".into(),
        };
        c.overridden = vec![OverriddenLine {
            value: "0".into(),
            at: SourceRef {
                file: "/etc/sysctl.d/10-network.conf".into(),
                line: 4,
                text: "net.ipv4.tcp_syncookies = 0".into(),
            },
        }];
        let audit = sysctl_audit::check(&s, &Thresholds::default());
        let cookies = audit
            .iter()
            .find(|x| x.data["sysctl"] == "net.ipv4.tcp_syncookies")
            .expect("flagged");
        assert!(cookies
            .fix
            .iter()
            .any(|st| st.mentions("is read after /etc/sysctl.d/90-tcpdoctor.conf")));
        assert!(cookies
            .fix
            .iter()
            .any(|st| st.mentions("also set at /etc/sysctl.d/10-network.conf:4")));
        assert_eq!(patches(cookies), vec!["--- /etc/sysctl.conf\n+++ /etc/sysctl.conf\n@@ -7 +7,1 @@\n-net.ipv4.tcp_syncookies=0\n+net.ipv4.tcp_syncookies=1\n"]);
    }

    #[test]
    fn an_audit_finding_set_only_live_says_so() {
        let mut s = overrides_host();
        s.sysctls
            .insert("net.ipv4.tcp_timestamps".into(), "0".into());
        let audit = sysctl_audit::check(&s, &Thresholds::default());
        let ts = audit
            .iter()
            .find(|x| x.data["sysctl"] == "net.ipv4.tcp_timestamps")
            .expect("flagged");
        assert!(ts
            .evidence
            .iter()
            .any(|e| e.label == "in the sysctl files" && e.value.starts_with("not set")));
        assert!(ts.data["persisted"].is_null());
        assert!(!ts.fix.iter().any(|st| st.mentions("grep -rn")));
    }

    /// Debian 12's own files on a VM whose kernel.pid_max and fs.protected_* differ from
    /// them: real drift, but no connection matter.
    #[test]
    fn drift_outside_connection_settings_is_not_reported() {
        let root = fixture("debian12");
        let s = Snapshot {
            persisted_sysctls: Some(crate::collect::sysctl_files::collect(&root, &root).0),
            ..Snapshot::default()
        };
        assert!(s
            .persisted_sysctls
            .as_ref()
            .is_some_and(|p| p.settings.iter().any(|x| x.differs_from_live())));
        assert!(check(&s, &Thresholds::default()).is_empty());
    }

    #[test]
    fn does_not_fire_when_files_agree_with_a_sound_live_kernel() {
        assert!(check(&Snapshot::default(), &Thresholds::default()).is_empty());
        // Files read, every setting equal to the live value and none the audit flags.
        let root = fixture("debian12");
        let mut s = Snapshot::default();
        let mut p = crate::collect::sysctl_files::collect(&root, &root).0;
        for x in &mut p.settings {
            x.live = LiveValue::Value(x.value.clone());
        }
        s.persisted_sysctls = Some(p);
        assert!(check(&s, &Thresholds::default()).is_empty());
        // No files at all.
        s.persisted_sysctls = Some(PersistedSysctls::default());
        assert!(check(&s, &Thresholds::default()).is_empty());
    }

    #[test]
    fn one_diff_per_file_with_shifted_hunks() {
        let at = |line: u32, text: &str| SourceRef {
            file: "/etc/sysctl.d/x.conf".into(),
            line,
            text: text.into(),
        };
        let (a, b, c) = (at(2, "a = 1"), at(5, "b = 1"), at(9, "c = 1"));
        let d = diff(&[
            Edit::Replace(&c, "c = 2".into()),
            Edit::Delete(&a),
            Edit::InsertAfter(&b, "d = 4".into()),
        ]);
        assert_eq!(
            d,
            "--- /etc/sysctl.d/x.conf\n+++ /etc/sysctl.d/x.conf\n@@ -2 +1,0 @@\n-a = 1\n@@ -5 +4,2 @@\n b = 1\n+d = 4\n@@ -9 +9,1 @@\n-c = 1\n+c = 2\n"
        );
        assert_eq!(with_value(&at(1, "-net.x=1"), "2"), "-net.x=2");
        assert_eq!(with_value(&at(1, "  net.x =\t1"), "2"), "  net.x = 2");
        assert!(interface_key("net.ipv4.conf.eth0.rp_filter"));
        assert!(!interface_key("net.ipv4.conf.all.rp_filter"));
        assert!(!interface_key("net.ipv4.tcp_fin_timeout"));
    }
}
