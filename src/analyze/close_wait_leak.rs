//! Rule `close_wait_leak`: CLOSE_WAIT sockets that are not being closed. The peer
//! closed its side; the holder has not called close(), and nothing in the kernel ends
//! the state. Called a leak only on evidence (see `close_wait_common`): the same
//! sockets still there at `check`'s second look while the holder closed none (or only
//! younger ones), peers silent for `close_wait_age_s`, or, in `watch`, a rising count
//! ([`confirmed_by_trend`]). Slow closers and groups one look cannot judge are
//! `close_wait_slow_close`'s.

use std::cmp::Reverse;

use serde_json::json;

use super::close_wait_common::{
    self as common, groups, judge, Group, Holder, Judgement, Stats, Verdict,
};
use super::close_wait_slow_close;
use super::trend::PidTrend;
use super::util::pct;
use super::Thresholds;
use crate::model::units::{count, human_duration_ms};
use crate::model::{Evidence, Finding, FixStep, Nature, Severity, Snapshot};

pub const ID: &str = "close_wait_leak";

pub fn check(s: &Snapshot, t: &Thresholds) -> Vec<Finding> {
    let mut out: Vec<(u64, Finding)> = groups(s)
        .iter()
        .filter_map(|g| {
            let j = judge(s, t, g);
            (j.verdict == Verdict::Leak).then(|| (j.stuck, finding(s, t, g, &j)))
        })
        .collect();
    out.sort_by_key(|(n, _)| Reverse(*n));
    out.into_iter().map(|(_, f)| f).collect()
}

/// What made the group a leak, strongest first (the `verdict` of the data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proof {
    /// Still there at the second look; the holder closed none of its CLOSE_WAIT.
    StillThere,
    /// Still there, older than every socket the holder closed in between.
    OutlivedClosed,
    /// Peers silent for close_wait_age_s or longer.
    SilentPeers,
}

impl Proof {
    fn of(j: &Judgement) -> Proof {
        match (j.outlived > 0, j.closed) {
            (true, 0) => Proof::StillThere,
            (true, _) => Proof::OutlivedClosed,
            (false, _) => Proof::SilentPeers,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Proof::StillThere => "still_there",
            Proof::OutlivedClosed => "outlived_closed",
            Proof::SilentPeers => "silent_peers",
        }
    }
}

fn finding(s: &Snapshot, t: &Thresholds, g: &Group, j: &Judgement) -> Finding {
    let leaked = j.stuck_group(g);
    let stats = Stats::of(&leaked);
    let proof = Proof::of(j);
    let who = common::who(s, g.holder);
    let soft_limit = match g.holder {
        Holder::Process(pid) => s
            .process(pid)
            .and_then(|p| p.nofile_soft)
            .and_then(|l| l.value()),
        Holder::Unseen(_) => None,
    };
    let severity = if j.stuck >= t.close_wait_critical
        || soft_limit.is_some_and(|l| pct(j.stuck, l) >= 50.0)
    {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let sockets = count(j.stuck, "socket", "sockets");
    let oldest = j
        .oldest_stuck_ms
        .map(|ms| format!(", oldest idle {}", human_duration_ms(ms)))
        .unwrap_or_default();
    let title = match g.holder {
        Holder::Process(_) => format!("{who} leaks CLOSE_WAIT: {sockets}{oldest}"),
        Holder::Unseen(side) => format!(
            "CLOSE_WAIT leak {} (owner not visible): {sockets}{oldest}",
            side.place()
        ),
    };

    let mut evidence = Vec::new();
    let after = j.recheck_ms.map(human_duration_ms).unwrap_or_default();
    match proof {
        Proof::StillThere => evidence.push(Evidence::new(
            format!("still there {after} later"),
            "every one, and none of its CLOSE_WAIT sockets closed in between",
        )),
        Proof::OutlivedClosed => evidence.push(Evidence::new(
            format!("still there {after} later"),
            format!(
                "{}, each older than all {} closed in between (which had waited up to {})",
                j.outlived,
                j.closed,
                j.close_delay_ms()
                    .map_or("?".to_string(), human_duration_ms)
            ),
        )),
        Proof::SilentPeers => {}
    }
    if j.old > 0 {
        evidence.push(Evidence::new(
            "silent peers",
            format!(
                "{} silent for {} or more (close_wait_age_s)",
                j.old,
                human_duration_ms(t.close_wait_age_s.saturating_mul(1000))
            ),
        ));
    }
    evidence.extend(stats.side_evidence());
    evidence.push(stats.recv_q_evidence());
    if let Holder::Unseen(_) = g.holder {
        evidence.push(Evidence::new(
            "owner",
            format!("not visible: {}", common::unseen_reason(s)),
        ));
    }
    evidence.extend(common::limit_evidence(s, g.holder, j.stuck));
    evidence.extend(common::detached_evidence(s, g.holder));
    // Descriptors counted again at check's second reading: how soon the limit comes.
    let pid = match g.holder {
        Holder::Process(pid) => Some(pid),
        _ => None,
    };
    evidence.extend(super::runway::descriptor_evidence(s, pid));
    if j.total > j.stuck {
        evidence.push(Evidence::new(
            "also in CLOSE_WAIT",
            format!(
                "{} more, closed in time or too young to judge",
                j.total - j.stuck
            ),
        ));
    }

    let pattern = stats.pattern;
    let lead = match proof {
        Proof::StillThere => format!(
            "The peers closed these connections and {who} has not called close() on them: {after} later every one was still in CLOSE_WAIT, and it closed none of its CLOSE_WAIT sockets in between, so they are not merely late."
        ),
        Proof::OutlivedClosed => format!(
            "These are not merely late: {who} closes some connections, but these were still in CLOSE_WAIT {after} later, older than every socket it closed in between."
        ),
        Proof::SilentPeers => format!(
            "The peers of these connections have been silent for {} or longer, more than any slow close explains, and {who} has not called close() on them.",
            human_duration_ms(t.close_wait_age_s.saturating_mul(1000))
        ),
    };
    let why = format!("{lead} {}", common::leak_body(pattern));
    let mut fix = common::listing_steps(s, g.holder);
    let provenance = pid.map(|pid| provenance_of(s, pid, &leaked, j.stuck));
    match &provenance {
        Some(Provenance::Groups { groups, .. }) => {
            evidence.extend(groups.iter().take(3).map(|g| {
                Evidence::new(
                    "opened",
                    format!(
                        "{} of {}, {}{}, {}{}",
                        g.count,
                        g.of,
                        g.site_text(),
                        g.threads
                            .first()
                            .map(|t| format!(" by threads {t}"))
                            .unwrap_or_default(),
                        g.via.call(),
                        g.peers_text()
                    ),
                )
            }));
        }
        Some(Provenance::Predates {
            since_unix_ms,
            recorder,
        }) => evidence.push(Evidence::new(
            "opened",
            format!(
                "before {recorder} began recording ({} ago): no origin recorded",
                human_duration_ms(s.taken_at_unix_ms.saturating_sub(*since_unix_ms))
            ),
        )),
        Some(Provenance::NotRecorded) => {
            if let Some(pid) = pid {
                fix.push(FixStep::run(
                    "Find where in its code these sockets are opened: record who opens sockets for a few minutes (new leaks are attributed to their call site), or keep `tcpdoctor serve` running and check again",
                    format!("tcpdoctor trace --leaks --pid {pid} --duration 300"),
                ));
            }
        }
        None => {}
    }
    fix.extend(pattern.fix());
    if let (Holder::Process(pid), common::Pattern::Unserved) = (g.holder, pattern) {
        fix.push(common::stack_dump_step(s, pid));
    }
    fix.extend(stats.kill_steps());

    // About the leaked sockets; `count` and the second look are the whole group's.
    let mut data = common::group_json(s, g, j, &stats);
    data["verdict"] = json!(proof.name());
    data["descriptor_runway"] = super::runway::descriptor_json(s, pid);
    data["leaked"] = json!(j.stuck);
    data["oldest_idle_ms"] = json!(j.oldest_stuck_ms);
    data["eof_unread"] = json!(leaked.sockets.iter().filter(|(c, _)| c.recv_q > 0).count());
    data["eof_read_not_closed"] =
        json!(leaked.sockets.iter().filter(|(c, _)| c.recv_q == 0).count());
    data["provenance"] = match &provenance {
        Some(Provenance::Groups {
            groups,
            attributed,
            since_unix_ms,
            recorder,
        }) => json!({
            "recorder": recorder,
            "recording_since_unix_ms": since_unix_ms,
            "attributed": attributed,
            "groups": groups,
        }),
        Some(Provenance::Predates {
            since_unix_ms,
            recorder,
        }) => json!({
            "recorder": recorder,
            "recording_since_unix_ms": since_unix_ms,
            "attributed": 0,
            "groups": [],
        }),
        _ => serde_json::Value::Null,
    };

    let mut f = Finding::new(ID, severity, Nature::Live, title);
    f.evidence = evidence;
    f.why = why;
    f.fix = fix;
    f.data = data;
    f
}

/// What the snapshot says about where a process's leaked sockets were opened.
enum Provenance {
    /// Grouped by call site (stacks in data).
    Groups {
        groups: Vec<crate::model::provenance::CallSiteGroup>,
        attributed: u64,
        since_unix_ms: u64,
        recorder: String,
    },
    /// A recorder runs, but these sockets were opened before it began.
    Predates {
        since_unix_ms: u64,
        recorder: String,
    },
    /// No recorder was running.
    NotRecorded,
}

fn provenance_of(s: &Snapshot, pid: u32, leaked: &Group, stuck: u64) -> Provenance {
    let Some(p) = &s.provenance else {
        return Provenance::NotRecorded;
    };
    let mut origins: Vec<&crate::model::provenance::Origin> = leaked
        .sockets
        .iter()
        .filter_map(|(c, _)| p.origins.get(&c.cookie?))
        .filter(|o| o.pid == pid)
        .collect();
    let detached: Vec<_> = p.detached.values().filter(|o| o.pid == pid).collect();
    let of = stuck + detached.len() as u64;
    origins.extend(detached);
    if origins.is_empty() {
        return Provenance::Predates {
            since_unix_ms: p.recording_since_unix_ms,
            recorder: p.recorder.clone(),
        };
    }
    Provenance::Groups {
        attributed: origins.len() as u64,
        groups: crate::model::provenance::group(pid, of, &origins, p),
        since_unix_ms: p.recording_since_unix_ms,
        recorder: p.recorder.clone(),
    }
}

/// Turns the `close_wait_slow_close` finding of a process that one look could not
/// judge (`verdict` `not_rechecked`) into a leak when its trend in `watch` is a
/// confirmed leak: a count that keeps rising is the evidence one snapshot lacks.
/// Returns whether `f` changed.
pub fn confirmed_by_trend(f: &mut Finding, t: &PidTrend) -> bool {
    if f.rule_id != close_wait_slow_close::ID
        || f.data["verdict"] != close_wait_slow_close::NOT_RECHECKED
        || f.data["pid"].as_u64() != Some(u64::from(t.pid))
        || !t.confirmed_leak
    {
        return false;
    }
    let who = match f.data["comm"].as_str() {
        Some(c) if !c.is_empty() => format!("{c} (pid {})", t.pid),
        _ => format!("pid {}", t.pid),
    };
    f.rule_id = ID;
    f.severity = f.severity.max(Severity::Warning);
    f.title = format!(
        "{who} leaks CLOSE_WAIT: {}, +{:.0}/min",
        count(t.current, "socket", "sockets"),
        t.growth_per_min
    );
    f.evidence
        .retain(|e| e.label != close_wait_slow_close::LOOKED_ONCE);
    f.evidence.insert(
        0,
        Evidence::new(
            "rising",
            format!(
                "{} to {} over the last {}: up in {} of {} steps, down in {}",
                t.first,
                t.current,
                count(t.samples as u64, "sample", "samples"),
                t.rises,
                t.samples.saturating_sub(1),
                t.falls
            ),
        ),
    );
    let body = f
        .why
        .strip_prefix(close_wait_slow_close::NOT_RECHECKED_LEAD)
        .unwrap_or(&f.why)
        .trim_start()
        .to_string();
    f.why = format!(
        "The peers keep closing connections and {who} does not close them: its CLOSE_WAIT count keeps rising. {body}"
    );
    f.fix.retain(|step| {
        !step
            .command
            .as_deref()
            .is_some_and(|c| c.contains("tcpdoctor check"))
    });
    f.data["verdict"] = json!("rising_trend");
    f.data["trend"] = json!(t);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::close_wait_common::tests::{cw, snapshot};
    use crate::model::{CloseWaitSocket, Notice, NoticeCode};

    fn rechecked(c: CloseWaitSocket, still_there: bool) -> CloseWaitSocket {
        CloseWaitSocket {
            still_there: Some(still_there),
            ..c
        }
    }

    fn commands(f: &Finding) -> Vec<&str> {
        f.fix.iter().filter_map(|s| s.command.as_deref()).collect()
    }

    /// 20 sockets on the served port 8080 from 20 clients, 3 s old.
    fn served(still_there: Option<bool>) -> Vec<CloseWaitSocket> {
        (0..20u16)
            .map(|i| CloseWaitSocket {
                still_there,
                ..cw(
                    Some(42),
                    "10.0.0.1:8080",
                    &format!("10.0.1.{i}:{}", 40_000 + i),
                    1,
                    3_000 + u32::from(i),
                )
            })
            .collect()
    }

    #[test]
    fn a_young_leak_still_there_at_the_second_look_is_a_leak() {
        let mut s = snapshot(served(Some(true)));
        s.close_wait_recheck_ms = Some(1000);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        let f = &f[0];
        assert_eq!(f.rule_id, ID);
        assert_eq!(f.severity, Severity::Warning);
        assert_eq!(
            f.title,
            "java (pid 42) leaks CLOSE_WAIT: 20 sockets, oldest idle 3.0s"
        );
        assert_eq!(f.evidence[0].label, "still there 1.0s later");
        assert_eq!(
            f.evidence[0].value,
            "every one, and none of its CLOSE_WAIT sockets closed in between"
        );
        // Grouped by the served port, with its clients.
        assert_eq!(f.evidence[1].label, "served port 8080");
        assert_eq!(f.evidence[1].value, "20 sockets from 20 peer addresses");
        assert_eq!(f.data["verdict"], "still_there");
        assert_eq!(
            (f.data["count"].clone(), f.data["leaked"].clone()),
            (json!(20), json!(20))
        );
        assert_eq!(f.data["served_ports"][0]["port"], 8080);
        assert_eq!(f.data["served_ports"][0]["count"], 20);
        assert_eq!(f.data["destinations"], json!([]));
        assert_eq!(f.data["still_there"], 20);
        assert_eq!(f.data["closed_meanwhile"], 0);
        assert!(commands(f).contains(&"ss -K state close-wait sport = :8080"));
        assert!(commands(f).contains(&"tcpdoctor sockets --state close-wait --pid 42 -i"));
        // Every command is in a command, none in the prose.
        assert!(f
            .fix
            .iter()
            .all(|s| !crate::analyze::pointing::prose_has_command(&s.text)));
    }

    /// The recorder's data for the 20 served sockets (cookies 1..=20): 15 opened by
    /// accept() in one function, 5 before recording began.
    fn with_provenance(s: &mut Snapshot) {
        use crate::model::provenance::{Frame, FrameKind, OpenedBy, Origin, Provenance, Stack};
        for (i, c) in s.sockets.close_wait.iter_mut().enumerate() {
            c.cookie = Some(i as u64 + 1);
        }
        let site = Frame {
            addr: 0x4000,
            kind: FrameKind::Native,
            symbol: Some("handle_client".into()),
            file: Some("server.c".into()),
            line: Some(88),
            module: Some("/usr/bin/server".into()),
        };
        let mut p = Provenance {
            recording_since_unix_ms: 1_000,
            recorder: "tcpdoctor serve (pid 7)".into(),
            ..Provenance::default()
        };
        p.stacks.insert(
            3,
            Stack {
                id: 3,
                frames: vec![site.clone()],
                call_site: Some(site),
                hint: None,
            },
        );
        for cookie in 1..=15u64 {
            p.origins.insert(
                cookie,
                Origin {
                    cookie,
                    pid: 42,
                    tid: 50 + cookie as u32,
                    thread: format!("worker-{cookie}"),
                    at_unix_ms: 2_000 + cookie,
                    via: OpenedBy::Accept,
                    stack_id: Some(3),
                    remote: format!("10.0.1.{cookie}:4000"),
                    netns: 0,
                    inode: 100,
                },
            );
        }
        s.provenance = Some(p);
    }

    #[test]
    fn a_leak_names_where_its_sockets_were_opened_when_a_recorder_ran() {
        let mut s = snapshot(served(Some(true)));
        s.close_wait_recheck_ms = Some(1000);
        with_provenance(&mut s);
        let f = &check(&s, &Thresholds::default())[0];
        let opened: Vec<&str> = f
            .evidence
            .iter()
            .filter(|e| e.label == "opened")
            .map(|e| e.value.as_str())
            .collect();
        assert_eq!(
            opened,
            ["15 of 20, at handle_client (server.c:88) by threads worker-*, accept() from 10.0.1.10:4000 and 14 other peers"]
        );
        let p = &f.data["provenance"];
        assert_eq!(p["attributed"], 15);
        assert_eq!(p["recorder"], "tcpdoctor serve (pid 7)");
        assert_eq!(p["groups"][0]["count"], 15);
        assert_eq!(p["groups"][0]["of"], 20);
        assert_eq!(p["groups"][0]["frames"][0]["symbol"], "handle_client");
        // With provenance there is nothing to record: no trace --leaks step.
        assert!(!commands(f).iter().any(|c| c.contains("--leaks")));
    }

    #[test]
    fn without_a_recorder_the_fix_says_how_to_find_the_code() {
        let mut s = snapshot(served(Some(true)));
        s.close_wait_recheck_ms = Some(1000);
        let f = &check(&s, &Thresholds::default())[0];
        assert!(f.evidence.iter().all(|e| e.label != "opened"));
        assert!(f.data["provenance"].is_null());
        assert!(
            commands(f).contains(&"tcpdoctor trace --leaks --pid 42 --duration 300"),
            "{:?}",
            commands(f)
        );
        // A recorder that began after these sockets were opened: said, no groups.
        let mut s2 = s.clone();
        with_provenance(&mut s2);
        if let Some(p) = &mut s2.provenance {
            p.origins.clear();
        }
        s2.taken_at_unix_ms = 61_000;
        let f = &check(&s2, &Thresholds::default())[0];
        let e = f
            .evidence
            .iter()
            .find(|e| e.label == "opened")
            .expect("opened");
        assert_eq!(
            e.value,
            "before tcpdoctor serve (pid 7) began recording (1m00s ago): no origin recorded"
        );
        assert_eq!(f.data["provenance"]["attributed"], 0);
    }

    #[test]
    fn a_slow_closer_is_not_a_leak() {
        // 15 of 20 closed between the two looks: it closes them.
        let mut v = served(None);
        for (i, c) in v.iter_mut().enumerate() {
            c.still_there = Some(i >= 15);
            c.idle_ms = Some(if i >= 15 { 100 } else { 400 + i as u32 });
        }
        let mut s = snapshot(v);
        s.close_wait_recheck_ms = Some(1000);
        assert!(check(&s, &Thresholds::default()).is_empty());
    }

    #[test]
    fn sockets_older_than_every_closed_one_are_a_leak_beside_the_closed() {
        let mut v: Vec<_> = served(Some(false))
            .into_iter()
            .map(|c| CloseWaitSocket {
                idle_ms: Some(200),
                ..c
            })
            .collect();
        v.extend((0..12u16).map(|i| {
            rechecked(
                cw(
                    Some(42),
                    "10.0.0.1:8080",
                    &format!("10.0.2.{i}:50000"),
                    0,
                    90_000,
                ),
                true,
            )
        }));
        let mut s = snapshot(v);
        s.close_wait_recheck_ms = Some(1000);
        let f = &check(&s, &Thresholds::default())[0];
        assert_eq!(f.data["verdict"], "outlived_closed");
        assert_eq!(f.data["leaked"], 12);
        assert_eq!(f.data["count"], 32);
        assert_eq!(f.data["eof_read_not_closed"], 12);
        assert_eq!(f.data["pattern"], "eof_read");
        assert!(
            f.title.contains(": 12 sockets, oldest idle 1m30s"),
            "{}",
            f.title
        );
        assert_eq!(
            f.evidence[0].value,
            "12, each older than all 20 closed in between (which had waited up to 200ms)"
        );
        assert!(f
            .evidence
            .iter()
            .any(|e| e.label == "also in CLOSE_WAIT" && e.value.starts_with("20 more")));
    }

    #[test]
    fn without_a_second_look_old_sockets_leak_and_young_ones_do_not() {
        let old = snapshot(vec![cw(
            Some(42),
            "10.0.0.1:8080",
            "10.0.0.9:40000",
            1,
            600_000,
        )]);
        let f = check(&old, &Thresholds::default());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].data["verdict"], "silent_peers");
        assert_eq!(
            f[0].title,
            "java (pid 42) leaks CLOSE_WAIT: 1 socket, oldest idle 10m00s"
        );
        assert_eq!(f[0].evidence[0].label, "silent peers");
        // Young, many, one look: not a leak (close_wait_slow_close says it cannot tell).
        assert!(check(&snapshot(served(None)), &Thresholds::default()).is_empty());
        // A few young ones: nothing.
        let few = snapshot(served(None).into_iter().take(3).collect());
        assert!(check(&few, &Thresholds::default()).is_empty());
    }

    #[test]
    fn half_the_descriptor_limit_is_critical() {
        let mut s = snapshot(
            (0..600u16)
                .map(|i| {
                    rechecked(
                        cw(
                            Some(42),
                            "10.0.0.1:8080",
                            &format!("10.0.3.{}:{}", i % 250, 30_000 + i),
                            0,
                            1_000,
                        ),
                        true,
                    )
                })
                .collect(),
        );
        s.close_wait_recheck_ms = Some(1000);
        assert_eq!(
            check(&s, &Thresholds::default())[0].severity,
            Severity::Critical
        );
    }

    #[test]
    fn a_client_side_leak_is_grouped_by_its_destination() {
        // 20 ephemeral local ports towards one server: one group, not 20 ports of one.
        let mut s = snapshot(
            (0..20u16)
                .map(|i| {
                    rechecked(
                        cw(
                            Some(42),
                            &format!("127.0.0.1:{}", 41_000 + i),
                            "127.0.0.1:5000",
                            1,
                            2_000,
                        ),
                        true,
                    )
                })
                .collect(),
        );
        s.close_wait_recheck_ms = Some(500);
        let f = &check(&s, &Thresholds::default())[0];
        assert_eq!(f.evidence[1].label, "to 127.0.0.1:5000");
        assert_eq!(f.evidence[1].value, "20 sockets");
        assert_eq!(
            f.data["destinations"],
            json!([{"address": "127.0.0.1", "port": 5000, "count": 20}])
        );
        assert_eq!(f.data["served_ports"], json!([]));
        assert_eq!(f.data["pattern"], "idle_pooled");
        assert!(
            f.why.contains("idle pooled connections the server closed"),
            "{}",
            f.why
        );
        assert_eq!(
            commands(f).last().copied(),
            Some("ss -K state close-wait dst 127.0.0.1 dport = :5000")
        );
    }

    #[test]
    fn unseen_owners_are_grouped_by_port_and_destination_and_say_why() {
        let mut v: Vec<_> = (0..12u16)
            .map(|i| {
                rechecked(
                    cw(
                        None,
                        "10.0.0.1:8080",
                        &format!("10.0.1.{i}:40000"),
                        1,
                        2_000,
                    ),
                    true,
                )
            })
            .collect();
        v.extend((0..11u16).map(|i| {
            rechecked(
                cw(
                    None,
                    &format!("10.0.0.1:{}", 42_000 + i),
                    "10.0.0.7:5432",
                    1,
                    2_000,
                ),
                true,
            )
        }));
        let mut s = snapshot(v);
        s.close_wait_recheck_ms = Some(1000);
        s.missing.push(Notice::new(
            NoticeCode::OwnersPartial,
            "run as root to see the owners of 23 sockets (40 of 41 processes could not be read as uid 1000)",
        ));
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 2, "{f:#?}");
        assert_eq!(
            f[0].title,
            "CLOSE_WAIT leak on port 8080 (owner not visible): 12 sockets, oldest idle 2.0s"
        );
        assert_eq!(
            f[1].title,
            "CLOSE_WAIT leak towards 10.0.0.7:5432 (owner not visible): 11 sockets, oldest idle 2.0s"
        );
        assert_eq!(f[0].data["pid"], serde_json::Value::Null);
        assert_eq!(f[0].data["owner_visible"], false);
        let owner = f[0]
            .evidence
            .iter()
            .find(|e| e.label == "owner")
            .expect("owner line");
        assert!(
            owner.value.starts_with("not visible: run as root"),
            "{}",
            owner.value
        );
        assert!(commands(&f[0]).contains(&"ss -tanp state close-wait sport = :8080"));
        assert!(commands(&f[0]).contains(&"tcpdoctor sockets --state close-wait --local :8080 -i"));
        assert!(commands(&f[1]).contains(&"ss -tanp state close-wait dst 10.0.0.7 dport = :5432"));
        assert!(commands(&f[1])
            .contains(&"tcpdoctor sockets --state close-wait --peer 10.0.0.7:5432 -i"));
        assert!(f.iter().all(|f| !f.title.contains("could not see")));
    }

    #[test]
    fn recv_q_above_one_on_a_served_port_is_a_starved_worker_pool() {
        let mut s = snapshot(
            (0..12u16)
                .map(|i| {
                    rechecked(
                        cw(
                            Some(42),
                            "10.0.0.1:8080",
                            &format!("10.0.1.{i}:40000"),
                            180,
                            5_000,
                        ),
                        true,
                    )
                })
                .collect(),
        );
        s.close_wait_recheck_ms = Some(1000);
        let f = &check(&s, &Thresholds::default())[0];
        assert_eq!(f.data["pattern"], "unserved_request");
        assert!(f.why.contains("starved worker pool"), "{}", f.why);
        assert!(!f.why.contains("abandoned after an error"));
        assert!(commands(f).contains(&"jstack 42"), "{:?}", commands(f));
        assert_eq!(
            f.data["recv_q"],
            json!({"unread_data": 12, "fin_only": 0, "eof_read": 0})
        );
    }

    #[test]
    fn detached_descriptors_of_the_same_process_are_in_the_evidence() {
        let mut s = snapshot(served(Some(true)));
        s.close_wait_recheck_ms = Some(1000);
        if let Some(p) = s.processes.get_mut(&42) {
            p.detached_tcp_fds = Some(7);
        }
        let f = &check(&s, &Thresholds::default())[0];
        let d = f
            .evidence
            .iter()
            .find(|e| e.label == "descriptors of closed sockets")
            .expect("detached line");
        assert!(d.value.starts_with("7 descriptors more"), "{}", d.value);
        assert_eq!(f.data["detached_tcp_fds"], 7);
    }

    #[test]
    fn unaccepted_sockets_are_not_this_rule() {
        let mut v = served(Some(true));
        for c in &mut v {
            c.inode = 0;
            c.owner = None;
        }
        let mut s = snapshot(v);
        s.close_wait_recheck_ms = Some(1000);
        assert!(check(&s, &Thresholds::default()).is_empty());
    }

    #[test]
    fn a_rising_trend_makes_a_young_pile_a_leak() {
        let s = snapshot(served(None));
        let mut f = close_wait_slow_close::check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        let mut trend = PidTrend {
            pid: 42,
            current: 20,
            first: 8,
            samples: 6,
            rises: 5,
            falls: 0,
            growth_per_min: 144.0,
            confirmed_leak: false,
        };
        assert!(!confirmed_by_trend(&mut f[0], &trend), "not confirmed");
        trend.confirmed_leak = true;
        assert!(confirmed_by_trend(&mut f[0], &trend));
        let f = &f[0];
        assert_eq!(f.rule_id, ID);
        assert_eq!(
            f.title,
            "java (pid 42) leaks CLOSE_WAIT: 20 sockets, +144/min"
        );
        assert_eq!(f.evidence[0].label, "rising");
        assert_eq!(
            f.evidence[0].value,
            "8 to 20 over the last 6 samples: up in 5 of 5 steps, down in 0"
        );
        assert!(
            f.why.starts_with(
                "The peers keep closing connections and java (pid 42) does not close them"
            ),
            "{}",
            f.why
        );
        assert!(!f.why.contains("cannot tell"), "{}", f.why);
        assert!(commands(f).iter().all(|c| !c.contains("tcpdoctor check")));
        assert_eq!(f.data["verdict"], "rising_trend");
        // Another process's trend changes nothing.
        let mut other = close_wait_slow_close::check(&s, &Thresholds::default());
        trend.pid = 7;
        assert!(!confirmed_by_trend(&mut other[0], &trend));
    }
}
