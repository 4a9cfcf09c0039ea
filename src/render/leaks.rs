//! `tcpdoctor trace --leaks`: the leaked sockets by call site, as sentences and as
//! JSON lines (`record: "leaks"`, docs/json.md). Stacks appear in JSON only.

use std::io::{self, Write};

use serde::Serialize;

use crate::model::provenance::{CallSiteGroup, LeakReport, ProcessLeaks};
use crate::model::units::noun;
use crate::model::Notice;

use super::{Paint, Style, JSON_SCHEMA_VERSION};

#[derive(Serialize)]
struct LeaksLine<'a> {
    schema_version: u32,
    command: &'static str,
    record: &'static str,
    #[serde(flatten)]
    report: &'a LeakReport,
    notices: &'a [Notice],
}

pub fn write_leaks_json(
    out: &mut impl Write,
    report: &LeakReport,
    notices: &[Notice],
) -> io::Result<()> {
    let line = LeaksLine {
        schema_version: JSON_SCHEMA_VERSION,
        command: "trace",
        record: "leaks",
        report,
        notices,
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

/// `8,412` (thousands separated, as people read counts).
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `HH:MM` in local time.
fn clock(unix_ms: u64) -> String {
    let secs = (unix_ms / 1000) as libc::time_t;
    // SAFETY: zeroed tm is a valid out-parameter; localtime_r writes only into it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return format!("{}s", unix_ms / 1000);
    }
    format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}

fn group_sentence(p: &ProcessLeaks, g: &CallSiteGroup) -> String {
    let threads = match g.threads.as_slice() {
        [] => String::new(),
        [one] => format!(" by threads {one}"),
        [first, rest @ ..] => format!(" by threads {first} (and {} more names)", rest.len()),
    };
    let to = g.peers_text();
    let when = if g.first_unix_ms / 1000 == g.last_unix_ms / 1000 {
        format!(", at {}", clock(g.first_unix_ms))
    } else {
        format!(
            ", between {} and {}",
            clock(g.first_unix_ms),
            clock(g.last_unix_ms)
        )
    };
    let comm = if p.comm.is_empty() { "?" } else { &p.comm };
    format!(
        "{} of {} leaked of {comm} (pid {}) were opened {}{threads}, {}{to}{when}",
        thousands(g.count),
        thousands(g.of),
        p.pid,
        g.site_text(),
        g.via.call()
    )
}

pub fn write_leaks(out: &mut impl Write, r: &LeakReport, style: Style) -> io::Result<()> {
    let age = crate::model::units::human_duration_ms(r.leak_age_ms);
    let head = format!(
        "Leaked sockets at {}: {} (CLOSE_WAIT idle {age} or longer, or held after the kernel closed them), of {} CLOSE_WAIT",
        clock(r.at_unix_ms),
        thousands(r.leaked),
        thousands(r.close_wait)
    );
    style.cell(out, &head, 0, false, Some(Paint::Bold))?;
    writeln!(out)?;
    if r.processes.is_empty() {
        writeln!(out, "  none")?;
    }
    for p in &r.processes {
        let unattributed = p.leaked.saturating_sub(p.attributed);
        writeln!(
            out,
            "  {} (pid {}): {} leaked{}{}",
            if p.comm.is_empty() { "?" } else { &p.comm },
            p.pid,
            thousands(p.leaked),
            if p.detached > 0 {
                format!(
                    ", {} of them held after the kernel closed them",
                    thousands(p.detached)
                )
            } else {
                String::new()
            },
            if unattributed > 0 {
                format!(
                    "; {} {} opened before recording began at {} (or pushed out of the table)",
                    thousands(unattributed),
                    noun(unattributed, "was", "were"),
                    clock(r.recording_since_unix_ms)
                )
            } else {
                String::new()
            }
        )?;
        for g in &p.groups {
            writeln!(out, "    {}", group_sentence(p, g))?;
            if let Some(h) = &g.hint {
                writeln!(out, "      {h}")?;
            }
        }
    }
    writeln!(
        out,
        "Origin table: {} of {} in use, {} pushed out (--json has the full stacks)",
        thousands(r.table.present),
        thousands(r.table.capacity),
        thousands(r.table.evicted)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::provenance::{Destination, Frame, FrameKind, OpenedBy};

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(8412), "8,412");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn a_group_reads_as_one_sentence() {
        let site = Frame {
            addr: 0x10,
            kind: FrameKind::Jit,
            symbol: Some("Fetcher.fetch".into()),
            file: Some("com/acme/Fetcher.java".into()),
            line: Some(88),
            module: None,
        };
        let g = CallSiteGroup {
            pid: 91,
            count: 8412,
            of: 8999,
            via: OpenedBy::Connect,
            stack_id: Some(3),
            frames: vec![site.clone()],
            call_site: Some(site),
            threads: vec!["pool-*-thread-*".into()],
            destinations: vec![Destination {
                remote: "10.0.0.7:443".into(),
                count: 8412,
            }],
            first_unix_ms: 1_000_000,
            last_unix_ms: 3_000_000,
            hint: None,
        };
        let p = ProcessLeaks {
            pid: 91,
            comm: "java".into(),
            ..ProcessLeaks::default()
        };
        let s = group_sentence(&p, &g);
        assert!(
            s.starts_with("8,412 of 8,999 leaked of java (pid 91) were opened at Fetcher.fetch (Fetcher.java:88) by threads pool-*-thread-*, connect() to 10.0.0.7:443, between "),
            "{s}"
        );
    }
}
