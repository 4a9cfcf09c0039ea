//! `tcpdoctor watch`: the live view's run loop. Owns the terminal (raw mode, alternate
//! screen, restored on every exit path: return, panic, SIGTERM/SIGINT/SIGHUP), the
//! sampling thread (`Sampler`, with the connection tracer kept attached when it can run,
//! and the `check` rules every `--interval`) and key events ([`super::tty`]).
//! What is shown and how keys act is `render::watch`; this file only moves data to it.
//!
//! It ends, with status 0, on `q`, Ctrl-C, SIGINT, SIGTERM and SIGHUP, and when its
//! terminal goes away (end of file, an error or a hang-up on standard input, or a
//! failed write: an ssh session that dropped), putting the terminal back as far as it
//! still can. It never keeps sampling for a terminal nobody sees.
//!
//! `--headless` (hidden, a scripting and debug mode) skips the terminal and prints one
//! JSON line per sample on stdout; `--samples N` stops after N samples.

use std::io::{self, IsTerminal, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossterm::{cursor, execute, terminal};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

use super::tty::{self, Input};
use crate::analyze;
use crate::cmd::check::Sampler;
use crate::model::{Finding, Snapshot};
use crate::render::watch::{self as view, WatchApp, WatchConfig};
use crate::settings::{Common, WatchSettings};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How often the UI thread wakes to look for samples, keys and signals. Short enough
/// that a sample shows up promptly; each wake-up costs a poll(2) and nothing else.
const TICK: Duration = Duration::from_millis(100);

pub fn run(common: &Common, s: &WatchSettings) -> Result<(), BoxError> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let config = WatchConfig {
        hostname: crate::collect::sysctl::hostname(&common.proc_root),
        interval: s.interval,
        top: s.top,
        color: common.color,
        port_warn_pct: s.thresholds.port_warn_pct,
        port_critical_pct: s.thresholds.port_critical_pct,
        ..WatchConfig::default()
    };
    if s.headless {
        let stdout = io::stdout();
        return run_headless(common, s, config, &stop, &mut stdout.lock());
    }
    if !io::stdout().is_terminal() || !io::stdin().is_terminal() {
        return Err("tcpdoctor watch needs a terminal (stdin and stdout); for scripts use `tcpdoctor check --json`".into());
    }
    run_tui(common, s, config, &stop)
}

/// Waits until `deadline` in short steps, returning early (true) when `stop` is set.
fn sleep_until(deadline: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep((deadline - now).min(TICK));
    }
}

fn run_headless(
    common: &Common,
    s: &WatchSettings,
    config: WatchConfig,
    stop: &AtomicBool,
    out: &mut impl Write,
) -> Result<(), BoxError> {
    let started = Instant::now();
    let mut sampler = Sampler::new().with_tracing();
    let mut app = WatchApp::new(config);
    loop {
        let tick = Instant::now();
        let (sample, spacing) = take_sample(&mut sampler, common, s, started);
        let sample = sample?;
        app.set_namespaces(sample.namespaces.0, sample.namespaces.1);
        app.set_spacing(spacing);
        app.ingest(sample.at_ms, &sample.snapshot, sample.findings);
        view::write_sample_line(out, &app, &sample.snapshot.missing)?;
        out.flush()?;
        if s.samples.is_some_and(|n| app.samples() >= n) {
            return Ok(());
        }
        if sleep_until(tick + spacing, stop) {
            return Ok(());
        }
    }
}

/// One sample as the views use it.
struct Sample {
    /// Milliseconds since watching started.
    at_ms: u64,
    /// Every namespace folded into one.
    snapshot: Snapshot,
    findings: Vec<Finding>,
    /// (namespaces read, whether that is all of them).
    namespaces: (usize, bool),
}

/// Collects and analyzes one sample; also returns when the next one should start
/// (after the interval, or later to stay within the CPU budget).
fn take_sample(
    sampler: &mut Sampler,
    common: &Common,
    s: &WatchSettings,
    started: Instant,
) -> (Result<Sample, crate::cmd::CmdError>, Duration) {
    let at_ms = started.elapsed().as_millis() as u64;
    let cpu_before = process_cpu();
    let sample = sampler.sample(common).map(|host| Sample {
        at_ms,
        findings: analyze::run_host(&host, &s.thresholds),
        namespaces: (host.namespaces.len(), host.all_namespaces),
        snapshot: host.merged(),
    });
    // Counted in the sample's CPU time, like the rest of its work.
    super::release_free_memory();
    let spacing = next_sample_in(
        s.interval,
        process_cpu().saturating_sub(cpu_before),
        s.cpu_budget,
    );
    (sample, spacing)
}

/// A sample as the sampling thread hands it over with the spacing of samples it set, or
/// why it failed.
type SampleMsg = Result<(Sample, Duration), String>;

/// CPU time this process has used so far (all threads).
fn process_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass and reads nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer cannot fail.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// When the next sample starts: `interval` after this one started, or later when this
/// one's CPU cost would break the budget (`cost / budget` after its start).
pub fn next_sample_in(interval: Duration, cost: Duration, budget: Option<f64>) -> Duration {
    match budget {
        Some(b) if b > 0.0 => interval.max(cost.div_f64(b)),
        _ => interval,
    }
}

/// Collects a sample every `interval` (from the start of the previous one, or further
/// apart to keep within the CPU budget) until the receiver is gone or `stop` is set;
/// skips while `paused`.
fn sampling_loop(
    common: Common,
    s: WatchSettings,
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    tx: mpsc::Sender<SampleMsg>,
) {
    let started = Instant::now();
    let mut sampler = Sampler::new().with_tracing();
    let mut spacing = s.interval;
    loop {
        let tick = Instant::now();
        if !paused.load(Ordering::Relaxed) {
            let (sample, next) = take_sample(&mut sampler, &common, &s, started);
            spacing = next;
            let msg = sample.map(|v| (v, spacing)).map_err(|e| e.to_string());
            if tx.send(msg).is_err() {
                return;
            }
        }
        if sleep_until(tick + spacing, &stop) {
            return;
        }
    }
}

/// Puts the terminal back: cooked mode, main screen, visible cursor. Safe to call twice.
fn restore_terminal() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(io::stdout(), terminal::LeaveAlternateScreen, cursor::Show);
}

/// Restores the terminal when dropped, so `?` returns and panics unwind cleanly.
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn run_tui(
    common: &Common,
    s: &WatchSettings,
    config: WatchConfig,
    stop: &Arc<AtomicBool>,
) -> Result<(), BoxError> {
    // A panic prints its message after the terminal is back to normal, not into the
    // alternate screen where it would vanish.
    let previous_hook = Arc::new(std::panic::take_hook());
    let hook = Arc::clone(&previous_hook);
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        (*hook)(info);
    }));

    terminal::enable_raw_mode()?;
    let guard = TerminalGuard;
    execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)?;
    let mut term = Terminal::new(CrosstermBackend::new(io::stdout()))?;

    let paused = Arc::new(AtomicBool::new(false));
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let sampler = {
        let (common, s) = (common.clone(), s.clone());
        let (paused, sampler_stop) = (Arc::clone(&paused), Arc::clone(&sampler_stop));
        thread::Builder::new()
            .name("watch-sampler".into())
            .spawn(move || sampling_loop(common, s, paused, sampler_stop, tx))?
    };

    let result = ui_loop(&mut term, config, s.samples, &rx, &paused, stop);
    // ratatui's Terminal shows a cursor it hid when dropped, and if that write fails (the
    // terminal is gone) it reports it with eprintln!, which panics when stderr is that
    // same dead terminal: exit 101 instead of 0. Show it here and, if the terminal
    // cannot take it, never drop the Terminal (the process is about to end).
    if term.show_cursor().is_err() {
        std::mem::forget(term);
    }
    drop(guard);
    // Not joined: a sample in progress (seconds on a huge host) must not delay the exit.
    // The thread ends after it, on `sampler_stop` or on the closed channel.
    sampler_stop.store(true, Ordering::Relaxed);
    drop(rx);
    drop(sampler);
    let _ = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| (*previous_hook)(info)));
    result
}

fn ui_loop(
    term: &mut Terminal<CrosstermBackend<io::Stdout>>,
    config: WatchConfig,
    max_samples: Option<u64>,
    rx: &mpsc::Receiver<SampleMsg>,
    paused: &AtomicBool,
    stop: &AtomicBool,
) -> Result<(), BoxError> {
    let mut app = WatchApp::new(config);
    let mut dirty = true;
    let stdin = io::stdin();
    let mut size = terminal::size().ok();
    loop {
        loop {
            match rx.try_recv() {
                Ok(Ok((sample, spacing))) => {
                    app.set_namespaces(sample.namespaces.0, sample.namespaces.1);
                    app.set_spacing(spacing);
                    dirty |= app.ingest(sample.at_ms, &sample.snapshot, sample.findings);
                }
                Ok(Err(e)) => {
                    app.record_error(e);
                    dirty = true;
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err("the sampling thread stopped".into())
                }
            }
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        // A resize shows as a new size (no SIGWINCH handler: the tick is short).
        let now = terminal::size().ok();
        if now != size {
            size = now;
            dirty = true;
        }
        if dirty {
            if let Err(e) = term.draw(|f| view::draw(f, &app)) {
                // Nothing can be shown any more: the terminal is gone (EIO after a
                // hang-up) or broken. Either way the session is over.
                return terminal_gone(&format!("cannot draw: {e}"));
            }
            dirty = false;
        }
        if app.should_quit() || max_samples.is_some_and(|n| app.samples() >= n) {
            return Ok(());
        }
        match tty::wait_input(stdin.as_raw_fd(), TICK) {
            Input::Keys(keys) => {
                for key in keys {
                    app.handle_key(key);
                    dirty = true;
                }
                paused.store(app.is_paused(), Ordering::Relaxed);
            }
            Input::Nothing => {}
            Input::Gone(why) => return terminal_gone(&why),
        }
    }
}

/// The terminal went away: say so where it may still be seen (stderr is often the same
/// terminal, then this is lost) and end normally.
fn terminal_gone(why: &str) -> Result<(), BoxError> {
    let _ = writeln!(
        io::stderr(),
        "tcpdoctor watch: the terminal went away ({why}); stopping"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cheap_samples_keep_the_interval_costly_ones_are_spaced_to_the_budget() {
        let two = Duration::from_secs(2);
        assert_eq!(
            next_sample_in(two, Duration::from_millis(50), Some(0.05)),
            two
        );
        assert_eq!(
            next_sample_in(two, Duration::from_millis(330), Some(0.05)),
            Duration::from_millis(6600)
        );
        assert_eq!(next_sample_in(two, Duration::from_secs(5), None), two);
    }
}
