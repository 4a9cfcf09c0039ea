//! Rule `connection_resets`: processes whose connections ended in resets while
//! connections were traced, sent by this host (a close() with SO_LINGER {1,0} or with
//! unread data, data arriving after close) or received from the peer, with the peer.
//! Pure: reads the snapshot's traced flows and counters; without a tracer it never
//! fires (the kernel's reset counters have no process or peer).
//!
//! A warning from [`MIN_RESETS`] resets of one process over the traced time; a reset
//! now and then is ordinary (a client giving up, a server restarting).

use std::collections::BTreeMap;

use serde_json::json;

use super::util::{counter, counter_interval_ms, pct, rate_text};
use super::{traced, Thresholds};
use crate::model::units::{count, human_duration_ms};
use crate::model::{
    Direction, Evidence, Finding, FixStep, FlowPeer, FlowRow, NamespaceFlows, Nature, Severity,
    Snapshot,
};

pub const ID: &str = "connection_resets";

/// Resets (sent and received) of one process over the traced time that make a warning.
pub const MIN_RESETS: u64 = 5;

/// Flows listed in the evidence.
const TOP: usize = 5;

/// Kernel counters that say which kind of abort this host sent (namespace totals).
const ABORT_COUNTERS: [(&str, &str); 4] = [
    (
        "TcpExt.TCPAbortOnData",
        "SO_LINGER {1,0} closes, or data arriving after close()",
    ),
    (
        "TcpExt.TCPAbortOnClose",
        "close() with unread data in the receive buffer",
    ),
    (
        "TcpExt.TCPAbortOnTimeout",
        "retransmission or keepalive timers gave up",
    ),
    (
        "TcpExt.TCPAbortOnMemory",
        "out of memory or too many orphans",
    ),
];

pub fn check(s: &Snapshot, _t: &Thresholds) -> Vec<Finding> {
    let Some(flows) = &s.flows else {
        return Vec::new();
    };
    let mut by_pid: BTreeMap<u32, Vec<&FlowRow>> = BTreeMap::new();
    for r in flows
        .flows
        .iter()
        .filter(|r| r.counts.resets_sent + r.counts.resets_received > 0)
    {
        by_pid.entry(r.key.pid).or_default().push(r);
    }
    let mut out: Vec<(u64, Finding)> = by_pid
        .into_values()
        .filter_map(|rows| finding_for(s, flows, rows))
        .collect();
    out.sort_by_key(|x| std::cmp::Reverse(x.0));
    out.into_iter().map(|(_, f)| f).collect()
}

fn finding_for(
    s: &Snapshot,
    flows: &NamespaceFlows,
    mut rows: Vec<&FlowRow>,
) -> Option<(u64, Finding)> {
    let sent: u64 = rows.iter().map(|r| r.counts.resets_sent).sum();
    let received: u64 = rows.iter().map(|r| r.counts.resets_received).sum();
    let closed: u64 = rows.iter().map(|r| r.counts.closed()).sum();
    if sent + received < MIN_RESETS {
        return None;
    }
    rows.sort_by(|a, b| {
        let n = |r: &FlowRow| r.counts.resets_sent + r.counts.resets_received;
        n(b).cmp(&n(a)).then(a.key.cmp(&b.key))
    });
    let worst = rows[0];
    let pid = worst.key.pid;
    let who = traced::who(s, worst);
    let over = human_duration_ms(flows.duration_ms);
    let peer = peer_text(worst);
    let more = match rows.len() {
        1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    let sends = sent >= received;
    let title = if sends {
        format!(
            "{who} resets its connections {peer}: {} sent in {over}{}{more}",
            count(sent, "reset", "resets"),
            share_of(sent, closed)
        )
    } else {
        format!(
            "Peers reset the connections of {who} {peer}: {} received in {over}{}{more}",
            count(received, "reset", "resets"),
            share_of(received, closed)
        )
    };

    let mut evidence = vec![Evidence::new(
        format!("resets (traced over {over})"),
        format!(
            "{sent} sent ({}/s), {received} received ({}/s); {closed} connections ended",
            rate_text(flows.rate(sent)),
            rate_text(flows.rate(received))
        ),
    )];
    for r in rows.iter().take(TOP) {
        let c = &r.counts;
        evidence.push(Evidence::new(
            format!(
                "{} {}",
                match r.key.direction {
                    Direction::Active => "outgoing",
                    Direction::Passive => "incoming",
                },
                peer_text(r)
            ),
            format!(
                "{} sent, {} received; {} opened, {} closed",
                c.resets_sent,
                c.resets_received,
                c.opened,
                c.closed()
            ),
        ));
    }
    let interval = counter_interval_ms(s);
    if sent > 0 {
        for (key, what) in ABORT_COUNTERS {
            let c = counter(s, key);
            if c.rising() {
                evidence.push(Evidence::new(
                    format!("{key} ({what}; whole namespace)"),
                    c.describe(interval),
                ));
            }
        }
    }

    let mut why = Vec::new();
    if sent > 0 {
        why.push(format!(
            "{who} ended {} with a reset instead of a FIN. This host sends one when the application closes with SO_LINGER {{1,0}} (often set to avoid TIME_WAIT), closes with data it has not read, or receives data after it closed. The peer's next read or write fails with ECONNRESET, and whatever was still in flight or unread is thrown away; a reset also skips TIME_WAIT, so a stray segment of the old connection can land in a new one with the same ports.",
            count(sent, "connection", "connections")
        ));
    }
    if received > 0 {
        why.push(format!(
            "The peers reset {} of {who}'s: their application closed with SO_LINGER {{1,0}} or with unread data, it crashed or restarted, or something in between (a load balancer or firewall timing out idle connections) aborted them. {who} sees ECONNRESET (or EPIPE on a write).",
            count(received, "connection", "connections")
        ));
    }
    let why = why.join(" ");

    let mut fix = Vec::new();
    if sent > 0 {
        fix.push(FixStep::say("If the code sets SO_LINGER {1,0} to avoid TIME_WAIT, drop it and reuse connections instead (keep-alive, a pool): TIME_WAIT then stays rare, and nothing is lost at close."));
        fix.push(FixStep::say("Read to the end before closing: close() with unread data sends a reset. Where the protocol allows, shutdown(SHUT_WR), read until EOF, then close()."));
    }
    if received > 0 {
        fix.push(FixStep::say("Look at the peer's logs for aborts and restarts, and keep idle timeouts in order: a client's idle (keep-alive) timeout shorter than the server's, the server's shorter than any load balancer's or firewall's between them."));
    }
    if pid != 0 {
        fix.push(FixStep::run(
            format!("Watch each reset of {who} as it happens, with its peer"),
            format!("tcpdoctor trace --pid {pid} --events"),
        ));
    }

    let data = json!({
        "pid": pid,
        "comm": worst.comm,
        "duration_ms": flows.duration_ms,
        "resets_sent": sent,
        "resets_received": received,
        "closed": closed,
        "flows": rows.iter().map(|r| traced::flow_json(flows, r)).collect::<Vec<_>>(),
    });
    let mut f = Finding::new(ID, Severity::Warning, Nature::Live, title);
    f.evidence = evidence;
    f.why = why;
    f.fix = fix;
    f.data = data;
    Some((sent + received, f))
}

/// `to 10.0.0.5:443` or `on :8080`.
fn peer_text(r: &FlowRow) -> String {
    match r.key.peer {
        FlowPeer::Remote(e) => format!("to {e}"),
        FlowPeer::ListeningPort(p) => format!("on :{p}"),
    }
}

/// ` (40% of the connections that ended)`, or "" when none was seen ending.
fn share_of(n: u64, closed: u64) -> String {
    if closed == 0 {
        String::new()
    } else {
        format!(
            " ({:.0}% of the connections that ended)",
            pct(n.min(closed), closed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CounterSample, Endpoint, FlowCounts, FlowKey};

    fn flow(pid: u32, direction: Direction, sent: u64, received: u64) -> FlowRow {
        FlowRow {
            key: FlowKey {
                pid,
                netns: 1,
                direction,
                peer: match direction {
                    Direction::Active => {
                        FlowPeer::Remote(Endpoint::new("127.0.0.1".parse().expect("ip"), 8080))
                    }
                    Direction::Passive => FlowPeer::ListeningPort(8080),
                },
            },
            comm: if direction == Direction::Active {
                "client".into()
            } else {
                "server".into()
            },
            netns_name: String::new(),
            counts: FlowCounts {
                opened: 40,
                closed_local: sent,
                closed_peer: received,
                resets_sent: sent,
                resets_received: received,
                ..FlowCounts::default()
            },
        }
    }

    fn snapshot(rows: Vec<FlowRow>) -> Snapshot {
        let mut s = Snapshot {
            flows: Some(NamespaceFlows {
                duration_ms: 2000,
                flows: rows,
                ..NamespaceFlows::default()
            }),
            ..Snapshot::default()
        };
        let mut c = CounterSample {
            interval_ms: 2000,
            ..CounterSample::default()
        };
        c.before.insert("TcpExt.TCPAbortOnData".into(), 10);
        c.after.insert("TcpExt.TCPAbortOnData".into(), 50);
        s.counters = Some(c);
        s
    }

    #[test]
    fn linger_zero_closes_name_the_sender_and_the_receiver() {
        let s = snapshot(vec![
            flow(20, Direction::Active, 40, 0),
            flow(10, Direction::Passive, 0, 40),
        ]);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 2);
        let sender = f
            .iter()
            .find(|f| f.data["resets_sent"] == 40)
            .expect("sender");
        assert_eq!(sender.data["pid"], 20);
        assert_eq!(
            sender.title,
            "client (pid 20) resets its connections to 127.0.0.1:8080: 40 resets sent in 2.0s (100% of the connections that ended)"
        );
        assert!(sender
            .evidence
            .iter()
            .any(|e| e.label.starts_with("TcpExt.TCPAbortOnData") && e.value.starts_with("+40")));
        assert!(sender.why.contains("SO_LINGER {1,0}"));
        let receiver = f
            .iter()
            .find(|f| f.data["resets_received"] == 40)
            .expect("receiver");
        assert_eq!(receiver.data["pid"], 10);
        assert!(receiver.title.starts_with(
            "Peers reset the connections of server (pid 10) on :8080: 40 resets received"
        ));
        assert_eq!(receiver.severity, Severity::Warning);
    }

    #[test]
    fn does_not_fire_for_a_few_resets_or_without_a_tracer() {
        let s = snapshot(vec![flow(20, Direction::Active, 2, 1)]);
        assert!(check(&s, &Thresholds::default()).is_empty());
        assert!(check(&Snapshot::default(), &Thresholds::default()).is_empty());
    }
}
