//! Turns reports into bytes: aligned tables for terminals and pipes, JSON for scripts.
//! Renderers write to any `io::Write`; only `main` decides that it is stdout.

pub mod check;
pub mod diff;
pub mod kill;
pub mod leaks;
pub mod lint;
pub mod metrics;
pub mod sockets;
pub mod states;
pub mod sysctl_file;
pub mod trace;
pub mod watch;

use std::borrow::Cow;
use std::io::{self, Write};

use crate::model::{text, Notice, TcpState};

/// Version of every JSON document tcpdoctor prints (docs/json.md).
pub const JSON_SCHEMA_VERSION: u32 = 2;

/// ANSI colors, used only when the caller decided the output is a color terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub color: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paint {
    Bold,
    Red,
    Yellow,
    Green,
    Dim,
}

impl Paint {
    fn code(self) -> &'static str {
        match self {
            Paint::Bold => "1",
            Paint::Red => "31",
            Paint::Yellow => "33",
            Paint::Green => "32",
            Paint::Dim => "2",
        }
    }
}

impl Style {
    /// Writes `text` padded to `width` (left or right aligned), colored if enabled.
    /// Padding is computed on the plain text so columns line up with or without color.
    /// Any width works: padding is written in pieces, never through a format width
    /// (which panics above 65,535).
    pub fn cell(
        &self,
        out: &mut impl Write,
        text: &str,
        width: usize,
        right: bool,
        paint: Option<Paint>,
    ) -> io::Result<()> {
        let pad = width.saturating_sub(text.chars().count());
        if right {
            spaces(out, pad)?;
        }
        match (self.color, paint) {
            (true, Some(p)) => write!(out, "\x1b[{}m{text}\x1b[0m", p.code())?,
            _ => out.write_all(text.as_bytes())?,
        }
        if !right {
            spaces(out, pad)?;
        }
        Ok(())
    }
}

/// Writes `n` spaces.
pub fn spaces(out: &mut impl Write, mut n: usize) -> io::Result<()> {
    const BLANK: [u8; 64] = [b' '; 64];
    while n > 0 {
        let k = n.min(BLANK.len());
        out.write_all(&BLANK[..k])?;
        n -= k;
    }
    Ok(())
}

/// Widest cell of a [`Table`], in characters: a name longer than this (a process name
/// from a replayed capture, say) is cut with an ellipsis rather than widening every
/// row of its column.
pub const CELL_MAX: usize = 64;

/// `text` as a table cell shows it: without control characters and at most `max`
/// characters ([`text::clean`]); borrowed when it already is.
pub fn fit(text: &str, max: usize) -> Cow<'_, str> {
    if text::is_clean(text) && text.chars().nth(max).is_none() {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text::clean(text, max))
    }
}

/// The color a state gets in tables: the ones that usually mean trouble stand out.
pub fn state_paint(s: TcpState) -> Option<Paint> {
    match s {
        TcpState::CloseWait => Some(Paint::Red),
        TcpState::TimeWait | TcpState::FinWait1 | TcpState::LastAck | TcpState::Closing => {
            Some(Paint::Yellow)
        }
        TcpState::Established => Some(Paint::Green),
        _ => None,
    }
}

/// State counts as every JSON document shows them: IPv4, IPv6 and their sum.
#[derive(serde::Serialize)]
pub struct JsonCounts {
    ipv4: crate::model::StateCounts,
    ipv6: crate::model::StateCounts,
    total: crate::model::StateCounts,
}

impl From<&crate::model::StateSummary> for JsonCounts {
    fn from(s: &crate::model::StateSummary) -> JsonCounts {
        JsonCounts {
            ipv4: s.ipv4,
            ipv6: s.ipv6,
            total: s.total(),
        }
    }
}

/// A small table kept in memory (state summaries, groups). Socket lists use a streaming
/// renderer instead.
pub struct Table {
    headers: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<(String, Option<Paint>)>>,
}

impl Table {
    /// `columns`: header and whether the column is right-aligned (numbers).
    pub fn new(columns: &[(&str, bool)]) -> Table {
        Table {
            headers: columns.iter().map(|(h, _)| (*h).to_string()).collect(),
            right: columns.iter().map(|(_, r)| *r).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; cells are cut to [`CELL_MAX`] and cleaned ([`fit`]).
    pub fn row(&mut self, cells: Vec<(String, Option<Paint>)>) {
        self.rows.push(
            cells
                .into_iter()
                .map(|(c, p)| match fit(&c, CELL_MAX) {
                    Cow::Borrowed(_) => (c, p),
                    Cow::Owned(o) => (o, p),
                })
                .collect(),
        );
    }

    pub fn write(&self, out: &mut impl Write, style: Style) -> io::Result<()> {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, (c, _)) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        for (i, h) in self.headers.iter().enumerate() {
            if i > 0 {
                out.write_all(b"  ")?;
            }
            let last = i + 1 == n;
            let w = if last && !self.right[i] { 0 } else { widths[i] };
            style.cell(out, h, w, self.right[i], Some(Paint::Bold))?;
        }
        out.write_all(b"\n")?;
        for r in &self.rows {
            for (i, (c, p)) in r.iter().enumerate().take(n) {
                if i > 0 {
                    out.write_all(b"  ")?;
                }
                // No trailing blanks after a left-aligned last column.
                let last = i + 1 == n;
                let w = if last && !self.right[i] { 0 } else { widths[i] };
                style.cell(out, c, w, self.right[i], *p)?;
            }
            out.write_all(b"\n")?;
        }
        Ok(())
    }
}

/// Notices go to stderr in human mode so that piped data stays clean.
pub fn write_notices(err: &mut impl Write, notices: &[Notice], style: Style) -> io::Result<()> {
    for n in notices {
        let mut label = Vec::new();
        style.cell(&mut label, "note:", 0, false, Some(Paint::Yellow))?;
        err.write_all(&label)?;
        writeln!(err, " {}", n.message)?;
    }
    Ok(())
}

pub use crate::model::units::human_duration_ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_and_colors_only_when_asked() {
        let mut t = Table::new(&[("STATE", false), ("COUNT", true)]);
        t.row(vec![
            ("CLOSE_WAIT".into(), Some(Paint::Red)),
            ("7".into(), None),
        ]);
        t.row(vec![("LISTEN".into(), None), ("1234".into(), None)]);
        let mut plain = Vec::new();
        t.write(&mut plain, Style { color: false }).expect("write");
        assert_eq!(
            String::from_utf8(plain).expect("utf8"),
            "STATE       COUNT\nCLOSE_WAIT      7\nLISTEN       1234\n"
        );
        let mut colored = Vec::new();
        t.write(&mut colored, Style { color: true }).expect("write");
        assert!(String::from_utf8(colored)
            .expect("utf8")
            .contains("\x1b[31mCLOSE_WAIT\x1b[0m"));
    }

    /// Regression: a 10 MB process name from a replayed capture made `states --by
    /// process` panic ("Formatting argument out of range": a column width above
    /// 65,535), and a name with escape sequences reached the terminal as they were.
    #[test]
    fn huge_and_hostile_cells_neither_panic_nor_reach_the_terminal() {
        let mut t = Table::new(&[("PROCESS", false), ("TOTAL", true), ("LISTEN", true)]);
        t.row(vec![
            ("A".repeat(10 << 20), None),
            ("1".into(), None),
            ("0".into(), None),
        ]);
        t.row(vec![
            ("evil\x1b]0;owned\x07\n\u{202e}x".into(), None),
            ("2".into(), None),
            ("1".into(), None),
        ]);
        let mut out = Vec::new();
        t.write(&mut out, Style { color: false }).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(!text.contains('\x1b') && !text.contains('\x07') && !text.contains('\u{202e}'));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[1].starts_with(&format!("{}…", "A".repeat(CELL_MAX - 1))));
        assert!(lines[2].starts_with("evil?]0;owned???x"), "{}", lines[2]);
        // Columns still line up: every row as wide as the header.
        let w = |l: &str| l.chars().count();
        assert_eq!(w(lines[1]), w(lines[0]));
        assert_eq!(w(lines[2]), w(lines[0]));
        // A width beyond what a format width takes is padded all the same.
        let mut wide = Vec::new();
        Style { color: false }
            .cell(&mut wide, "x", 70_000, true, None)
            .expect("cell");
        assert_eq!(wide.len(), 70_000);
    }
}
