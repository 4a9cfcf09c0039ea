//! `tcpdoctor check`: the report for a terminal and its JSON.
//!
//! The human report puts the answer first: a header with the totals and whether the
//! view is complete (and, when not, what was not seen), the state counts, then one line
//! per finding, worst and live first. Details (evidence, why, fix) follow for critical
//! and warning findings; info findings stay one line unless `--verbose`. What applies to
//! several findings is said once, in the notes at the end. Lines that would run past
//! the terminal are cut with an ellipsis, never wrapped mid-figure; commands are never
//! cut, since they are there to be pasted.

use std::collections::BTreeSet;
use std::io::{self, Write};

use serde::Serialize;

use super::{state_paint, JsonCounts, Paint, Style, JSON_SCHEMA_VERSION};
use crate::model::units::{compact_list, count, ellipsize, ellipsize_words};
use crate::model::{CheckReport, Finding, Notice, Severity, Snapshot, StateCounts, TcpState};

/// Evidence lines shown per finding without --verbose.
const EVIDENCE_SHOWN: usize = 4;
/// Fix steps shown per finding without --verbose.
const STEPS_SHOWN: usize = 3;
/// Namespace names on a finding's line; the rest are counted.
const NAMES_SHOWN: usize = 2;
/// Namespace names in a finding's details without --verbose.
const NAMES_IN_DETAILS: usize = 6;
/// Room kept for the namespaces on a finding's line when the title is cut.
const NS_MIN: usize = 32;
/// The shortest a title is cut to on its line before the rule id leaves the line.
const TITLE_MIN: usize = 48;
/// Lines of `why` shown without --verbose.
const WHY_LINES: usize = 2;
/// The narrowest layout: below this, lines are cut as they come.
const MIN_WIDTH: usize = 40;
/// Width of `lint`'s full findings (a file-oriented listing, printed the same on a
/// terminal and in a pipe).
const LINT_WIDTH: usize = 100;
/// Width of the severity column.
const SEVERITY_COLUMN: usize = 10;
/// Indent of evidence and namespaces under a finding's title.
const DETAIL: &str = "          ";

/// How the human report is laid out: colors, detail, and the terminal width that
/// lines are cut to (100 when stdout is not a terminal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanView {
    pub style: Style,
    pub verbose: bool,
    pub width: usize,
}

fn severity_paint(s: Severity) -> Paint {
    match s {
        Severity::Critical => Paint::Red,
        Severity::Warning => Paint::Yellow,
        Severity::Info => Paint::Green,
    }
}

/// Greedy word wrap to `width`; the first line starts with `first_indent`, the others
/// with `indent`. A word longer than a line gets a line of its own.
fn wrap(
    out: &mut impl Write,
    text: &str,
    indent: &str,
    first_indent: &str,
    width: usize,
) -> io::Result<()> {
    let mut line = String::new();
    let mut prefix = first_indent;
    for word in text.split_whitespace() {
        let used = prefix.chars().count() + line.chars().count();
        if !line.is_empty() && used + 1 + word.chars().count() > width {
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

/// "2 warnings" / "1 critical" / "3 info": critical and info take no plural.
fn severity_count(s: Severity, n: usize) -> String {
    match s {
        Severity::Warning => count(n as u64, "warning", "warnings"),
        Severity::Critical | Severity::Info => format!("{n} {}", s.name()),
    }
}

/// `5 findings (1 critical, 2 warnings, 2 info)`, severities that occur only.
fn findings_total(findings: &[Finding]) -> String {
    let parts: Vec<String> = [Severity::Critical, Severity::Warning, Severity::Info]
        .into_iter()
        .filter_map(|s| {
            let n = findings.iter().filter(|f| f.severity == s).count();
            (n > 0).then(|| severity_count(s, n))
        })
        .collect();
    format!(
        "{} ({})",
        count(findings.len() as u64, "finding", "findings"),
        parts.join(", ")
    )
}

/// The names of the namespaces a finding is about.
fn names(f: &Finding) -> Vec<String> {
    f.namespaces.iter().map(|n| n.name.clone()).collect()
}

pub fn write_human(out: &mut impl Write, r: &CheckReport, view: HumanView) -> io::Result<()> {
    let view = HumanView {
        width: view.width.max(MIN_WIDTH),
        ..view
    };
    write_header(out, r, view)?;
    if !r.findings.is_empty() {
        out.write_all(b"\n")?;
        for f in &r.findings {
            write_finding_line(out, f, view)?;
        }
    }
    // Details: critical and warning findings (all with --verbose), one per kind;
    // findings of a kind already detailed (the same mechanism and fix, other numbers)
    // are counted under it.
    let detailed: Vec<&Finding> = r
        .findings
        .iter()
        .filter(|f| view.verbose || f.severity > Severity::Info)
        .collect();
    let mut hidden = detailed.len() < r.findings.len();
    let mut said = Said::default();
    let mut kinds: Vec<String> = Vec::new();
    for (i, f) in detailed.iter().enumerate() {
        let k = kind(f);
        if !view.verbose && kinds.contains(&k) {
            continue;
        }
        out.write_all(b"\n")?;
        hidden |= write_details(out, f, view, &mut said)?;
        if !view.verbose {
            let alike = detailed[i + 1..].iter().filter(|g| kind(g) == k).count();
            if alike > 0 {
                hidden = true;
                let text = format!(
                    "({} of this kind listed above: the same mechanism and fix with their own numbers; --verbose details each)",
                    count(alike as u64, "more finding", "more findings")
                );
                wrap(out, &text, DETAIL, DETAIL, view.width)?;
            }
            kinds.push(k);
        }
    }
    if view.verbose && r.host.namespaces.len() > 1 {
        write_namespaces(out, r, view.style)?;
    }
    write_notes(out, r, view, hidden)
}

/// What a finding says apart from its numbers and names of processes: 24 processes
/// of one program leaking alike are one kind, detailed once.
fn kind(f: &Finding) -> String {
    fn digits_out(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut in_number = false;
        for c in s.chars() {
            if c.is_ascii_digit() {
                if !in_number {
                    out.push('#');
                }
                in_number = true;
            } else {
                in_number = false;
                out.push(c);
            }
        }
        out
    }
    let mut k = format!("{}|{}|{}", f.rule_id, f.severity.name(), digits_out(&f.why));
    for step in &f.fix {
        k.push('|');
        k.push_str(&digits_out(&step.text));
    }
    k
}

/// The totals, how complete the view is, what was not seen, and the state line.
fn write_header(out: &mut impl Write, r: &CheckReport, view: HumanView) -> io::Result<()> {
    let empty = Snapshot::default();
    let snap = r.host.primary().unwrap_or(&empty);
    let gaps = r.gaps();
    let host = if r.hostname.is_empty() {
        "this host".to_string()
    } else {
        ellipsize(&r.hostname, 32)
    };
    let answer = match (r.findings.is_empty(), gaps.is_empty()) {
        (true, true) => "no problems found, complete view".to_string(),
        (true, false) => "no problem found in what could be seen, INCOMPLETE view".to_string(),
        (false, true) => format!("{}, complete view", findings_total(&r.findings)),
        (false, false) => format!("{}, INCOMPLETE view", findings_total(&r.findings)),
    };
    let mut head = Vec::new();
    view.style
        .cell(&mut head, "tcpdoctor check", 0, false, Some(Paint::Bold))?;
    out.write_all(&head)?;
    writeln!(out, " on {host}: {answer}")?;

    let total = r.host.summary().total();
    let n_ns = r.host.namespaces.len();
    let scope = if r.host.all_namespaces {
        format!(" in all {n_ns} network namespaces")
    } else if n_ns > 1 {
        format!(" in {n_ns} network namespaces")
    } else {
        match &snap.netns {
            Some(ns) if !ns.initial => format!(" in network namespace {}", ns.name),
            _ => " in the host network namespace".to_string(),
        }
    };
    let source = snap.source.map_or("?", |s| s.name());
    let counters = match &snap.counters {
        Some(c) if c.gives_rates() => {
            format!(", counters over {:.1} s", c.interval_ms as f64 / 1000.0)
        }
        Some(_) => ", one counter reading: no rates".to_string(),
        None => String::new(),
    };
    let traced = match &snap.flows {
        Some(_) => ", connections traced",
        None => "",
    };
    let sockets = count(total.total(), "TCP socket", "TCP sockets");
    let line = format!("  {sockets}{scope} (sockets via {source}{counters}{traced})");
    writeln!(out, "{}", ellipsize_words(&line, view.width))?;
    write_state_line(out, &total, view.style)?;
    if !gaps.is_empty() {
        writeln!(out, "  Not seen (--json: missing_evidence):")?;
        for n in &gaps {
            wrap(out, &n.message, "    ", "  - ", view.width)?;
        }
    }
    Ok(())
}

/// `WARNING   title  [rule]  in a, b and 10 more`, cut to the width. When it does not
/// fit, the namespaces give way to their count, then the rule id leaves the line (the
/// details and the JSON keep it) rather than the title shrinking below
/// [`TITLE_MIN`], then title and namespaces are cut between words.
fn write_finding_line(out: &mut impl Write, f: &Finding, view: HumanView) -> io::Result<()> {
    let label = f.severity.name().to_ascii_uppercase();
    let names = names(f);
    let avail = view.width.saturating_sub(SEVERITY_COLUMN);
    let len = |s: &str| s.chars().count();
    let mut rule = format!("  [{}]", f.rule_id);
    let mut ns = if names.is_empty() {
        String::new()
    } else {
        format!("  in {}", compact_list(&names, NAMES_SHOWN))
    };
    let mut title = f.title.clone();
    let fits = |title: &str, rule: &str, ns: &str| len(title) + len(rule) + len(ns) <= avail;
    if !fits(&title, &rule, &ns) && names.len() > 1 {
        ns = format!(
            "  in {}",
            count(names.len() as u64, "namespace", "namespaces")
        );
    }
    if !fits(&title, &rule, &ns) {
        let title_min = len(&title).min(TITLE_MIN);
        let ns_min = len(&ns).min(NS_MIN);
        if title_min + len(&rule) + ns_min > avail {
            rule.clear();
        }
        let ns_room = ns_min.max(avail.saturating_sub(len(&title) + len(&rule)));
        // Names are identifiers: cut by character, so a long one still shows its start.
        ns = ellipsize(&ns, ns_room);
        title = ellipsize_words(&title, avail.saturating_sub(len(&rule) + len(&ns)).max(1));
    }
    view.style.cell(
        out,
        &label,
        SEVERITY_COLUMN,
        false,
        Some(severity_paint(f.severity)),
    )?;
    view.style.cell(out, &title, 0, false, Some(Paint::Bold))?;
    writeln!(out, "{rule}{ns}")
}

/// As many of `names` as fit in `room` characters, the others counted: `a, b and 8 more`.
fn names_fitting(names: &[String], room: usize) -> String {
    (1..=names.len().min(NAMES_IN_DETAILS))
        .rev()
        .map(|k| compact_list(names, k))
        .find(|l| l.chars().count() <= room)
        .unwrap_or_else(|| compact_list(names, 1))
}

/// `text` word-wrapped into lines of at most `width` characters.
fn wrapped(text: &str, width: usize) -> Vec<String> {
    let mut s = String::new();
    // Writing into a String cannot fail.
    let _ = wrap(&mut text_writer(&mut s), text, "", "", width.max(1));
    s.lines().map(str::to_string).collect()
}

/// At most `max` lines of `text` wrapped to `width`, the last one ending with an
/// ellipsis when some were left out. Returns whether some were.
fn write_lines(
    out: &mut impl Write,
    text: &str,
    first: &str,
    indent: &str,
    width: usize,
    max: Option<usize>,
) -> io::Result<bool> {
    let room = width.saturating_sub(indent.chars().count().max(first.chars().count()));
    let lines = wrapped(text, room);
    let keep = max.unwrap_or(lines.len()).min(lines.len());
    let cut = keep < lines.len();
    for (i, l) in lines[..keep].iter().enumerate() {
        let prefix = if i == 0 { first } else { indent };
        if cut && i + 1 == keep {
            // The rest of the text does not fit: end the last line with an ellipsis.
            let rest = lines[i..].join(" ");
            writeln!(out, "{prefix}{}", ellipsize_words(&rest, room))?;
        } else {
            writeln!(out, "{prefix}{l}")?;
        }
    }
    Ok(cut)
}

/// What was already printed in the details of earlier findings: said once.
#[derive(Default)]
struct Said<'a> {
    whys: Vec<(&'a str, &'a Finding)>,
    steps: BTreeSet<&'a str>,
}

/// Evidence, why and fix of one finding; returns whether anything was left out for
/// --verbose. Without --verbose: the first evidence lines, two lines of why, three fix steps of a line each, and every command of those
/// steps in full; a `why` or a step already printed for an earlier finding is referred
/// to, not repeated.
fn write_details<'a>(
    out: &mut impl Write,
    f: &'a Finding,
    view: HumanView,
    said: &mut Said<'a>,
) -> io::Result<bool> {
    let width = view.width;
    let verbose = view.verbose;
    let limit = |n: usize| if verbose { None } else { Some(n) };
    let mut hidden = false;
    let label = f.severity.name().to_ascii_uppercase();
    view.style.cell(
        out,
        &label,
        SEVERITY_COLUMN,
        false,
        Some(severity_paint(f.severity)),
    )?;
    // The whole title, wrapped (its line in the list may have been cut), its rule and
    // the namespaces it is about: every one with --verbose, else as many as fit a line.
    let mut head = format!("{}  [{}]", f.title, f.rule_id);
    if !f.namespaces.is_empty() {
        let names = if verbose {
            f.namespaces
                .iter()
                .map(|n| format!("{} (net:[{}])", n.name, n.inode))
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            let list = names_fitting(&names(f), width - SEVERITY_COLUMN - 3);
            hidden |= list.contains(" more");
            list
        };
        head.push_str("  in ");
        head.push_str(&names);
    }
    for (i, l) in wrapped(&head, width - SEVERITY_COLUMN).iter().enumerate() {
        if i > 0 {
            out.write_all(DETAIL.as_bytes())?;
        }
        view.style.cell(out, l, 0, false, Some(Paint::Bold))?;
        out.write_all(b"\n")?;
    }

    let shown = limit(EVIDENCE_SHOWN)
        .unwrap_or(f.evidence.len())
        .min(f.evidence.len());
    hidden |= shown < f.evidence.len();
    for e in &f.evidence[..shown] {
        let line = format!("{}: {}", e.label, e.value);
        hidden |= write_lines(out, &line, DETAIL, &format!("{DETAIL}  "), width, limit(1))?;
    }
    if !f.why.is_empty() {
        match said.whys.iter().find(|(w, _)| *w == f.why) {
            Some((_, same)) => {
                let line = format!("as for \"{}\" above", same.title);
                write_lines(out, &line, "    why:  ", DETAIL, width, Some(1))?;
            }
            None => {
                said.whys.push((&f.why, f));
                hidden |= write_lines(out, &f.why, "    why:  ", DETAIL, width, limit(WHY_LINES))?;
            }
        }
    }
    let steps = limit(STEPS_SHOWN).unwrap_or(f.fix.len()).min(f.fix.len());
    hidden |= steps < f.fix.len();
    for (i, step) in f.fix[..steps].iter().enumerate() {
        let first = if i == 0 {
            "    fix:  - "
        } else {
            "          - "
        };
        let before = !verbose && step.command.is_some() && said.steps.contains(step.text.as_str());
        if before {
            // Said above for another finding: its command only.
            out.write_all(first.as_bytes())?;
        } else {
            hidden |= write_lines(out, &step.text, first, "            ", width, limit(1))?;
            said.steps.insert(&step.text);
        }
        if let Some(cmd) = &step.command {
            // Never cut: it is there to be pasted.
            let indent = if before { "" } else { "              " };
            writeln!(out, "{indent}$ {cmd}")?;
        }
        if let Some(patch) = &step.patch {
            write_patch(out, patch, view.style)?;
        }
    }
    Ok(hidden)
}

/// An `io::Write` into a String, for text measured before it is printed.
fn text_writer(s: &mut String) -> impl Write + '_ {
    struct W<'a>(&'a mut String);
    impl Write for W<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.push_str(&String::from_utf8_lossy(buf));
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    W(s)
}

/// What applies to several findings, said once; notes that do not hide a problem; and
/// where the rest is.
fn write_notes(
    out: &mut impl Write,
    r: &CheckReport,
    view: HumanView,
    hidden: bool,
) -> io::Result<()> {
    let width = view.width;
    let mut notes: Vec<String> = Vec::new();
    let per_netns: BTreeSet<&str> = r
        .findings
        .iter()
        .filter(|f| f.data["per_netns"] == serde_json::Value::Bool(true))
        .filter_map(|f| f.data["sysctl"].as_str())
        .collect();
    if !per_netns.is_empty() {
        let keys: Vec<String> = per_netns
            .iter()
            .map(|k| k.rsplit('.').next().unwrap_or(k).to_string())
            .collect();
        notes.push(format!(
            "{} {} per network namespace: a container starts from the kernel defaults and needs its own (Kubernetes securityContext.sysctls, docker run --sysctl).",
            compact_list(&keys, 4),
            if keys.len() == 1 { "is" } else { "are" },
        ));
    }
    for n in r.host.all_missing() {
        if !n.code.hides_problems() {
            notes.push(n.message);
        }
    }
    if !notes.is_empty() {
        out.write_all(b"\n")?;
        let mut h = Vec::new();
        view.style
            .cell(&mut h, "Notes", 0, false, Some(Paint::Bold))?;
        out.write_all(&h)?;
        out.write_all(b"\n")?;
        for n in &notes {
            wrap(out, n, "    ", "  - ", width)?;
        }
    }
    if hidden {
        out.write_all(b"\n")?;
        wrap(
            out,
            "More: tcpdoctor check --verbose (everything in full), --json (for scripts).",
            "  ",
            "",
            width,
        )?;
    }
    Ok(())
}

/// One line per namespace, most sockets first: name, sockets, the states that matter
/// most, and how many findings are about it (--verbose).
fn write_namespaces(out: &mut impl Write, r: &CheckReport, style: Style) -> io::Result<()> {
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
    let mut t = super::Table::new(&[
        ("NETNS", false),
        ("INODE", true),
        ("SOCKETS", true),
        ("ESTAB", true),
        ("CLOSE_WAIT", true),
        ("TIME_WAIT", true),
        ("FINDINGS", true),
    ]);
    for s in &rows {
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
    t.write(out, style)
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

/// A fix's diff, verbatim (its lines and indentation are the change), indented under
/// its step, additions green and removals red on a colour terminal. Never cut.
fn write_patch(out: &mut impl Write, patch: &str, style: Style) -> io::Result<()> {
    for line in patch.lines() {
        let paint = match line.as_bytes().first() {
            Some(b'+') if !line.starts_with("+++") => Some(Paint::Green),
            Some(b'-') if !line.starts_with("---") => Some(Paint::Red),
            _ => None,
        };
        out.write_all(b"              ")?;
        style.cell(out, line, 0, false, paint)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// One finding in full, the way `lint` lists them: title, every namespace, evidence,
/// why and fix (the check report has its own, shorter layout in `write_details`).
pub(super) fn write_finding(
    out: &mut impl Write,
    f: &Finding,
    style: Style,
    verbose: bool,
) -> io::Result<()> {
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
    wrap(out, &f.why, "          ", "    why:  ", LINT_WIDTH)?;
    for (i, step) in f.fix.iter().enumerate() {
        let first = if i == 0 {
            "    fix:  - "
        } else {
            "          - "
        };
        wrap(out, &step.text, "            ", first, LINT_WIDTH)?;
        if let Some(cmd) = &step.command {
            writeln!(out, "              $ {cmd}")?;
        }
        if let Some(patch) = &step.patch {
            write_patch(out, patch, style)?;
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
    /// False when something that may hide a problem was not seen (the notices in
    /// `missing_evidence` whose code hides problems); with status ok or info, check then
    /// exits 4.
    complete: bool,
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
    /// What the tracer saw during the interval; absent when not traced.
    #[serde(skip_serializing_if = "Option::is_none")]
    flows: Option<&'a crate::model::NamespaceFlows>,
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
        complete: r.complete(),
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
                flows: n.flows.as_ref(),
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
    use crate::model::MIN_RATE_INTERVAL_MS;

    #[test]
    fn wrap_breaks_long_text_and_indents() {
        let mut out = Vec::new();
        let text = "word ".repeat(40);
        wrap(&mut out, &text, "  ", "> ", 100).expect("write");
        let s = String::from_utf8(out).expect("utf8");
        assert!(s.lines().count() > 1);
        assert!(s.lines().all(|l| l.len() <= 100));
        assert!(s.starts_with("> word"));
        assert!(s.lines().nth(1).is_some_and(|l| l.starts_with("  word")));
    }

    fn header_with_counters(interval_ms: u64) -> String {
        let snap = crate::model::Snapshot {
            counters: Some(crate::model::CounterSample {
                interval_ms,
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = CheckReport {
            hostname: "h".into(),
            host: crate::model::HostSnapshot {
                namespaces: vec![snap],
                ..Default::default()
            },
            findings: Vec::new(),
        };
        let view = HumanView {
            style: Style { color: false },
            verbose: false,
            width: 200,
        };
        let mut out = Vec::new();
        write_header(&mut out, &r, view).expect("write");
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn the_header_gives_the_counter_interval_or_says_there_are_no_rates() {
        assert!(header_with_counters(1000).contains("counters over 1.0 s"));
        for ms in [0, 12, MIN_RATE_INTERVAL_MS - 1] {
            let h = header_with_counters(ms);
            assert!(h.contains("one counter reading: no rates"), "{ms}: {h}");
            assert!(!h.contains("counters over"), "{ms}: {h}");
        }
        let h = header_with_counters(MIN_RATE_INTERVAL_MS);
        assert!(h.contains("counters over 0.1 s"), "{h}");
    }
}
