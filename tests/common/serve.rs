//! A running `tcpdoctor serve` (`Served`) and plain HTTP/1.0 exchanges with it: start
//! it and wait for the address it prints, scrape `/metrics`, signal and stop it. Every
//! wait is bounded; an exporter still running when the test ends is killed by its pid.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::prom::Scrape;
use super::run::{kill_if_running, wait_exit};
use super::TCPDOCTOR;

/// How long the exporter may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one HTTP exchange may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the exporter may take to exit after SIGTERM or SIGINT.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A running `tcpdoctor serve`; killed (by its pid) if the test did not stop it.
pub struct Served {
    child: Child,
    /// Where it listens (it was started with `--listen 127.0.0.1:0`).
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Served {
    /// Starts `cmd` (a `tcpdoctor ... serve --listen 127.0.0.1:0 ...` command) and waits
    /// for the address it prints.
    pub fn start(mut cmd: Command) -> Served {
        let shown = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        if let Some(pipe) = child.stderr.take() {
            let log = Arc::clone(&stderr);
            thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let (Some(t), Some(addr)) = (&tx, listening_addr(&line)) {
                        let _ = t.send(addr);
                        tx = None;
                    }
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(a) => a,
            Err(_) => {
                kill_if_running(&mut child);
                let err = stderr.lock().map(|s| s.clone()).unwrap_or_default();
                panic!("{shown}: no listening line within {START_TIMEOUT:?}; stderr: {err}");
            }
        };
        Served {
            child,
            addr,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Sends `signal` to the exporter.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: plain syscall on our own child's pid, not yet reaped (reaping takes
        // `&mut self`).
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// Waits (bounded) for it to exit. `None`: still running after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, timeout)
    }

    /// SIGTERM, then a bounded wait. Returns the exit status (None: still running after
    /// STOP_TIMEOUT, then killed).
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        let status = self.wait(STOP_TIMEOUT);
        if status.is_none() {
            kill_if_running(&mut self.child);
        }
        status
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        kill_if_running(&mut self.child);
    }
}

/// `127.0.0.1:9469` from "tcpdoctor serve: listening on http://127.0.0.1:9469/metrics".
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("listening on http://").nth(1)?;
    rest.split('/').next()?.parse().ok()
}

/// One HTTP/1.0 exchange (so the answer is never chunked): (status, headers, body).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
    write!(s, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read answer to {path}: {e}"));
    let text = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (status, head.to_string(), body.to_string())
}

/// `GET /metrics`: asserts a 200 in the Prometheus text format and returns the body.
pub fn scrape(addr: SocketAddr) -> String {
    let (status, head, body) = http(addr, "GET", "/metrics");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body
}

/// `tcpdoctor --proc-root ROOT --source proc serve --listen 127.0.0.1:0 EXTRA...`: the
/// exporter replaying a captured host (no root needed).
pub fn replay_command(root: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(TCPDOCTOR);
    cmd.arg("--proc-root")
        .arg(root)
        .args(["--source", "proc", "serve", "--listen", "127.0.0.1:0"])
        .args(extra);
    cmd
}

/// `tcpdoctor_collections_total` of a scrape body.
pub fn collections_total(body: &str) -> f64 {
    Scrape::parse(body).must("tcpdoctor_collections_total", &[])
}
