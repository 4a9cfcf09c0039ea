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
use crate::model::kernel::defaults;
use crate::model::units::{self, count};
use crate::model::{
    Evidence, Finding, FixStep, Nature, Severity, Snapshot, SysctlChange, TcpState,
};

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

/// The tcp_orphan_retries proposed when unresponsive peers keep orphans alive: fewer
/// retransmissions than the effective default of 8 (a 0 in the sysctl means 8).
const ORPHAN_RETRIES: i64 = 3;

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

    let retries = s.sysctl_i64("net.ipv4.tcp_orphan_retries");
    let fin_timeout = s.sysctl_i64("net.ipv4.tcp_fin_timeout");
    // An orphaned FIN_WAIT2 stays a full socket, counted as an orphan, only while
    // tcp_fin_timeout exceeds 60 s (for the part above 60); otherwise __tcp_close() turns
    // it into a timewait minisocket at once, which the orphan count leaves out. So
    // FIN_WAIT2 can be what the orphans are only with a raised tcp_fin_timeout.
    let fin_wait2_orphans = fin_timeout.is_some_and(|v| v > defaults::FIN_TIMEOUT_S);
    let dominant = ORPHAN_STATES
        .iter()
        .copied()
        .filter(|st| *st != TcpState::FinWait2 || fin_wait2_orphans)
        .max_by_key(|st| (state_count(*st), std::cmp::Reverse(st.code())))
        .filter(|st| state_count(*st) > 0);
    let tcp_mem_max = s
        .sysctl("net.ipv4.tcp_mem")
        .and_then(|v| v.split_whitespace().nth(2))
        .and_then(|v| v.parse::<u64>().ok());
    let mem_pages = s.sockstat.map(|st| st.mem_pages);

    let title = if abort.rising() {
        let window = interval_ms
            .map(|ms| format!(" in {}", units::human_duration_ms(ms)))
            .unwrap_or_default();
        format!(
            "Orphaned sockets being reset for lack of memory: {}{window} (TCPAbortOnMemory); {} now",
            abort.delta.unwrap_or(0),
            count(orphans, "orphan", "orphans")
        )
    } else {
        match (limit, share) {
            (Some(l), Some(p)) if p >= t.orphan_warn_pct => format!(
                "{}: {p:.0}% of tcp_max_orphans {l}",
                count(orphans, "orphaned socket", "orphaned sockets")
            ),
            (_, _) if logged > 0 => format!(
                "Kernel logged \"{KERNEL_MESSAGE}\" {}; {} now",
                count(logged, "time", "times"),
                count(orphans, "orphan", "orphans")
            ),
            _ => format!(
                "{} (tcp_max_orphans is not visible in this network namespace)",
                count(orphans, "orphaned socket", "orphaned sockets")
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
        let note = match st {
            TcpState::FinWait2 if fin_wait2_orphans => {
                " (orphaned ones are full sockets for tcp_fin_timeout - 60 s, then minisockets)"
            }
            TcpState::FinWait2 => {
                " (minisockets, counted with TIME_WAIT, or owned after shutdown(): not orphans)"
            }
            _ => "",
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
            format!("{} in the buffer", count(logged, "time", "times")),
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
        FixStep::run(
            "See which peers the FIN_WAIT1 orphans belong to (a large Send-Q is data the peer never took)",
            "ss -tno state fin-wait-1",
        ),
        FixStep::run("The LAST_ACK ones too", "ss -tno state last-ack"),
    ];
    let mut proposed = Vec::new();
    let effective_retries = retries.map(|r| if r == 0 { 8 } else { r });
    match dominant {
        Some(TcpState::FinWait1 | TcpState::LastAck | TcpState::Closing)
            if effective_retries.is_some_and(|r| r > ORPHAN_RETRIES) =>
        {
            let now = match retries {
                Some(0) => " (now 0, which the kernel treats as 8)".to_string(),
                Some(r) => format!(" (now {r})"),
                None => String::new(),
            };
            fix.push(FixStep::run(
                format!("Let orphans give up sooner on unresponsive peers{now}; per network namespace. A value of 0 does not mean no retries: the kernel uses 8"),
                format!("sysctl -w net.ipv4.tcp_orphan_retries={ORPHAN_RETRIES}"),
            ));
            proposed.push(SysctlChange {
                key: "net.ipv4.tcp_orphan_retries".into(),
                value: ORPHAN_RETRIES.to_string(),
                was: retries.map(|r| r.to_string()),
                why: format!(
                    "Orphans waiting on peers that stopped answering give up after {ORPHAN_RETRIES} retransmissions instead of {}; 0 would mean 8.",
                    effective_retries.unwrap_or(8)
                ),
            });
        }
        Some(TcpState::FinWait2) => {
            // Only reached with tcp_fin_timeout above the default (see fin_wait2_orphans).
            let now = fin_timeout.unwrap_or(defaults::FIN_TIMEOUT_S);
            fix.push(FixStep::run(
                format!("Orphaned FIN_WAIT2 sockets stay full sockets for tcp_fin_timeout - 60 s ({now} s now); at the default 60 they become small timewait entries at once and end after 60 s. That is what this knob is for; it does not touch TIME_WAIT. FIN_WAIT2 sockets still owned after shutdown() need the application to close them"),
                format!("sysctl -w net.ipv4.tcp_fin_timeout={}", defaults::FIN_TIMEOUT_S),
            ));
            proposed.push(SysctlChange {
                key: "net.ipv4.tcp_fin_timeout".into(),
                value: defaults::FIN_TIMEOUT_S.to_string(),
                was: Some(now.to_string()),
                why: format!(
                    "Was {now}. Orphaned FIN_WAIT2 sockets leave the orphan count at once and end after 60 s (this does not change TIME_WAIT)."
                ),
            });
        }
        _ => {}
    }
    fix.push(FixStep::run(
        "Do not lower tcp_max_orphans. If memory allows (each orphan can pin about 64 KB), raise it, host-wide; if TCP memory is the limit, compare sockstat mem with net.ipv4.tcp_mem instead",
        format!(
            "sysctl -w net.ipv4.tcp_max_orphans={}",
            limit.map_or(262_144, |l| l * 2)
        ),
    ));
    fix.push(FixStep::say("The limit and the count are host-wide: orphans from every container count, and the reset hits all of them. Read tcp_max_orphans on the host when it is not visible here."));

    let mut f = Finding::new(ID, severity, Nature::Live, title);
    f.evidence = evidence;
    f.why = why;
    f.fix = fix;
    f.proposed = proposed;
    f.data = json!({
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
            "effective_orphan_retries": effective_retries,
            "tcp_fin_timeout": fin_timeout,
            "tcp_mem_pages": mem_pages,
            "tcp_mem_max_pages": tcp_mem_max,
    });
    vec![f]
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
        assert!(f.fix.iter().any(|l| l.mentions("tcp_orphan_retries=3")
            && l.mentions("now 0, which the kernel treats as 8")));
        assert_eq!(f.proposed.len(), 1);
        assert_eq!(f.proposed[0].key, "net.ipv4.tcp_orphan_retries");
        assert_eq!(f.proposed[0].value, "3");
        assert_eq!(f.proposed[0].was.as_deref(), Some("0"));
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
            "Orphaned sockets being reset for lack of memory: 15 in 1.0s (TCPAbortOnMemory); 2000 orphans now"
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

    /// Orphaned FIN_WAIT2 counts as orphans only while tcp_fin_timeout is above 60 s;
    /// then (and only then) the rule proposes the default 60.
    #[test]
    fn fin_timeout_is_proposed_only_when_orphaned_fin_wait2_is_the_problem() {
        let mut s = snapshot(40_000, 100, 100, Some(131_072));
        s.summary.ipv4.0[TcpState::FinWait2.index()] = 39_000;
        s.sysctls
            .insert("net.ipv4.tcp_fin_timeout".into(), "300".into());
        let f = check(&s, &Thresholds::default());
        assert_eq!(f[0].data["dominant_state"], "FIN_WAIT2");
        assert_eq!(f[0].proposed.len(), 1, "{:#?}", f[0].proposed);
        assert_eq!(f[0].proposed[0].key, "net.ipv4.tcp_fin_timeout");
        assert_eq!(f[0].proposed[0].value, "60");
        assert_eq!(f[0].proposed[0].was.as_deref(), Some("300"));
        // At 60 s or below those FIN_WAIT2 are minisockets, not orphans: the orphans
        // are FIN_WAIT1 here, and tcp_fin_timeout is left alone.
        for v in ["60", "10"] {
            s.sysctls
                .insert("net.ipv4.tcp_fin_timeout".into(), v.into());
            let f = check(&s, &Thresholds::default());
            assert_eq!(f[0].data["dominant_state"], "FIN_WAIT1");
            assert!(
                !f[0]
                    .proposed
                    .iter()
                    .any(|c| c.key == "net.ipv4.tcp_fin_timeout"),
                "{:#?}",
                f[0].proposed
            );
        }
    }

    #[test]
    fn retries_already_low_are_not_proposed_and_counts_agree() {
        let mut s = snapshot(30_000, 25_000, 5_000, Some(131_072));
        s.sysctls
            .insert("net.ipv4.tcp_orphan_retries".into(), "2".into());
        let f = check(&s, &Thresholds::default());
        assert!(f[0].proposed.is_empty(), "{:#?}", f[0].proposed);
        let mut one = snapshot(1, 1, 0, Some(131_072));
        one.kernel_log = Some(vec![KernelLogEntry {
            message: "TCP: too many orphaned sockets".into(),
            count: 1,
            last_seen_s: 10,
        }]);
        let f = check(&one, &Thresholds::default());
        assert_eq!(
            f[0].title,
            "Kernel logged \"too many orphaned sockets\" 1 time; 1 orphan now"
        );
    }

    #[test]
    fn does_not_fire_for_small_numbers() {
        let s = snapshot(500, 400, 100, Some(131_072));
        assert!(check(&s, &Thresholds::default()).is_empty());
        let no_limit = snapshot(500, 400, 100, None);
        assert!(check(&no_limit, &Thresholds::default()).is_empty());
    }
}
