//! Rule `detached_descriptors`: processes that hold descriptors of TCP sockets the
//! kernel has closed. An RST (a write to a peer that is gone, or a SO_KEEPALIVE probe
//! answered by one) moves a CLOSE_WAIT socket to CLOSE: `tcp_set_state()` unhashes it,
//! so it leaves every socket table `ss` and sock_diag read, while the process keeps the
//! descriptor until it calls close(). `collect` counts them per process
//! (`ProcessFacts::detached_tcp_fds`: socket inodes in /proc/PID/fd that no dump saw).

use std::cmp::Reverse;

use serde_json::json;

use super::util::{pct, process_label};
use super::Thresholds;
use crate::model::units::count;
use crate::model::{Evidence, Finding, FixStep, Nature, ProcessFacts, Severity, Snapshot};

pub const ID: &str = "detached_descriptors";

/// Detached descriptors a process may hold before it is reported. A fresh socket
/// between socket() and connect(), one whose connect() just failed, or one bound and
/// not listening is in no table either; a busy client has a few at any moment.
pub const DETACHED_MIN: u64 = 10;

/// Share of the soft RLIMIT_NOFILE at which they are critical.
const CRITICAL_PCT: f64 = 50.0;

pub fn check(s: &Snapshot, _t: &Thresholds) -> Vec<Finding> {
    let mut found: Vec<(&ProcessFacts, u64)> = s
        .processes
        .values()
        .filter_map(|p| Some((p, p.detached_tcp_fds?)))
        .filter(|(_, n)| *n >= DETACHED_MIN)
        .collect();
    found.sort_by_key(|(p, n)| (Reverse(*n), p.pid));
    found.into_iter().map(|(p, n)| finding(s, p, n)).collect()
}

fn finding(s: &Snapshot, p: &ProcessFacts, n: u64) -> Finding {
    let who = process_label(s, p.pid);
    let pid = p.pid;
    let soft = p.nofile_soft.and_then(|l| l.value());
    let share = soft.map(|l| pct(n, l));
    let severity = if share.is_some_and(|x| x >= CRITICAL_PCT) {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let descriptors = count(n, "descriptor", "descriptors");
    let title = format!("{who} holds {descriptors} of TCP sockets the kernel has closed");
    let close_wait = s
        .sockets
        .close_wait
        .iter()
        .filter(|c| c.owner.is_some_and(|o| o.pid == pid))
        .count() as u64;
    let mut evidence = Vec::new();
    match (soft, share) {
        (Some(l), Some(x)) => evidence.push(Evidence::new(
            "share of RLIMIT_NOFILE",
            format!(
                "{x:.1}% of the soft limit {l}; {} open in all",
                count(p.open_fds, "descriptor", "descriptors")
            ),
        )),
        _ => evidence.push(Evidence::new(
            "open descriptors",
            format!(
                "{} in all (soft limit not readable)",
                count(p.open_fds, "descriptor", "descriptors")
            ),
        )),
    }
    evidence.push(Evidence::new(
        "seen as",
        "socket:[inode] links in /proc/PID/fd whose inode no sock_diag dump of this namespace lists",
    ));
    if close_wait > 0 {
        evidence.push(Evidence::new(
            "in CLOSE_WAIT now",
            format!(
                "{}: the next to end up here when their peers reset them",
                count(close_wait, "socket", "sockets")
            ),
        ));
    }
    let why = format!(
        "The kernel closed these connections, {who} did not close their descriptors. A CLOSE_WAIT socket (or any connection) that receives a reset, from a write to a peer that is gone or from a SO_KEEPALIVE probe, moves to CLOSE and leaves every socket table, so ss no longer shows it; the descriptor stays open and counts against RLIMIT_NOFILE until the process calls close() or exits. A socket just created and not yet connected, one whose connect() just failed, or one bound and not listening is in no table either, so tcpdoctor reports {DETACHED_MIN} or more."
    );
    let fix = vec![
        FixStep::say(
            "Close the socket on every error path: a read or write that fails (EPIPE, ECONNRESET, ECONNABORTED) or a read that returns 0 must be followed by close(); use finally/defer/with.",
        ),
        FixStep::run(
            "Count its socket descriptors",
            format!("ls -l /proc/{pid}/fd | grep -c socket"),
        ),
        FixStep::run(
            "Compare with the sockets the kernel lists for it, of every type: the difference is these, plus any it holds in other namespaces",
            format!("ss -anp | grep -c 'pid={pid},'"),
        ),
        FixStep::say(format!(
            "Restarting {who} gives the descriptors back; killing the sockets from outside cannot, they are already closed."
        )),
    ];
    let mut f = Finding::new(ID, severity, Nature::Live, title);
    f.evidence = evidence;
    f.why = why;
    f.fix = fix;
    f.data = json!({
        "pid": pid,
        "comm": p.comm,
        "count": n,
        "open_fds": p.open_fds,
        "nofile_soft": soft,
        "share_pct": share.map(super::util::round2),
        "close_wait": close_wait,
        "min_reported": DETACHED_MIN,
    });
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CloseWaitSocket, Endpoint, Limit, Owner};

    fn snapshot(detached: Option<u64>, soft: u64) -> Snapshot {
        let mut s = Snapshot::default();
        s.processes.insert(
            42,
            ProcessFacts {
                pid: 42,
                comm: "java".into(),
                uid: 1000,
                cmdline: "java".into(),
                open_fds: 300,
                nofile_soft: Some(Limit::Value(soft)),
                nofile_hard: None,
                detached_tcp_fds: detached,
            },
        );
        s
    }

    #[test]
    fn fires_with_the_pid_the_count_and_the_share_of_the_limit() {
        let mut s = snapshot(Some(12), 1024);
        s.sockets.close_wait.push(CloseWaitSocket {
            local: Endpoint::new("127.0.0.1".parse().expect("ip"), 8080),
            remote: Endpoint::new("127.0.0.1".parse().expect("ip"), 40000),
            inode: 7,
            recv_q: 1,
            owner: Some(Owner { pid: 42, fd: 5 }),
            idle_ms: None,
            cookie: None,
            still_there: None,
        });
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        let f = &f[0];
        assert_eq!(f.rule_id, ID);
        assert_eq!(f.severity, Severity::Warning);
        assert_eq!(
            f.title,
            "java (pid 42) holds 12 descriptors of TCP sockets the kernel has closed"
        );
        assert_eq!(
            f.evidence[0].value,
            "1.2% of the soft limit 1024; 300 descriptors open in all"
        );
        assert_eq!(f.data["count"], 12);
        assert_eq!(f.data["pid"], 42);
        assert_eq!(f.data["close_wait"], 1);
        assert!(f
            .fix
            .iter()
            .any(|s| s.command.as_deref() == Some("ls -l /proc/42/fd | grep -c socket")));
        assert!(f
            .fix
            .iter()
            .all(|s| !crate::analyze::pointing::prose_has_command(&s.text)));
        assert!(f.why.contains("not yet connected"), "{}", f.why);
    }

    #[test]
    fn half_the_limit_is_critical() {
        let f = check(&snapshot(Some(600), 1024), &Thresholds::default());
        assert_eq!(f[0].severity, Severity::Critical);
    }

    #[test]
    fn does_not_fire_below_the_bar_or_unmeasured() {
        assert!(check(
            &snapshot(Some(DETACHED_MIN - 1), 1024),
            &Thresholds::default()
        )
        .is_empty());
        assert!(check(&snapshot(None, 1024), &Thresholds::default()).is_empty());
        assert!(check(&snapshot(Some(0), 1024), &Thresholds::default()).is_empty());
    }
}
