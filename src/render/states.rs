//! `tcpdoctor states`: the per-state table, optional groups, and its JSON.

use std::io::{self, Write};

use serde::Serialize;

use super::{state_paint, JsonCounts, Paint, Style, Table, JSON_SCHEMA_VERSION};
use crate::model::{
    GroupBy, GroupKey, Groups, NetnsInfo, Notice, Source, StateCounts, StateSet, StatesReport,
    TcpState,
};

pub fn write_human(out: &mut impl Write, r: &StatesReport, style: Style) -> io::Result<()> {
    let mut t = Table::new(&[
        ("STATE", false),
        ("IPV4", true),
        ("IPV6", true),
        ("TOTAL", true),
    ]);
    let total = r.summary.total();
    for s in r.states.iter() {
        let n = total.get(s);
        let paint = if n > 0 {
            state_paint(s)
        } else {
            Some(Paint::Dim)
        };
        t.row(vec![
            (s.name().to_string(), paint),
            (r.summary.ipv4.get(s).to_string(), None),
            (r.summary.ipv6.get(s).to_string(), None),
            (n.to_string(), None),
        ]);
    }
    t.row(vec![
        ("TOTAL".to_string(), Some(Paint::Bold)),
        (r.summary.ipv4.total().to_string(), Some(Paint::Bold)),
        (r.summary.ipv6.total().to_string(), Some(Paint::Bold)),
        (total.total().to_string(), Some(Paint::Bold)),
    ]);
    t.write(out, style)?;
    if r.namespaces.len() > 1 && r.groups.as_ref().is_none_or(|g| g.by != GroupBy::Netns) {
        writeln!(
            out,
            "(summed over {} network namespaces{}; --by netns shows each)",
            r.namespaces.len(),
            if r.netns_all {
                ", all on this host"
            } else {
                ""
            }
        )?;
    }
    if let Some(g) = &r.groups {
        out.write_all(b"\n")?;
        write_groups(out, g, r.states, style)?;
    }
    Ok(())
}

/// One row per key. Only state columns that are non-zero somewhere are shown, so the
/// table fits a terminal; JSON always has every state.
fn write_groups(out: &mut impl Write, g: &Groups, asked: StateSet, style: Style) -> io::Result<()> {
    let mut cols: Vec<TcpState> = asked
        .iter()
        .filter(|s| g.rows.iter().any(|r| r.counts.get(*s) > 0) || g.rest.get(*s) > 0)
        .collect();
    if cols.is_empty() {
        cols = asked.iter().take(1).collect();
    }
    let key_header = g.by.name().to_ascii_uppercase();
    let mut headers: Vec<(&str, bool)> = vec![(key_header.as_str(), false), ("TOTAL", true)];
    headers.extend(cols.iter().map(|s| (s.name(), true)));
    let mut t = Table::new(&headers);
    let mut add = |label: String, counts: &StateCounts| {
        let mut row = vec![
            (label, None),
            (counts.total().to_string(), Some(Paint::Bold)),
        ];
        for s in &cols {
            let n = counts.get(*s);
            row.push((
                n.to_string(),
                if n > 0 {
                    state_paint(*s)
                } else {
                    Some(Paint::Dim)
                },
            ));
        }
        t.row(row);
    };
    for r in &g.rows {
        add(r.label(), &r.counts);
    }
    if g.total_groups > g.rows.len() {
        let label = format!(
            "({} more; --top 0 shows all)",
            g.total_groups - g.rows.len()
        );
        add(label, &g.rest);
    }
    t.write(out, style)
}

#[derive(Serialize)]
struct JsonDoc<'a> {
    schema_version: u32,
    command: &'static str,
    source: Source,
    states: Vec<TcpState>,
    counts: JsonCounts,
    #[serde(skip_serializing_if = "Option::is_none")]
    groups: Option<JsonGroups>,
    netns_scope: &'static str,
    namespaces: Vec<JsonNamespace<'a>>,
    notices: &'a [Notice],
}

#[derive(Serialize)]
struct JsonNamespace<'a> {
    #[serde(flatten)]
    info: &'a NetnsInfo,
    counts: JsonCounts,
}

#[derive(Serialize)]
struct JsonGroups {
    by: &'static str,
    total_groups: usize,
    rows: Vec<JsonGroupRow>,
    rest: StateCounts,
}

#[derive(Serialize)]
struct JsonGroupRow {
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<u64>,
    counts: StateCounts,
}

pub fn write_json(out: &mut impl Write, r: &StatesReport) -> io::Result<()> {
    let groups = r.groups.as_ref().map(|g| JsonGroups {
        by: g.by.name(),
        total_groups: g.total_groups,
        rest: g.rest,
        rows: g
            .rows
            .iter()
            .map(|row| {
                let (key, pid, address, port, netns) = match row.key {
                    GroupKey::Process(pid) => (pid.to_string(), Some(pid), None, None, None),
                    GroupKey::NoDescriptor => ("no_fd".to_string(), None, None, None, None),
                    GroupKey::OwnerUnknown => ("owner_unknown".to_string(), None, None, None, None),
                    GroupKey::Peer(ip) => (ip.to_string(), None, Some(ip.to_string()), None, None),
                    GroupKey::Port(p) => (p.to_string(), None, None, Some(p), None),
                    GroupKey::Netns(inode) => (
                        row.name.clone().unwrap_or_else(|| inode.to_string()),
                        None,
                        None,
                        None,
                        Some(inode),
                    ),
                };
                JsonGroupRow {
                    key,
                    pid,
                    comm: match row.key {
                        GroupKey::Process(_) => row.name.clone(),
                        _ => None,
                    },
                    address,
                    port,
                    netns,
                    counts: row.counts,
                }
            })
            .collect(),
    });
    let doc = JsonDoc {
        schema_version: JSON_SCHEMA_VERSION,
        command: "states",
        source: r.source,
        states: r.states.iter().collect(),
        counts: JsonCounts::from(&r.summary),
        groups,
        netns_scope: if r.netns_all { "all" } else { "selected" },
        namespaces: r
            .namespaces
            .iter()
            .map(|n| JsonNamespace {
                info: &n.info,
                counts: JsonCounts::from(&n.summary),
            })
            .collect(),
        notices: &r.notices,
    };
    serde_json::to_writer_pretty(&mut *out, &doc).map_err(io::Error::from)?;
    out.write_all(b"\n")
}
