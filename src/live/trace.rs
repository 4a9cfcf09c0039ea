//! `tcpdoctor trace`'s run loop: takes an interval from the session every `--interval`,
//! drains raw events in between, and stops at `--duration`, Ctrl-C, SIGTERM or SIGHUP
//! with a final summary. What is printed is `render::trace`; the data is `cmd::trace`.
//!
//! Output by mode: on a terminal, the live table is redrawn each interval (with
//! `--events`, the events scroll instead); into a pipe, only events and the summary;
//! with `--json`, one line per interval, per event, and the summary.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cmd::leaks::LeakLook;
use crate::cmd::trace::{SessionOptions, TraceSession};
use crate::model::provenance::LeakReport;
use crate::model::FlowEvent;
use crate::model::Notice;
use crate::render::leaks as leaks_view;
use crate::render::trace::{self as view, TableView};
use crate::render::{write_notices, Style};
use crate::settings::{Common, TraceSettings};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How often the loop wakes to look for events and signals.
const TICK: Duration = Duration::from_millis(100);

pub fn run(common: &Common, s: &TraceSettings) -> Result<(), BoxError> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let mut session = TraceSession::start(
        common,
        &SessionOptions {
            filter: s.filter.clone(),
            events_per_second: s.events,
            leaks: s.leaks.map(|l| crate::collect::trace::LeakOptions {
                max_sockets: l.table,
                ..crate::collect::trace::LeakOptions::default()
            }),
        },
    )?;
    let mut leak_look = s.leaks.map(|l| {
        let (common, filter) = session.scope();
        (
            LeakLook::new(common, filter, l.age.as_millis() as u64),
            l.every,
        )
    });
    let mut next_look = leak_look.as_ref().map(|(_, every)| Instant::now() + *every);
    let mut last_leaks = None;
    let stdout = io::stdout();
    let tty = stdout.is_terminal();
    let mut out = io::BufWriter::new(stdout.lock());
    let style = Style {
        color: common.color,
    };
    let table = TableView {
        top: s.top,
        namespaces: session.several_namespaces(),
    };
    let live_table = tty && !s.json && s.events.is_none();
    if !s.json && !tty {
        // Nothing else appears until the end: say that it runs.
        let _ = writeln!(
            io::stderr(),
            "tcpdoctor: tracing{}; Ctrl-C or SIGTERM ends it with a summary",
            s.duration.map_or(String::new(), |d| format!(
                " for {}",
                crate::model::units::human_duration_ms(d.as_millis() as u64)
            ))
        );
    }

    let started = Instant::now();
    let end = s.duration.map(|d| started + d);
    let mut next = started + s.interval;
    loop {
        let deadline = match end {
            Some(e) => next.min(e),
            None => next,
        };
        let events_on = s.events.is_some();
        let stopped = wait_until(
            deadline,
            &stop,
            &mut session,
            events_on,
            |events, session| write_events(&mut out, events, session, s.json, style),
        )?;
        let interval = session.next_interval()?;
        if let (Some((look, every)), Some(at)) = (&mut leak_look, &mut next_look) {
            if Instant::now() >= *at {
                let (report, notices) = look_leaks(look, &session)?;
                if s.json {
                    leaks_view::write_leaks_json(&mut out, &report, &notices)?;
                }
                last_leaks = Some((report, notices));
                *at = Instant::now() + *every;
            }
        }
        if s.json {
            view::write_interval_json(&mut out, &interval)?;
        } else if live_table {
            view::write_live(
                &mut out,
                &interval,
                session.elapsed().as_millis() as u64,
                table,
                style,
                true,
            )?;
        }
        out.flush()?;
        let finished = end.is_some_and(|e| Instant::now() >= e);
        if stopped || finished {
            break;
        }
        next += s.interval;
        // A slow read (or a suspended process) must not make intervals pile up.
        let now = Instant::now();
        if next < now {
            next = now + s.interval;
        }
    }

    // Events still in the ring buffer belong to the run.
    let rest = session.take_events();
    write_events(&mut out, &rest, &session, s.json, style)?;
    let mut summary = session.summary()?;
    // The last look at the leaks, at the end of the run.
    if let Some((look, _)) = &mut leak_look {
        let (report, notices) = look_leaks(look, &session)?;
        if s.json {
            leaks_view::write_leaks_json(&mut out, &report, &notices)?;
        }
        last_leaks = Some((report, notices));
    }
    if let Some((_, notices)) = &last_leaks {
        summary.notices.extend(notices.iter().cloned());
    }
    if s.json {
        view::write_summary_json(&mut out, &summary)?;
        out.flush()?;
        return Ok(());
    }
    if live_table {
        out.write_all(b"\x1b[H\x1b[2J")?;
    } else if s.events.is_some() {
        out.write_all(b"\n")?;
    }
    view::write_summary(&mut out, &summary, table, style)?;
    if let Some((report, _)) = &last_leaks {
        out.write_all(b"\n")?;
        leaks_view::write_leaks(&mut out, report, style)?;
    }
    out.flush()?;
    drop(out);
    let err_style = Style {
        color: common.color && io::stderr().is_terminal(),
    };
    write_notices(&mut io::stderr().lock(), &summary.notices, err_style)?;
    Ok(())
}

/// One look at the leaks of the recording `session` runs.
fn look_leaks(
    look: &mut LeakLook,
    session: &TraceSession,
) -> Result<(LeakReport, Vec<Notice>), BoxError> {
    Ok(look.look(session.tracer())?)
}

/// Waits until `deadline`, handing raw events to `each` as they come. Returns true when
/// a signal asked to stop.
fn wait_until<F>(
    deadline: Instant,
    stop: &AtomicBool,
    session: &mut TraceSession,
    events_on: bool,
    mut each: F,
) -> Result<bool, BoxError>
where
    F: FnMut(&[FlowEvent], &TraceSession) -> io::Result<()>,
{
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        let step = (deadline - now).min(TICK);
        if !events_on {
            std::thread::sleep(step);
        } else if session.wait_events(step) {
            let events = session.take_events();
            each(&events, session)?;
        }
    }
}

fn write_events(
    out: &mut impl Write,
    events: &[FlowEvent],
    session: &TraceSession,
    json: bool,
    style: Style,
) -> io::Result<()> {
    for e in events {
        let name = session.name_of(e.netns);
        if json {
            view::write_event_json(out, e, &name)?;
        } else {
            view::write_event_line(out, e, &name, style)?;
        }
    }
    if !events.is_empty() {
        out.flush()?;
    }
    Ok(())
}
