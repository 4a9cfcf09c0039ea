//! Draws a [`WatchApp`] into a ratatui frame: header, state counts with sparklines,
//! counter rates, CLOSE_WAIT by process, churn (traced flows, when the tracer runs),
//! TIME_WAIT by destination, port headroom, findings, footer, and the help / finding
//! popups. Pure: reads the app, writes cells.
//!
//! Layout from 80x24 up: every panel keeps a minimum height there; extra rows go to
//! what has more to show (states, tables, findings), the rest to the findings. Smaller
//! than 60x16, only the header, one state line and the findings are drawn.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{
    Block, Borders, Cell, Clear, List, ListItem, ListState, Paragraph, Row, Table, Wrap,
};
use ratatui::Frame;

use super::app::{Overlay, WatchApp, RATES};
use crate::model::units::{count, human_duration_ms};
use crate::model::{Finding, Severity, TcpState};

const SPARK: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The states panel lists these first when rows are short: the ones tcpdoctor is about.
const KEY_STATES: [TcpState; 3] = [
    TcpState::Established,
    TcpState::TimeWait,
    TcpState::CloseWait,
];

/// Styles, or plain text when colors are off (NO_COLOR, --color never).
struct Palette {
    color: bool,
}

impl Palette {
    fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::new().fg(c)
        } else {
            Style::new()
        }
    }

    fn bold(&self) -> Style {
        Style::new().add_modifier(Modifier::BOLD)
    }

    fn title(&self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    fn severity(&self, s: Severity) -> Style {
        match s {
            Severity::Critical => self.fg(Color::Red).add_modifier(Modifier::BOLD),
            Severity::Warning => self.fg(Color::Yellow).add_modifier(Modifier::BOLD),
            Severity::Info => self.fg(Color::Green),
        }
    }

    fn state(&self, s: TcpState) -> Style {
        match s {
            TcpState::CloseWait => self.fg(Color::Red),
            TcpState::TimeWait | TcpState::FinWait1 | TcpState::LastAck | TcpState::Closing => {
                self.fg(Color::Yellow)
            }
            TcpState::Established => self.fg(Color::Green),
            _ => Style::new(),
        }
    }
}

/// Renders the whole screen.
pub fn draw(frame: &mut Frame, app: &WatchApp) {
    let p = Palette {
        color: app.config.color,
    };
    let area = frame.area();
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(header_line(app, &p, header.width)), header);
    frame.render_widget(Paragraph::new(footer_line(app, &p)), footer);

    if app.view.is_none() {
        let msg = if app.paused {
            "paused before the first sample (p resumes)".to_string()
        } else {
            match &app.error {
                Some(e) => format!("cannot collect: {e}"),
                None => "collecting the first sample...".to_string(),
            }
        };
        frame.render_widget(Paragraph::new(msg).wrap(Wrap { trim: true }), body);
    } else if body.width < 60 || body.height < 14 {
        draw_compact(frame, app, body, &p);
    } else {
        draw_dashboard(frame, app, body, &p);
    }

    match &app.overlay {
        Overlay::None => {}
        Overlay::Help => draw_help(frame, app, area, &p),
        Overlay::Finding { finding, scroll } => draw_finding(frame, area, finding, *scroll, &p),
    }
}

/// `tcpdoctor watch on HOST: N TCP sockets in all K netns at HH:MM:SS UTC, every 2.0s`.
/// Narrower than that, whole fields leave (the clock first, then the cap's flag name,
/// the host, the namespaces) so that no figure is ever cut; PAUSED and the socket count
/// always stay.
fn header_line(app: &WatchApp, p: &Palette, width: u16) -> Line<'static> {
    let host = if app.config.hostname.is_empty() {
        "this host".to_string()
    } else {
        app.config.hostname.clone()
    };
    let mut spans = vec![Span::styled("tcpdoctor watch", p.bold())];
    // Before the host name, which may be long: PAUSED must stay visible at 80 columns.
    if app.paused {
        spans.push(Span::raw(" "));
        spans.push(Span::styled(
            "PAUSED",
            p.fg(Color::Yellow)
                .add_modifier(Modifier::BOLD | Modifier::REVERSED),
        ));
    }
    let Some(v) = &app.view else {
        spans.push(Span::raw(format!(" on {host}")));
        return Line::from(spans);
    };
    let (n, all) = app.namespaces;
    let scope = match (n, all) {
        (0 | 1, _) => String::new(),
        (n, true) => format!(" in all {n} netns"),
        (n, false) => format!(" in {n} netns"),
    };
    let every = app.config.interval;
    let (cadence, cap) = match app.spacing {
        Some(s) if s > every + std::time::Duration::from_millis(50) => (
            format!(
                ", every {} (CPU cap",
                human_duration_ms(s.as_millis() as u64)
            ),
            "; --max-cpu",
        ),
        _ => (
            format!(", every {}", human_duration_ms(every.as_millis() as u64)),
            "",
        ),
    };
    let close = if cap.is_empty() { "" } else { ")" };
    // (field, the order it leaves in when the line is too long; 0: never)
    let fields: Vec<(String, u8)> = vec![
        (format!(" on {host}"), 3),
        (
            format!(": {}", count(v.total.total(), "TCP socket", "TCP sockets")),
            0,
        ),
        (scope, 4),
        (format!(" at {} UTC", clock(v.taken_at_unix_ms)), 1),
        (cadence, 0),
        (cap.to_string(), 2),
        (close.to_string(), 0),
    ];
    let fixed: usize = spans.iter().map(|s| s.content.chars().count()).sum();
    let mut keep: Vec<bool> = vec![true; fields.len()];
    let used = |keep: &[bool]| {
        fixed
            + fields
                .iter()
                .zip(keep)
                .filter(|(_, k)| **k)
                .map(|((f, _), _)| f.chars().count())
                .sum::<usize>()
    };
    for rank in 1..=4u8 {
        if used(&keep) <= usize::from(width) {
            break;
        }
        for (i, (_, r)) in fields.iter().enumerate() {
            if *r == rank {
                keep[i] = false;
            }
        }
    }
    let rest: String = fields
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|((f, _), _)| f.as_str())
        .collect();
    spans.push(Span::raw(rest));
    Line::from(spans)
}

fn footer_line(app: &WatchApp, p: &Palette) -> Line<'static> {
    if app.editing_filter {
        return Line::from(vec![
            Span::styled("filter: ", p.bold()),
            Span::raw(format!("{}_", app.filter)),
            Span::raw("  (name, pid or address; Enter keeps, Esc clears)"),
        ]);
    }
    if let Some(e) = &app.error {
        return Line::from(Span::styled(
            format!("sample failed: {e}"),
            p.fg(Color::Red),
        ));
    }
    let filter = if app.filter.is_empty() {
        Span::raw("/ filter")
    } else {
        Span::styled(format!("/ filter: {}", app.filter), p.bold())
    };
    Line::from(vec![
        Span::raw("q quit  p pause  "),
        Span::raw(format!("s sort: {}  ", app.sort.label())),
        filter,
        Span::raw("  j/k Enter explain  ? help"),
    ])
}

/// `HH:MM:SS` of a Unix time in milliseconds, UTC.
fn clock(unix_ms: u64) -> String {
    let s = (unix_ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// The last `width` values as block characters, scaled to the largest of them; zero is
/// blank, anything above zero at least the lowest block.
pub fn sparkline(values: impl DoubleEndedIterator<Item = f64>, width: usize) -> String {
    let mut last: Vec<f64> = values.rev().take(width).collect();
    last.reverse();
    let max = last.iter().copied().fold(0.0, f64::max);
    last.iter()
        .map(|v| {
            if *v <= 0.0 || max <= 0.0 {
                ' '
            } else {
                let level = ((v / max) * 8.0).ceil().clamp(1.0, 8.0) as usize;
                SPARK[level - 1]
            }
        })
        .collect()
}

fn panel(title: String, borders: Borders, p: &Palette) -> Block<'static> {
    Block::new()
        .borders(borders)
        .border_style(p.fg(Color::DarkGray))
        .title(Span::styled(title, p.title()))
}

/// Heights of (states/rates, processes, churn, time-wait/ports, findings) for `body`
/// rows; churn gets none when connections are not traced.
fn heights(app: &WatchApp, body: u16) -> [u16; 5] {
    let findings = app.view.as_ref().map_or(0, |v| v.findings.len()) as u16;
    let procs = app.visible_processes().len() as u16 + 2;
    let churn = app.visible_churn().map(|r| r.len() as u16 + 2);
    let tw = app.visible_time_wait().len().max(app.visible_ports().len()) as u16 + 2;
    let top = (app.config.top as u16).saturating_add(2);
    // A title line plus one row per state worth showing, and at least the six rates.
    let states = (states_shown(app, TcpState::ALL.len()).len() as u16 + 1).max(7);
    // Minimums, the 80x24 layout, then what the content could use. The churn panel
    // takes its rows from the others at 80x24.
    let stages: [[u16; 5]; 3] = match churn {
        None => [
            [4, 3, 0, 3, 3],
            [7, 5, 0, 5, 5],
            [states, procs.min(top), 0, tw.min(top), findings + 1],
        ],
        Some(churn) => [
            [4, 3, 3, 3, 3],
            [6, 4, 4, 4, 4],
            [
                states,
                procs.min(top),
                churn.min(top),
                tw.min(top),
                findings + 1,
            ],
        ],
    };
    let mut h = [0u16; 5];
    let mut left = body;
    for stage in stages {
        for i in 0..5 {
            let want = stage[i].saturating_sub(h[i]).min(left);
            h[i] += want;
            left -= want;
        }
    }
    h[4] += left;
    h
}

fn draw_dashboard(frame: &mut Frame, app: &WatchApp, body: Rect, p: &Palette) {
    let [h_top, h_procs, h_churn, h_mid, h_find] = heights(app, body.height);
    let [top, procs, churn, mid, find] = Layout::vertical([
        Constraint::Length(h_top),
        Constraint::Length(h_procs),
        Constraint::Length(h_churn),
        Constraint::Length(h_mid),
        Constraint::Length(h_find),
    ])
    .areas(body);
    if h_churn > 0 {
        draw_churn(frame, app, churn, p);
    }
    let [states, rates] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(top);
    let [tw, ports] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(mid);
    draw_states(frame, app, states, p);
    draw_rates(frame, app, rates, p);
    draw_processes(frame, app, procs, p);
    draw_time_wait(frame, app, tw, p);
    draw_ports(frame, app, ports, p);
    draw_findings(frame, app, find, p);
}

fn draw_compact(frame: &mut Frame, app: &WatchApp, body: Rect, p: &Palette) {
    let [states, find] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(body);
    if let Some(v) = &app.view {
        // The states tcpdoctor is about first: the line is cut at the right edge.
        let order = KEY_STATES
            .iter()
            .rev()
            .chain(TcpState::ALL.iter().filter(|s| !KEY_STATES.contains(s)));
        let parts: Vec<Span> = order
            .filter(|s| v.total.get(**s) > 0)
            .flat_map(|s| {
                [
                    Span::styled(s.name(), p.state(*s)),
                    Span::raw(format!(" {}  ", v.total.get(*s))),
                ]
            })
            .collect();
        frame.render_widget(Paragraph::new(Line::from(parts)), states);
    }
    draw_findings(frame, app, find, p);
}

/// Which states get a row when only `rows` fit: non-zero ones and the key states,
/// in kernel order; when short, the key states and then the biggest.
fn states_shown(app: &WatchApp, rows: usize) -> Vec<TcpState> {
    let seen = |s: TcpState| app.states.iter().any(|c| c.get(s) > 0);
    let mut wanted: Vec<TcpState> = TcpState::ALL
        .into_iter()
        .filter(|s| KEY_STATES.contains(s) || seen(*s))
        .collect();
    if wanted.len() > rows {
        let now = app.states.back().copied().unwrap_or_default();
        wanted.sort_by_key(|s| {
            (
                !KEY_STATES.contains(s),
                std::cmp::Reverse(now.get(*s)),
                s.index(),
            )
        });
        wanted.truncate(rows);
        wanted.sort_by_key(|s| s.index());
    }
    wanted
}

fn draw_states(frame: &mut Frame, app: &WatchApp, area: Rect, p: &Palette) {
    let block = panel(" States ".to_string(), Borders::TOP, p);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let now = app.states.back().copied().unwrap_or_default();
    let spark_w = (inner.width as usize).saturating_sub(22);
    let lines: Vec<Line> = states_shown(app, inner.height as usize)
        .into_iter()
        .map(|s| {
            let spark = sparkline(app.states.iter().map(|c| c.get(s) as f64), spark_w);
            Line::from(vec![
                Span::styled(format!("{:<11}", s.name()), p.state(s)),
                Span::raw(format!(" {:>8}  ", now.get(s))),
                Span::styled(spark, p.state(s)),
            ])
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

fn rate_text(r: Option<f64>) -> String {
    match r {
        None => "-".to_string(),
        Some(r) if r >= 100.0 => format!("{r:.0}/s"),
        Some(r) => format!("{r:.1}/s"),
    }
}

fn draw_rates(frame: &mut Frame, app: &WatchApp, area: Rect, p: &Palette) {
    let title = match app.view.as_ref().and_then(|v| v.counter_interval_ms) {
        Some(ms) => format!(" Counters, last {} ", human_duration_ms(ms)),
        None => " Counters ".to_string(),
    };
    let block = panel(title, Borders::TOP | Borders::LEFT, p);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let Some(v) = &app.view else { return };
    let spark_w = (inner.width as usize).saturating_sub(31);
    let lines: Vec<Line> = RATES
        .iter()
        .enumerate()
        .take(inner.height as usize)
        .map(|(i, (label, _))| {
            let r = v.rates.get(i).copied().flatten();
            // Overflows and resets are trouble whenever they move.
            let alarm = i >= 2 && r.is_some_and(|r| r > 0.0);
            let style = if alarm {
                p.fg(Color::Red)
            } else {
                Style::new()
            };
            let spark = app
                .rate_history
                .get(i)
                .map(|h| sparkline(h.iter().copied(), spark_w))
                .unwrap_or_default();
            Line::from(vec![
                Span::raw(format!(" {label:<19}")),
                Span::styled(format!(" {:>9}  ", rate_text(r)), style),
                Span::styled(spark, style),
            ])
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

fn header_row(cells: &[&'static str], p: &Palette) -> Row<'static> {
    Row::new(cells.iter().map(|c| Cell::from(*c))).style(p.bold())
}

fn shown_of(shown: usize, total: usize) -> String {
    if shown < total {
        format!(", {shown} of {total}")
    } else {
        String::new()
    }
}

fn draw_processes(frame: &mut Frame, app: &WatchApp, area: Rect, p: &Palette) {
    let Some(v) = &app.view else { return };
    let rows_all = app.visible_processes();
    let room = (area.height as usize).saturating_sub(2).min(app.config.top);
    let extra = usize::from(v.unowned_close_wait > 0 && app.filter.is_empty());
    let shown = room.saturating_sub(extra).min(rows_all.len());
    let title = format!(" CLOSE_WAIT by process{} ", shown_of(shown, rows_all.len()));
    let mut rows: Vec<Row> = rows_all
        .iter()
        .take(shown)
        .map(|r| {
            let (status, style) = match &r.trend {
                Some(t) if t.confirmed_leak => (
                    match r.fds_exhausted_in_s {
                        Some(s) => format!(
                            "LEAK +{:.0}/min, fds out in {}",
                            t.growth_per_min,
                            human_duration_ms((s * 1000.0).round() as u64)
                        ),
                        None => format!("LEAK +{:.0}/min", t.growth_per_min),
                    },
                    p.fg(Color::Red).add_modifier(Modifier::BOLD),
                ),
                Some(t) if t.samples < 2 => ("new".to_string(), Style::new()),
                Some(t) if t.growth_per_min > 0.0 => ("growing".to_string(), p.fg(Color::Yellow)),
                Some(t) if t.growth_per_min < 0.0 => ("shrinking".to_string(), Style::new()),
                _ => ("stable".to_string(), Style::new()),
            };
            let growth = match &r.trend {
                Some(t) if t.samples >= 2 => format!("{:+.1}", t.growth_per_min),
                _ => "-".to_string(),
            };
            Row::new(vec![
                Cell::from(r.comm.clone()),
                Cell::from(r.pid.to_string()),
                Cell::from(r.close_wait.to_string()),
                Cell::from(r.oldest_idle_ms.map_or("-".to_string(), human_duration_ms)),
                Cell::from(growth),
                Cell::from(Span::styled(status, style)),
            ])
        })
        .collect();
    if extra == 1 && rows.len() < room {
        rows.push(Row::new(vec![
            Cell::from("(no process)"),
            Cell::from("-"),
            Cell::from(v.unowned_close_wait.to_string()),
            Cell::from("-"),
            Cell::from("-"),
            Cell::from(if v.owners_known {
                "unaccepted or owner not visible"
            } else {
                "owners not visible (run as root)"
            }),
        ]));
    }
    let widths = [
        Constraint::Length(16),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Min(10),
    ];
    let table = Table::new(rows, widths)
        .header(header_row(
            &[
                "PROCESS",
                "PID",
                "CLOSE_WAIT",
                "OLDEST",
                "GROWTH/MIN",
                "TREND",
            ],
            p,
        ))
        .block(panel(title, Borders::TOP, p));
    frame.render_widget(table, area);
}

/// Traced flows: who opens connections to where, how fast, who closes first, and
/// what fails.
fn draw_churn(frame: &mut Frame, app: &WatchApp, area: Rect, p: &Palette) {
    let Some(rows_all) = app.visible_churn() else {
        return;
    };
    let room = (area.height as usize).saturating_sub(2).min(app.config.top);
    let shown = room.min(rows_all.len());
    let over = app
        .view
        .as_ref()
        .and_then(|v| v.churn_interval_ms)
        .map(|ms| format!(", last {}", human_duration_ms(ms)))
        .unwrap_or_default();
    let title = format!(
        " Churn: process -> destination{over}{} ",
        shown_of(shown, rows_all.len())
    );
    let rows: Vec<Row> = rows_all
        .iter()
        .take(shown)
        .map(|r| {
            let failed = match (r.failed, r.failed_errno) {
                (0, _) => "-".to_string(),
                (n, Some(e)) => format!("{n} {e}"),
                (n, None) => n.to_string(),
            };
            let style = if r.failed > 0 {
                p.fg(Color::Red)
            } else {
                Style::new()
            };
            Row::new(vec![
                Cell::from(r.comm.clone()),
                Cell::from(if r.pid == 0 {
                    "-".to_string()
                } else {
                    r.pid.to_string()
                }),
                Cell::from(r.peer.clone()),
                Cell::from(format!("{:.1}", r.opened_per_s)),
                Cell::from(r.closer.clone()),
                Cell::from(Span::styled(failed, style)),
            ])
        })
        .collect();
    // Fits 80 columns with the longest closer (`mixed 60% local`) and errno text.
    let widths = [
        Constraint::Length(12),
        Constraint::Length(7),
        Constraint::Min(16),
        Constraint::Length(7),
        Constraint::Length(15),
        Constraint::Length(18),
    ];
    let table = Table::new(rows, widths)
        .header(header_row(
            &[
                "PROCESS",
                "PID",
                "DESTINATION",
                "OPEN/S",
                "CLOSER",
                "FAILED",
            ],
            p,
        ))
        .block(panel(title, Borders::TOP, p));
    frame.render_widget(table, area);
}

fn draw_time_wait(frame: &mut Frame, app: &WatchApp, area: Rect, p: &Palette) {
    let rows_all = app.visible_time_wait();
    let room = (area.height as usize).saturating_sub(2).min(app.config.top);
    let shown = room.min(rows_all.len());
    let title = format!(
        " TIME_WAIT by destination{} ",
        shown_of(shown, rows_all.len())
    );
    let rows: Vec<Row> = rows_all
        .iter()
        .take(shown)
        .map(|r| {
            Row::new(vec![
                Cell::from(r.label.clone()),
                Cell::from(r.count.to_string()),
                Cell::from(format!("{:.1}", r.per_s_milli as f64 / 1000.0)),
            ])
        })
        .collect();
    let widths = [
        Constraint::Min(12),
        Constraint::Length(8),
        Constraint::Length(7),
    ];
    let table = Table::new(rows, widths)
        .header(header_row(&["DESTINATION", "TW", "CONN/S"], p))
        .block(panel(title, Borders::TOP, p));
    frame.render_widget(table, area);
}

fn draw_ports(frame: &mut Frame, app: &WatchApp, area: Rect, p: &Palette) {
    let Some(v) = &app.view else { return };
    let rows_all = app.visible_ports();
    let room = (area.height as usize).saturating_sub(2).min(app.config.top);
    let shown = room.min(rows_all.len());
    let title = format!(
        " Port headroom of {}{} ",
        v.usable_ports,
        shown_of(shown, rows_all.len())
    );
    let rows: Vec<Row> = rows_all
        .iter()
        .take(shown)
        .map(|r| {
            let style = if r.unavailable_pct >= app.config.port_critical_pct {
                p.fg(Color::Red).add_modifier(Modifier::BOLD)
            } else if r.unavailable_pct >= app.config.port_warn_pct {
                p.fg(Color::Yellow)
            } else {
                Style::new()
            };
            Row::new(vec![
                Cell::from(r.remote.to_string()),
                Cell::from(r.unavailable.to_string()),
                Cell::from(r.headroom.to_string()),
                Cell::from(Span::styled(format!("{:.0}%", r.unavailable_pct), style)),
            ])
        })
        .collect();
    let widths = [
        Constraint::Min(12),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(4),
    ];
    let table = Table::new(rows, widths)
        .header(header_row(&["DESTINATION", "USED", "LEFT", "USE"], p))
        .block(panel(title, Borders::TOP | Borders::LEFT, p));
    frame.render_widget(table, area);
}

fn severity_tag(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "CRIT",
        Severity::Warning => "WARN",
        Severity::Info => "INFO",
    }
}

fn draw_findings(frame: &mut Frame, app: &WatchApp, area: Rect, p: &Palette) {
    let Some(v) = &app.view else { return };
    let (c, w, i) = app.finding_counts();
    let block = panel(
        format!(" Findings: {c} critical, {w} warning, {i} info "),
        Borders::TOP,
        p,
    );
    if v.findings.is_empty() {
        frame.render_widget(Paragraph::new(" No problems found.").block(block), area);
        return;
    }
    let items: Vec<ListItem> = v
        .findings
        .iter()
        .map(|f| {
            let mut spans = vec![Span::styled(
                severity_tag(f.severity),
                p.severity(f.severity),
            )];
            if let Some(ns) = f.namespaces.first() {
                let more = match f.namespaces.len() {
                    1 => String::new(),
                    n => format!(" +{}", n - 1),
                };
                spans.push(Span::styled(format!(" [{}{more}]", ns.name), p.title()));
            }
            spans.push(Span::raw(format!(" {}", f.title)));
            ListItem::new(Line::from(spans))
        })
        .collect();
    let list = List::new(items)
        .block(block)
        .highlight_symbol(">")
        .highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = ListState::default().with_selected(Some(app.selected));
    frame.render_stateful_widget(list, area, &mut state);
}

/// A rectangle `w` x `h` centered in `area`, clipped to it.
fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

fn draw_finding(frame: &mut Frame, area: Rect, f: &Finding, scroll: u16, p: &Palette) {
    let popup = centered(
        area,
        area.width.saturating_sub(4).max(20),
        area.height.saturating_sub(2),
    );
    let mut lines: Vec<Line> = vec![Line::from(Span::styled(f.title.clone(), p.bold()))];
    for ns in &f.namespaces {
        lines.push(Line::raw(format!(
            "network namespace {} (net:[{}])",
            ns.name, ns.inode
        )));
    }
    lines.extend([
        Line::raw(""),
        Line::from(Span::styled("Evidence", p.title())),
    ]);
    for e in &f.evidence {
        lines.push(Line::raw(format!("  {}: {}", e.label, e.value)));
    }
    lines.push(Line::raw(""));
    lines.push(Line::from(Span::styled("Why", p.title())));
    lines.push(Line::raw(format!("  {}", f.why)));
    lines.push(Line::raw(""));
    lines.push(Line::from(Span::styled("Fix", p.title())));
    for step in &f.fix {
        lines.push(Line::raw(format!("  - {}", step.text)));
        if let Some(cmd) = &step.command {
            lines.push(Line::raw(format!("      $ {cmd}")));
        }
    }
    let block = Block::new()
        .borders(Borders::ALL)
        .title(Line::from(vec![
            Span::styled(
                format!(" {} ", f.severity.name().to_ascii_uppercase()),
                p.severity(f.severity),
            ),
            Span::raw(format!("[{}] ", f.rule_id)),
        ]))
        .title_bottom(" j/k scroll  Esc close ");
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(Text::from(lines))
            .block(block)
            .wrap(Wrap { trim: false })
            .scroll((scroll, 0)),
        popup,
    );
}

const HELP: [(&str, &str); 10] = [
    ("q, Ctrl-C", "quit"),
    ("p", "pause / resume sampling"),
    ("s", "sort tables: count, growth, name"),
    ("/", "filter by process name, pid or address"),
    ("Esc", "clear the filter, close a popup"),
    ("j/k, arrows", "select a finding"),
    ("Enter", "explain the selected finding"),
    ("?", "this help"),
    ("CONN/S", "closes per second, read from TIME_WAIT ages"),
    ("USED", "ports connect() cannot pick now"),
];

fn draw_help(frame: &mut Frame, app: &WatchApp, area: Rect, p: &Palette) {
    let t = app.config.trend;
    let leak = format!(
        "CLOSE_WAIT rose in {}+ of the last {} samples",
        t.min_rises, t.window
    );
    let popup = centered(area, 64, HELP.len() as u16 + 3);
    let mut lines: Vec<Line> = HELP
        .iter()
        .copied()
        .chain([("LEAK", leak.as_str())])
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!(" {k:<12}"), p.bold()),
                Span::raw(format!(" {what}")),
            ])
        })
        .collect();
    lines.truncate(usize::from(popup.height.saturating_sub(2)));
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::new()
                .borders(Borders::ALL)
                .title(Span::styled(" tcpdoctor watch: keys ", p.title())),
        ),
        popup,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_scales_to_the_window_max() {
        assert_eq!(
            sparkline([0.0, 1.0, 2.0, 4.0, 8.0].into_iter(), 10),
            " ▁▂▄█"
        );
        assert_eq!(sparkline([5.0, 0.0, 8.0].into_iter(), 2), " █");
        assert_eq!(sparkline([0.0, 0.0].into_iter(), 4), "  ");
    }

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(clock(86_400_000 + 3_723_000), "01:02:03");
    }
}
