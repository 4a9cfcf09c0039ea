//! Connection counters from the tracer `serve` keeps attached: connections opened by
//! process name and direction, closed by who closed first, failed connect() calls by
//! errno, resets by who sent them. Prometheus counters, so their values are kept here
//! across scrapes ([`FlowCounters`], held by the server): each collection adds the
//! flows it saw since the previous one.
//!
//! Bounded like every per-process family: the `top` process names by activity so far
//! have their own series, the rest fold into `comm="other"`. Folding must not make a
//! series go down, so each increment is counted once, in the series that exists when
//! it happens: a name's series holds what it did while it had a place in the top (kept
//! when it drops out, so it resumes where it stopped), `other` what everyone did
//! outside it. Names are remembered up to [`MAX_NAMES`]; later new names are only ever
//! counted in `other`.

use std::collections::{BTreeMap, BTreeSet};

use super::{Kind, Text, OTHER, UNOWNED};
use crate::model::{Direction, FlowCounts, HostSnapshot};

/// Process names remembered (each costs a few hundred bytes); more than any real host
/// has, few enough to bound memory.
pub const MAX_NAMES: usize = 4096;

/// The four families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    Opened,
    Closed,
    Failures,
    Resets,
}

const FAMILIES: [Family; 4] = [
    Family::Opened,
    Family::Closed,
    Family::Failures,
    Family::Resets,
];

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Opened => "tcpdoctor_connections_opened_total",
            Family::Closed => "tcpdoctor_connections_closed_total",
            Family::Failures => "tcpdoctor_connect_failures_total",
            Family::Resets => "tcpdoctor_connection_resets_total",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Family::Opened => "Connections opened (handshake completed) since the exporter started, by process name (top N by activity; comm=\"other\" folds the rest) and direction (active: this host connected; passive: it accepted).",
            Family::Closed => "Connections that ended since the exporter started, by process name, direction and which side closed first (local: this host, its socket goes to TIME_WAIT; peer: the peer, this host's socket passes CLOSE_WAIT; unknown: not seen).",
            Family::Failures => "Failed connect() calls since the exporter started, by process name and errno (EADDRNOTAVAIL: no free local port; aborted: closed while connecting).",
            Family::Resets => "Resets since the exporter started, by process name, direction and who sent them (local: this host aborted the connection; peer: the peer did).",
        }
    }
}

/// Label pairs other than `comm`, all static.
type Labels = Vec<(&'static str, &'static str)>;

/// Every label set (besides `comm`) of a family, in output order: the `other` series
/// are written for all of them, so each family always shows its labels.
fn label_sets(f: Family) -> Vec<Labels> {
    let dirs = ["active", "passive"];
    match f {
        Family::Opened => dirs.iter().map(|d| vec![("direction", *d)]).collect(),
        Family::Closed => dirs
            .iter()
            .flat_map(|d| {
                ["local", "peer", "unknown"]
                    .into_iter()
                    .map(move |c| vec![("direction", *d), ("first_closer", c)])
            })
            .collect(),
        Family::Failures => crate::model::ConnectFailures::default()
            .named()
            .into_iter()
            .map(|(errno, _)| vec![("errno", errno)])
            .collect(),
        Family::Resets => dirs
            .iter()
            .flat_map(|d| {
                ["local", "peer"]
                    .into_iter()
                    .map(move |by| vec![("direction", *d), ("sent_by", by)])
            })
            .collect(),
    }
}

/// One collection's increments of one process name: (family, labels) -> count.
fn increments(c: &FlowCounts, direction: Direction, out: &mut BTreeMap<(Family, Labels), u64>) {
    let dir = direction.name();
    let mut add = |f: Family, labels: Labels, n: u64| {
        if n > 0 {
            *out.entry((f, labels)).or_default() += n;
        }
    };
    add(Family::Opened, vec![("direction", dir)], c.opened);
    for (closer, n) in [
        ("local", c.closed_local),
        ("peer", c.closed_peer),
        ("unknown", c.closed_unknown),
    ] {
        add(
            Family::Closed,
            vec![("direction", dir), ("first_closer", closer)],
            n,
        );
    }
    for (errno, n) in c.connect_failures.named() {
        add(Family::Failures, vec![("errno", errno)], n);
    }
    add(
        Family::Resets,
        vec![("direction", dir), ("sent_by", "local")],
        c.resets_sent,
    );
    add(
        Family::Resets,
        vec![("direction", dir), ("sent_by", "peer")],
        c.resets_received,
    );
}

/// Everything one process name (or the unknown rest) did: opened, closed, failed and
/// reset connections. Ranks the names.
fn activity(c: &FlowCounts) -> u64 {
    c.opened + c.closed() + c.connect_failures.total() + c.resets_sent + c.resets_received
}

/// The exporter's cumulative connection counters (see the module text).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowCounters {
    /// Whether the tracer gave flows in the last collection.
    attached: bool,
    /// Every remembered name and all it did so far (its rank).
    activity: BTreeMap<String, u64>,
    /// Names with their own series now.
    top: BTreeSet<String>,
    /// Each name's series: what it did while in the top.
    own: BTreeMap<(String, Family, Labels), u64>,
    /// `comm="other"`: everything done outside the top.
    other: BTreeMap<(Family, Labels), u64>,
}

impl FlowCounters {
    pub fn new() -> FlowCounters {
        FlowCounters::default()
    }

    /// Adds the flows of one collection (each namespace's counts since the previous
    /// one). `top` names get their own series from now on.
    pub fn add(&mut self, host: &HostSnapshot, top: usize) {
        let traced: Vec<_> = host
            .namespaces
            .iter()
            .filter_map(|s| s.flows.as_ref())
            .collect();
        self.attached = !traced.is_empty();
        // This collection, per name (empty: no owner) and direction.
        let mut by_name: BTreeMap<String, Vec<(Direction, FlowCounts)>> = BTreeMap::new();
        let mut unnamed: Vec<(Direction, FlowCounts)> = Vec::new();
        for f in &traced {
            for r in &f.flows {
                let name = if r.key.pid == 0 || r.comm.is_empty() {
                    UNOWNED.to_string()
                } else {
                    r.comm.clone()
                };
                by_name
                    .entry(name)
                    .or_default()
                    .push((r.key.direction, r.counts));
            }
            // Flows the snapshot did not keep one by one: their names are not known.
            unnamed.push((Direction::Active, f.omitted_active));
            unnamed.push((Direction::Passive, f.omitted_passive));
        }
        for (name, counts) in &by_name {
            let n: u64 = counts.iter().map(|(_, c)| activity(c)).sum();
            if let Some(a) = self.activity.get_mut(name) {
                *a += n;
            } else if self.activity.len() < MAX_NAMES {
                self.activity.insert(name.clone(), n);
            }
        }
        // The top by everything done so far, this collection included; ties by name.
        let mut ranked: Vec<(&String, &u64)> = self.activity.iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        self.top = ranked
            .into_iter()
            .take(top.max(1))
            .filter(|(_, n)| **n > 0)
            .map(|(name, _)| name.clone())
            .collect();
        for (name, counts) in by_name {
            let mut inc = BTreeMap::new();
            for (d, c) in &counts {
                increments(c, *d, &mut inc);
            }
            let own = self.top.contains(&name);
            for ((family, labels), n) in inc {
                if own {
                    *self.own.entry((name.clone(), family, labels)).or_default() += n;
                } else {
                    *self.other.entry((family, labels)).or_default() += n;
                }
            }
        }
        let mut inc = BTreeMap::new();
        for (d, c) in &unnamed {
            increments(c, *d, &mut inc);
        }
        for (key, n) in inc {
            *self.other.entry(key).or_default() += n;
        }
    }
}

/// Writes the tracer's health and, when it ever counted, the four families.
pub(super) fn write(t: &mut Text, c: &FlowCounters) {
    t.single(
        "tcpdoctor_tracer_attached",
        Kind::Gauge,
        "1 if the connection tracer (BPF) counted connections in this collection, 0 if it could not run (not root, no BTF; see tcpdoctor_partial_data_notices).",
        u64::from(c.attached),
    );
    if c.activity.is_empty() && c.other.is_empty() && !c.attached {
        return;
    }
    for family in FAMILIES {
        t.family(family.name(), Kind::Counter, family.help());
        for ((name, f, labels), n) in &c.own {
            if *f != family || !c.top.contains(name) {
                continue;
            }
            let mut all: Vec<(&str, &str)> = vec![("comm", name.as_str())];
            all.extend(labels.iter().copied());
            t.sample(family.name(), &all, *n);
        }
        for labels in label_sets(family) {
            let n = c.other.get(&(family, labels.clone())).copied().unwrap_or(0);
            let mut all: Vec<(&str, &str)> = vec![("comm", OTHER)];
            all.extend(labels.iter().copied());
            t.sample(family.name(), &all, n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{family, host_of};
    use super::*;
    use crate::model::{
        ConnectFailures, Endpoint, FlowKey, FlowPeer, FlowRow, NamespaceFlows, Snapshot,
    };

    fn flow(pid: u32, comm: &str, opened: u64, closed_local: u64, eaddrnotavail: u64) -> FlowRow {
        FlowRow {
            key: FlowKey {
                pid,
                netns: 1,
                direction: Direction::Active,
                peer: FlowPeer::Remote(Endpoint::new("10.0.0.5".parse().expect("ip"), 443)),
            },
            comm: comm.into(),
            netns_name: String::new(),
            counts: FlowCounts {
                opened,
                closed_local,
                connect_failures: ConnectFailures {
                    eaddrnotavail,
                    ..ConnectFailures::default()
                },
                ..FlowCounts::default()
            },
        }
    }

    fn host(rows: Vec<FlowRow>) -> HostSnapshot {
        host_of(vec![Snapshot {
            flows: Some(NamespaceFlows {
                duration_ms: 1000,
                flows: rows,
                ..NamespaceFlows::default()
            }),
            ..Snapshot::default()
        }])
    }

    fn written(c: &FlowCounters) -> String {
        let mut t = Text::default();
        write(&mut t, c);
        t.buf
    }

    /// Every sample line of the four families: series (name and labels) -> value.
    fn series(text: &str) -> BTreeMap<String, u64> {
        FAMILIES
            .iter()
            .flat_map(|f| family(text, f.name()))
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').expect("sample");
                (k.to_string(), v.parse().expect("integer"))
            })
            .collect()
    }

    #[test]
    fn counts_add_up_per_name_and_the_rest_is_other() {
        let mut c = FlowCounters::new();
        c.add(
            &host(vec![
                flow(1, "python3", 400, 400, 0),
                flow(2, "java", 10, 10, 1312),
                flow(3, "curl", 1, 1, 0),
            ]),
            2,
        );
        let text = written(&c);
        assert!(text.contains("tcpdoctor_tracer_attached 1\n"));
        assert_eq!(
            family(&text, "tcpdoctor_connections_opened_total"),
            vec![
                "tcpdoctor_connections_opened_total{comm=\"java\",direction=\"active\"} 10",
                "tcpdoctor_connections_opened_total{comm=\"python3\",direction=\"active\"} 400",
                "tcpdoctor_connections_opened_total{comm=\"other\",direction=\"active\"} 1",
                "tcpdoctor_connections_opened_total{comm=\"other\",direction=\"passive\"} 0",
            ]
        );
        assert!(text.contains(
            "tcpdoctor_connect_failures_total{comm=\"java\",errno=\"EADDRNOTAVAIL\"} 1312\n"
        ));
        assert!(text.contains("tcpdoctor_connections_closed_total{comm=\"python3\",direction=\"active\",first_closer=\"local\"} 400\n"));
    }

    /// Names move in and out of the top across collections; no series ever shows less
    /// than it showed before, and every increment is counted exactly once.
    #[test]
    fn no_series_ever_goes_down_while_names_move_in_and_out_of_the_top() {
        let mut c = FlowCounters::new();
        let mut highest: BTreeMap<String, u64> = BTreeMap::new();
        let mut opened_total = 0u64;
        let names = ["a", "b", "c", "d", "e"];
        // A deterministic pseudo-random walk: each collection a different mix, so the
        // ranking changes often.
        let mut x: u64 = 12345;
        for round in 0..200u64 {
            let mut rows = Vec::new();
            for (i, n) in names.iter().enumerate() {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let opened = (x >> 33) % (if round % 7 == i as u64 { 500 } else { 20 });
                opened_total += opened;
                rows.push(flow(10 + i as u32, n, opened, opened / 2, (x >> 40) % 3));
            }
            // Some collections also have flows the snapshot did not keep one by one.
            let mut h = host(rows);
            if round % 5 == 0 {
                let f = h.namespaces[0].flows.as_mut().expect("flows");
                f.omitted = 3;
                f.omitted_active.opened = 7;
                opened_total += 7;
            }
            c.add(&h, 2);
            let now = series(&written(&c));
            for (k, v) in &now {
                let before = highest.get(k).copied().unwrap_or(0);
                assert!(*v >= before, "round {round}: {k} went from {before} to {v}");
                highest.insert(k.clone(), *v);
            }
            // At most the top 2 and other for each label set.
            let opened: Vec<&String> = now
                .keys()
                .filter(|k| k.starts_with("tcpdoctor_connections_opened_total{"))
                .filter(|k| k.contains("direction=\"active\""))
                .collect();
            assert!(opened.len() <= 3, "{opened:?}");
        }
        // Conservation: what every series ever showed for opened adds up to what
        // happened (series that left the top keep their last value).
        let shown: u64 = highest
            .iter()
            .filter(|(k, _)| k.starts_with("tcpdoctor_connections_opened_total{"))
            .map(|(_, v)| *v)
            .sum();
        assert_eq!(shown, opened_total);
    }

    #[test]
    fn without_a_tracer_only_its_health_is_written() {
        let mut c = FlowCounters::new();
        c.add(&host_of(vec![Snapshot::default()]), 2);
        let text = written(&c);
        assert_eq!(text.matches("# TYPE").count(), 1, "{text}");
        assert!(text.contains("tcpdoctor_tracer_attached 0\n"));
    }

    #[test]
    fn names_beyond_the_memory_bound_count_in_other() {
        let mut c = FlowCounters::new();
        let many = (0..MAX_NAMES)
            .map(|i| flow(1, &format!("p{i}"), 1, 0, 0))
            .collect();
        c.add(&host(many), 1);
        c.add(&host(vec![flow(1, "late", 1_000_000, 0, 0)]), 1);
        assert_eq!(c.activity.len(), MAX_NAMES);
        let text = written(&c);
        assert!(!text.contains("comm=\"late\""));
        // p0 has the one place; the other 4095 and the late one are in other.
        assert_eq!(
            family(&text, "tcpdoctor_connections_opened_total"),
            vec![
                "tcpdoctor_connections_opened_total{comm=\"p0\",direction=\"active\"} 1",
                "tcpdoctor_connections_opened_total{comm=\"other\",direction=\"active\"} 1004095",
                "tcpdoctor_connections_opened_total{comm=\"other\",direction=\"passive\"} 0",
            ]
        );
    }
}
