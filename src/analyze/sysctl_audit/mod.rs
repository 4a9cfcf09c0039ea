//! Rule `sysctl_audit`: TCP sysctls that were changed in ways that hurt, or that do not
//! do what they were set for; one finding per problem. Each finding carries the settings
//! that fix it (`Finding::proposed`), and those are all `check --emit-sysctl` prints, so
//! the file can never disagree with the findings. Reads only the snapshot.
//!
//! One file per group of sysctls: [`time_wait`] (recycle, timestamps, tw buckets,
//! fin_timeout, tw_reuse), [`ports`] (the ephemeral range), [`handshake`] (SYN and
//! SYN-ACK retries), [`listen`] (syncookies, abort_on_overflow, somaxconn) and
//! [`keepalive`].

mod handshake;
mod keepalive;
mod listen;
mod ports;
mod time_wait;

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::Thresholds;
use crate::model::{Evidence, Finding, FixStep, Nature, Severity, Snapshot, SysctlChange};

pub const ID: &str = "sysctl_audit";

/// Knobs that live in each network namespace; a new namespace starts from the kernel
/// default for each.
const PER_NETNS: &[&str] = crate::model::PER_NETNS_SYSCTLS;

/// Where sysctl files live, in the order `sysctl --system` reads them.
const SYSCTL_FILES: &str = "/etc/sysctl.conf /etc/sysctl.d /usr/lib/sysctl.d /run/sysctl.d";

/// One check: a problem with one setting, or `None`.
type Check = fn(&Snapshot, &Thresholds) -> Option<Problem>;

/// Every check, in report order within one severity.
const CHECKS: &[Check] = &[
    time_wait::tw_recycle,
    time_wait::timestamps,
    time_wait::max_tw_buckets,
    handshake::syn_retries,
    handshake::synack_retries,
    listen::syncookies,
    listen::abort_on_overflow,
    ports::overlap,
    listen::somaxconn,
    ports::parity,
    time_wait::fin_timeout,
    keepalive::keepalive_time,
    time_wait::tw_reuse_on_a_server,
];

pub fn check(s: &Snapshot, t: &Thresholds) -> Vec<Finding> {
    let mut out: Vec<Finding> = CHECKS
        .iter()
        .filter_map(|c| c(s, t))
        .map(|p| p.into_finding(s))
        .collect();
    // Stable: check order within one severity.
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

/// The sysctls this audit reports as a problem in `s`'s namespace (netns_sysctl_drift
/// leaves them to it: one cause, one finding).
pub fn flagged_keys(s: &Snapshot, t: &Thresholds) -> BTreeSet<&'static str> {
    CHECKS
        .iter()
        .filter_map(|c| c(s, t))
        .map(|p| p.key)
        .collect()
}

/// One questionable setting, before the parts every sysctl finding shares are added.
struct Problem {
    key: &'static str,
    value: String,
    default: Option<String>,
    severity: Severity,
    title: String,
    evidence: Vec<Evidence>,
    why: String,
    fix: Vec<FixStep>,
    proposed: Vec<SysctlChange>,
    data: Map<String, Value>,
}

impl Problem {
    fn new(s: &Snapshot, key: &'static str, severity: Severity) -> Problem {
        Problem {
            key,
            value: s.sysctl(key).unwrap_or_default().to_string(),
            default: None,
            severity,
            title: String::new(),
            evidence: Vec::new(),
            why: String::new(),
            fix: Vec::new(),
            proposed: Vec::new(),
            data: Map::new(),
        }
    }

    /// Proposes `value` for this problem's own setting: a fix step that sets it now
    /// (`step` says what it does) and the line `--emit-sysctl` prints, with `why` as its
    /// comment. Both come from here, so they cannot disagree.
    fn propose(&mut self, value: impl ToString, step: &str, why: impl Into<String>) {
        let was = Some(self.value.clone());
        self.propose_key(self.key, value, was, step, why);
    }

    /// Same, for another setting than the problem's own (the reserved-ports list that
    /// fixes a port-range problem).
    fn propose_key(
        &mut self,
        key: &str,
        value: impl ToString,
        was: Option<String>,
        step: &str,
        why: impl Into<String>,
    ) {
        let value = value.to_string();
        self.fix
            .push(FixStep::run(step, set_now_command(key, &value)));
        self.proposed.push(SysctlChange {
            key: key.to_string(),
            value,
            was,
            why: why.into(),
        });
    }

    fn into_finding(self, s: &Snapshot) -> Finding {
        let per_netns = PER_NETNS.contains(&self.key);
        let mut evidence = vec![Evidence::new(self.key, &self.value)];
        if let Some(d) = &self.default {
            evidence.push(Evidence::new("kernel default", d));
        }
        // Where the host's sysctl files persist it, when they were read (issue 12).
        let persisted = super::sysctl_persisted::for_audit(s, self.key, &self.proposed);
        if let Some(note) = &persisted {
            evidence.extend(note.evidence.iter().cloned());
        }
        evidence.extend(self.evidence);
        let short = self.key.rsplit('.').next().unwrap_or(self.key);
        let mut fix = self.fix;
        let mut persisted_data = None;
        match persisted {
            Some(note) => {
                fix.extend(note.fix);
                persisted_data = Some(note.data);
            }
            // Per namespace or not is said once by the renderer (from data.per_netns),
            // not in every finding.
            None => fix.push(FixStep::run(
                "Find where it is set and change it there, or the next boot brings it back",
                format!("grep -rn {short} {SYSCTL_FILES}"),
            )),
        }
        let mut data = Map::new();
        data.insert("sysctl".into(), json!(self.key));
        data.insert("value".into(), json!(self.value));
        data.insert("default".into(), json!(self.default));
        data.insert("per_netns".into(), json!(per_netns));
        if let Some(p) = persisted_data {
            data.insert("persisted".into(), p);
        }
        data.extend(self.data);
        let mut f = Finding::new(ID, self.severity, Nature::Config, self.title);
        f.evidence = evidence;
        f.why = self.why;
        f.fix = fix;
        f.proposed = self.proposed;
        f.data = Value::Object(data);
        f
    }
}

/// `sysctl -w key=value`, with the value quoted when it holds spaces (a port range).
fn set_now_command(key: &str, value: &str) -> String {
    if value.contains(char::is_whitespace) {
        format!("sysctl -w {key}=\"{value}\"")
    } else {
        format!("sysctl -w {key}={value}")
    }
}

#[cfg(test)]
mod fixtures {
    //! Hand-built snapshots the audit's tests share.

    use crate::model::{
        Endpoint, Finding, ListenerSocket, Owner, ProcessFacts, Snapshot, Sockstat,
    };

    /// A host with the live 6.18 defaults from kernel-facts.md, Appendix A.
    pub fn defaults() -> Snapshot {
        let mut s = Snapshot::default();
        for (k, v) in [
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
            ("net.ipv4.tcp_rfc1337", "0"),
            ("net.ipv4.tcp_abort_on_overflow", "0"),
            ("net.ipv4.tcp_ehash_entries", "262144"),
            ("net.core.somaxconn", "4096"),
        ] {
            s.sysctls.insert(k.into(), v.into());
        }
        s
    }

    pub fn set(s: &mut Snapshot, k: &str, v: &str) {
        s.sysctls.insert(k.into(), v.into());
    }

    pub fn listener(port: u16, backlog: u32, pid: u32) -> ListenerSocket {
        ListenerSocket {
            local: Endpoint::new("0.0.0.0".parse().expect("ip"), port),
            accept_queue: 3,
            backlog,
            backlog_known: true,
            inode: u64::from(port),
            owner: Some(Owner { pid, fd: 5 }),
        }
    }

    /// The folklore tuning found on many hosts.
    pub fn folklore() -> Snapshot {
        let mut s = defaults();
        set(&mut s, "net.ipv4.tcp_tw_recycle", "1");
        set(&mut s, "net.ipv4.tcp_fin_timeout", "15");
        set(&mut s, "net.ipv4.tcp_timestamps", "0");
        set(&mut s, "net.ipv4.tcp_max_tw_buckets", "5000");
        set(&mut s, "net.ipv4.tcp_syn_retries", "2");
        set(&mut s, "net.ipv4.tcp_synack_retries", "1");
        set(&mut s, "net.ipv4.ip_local_port_range", "1024 65000");
        set(&mut s, "net.ipv4.ip_local_reserved_ports", "9100");
        set(&mut s, "net.core.somaxconn", "1024");
        set(&mut s, "net.ipv4.tcp_keepalive_time", "600");
        set(&mut s, "net.ipv4.tcp_syncookies", "0");
        set(&mut s, "net.ipv4.tcp_abort_on_overflow", "1");
        s.processes.insert(
            7,
            ProcessFacts {
                pid: 7,
                comm: "redis-server".into(),
                uid: 0,
                cmdline: String::new(),
                open_fds: 10,
                nofile_soft: None,
                nofile_hard: None,
                detached_tcp_fds: None,
            },
        );
        s.sockets.listeners = vec![
            listener(22, 128, 1),
            listener(6379, 511, 7),
            listener(11211, 1024, 8),
            listener(9100, 128, 9),
        ];
        s.sockets.time_wait.client_side = 4000;
        s.sockstat = Some(Sockstat {
            tw: 4990,
            ..Default::default()
        });
        s
    }

    pub fn by_key<'a>(f: &'a [Finding], key: &str) -> Vec<&'a Finding> {
        f.iter().filter(|x| x.data["sysctl"] == key).collect()
    }

    /// The one finding about `key`.
    pub fn about<'a>(f: &'a [Finding], key: &str) -> &'a Finding {
        match by_key(f, key).as_slice() {
            [one] => one,
            other => panic!("{} findings about {key}: {f:#?}", other.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn defaults_raise_nothing() {
        assert!(check(&defaults(), &Thresholds::default()).is_empty());
        assert!(check(&Snapshot::default(), &Thresholds::default()).is_empty());
        assert!(flagged_keys(&defaults(), &Thresholds::default()).is_empty());
    }

    #[test]
    fn folklore_tuning_is_flagged_one_finding_per_problem() {
        let f = check(&folklore(), &Thresholds::default());
        for k in [
            "net.ipv4.tcp_tw_recycle",
            "net.ipv4.tcp_fin_timeout",
            "net.ipv4.tcp_timestamps",
            "net.ipv4.tcp_max_tw_buckets",
            "net.ipv4.tcp_syn_retries",
            "net.ipv4.tcp_synack_retries",
            "net.core.somaxconn",
            "net.ipv4.tcp_keepalive_time",
            "net.ipv4.tcp_syncookies",
            "net.ipv4.tcp_abort_on_overflow",
        ] {
            about(&f, k);
        }
        // Overlap and parity are two problems with one key.
        assert_eq!(by_key(&f, "net.ipv4.ip_local_port_range").len(), 2);
        // Worst first.
        assert!(f.windows(2).all(|w| w[0].severity >= w[1].severity));
        assert!(f
            .iter()
            .all(|x| x.rule_id == ID && x.nature == Nature::Config));
        assert_eq!(
            flagged_keys(&folklore(), &Thresholds::default()).len(),
            11,
            "ten keys plus the port range"
        );
    }

    /// Each proposal sets its fix step's command to the same value, and names the value
    /// it replaces; every finding says where the setting lives.
    #[test]
    fn proposals_and_fix_steps_agree() {
        let f = check(&folklore(), &Thresholds::default());
        let mut proposed = 0;
        for x in &f {
            let short = x.data["sysctl"]
                .as_str()
                .and_then(|k| k.rsplit('.').next())
                .expect("key");
            assert!(
                x.fix
                    .iter()
                    .any(|st| st.command.as_deref().is_some_and(
                        |c| c.starts_with(&format!("grep -rn {short} /etc/sysctl.conf"))
                    )),
                "{x:#?}"
            );
            for c in &x.proposed {
                proposed += 1;
                assert!(c.was.is_some(), "{c:?}");
                assert!(!c.why.is_empty());
                let cmd = set_now_command(&c.key, &c.value);
                assert!(
                    x.fix
                        .iter()
                        .any(|st| st.command.as_deref() == Some(cmd.as_str())),
                    "{cmd} missing in {x:#?}"
                );
            }
            // Commands are never in the prose, where they could not be pointed at
            // another namespace.
            for st in &x.fix {
                assert!(!st.text.contains("sysctl -w"), "{st:?}");
            }
            assert!(
                !x.fix.iter().any(|st| st.mentions("securityContext")),
                "{x:#?}"
            );
        }
        assert!(proposed >= 7, "{f:#?}");
    }

    #[test]
    fn handshake_commands_quote_values_with_spaces() {
        assert_eq!(
            set_now_command("net.ipv4.ip_local_port_range", "32768 60999"),
            "sysctl -w net.ipv4.ip_local_port_range=\"32768 60999\""
        );
        assert_eq!(
            set_now_command("net.core.somaxconn", "4096"),
            "sysctl -w net.core.somaxconn=4096"
        );
    }
}
