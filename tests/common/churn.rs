//! Processes that print JSON lines (the sockfarm churn mode, `tcpdoctor trace --json`)
//! run as children: their lines arrive on a channel, every wait is bounded, and a
//! child still running when dropped is killed by pid. The churn server and client run
//! in a test's namespace, each its own process (so each end has its own pid).

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::netns::Netns;
use super::sockfarm;

/// How long a child may take to print a line it owes.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the tracer may take to print its summary and exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A child whose stdout lines arrive on a channel; killed by pid if still running when
/// dropped.
pub struct Lines {
    child: Child,
    stdin: Option<ChildStdin>,
    pub rx: mpsc::Receiver<String>,
    what: String,
}

impl Lines {
    pub fn spawn(mut cmd: Command, what: &str) -> Lines {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env("NO_COLOR", "1")
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
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
        Lines {
            child,
            stdin,
            rx,
            what: what.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the child has not exited yet.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The next line, as JSON.
    pub fn next_json(&self) -> Value {
        let line = self
            .rx
            .recv_timeout(LINE_TIMEOUT)
            .unwrap_or_else(|e| panic!("{}: no line within {LINE_TIMEOUT:?}: {e}", self.what));
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", self.what))
    }

    /// Closes stdin (the churn processes then exit) and waits, bounded.
    pub fn finish(mut self) -> Vec<Value> {
        self.stdin = None;
        self.wait_exit()
    }

    /// SIGTERM (the tracer then prints its summary) and waits, bounded.
    pub fn terminate(mut self) -> Vec<Value> {
        // SAFETY: plain syscall on our own unreaped child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        self.wait_exit()
    }

    pub fn wait_exit(&mut self) -> Vec<Value> {
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!("{} did not exit within {STOP_TIMEOUT:?}", self.what);
                }
            }
        };
        assert!(status.success(), "{} exited with {status}", self.what);
        let mut rest = Vec::new();
        while let Ok(line) = self.rx.recv_timeout(Duration::from_secs(5)) {
            rest.push(
                serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", self.what)),
            );
        }
        rest
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `sockfarm ARGS` in `ns`, its JSON lines read by a [`Lines`] (`--hold-secs 300`
/// bounds it if the test dies first).
pub fn spawn_farm(ns: &Netns, args: &[&str], what: &str) -> Lines {
    let mut all = vec!["--hold-secs", "300"];
    all.extend_from_slice(args);
    Lines::spawn(ns.command(sockfarm(), &all), what)
}

/// The churn server in `ns`; returns it and its listening port.
pub fn start_server(ns: &Netns, extra: &[&str]) -> (Lines, u16) {
    let mut args = vec!["--churn-serve", "127.0.0.1:0", "--hold-secs", "300"];
    args.extend_from_slice(extra);
    let s = Lines::spawn(ns.command(sockfarm(), &args), "churn server");
    let ready = s.next_json();
    let listen = ready["listen"].as_str().expect("listen address");
    let port = listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port");
    assert_eq!(ready["pid"], s.pid(), "ip netns exec keeps the pid");
    (s, port)
}

/// Runs a churn client in `ns` to completion; returns its pid and result line.
pub fn run_client(ns: &Netns, port: u16, extra: &[&str]) -> (u32, Value) {
    let to = format!("127.0.0.1:{port}");
    let mut args = vec!["--churn-connect", to.as_str(), "--hold-secs", "300"];
    args.extend_from_slice(extra);
    let c = Lines::spawn(ns.command(sockfarm(), &args), "churn client");
    let pid = c.pid();
    let result = c.next_json();
    c.finish();
    (pid, result)
}

/// `tcpdoctor check --json` started on the host, narrowed to one namespace
/// (`--netns NAME`), running in the background while a test makes connections during
/// its counter interval. Killed by pid if dropped before it finishes.
pub struct TracedCheck {
    child: Child,
    out: super::run::Drain,
    err: super::run::Drain,
}

impl TracedCheck {
    /// Starts it and returns once its connection tracer is attached (its three
    /// tracepoint links are open: the tracer attaches them before the first reading),
    /// so everything the test does from now until the interval ends is traced.
    pub fn start(ns: &Netns, interval_s: &str, extra: &[&str]) -> TracedCheck {
        let mut args = vec![
            "check",
            "--json",
            "--netns",
            ns.name(),
            "--interval",
            interval_s,
        ];
        args.extend_from_slice(extra);
        TracedCheck::start_args(&args)
    }

    /// `tcpdoctor ARGS` (a command that traces during its interval: `check`,
    /// `snapshot`), returned once its tracer is attached.
    pub fn start_args(args: &[&str]) -> TracedCheck {
        let mut cmd = Command::new(super::TCPDOCTOR);
        cmd.args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn tcpdoctor {args:?}: {e}"));
        let out = super::run::drain(child.stdout.take());
        let err = super::run::drain(child.stderr.take());
        let mut check = TracedCheck { child, out, err };
        let pid = check.child.id();
        let attached = super::run::wait_for(LINE_TIMEOUT, Duration::from_millis(5), || {
            (bpf_links(pid) >= 3).then_some(())
        });
        // The tracepoint links come last and within microseconds of each other (on
        // kernels that allow fexit, its links come first): let them all be made.
        thread::sleep(Duration::from_millis(100));
        if attached.is_none() {
            super::run::kill_if_running(&mut check.child);
            let err =
                String::from_utf8_lossy(&super::run::join_drain(check.err.take())).into_owned();
            panic!("tcpdoctor {args:?} (pid {pid}) attached no tracer within {LINE_TIMEOUT:?}; stderr: {err}");
        }
        check
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) for the report: (exit code, JSON).
    pub fn finish(self) -> (i32, Value) {
        let (code, out, err) = self.finish_raw();
        let v = serde_json::from_slice(&out).unwrap_or_else(|e| {
            panic!(
                "check printed no JSON ({e}, exit {code}): {}\nstderr: {}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            )
        });
        (code, v)
    }

    /// Waits (bounded) for it to end: (exit code, stdout, stderr).
    pub fn finish_raw(mut self) -> (i32, Vec<u8>, Vec<u8>) {
        let status = super::run::wait_exit(&mut self.child, STOP_TIMEOUT);
        if status.is_none() {
            super::run::kill_if_running(&mut self.child);
        }
        let out = super::run::join_drain(self.out.take());
        let err = super::run::join_drain(self.err.take());
        let status = status.unwrap_or_else(|| {
            panic!(
                "tcpdoctor did not finish within {STOP_TIMEOUT:?}; stderr: {}",
                String::from_utf8_lossy(&err)
            )
        });
        (status.code().unwrap_or(-1), out, err)
    }
}

impl Drop for TracedCheck {
    fn drop(&mut self) {
        super::run::kill_if_running(&mut self.child);
    }
}

/// How many BPF links the process `pid` holds open (`anon_inode:bpf_link`).
pub fn bpf_links(pid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|t| t.to_string_lossy() == "anon_inode:bpf_link")
        .count()
}
