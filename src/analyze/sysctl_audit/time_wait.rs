//! The TIME_WAIT group: tcp_tw_recycle, tcp_timestamps, tcp_max_tw_buckets,
//! tcp_fin_timeout and tcp_tw_reuse, the settings folklore changes "against TIME_WAIT".

use serde_json::json;

use super::{Problem, Thresholds};
use crate::analyze::util::{pct, proposed_tw_buckets};
use crate::model::kernel::defaults;
use crate::model::{Evidence, FixStep, Severity, Snapshot, TcpState};

fn time_wait_total(s: &Snapshot) -> u64 {
    s.summary.total().get(TcpState::TimeWait)
}

/// Entries held against tcp_max_tw_buckets: sockstat `tw` (the kernel's own count, which
/// also holds orphaned FIN_WAIT2 minisockets) or the TIME_WAIT sockets seen, whichever
/// is larger (the readings are a moment apart). time_wait_pressure counts the same way,
/// so both propose the same limit.
fn tw_entries_in_use(s: &Snapshot) -> u64 {
    s.sockstat.map_or(0, |st| st.tw).max(time_wait_total(s))
}

pub(super) fn tw_recycle(s: &Snapshot, _t: &Thresholds) -> Option<Problem> {
    let v = s.sysctl_i64("net.ipv4.tcp_tw_recycle")?;
    let on = v != 0;
    let mut p = Problem::new(
        s,
        "net.ipv4.tcp_tw_recycle",
        if on {
            Severity::Warning
        } else {
            Severity::Info
        },
    );
    p.default = Some("0 (and the key is gone since Linux 4.12)".into());
    let paws_passive = s
        .counters
        .as_ref()
        .and_then(|c| c.total("TcpExt.PAWSPassive"));
    if let Some(n) = paws_passive {
        p.evidence
            .push(Evidence::new("SYNs dropped by timestamp (PAWSPassive)", n));
    }
    if on {
        p.title = "tcp_tw_recycle is on: SYNs from clients behind NAT are dropped at random".into();
        p.why = "The tcp_tw_recycle option made the kernel remember the newest TCP timestamp of each peer address and silently drop SYNs that carry an older one. Clients behind one NAT address have unrelated timestamp clocks, so some of their connection attempts vanish (counted as PAWSPassive in netstat -s). Linux 4.12 removed the option for that reason; this kernel is older.".into();
        // Not proposed for the sysctl file: a line naming the key turns into a boot
        // error on the next kernel, which does not have it. Off now, and out of files.
        p.fix.push(FixStep::run(
            "Turn it off now (and do not write it to a sysctl file: the key does not exist on 4.12 and later)",
            "sysctl -w net.ipv4.tcp_tw_recycle=0",
        ));
    } else {
        p.title = "tcp_tw_recycle still exists on this kernel (older than 4.12); it is off".into();
        p.why = "The key exists only on kernels before 4.12, which removed it because it dropped connections from clients behind NAT. It is off here, which is right; a sysctl file that still sets it will make sysctl report an unknown key at boot after the next kernel upgrade.".into();
    }
    p.fix.push(FixStep::say("Delete every tcp_tw_recycle line from sysctl files: on 4.12 and later the key does not exist, so tcpdoctor cannot see such a leftover line there, but sysctl reports it as an error at boot."));
    p.fix.push(FixStep::say("Against TIME_WAIT on the connecting side, reuse connections (keep-alive, pools); loopback connections already get their TIME_WAIT ports back through the default tcp_tw_reuse=2. Nothing needs tcp_tw_recycle."));
    p.data.insert("paws_passive".into(), json!(paws_passive));
    Some(p)
}

pub(super) fn timestamps(s: &Snapshot, _t: &Thresholds) -> Option<Problem> {
    if s.sysctl_i64("net.ipv4.tcp_timestamps")? != 0 {
        return None;
    }
    let mut p = Problem::new(s, "net.ipv4.tcp_timestamps", Severity::Warning);
    p.default = Some("1".into());
    let client_tw = s.sockets.time_wait.client_side;
    p.evidence
        .push(Evidence::new("client-side TIME_WAIT sockets", client_tw));
    p.title = "tcp_timestamps=0: no PAWS protection and tcp_tw_reuse cannot work".into();
    p.why = "Without TCP timestamps the kernel loses PAWS, the check that rejects stale segments from an earlier connection on the same ports. The tcp_tw_reuse setting only hands out a TIME_WAIT port again when the old connection carried timestamps, so with them off every outgoing connection's TIME_WAIT holds its port for the full 60 s (loopback ones included) and ephemeral ports run out sooner.".into();
    p.propose(
        1,
        "Turn them back on now",
        "Timestamps back on: PAWS protection against stale segments, and what tcp_tw_reuse needs to take over a TIME_WAIT port.",
    );
    p.data
        .insert("client_side_time_wait".into(), json!(client_tw));
    Some(p)
}

/// A tcp_max_tw_buckets below the kernel default: half the established hash. A negative
/// tcp_ehash_entries means a namespace sharing the host's table of that size.
pub(super) fn max_tw_buckets(s: &Snapshot, _t: &Thresholds) -> Option<Problem> {
    let v = u64::try_from(s.sysctl_i64("net.ipv4.tcp_max_tw_buckets")?).ok()?;
    // Without tcp_ehash_entries the default (memory-dependent) is unknown: say nothing.
    let default = s.tw_buckets_default()?;
    if v >= default {
        return None;
    }
    let in_use = tw_entries_in_use(s);
    // Never below the default (the limit must not be lowered), more if more is in use.
    let target = proposed_tw_buckets(s, in_use).unwrap_or(default);
    let mut p = Problem::new(s, "net.ipv4.tcp_max_tw_buckets", Severity::Warning);
    p.default = Some(format!("{default} (tcp_ehash_entries / 2)"));
    p.evidence.push(Evidence::new(
        "TIME_WAIT + FIN_WAIT2 entries now",
        format!("{in_use} ({:.0}% of the limit)", pct(in_use, v)),
    ));
    let overflow = s.counters.as_ref().and_then(|c| {
        Some((
            c.total("TcpExt.TCPTimeWaitOverflow")?,
            c.delta("TcpExt.TCPTimeWaitOverflow").unwrap_or(0),
        ))
    });
    if let Some((total, delta)) = overflow {
        p.evidence.push(Evidence::new(
            "TIME_WAIT entries destroyed early (TCPTimeWaitOverflow)",
            format!("{total} since boot, +{delta} during the sample"),
        ));
    }
    p.title = format!("tcp_max_tw_buckets lowered to {v} (default {default})");
    p.why = "This limit is only a guard against attacks; the kernel documentation says it must not be lowered. When it is reached, a closing connection skips TIME_WAIT (counted in TcpExtTCPTimeWaitOverflow, nothing is logged on current kernels), which removes the protection against late segments of an old connection landing in a new one with the same ports. A TIME_WAIT entry costs about 256 bytes, so the default is cheap.".into();
    let reason = if target > default {
        format!(
            "twice the {in_use} entries in use, which is more than the kernel default {default}"
        )
    } else {
        "the kernel default (tcp_ehash_entries / 2)".to_string()
    };
    p.propose(
        target,
        "Raise it back now",
        format!(
            "Was {v}. Back to {reason}. The limit only guards against attacks; below it, closing connections skip TIME_WAIT."
        ),
    );
    p.fix.push(FixStep::say("To have fewer TIME_WAIT entries, reuse connections (HTTP keep-alive, connection pools) on the side that closes first."));
    p.data.insert("default_value".into(), json!(default));
    p.data.insert("tw_now".into(), json!(in_use));
    p.data.insert(
        "time_wait_overflow_total".into(),
        json!(overflow.map(|o| o.0)),
    );
    Some(p)
}

/// A lowered tcp_fin_timeout: explained, never changed. It only bounds orphaned
/// FIN_WAIT2 (a legitimate thing to shorten); the orphans rule proposes a value when
/// orphaned FIN_WAIT2 is what it measured.
pub(super) fn fin_timeout(s: &Snapshot, _t: &Thresholds) -> Option<Problem> {
    let v = s.sysctl_i64("net.ipv4.tcp_fin_timeout")?;
    if v >= defaults::FIN_TIMEOUT_S {
        return None;
    }
    let mut p = Problem::new(s, "net.ipv4.tcp_fin_timeout", Severity::Info);
    p.default = Some(defaults::FIN_TIMEOUT_S.to_string());
    let tw = time_wait_total(s);
    p.evidence.push(Evidence::new("TIME_WAIT sockets now", tw));
    p.title = format!("tcp_fin_timeout lowered to {v} s: it does not shorten TIME_WAIT");
    p.why = "The tcp_fin_timeout setting only limits how long a socket that the application already closed waits in FIN_WAIT2 for the peer's FIN. TIME_WAIT is a fixed 60 s on upstream Linux and no sysctl changes it, so a lowered value does not reduce the TIME_WAIT count. For orphaned FIN_WAIT2 a shorter wait is harmless, so tcpdoctor proposes no change; it is just not doing what it is usually set for.".into();
    p.fix.push(FixStep::say(
        "If it was lowered to cut TIME_WAIT, that line can go: nothing else needs it.",
    ));
    p.fix.push(FixStep::say("To have fewer TIME_WAIT sockets, reuse connections (HTTP keep-alive, connection pools) on the side that closes first."));
    p.data.insert("time_wait".into(), json!(tw));
    Some(p)
}

pub(super) fn tw_reuse_on_a_server(s: &Snapshot, _t: &Thresholds) -> Option<Problem> {
    if s.sysctl_i64("net.ipv4.tcp_tw_reuse")? != 1 {
        return None;
    }
    let tw = &s.sockets.time_wait;
    // Only worth a word when all the TIME_WAIT seen is server side.
    if tw.client_side > 0 || tw.server_side == 0 {
        return None;
    }
    let mut p = Problem::new(s, "net.ipv4.tcp_tw_reuse", Severity::Info);
    p.default = Some("2 (loopback only, since 4.18)".into());
    p.evidence.push(Evidence::new(
        "TIME_WAIT on listening ports (server side)",
        tw.server_side,
    ));
    p.evidence
        .push(Evidence::new("TIME_WAIT on outgoing connections", 0));
    p.title =
        "tcp_tw_reuse=1 does nothing for this host's TIME_WAIT, which is all server side".into();
    p.why = "The tcp_tw_reuse setting lets connect() take over a local port held by a TIME_WAIT socket; it never affects accepted connections or bind(). All TIME_WAIT here sits on listening ports, where it costs no ports, so the setting changes nothing for it; the lever is to let clients close first or to keep connections open longer (HTTP keep-alive). The kernel documentation asks that tcp_tw_reuse be left at its default unless technical experts advise or ask for a change.".into();
    p.fix.push(FixStep::say("Nothing needs changing for this TIME_WAIT. If tcp_tw_reuse=1 was set for it, remove that line to get the default 2 back (loopback connections only)."));
    p.data.insert("server_side".into(), json!(tw.server_side));
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::{check, Thresholds};
    use crate::model::{Severity, Snapshot, Sockstat};

    fn audit(s: &Snapshot) -> Vec<crate::model::Finding> {
        check(s, &Thresholds::default())
    }

    #[test]
    fn recycle_on_is_a_warning_that_is_never_proposed_for_the_file() {
        let f = audit(&folklore());
        let recycle = about(&f, "net.ipv4.tcp_tw_recycle");
        assert_eq!(recycle.severity, Severity::Warning);
        assert!(recycle.proposed.is_empty());
        assert!(recycle
            .fix
            .iter()
            .any(|st| st.command.as_deref() == Some("sysctl -w net.ipv4.tcp_tw_recycle=0")));
        assert!(recycle.fix.iter().any(|l| l.mentions("/etc/sysctl.d")));
    }

    #[test]
    fn recycle_present_but_off_is_info_and_tw_reuse_only_flagged_on_servers() {
        let mut s = defaults();
        set(&mut s, "net.ipv4.tcp_tw_recycle", "0");
        set(&mut s, "net.ipv4.tcp_tw_reuse", "1");
        s.sockets.time_wait.server_side = 500;
        let f = audit(&s);
        assert_eq!(f.len(), 2, "{f:#?}");
        assert!(f.iter().all(|x| x.severity == Severity::Info));
        assert!(f.iter().all(|x| x.proposed.is_empty()), "{f:#?}");
        let reuse = about(&f, "net.ipv4.tcp_tw_reuse");
        assert!(reuse.why.contains("technical experts"), "{}", reuse.why);
        s.sockets.time_wait.client_side = 10;
        let f = audit(&s);
        assert!(by_key(&f, "net.ipv4.tcp_tw_reuse").is_empty());
    }

    #[test]
    fn timestamps_off_fires_and_proposes_one() {
        let mut s = defaults();
        set(&mut s, "net.ipv4.tcp_timestamps", "0");
        let f = audit(&s);
        let ts = about(&f, "net.ipv4.tcp_timestamps");
        assert_eq!(ts.severity, Severity::Warning);
        assert_eq!(ts.proposed.len(), 1);
        assert_eq!(ts.proposed[0].value, "1");
        assert_eq!(ts.proposed[0].was.as_deref(), Some("0"));
        set(&mut s, "net.ipv4.tcp_timestamps", "1");
        assert!(audit(&s).is_empty());
    }

    #[test]
    fn lowered_tw_buckets_go_back_to_the_default_never_below_it() {
        let f = audit(&folklore());
        let tw = about(&f, "net.ipv4.tcp_max_tw_buckets");
        assert_eq!(tw.severity, Severity::Warning);
        assert_eq!(tw.data["default_value"], 131072);
        assert_eq!(tw.data["tw_now"], 4990);
        assert_eq!(tw.proposed[0].value, "131072");
        assert_eq!(tw.proposed[0].was.as_deref(), Some("5000"));

        // More in use than half the default: twice the use, still at or above it.
        let mut s = defaults();
        set(&mut s, "net.ipv4.tcp_max_tw_buckets", "100000");
        s.sockstat = Some(Sockstat {
            tw: 99_000,
            ..Default::default()
        });
        let f = audit(&s);
        let tw = about(&f, "net.ipv4.tcp_max_tw_buckets");
        assert_eq!(tw.proposed[0].value, "198000");
        assert!(tw.proposed[0].why.contains("twice the 99000"), "{tw:#?}");

        set(&mut s, "net.ipv4.tcp_max_tw_buckets", "131072");
        assert!(audit(&s).is_empty());
    }

    #[test]
    fn lowered_tw_buckets_is_silent_without_a_reference_and_in_shared_ehash_namespaces() {
        let mut s = defaults();
        set(&mut s, "net.ipv4.tcp_max_tw_buckets", "5000");
        s.sysctls.remove("net.ipv4.tcp_ehash_entries");
        assert!(audit(&s).is_empty());
        // A child namespace sharing the host's table reports it negative.
        set(&mut s, "net.ipv4.tcp_ehash_entries", "-262144");
        let f = audit(&s);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].data["default_value"], 131072);
        assert_eq!(f[0].proposed[0].value, "131072");
    }

    #[test]
    fn lowered_fin_timeout_is_explained_and_left_alone() {
        let f = audit(&folklore());
        let fin = about(&f, "net.ipv4.tcp_fin_timeout");
        assert_eq!(fin.severity, Severity::Info);
        assert!(fin.proposed.is_empty(), "{fin:#?}");
        assert!(fin.why.contains("TIME_WAIT is a fixed 60 s"));
        let mut s = defaults();
        set(&mut s, "net.ipv4.tcp_fin_timeout", "120");
        assert!(
            audit(&s).is_empty(),
            "a raised value is the orphans rule's business"
        );
    }
}
