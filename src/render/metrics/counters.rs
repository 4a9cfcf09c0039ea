//! Kernel TCP counters from /proc/net/netstat (TcpExt) and /proc/net/snmp (Tcp), as
//! Prometheus counters, totals since boot of one network namespace.

use super::{Kind, Text};
use crate::model::Snapshot;

/// Kernel counters exported as Prometheus counters, from the snapshot's second reading:
/// (`Group.Name` as /proc/net/{netstat,snmp} spell it, help text).
const COUNTERS: &[(&str, &str)] = &[
    ("TcpExt.ListenOverflows", "Connections dropped because a listener's accept queue was full (TcpExt ListenOverflows)."),
    ("TcpExt.ListenDrops", "Every connection a listener dropped, overflows included (TcpExt ListenDrops)."),
    ("TcpExt.TCPTimeWaitOverflow", "Connections closed without TIME_WAIT because tcp_max_tw_buckets was reached (TcpExt TCPTimeWaitOverflow)."),
    ("TcpExt.TW", "Timewait entries (TIME_WAIT, short FIN_WAIT2) that expired on their normal timer (TcpExt TW)."),
    ("TcpExt.TWRecycled", "TIME_WAIT ports taken over by a new outgoing connection under tcp_tw_reuse (TcpExt TWRecycled)."),
    ("TcpExt.TWKilled", "Timewait entries that expired on a short timer of 4 s or less (TcpExt TWKilled)."),
    ("TcpExt.TCPAbortOnData", "Connections reset because data arrived after the application closed them (TcpExt TCPAbortOnData)."),
    ("TcpExt.TCPAbortOnClose", "Connections reset because the application closed with unread data (TcpExt TCPAbortOnClose)."),
    ("TcpExt.TCPAbortOnMemory", "Connections reset for lack of memory or too many orphans (TcpExt TCPAbortOnMemory)."),
    ("TcpExt.TCPAbortOnTimeout", "Connections dropped after retransmission, keepalive or zero-window probe timers gave up (TcpExt TCPAbortOnTimeout)."),
    ("TcpExt.TCPAbortOnLinger", "Connections reset on close because TCP_LINGER2 was negative (TcpExt TCPAbortOnLinger)."),
    ("TcpExt.TCPAbortFailed", "Resets the kernel wanted to send but could not (TcpExt TCPAbortFailed)."),
    ("TcpExt.TCPReqQFullDrop", "SYNs dropped because the SYN queue was full and syncookies were off (TcpExt TCPReqQFullDrop)."),
    ("TcpExt.TCPReqQFullDoCookies", "SYNs answered with a syncookie because the SYN queue was full (TcpExt TCPReqQFullDoCookies)."),
    ("TcpExt.SyncookiesSent", "Syncookies sent (TcpExt SyncookiesSent)."),
    ("TcpExt.SyncookiesFailed", "ACKs carrying an invalid syncookie (TcpExt SyncookiesFailed)."),
    ("TcpExt.TCPMemoryPressures", "Times TCP entered memory pressure (tcp_mem) (TcpExt TCPMemoryPressures)."),
    ("Tcp.ActiveOpens", "Outgoing connections started: SYN_SENT entered (Tcp ActiveOpens)."),
    ("Tcp.PassiveOpens", "Incoming connections started: SYN_RECV entered from LISTEN (Tcp PassiveOpens)."),
    ("Tcp.AttemptFails", "Connection attempts that failed after the SYN (Tcp AttemptFails)."),
    ("Tcp.EstabResets", "Connections that went from ESTABLISHED or CLOSE_WAIT straight to CLOSED, i.e. were reset (Tcp EstabResets)."),
    ("Tcp.OutRsts", "Segments sent with the RST flag (Tcp OutRsts)."),
    ("Tcp.InErrs", "Segments received in error (Tcp InErrs)."),
    ("Tcp.RetransSegs", "Segments retransmitted (Tcp RetransSegs)."),
];

/// `tcpdoctor_tcpext_listenoverflows_total` for `TcpExt.ListenOverflows`.
fn counter_metric_name(key: &str) -> String {
    let name: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("tcpdoctor_{name}_total")
}

/// `s`: the one namespace whose counters are exported (the primary).
pub(super) fn write(t: &mut Text, s: &Snapshot) {
    let Some(c) = &s.counters else {
        return;
    };
    for (key, help) in COUNTERS {
        // A counter this kernel does not have is absent, not zero.
        if let Some(v) = c.total(key) {
            let name = counter_metric_name(key);
            t.single(&name, Kind::Counter, help, v.max(0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{host_of, snapshot, stats};
    use super::super::{render, Exposition};
    use super::*;
    use crate::model::CounterSample;

    #[test]
    fn counters_are_totals_and_absent_when_the_kernel_lacks_them() {
        let mut t = Text::default();
        write(&mut t, &snapshot());
        let text = t.buf;
        assert!(text.contains("# TYPE tcpdoctor_tcpext_listenoverflows_total counter\n"));
        assert!(text.contains("tcpdoctor_tcpext_listenoverflows_total 7\n"));
        assert!(text.contains("tcpdoctor_tcp_activeopens_total 100\n"));
        assert!(
            !text.contains("tcpdoctor_tcp_outrsts_total"),
            "absent, not zero"
        );
        assert_eq!(
            counter_metric_name("TcpExt.TCPTimeWaitOverflow"),
            "tcpdoctor_tcpext_tcptimewaitoverflow_total"
        );
    }

    #[test]
    fn kernel_counters_come_from_the_primary_namespace_only() {
        let mut a = snapshot();
        let mut b = snapshot();
        for (s, v) in [(&mut a, 7), (&mut b, 1000)] {
            let c = s.counters.get_or_insert_with(CounterSample::default);
            c.after.insert("TcpExt.ListenOverflows".into(), v);
        }
        let host = host_of(vec![a, b]);
        let text = render(&Exposition {
            host: Some(&host),
            findings: &[],
            stats: stats(),
            flows: None,
        });
        // Not 1007: a sum would drop when the second namespace goes away.
        assert!(
            text.contains("tcpdoctor_tcpext_listenoverflows_total 7\n"),
            "{text}"
        );
    }
}
