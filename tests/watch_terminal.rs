//! `tcpdoctor watch` when its terminal goes away or it is told to stop (issue 16): it
//! used to spin on read(0) = 0 at 60-75% of a core, ignoring SIGTERM and SIGHUP, once
//! an ssh session dropped. Now it ends, status 0, on a killed tmux session (root, in a
//! private network namespace), on a pseudo-terminal whose master closes without any
//! signal, and on SIGHUP and SIGTERM, putting the terminal back where it still can.
//! Every wait is bounded; every process is one the test started, stopped by its pid.

mod common;

use std::process::Command;
use std::time::Duration;

use common::fixtures::TempDir;
use common::netns::Netns;
use common::pty::{contains, PtyChild};
use common::run::{must_run, run_bounded, wait_for, SETUP_TIMEOUT};
use common::tools::tool;
use common::TCPDOCTOR;

/// How long `watch` may take to end once its terminal is gone or it got a signal (it
/// looks every 100 ms; the rest is slack for a loaded machine).
const ENDS_WITHIN: Duration = Duration::from_secs(10);
/// How long the first drawn dashboard may take (a debug build's first sample).
const DRAWN_WITHIN: Duration = Duration::from_secs(30);

const ENTER_ALT: &[u8] = b"\x1b[?1049h";
const LEAVE_ALT: &[u8] = b"\x1b[?1049l";
const SHOW_CURSOR: &[u8] = b"\x1b[?25h";
/// The findings panel's title: drawn once the first sample is in.
const DRAWN: &[u8] = b"Findings:";

fn watch_command() -> Command {
    let mut cmd = Command::new(TCPDOCTOR);
    cmd.args(["watch", "--interval", "0.5"])
        .env("TERM", "xterm");
    cmd
}

/// Left and showed the cursor again after the last time it entered the alternate screen.
fn assert_restored(out: &[u8]) {
    let leave = out
        .windows(LEAVE_ALT.len())
        .rposition(|w| w == LEAVE_ALT)
        .unwrap_or_else(|| {
            panic!(
                "alternate screen never left: {:?}",
                String::from_utf8_lossy(out)
            )
        });
    assert!(
        contains(&out[leave..], SHOW_CURSOR),
        "cursor not shown again"
    );
}

/// Whether process `pid` has ended (gone, or a zombie waiting for its parent).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

#[test]
fn a_terminal_that_closes_without_a_signal_ends_watch() {
    // Not its controlling terminal: closing the master sends no SIGHUP, so only end of
    // file or EIO on the terminal can tell watch the session is over (the state of a
    // re-parented watch after sshd went away).
    let mut watch = PtyChild::spawn(watch_command(), 80, 24, false);
    assert!(
        watch.wait_output(DRAWN, DRAWN_WITHIN),
        "nothing drawn within {DRAWN_WITHIN:?}: {:?}",
        String::from_utf8_lossy(&watch.output())
    );
    assert!(contains(&watch.output(), ENTER_ALT));
    watch.hang_up();
    let status = watch.wait(ENDS_WITHIN);
    assert!(
        status.is_some(),
        "watch still running {ENDS_WITHIN:?} after its terminal closed"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

#[test]
fn sighup_and_sigterm_end_watch_and_restore_the_terminal() {
    for sig in [libc::SIGHUP, libc::SIGTERM] {
        let mut watch = PtyChild::spawn(watch_command(), 80, 24, true);
        assert!(
            watch.wait_output(DRAWN, DRAWN_WITHIN),
            "nothing drawn within {DRAWN_WITHIN:?}"
        );
        watch.signal(sig);
        let status = watch.wait(ENDS_WITHIN);
        assert!(status.is_some(), "watch ignored signal {sig}");
        assert_eq!(status.and_then(|s| s.code()), Some(0), "signal {sig}");
        assert_restored(&watch.output());
    }
}

/// A tmux server on a socket of its own, killed (with `tmux kill-server` on that
/// socket) when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.socket, "-f", "/dev/null"]).args(args);
        run_bounded(&mut cmd, SETUP_TIMEOUT).unwrap_or_else(|e| panic!("tmux {args:?}: {e}"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

#[test]
#[ignore = "needs root"]
fn killing_its_tmux_session_ends_watch() {
    let Some(_) = tool(
        "tmux",
        "-V",
        "Debian package tmux",
        "watch in a tmux session",
    ) else {
        return;
    };
    let ns = Netns::new("tmuxw");
    let tmp = TempDir::new("tmux");
    let pid_file = tmp.path().join("watch.pid");
    // The pane runs a script that records its pid and becomes watch (exec, then
    // `ip netns exec` execs too), so the pid is watch's.
    let script = tmp.path().join("pane.sh");
    std::fs::write(
        &script,
        format!(
            "echo $$ > '{}'\nexec ip netns exec '{}' '{}' watch --interval 0.5\n",
            pid_file.display(),
            ns.name(),
            TCPDOCTOR
        ),
    )
    .expect("write the pane's script");
    let tmux = Tmux {
        socket: format!("tdt-watch-{}", std::process::id()),
    };
    let pane = format!("sh '{}'", script.display());
    let out = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "w",
        "-x",
        "100",
        "-y",
        "30",
        &pane,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let pid: u32 = wait_for(SETUP_TIMEOUT, Duration::from_millis(50), || {
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "tcpdoctor").then_some(pid)
    })
    .expect("watch never started in the pane");
    let drawn = wait_for(DRAWN_WITHIN, Duration::from_millis(100), || {
        let out = tmux.run(&["capture-pane", "-p", "-t", "w"]);
        contains(&out.stdout, DRAWN).then_some(())
    });
    if drawn.is_none() {
        // SAFETY: kill(2) on the watch this test started in its own tmux.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        panic!("watch drew nothing in tmux within {DRAWN_WITHIN:?}");
    }

    must_run(Command::new("tmux").args(["-L", &tmux.socket, "kill-session", "-t", "w"]));
    let gone = wait_for(ENDS_WITHIN, Duration::from_millis(50), || {
        ended(pid).then_some(())
    });
    if gone.is_none() {
        // SAFETY: as above; the test fails either way.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        panic!("watch (pid {pid}) still running {ENDS_WITHIN:?} after its tmux session was killed");
    }
}
