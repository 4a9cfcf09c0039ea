//! What the rules share about traced flows (not a rule): who a flow is, its rates
//! over the time traced, and the sentence that names a process making short
//! connections. Reads [`Snapshot::flows`] only.

use serde_json::json;

use super::util::{process_label, rate_text, round2};
use crate::model::units::human_duration_ms;
use crate::model::{Closer, Direction, FlowPeer, FlowRow, NamespaceFlows, Snapshot};

/// `python3 (pid 812)`: the name the tracer recorded, else the one the owner scan
/// found; `an unknown process` for pid 0.
pub fn who(s: &Snapshot, r: &FlowRow) -> String {
    match r.key.pid {
        0 => "an unknown process".to_string(),
        pid if !r.comm.is_empty() => format!("{} (pid {pid})", r.comm),
        pid => process_label(s, pid),
    }
}

/// `to 10.0.0.5:8080` or `on :8080`.
pub fn where_to(r: &FlowRow) -> String {
    match r.key.peer {
        FlowPeer::Remote(e) => format!("to {e}"),
        FlowPeer::ListeningPort(p) => format!("on :{p}"),
    }
}

/// `over 1.0s`, the time traced.
pub fn over(f: &NamespaceFlows) -> String {
    format!("over {}", human_duration_ms(f.duration_ms))
}

/// How a flow that closes first is said: `opens 410 connections/s to 10.0.0.5:8080 and
/// closes first` (outgoing), `accepts 300 connections/s on :8080 and closes first`
/// (incoming). "closes 60% of them first" when this host is not the usual closer.
pub fn churn_phrase(f: &NamespaceFlows, r: &FlowRow) -> String {
    let verb = match r.key.direction {
        Direction::Active => "opens",
        Direction::Passive => "accepts",
    };
    let closes = match r.counts.closer() {
        Some(Closer::Local) | None => "closes first".to_string(),
        Some(_) => {
            let known = r.counts.closed_local + r.counts.closed_peer;
            format!(
                "closes {:.0}% of them first",
                r.counts.closed_local as f64 * 100.0 / known.max(1) as f64
            )
        }
    };
    format!(
        "{verb} {} connections/s {} and {closes}",
        rate_text(f.rate(r.counts.opened)),
        where_to(r)
    )
}

/// One flow with its rates, for a finding's `data`.
pub fn flow_json(f: &NamespaceFlows, r: &FlowRow) -> serde_json::Value {
    let (remote, local_port) = match r.key.peer {
        FlowPeer::Remote(e) => (Some(e.to_string()), None),
        FlowPeer::ListeningPort(p) => (None, Some(p)),
    };
    let c = &r.counts;
    json!({
        "pid": r.key.pid,
        "comm": r.comm,
        "direction": r.key.direction,
        "remote": remote,
        "local_port": local_port,
        "opened": c.opened,
        "opened_per_s": round2(f.rate(c.opened)),
        "closed_first_local": c.closed_local,
        "closed_first_peer": c.closed_peer,
        "closed_first_local_per_s": round2(f.rate(c.closed_local)),
        "closer": c.closer(),
        "resets_sent": c.resets_sent,
        "resets_received": c.resets_received,
        "connect_failures": c.connect_failures,
        "lifetime_p50_us": c.lifetimes.quantile_us(0.5),
    })
}

/// `lives ≤4.1ms (p50)`, or "" when no lifetime was measured.
pub fn lifetime_note(r: &FlowRow) -> String {
    match r.counts.lifetimes.quantile_us(0.5) {
        Some(us) if us < 1000 => format!(", lives ≤{us}µs (p50)"),
        Some(us) => format!(", lives ≤{} (p50)", human_duration_ms(us / 1000)),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, FlowCounts, FlowKey};

    #[test]
    fn phrases_name_the_process_the_peer_and_the_rate() {
        let f = NamespaceFlows {
            duration_ms: 2000,
            ..NamespaceFlows::default()
        };
        let mut r = FlowRow {
            key: FlowKey {
                pid: 812,
                netns: 1,
                direction: Direction::Active,
                peer: FlowPeer::Remote(Endpoint::new("10.0.0.5".parse().expect("ip"), 8080)),
            },
            comm: "python3".into(),
            netns_name: String::new(),
            counts: FlowCounts {
                opened: 820,
                closed_local: 818,
                ..FlowCounts::default()
            },
        };
        let s = Snapshot::default();
        assert_eq!(who(&s, &r), "python3 (pid 812)");
        assert_eq!(
            churn_phrase(&f, &r),
            "opens 410 connections/s to 10.0.0.5:8080 and closes first"
        );
        r.counts.closed_peer = 546;
        r.counts.closed_local = 364;
        assert_eq!(
            churn_phrase(&f, &r),
            "opens 410 connections/s to 10.0.0.5:8080 and closes 40% of them first"
        );
        r.key.direction = Direction::Passive;
        r.key.peer = FlowPeer::ListeningPort(80);
        r.key.pid = 0;
        assert_eq!(who(&s, &r), "an unknown process");
        assert!(churn_phrase(&f, &r).starts_with("accepts 410 connections/s on :80"));
        assert_eq!(flow_json(&f, &r)["local_port"], 80);
    }
}
