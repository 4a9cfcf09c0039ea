//! Rule `listen_overflow`: full accept queues. Reads `TcpExt.ListenOverflows` and
//! `TcpExt.ListenDrops` (sampled twice) and each listener's accept queue against its
//! backlog. Pure: reads the snapshot only.
//!
//! Critical: overflows during the sample, or a listener whose queue is full. Warning:
//! other listener drops during the sample, or a queue above `accept_queue_warn_pct`.
//! Info: overflows or drops happened since boot but not now (bursts do this).

use serde_json::json;

use super::util::{counter, counter_interval_ms, holders_label, CounterReading};
use super::Thresholds;
use crate::model::kernel::defaults;
use crate::model::units;
use crate::model::{
    Evidence, Finding, FixStep, ListenerSocket, Nature, Severity, Snapshot, SysctlChange,
};

pub const ID: &str = "listen_overflow";

/// Listeners shown in the evidence.
const TOP: usize = 5;

/// A listener whose queue is worth a line.
struct Backed<'a> {
    listener: &'a ListenerSocket,
    used_pct: f64,
    full: bool,
}

pub fn check(s: &Snapshot, t: &Thresholds) -> Vec<Finding> {
    let overflows = counter(s, "TcpExt.ListenOverflows");
    let drops = counter(s, "TcpExt.ListenDrops");
    let interval_ms = counter_interval_ms(s);

    let backed = backed_listeners(s, t);
    let any_full = backed.iter().any(|b| b.full);

    let severity = if any_full || overflows.rising() {
        Severity::Critical
    } else if drops.rising() || !backed.is_empty() {
        Severity::Warning
    } else if overflows.ever() || drops.ever() {
        Severity::Info
    } else {
        return Vec::new();
    };

    let somaxconn = s.sysctl_i64("net.core.somaxconn");
    let abort_on_overflow = s.sysctl_i64("net.ipv4.tcp_abort_on_overflow");
    let worst = backed.first();
    let title = title(s, worst, &overflows, &drops, interval_ms);

    let mut evidence = Vec::new();
    if overflows.total.is_some() {
        evidence.push(Evidence::new(
            "ListenOverflows (accept queue full)",
            overflows.describe(interval_ms),
        ));
    }
    if drops.total.is_some() {
        evidence.push(Evidence::new(
            "ListenDrops (every listener drop)",
            drops.describe(interval_ms),
        ));
    }
    for b in backed.iter().take(TOP) {
        let l = b.listener;
        evidence.push(Evidence::new(
            format!("listener {}", l.local),
            format!(
                "{} of {} queued ({:.0}%{}), {}",
                l.accept_queue,
                l.backlog,
                b.used_pct,
                if b.full { ", full" } else { "" },
                holders_label(s, &s.sockets.holders(l))
            ),
        ));
    }
    if let Some(m) = somaxconn {
        evidence.push(Evidence::new("net.core.somaxconn", m));
    }
    if abort_on_overflow == Some(1) {
        evidence.push(Evidence::new(
            "tcp_abort_on_overflow",
            "1: clients are reset when the queue is full",
        ));
    }

    // Every holder: after fork() the workers share the listener and any of them may
    // be the one calling accept(), so naming only the first (often the parent, which
    // never accepts) would blame the wrong process.
    let who = worst.map_or("The application".to_string(), |b| {
        let holders = s.sockets.holders(b.listener);
        let shared = if holders.len() > 1 {
            ", which all hold the listener"
        } else {
            ""
        };
        format!(
            "The accepting side, {}{shared},",
            holders_label(s, &holders)
        )
    });
    // SYNs meeting a full accept queue are dropped in tcp_conn_request(); a final ACK
    // meeting one is handled in tcp_check_req(): with tcp_abort_on_overflow=0 the
    // request stays and reqsk_timer_handler() resends the SYN-ACK, with 1 an RST.
    let ack_fate = if abort_on_overflow == Some(1) {
        "a handshake whose final ACK meets the full queue is reset (tcp_abort_on_overflow=1)"
    } else {
        "a handshake whose final ACK meets the full queue is kept half-open and the kernel retransmits its SYN-ACK, which makes the client resend that ACK until there is room"
    };
    let why = format!(
        "A connection whose handshake has completed waits in the listener's accept queue until the application calls accept(); the queue holds min(listen() backlog, net.core.somaxconn) connections. When it is full the kernel drops new SYNs, so clients retry after a second or more, and {ack_fate}; both are counted in ListenOverflows, and clients see slow or failed connects. {who} is not calling accept() fast enough, or at all: all workers busy, a blocked event loop, or an accept loop that stopped."
    );
    let (fix, proposed) = fix(s, t, worst, somaxconn, abort_on_overflow);

    let mut f = Finding::new(ID, severity, Nature::Live, title);
    f.evidence = evidence;
    f.why = why;
    f.fix = fix;
    f.proposed = proposed;
    f.data = json!({
        "listen_overflows": overflows.json(),
        "listen_drops": drops.json(),
        "interval_ms": interval_ms,
        "somaxconn": somaxconn,
        "tcp_abort_on_overflow": abort_on_overflow,
        "listeners": backed.iter().map(|b| json!({
            "address": b.listener.local.address.to_string(),
            "port": b.listener.local.port,
            "accept_queue": b.listener.accept_queue,
            "backlog": b.listener.backlog,
            "used_pct": (b.used_pct * 100.0).round() / 100.0,
            "full": b.full,
            "pid": b.listener.owner.map(|o| o.pid),
            "pids": s.sockets.holders(b.listener).iter().map(|o| o.pid).collect::<Vec<_>>(),
            "comm": b.listener.owner.and_then(|o| s.process(o.pid)).map(|p| p.comm.clone()),
        })).collect::<Vec<_>>(),
    });
    vec![f]
}

/// Listeners whose accept queue is full or above `accept_queue_warn_pct`, worst first.
fn backed_listeners<'a>(s: &'a Snapshot, t: &Thresholds) -> Vec<Backed<'a>> {
    let mut backed: Vec<Backed> = s
        .sockets
        .listeners
        .iter()
        .filter_map(|l| {
            let (used_pct, full) = (l.fill_pct().unwrap_or(0.0), l.is_full());
            (full || used_pct >= t.accept_queue_warn_pct).then_some(Backed {
                listener: l,
                used_pct,
                full,
            })
        })
        .collect();
    backed.sort_by(|a, b| {
        b.full
            .cmp(&a.full)
            .then(b.used_pct.total_cmp(&a.used_pct))
            .then(a.listener.local.cmp(&b.listener.local))
    });
    backed
}

/// A backlog worth asking for: at least the default somaxconn (4096), and twice what the
/// worst listener has now, rounded up to a power of two.
fn backlog_target(worst: Option<&Backed>) -> u64 {
    let default = u64::try_from(defaults::SOMAXCONN).unwrap_or(4096);
    worst.map_or(default, |b| {
        (u64::from(b.listener.backlog) * 2)
            .max(default)
            .next_power_of_two()
    })
}

/// The net.core.somaxconn tcpdoctor proposes for this namespace: room for the backlog
/// the fullest listener should ask for, and never below the kernel default. The audit
/// of a lowered somaxconn proposes this same value, so the two never disagree.
pub fn wanted_somaxconn(s: &Snapshot, t: &Thresholds) -> u64 {
    backlog_target(backed_listeners(s, t).first())
}

fn title(
    s: &Snapshot,
    worst: Option<&Backed>,
    overflows: &CounterReading,
    drops: &CounterReading,
    interval_ms: Option<u64>,
) -> String {
    let window = interval_ms
        .map(|ms| format!(" in {}", units::human_duration_ms(ms)))
        .unwrap_or_default();
    let dropped = |n: i64| units::count(n.unsigned_abs(), "connection", "connections") + " dropped";
    let dropping = match (overflows.delta, overflows.rate) {
        (Some(d), Some(r)) if d > 0 => format!("; {}{window} ({r:.1}/s)", dropped(d)),
        (Some(d), None) if d > 0 => format!("; {}{window}", dropped(d)),
        _ => String::new(),
    };
    match worst {
        Some(b) if b.full => format!(
            "Accept queue full on {} ({}): {} of {} waiting for accept(){dropping}",
            b.listener.local,
            holders_label(s, &s.sockets.holders(b.listener)),
            b.listener.accept_queue,
            b.listener.backlog
        ),
        _ if overflows.rising() => format!(
            "Accept queues overflowing: {}{window}{}",
            dropped(overflows.delta.unwrap_or(0)),
            overflows
                .rate
                .map(|r| format!(" ({r:.1}/s)"))
                .unwrap_or_default()
        ),
        Some(b) => format!(
            "Accept queue of {} ({}) {:.0}% full: {} of {}",
            b.listener.local,
            holders_label(s, &s.sockets.holders(b.listener)),
            b.used_pct,
            b.listener.accept_queue,
            b.listener.backlog
        ),
        None if drops.rising() => format!(
            "Listeners dropping connections: {} ListenDrops{window}",
            drops.delta.unwrap_or(0)
        ),
        None => format!(
            "Accept queues overflowed {} since boot (not during this check)",
            units::count(
                overflows.total.or(drops.total).unwrap_or(0).unsigned_abs(),
                "time",
                "times"
            )
        ),
    }
}

fn fix(
    s: &Snapshot,
    t: &Thresholds,
    worst: Option<&Backed>,
    somaxconn: Option<i64>,
    abort_on_overflow: Option<i64>,
) -> (Vec<FixStep>, Vec<SysctlChange>) {
    let mut proposed = Vec::new();
    // top takes a list of pids: the threads of every holder of a shared listener.
    let (who, pid, pids) = match worst {
        Some(b) => {
            let holders = s.sockets.holders(b.listener);
            let pids: Vec<String> = holders.iter().take(20).map(|o| o.pid.to_string()).collect();
            let first = pids.first().cloned().unwrap_or_else(|| "PID".to_string());
            let all = if pids.is_empty() {
                first.clone()
            } else {
                pids.join(",")
            };
            (holders_label(s, &holders), first, all)
        }
        None => (
            "the listening process".to_string(),
            "PID".to_string(),
            "PID".to_string(),
        ),
    };
    let mut fix = vec![
        FixStep::run(
            format!("Find why {who} falls behind on accept(): look at its threads for busy or blocked workers, then add workers or keep slow work out of the accept loop"),
            format!("top -H -p {pids}"),
        ),
        FixStep::run(
            "A stack dump shows where the workers wait. For Java",
            format!("jstack {pid}"),
        ),
        FixStep::run("Or, for Python", format!("py-spy dump --pid {pid}")),
    ];
    let target = wanted_somaxconn(s, t);
    let port = worst.map_or(443, |b| b.listener.local.port);
    let cap = match (worst, somaxconn) {
        (Some(b), Some(m)) if i64::from(b.listener.backlog) >= m => format!(
            " Here the backlog {} already equals somaxconn {m}, so somaxconn is the cap.",
            b.listener.backlog
        ),
        (Some(b), Some(m)) => format!(
            " Here the application asked for {} while somaxconn is {m}, so the application's own setting is the cap.",
            b.listener.backlog
        ),
        _ => String::new(),
    };
    let somaxconn_ok = somaxconn.is_some_and(|m| u64::try_from(m).is_ok_and(|m| m >= target));
    let somaxconn_text = match somaxconn {
        Some(m) if somaxconn_ok => format!("net.core.somaxconn ({m}) already allows that"),
        _ => "net.core.somaxconn must allow it too (below)".to_string(),
    };
    fix.push(FixStep::say(format!(
        "Raise the application's listen backlog and net.core.somaxconn together; the kernel uses the smaller one.{cap} For example nginx `listen {port} backlog={target};` (its default is 511), and {somaxconn_text}. The default somaxconn is 4096 since Linux 5.4 (128 before). The new backlog applies when the application calls listen() again, usually on restart."
    )));
    if !somaxconn_ok {
        let command = format!("sysctl -w net.core.somaxconn={target}");
        fix.push(FixStep::run(
            "Raise net.core.somaxconn now (per network namespace)",
            command,
        ));
        proposed.push(SysctlChange {
            key: "net.core.somaxconn".into(),
            value: target.to_string(),
            was: somaxconn.map(|m| m.to_string()),
            why: format!(
                "listen() cuts every backlog down to this value. {target}: at least the kernel default 4096 and twice the backlog of the fullest listener; the application's own backlog must be raised to match."
            ),
        });
    }
    fix.push(FixStep::say("A bigger queue only absorbs bursts: if the application is always behind, it just makes clients wait longer. Add capacity."));
    fix.push(FixStep::say("Not the knobs for this: since Linux 4.4 the SYN queue is bounded by the listen backlog as well, and tcp_max_syn_backlog matters only with tcp_syncookies=0, when SYNs from unknown peers are dropped once the SYN queue holds more than three quarters of it; net.core.netdev_max_backlog is the per-CPU packet input queue."));
    if abort_on_overflow == Some(1) {
        fix.push(FixStep::run(
            "Turn off tcp_abort_on_overflow: with 1 the kernel resets clients whose handshake meets a full queue instead of retrying them",
            "sysctl -w net.ipv4.tcp_abort_on_overflow=0",
        ));
        proposed.push(SysctlChange {
            key: "net.ipv4.tcp_abort_on_overflow".into(),
            value: "0".into(),
            was: Some("1".into()),
            // Word for word the audit's reason, so the file prints it once.
            why: "Was 1. Clients whose handshake meets a briefly full accept queue are retried (SYN-ACK retransmits) instead of reset.".into(),
        });
    } else {
        fix.push(FixStep::say("Keep tcp_abort_on_overflow at 0: with 1 a handshake meeting a full queue is reset instead of retried with SYN-ACK retransmits."));
    }
    fix.push(FixStep::run(
        "Watch the queues (Recv-Q = waiting for accept(), Send-Q = backlog)",
        "ss -ltn",
    ));
    fix.push(FixStep::run(
        "Watch the counters too",
        "nstat -az TcpExtListenOverflows TcpExtListenDrops",
    ));
    (fix, proposed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CounterSample, Endpoint, Owner, ProcessFacts};

    fn listener(port: u16, accept_queue: u32, backlog: u32) -> ListenerSocket {
        ListenerSocket {
            local: Endpoint::new("0.0.0.0".parse().expect("ip"), port),
            accept_queue,
            backlog,
            backlog_known: true,
            inode: 77,
            owner: Some(Owner { pid: 900, fd: 6 }),
        }
    }

    fn snapshot(
        listeners: Vec<ListenerSocket>,
        overflow: (i64, i64),
        drop: (i64, i64),
    ) -> Snapshot {
        let mut s = Snapshot::default();
        s.processes.insert(
            900,
            ProcessFacts {
                pid: 900,
                comm: "nginx".into(),
                uid: 0,
                cmdline: "nginx: master".into(),
                open_fds: 40,
                nofile_soft: None,
                nofile_hard: None,
                detached_tcp_fds: None,
            },
        );
        let mut c = CounterSample {
            interval_ms: 2000,
            ..Default::default()
        };
        c.before.insert("TcpExt.ListenOverflows".into(), overflow.0);
        c.after.insert("TcpExt.ListenOverflows".into(), overflow.1);
        c.before.insert("TcpExt.ListenDrops".into(), drop.0);
        c.after.insert("TcpExt.ListenDrops".into(), drop.1);
        s.counters = Some(c);
        s.sysctls.insert("net.core.somaxconn".into(), "4096".into());
        s.sockets.listeners = listeners;
        s
    }

    #[test]
    fn full_queue_with_rising_overflows_is_critical() {
        let s = snapshot(
            vec![listener(443, 512, 511), listener(80, 3, 511)],
            (1_000, 1_040),
            (1_000, 1_040),
        );
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        let f = &f[0];
        assert_eq!(f.rule_id, ID);
        assert_eq!(f.severity, Severity::Critical);
        assert_eq!(
            f.title,
            "Accept queue full on 0.0.0.0:443 (nginx (pid 900)): 512 of 511 waiting for accept(); 40 connections dropped in 2.0s (20.0/s)"
        );
        assert_eq!(f.data["listen_overflows"]["delta"], 40);
        assert_eq!(f.data["listen_overflows"]["per_s"], 20.0);
        assert_eq!(f.data["listeners"].as_array().map(Vec::len), Some(1));
        assert_eq!(f.data["listeners"][0]["port"], 443);
        assert_eq!(f.data["listeners"][0]["full"], true);
        assert_eq!(f.data["listeners"][0]["comm"], "nginx");
        assert!(f.fix.iter().any(|l| l.mentions("listen 443 backlog=4096;")
            && l.mentions("application asked for 511")
            && l.mentions("somaxconn (4096) already allows that")));
        assert!(f.fix.iter().any(|l| l.mentions("tcp_max_syn_backlog")));
    }

    /// Issue 16: a listener shared by forked workers was blamed on the parent alone
    /// ("nginx (pid 900)"), which never accepts; every holder is named.
    #[test]
    fn a_listener_shared_by_forked_workers_names_every_holder() {
        let mut s = snapshot(
            vec![listener(443, 512, 511)],
            (1_000, 1_040),
            (1_000, 1_040),
        );
        for pid in [901, 902, 903, 904] {
            let mut p = s.processes[&900].clone();
            p.pid = pid;
            s.processes.insert(pid, p);
        }
        s.sockets.listener_holders.insert(
            77,
            [900, 901, 902, 903, 904]
                .into_iter()
                .map(|pid| Owner { pid, fd: 6 })
                .collect(),
        );
        let f = &check(&s, &Thresholds::default())[0];
        assert!(
            f.title.starts_with(
                "Accept queue full on 0.0.0.0:443 (nginx (pids 900, 901, 902 and 2 more)):"
            ),
            "{}",
            f.title
        );
        assert!(
            f.why.contains("The accepting side, nginx (pids 900, 901, 902 and 2 more), which all hold the listener, is not calling accept()"),
            "{}",
            f.why
        );
        assert_eq!(f.data["listeners"][0]["pid"], 900);
        assert_eq!(
            f.data["listeners"][0]["pids"],
            serde_json::json!([900, 901, 902, 903, 904])
        );
        assert!(f
            .fix
            .iter()
            .any(|l| l.command.as_deref() == Some("top -H -p 900,901,902,903,904")));
        // Holders with different names are each named.
        s.processes.get_mut(&901).expect("901").comm = "worker".into();
        let f = &check(&s, &Thresholds::default())[0];
        assert!(
            f.title
                .contains("(nginx (pid 900), worker (pid 901), nginx (pid 902) and 2 more)"),
            "{}",
            f.title
        );
    }

    #[test]
    fn queue_is_not_judged_when_the_backlog_is_unknown() {
        // /proc/net/tcp shows 0 where netlink shows the backlog.
        let mut l = listener(7002, 2, 0);
        l.backlog_known = false;
        let s = snapshot(vec![l], (5, 5), (5, 5));
        let f = check(&s, &Thresholds::default());
        assert!(f.iter().all(|f| f.severity != Severity::Critical), "{f:?}");
    }

    #[test]
    fn half_full_queue_is_a_warning_and_past_overflows_info() {
        let s = snapshot(vec![listener(8080, 70, 128)], (5, 5), (5, 5));
        let f = check(&s, &Thresholds::default());
        assert_eq!(f[0].severity, Severity::Warning);
        assert!(f[0].title.contains("55% full: 70 of 128"), "{}", f[0].title);

        let past = snapshot(vec![listener(8080, 0, 128)], (5, 5), (9, 9));
        let f = check(&past, &Thresholds::default());
        assert_eq!(f[0].severity, Severity::Info);
        assert!(f[0].title.contains("5 times since boot"), "{}", f[0].title);
    }

    #[test]
    fn full_queue_at_somaxconn_proposes_room_and_turns_abort_off() {
        let mut s = snapshot(vec![listener(443, 4097, 4096)], (10, 50), (10, 50));
        s.sysctls
            .insert("net.ipv4.tcp_abort_on_overflow".into(), "1".into());
        let f = check(&s, &Thresholds::default());
        let keys: Vec<(&str, &str)> = f[0]
            .proposed
            .iter()
            .map(|c| (c.key.as_str(), c.value.as_str()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("net.core.somaxconn", "8192"),
                ("net.ipv4.tcp_abort_on_overflow", "0")
            ]
        );
        assert!(f[0]
            .fix
            .iter()
            .any(|st| st.command.as_deref() == Some("sysctl -w net.core.somaxconn=8192")));
        assert!(
            f[0].why.contains("reset (tcp_abort_on_overflow=1)"),
            "{}",
            f[0].why
        );
        assert_eq!(wanted_somaxconn(&s, &Thresholds::default()), 8192);
        // somaxconn already big enough and abort off: nothing to propose, and the
        // final-ACK case is explained as a retry.
        let s = snapshot(vec![listener(443, 512, 511)], (10, 50), (10, 50));
        let f = check(&s, &Thresholds::default());
        assert!(f[0].proposed.is_empty(), "{:#?}", f[0].proposed);
        assert!(f[0].why.contains("retransmits its SYN-ACK"), "{}", f[0].why);
    }

    /// Titles, explanations and steps are sentences: each starts with a capital (or a
    /// number), and counts agree with their nouns.
    #[test]
    fn text_reads_as_sentences_with_counts_that_agree() {
        let one = snapshot(vec![listener(443, 2, 511)], (4, 5), (4, 5));
        let mut past = snapshot(vec![listener(443, 0, 511)], (1, 1), (1, 1));
        past.sysctls.remove("net.core.somaxconn");
        for s in [one, past] {
            let f = check(&s, &Thresholds::default());
            let f = &f[0];
            assert!(
                !f.title.contains(" 1 connections") && !f.title.contains(" 1 times"),
                "{}",
                f.title
            );
            for sentence in f
                .why
                .split(". ")
                .chain(f.fix.iter().flat_map(|st| st.text.split(". ")))
            {
                let first = sentence.trim_start().chars().next();
                assert!(
                    first.is_some_and(|c| !c.is_lowercase()),
                    "starts lowercase: {sentence:?}"
                );
            }
        }
        let s = snapshot(vec![], (1, 2), (1, 2));
        let f = check(&s, &Thresholds::default());
        assert!(
            f[0].title.contains(": 1 connection dropped in 2.0s"),
            "{}",
            f[0].title
        );
        let s = snapshot(vec![], (1, 1), (1, 1));
        let f = check(&s, &Thresholds::default());
        assert!(
            f[0].title.contains("overflowed 1 time since boot"),
            "{}",
            f[0].title
        );
    }

    #[test]
    fn does_not_fire_on_idle_listeners_and_clean_counters() {
        let s = snapshot(
            vec![listener(443, 2, 511), listener(22, 0, 128)],
            (0, 0),
            (0, 0),
        );
        assert!(check(&s, &Thresholds::default()).is_empty());
        assert!(check(&Snapshot::default(), &Thresholds::default()).is_empty());
    }
}
