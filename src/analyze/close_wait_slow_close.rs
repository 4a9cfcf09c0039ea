//! Rule `close_wait_slow_close`: a holder with `close_wait_warn` or more CLOSE_WAIT
//! sockets and no evidence that it leaks them (see `close_wait_common`). Two cases:
//! - `slow_close`: `check`'s second look found some of them closed, so the holder does
//!   close its connections, late; reported with the delay seen;
//! - `not_rechecked`: one look (`watch`, `serve`, a replay) at young sockets cannot tell
//!   a slow closer from a young leak; `watch` turns it into a `close_wait_leak` when the
//!   count keeps rising ([`super::close_wait_leak::confirmed_by_trend`]).
//!
//! At most a warning: nothing is left behind.

use std::cmp::Reverse;

use serde_json::json;

use super::close_wait_common::{
    self as common, groups, judge, Group, Holder, Judgement, Stats, Verdict,
};
use super::Thresholds;
use crate::model::units::{count, human_duration_ms};
use crate::model::{Evidence, Finding, FixStep, Nature, Severity, Snapshot};

pub const ID: &str = "close_wait_slow_close";

/// The `verdict` of a finding one look could not judge.
pub const NOT_RECHECKED: &str = "not_rechecked";

/// The first sentence of such a finding's why (replaced when a trend decides).
pub const NOT_RECHECKED_LEAD: &str = "One look cannot tell a slow closer from a young leak: these sockets are younger than close_wait_age_s and were not looked at twice, some time apart (tcpdoctor check looks again after --interval; watch calls a process LEAK when its count keeps rising).";

/// The evidence label that says so (removed when a trend decides).
pub const LOOKED_ONCE: &str = "looked at";

pub fn check(s: &Snapshot, t: &Thresholds) -> Vec<Finding> {
    let mut out: Vec<(u64, Finding)> = groups(s)
        .iter()
        .filter_map(|g| {
            let j = judge(s, t, g);
            let f = match j.verdict {
                Verdict::SlowClose => slow(s, g, &j),
                Verdict::NotRechecked => not_rechecked(s, t, g, &j),
                Verdict::Leak | Verdict::Quiet => return None,
            };
            Some((j.total, f))
        })
        .collect();
    out.sort_by_key(|(n, _)| Reverse(*n));
    out.into_iter().map(|(_, f)| f).collect()
}

/// Lines every case shows after its own: the groups, Recv-Q, the owner, descriptors.
fn common_evidence(s: &Snapshot, g: &Group, stats: &Stats, total: u64) -> Vec<Evidence> {
    let mut evidence = stats.side_evidence();
    evidence.push(stats.recv_q_evidence());
    if let Holder::Unseen(_) = g.holder {
        evidence.push(Evidence::new(
            "owner",
            format!("not visible: {}", common::unseen_reason(s)),
        ));
    }
    evidence.extend(common::limit_evidence(s, g.holder, total));
    evidence.extend(common::detached_evidence(s, g.holder));
    evidence
}

fn slow(s: &Snapshot, g: &Group, j: &Judgement) -> Finding {
    let stats = Stats::of(g);
    let who = common::who(s, g.holder);
    let sockets = count(j.total, "socket", "sockets");
    let after = j.recheck_ms.map(human_duration_ms).unwrap_or_default();
    let delay = j.close_delay_ms();
    let title = match (g.holder, delay) {
        (Holder::Process(_), Some(d)) => format!(
            "{who} is slow to close: closes about {} after the peer, {sockets} in CLOSE_WAIT",
            human_duration_ms(d)
        ),
        (Holder::Process(_), None) => format!(
            "{who} is slow to close: {sockets} in CLOSE_WAIT, some closed within {after}"
        ),
        (Holder::Unseen(side), Some(d)) => format!(
            "Slow to close {} (owner not visible): about {} after the peer, {sockets} in CLOSE_WAIT",
            side.place(),
            human_duration_ms(d)
        ),
        (Holder::Unseen(side), None) => format!(
            "Slow to close {} (owner not visible): {sockets} in CLOSE_WAIT, some closed within {after}",
            side.place()
        ),
    };
    let mut evidence = vec![Evidence::new(
        format!("second look {after} later"),
        format!("{} of them closed, {} still open", j.closed, j.kept),
    )];
    if let (Some(lo), Some(med), Some(hi)) = (
        j.closed_idle_ms.first(),
        j.median_closed_ms(),
        j.close_delay_ms(),
    ) {
        evidence.push(Evidence::new(
            "the closed ones had waited",
            format!(
                "{} to {} since the peer's FIN (median {})",
                human_duration_ms(*lo),
                human_duration_ms(hi),
                human_duration_ms(med)
            ),
        ));
    }
    if j.stuck > 0 {
        evidence.push(Evidence::new(
            "older than any it closed",
            format!("{} still open: a leak if they stay", j.stuck),
        ));
    }
    evidence.extend(common_evidence(s, g, &stats, j.total));

    let waited = delay
        .map(|d| format!(", after waiting up to about {}", human_duration_ms(d)))
        .unwrap_or_default();
    let closed = if j.closed == j.total {
        format!("all {sockets} in CLOSE_WAIT at the first look were closed")
    } else {
        format!(
            "of the {sockets} in CLOSE_WAIT at the first look, {} were closed",
            j.closed
        )
    };
    let why = format!(
        "These connections are closed by {who}, only late: {closed} by the second look {after} later{waited}. While it waits, each connection keeps a descriptor and its buffers, so a steady stream of peer closes keeps about (closes per second times the delay) sockets in CLOSE_WAIT. Nothing is left behind, so this is not a leak unless the delay keeps growing. What makes close() late: blocking work between the peer's EOF and close() (a backend call, logging, a flush to a slow disk), an event loop or worker pool too busy to get to the closed connection, or a deliberate wait before closing (a drain, linger or grace period in the code)."
    );
    let mut fix = common::listing_steps(s, g.holder);
    fix.push(FixStep::say(
        "Close as soon as a read returns 0 or the request fails: move logging, metrics and backend calls after close(), or off the connection's thread.",
    ));
    if let Holder::Process(pid) = g.holder {
        fix.push(common::stack_dump_step(s, pid));
    }
    fix.push(FixStep::say(
        "If the wait is deliberate (a drain, linger or grace period), shorten it: a peer that closed has nothing more to send.",
    ));
    fix.push(FixStep::run(
        "Look again over a longer interval: sockets still there, or a delay that keeps growing, mean a leak",
        "tcpdoctor check --interval 10",
    ));

    let mut data = common::group_json(s, g, j, &stats);
    data["verdict"] = json!("slow_close");
    data["close_delay_ms"] = json!(delay);
    data["closed_idle_ms"] = match (j.closed_idle_ms.first(), j.median_closed_ms(), delay) {
        (Some(lo), Some(med), Some(hi)) => json!({"min": lo, "median": med, "max": hi}),
        _ => serde_json::Value::Null,
    };
    data["outlived_closed"] = json!(j.stuck);

    let mut f = Finding::new(ID, Severity::Warning, Nature::Live, title);
    f.evidence = evidence;
    f.why = why;
    f.fix = fix;
    f.data = data;
    f
}

fn not_rechecked(s: &Snapshot, t: &Thresholds, g: &Group, j: &Judgement) -> Finding {
    let stats = Stats::of(g);
    let who = common::who(s, g.holder);
    let sockets = count(j.total, "CLOSE_WAIT socket", "CLOSE_WAIT sockets");
    let oldest = j
        .oldest_ms
        .map(|ms| format!(", oldest idle {}", human_duration_ms(ms)))
        .unwrap_or_default();
    let title = match g.holder {
        Holder::Process(_) => format!("{who} has {sockets} not closed yet{oldest}"),
        Holder::Unseen(side) => format!(
            "{sockets} not closed yet {} (owner not visible){oldest}",
            side.place()
        ),
    };
    let looks = match s.close_wait_recheck_ms {
        Some(ms) => format!(
            "twice, only {} apart (raise --interval)",
            human_duration_ms(ms)
        ),
        None => "once (watch, serve, a replay, or a failed second look)".to_string(),
    };
    let mut evidence = vec![Evidence::new(
        LOOKED_ONCE,
        format!(
            "{looks}; none idle for {} (close_wait_age_s)",
            human_duration_ms(t.close_wait_age_s.saturating_mul(1000))
        ),
    )];
    evidence.extend(common_evidence(s, g, &stats, j.total));
    let pattern = stats.pattern;
    let why = format!("{NOT_RECHECKED_LEAD} {}", common::leak_body(pattern));
    let mut fix = vec![FixStep::run(
        "Tell a leak from a slow closer: check looks twice, 5 s apart",
        "tcpdoctor check --interval 5",
    )];
    fix.extend(common::listing_steps(s, g.holder));
    fix.extend(pattern.fix());
    let mut data = common::group_json(s, g, j, &stats);
    data["verdict"] = json!(NOT_RECHECKED);

    let mut f = Finding::new(ID, Severity::Warning, Nature::Live, title);
    f.evidence = evidence;
    f.why = why;
    f.fix = fix;
    f.data = data;
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::close_wait_common::tests::{cw, snapshot};
    use crate::model::CloseWaitSocket;

    /// `n` sockets on the served port 8080, the first `closed` of them closed between
    /// the two looks after waiting 100, 200, ... ms; the rest 10 ms old and still there.
    fn churn(n: u16, closed: u16) -> Snapshot {
        let v: Vec<CloseWaitSocket> = (0..n)
            .map(|i| CloseWaitSocket {
                still_there: Some(i >= closed),
                idle_ms: Some(if i < closed {
                    100 * (u32::from(i) + 1)
                } else {
                    10
                }),
                ..cw(
                    Some(42),
                    "10.0.0.1:8080",
                    &format!("10.0.1.{i}:40000"),
                    0,
                    0,
                )
            })
            .collect();
        let mut s = snapshot(v);
        s.close_wait_recheck_ms = Some(1000);
        s
    }

    #[test]
    fn a_slow_closer_is_reported_with_the_delay_seen() {
        let s = churn(20, 5);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        let f = &f[0];
        assert_eq!(f.rule_id, ID);
        assert_eq!(f.severity, Severity::Warning);
        assert_eq!(
            f.title,
            "java (pid 42) is slow to close: closes about 500ms after the peer, 20 sockets in CLOSE_WAIT"
        );
        assert_eq!(f.evidence[0].label, "second look 1.0s later");
        assert_eq!(f.evidence[0].value, "5 of them closed, 15 still open");
        assert_eq!(
            f.evidence[1].value,
            "100ms to 500ms since the peer's FIN (median 300ms)"
        );
        assert_eq!(f.data["verdict"], "slow_close");
        assert_eq!(f.data["close_delay_ms"], 500);
        assert_eq!(f.data["closed_meanwhile"], 5);
        assert_eq!(f.data["still_there"], 15);
        assert!(!f.title.contains("leak") && !f.why.contains("never called close()"));
        assert!(f.why.contains("busy"), "{}", f.why);
        assert!(f
            .fix
            .iter()
            .all(|s| !crate::analyze::pointing::prose_has_command(&s.text)));
        assert!(f
            .fix
            .iter()
            .any(|s| s.mentions("tcpdoctor check --interval 10")));
        // Nor is it a leak.
        assert!(crate::analyze::close_wait_leak::check(&s, &Thresholds::default()).is_empty());
    }

    #[test]
    fn a_few_slow_closes_and_leaks_are_not_this_rule() {
        assert!(check(&churn(5, 2), &Thresholds::default()).is_empty());
        // All still there: a leak, not a slow closer.
        assert!(check(&churn(20, 0), &Thresholds::default()).is_empty());
    }

    #[test]
    fn one_look_at_many_young_sockets_says_it_cannot_tell() {
        let v: Vec<CloseWaitSocket> = (0..12u16)
            .map(|i| {
                cw(
                    Some(42),
                    &format!("10.0.0.1:{}", 41_000 + i),
                    "10.0.0.7:5432",
                    1,
                    4_000,
                )
            })
            .collect();
        let s = snapshot(v);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        let f = &f[0];
        assert_eq!(
            f.title,
            "java (pid 42) has 12 CLOSE_WAIT sockets not closed yet, oldest idle 4.0s"
        );
        assert_eq!(f.data["verdict"], NOT_RECHECKED);
        assert_eq!(f.data["still_there"], serde_json::Value::Null);
        assert!(f.why.starts_with(NOT_RECHECKED_LEAD));
        assert_eq!(f.evidence[1].label, "to 10.0.0.7:5432");
        assert_eq!(
            f.fix[0].command.as_deref(),
            Some("tcpdoctor check --interval 5")
        );
    }
}
