//! Bounded runs: of any command (`run_bounded`), of tcpdoctor in the test's own
//! namespace (`run_tcpdoctor`, `tcpdoctor_json`), and bounded waits for a condition or
//! a child. A child that overstays is killed by its own pid, never by name.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::TCPDOCTOR;

/// How long a tcpdoctor or ss run may take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `ip`, `sh` and other set-up commands may take.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// uid/gid of the unprivileged runs (nobody/nogroup on Debian).
pub const NOBODY: u32 = 65534;

/// Calls `poll` every `every` until it returns `Some`, for at most `timeout` (at least
/// once). `None`: the time ran out.
pub fn wait_for<T>(
    timeout: Duration,
    every: Duration,
    mut poll: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = poll() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(every);
    }
}

/// Waits up to `timeout` for `child` to exit. `None`: still running then; the caller
/// decides whether to kill it.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    wait_for(timeout, Duration::from_millis(5), || {
        child.try_wait().ok().flatten()
    })
}

/// Kills `child` (by its own pid) and reaps it, unless it has already exited.
pub fn kill_if_running(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Runs `cmd` with stdout and stderr captured; kills it (by its own pid) if it
/// has not finished after `timeout`. Returns `Err` with what was captured on
/// timeout or spawn failure.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    run(cmd, None, timeout)
}

/// Like `run_bounded`, with `input` written to the command's stdin (then closed).
pub fn run_bounded_with_input(
    cmd: &mut Command,
    input: &[u8],
    timeout: Duration,
) -> Result<Output, String> {
    run(cmd, Some(input), timeout)
}

fn run(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Result<Output, String> {
    let shown = format!("{cmd:?}");
    let stdin = if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {shown}: {e}"))?;
    // Fed from a thread, so a child that answers before reading all of it cannot block
    // on a full pipe while this thread blocks on its stdin.
    if let (Some(mut pipe), Some(bytes)) = (child.stdin.take(), input) {
        let bytes = bytes.to_vec();
        thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let Some(status) = wait_exit(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        let stderr = String::from_utf8_lossy(&join_drain(err)).into_owned();
        return Err(format!(
            "{shown} did not finish within {timeout:?}; stderr: {stderr}"
        ));
    };
    Ok(Output {
        status,
        stdout: join_drain(out),
        stderr: join_drain(err),
    })
}

/// A pipe being read to EOF on a thread.
pub type Drain = Option<thread::JoinHandle<Vec<u8>>>;

/// Reads a pipe to EOF on a thread, so a chatty child never blocks on a full pipe.
pub fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Drain {
    pipe.map(|mut p| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            buf
        })
    })
}

/// What a `drain` read (empty if there was no pipe).
pub fn join_drain(d: Drain) -> Vec<u8> {
    d.and_then(|h| h.join().ok()).unwrap_or_default()
}

/// Runs a set-up command (bounded) and panics with its stderr if it fails.
pub fn must_run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = run_bounded(cmd, SETUP_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs tcpdoctor in the test's own network namespace, with NO_COLOR=1 (bounded);
/// fails the test if it cannot be run or does not finish.
pub fn run_tcpdoctor(args: &[&str]) -> Output {
    let mut cmd = Command::new(TCPDOCTOR);
    cmd.args(args).env("NO_COLOR", "1");
    run_bounded(&mut cmd, RUN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

/// (exit code, stdout as JSON) of `run_tcpdoctor(args)`; -1 if killed by a signal.
pub fn tcpdoctor_json(args: &[&str]) -> (i32, Value) {
    code_and_json(&run_tcpdoctor(args))
}

/// stdout as JSON; fails the test, showing stdout and stderr, when it is not.
pub fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}; exit {}): {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// (exit code, stdout as JSON); -1 if killed by a signal.
pub fn code_and_json(out: &Output) -> (i32, Value) {
    (out.status.code().unwrap_or(-1), stdout_json(out))
}

/// stdout as JSON, after asserting that the run succeeded.
pub fn success_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "tcpdoctor failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout_json(out)
}

/// Panics unless uid 65534 can reach and execute `binary`: every directory on
/// the way needs o+x, the file o+rx.
pub fn assert_reachable_by_others(binary: &Path) {
    let meta = std::fs::metadata(binary).unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    assert!(
        meta.permissions().mode() & 0o005 == 0o005,
        "{} is not readable and executable by others (mode {:o}); uid {NOBODY} cannot run it",
        binary.display(),
        meta.permissions().mode() & 0o7777
    );
    for dir in binary.ancestors().skip(1) {
        if dir.as_os_str().is_empty() {
            continue;
        }
        let mode = std::fs::metadata(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .permissions()
            .mode();
        assert!(
            mode & 0o001 != 0,
            "directory {} has mode {:o} (no o+x); uid {NOBODY} cannot reach {}",
            dir.display(),
            mode & 0o7777,
            binary.display()
        );
    }
}
