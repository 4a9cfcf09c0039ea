//! sockfarm's churn mode (`--churn-serve`, `--churn-connect`) run in a test's network
//! namespace: one process per side, so each end has its own pid. Each child is killed
//! by its own pid and reaped when dropped; every wait for a line is bounded.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use super::netns::Netns;
use super::run::{drain, join_drain, Drain};
use super::sockfarm;

/// How long a churn process may take to print a line it owes.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// A running churn process and the JSON lines it prints.
pub struct ChurnProcess {
    child: Child,
    /// Kept open: a churn process that waits for stdin EOF runs until dropped.
    _stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Drain,
    what: String,
}

impl ChurnProcess {
    /// `sockfarm ARGS` inside `ns` (`--hold-secs 300` bounds it if the test dies).
    pub fn spawn(ns: &Netns, args: &[&str], what: &str) -> ChurnProcess {
        let mut all = vec!["--hold-secs", "300"];
        all.extend_from_slice(args);
        let mut child = ns
            .command(sockfarm(), &all)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let stdin = child.stdin.take();
        let stderr = drain(child.stderr.take());
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        ChurnProcess {
            child,
            _stdin: stdin,
            lines,
            stderr,
            what: what.to_string(),
        }
    }

    /// `ip netns exec` keeps the pid: this is the churn process's.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line it prints, as JSON (fails the test after [`LINE_TIMEOUT`]).
    pub fn next_json(&mut self) -> Value {
        let line = match self.lines.recv_timeout(LINE_TIMEOUT) {
            Ok(line) => line,
            Err(e) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = String::from_utf8_lossy(&join_drain(self.stderr.take())).into_owned();
                panic!(
                    "{}: no line within {LINE_TIMEOUT:?} ({e}); stderr: {stderr}",
                    self.what
                )
            }
        };
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", self.what))
    }
}

impl Drop for ChurnProcess {
    fn drop(&mut self) {
        // Our own unreaped child: its pid cannot have been reused.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A churn server on 127.0.0.1 in `ns` with `extra` flags; returns it and its port.
pub fn serve(ns: &Netns, extra: &[&str]) -> (ChurnProcess, u16) {
    let mut args = vec!["--churn-serve", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut s = ChurnProcess::spawn(ns, &args, "churn server");
    let ready = s.next_json();
    let port = ready["listen"]
        .as_str()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("churn server ready line without a port: {ready}"));
    assert_eq!(ready["pid"], s.pid(), "ip netns exec keeps the pid");
    (s, port)
}
