//! Sockets per process: CLOSE_WAIT held (the leak signature) and TCP sockets held in
//! any state, top N by count, plus `other` (the rest) and `unowned` (sockets with no
//! visible process). Processes are named by `comm` and `pid` only. Pids are the
//! host's, so one process is one series whichever namespaces its sockets are in.

use std::collections::BTreeMap;

use super::{Kind, Text, OTHER, UNOWNED};
use crate::model::rank::{top_n, Ranked};
use crate::model::Snapshot;

/// `comm` of a pid, `unknown` when the scan did not see the process.
pub(super) fn comm_of(s: &Snapshot, pid: u32) -> &str {
    match s.process(pid) {
        Some(p) if !p.comm.is_empty() => &p.comm,
        _ => "unknown",
    }
}

/// `s`: every namespace folded into one.
pub(super) fn write(t: &mut Text, s: &Snapshot, top: usize) {
    let mut cw: BTreeMap<u32, u64> = BTreeMap::new();
    let mut cw_unowned = 0u64;
    for c in &s.sockets.close_wait {
        match c.owner {
            Some(o) => *cw.entry(o.pid).or_default() += 1,
            None => cw_unowned += 1,
        }
    }
    // The digest holds every CLOSE_WAIT socket the state counts do: nothing to add.
    process_family(
        t,
        s,
        "tcpdoctor_process_close_wait_sockets",
        "CLOSE_WAIT sockets per process (top N by count; pid=\"other\" folds the rest, pid=\"unowned\" has no visible process).",
        top_n(cw, top),
        cw_unowned,
    );

    let held = s
        .sockets
        .by_process
        .iter()
        .map(|(pid, c)| (*pid, c.total()));
    let held_sum: u64 = s.sockets.by_process.values().map(|c| c.total()).sum();
    process_family(
        t,
        s,
        "tcpdoctor_process_sockets",
        "TCP sockets held per process, all states (top N; pid=\"other\" folds the rest, pid=\"unowned\": no descriptor such as TIME_WAIT, or no visible process).",
        top_n(held, top),
        s.summary.total().total().saturating_sub(held_sum),
    );
}

/// A per-process top-N family: the top entries, `other`, then `unowned`.
fn process_family(
    t: &mut Text,
    s: &Snapshot,
    name: &str,
    help: &str,
    ranked: Ranked<u32>,
    unowned: u64,
) {
    t.family(name, Kind::Gauge, help);
    for (pid, n) in ranked.top {
        t.sample(
            name,
            &[("comm", comm_of(s, pid)), ("pid", &pid.to_string())],
            n,
        );
    }
    t.sample(name, &[("comm", OTHER), ("pid", OTHER)], ranked.rest);
    t.sample(name, &[("comm", UNOWNED), ("pid", UNOWNED)], unowned);
}

#[cfg(test)]
mod tests {
    use super::super::testing::{family, snapshot};
    use super::*;

    fn written(s: &Snapshot, top: usize) -> String {
        let mut t = Text::default();
        write(&mut t, s, top);
        t.buf
    }

    #[test]
    fn top_n_folds_the_rest_into_other_and_never_shows_command_lines() {
        let text = written(&snapshot(), 2);
        assert_eq!(
            family(&text, "tcpdoctor_process_close_wait_sockets"),
            vec![
                "tcpdoctor_process_close_wait_sockets{comm=\"web\\\"app\",pid=\"10\"} 5",
                "tcpdoctor_process_close_wait_sockets{comm=\"db\",pid=\"11\"} 3",
                "tcpdoctor_process_close_wait_sockets{comm=\"other\",pid=\"other\"} 1",
                "tcpdoctor_process_close_wait_sockets{comm=\"unowned\",pid=\"unowned\"} 1",
            ]
        );
        assert!(!text.contains("pid=\"12\""), "beyond top 2: {text}");
        assert!(!text.contains("hunter2") && !text.contains("/usr/bin"));
    }

    #[test]
    fn sockets_held_count_every_state_and_the_rest_is_unowned() {
        let text = written(&snapshot(), 2);
        // pid 10 holds 1 socket; the other 10 of the 11 have no known process.
        assert_eq!(
            family(&text, "tcpdoctor_process_sockets"),
            vec![
                "tcpdoctor_process_sockets{comm=\"web\\\"app\",pid=\"10\"} 1",
                "tcpdoctor_process_sockets{comm=\"other\",pid=\"other\"} 0",
                "tcpdoctor_process_sockets{comm=\"unowned\",pid=\"unowned\"} 10",
            ]
        );
    }

    #[test]
    fn a_process_the_scan_did_not_see_is_unknown() {
        let mut s = snapshot();
        s.processes.remove(&11);
        let text = written(&s, 2);
        assert!(
            text.contains("tcpdoctor_process_close_wait_sockets{comm=\"unknown\",pid=\"11\"} 3\n")
        );
    }
}
