//! tcpdoctor's entry point: parse flags, run the command, render, map the outcome to a
//! documented exit code. The only place that touches stdout, stderr and the process
//! exit status.

use std::io::{self, BufRead, IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;

use tcpdoctor::cli::Cli;
use tcpdoctor::cmd;
use tcpdoctor::model::{Confirmation, KillOutcome, Severity};
use tcpdoctor::render::{self, Style};
use tcpdoctor::settings::{self, Action, Common, Environment, KillSettings, ManSettings, Terminal};

/// Exit codes (documented in README and `--help`).
mod exit {
    pub const OK: u8 = 0;
    pub const WARNING: u8 = 1;
    pub const CRITICAL: u8 = 2;
    pub const ERROR: u8 = 3;
    /// `check` found no warning or critical problem in what it could see, but could
    /// not see everything (not root: other namespaces, owners, the kernel log).
    pub const INCOMPLETE: u8 = 4;
    /// `kill`: some selected sockets were not destroyed (a request failed, or the user
    /// said no).
    pub const NOT_ALL_DESTROYED: u8 = 1;
}

/// Columns of the report: `COLUMNS` when set, the terminal's width when stdout is
/// one, else 100 (a pipe or a file: long enough to read, short enough to diff).
fn report_width(stdout_is_tty: bool) -> usize {
    const PIPE_WIDTH: usize = 100;
    if let Some(n) = std::env::var("COLUMNS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        return n;
    }
    if !stdout_is_tty {
        return PIPE_WIDTH;
    }
    // SAFETY: TIOCGWINSZ fills a winsize the size of the one passed; fd 1 is stdout.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    if rc == 0 && ws.ws_col > 0 {
        usize::from(ws.ws_col)
    } else {
        PIPE_WIDTH
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) if is_broken_pipe(&e) => ExitCode::from(exit::OK),
        Err(e) => {
            let _ = writeln!(io::stderr(), "tcpdoctor: error: {e}");
            ExitCode::from(exit::ERROR)
        }
    }
}

/// Help and version go to stdout with status 0; anything else is one line naming the bad
/// flag or value, status 3.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::from(exit::OK);
    }
    let text = e.render().to_string();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ");
    let _ = writeln!(io::stderr(), "tcpdoctor: {first} (see --help)");
    ExitCode::from(exit::ERROR)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn run(cli: Cli) -> Result<u8, BoxError> {
    let term = Terminal {
        stdout_is_tty: io::stdout().is_terminal(),
        stdin_is_tty: io::stdin().is_terminal(),
        no_color_env: std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
    };
    let (common, action) = settings::resolve(cli, term, &Environment::from_process())?;
    let style = Style {
        color: common.color,
    };
    let err_style = Style {
        color: common.color && io::stderr().is_terminal(),
    };
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(256 * 1024, stdout.lock());
    let mut code = exit::OK;
    match action {
        Action::Check(s) => {
            let report = cmd::check::run(&common, &s)?;
            if s.emit_sysctl {
                // Exactly what the findings propose (render::sysctl_file).
                render::sysctl_file::write(&mut out, &report)?;
            } else if s.json {
                render::check::write_json(&mut out, &report)?;
            } else {
                let view = render::check::HumanView {
                    style,
                    verbose: s.verbose,
                    width: report_width(term.stdout_is_tty),
                };
                render::check::write_human(&mut out, &report, view)?;
            }
            if !s.emit_sysctl {
                code = match render::check::status(&report.findings) {
                    Some(Severity::Critical) => exit::CRITICAL,
                    Some(Severity::Warning) => exit::WARNING,
                    _ if !report.complete() => exit::INCOMPLETE,
                    _ => exit::OK,
                };
            }
        }
        Action::Lint(s) => {
            let report = cmd::lint::run(&common, &s)?;
            if s.json {
                render::lint::write_json(&mut out, &report)?;
            } else {
                render::lint::write_human(&mut out, &report, style, s.verbose)?;
            }
            // Like check; a configuration that cannot be read or parsed is an error.
            code = if report.failed() {
                exit::ERROR
            } else {
                match render::check::status(&report.findings) {
                    Some(Severity::Critical) => exit::CRITICAL,
                    Some(Severity::Warning) => exit::WARNING,
                    _ => exit::OK,
                }
            };
        }
        Action::Watch(s) => {
            drop(out);
            tcpdoctor::live::watch::run(&common, &s)?;
            return Ok(exit::OK);
        }
        Action::Serve(s) => {
            // The server logs from its worker threads: release stdout.
            drop(out);
            tcpdoctor::live::serve::run(&common, &s)?;
            return Ok(exit::OK);
        }
        Action::Snapshot(s) => {
            let r = cmd::snapshot::run(&common, &s)?;
            let w = r.written;
            writeln!(
                out,
                "wrote {}: {} in {} of {}, {}",
                r.path.display(),
                tcpdoctor::model::units::count(w.sockets, "socket", "sockets"),
                tcpdoctor::model::units::count(w.namespaces as u64, "namespace", "namespaces"),
                if r.hostname.is_empty() {
                    "this host"
                } else {
                    &r.hostname
                },
                tcpdoctor::model::units::human_bytes(w.bytes)
            )?;
        }
        Action::Diff(s) => {
            let report = cmd::diff::run(&s)?;
            if s.json {
                render::diff::write_json(&mut out, &report)?;
            } else {
                render::diff::write_human(&mut out, &report, style)?;
                out.flush()?;
                render::write_notices(&mut io::stderr().lock(), &report.notices, err_style)?;
            }
        }
        Action::Trace(s) => {
            drop(out);
            tcpdoctor::live::trace::run(&common, &s)?;
            return Ok(exit::OK);
        }
        Action::Kill(s) => {
            code = kill(&common, &s, style, err_style, &mut out)?;
        }
        Action::Completions(shell) => {
            out.write_all(&tcpdoctor::manual::completions(shell))?;
        }
        Action::Man(ManSettings::Print(words)) => {
            let page = tcpdoctor::manual::page(&words)?;
            out.write_all(&tcpdoctor::manual::render(&page)?)?;
        }
        Action::Man(ManSettings::WriteAll(dir)) => {
            for path in tcpdoctor::manual::write_all(&dir)? {
                writeln!(out, "{}", path.display())?;
            }
        }
        Action::States(s) => {
            let report = cmd::states::run(&common, &s)?;
            if s.json {
                render::states::write_json(&mut out, &report)?;
            } else {
                render::states::write_human(&mut out, &report, style)?;
                out.flush()?;
                render::write_notices(&mut io::stderr().lock(), &report.notices, err_style)?;
            }
        }
        Action::Sockets(s) => {
            let report = cmd::sockets::run(&common, &s)?;
            if s.json {
                render::sockets::write_json(&mut out, &report)?;
            } else {
                render::sockets::write_human(&mut out, &report, style)?;
                out.flush()?;
                // stderr is locked only here, after collection: worker threads may write
                // to it while a command runs (TCPDOCTOR_DEBUG).
                let mut err = io::stderr().lock();
                render::sockets::write_summary_line(&mut err, &report)?;
                render::write_notices(&mut err, &report.notices, err_style)?;
            }
        }
    }
    out.flush()?;
    Ok(code)
}

/// `kill`: list, ask unless --yes or --dry-run, destroy, say what happened. Exit 0 when
/// every selected socket was destroyed or was already gone (or nothing matched, or a dry
/// run), 1 when some were not or the user said no, 3 when none could be (a kernel
/// without CONFIG_INET_DIAG_DESTROY, no CAP_NET_ADMIN).
fn kill(
    common: &Common,
    s: &KillSettings,
    style: Style,
    err_style: Style,
    out: &mut impl Write,
) -> Result<u8, BoxError> {
    let plan = cmd::kill::plan(common, s)?;
    if s.dry_run || plan.report.rows.is_empty() {
        if s.json {
            render::kill::write_json(out, &plan.report)?;
        } else {
            render::kill::write_plan(out, &plan.report, style)?;
            out.flush()?;
            render::write_notices(&mut io::stderr().lock(), &plan.report.notices, err_style)?;
        }
        return Ok(exit::OK);
    }
    let mut notes_shown = 0;
    let report = if s.yes {
        cmd::kill::execute(common, plan)
    } else {
        // The selection goes where the question is asked when stdout carries JSON.
        if s.json {
            render::kill::write_plan(&mut io::stderr().lock(), &plan.report, err_style)?;
        } else {
            render::kill::write_plan(out, &plan.report, style)?;
            out.flush()?;
        }
        // Before the question: missing owners change what the answer means.
        render::write_notices(&mut io::stderr().lock(), &plan.report.notices, err_style)?;
        notes_shown = plan.report.notices.len();
        if ask(&render::kill::question(&plan.report))? {
            cmd::kill::execute(common, plan)
        } else {
            cmd::kill::decline(plan)
        }
    };
    if s.json {
        render::kill::write_json(out, &report)?;
    } else {
        render::kill::write_results(out, &report, style)?;
        out.flush()?;
        render::write_notices(
            &mut io::stderr().lock(),
            report.notices.get(notes_shown..).unwrap_or_default(),
            err_style,
        )?;
    }
    if let Some(line) = render::kill::stop_line(&report) {
        writeln!(io::stderr(), "tcpdoctor: {line}")?;
    }
    let all_done = report
        .rows
        .iter()
        .all(|r| matches!(r.outcome, KillOutcome::Destroyed | KillOutcome::AlreadyGone));
    Ok(if report.stopped.is_some() {
        exit::ERROR
    } else if report.confirmation == Confirmation::Declined || !all_done {
        exit::NOT_ALL_DESTROYED
    } else {
        exit::OK
    })
}

/// Asks `question` on stderr and reads the answer from the terminal on stdin: yes only
/// for `y` or `yes`. Whatever was typed before the question appeared is discarded, so
/// a stray keystroke cannot answer it.
fn ask(question: &str) -> io::Result<bool> {
    // Flushed before the question is shown: an answer typed after it always counts.
    // SAFETY: tcflush on fd 0, which settings checked is a terminal; it only drops
    // pending input.
    unsafe { libc::tcflush(libc::STDIN_FILENO, libc::TCIFLUSH) };
    let mut err = io::stderr().lock();
    err.write_all(question.as_bytes())?;
    err.flush()?;
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    let answer = line.trim().to_ascii_lowercase();
    Ok(answer == "y" || answer == "yes")
}

/// `tcpdoctor sockets | head` closes the pipe early; that is not an error.
fn is_broken_pipe(e: &BoxError) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::BrokenPipe {
                return true;
            }
        }
        cur = err.source();
    }
    false
}
