//! Rule `close_wait_unaccepted`: CLOSE_WAIT sockets with inode 0, i.e. connections still
//! sitting in a listener's accept queue whose client has already given up and closed.
//! The application is not accepting. Pure: reads the snapshot only.
//!
//! One finding per local ip:port. Only sockets that show nobody accepts count: still in
//! CLOSE_WAIT at `check`'s second look, or queued for a second or more; one gone at
//! the second look, or younger without one, is a busy server about to accept it. Any
//! count of those is a warning (nothing but accept() or closing the listener clears
//! them); critical when the listener's queue is full.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::json;

use super::util::{owner_label, pct};
use super::Thresholds;
use crate::model::units;
use crate::model::{
    CloseWaitSocket, Endpoint, Evidence, Finding, FixStep, ListenerSocket, Nature, Severity,
    Snapshot,
};

pub const ID: &str = "close_wait_unaccepted";

/// Peers shown in the evidence and data.
const TOP: usize = 5;

/// A socket younger than this in an accept queue may be one the application is about
/// to accept: a busy server has some whenever clients close right after connecting.
const STUCK_AFTER_MS: u32 = 1000;

/// Whether an unaccepted CLOSE_WAIT socket shows that nobody accepts: still in CLOSE_WAIT
/// at `check`'s second look, or in the queue for a second or more (or of unknown age,
/// from /proc/net/tcp), and not gone at the second look.
fn stuck(s: &Snapshot, c: &CloseWaitSocket) -> bool {
    let rechecked = s
        .close_wait_recheck_ms
        .is_some_and(|ms| ms >= super::close_wait_common::MIN_RECHECK_MS);
    match (rechecked, c.still_there) {
        (true, Some(false)) => false,
        (true, Some(true)) => true,
        _ => c.idle_ms.is_none_or(|ms| ms >= STUCK_AFTER_MS),
    }
}

pub fn check(s: &Snapshot, _t: &Thresholds) -> Vec<Finding> {
    let mut by_local: BTreeMap<(IpAddr, u16), Vec<&CloseWaitSocket>> = BTreeMap::new();
    for cw in s
        .sockets
        .close_wait
        .iter()
        .filter(|c| c.inode == 0 && stuck(s, c))
    {
        by_local
            .entry((cw.local.canonical_ip(), cw.local.port))
            .or_default()
            .push(cw);
    }
    let mut findings: Vec<(bool, usize, Finding)> = by_local
        .into_iter()
        .map(|((ip, port), sockets)| {
            let listener = listener_for(s, ip, port);
            let full = listener.is_some_and(ListenerSocket::is_full);
            (
                full,
                sockets.len(),
                finding_for(s, ip, port, &sockets, listener),
            )
        })
        .collect();
    // Full queues first, then the biggest groups.
    findings.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    findings.into_iter().map(|(_, _, f)| f).collect()
}

/// The listener that queued connections to `ip:port`: an exact address match first,
/// then a wildcard listener (0.0.0.0 or ::) on the port.
fn listener_for(s: &Snapshot, ip: IpAddr, port: u16) -> Option<&ListenerSocket> {
    let on_port = || {
        s.sockets
            .listeners
            .iter()
            .filter(move |l| l.local.port == port)
    };
    on_port()
        .find(|l| l.local.canonical_ip() == ip)
        .or_else(|| on_port().find(|l| l.local.address.is_unspecified()))
}

fn finding_for(
    s: &Snapshot,
    ip: IpAddr,
    port: u16,
    sockets: &[&CloseWaitSocket],
    listener: Option<&ListenerSocket>,
) -> Finding {
    let local = Endpoint::new(ip, port);
    let count = sockets.len() as u64;
    let full = listener.is_some_and(ListenerSocket::is_full);
    let severity = if full {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let owner = listener.and_then(|l| l.owner);
    let who = match (listener, owner) {
        (Some(_), Some(_)) => owner_label(s, owner),
        _ => format!("the application listening on port {port}"),
    };
    let oldest_ms = sockets.iter().filter_map(|c| c.idle_ms).max();

    let mut peers: Vec<(IpAddr, u64)> =
        super::util::top_counts(sockets.iter().map(|c| c.remote.canonical_ip()));
    peers.truncate(TOP);

    // A process name keeps its case; only the generic subject is capitalised.
    let subject = match (listener, owner) {
        (Some(_), Some(_)) => who.clone(),
        _ => format!("The application listening on port {port}"),
    };
    let title = format!(
        "{subject} is not accepting on {local}: {} already closed by {}",
        units::count(count, "queued connection", "queued connections"),
        units::noun(count, "its client", "their clients")
    );
    // The count is the title's; the evidence starts with the listener.
    let mut evidence = Vec::new();
    match listener {
        Some(l) if l.backlog_known => evidence.push(Evidence::new(
            format!("listener {}", l.local),
            format!(
                "{} of {} queued ({:.0}%{}), {}",
                l.accept_queue,
                l.backlog,
                pct(u64::from(l.accept_queue), u64::from(l.backlog.max(1))),
                if full { ", full" } else { "" },
                owner_label(s, l.owner)
            ),
        )),
        Some(l) => evidence.push(Evidence::new(
            format!("listener {}", l.local),
            format!(
                "{} queued, backlog unknown (read from /proc/net/tcp), {}",
                l.accept_queue,
                owner_label(s, l.owner)
            ),
        )),
        None => evidence.push(Evidence::new(
            "listener",
            format!("none found on port {port} (closed since, or filtered out)"),
        )),
    }
    if let Some(ms) = oldest_ms {
        evidence.push(Evidence::new(
            "oldest (client last heard)",
            crate::model::units::human_duration_ms(u64::from(ms)),
        ));
    }
    for (peer, n) in &peers {
        evidence.push(Evidence::new(format!("client {peer}"), n));
    }

    let why = format!(
        "These connections completed the handshake and were queued on the listener, but {who} never called accept() for them; their clients gave up waiting and closed, which left each one in CLOSE_WAIT inside the queue. The kernel does not remove them: each keeps a queue slot until the application accepts it (and reads an immediate EOF) or closes the listener. The usual cause is a fixed-size worker pool that is exhausted or blocked, so the accept loop waits for a free worker{}.",
        if full {
            "; the queue is full, so new clients are being dropped too"
        } else {
            ""
        }
    );
    let mut fix = Vec::new();
    match owner {
        Some(o) => fix.push(super::close_wait_common::stack_dump_step(s, o.pid)),
        None => fix.push(FixStep::run(
            "Find the listening process: as root, ss names it in users:((...))",
            format!("ss -ltnp sport = :{port}"),
        )),
    }
    fix.extend([
        FixStep::say("Put deadlines on the work that holds a worker (backend and database calls), size the pool for peak concurrency, or move to non-blocking I/O, so accept() keeps up."),
        FixStep::say("When saturated, refuse quickly (reply 503 or close right away) instead of leaving clients to time out in the queue."),
        FixStep::run(
            "Watch the queue (Recv-Q = queued, Send-Q = backlog)",
            format!("ss -ltn sport = :{port}"),
        ),
        FixStep::run(
            "...and these sockets",
            format!("ss -tn state close-wait sport = :{port}"),
        ),
        FixStep::say(format!(
            "Stopgap: restarting {who} drops the queue and these sockets; their clients have already given up."
        )),
    ]);

    Finding {
        rule_id: ID,
        namespaces: Vec::new(),
        nature: Nature::Live,
        severity,
        title,
        evidence,
        why,
        fix,
        proposed: Vec::new(),
        data: json!({
            "local_address": ip.to_string(),
            "local_port": port,
            "count": count,
            "oldest_idle_ms": oldest_ms,
            "listener": listener.map(|l| json!({
                "address": l.local.address.to_string(),
                "port": l.local.port,
                "accept_queue": l.accept_queue,
                "backlog": l.backlog,
                "full": l.is_full(),
                "pid": l.owner.map(|o| o.pid),
                "comm": l.owner.and_then(|o| s.process(o.pid)).map(|p| p.comm.clone()),
            })),
            "peers": peers.iter().map(|(ip, n)| json!({"address": ip.to_string(), "count": n})).collect::<Vec<_>>(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Owner, ProcessFacts};

    fn unaccepted(local_port: u16, peer: &str, idle_ms: u32) -> CloseWaitSocket {
        CloseWaitSocket {
            local: Endpoint::new("10.0.0.1".parse().expect("ip"), local_port),
            remote: Endpoint::new(peer.parse().expect("ip"), 50_000),
            inode: 0,
            recv_q: 1,
            owner: None,
            idle_ms: Some(idle_ms),
            cookie: None,
            still_there: None,
        }
    }

    fn snapshot(sockets: Vec<CloseWaitSocket>, accept_queue: u32, backlog: u32) -> Snapshot {
        let mut s = Snapshot::default();
        s.processes.insert(
            42,
            ProcessFacts {
                pid: 42,
                comm: "java".into(),
                uid: 1000,
                cmdline: "java -jar app.jar".into(),
                open_fds: 300,
                nofile_soft: None,
                nofile_hard: None,
                detached_tcp_fds: None,
            },
        );
        s.sockets.listeners.push(ListenerSocket {
            // Dual-stack wildcard: matches IPv4 connections by port.
            local: Endpoint::new("::".parse().expect("ip"), 8080),
            accept_queue,
            backlog,
            backlog_known: true,
            inode: 5,
            owner: Some(Owner { pid: 42, fd: 4 }),
        });
        s.sockets.close_wait = sockets;
        s
    }

    #[test]
    fn fires_per_local_port_and_names_the_listener_owner() {
        let mut sockets: Vec<_> = (1..4)
            .map(|i| unaccepted(8080, "10.0.0.9", 1_000 * i))
            .collect();
        sockets.push(unaccepted(8080, "10.0.0.8", 45_000));
        let s = snapshot(sockets, 60, 100);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        let f = &f[0];
        assert_eq!(f.rule_id, ID);
        assert_eq!(f.severity, Severity::Warning);
        assert_eq!(
            f.title,
            "java (pid 42) is not accepting on 10.0.0.1:8080: 4 queued connections already closed by their clients"
        );
        assert_eq!(f.data["count"], 4);
        assert_eq!(f.data["oldest_idle_ms"], 45_000);
        assert_eq!(f.data["listener"]["accept_queue"], 60);
        assert_eq!(f.data["listener"]["pid"], 42);
        assert_eq!(f.data["peers"][0]["address"], "10.0.0.9");
        assert_eq!(f.data["peers"][0]["count"], 3);
        assert!(f
            .fix
            .iter()
            .any(|l| l.command.as_deref() == Some("jstack 42")));
        // Every shell command is a step's command, none is left in the prose.
        assert!(f
            .fix
            .iter()
            .all(|l| !crate::analyze::pointing::prose_has_command(&l.text)));
        assert!(f
            .fix
            .iter()
            .any(|l| l.command.as_deref() == Some("ss -ltn sport = :8080")));
    }

    #[test]
    fn a_single_one_is_a_warning_and_a_full_queue_critical() {
        let one = snapshot(vec![unaccepted(8080, "10.0.0.9", 1_500)], 1, 100);
        assert_eq!(
            check(&one, &Thresholds::default())[0].severity,
            Severity::Warning
        );
        let full = snapshot(vec![unaccepted(8080, "10.0.0.9", 1_500)], 101, 100);
        let f = check(&full, &Thresholds::default());
        assert_eq!(f[0].severity, Severity::Critical);
        assert_eq!(f[0].data["listener"]["full"], true);
    }

    #[test]
    fn an_unknown_backlog_is_said_not_computed() {
        // /proc/net/tcp shows a listener's backlog as 0: no percentage, never "full".
        let mut s = snapshot(vec![unaccepted(8080, "10.0.0.9", 2_000)], 2, 0);
        s.sockets.listeners[0].backlog_known = false;
        let f = check(&s, &Thresholds::default());
        let listener = f[0]
            .evidence
            .iter()
            .find(|e| e.label.starts_with("listener"))
            .expect("listener evidence");
        assert_eq!(
            listener.value,
            "2 queued, backlog unknown (read from /proc/net/tcp), java (pid 42)"
        );
        assert_eq!(f[0].severity, Severity::Warning);
        assert_eq!(f[0].data["listener"]["full"], false);
    }

    #[test]
    fn unknown_listener_degrades_to_the_port() {
        let s = snapshot(vec![unaccepted(9000, "10.0.0.9", 5_000)], 0, 100);
        let f = check(&s, &Thresholds::default());
        assert!(f[0]
            .title
            .ends_with("1 queued connection already closed by its client"));
        assert_eq!(f[0].data["listener"], serde_json::Value::Null);
        assert!(f[0]
            .title
            .starts_with("The application listening on port 9000"));
    }

    #[test]
    fn a_busy_server_about_to_accept_is_not_reported() {
        // Young and looked at once: about to be accepted.
        let young = snapshot(vec![unaccepted(8080, "10.0.0.9", 40)], 1, 100);
        assert!(check(&young, &Thresholds::default()).is_empty());
        // Gone at the second look: accepted (or reset) meanwhile, even when older.
        let mut gone = snapshot(vec![unaccepted(8080, "10.0.0.9", 3_000)], 1, 100);
        gone.sockets.close_wait[0].still_there = Some(false);
        gone.close_wait_recheck_ms = Some(1000);
        assert!(check(&gone, &Thresholds::default()).is_empty());
        // Still there at the second look: nobody accepts it, however young.
        let mut kept = snapshot(vec![unaccepted(8080, "10.0.0.9", 40)], 1, 100);
        kept.sockets.close_wait[0].still_there = Some(true);
        kept.close_wait_recheck_ms = Some(1000);
        assert_eq!(check(&kept, &Thresholds::default()).len(), 1);
        // Of unknown age (/proc/net/tcp) and not re-checked: counted.
        let mut unknown = snapshot(vec![unaccepted(8080, "10.0.0.9", 0)], 1, 100);
        unknown.sockets.close_wait[0].idle_ms = None;
        assert_eq!(check(&unknown, &Thresholds::default()).len(), 1);
    }

    #[test]
    fn does_not_fire_for_accepted_close_wait() {
        let mut cw = unaccepted(8080, "10.0.0.9", 10);
        cw.inode = 1234;
        let s = snapshot(vec![cw], 0, 100);
        assert!(check(&s, &Thresholds::default()).is_empty());
    }
}
