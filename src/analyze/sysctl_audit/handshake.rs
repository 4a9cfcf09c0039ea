//! Handshake retries: tcp_syn_retries (how long connect() tries) and tcp_synack_retries
//! (how long a listener waits for a client's final ACK).

use serde_json::json;

use super::{Problem, Thresholds};
use crate::model::kernel::defaults;
use crate::model::{Evidence, FixStep, Severity, Snapshot};

/// Seconds until a handshake is abandoned, assuming the initial RTO of 1 s: the first
/// `linear` retransmissions wait 1 s each (tcp_syn_linear_timeouts, SYN only), later
/// ones double, every wait capped at TCP_RTO_MAX (120 s). Default SYN: 6 retries and 4
/// linear give 131 s; without linear timeouts 127 s. SYN-ACK with 5: 63 s.
pub(super) fn handshake_give_up_s(retries: u64, linear: u64) -> u64 {
    (0..=retries.saturating_add(linear))
        .map(|i| {
            if i <= linear {
                1
            } else {
                (1u64 << (i - linear).min(16)).min(120)
            }
        })
        .sum()
}

pub(super) fn syn_retries(s: &Snapshot, _t: &Thresholds) -> Option<Problem> {
    let v = s.sysctl_i64("net.ipv4.tcp_syn_retries")?;
    if v >= 3 {
        return None;
    }
    let v = u64::try_from(v).ok()?;
    let linear = s
        .sysctl_i64("net.ipv4.tcp_syn_linear_timeouts")
        .and_then(|l| u64::try_from(l).ok());
    let l = linear.unwrap_or(0);
    let default_retries = defaults::SYN_RETRIES as u64;
    let now = handshake_give_up_s(v, l);
    let default = handshake_give_up_s(default_retries, l);
    let mut p = Problem::new(s, "net.ipv4.tcp_syn_retries", Severity::Warning);
    p.default = Some(default_retries.to_string());
    if let Some(l) = linear {
        p.evidence.push(Evidence::new("tcp_syn_linear_timeouts", l));
    }
    p.evidence.push(Evidence::new(
        "connect() gives up after",
        format!("about {now} s (default: {default} s)"),
    ));
    p.title = format!("tcp_syn_retries={v}: connect() fails after about {now} s");
    let linear_text = match linear {
        Some(l) if l > 0 => format!(
            " (this kernel also retries {l} more times at a fixed 1 s first, tcp_syn_linear_timeouts)"
        ),
        _ => String::new(),
    };
    p.why = format!(
        "A connect() resends its SYN tcp_syn_retries times with a doubling wait{linear_text} and then fails with ETIMEDOUT. At {v} that happens after about {now} s instead of {default} s, so a single lost packet or a server that is briefly slow to answer becomes a hard connection failure. How long to wait is a per-application decision, better made with a connect timeout or the TCP_SYNCNT / TCP_USER_TIMEOUT socket options."
    );
    p.propose(
        default_retries,
        "Restore the default now",
        format!(
            "Was {v}. The default, so that one lost SYN does not fail a connect() (gives up after about {default} s instead of {now} s); set short timeouts per application."
        ),
    );
    p.fix.push(FixStep::say("Give latency-sensitive clients their own connect timeout (or setsockopt TCP_SYNCNT) instead of a host-wide value."));
    p.data.insert("give_up_s".into(), json!(now));
    p.data.insert("default_give_up_s".into(), json!(default));
    p.data.insert("syn_linear_timeouts".into(), json!(linear));
    Some(p)
}

pub(super) fn synack_retries(s: &Snapshot, _t: &Thresholds) -> Option<Problem> {
    let v = s.sysctl_i64("net.ipv4.tcp_synack_retries")?;
    let severity = match v {
        0 | 1 => Severity::Warning,
        2 => Severity::Info,
        _ => return None,
    };
    let v = u64::try_from(v).ok()?;
    let default_retries = defaults::SYNACK_RETRIES as u64;
    let now = handshake_give_up_s(v, 0);
    let default = handshake_give_up_s(default_retries, 0);
    let cookies = s.sysctl_i64("net.ipv4.tcp_syncookies");
    let mut p = Problem::new(s, "net.ipv4.tcp_synack_retries", severity);
    p.default = Some(default_retries.to_string());
    p.evidence.push(Evidence::new(
        "half-open connection dropped after",
        format!("about {now} s (default: {default} s)"),
    ));
    p.title =
        format!("tcp_synack_retries={v}: slow or lossy clients give up connecting after {now} s");
    p.why = format!(
        "A listening socket resends its SYN-ACK up to tcp_synack_retries times while the client's final ACK is missing, then forgets the connection attempt. At {v} that happens after about {now} s instead of {default} s, so clients on lossy links fail to connect. A low value is sometimes set against SYN floods, but syncookies (on by default) already keep a flood from filling the queue."
    );
    p.propose(
        default_retries,
        "Restore the default now",
        format!(
            "Was {v}. The default gives slow clients about {default} s to finish the handshake instead of {now} s."
        ),
    );
    p.data.insert("give_up_s".into(), json!(now));
    p.data.insert("syncookies".into(), json!(cookies));
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::{check, Thresholds};
    use super::*;

    fn audit(s: &Snapshot) -> Vec<crate::model::Finding> {
        check(s, &Thresholds::default())
    }

    #[test]
    fn handshake_timing_matches_the_kernel_documentation() {
        assert_eq!(handshake_give_up_s(6, 4), 131);
        assert_eq!(handshake_give_up_s(6, 0), 127);
        assert_eq!(handshake_give_up_s(2, 0), 7);
        assert_eq!(handshake_give_up_s(2, 4), 11);
        assert_eq!(handshake_give_up_s(5, 0), 63);
    }

    #[test]
    fn low_syn_retries_fire_with_the_give_up_time_and_propose_the_default() {
        let f = audit(&folklore());
        let syn = about(&f, "net.ipv4.tcp_syn_retries");
        assert_eq!(syn.severity, Severity::Warning);
        assert_eq!(syn.data["give_up_s"], 11);
        assert_eq!(syn.data["default_give_up_s"], 131);
        assert_eq!(syn.proposed[0].value, "6");
        let mut s = defaults();
        set(&mut s, "net.ipv4.tcp_syn_retries", "3");
        assert!(audit(&s).is_empty());
    }

    /// Every flagged value is proposed back, 2 (info) included: the old file left it out.
    #[test]
    fn every_flagged_synack_retries_is_proposed_back() {
        for (v, severity, give_up) in [("1", Severity::Warning, 3), ("2", Severity::Info, 7)] {
            let mut s = defaults();
            set(&mut s, "net.ipv4.tcp_synack_retries", v);
            let f = audit(&s);
            let synack = about(&f, "net.ipv4.tcp_synack_retries");
            assert_eq!(synack.severity, severity);
            assert_eq!(synack.data["give_up_s"], give_up);
            assert_eq!(synack.proposed[0].value, "5");
            assert_eq!(synack.proposed[0].was.as_deref(), Some(v));
        }
        let mut s = defaults();
        set(&mut s, "net.ipv4.tcp_synack_retries", "3");
        assert!(audit(&s).is_empty());
    }
}
