//! Rule `orphans`: sockets the application has closed while the kernel still finishes the
//! TCP close on its own (FIN_WAIT1, FIN_WAIT2, LAST_ACK, CLOSING), against the host-wide
//! `net.ipv4.tcp_max_orphans`. Pure: reads the snapshot only.
//!
//! Critical: orphans reset for lack of memory during the sample (`TCPAbortOnMemory`), or
//! orphans at `orphan_critical_pct` of the limit. Warning: at `orphan_warn_pct`, or the
//! kernel logged "too many orphaned sockets". When the limit is not visible (inside a
//! network namespace it is not), a large count ([`LARGE_ORPHANS`]) gives an Info finding.
//! Small numbers give nothing.

use serde_json::json;

use super::util::{counter, counter_interval_ms, pct};
use super::Thresholds;
use crate::model::{Evidence, Finding, FixStep, Nature, Severity, Snapshot, TcpState};

pub const ID: &str = "orphans";

/// Orphans worth an Info finding when tcp_max_orphans cannot be read.
pub const LARGE_ORPHANS: u64 = 10_000;

/// The states an orphan can be in, in the order they are explained.
const ORPHAN_STATES: [TcpState; 4] = [
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::LastAck,
    TcpState::Closing,
];

const KERNEL_MESSAGE: &str = "too many orphaned sockets";

pub fn check(s: &Snapshot, t: &Thresholds) -> Vec<Finding> {
    let totals = s.summary.total();
    let state_count = |st: TcpState| totals.get(st);
    // sockstat `orphan` is the kernel's own count (host-wide). Without it, estimate from
    // the states of full sockets that are orphans once closed; FIN_WAIT2 is left out as it
    // is mostly timewait minisockets, which the orphan count does not include.
    let (orphans, source) = match s.sockstat {
        Some(st) => (st.orphan, "sockstat"),
        None => (
            state_count(TcpState::FinWait1)
                + state_count(TcpState::LastAck)
                + state_count(TcpState::Closing),
            "estimated from FIN_WAIT1 + LAST_ACK + CLOSING",
        ),
    };
    let limit = s
        .sysctl_i64("net.ipv4.tcp_max_orphans")
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0);
    let share = limit.map(|l| pct(orphans, l));
    let abort = counter(s, "TcpExt.TCPAbortOnMemory");
    let interval_ms = counter_interval_ms(s);
    let logged: u64 = s
        .kernel_log
        .iter()
        .flatten()
        .filter(|e| e.message.contains(KERNEL_MESSAGE))
        .map(|e| e.count)
        .sum();

    let severity = if abort.rising() || share.is_some_and(|p| p >= t.orphan_critical_pct) {
        Severity::Critical
    } else if share.is_some_and(|p| p >= t.orphan_warn_pct) || logged > 0 {
        Severity::Warning
    } else if limit.is_none() && orphans >= LARGE_ORPHANS {
        Severity::Info
    } else {
        return Vec::new();
    };

    let dominant = ORPHAN_STATES
        .iter()
        .copied()
        .max_by_key(|st| (state_count(*st), std::cmp::Reverse(st.code())))
        .filter(|st| state_count(*st) > 0);
    let retries = s.sysctl_i64("net.ipv4.tcp_orphan_retries");
    let fin_timeout = s.sysctl_i64("net.ipv4.tcp_fin_timeout");
    let tcp_mem_max = s
        .sysctl("net.ipv4.tcp_mem")
        .and_then(|v| v.split_whitespace().nth(2))
        .and_then(|v| v.parse::<u64>().ok());
    let mem_pages = s.sockstat.map(|st| st.mem_pages);

    let title = if abort.rising() {
        let window = interval_ms
            .map(|ms| format!(" in {}", crate::model::units::human_duration_ms(ms)))
            .unwrap_or_default();
        format!(
            "Orphaned sockets being reset for lack of memory: {}{window} (TCPAbortOnMemory); {orphans} orphans",
            abort.delta.unwrap_or(0)
        )
    } else {
        match (limit, share) {
            (Some(l), Some(p)) if p >= t.orphan_warn_pct => {
                format!("{orphans} orphaned sockets: {p:.0}% of tcp_max_orphans {l}")
            }
            (_, _) if logged > 0 => format!(
                "Kernel logged \"{KERNEL_MESSAGE}\" {logged} times; {orphans} orphans now"
            ),
            _ => format!(
                "{orphans} orphaned sockets (tcp_max_orphans is not visible in this network namespace)"
            ),
        }
    };

    let mut evidence = vec![Evidence::new(
        "orphaned sockets",
        format!(
            "{orphans} ({source}{})",
            if source == "sockstat" {
                ", host-wide"
            } else {
                ""
            }
        ),
    )];
    evidence.push(Evidence::new(
        "tcp_max_orphans",
        match (limit, share) {
            (Some(l), Some(p)) => format!(
                "{l} ({p:.1}% used; idle or ICMP-hit orphans are counted 2x or 4x, so trouble can start at {} or {})",
                l / 2,
                l / 4
            ),
            _ => "not visible here (host-wide; read it on the host)".to_string(),
        },
    ));
    for st in ORPHAN_STATES {
        let note = if st == TcpState::FinWait2 {
            " (mostly minisockets, counted with TIME_WAIT)"
        } else {
            ""
        };
        evidence.push(Evidence::new(
            st.name(),
            format!("{}{note}", state_count(st)),
        ));
    }
    if abort.total.is_some() {
        evidence.push(Evidence::new(
            "TCPAbortOnMemory (orphans reset)",
            abort.describe(interval_ms),
        ));
    }
    if logged > 0 {
        evidence.push(Evidence::new(
            format!("kernel log \"{KERNEL_MESSAGE}\""),
            format!("{logged} times in the buffer"),
        ));
    }
    if let Some(r) = retries {
        evidence.push(Evidence::new(
            "tcp_orphan_retries",
            if r == 0 {
                "0 (the kernel treats 0 as 8)".to_string()
            } else {
                r.to_string()
            },
        ));
    }
    if let (Some(m), Some(max)) = (mem_pages, tcp_mem_max) {
        evidence.push(Evidence::new(
            "TCP memory (pages)",
            format!("{m} of tcp_mem max {max} ({:.0}%)", pct(m, max)),
        ));
    }

    let state_why = match dominant {
        Some(TcpState::FinWait1) => " Most are in FIN_WAIT1: the FIN (often queued behind unsent data) is not acknowledged because the peer stopped reading or vanished; they last until tcp_orphan_retries retransmissions fail.",
        Some(TcpState::FinWait2) => " Most are in FIN_WAIT2: the FIN was acknowledged and the peer's own FIN never came; orphaned ones end after tcp_fin_timeout (default 60 s), while one whose application only called shutdown() has no timeout.",
        Some(TcpState::LastAck) => " Most are in LAST_ACK: the peer closed first, this host answered with its FIN and waits for the final ACK, which was lost or the peer is gone; retransmissions are bounded by tcp_orphan_retries.",
        Some(TcpState::Closing) => " Most are in CLOSING: both sides closed at the same moment and each waits for the ACK of its FIN; many of them point to packet loss.",
        _ => "",
    };
    let why = format!(
        "An orphan is a connection the application has closed while the kernel still completes the TCP close on its own; each can pin up to about 64 KB of unswappable memory.{state_why} When orphans pass tcp_max_orphans (host-wide; idle ones count double or quadruple, so at 1/2 or 1/4 of it) or TCP memory runs out, the kernel logs \"{KERNEL_MESSAGE}\" and resets them (TCPAbortOnMemory)."
    );

    let mut fix = vec![
        "See which peers they belong to: `ss -tno state fin-wait-1` and `ss -tno state last-ack` (a large Send-Q is data the peer never took).".to_string(),
    ];
    match dominant {
        Some(TcpState::FinWait1 | TcpState::LastAck | TcpState::Closing) => fix.push(format!(
            "Let orphans give up sooner on unresponsive peers: `sysctl -w net.ipv4.tcp_orphan_retries=3` (per network namespace){}. A value of 0 does not mean no retries: the kernel uses 8.",
            match retries {
                Some(r) => format!("; now {r}{}", if r == 0 { ", i.e. 8" } else { "" }),
                None => String::new(),
            }
        )),
        Some(TcpState::FinWait2) => fix.push(format!(
            "Orphaned FIN_WAIT2 ends after tcp_fin_timeout{}: lowering it (e.g. `sysctl -w net.ipv4.tcp_fin_timeout=30`) is what that knob is for; it does not touch TIME_WAIT. FIN_WAIT2 sockets still owned after shutdown() need the application to close them.",
            fin_timeout.map(|v| format!(" (now {v} s)")).unwrap_or_default()
        )),
        _ => {}
    }
    fix.push(format!(
        "Do not lower tcp_max_orphans. If memory allows, raise it (`sysctl -w net.ipv4.tcp_max_orphans={}`, host-wide); if TCP memory is the limit, compare sockstat mem with net.ipv4.tcp_mem.",
        limit.map_or(262_144, |l| l * 2)
    ));
    fix.push("The limit and the count are host-wide: orphans from every container count, and the reset hits all of them. Read tcp_max_orphans on the host when it is not visible here.".to_string());

    vec![Finding {
        rule_id: ID,
        namespaces: Vec::new(),
        nature: Nature::Live,
        severity,
        title,
        evidence,
        why,
        fix: fix.into_iter().map(FixStep::from).collect(),
        proposed: Vec::new(),
        data: json!({
            "orphans": orphans,
            "orphans_source": source,
            "max_orphans": limit,
            "used_pct": share.map(|p| (p * 100.0).round() / 100.0),
            "states": {
                "FIN_WAIT1": state_count(TcpState::FinWait1),
                "FIN_WAIT2": state_count(TcpState::FinWait2),
                "LAST_ACK": state_count(TcpState::LastAck),
                "CLOSING": state_count(TcpState::Closing),
            },
            "dominant_state": dominant.map(TcpState::name),
            "abort_on_memory": abort.json(),
            "interval_ms": interval_ms,
            "kernel_log_count": logged,
            "tcp_orphan_retries": retries,
            "effective_orphan_retries": retries.map(|r| if r == 0 { 8 } else { r }),
            "tcp_fin_timeout": fin_timeout,
            "tcp_mem_pages": mem_pages,
            "tcp_mem_max_pages": tcp_mem_max,
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CounterSample, KernelLogEntry, Sockstat};

    fn snapshot(orphans: u64, fin_wait1: u64, last_ack: u64, limit: Option<u64>) -> Snapshot {
        let mut s = Snapshot::default();
        s.summary.ipv4.0[TcpState::FinWait1.index()] = fin_wait1;
        s.summary.ipv4.0[TcpState::LastAck.index()] = last_ack;
        s.summary.ipv6.0[TcpState::FinWait2.index()] = 10;
        s.sockstat = Some(Sockstat {
            orphan: orphans,
            ..Default::default()
        });
        if let Some(l) = limit {
            s.sysctls
                .insert("net.ipv4.tcp_max_orphans".into(), l.to_string());
        }
        s.sysctls
            .insert("net.ipv4.tcp_orphan_retries".into(), "0".into());
        s
    }

    #[test]
    fn fires_warning_at_a_fifth_of_the_limit_explaining_fin_wait1() {
        let s = snapshot(30_000, 25_000, 5_000, Some(131_072));
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        let f = &f[0];
        assert_eq!(f.rule_id, ID);
        assert_eq!(f.severity, Severity::Warning);
        assert_eq!(
            f.title,
            "30000 orphaned sockets: 23% of tcp_max_orphans 131072"
        );
        assert_eq!(f.data["orphans"], 30_000);
        assert_eq!(f.data["used_pct"], 22.89);
        assert_eq!(f.data["dominant_state"], "FIN_WAIT1");
        assert_eq!(f.data["effective_orphan_retries"], 8);
        assert!(f.why.contains("FIN_WAIT1"));
        assert!(f
            .fix
            .iter()
            .any(|l| l.mentions("tcp_orphan_retries=3") && l.mentions("now 0, i.e. 8")));
    }

    #[test]
    fn aborts_on_memory_during_the_sample_are_critical() {
        let mut s = snapshot(2_000, 100, 1_900, Some(131_072));
        let mut c = CounterSample {
            interval_ms: 1000,
            ..Default::default()
        };
        c.before.insert("TcpExt.TCPAbortOnMemory".into(), 10);
        c.after.insert("TcpExt.TCPAbortOnMemory".into(), 25);
        s.counters = Some(c);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f[0].severity, Severity::Critical);
        assert_eq!(
            f[0].title,
            "Orphaned sockets being reset for lack of memory: 15 in 1.0s (TCPAbortOnMemory); 2000 orphans"
        );
        assert_eq!(f[0].data["abort_on_memory"]["delta"], 15);
        assert_eq!(f[0].data["dominant_state"], "LAST_ACK");
    }

    #[test]
    fn kernel_message_warns_and_missing_limit_degrades_to_info() {
        let mut logged = snapshot(100, 100, 0, Some(131_072));
        logged.kernel_log = Some(vec![KernelLogEntry {
            message: "TCP: too many orphaned sockets".into(),
            count: 3,
            last_seen_s: 1000,
        }]);
        let f = check(&logged, &Thresholds::default());
        assert_eq!(f[0].severity, Severity::Warning);
        assert_eq!(f[0].data["kernel_log_count"], 3);

        let netns = snapshot(12_000, 12_000, 0, None);
        let f = check(&netns, &Thresholds::default());
        assert_eq!(f[0].severity, Severity::Info);
        assert!(f[0].title.contains("not visible"), "{}", f[0].title);
        assert_eq!(f[0].data["max_orphans"], serde_json::Value::Null);
    }

    #[test]
    fn does_not_fire_for_small_numbers() {
        let s = snapshot(500, 400, 100, Some(131_072));
        assert!(check(&s, &Thresholds::default()).is_empty());
        let no_limit = snapshot(500, 400, 100, None);
        assert!(check(&no_limit, &Thresholds::default()).is_empty());
    }
}
