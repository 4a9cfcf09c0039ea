//! `tcpdoctor diff`: the two recordings side by side, human and JSON.

use std::io::{self, Write};

use serde::Serialize;

use super::{Paint, Style, Table, JSON_SCHEMA_VERSION};
use crate::model::diff::{DiffReport, FindingRef, GroupDelta, RateDelta};
use crate::model::{StateCounts, TcpState};

fn signed(before: u64, after: u64) -> (String, Option<Paint>) {
    match after.cmp(&before) {
        std::cmp::Ordering::Equal => ("0".into(), None),
        std::cmp::Ordering::Greater => (format!("+{}", after - before), Some(Paint::Red)),
        std::cmp::Ordering::Less => (format!("-{}", before - after), Some(Paint::Green)),
    }
}

/// States that are non-zero on either side of any of `rows`.
fn states_in(rows: &[(&StateCounts, &StateCounts)]) -> Vec<TcpState> {
    TcpState::ALL
        .into_iter()
        .filter(|s| rows.iter().any(|(b, a)| b.get(*s) > 0 || a.get(*s) > 0))
        .collect()
}

fn group_table(
    out: &mut impl Write,
    title: &str,
    rows: &[GroupDelta],
    rest: &Option<GroupDelta>,
    style: Style,
) -> io::Result<()> {
    let all: Vec<&GroupDelta> = rows.iter().chain(rest.iter()).collect();
    if all.is_empty() {
        return Ok(());
    }
    let pairs: Vec<(&StateCounts, &StateCounts)> =
        all.iter().map(|g| (&g.before, &g.after)).collect();
    let states = states_in(&pairs);
    let mut cols: Vec<(String, bool)> = vec![(title.to_uppercase(), false)];
    cols.push(("TOTAL".into(), true));
    for s in &states {
        cols.push((s.name().to_string(), true));
    }
    let col_refs: Vec<(&str, bool)> = cols.iter().map(|(h, r)| (h.as_str(), *r)).collect();
    let mut t = Table::new(&col_refs);
    for g in &all {
        let mut label = g.key.clone();
        if g.pids_before != g.pids_after && !(g.pids_before.is_empty() && g.pids_after.is_empty()) {
            label = format!(
                "{label} (pid {} -> {})",
                pid_list(&g.pids_before),
                pid_list(&g.pids_after)
            );
        } else if !g.pids_after.is_empty() {
            label = format!("{label} (pid {})", pid_list(&g.pids_after));
        }
        let mut cells = vec![(label, None)];
        let cell = |b: u64, a: u64| -> (String, Option<Paint>) {
            let (d, p) = signed(b, a);
            (format!("{b} -> {a} ({d})"), if b == a { None } else { p })
        };
        cells.push(cell(g.before.total(), g.after.total()));
        for s in &states {
            cells.push(cell(g.before.get(*s), g.after.get(*s)));
        }
        t.row(cells);
    }
    t.write(out, style)?;
    writeln!(out)
}

fn pid_list(p: &[u32]) -> String {
    match p {
        [] => "-".into(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first} +{}", rest.len()),
    }
}

fn finding_line(f: &FindingRef) -> String {
    let ns = if f.namespaces.is_empty() {
        String::new()
    } else {
        format!("  in {}", f.namespaces.join(", "))
    };
    format!(
        "{:<8}  {}  [{}]{ns}",
        f.severity.name().to_uppercase(),
        f.title,
        f.rule_id
    )
}

fn rate(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |v| format!("{v:.1}/s"))
}

pub fn write_human(out: &mut impl Write, r: &DiffReport, style: Style) -> io::Result<()> {
    let mut head = Vec::new();
    style.cell(&mut head, "tcpdoctor diff", 0, false, Some(Paint::Bold))?;
    out.write_all(&head)?;
    writeln!(out, "\n  before: {}", r.before.origin)?;
    writeln!(out, "  after:  {}\n", r.after.origin)?;

    let mut t = Table::new(&[
        ("STATE", false),
        ("BEFORE", true),
        ("AFTER", true),
        ("CHANGE", true),
    ]);
    for s in TcpState::ALL {
        let (b, a) = (r.states_before.get(s), r.states_after.get(s));
        if b == 0 && a == 0 {
            continue;
        }
        t.row(vec![
            (s.name().to_string(), None),
            (b.to_string(), None),
            (a.to_string(), None),
            signed(b, a),
        ]);
    }
    let (b, a) = (r.states_before.total(), r.states_after.total());
    t.row(vec![
        ("TOTAL".into(), None),
        (b.to_string(), None),
        (a.to_string(), None),
        signed(b, a),
    ]);
    t.write(out, style)?;
    writeln!(out)?;
    group_table(out, "process", &r.processes, &r.processes_rest, style)?;
    group_table(
        out,
        "destination",
        &r.destinations,
        &r.destinations_rest,
        style,
    )?;

    let f = &r.findings;
    writeln!(
        out,
        "Findings: {} resolved, {} new, {} unchanged",
        f.resolved.len(),
        f.new.len(),
        f.unchanged.len()
    )?;
    for (label, paint, list) in [
        ("resolved ", Paint::Green, &f.resolved),
        ("new      ", Paint::Red, &f.new),
    ] {
        for x in list {
            let mut l = Vec::new();
            style.cell(&mut l, label, 0, false, Some(paint))?;
            out.write_all(b"  ")?;
            out.write_all(&l)?;
            writeln!(out, " {}", finding_line(x))?;
        }
    }
    for p in &f.unchanged {
        writeln!(out, "  unchanged  {}", finding_line(&p.after))?;
    }
    if !r.rates.is_empty() {
        writeln!(out)?;
        let mut t = Table::new(&[("RATE", false), ("BEFORE", true), ("AFTER", true)]);
        for RateDelta {
            name,
            before,
            after,
        } in &r.rates
        {
            t.row(vec![
                (name.clone(), None),
                (rate(*before), None),
                (rate(*after), None),
            ]);
        }
        t.write(out, style)?;
    }
    Ok(())
}

#[derive(Serialize)]
struct Json<'a> {
    schema_version: u32,
    command: &'static str,
    #[serde(flatten)]
    report: &'a DiffReport,
}

pub fn write_json(out: &mut impl Write, r: &DiffReport) -> io::Result<()> {
    serde_json::to_writer_pretty(
        &mut *out,
        &Json {
            schema_version: JSON_SCHEMA_VERSION,
            command: "diff",
            report: r,
        },
    )?;
    writeln!(out)
}
