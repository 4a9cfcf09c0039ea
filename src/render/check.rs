//! `tcpdoctor check`: the report for a terminal (state line, findings worst first, each
//! with evidence, why and fix) and its JSON.

use std::io::{self, Write};

use serde::Serialize;

use super::{state_paint, JsonCounts, Paint, Style, JSON_SCHEMA_VERSION};
use crate::model::{CheckReport, Finding, Notice, Severity, Snapshot, StateCounts, TcpState};

/// Evidence lines shown per finding without --verbose.
const EVIDENCE_SHOWN: usize = 4;
const WIDTH: usize = 100;

fn severity_paint(s: Severity) -> Paint {
    match s {
        Severity::Critical => Paint::Red,
        Severity::Warning => Paint::Yellow,
        Severity::Info => Paint::Green,
    }
}

/// Greedy word wrap; each line prefixed with `indent`.
fn wrap(out: &mut impl Write, text: &str, indent: &str, first_indent: &str) -> io::Result<()> {
    let mut line = String::new();
    let mut prefix = first_indent;
    for word in text.split_whitespace() {
        if !line.is_empty() && prefix.len() + line.len() + 1 + word.len() > WIDTH {
            writeln!(out, "{prefix}{line}")?;
            line.clear();
            prefix = indent;
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        writeln!(out, "{prefix}{line}")?;
    }
    Ok(())
}

pub fn write_human(
    out: &mut impl Write,
    r: &CheckReport,
    style: Style,
    verbose: bool,
) -> io::Result<()> {
    let empty = Snapshot::default();
    let snap = r.host.primary().unwrap_or(&empty);
    let total = r.host.summary().total();
    let source = snap.source.map_or("?", |s| s.name());
    let interval = snap
        .counters
        .as_ref()
        .map_or(0.0, |c| c.interval_ms as f64 / 1000.0);
    let n_ns = r.host.namespaces.len();
    let scope = if r.host.all_namespaces {
        format!(" in {n_ns} network namespaces (all on this host)")
    } else if n_ns > 1 {
        format!(" in {n_ns} network namespaces")
    } else {
        match &snap.netns {
            Some(ns) if !ns.initial => format!(" in network namespace {}", ns.name),
            _ => String::new(),
        }
    };
    let mut head = Vec::new();
    style.cell(&mut head, "tcpdoctor check", 0, false, Some(Paint::Bold))?;
    out.write_all(&head)?;
    writeln!(
        out,
        " on {}: {} TCP sockets{scope} (sockets via {source}, counters over {interval:.1} s)",
        if r.hostname.is_empty() {
            "this host"
        } else {
            &r.hostname
        },
        total.total()
    )?;
    write_state_line(out, &total, style)?;
    if n_ns > 1 {
        write_namespaces(out, r, style, verbose)?;
    }
    out.write_all(b"\n")?;

    if r.findings.is_empty() {
        writeln!(out, "No problems found.")?;
    }
    for f in &r.findings {
        write_finding(out, f, style, verbose)?;
    }

    let count = |s: Severity| r.findings.iter().filter(|f| f.severity == s).count();
    let (c, w, i) = (
        count(Severity::Critical),
        count(Severity::Warning),
        count(Severity::Info),
    );
    writeln!(out, "{c} critical, {w} warning, {i} info.")?;
    if !verbose && r.findings.iter().any(|f| f.evidence.len() > EVIDENCE_SHOWN) {
        writeln!(
            out,
            "More evidence: tcpdoctor check --verbose; for scripts: --json."
        )?;
    }
    let missing = r.host.all_missing();
    if !missing.is_empty() {
        out.write_all(b"\n")?;
        writeln!(out, "Evidence not available:")?;
        for n in &missing {
            wrap(out, &n.message, "    ", "  - ")?;
        }
    }
    Ok(())
}

/// Namespaces shown without --verbose.
const NAMESPACES_SHOWN: usize = 10;

/// One line per namespace, most sockets first: name, sockets, the states that matter
/// most, and how many findings are about it.
fn write_namespaces(
    out: &mut impl Write,
    r: &CheckReport,
    style: Style,
    verbose: bool,
) -> io::Result<()> {
    fn name(s: &Snapshot) -> Option<&str> {
        s.netns.as_ref().map(|n| n.name.as_str())
    }
    let mut rows: Vec<&Snapshot> = r.host.namespaces.iter().collect();
    rows.sort_by(|a, b| {
        b.summary
            .total()
            .total()
            .cmp(&a.summary.total().total())
            .then_with(|| name(a).cmp(&name(b)))
    });
    let shown = if verbose {
        rows.len()
    } else {
        rows.len().min(NAMESPACES_SHOWN)
    };
    let mut t = super::Table::new(&[
        ("NETNS", false),
        ("INODE", true),
        ("SOCKETS", true),
        ("ESTAB", true),
        ("CLOSE_WAIT", true),
        ("TIME_WAIT", true),
        ("FINDINGS", true),
    ]);
    for s in &rows[..shown] {
        let c = s.summary.total();
        let (name, inode) = s
            .netns
            .as_ref()
            .map_or(("?".to_string(), 0), |n| (n.name.clone(), n.inode));
        let findings = r
            .findings
            .iter()
            .filter(|f| f.namespaces.iter().any(|n| n.inode == inode))
            .count();
        t.row(vec![
            (name, None),
            (inode.to_string(), None),
            (c.total().to_string(), None),
            (c.get(TcpState::Established).to_string(), None),
            (c.get(TcpState::CloseWait).to_string(), None),
            (c.get(TcpState::TimeWait).to_string(), None),
            (findings.to_string(), None),
        ]);
    }
    out.write_all(b"\n")?;
    t.write(out, style)?;
    if shown < rows.len() {
        writeln!(
            out,
            "  ... {} more namespaces (--verbose, or tcpdoctor states --netns all --by netns)",
            rows.len() - shown
        )?;
    }
    Ok(())
}

/// `ESTABLISHED 12  TIME_WAIT 40 ...`: non-zero states only, kernel order.
fn write_state_line(out: &mut impl Write, c: &StateCounts, style: Style) -> io::Result<()> {
    let mut first = true;
    for s in TcpState::ALL {
        let n = c.get(s);
        if n == 0 {
            continue;
        }
        out.write_all(if first { b"  " } else { b"   " })?;
        first = false;
        style.cell(out, s.name(), 0, false, state_paint(s))?;
        write!(out, " {n}")?;
    }
    if first {
        out.write_all(b"  (no TCP sockets)")?;
    }
    out.write_all(b"\n")
}

fn write_finding(out: &mut impl Write, f: &Finding, style: Style, verbose: bool) -> io::Result<()> {
    let label = f.severity.name().to_ascii_uppercase();
    style.cell(out, &label, 8, false, Some(severity_paint(f.severity)))?;
    out.write_all(b" ")?;
    style.cell(out, &f.title, 0, false, Some(Paint::Bold))?;
    writeln!(out, "  [{}]", f.rule_id)?;
    for ns in &f.namespaces {
        writeln!(out, "         netns: {} (net:[{}])", ns.name, ns.inode)?;
    }
    let shown = if verbose {
        f.evidence.len()
    } else {
        f.evidence.len().min(EVIDENCE_SHOWN)
    };
    for e in &f.evidence[..shown] {
        writeln!(out, "         {}: {}", e.label, e.value)?;
    }
    if shown < f.evidence.len() {
        writeln!(
            out,
            "         ... {} more (--verbose)",
            f.evidence.len() - shown
        )?;
    }
    wrap(out, &f.why, "          ", "    why:  ")?;
    for (i, step) in f.fix.iter().enumerate() {
        let first = if i == 0 {
            "    fix:  - "
        } else {
            "          - "
        };
        wrap(out, &step.text, "            ", first)?;
        if let Some(cmd) = &step.command {
            writeln!(out, "              $ {cmd}")?;
        }
    }
    out.write_all(b"\n")
}

#[derive(Serialize)]
struct JsonReport<'a> {
    schema_version: u32,
    command: &'static str,
    hostname: &'a str,
    taken_at_unix_ms: u64,
    source: Option<&'static str>,
    /// Highest severity found: "ok" when nothing fired.
    status: &'static str,
    counts: JsonCounts,
    counter_interval_ms: Option<u64>,
    /// "all": every namespace on the host; "selected": the ones --netns named (or only
    /// the current one).
    netns_scope: &'static str,
    namespaces: Vec<JsonNamespace<'a>>,
    findings: &'a [Finding],
    missing_evidence: Vec<Notice>,
}

#[derive(Serialize)]
struct JsonNamespace<'a> {
    #[serde(flatten)]
    info: Option<&'a crate::model::NetnsInfo>,
    source: Option<&'static str>,
    counts: JsonCounts,
    close_wait: crate::model::CloseWaitRecheck,
    detached_tcp_fds: Option<crate::model::DetachedFds>,
}

pub fn status(findings: &[Finding]) -> Option<Severity> {
    findings.iter().map(|f| f.severity).max()
}

pub fn write_json(out: &mut impl Write, r: &CheckReport) -> io::Result<()> {
    let empty = Snapshot::default();
    let s = r.host.primary().unwrap_or(&empty);
    let total = r.host.summary();
    let doc = JsonReport {
        schema_version: JSON_SCHEMA_VERSION,
        command: "check",
        hostname: &r.hostname,
        taken_at_unix_ms: s.taken_at_unix_ms,
        source: s.source.map(|x| x.name()),
        status: status(&r.findings).map_or("ok", |v| v.name()),
        counts: JsonCounts::from(&total),
        counter_interval_ms: s.counters.as_ref().map(|c| c.interval_ms),
        netns_scope: if r.host.all_namespaces {
            "all"
        } else {
            "selected"
        },
        namespaces: r
            .host
            .namespaces
            .iter()
            .map(|n| JsonNamespace {
                info: n.netns.as_ref(),
                source: n.source.map(|x| x.name()),
                counts: JsonCounts::from(&n.summary),
                close_wait: n.close_wait_recheck(),
                detached_tcp_fds: n.detached_tcp_fds(),
            })
            .collect(),
        findings: &r.findings,
        missing_evidence: r.host.all_missing(),
    };
    serde_json::to_writer_pretty(&mut *out, &doc).map_err(io::Error::from)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_breaks_long_text_and_indents() {
        let mut out = Vec::new();
        let text = "word ".repeat(40);
        wrap(&mut out, &text, "  ", "> ").expect("write");
        let s = String::from_utf8(out).expect("utf8");
        assert!(s.lines().count() > 1);
        assert!(s.lines().all(|l| l.len() <= WIDTH));
        assert!(s.starts_with("> word"));
        assert!(s.lines().nth(1).is_some_and(|l| l.starts_with("  word")));
    }
}
