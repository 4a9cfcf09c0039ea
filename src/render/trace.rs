//! `tcpdoctor trace` output: the live table (one interval), the final summary (the
//! whole run), raw event lines, and their JSON lines (docs/json.md). Writes to any
//! `io::Write`; the loop in `live::trace` decides when.

use std::io::{self, Write};

use serde::Serialize;

use super::{Paint, Style, Table, JSON_SCHEMA_VERSION};
use crate::model::flow::{errno_name, ProgramCost, RatedCounts};
use crate::model::units::count;
use crate::model::{
    Closer, ConnectFailures, Direction, FlowCounts, FlowEvent, FlowEventKind, FlowInterval,
    FlowPeer, FlowRow, Notice, TraceLosses, TraceSummary,
};

/// What the table needs to know besides the flows.
#[derive(Debug, Clone, Copy)]
pub struct TableView {
    /// Rows shown (`usize::MAX`: all).
    pub top: usize,
    /// Add a NETNS column.
    pub namespaces: bool,
}

/// `410`, `12.5`, `0.3`: rates as people read them.
fn rate(per_s: f64) -> String {
    if per_s >= 100.0 {
        format!("{per_s:.0}")
    } else if per_s >= 0.05 || per_s == 0.0 {
        format!("{per_s:.1}")
    } else {
        "<0.1".to_string()
    }
}

/// A lifetime bound in µs: `≤128µs`, `≤4.1ms`, `≤2.1s`, `≤35m47s`.
fn lifetime(us: Option<u64>) -> String {
    let Some(us) = us else {
        return "-".into();
    };
    let text = if us < 1000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1000.0)
    } else {
        crate::model::units::human_duration_ms(us / 1000)
    };
    format!("≤{text}")
}

/// `local 100%`, `peer 97%`, `mixed 60% local`, `-` (also watch's churn panel).
pub(crate) fn first_closer(c: &FlowCounts) -> String {
    let known = c.closed_local + c.closed_peer;
    let pct = |n: u64| (n as f64 * 100.0 / known as f64).round() as u64;
    match c.closer() {
        None => "-".into(),
        Some(Closer::Local) => format!("local {}%", pct(c.closed_local)),
        Some(Closer::Peer) => format!("peer {}%", pct(c.closed_peer)),
        Some(Closer::Both) => format!("mixed {}% local", pct(c.closed_local)),
    }
}

/// `412 EADDRNOTAVAIL`, `3 ECONNREFUSED +2`, `-`.
fn failures(f: &ConnectFailures) -> String {
    let mut named: Vec<(&str, u64)> = f.named().into_iter().filter(|(_, n)| *n > 0).collect();
    named.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    match named.split_first() {
        None => "-".into(),
        Some(((name, n), [])) => format!("{n} {name}"),
        Some(((name, n), rest)) => {
            format!("{n} {name} +{}", rest.iter().map(|(_, n)| n).sum::<u64>())
        }
    }
}

fn process(row: &FlowRow) -> (String, String) {
    if row.key.pid == 0 {
        ("-".into(), "(unknown)".into())
    } else {
        (row.key.pid.to_string(), row.comm.clone())
    }
}

/// The table of flows with rates over `interval`.
pub fn write_table(
    out: &mut impl Write,
    interval: &FlowInterval,
    view: TableView,
    style: Style,
) -> io::Result<()> {
    let mut columns: Vec<(&str, bool)> = vec![("PID", true), ("PROCESS", false)];
    if view.namespaces {
        columns.push(("NETNS", false));
    }
    columns.extend([
        ("DIR", false),
        ("PEER", false),
        ("OPEN/s", true),
        ("CLOSE/s", true),
        ("FIRST CLOSE", false),
        ("LIFE p50", true),
        ("p99", true),
        ("RST out/in", true),
        ("FAILED connect()", false),
    ]);
    let mut t = Table::new(&columns);
    for row in interval.flows.iter().take(view.top) {
        let c = &row.counts;
        let (pid, comm) = process(row);
        let mut cells = vec![
            (pid, None),
            (crate::model::units::ellipsize(&comm, 16), None),
        ];
        if view.namespaces {
            cells.push((crate::model::units::ellipsize(&row.netns_name, 24), None));
        }
        let failed = c.connect_failures.total();
        cells.extend([
            (row.key.direction.arrow().to_string(), None),
            (row.key.peer.to_string(), None),
            (rate(interval.rate(c.opened)), None),
            (rate(interval.rate(c.closed())), None),
            (
                first_closer(c),
                (c.closer() == Some(Closer::Local)).then_some(Paint::Yellow),
            ),
            (lifetime(c.lifetimes.quantile_us(0.5)), None),
            (lifetime(c.lifetimes.quantile_us(0.99)), None),
            (
                format!("{}/{}", c.resets_sent, c.resets_received),
                (c.resets_sent + c.resets_received > 0).then_some(Paint::Yellow),
            ),
            (
                failures(&c.connect_failures),
                (failed > 0).then_some(Paint::Red),
            ),
        ]);
        t.row(cells);
    }
    t.write(out, style)?;
    let hidden = interval.flows.len().saturating_sub(view.top);
    if hidden > 0 {
        writeln!(
            out,
            "… and {} (--top 0 shows all)",
            count(hidden as u64, "more flow", "more flows")
        )?;
    }
    Ok(())
}

/// Sums of the rows of one direction.
fn direction_totals(interval: &FlowInterval, d: Direction) -> FlowCounts {
    let mut t = FlowCounts::default();
    for r in interval.flows.iter().filter(|r| r.key.direction == d) {
        t.add(&r.counts);
    }
    t
}

/// One line over the totals, each direction apart (on loopback a connection has both
/// ends on this host): `out: 150 opened/s, 150 closed/s (100% first by this host) · in:
/// ... · 3 resets sent, 0 received · 12 failed connect()/s`.
fn totals_line(interval: &FlowInterval) -> String {
    let side = |d: Direction| {
        let c = direction_totals(interval, d);
        let known = c.closed_local + c.closed_peer;
        let first = if known == 0 {
            String::new()
        } else {
            format!(
                " ({}% first by this host)",
                (c.closed_local as f64 * 100.0 / known as f64).round()
            )
        };
        format!(
            "{}: {} opened/s, {} closed/s{first}",
            d.arrow(),
            rate(interval.rate(c.opened)),
            rate(interval.rate(c.closed())),
        )
    };
    let t = &interval.totals;
    format!(
        "{} · {} · {} resets sent, {} received · {} failed connect()/s",
        side(Direction::Active),
        side(Direction::Passive),
        t.resets_sent,
        t.resets_received,
        rate(interval.rate(t.connect_failures.total())),
    )
}

/// The live view: a header and the interval's table. `clear`: start from a clean
/// screen (a terminal).
pub fn write_live(
    out: &mut impl Write,
    interval: &FlowInterval,
    elapsed_ms: u64,
    view: TableView,
    style: Style,
    clear: bool,
) -> io::Result<()> {
    if clear {
        out.write_all(b"\x1b[H\x1b[2J")?;
    }
    let mut head = Vec::new();
    style.cell(&mut head, "tcpdoctor trace", 0, false, Some(Paint::Bold))?;
    out.write_all(&head)?;
    writeln!(
        out,
        "  {} traced, last {}; Ctrl-C for the summary",
        crate::model::units::human_duration_ms(elapsed_ms),
        crate::model::units::human_duration_ms(interval.duration_ms),
    )?;
    writeln!(out, "{}", totals_line(interval))?;
    if interval.losses.counts_low() {
        writeln!(
            out,
            "counts are low this interval: {} counts found the flow table full, {} program runs skipped",
            interval.losses.flows_full, interval.losses.missed_runs
        )?;
    }
    out.write_all(b"\n")?;
    if interval.flows.is_empty() {
        writeln!(out, "no connections opened, closed or failed")?;
        return Ok(());
    }
    write_table(out, interval, view, style)
}

/// The final summary of a run.
pub fn write_summary(
    out: &mut impl Write,
    s: &TraceSummary,
    view: TableView,
    style: Style,
) -> io::Result<()> {
    let f = &s.flows;
    let t = &f.totals;
    let mut head = Vec::new();
    style.cell(
        &mut head,
        "tcpdoctor trace summary",
        0,
        false,
        Some(Paint::Bold),
    )?;
    out.write_all(&head)?;
    writeln!(
        out,
        ": {} traced, {}",
        crate::model::units::human_duration_ms(f.duration_ms),
        count(f.flows.len() as u64, "flow", "flows")
    )?;
    for d in [Direction::Active, Direction::Passive] {
        let c = direction_totals(f, d);
        writeln!(
            out,
            "{}: {} opened ({}/s); {} closed: {} first by this host, {} first by the peer, {} not seen",
            match d {
                Direction::Active => "outgoing",
                Direction::Passive => "incoming",
            },
            count(c.opened, "connection", "connections"),
            rate(f.rate(c.opened)),
            c.closed(),
            c.closed_local,
            c.closed_peer,
            c.closed_unknown,
        )?;
    }
    writeln!(
        out,
        "{} resets sent, {} received; {}",
        t.resets_sent,
        t.resets_received,
        match t.connect_failures.total() {
            0 => "no failed connect()".to_string(),
            n => format!(
                "{} ({})",
                count(n, "failed connect()", "failed connect() calls"),
                failures(&t.connect_failures)
            ),
        }
    )?;
    if f.flows.is_empty() {
        return Ok(());
    }
    out.write_all(b"\n")?;
    write_table(out, f, view, style)?;
    let runs: u64 = s.programs.iter().map(|p| p.run_count).sum();
    let ns: u64 = s.programs.iter().map(|p| p.run_time_ns).sum();
    if s.bpf_stats_enabled && runs > 0 && f.duration_ms > 0 {
        writeln!(
            out,
            "\nkernel time in the tracer: {:.1} ms ({:.2}% of one CPU), {} program runs, {:.0} ns each",
            ns as f64 / 1e6,
            ns as f64 / 1e6 / f.duration_ms as f64 * 100.0,
            runs,
            ns as f64 / runs as f64
        )?;
    }
    Ok(())
}

/// `12:00:01.123456 python3[812] host 127.0.0.1:40000 > 127.0.0.1:80 ESTABLISHED ->
/// FIN_WAIT1`: one raw event.
pub fn write_event_line(
    out: &mut impl Write,
    e: &FlowEvent,
    netns_name: &str,
    style: Style,
) -> io::Result<()> {
    let who = if e.pid == 0 {
        "-".to_string()
    } else {
        format!("{}[{}]", e.comm, e.pid)
    };
    let what = match e.kind {
        FlowEventKind::State => format!(
            "{} -> {}",
            e.old_state.map_or("?", |s| s.name()),
            e.new_state.map_or("?", |s| s.name())
        ),
        FlowEventKind::ResetSent => "RST sent".into(),
        FlowEventKind::ResetReceived => "RST received".into(),
        FlowEventKind::ConnectFailed => {
            format!("connect() failed: {}", errno_name(e.errno.unwrap_or(-1)))
        }
        FlowEventKind::Accepted => "accepted".into(),
    };
    let paint = match e.kind {
        FlowEventKind::ResetSent | FlowEventKind::ResetReceived => Some(Paint::Yellow),
        FlowEventKind::ConnectFailed => Some(Paint::Red),
        _ => None,
    };
    let mut w = Vec::new();
    style.cell(&mut w, &what, 0, false, paint)?;
    write!(
        out,
        "{:>14.6} {who} {netns_name} {} > {} ",
        e.monotonic_ns as f64 / 1e9,
        e.local,
        e.remote
    )?;
    out.write_all(&w)?;
    if let Some(us) = e.lifetime_us {
        write!(out, " (lived {})", lifetime_exact(us))?;
    }
    out.write_all(b"\n")
}

fn lifetime_exact(us: u64) -> String {
    if us < 1000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1000.0)
    } else {
        crate::model::units::human_duration_ms(us / 1000)
    }
}

// ---- JSON ----

#[derive(Serialize)]
struct JsonNetns<'a> {
    inode: u64,
    name: &'a str,
}

/// Counts with their rates over the interval.
fn rated<'a>(c: &'a FlowCounts, interval: &FlowInterval) -> RatedCounts<'a> {
    RatedCounts::new(c, interval.duration_ms)
}

#[derive(Serialize)]
struct JsonFlow<'a> {
    /// 0: not known.
    pid: u32,
    comm: &'a str,
    netns: JsonNetns<'a>,
    direction: Direction,
    /// Outgoing: the destination; null for incoming.
    remote: Option<String>,
    /// Incoming: the listening port; null for outgoing.
    local_port: Option<u16>,
    #[serde(flatten)]
    counts: RatedCounts<'a>,
}

fn json_flows(interval: &FlowInterval) -> Vec<JsonFlow<'_>> {
    interval
        .flows
        .iter()
        .map(|r| JsonFlow {
            pid: r.key.pid,
            comm: &r.comm,
            netns: JsonNetns {
                inode: r.key.netns,
                name: &r.netns_name,
            },
            direction: r.key.direction,
            remote: match r.key.peer {
                FlowPeer::Remote(e) => Some(e.to_string()),
                FlowPeer::ListeningPort(_) => None,
            },
            local_port: match r.key.peer {
                FlowPeer::Remote(_) => None,
                FlowPeer::ListeningPort(p) => Some(p),
            },
            counts: rated(&r.counts, interval),
        })
        .collect()
}

#[derive(Serialize)]
struct IntervalLine<'a> {
    schema_version: u32,
    command: &'static str,
    record: &'static str,
    start_ms: u64,
    duration_ms: u64,
    flows: Vec<JsonFlow<'a>>,
    totals: RatedCounts<'a>,
    losses: &'a TraceLosses,
}

/// One JSON line for an interval.
pub fn write_interval_json(out: &mut impl Write, interval: &FlowInterval) -> io::Result<()> {
    let line = IntervalLine {
        schema_version: JSON_SCHEMA_VERSION,
        command: "trace",
        record: "interval",
        start_ms: interval.start_ms,
        duration_ms: interval.duration_ms,
        flows: json_flows(interval),
        totals: rated(&interval.totals, interval),
        losses: &interval.losses,
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

#[derive(Serialize)]
struct JsonBpf<'a> {
    stats_enabled: bool,
    programs: &'a [ProgramCost],
}

#[derive(Serialize)]
struct SummaryLine<'a> {
    schema_version: u32,
    command: &'static str,
    record: &'static str,
    duration_ms: u64,
    flows: Vec<JsonFlow<'a>>,
    totals: RatedCounts<'a>,
    losses: &'a TraceLosses,
    bpf: JsonBpf<'a>,
    notices: &'a [Notice],
}

/// The JSON line that ends a run.
pub fn write_summary_json(out: &mut impl Write, s: &TraceSummary) -> io::Result<()> {
    let line = SummaryLine {
        schema_version: JSON_SCHEMA_VERSION,
        command: "trace",
        record: "summary",
        duration_ms: s.flows.duration_ms,
        flows: json_flows(&s.flows),
        totals: rated(&s.flows.totals, &s.flows),
        losses: &s.flows.losses,
        bpf: JsonBpf {
            stats_enabled: s.bpf_stats_enabled,
            programs: &s.programs,
        },
        notices: &s.notices,
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

#[derive(Serialize)]
struct EventLine<'a> {
    schema_version: u32,
    command: &'static str,
    record: &'static str,
    #[serde(flatten)]
    event: &'a FlowEvent,
    netns_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    errno_name: Option<String>,
}

/// One JSON line for a raw event.
pub fn write_event_json(out: &mut impl Write, e: &FlowEvent, netns_name: &str) -> io::Result<()> {
    let line = EventLine {
        schema_version: JSON_SCHEMA_VERSION,
        command: "trace",
        record: "event",
        event: e,
        netns_name,
        errno_name: e.errno.map(errno_name),
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, FlowKey};
    use std::net::{IpAddr, Ipv4Addr};

    fn interval() -> FlowInterval {
        let mut c = FlowCounts {
            opened: 410,
            closed_local: 400,
            closed_peer: 2,
            ..FlowCounts::default()
        };
        c.connect_failures.eaddrnotavail = 12;
        c.lifetimes.buckets[7] = 402;
        c.lifetimes.count = 402;
        let key = FlowKey {
            pid: 812,
            netns: 4026531840,
            direction: Direction::Active,
            peer: FlowPeer::Remote(Endpoint::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)), 8080)),
        };
        FlowInterval {
            start_ms: 0,
            duration_ms: 2000,
            flows: vec![FlowRow {
                key,
                comm: "python3".into(),
                netns_name: "host".into(),
                counts: c,
            }],
            totals: c,
            losses: TraceLosses::default(),
        }
    }

    #[test]
    fn table_shows_rates_closer_lifetimes_and_failures() {
        let mut out = Vec::new();
        let view = TableView {
            top: 10,
            namespaces: false,
        };
        write_table(&mut out, &interval(), view, Style { color: false }).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        let row = text.lines().nth(1).expect("a row");
        for want in [
            "812",
            "python3",
            "out",
            "10.0.0.5:8080",
            "205",
            "201",
            "local 100%",
            "≤128µs",
            "12 EADDRNOTAVAIL",
        ] {
            assert!(row.contains(want), "{want:?} missing in {row:?}");
        }
    }

    #[test]
    fn interval_json_has_rates_and_errno_names() {
        let mut out = Vec::new();
        write_interval_json(&mut out, &interval()).expect("write");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["record"], "interval");
        assert_eq!(v["schema_version"], JSON_SCHEMA_VERSION);
        let f = &v["flows"][0];
        assert_eq!(f["pid"], 812);
        assert_eq!(f["remote"], "10.0.0.5:8080");
        assert_eq!(f["local_port"], serde_json::Value::Null);
        assert_eq!(f["opened_per_s"], 205.0);
        assert_eq!(f["closed"]["local"], 400);
        assert_eq!(f["closer"], "local");
        assert_eq!(f["connect_failures"]["EADDRNOTAVAIL"], 12);
        assert_eq!(f["lifetimes"]["p50_us"], 128);
        assert_eq!(f["netns"]["name"], "host");
    }

    #[test]
    fn small_numbers_read_well() {
        assert_eq!(rate(410.2), "410");
        assert_eq!(rate(12.34), "12.3");
        assert_eq!(rate(0.0), "0.0");
        assert_eq!(rate(0.01), "<0.1");
        assert_eq!(lifetime(Some(128)), "≤128µs");
        assert_eq!(lifetime(Some(4096)), "≤4.1ms");
        assert_eq!(lifetime(None), "-");
        let f = ConnectFailures {
            econnrefused: 3,
            etimedout: 1,
            other: 1,
            ..ConnectFailures::default()
        };
        assert_eq!(failures(&f), "3 ECONNREFUSED +2");
    }
}
