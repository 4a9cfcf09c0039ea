//! Fork mode, for the owner-attribution and chaos tests (`--fork-listen`): a listener
//! shared by forked workers, and optionally process churn against it.
//!
//! - The parent binds and listens on `--fork-listen` (backlog `--fork-backlog`), then
//!   forks `--fork-workers` workers that inherit the listener. Each accepts and keeps the
//!   last 64 connections open (closing the oldest), unless `--fork-idle`: then no one
//!   ever accepts, and `--fork-queued` client connections the parent makes wait in the
//!   accept queue (a full queue blamed on a parent that never accepts).
//! - It prints a ready line shaped like the farm's (`pid`, `netns`, `listeners`,
//!   `workers`; `expected` empty), then for `--fork-secs` forks `--fork-rate` short-lived
//!   processes a second: each makes `--fork-conns` connections to the listener, holds
//!   them `--fork-hold-ms`, and exits. Its last words on stderr:
//!   `sockfarm: fork churn: forked N, failed F, in MS ms`.
//! - It then holds until stdin EOF or `--hold-secs`, and ends its workers by pid.
//!
//! Everything it forks dies with it (PR_SET_PDEATHSIG), and every loop is bounded.

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::Args;
use crate::host;
use crate::sys::{self, fail, Forked, Result};

/// Most processes forked a second, and longest churn.
const MAX_RATE: u32 = 5_000;
const MAX_SECS: u64 = 600;
/// Connections an accepting worker keeps open.
const KEPT: usize = 64;
/// How long blocking socket calls of workers and churn processes may take.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct ForkRun {
    listen: SocketAddr,
    backlog: u32,
    workers: u32,
    idle: bool,
    queued: u32,
    rate: u32,
    secs: u64,
    conns: u32,
    hold: Duration,
    hold_secs: u64,
    ignore_stdin: bool,
}

impl ForkRun {
    /// `None` unless `--fork-listen` was given.
    pub fn from_args(a: &Args) -> Result<Option<ForkRun>> {
        let Some(listen) = a.fork_listen else {
            return Ok(None);
        };
        if a.fork_workers == 0 || a.fork_workers > 256 {
            return fail(format!(
                "--fork-workers {} is out of range (1-256)",
                a.fork_workers
            ));
        }
        if a.fork_rate > MAX_RATE {
            return fail(format!(
                "--fork-rate {} is out of range (0-{MAX_RATE})",
                a.fork_rate
            ));
        }
        if a.fork_secs > MAX_SECS || a.hold_secs > 3600 {
            return fail(format!(
                "--fork-secs is at most {MAX_SECS} and --hold-secs at most 3600"
            ));
        }
        if a.fork_conns > 64 || a.fork_hold_ms > 10_000 || a.fork_queued > 10_000 {
            return fail("--fork-conns is at most 64, --fork-hold-ms 10000, --fork-queued 10000");
        }
        Ok(Some(ForkRun {
            listen,
            backlog: a.fork_backlog,
            workers: a.fork_workers,
            idle: a.fork_idle,
            queued: a.fork_queued,
            rate: a.fork_rate,
            secs: a.fork_secs,
            conns: a.fork_conns,
            hold: Duration::from_millis(a.fork_hold_ms),
            hold_secs: a.hold_secs,
            ignore_stdin: a.ignore_stdin,
        }))
    }
}

/// Ends and reaps the workers on every path out of `run`.
struct Workers(Vec<libc::pid_t>);

impl Drop for Workers {
    fn drop(&mut self) {
        for &pid in &self.0 {
            sys::kill(pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut left = self.0.clone();
        while !left.is_empty() && Instant::now() < deadline {
            left.retain(|&pid| sys::try_reap(pid).is_none());
            thread::sleep(Duration::from_millis(5));
        }
    }
}

pub fn run(r: ForkRun) -> Result<()> {
    let parent = sys::getpid();
    let listener = sys::tcp_socket(&r.listen.ip())?;
    sys::set_int_opt(
        &listener,
        libc::SOL_SOCKET,
        libc::SO_REUSEADDR,
        1,
        "SO_REUSEADDR",
    )?;
    sys::bind(&listener, &r.listen)?;
    sys::listen(&listener, r.backlog, &r.listen)?;
    let addr = sys::local_addr(&listener)?;

    let mut workers = Workers(Vec::new());
    for _ in 0..r.workers {
        match sys::fork_process()? {
            Forked::Child => {
                let code = match worker(&listener, parent, r.idle) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("sockfarm: fork worker: {e}");
                        1
                    }
                };
                // SAFETY: _exit ends this forked child without running the parent's
                // destructors (its Workers guard, its stdout).
                unsafe { libc::_exit(code) };
            }
            Forked::Parent(pid) => workers.0.push(pid),
        }
    }
    // Queued clients (with --fork-idle nobody accepts them).
    let mut held: Vec<OwnedFd> = Vec::new();
    for _ in 0..r.queued {
        let c = sys::tcp_socket(&addr.ip())?;
        sys::connect_nowait(&c, &addr)?;
        held.push(c);
    }
    if r.queued > 0 {
        // The handshakes complete in the kernel; give them a moment.
        thread::sleep(Duration::from_millis(200));
    }

    let ready = serde_json::json!({
        "pid": parent,
        "netns": host::netns_id()?,
        "listeners": [{
            "addr": addr.to_string(),
            "pid": parent,
            "fd": listener.as_raw_fd(),
            "role": if r.idle { "backlog" } else { "accept" },
            "backlog": r.backlog,
            "queued": r.queued,
        }],
        "workers": workers.0.iter().map(|pid| serde_json::json!({
            "pid": pid,
            "counts": {"established": 0, "close_wait": 0, "close_wait_read": 0, "fin_wait2": 0, "unaccepted_clients": 0, "time_wait_made": 0},
        })).collect::<Vec<_>>(),
        "expected": {},
        "build_ms": 0,
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{ready}")
        .and_then(|()| out.flush())
        .map_err(|e| sys::FarmError(format!("stdout: {e}")))?;
    drop(out);

    let (forked, failed, took) = churn(&r, addr, parent, listener.as_raw_fd(), &mut workers.0);
    if r.rate > 0 {
        eprintln!(
            "sockfarm: fork churn: forked {forked}, failed {failed}, in {} ms",
            took.as_millis()
        );
    }
    hold(&r, &mut workers.0);
    drop(held);
    drop(workers);
    Ok(())
}

/// A worker: accepts and keeps the last few connections; or, idle, only holds the
/// listener. Ends when the parent does.
fn worker(listener: &OwnedFd, parent: libc::pid_t, idle: bool) -> Result<()> {
    sys::die_with_parent(parent)?;
    sys::detach_stdio()?;
    if idle {
        loop {
            // SAFETY: pause() only waits for a signal; PR_SET_PDEATHSIG delivers one.
            unsafe { libc::pause() };
        }
    }
    // accept() returns every IO_TIMEOUT so a worker never waits forever.
    sys::set_timeout(listener, libc::SO_RCVTIMEO, IO_TIMEOUT)?;
    let mut kept: VecDeque<OwnedFd> = VecDeque::with_capacity(KEPT + 1);
    loop {
        // SAFETY: plain accept4 on our listener; the fd it returns is owned below.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            continue; // timeout, EINTR, or a connection reset before it was accepted
        }
        // SAFETY: fd is a fresh descriptor from accept4.
        kept.push_back(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) });
        if kept.len() > KEPT {
            kept.pop_front();
        }
    }
}

/// Forks `rate` processes a second for `secs`; returns (forked, failed, time taken).
fn churn(
    r: &ForkRun,
    addr: SocketAddr,
    parent: libc::pid_t,
    listener: std::os::fd::RawFd,
    workers: &mut Vec<libc::pid_t>,
) -> (u64, u64, Duration) {
    let started = Instant::now();
    if r.rate == 0 || r.secs == 0 {
        return (0, 0, Duration::ZERO);
    }
    let total = u64::from(r.rate) * r.secs;
    let step = Duration::from_secs(1) / r.rate;
    let (mut forked, mut failed) = (0u64, 0u64);
    for i in 0..total {
        let due = started + step * u32::try_from(i).unwrap_or(u32::MAX);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        match sys::fork_process() {
            Ok(Forked::Child) => {
                // Not a holder of the listener: only the workers are.
                // SAFETY: closes our copy of the listener in this child only.
                unsafe { libc::close(listener) };
                let _ = sys::die_with_parent(parent);
                let mut conns = Vec::new();
                for _ in 0..r.conns {
                    let Ok(c) = sys::tcp_socket(&addr.ip()) else {
                        break;
                    };
                    let _ = sys::set_timeout(&c, libc::SO_SNDTIMEO, IO_TIMEOUT);
                    if sys::connect(&c, &addr).is_ok() {
                        conns.push(c);
                    }
                }
                thread::sleep(r.hold);
                drop(conns);
                // SAFETY: ends the forked child without the parent's destructors.
                unsafe { libc::_exit(0) };
            }
            Ok(Forked::Parent(_)) => forked += 1,
            Err(_) => failed += 1,
        }
        reap_any(workers);
        if Instant::now() > started + Duration::from_secs(r.secs + 30) {
            break; // far behind schedule: stop rather than run on
        }
    }
    // The last ones exit after their hold.
    let deadline = Instant::now() + r.hold + Duration::from_secs(5);
    while Instant::now() < deadline {
        reap_any(workers);
        thread::sleep(Duration::from_millis(10));
    }
    (forked, failed, started.elapsed())
}

/// Reaps the children that have exited (never blocks). A worker reaped here leaves
/// `workers`, so its pid is never signalled after it may have been reused.
fn reap_any(workers: &mut Vec<libc::pid_t>) {
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out-pointer; WNOHANG never blocks.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        workers.retain(|w| *w != pid);
    }
}

/// Until stdin reaches EOF (unless ignored) or `--hold-secs` pass.
fn hold(r: &ForkRun, workers: &mut Vec<libc::pid_t>) {
    let deadline = Instant::now() + Duration::from_secs(r.hold_secs);
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        if r.ignore_stdin {
            thread::sleep(Duration::from_millis(100));
            continue;
        }
        let mut fds = [libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        }];
        match sys::poll(&mut fds, Duration::from_millis(100)) {
            Ok(0) => {}
            Ok(_) => match sys::read_some(0, &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            Err(_) => return,
        }
        reap_any(workers);
    }
}
