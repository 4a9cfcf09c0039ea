//! `tcpdoctor check`: the report for a terminal (state line, findings worst first, each
//! with evidence, why and fix) and its JSON.

use std::io::{self, Write};

use serde::Serialize;

use super::{state_paint, Paint, Style, JSON_SCHEMA_VERSION};
use crate::cmd::check::CheckReport;
use crate::model::{Finding, Notice, Severity, StateCounts, TcpState};

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
    let snap = &r.snapshot;
    let total = snap.summary.total();
    let source = snap.source.map_or("?", |s| s.name());
    let interval = snap
        .counters
        .as_ref()
        .map_or(0.0, |c| c.interval_ms as f64 / 1000.0);
    let mut head = Vec::new();
    style.cell(&mut head, "tcpdoctor check", 0, false, Some(Paint::Bold))?;
    out.write_all(&head)?;
    writeln!(
        out,
        " on {}: {} TCP sockets (sockets via {source}, counters over {interval:.1} s)",
        if r.hostname.is_empty() {
            "this host"
        } else {
            &r.hostname
        },
        total.total()
    )?;
    write_state_line(out, &total, style)?;
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
    if !snap.missing.is_empty() {
        out.write_all(b"\n")?;
        writeln!(out, "Evidence not available:")?;
        for n in &snap.missing {
            wrap(out, &n.message, "    ", "  - ")?;
        }
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
        wrap(out, step, "            ", first)?;
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
    findings: &'a [Finding],
    missing_evidence: &'a [Notice],
}

#[derive(Serialize)]
struct JsonCounts {
    ipv4: StateCounts,
    ipv6: StateCounts,
    total: StateCounts,
}

pub fn status(findings: &[Finding]) -> Option<Severity> {
    findings.iter().map(|f| f.severity).max()
}

pub fn write_json(out: &mut impl Write, r: &CheckReport) -> io::Result<()> {
    let s = &r.snapshot;
    let doc = JsonReport {
        schema_version: JSON_SCHEMA_VERSION,
        command: "check",
        hostname: &r.hostname,
        taken_at_unix_ms: s.taken_at_unix_ms,
        source: s.source.map(|x| x.name()),
        status: status(&r.findings).map_or("ok", |v| v.name()),
        counts: JsonCounts {
            ipv4: s.summary.ipv4,
            ipv6: s.summary.ipv6,
            total: s.summary.total(),
        },
        counter_interval_ms: s.counters.as_ref().map(|c| c.interval_ms),
        findings: &r.findings,
        missing_evidence: &s.missing,
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
