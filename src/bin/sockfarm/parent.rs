//! The parent process: binds the listeners, forks the workers, steps them through
//! the phases in lockstep, checks the kernel counters, prints the ready line and
//! holds until --hold-secs, stdin EOF or SIGTERM/SIGINT. Its `Farm` guard makes
//! sure no worker outlives it on any path.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cli::Args;
use crate::host;
use crate::plan::{Phase, Plan, Request};
use crate::report::{Expected, ListenerReport, Ready, WorkerReport};
use crate::sys::{self, fail, FarmError, Forked, Result};
use crate::worker::{self, Listeners, READ_TIMEOUT};

/// How long workers get to exit on their own before they are killed.
const EXIT_GRACE: Duration = Duration::from_secs(20);
/// How long the parent waits for the kernel to settle a count (accept queues,
/// TIME_WAIT minisockets).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

struct WorkerHandle {
    pid: libc::pid_t,
    /// Parent -> worker: phase bytes; closing it tells the worker to exit.
    control: Option<OwnedFd>,
    /// Worker -> parent: one line per request.
    report: OwnedFd,
    pending: Vec<u8>,
}

/// Owns the workers; dropping it ends and reaps them (bounded).
struct Farm {
    workers: Vec<WorkerHandle>,
}

impl Drop for Farm {
    fn drop(&mut self) {
        // Closing the control pipes lets every worker exit in parallel.
        for w in &mut self.workers {
            w.control = None;
        }
        let deadline = Instant::now() + EXIT_GRACE;
        let mut left: Vec<libc::pid_t> = self.workers.iter().map(|w| w.pid).collect();
        while !left.is_empty() && Instant::now() < deadline {
            left.retain(|&pid| sys::try_reap(pid).is_none());
            if !left.is_empty() {
                thread::sleep(Duration::from_millis(10));
            }
        }
        for &pid in &left {
            sys::kill(pid, libc::SIGKILL);
        }
        // SIGKILL cannot be ignored; bound the reaping anyway.
        let deadline = Instant::now() + EXIT_GRACE;
        while !left.is_empty() && Instant::now() < deadline {
            left.retain(|&pid| sys::try_reap(pid).is_none());
            if !left.is_empty() {
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Farm {
    /// Sends one byte to every worker.
    fn broadcast(&self, byte: u8) -> Result<()> {
        for w in &self.workers {
            let fd = w
                .control
                .as_ref()
                .ok_or_else(|| FarmError("internal: control pipe already closed".into()))?;
            sys::write_all(fd.as_raw_fd(), &[byte])
                .map_err(|e| FarmError(format!("worker pid {}: {}", w.pid, e.0)))?;
        }
        Ok(())
    }

    /// Collects one line from every worker, in any order, until `deadline`.
    /// The first `err` line (or a worker that died) aborts the build at once.
    fn gather(&mut self, deadline: Instant, what: &str) -> Result<Vec<String>> {
        let mut lines: Vec<Option<String>> = vec![None; self.workers.len()];
        let mut buf = vec![0u8; 64 * 1024];
        while lines.iter().any(Option::is_none) {
            let now = Instant::now();
            if now >= deadline {
                let slow: Vec<String> = self
                    .workers
                    .iter()
                    .zip(&lines)
                    .filter(|(_, l)| l.is_none())
                    .map(|(w, _)| w.pid.to_string())
                    .collect();
                return fail(format!(
                    "{what}: timed out waiting for worker pids {}",
                    slow.join(",")
                ));
            }
            let waiting: Vec<usize> = (0..self.workers.len())
                .filter(|&i| lines[i].is_none())
                .collect();
            let mut fds: Vec<libc::pollfd> = waiting
                .iter()
                .map(|&i| libc::pollfd {
                    fd: self.workers[i].report.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            sys::poll(&mut fds, deadline - now)?;
            for (pfd, &i) in fds.iter().zip(&waiting) {
                if pfd.revents == 0 {
                    continue;
                }
                let w = &mut self.workers[i];
                let n = sys::read_some(w.report.as_raw_fd(), &mut buf)?;
                if n == 0 {
                    let status = wait_briefly(w.pid);
                    return fail(format!("{what}: worker pid {} {status}", w.pid));
                }
                w.pending.extend_from_slice(&buf[..n]);
                if let Some(end) = w.pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = w.pending.drain(..=end).collect();
                    let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                    if let Some(msg) = text.strip_prefix("err ") {
                        return fail(format!("worker pid {}: {msg}", w.pid));
                    }
                    lines[i] = Some(text);
                }
            }
        }
        Ok(lines.into_iter().flatten().collect())
    }
}

/// Gives an exiting worker a moment to be reaped, for a useful error message.
fn wait_briefly(pid: libc::pid_t) -> String {
    for _ in 0..100 {
        if let Some(status) = sys::try_reap(pid) {
            return status;
        }
        thread::sleep(Duration::from_millis(10));
    }
    "closed its pipe".to_string()
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Binds and listens; IPv6 listeners are v6-only so [::1] and 127.0.0.1 can share
/// a port number.
fn open_listener(
    addr: &SocketAddr,
    backlog: u32,
    accepting: bool,
) -> Result<(OwnedFd, SocketAddr)> {
    let fd = sys::tcp_socket(&addr.ip())?;
    sys::set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1, "SO_REUSEADDR")?;
    if addr.is_ipv6() {
        sys::set_int_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1, "IPV6_V6ONLY")?;
    }
    if accepting {
        // Bounds accept() in the workers, which inherit this socket.
        sys::set_timeout(&fd, libc::SO_RCVTIMEO, READ_TIMEOUT)?;
    }
    sys::bind(&fd, addr)?;
    sys::listen(&fd, backlog, addr)?;
    let bound = sys::local_addr(&fd)?;
    Ok((fd, bound))
}

/// Forks the workers. Each child closes what belongs to the parent and its
/// siblings, then runs `worker::run` and exits without returning here.
fn spawn_workers(plan: &Plan, accepting: &[OwnedFd], backlog: &[OwnedFd]) -> Result<Farm> {
    let parent = sys::getpid();
    let mut farm = Farm {
        workers: Vec::new(),
    };
    for index in 0..plan.processes() {
        let (control_r, control_w) = sys::pipe()?;
        let (report_r, report_w) = sys::pipe()?;
        match sys::fork_process()? {
            Forked::Child => {
                // Close the siblings' pipe ends without running Farm's Drop (which
                // would kill the siblings): take the handles out, drop them, and
                // leave the process only through exit().
                let siblings = std::mem::take(&mut farm.workers);
                drop(siblings);
                drop(control_w);
                drop(report_r);
                let code = match child_setup(parent, accepting, backlog) {
                    Ok(listeners) => worker::run(plan, index, listeners, control_r, report_w),
                    Err(e) => {
                        let line = format!("err {}\n", e.0);
                        let _ = sys::write_all(report_w.as_raw_fd(), line.as_bytes());
                        1
                    }
                };
                std::mem::forget(farm);
                std::process::exit(code);
            }
            Forked::Parent(pid) => farm.workers.push(WorkerHandle {
                pid,
                control: Some(control_w),
                report: report_r,
                pending: Vec::new(),
            }),
        }
    }
    Ok(farm)
}

fn child_setup(
    parent: libc::pid_t,
    accepting: &[OwnedFd],
    backlog: &[OwnedFd],
) -> Result<Listeners> {
    sys::die_with_parent(parent)?;
    sys::detach_stdio()?;
    // The child holds the inherited listener descriptors. It must close them
    // once building is done, so that only the parent owns the listeners; take
    // ownership of the same descriptor numbers.
    let adopt = |fds: &[OwnedFd]| -> Vec<OwnedFd> {
        fds.iter()
            // SAFETY: after fork the child's copy of the parent's vectors is never
            // dropped (the child leaves only through exit()), so these new
            // OwnedFds are the sole owners of the descriptors in this process.
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd.as_raw_fd()) })
            .collect()
    };
    Ok(Listeners {
        accepting: adopt(accepting),
        _backlog: adopt(backlog),
    })
}

/// Waits until each never-accepting listener holds exactly its share of
/// --unaccepted children (TCP_INFO of a listener: tcpi_unacked = accept queue).
fn wait_backlog_queues(plan: &Plan, backlog: &[OwnedFd]) -> Result<Vec<u64>> {
    let total = plan.request.count(Phase::Unaccepted);
    let want: Vec<u64> = (0..backlog.len())
        .map(|l| crate::plan::split(total, backlog.len() as u32, l as u32).1)
        .collect();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let have: Vec<u64> = backlog
            .iter()
            .map(|fd| sys::tcp_info(fd).map(|i| u64::from(i.tcpi_unacked)))
            .collect::<Result<_>>()?;
        if have == want {
            return Ok(have);
        }
        if Instant::now() >= deadline {
            return fail(format!(
                "--unaccepted: accept queues hold {have:?} children, expected {want:?}"
            ));
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until sockstat's `tw` equals what was there plus the TIME_WAITs made
/// (the transient FIN_WAIT2 minisockets have all become TIME_WAIT by then).
fn wait_time_wait(before: u64, made: u64) -> Result<()> {
    let want = before + made;
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let tw = host::sockstat_tw()?;
        if tw == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return fail(format!(
                "/proc/net/sockstat reports tw {tw}, expected {want} ({before} before the build + {made} made); TIME_WAIT sockets were killed, most likely by RSTs (tcp_rfc1337=0); pass --exact-time-wait in a throwaway netns"
            ));
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Non-blocking connects to the (full) first --backlog-listen socket; each stays
/// SYN_SENT because the kernel drops its SYN.
fn overflow_clients(plan: &Plan, backlog_addrs: &[SocketAddr]) -> Result<Vec<OwnedFd>> {
    let n = plan.request.overflow;
    let Some(dst) = backlog_addrs.first() else {
        return Ok(Vec::new());
    };
    let mut held = Vec::new();
    for _ in 0..n {
        let fd = sys::tcp_socket(&dst.ip())?;
        sys::connect_nowait(&fd, dst)?;
        held.push(fd);
    }
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    for fd in &held {
        loop {
            let state = sys::tcp_info(fd)?.tcpi_state;
            if state == sys::TCP_SYN_SENT {
                break;
            }
            if Instant::now() >= deadline {
                return fail(format!(
                    "--overflow client fd {} is {} instead of SYN_SENT: the accept queue was not full",
                    fd.as_raw_fd(),
                    sys::state_name(state)
                ));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(held)
}

fn expected(plan: &Plan) -> Expected {
    let r = &plan.request;
    // Reset connections leave no socket in any table (both ends are CLOSE).
    let reset = if r.reset_close_wait {
        r.count(Phase::CloseWait)
    } else {
        0
    };
    let close_waits = r.count(Phase::CloseWait) + r.count(Phase::CloseWaitRead) - reset;
    // Given-up unaccepted connections: client FIN_WAIT2, queued child CLOSE_WAIT.
    let (unaccepted_open, given_up) = if r.give_up {
        (0, r.count(Phase::Unaccepted))
    } else {
        (r.count(Phase::Unaccepted), 0)
    };
    Expected {
        ESTABLISHED: 2 * r.count(Phase::Established) + 2 * unaccepted_open,
        SYN_SENT: r.overflow,
        FIN_WAIT2: close_waits + given_up,
        TIME_WAIT: r.count(Phase::TimeWait),
        CLOSE_WAIT: close_waits + given_up,
        LISTEN: (r.listen.len() + r.backlog_listen.len()) as u64,
        ..Expected::default()
    }
}

/// Holds until the hold time passes, stdin reaches EOF, or SIGTERM/SIGINT. A
/// worker that dies meanwhile is an error (the farm is no longer what it said).
/// With --grow-close-wait, the parent adds CLOSE_WAIT connections while holding.
fn hold(plan: &Plan, farm: &Farm, accepting: &[(OwnedFd, SocketAddr)]) -> Result<()> {
    let signals = sys::termination_signalfd()?;
    let deadline = Instant::now() + plan.request.hold;
    let watch_stdin = !plan.request.ignore_stdin;
    let mut buf = [0u8; 4096];
    let mut leak = Leak {
        held: Vec::new(),
        steps_done: 0,
        next: plan.request.growth.map(|g| Instant::now() + g.every),
    };
    loop {
        let mut now = Instant::now();
        if let (Some(g), Some(next)) = (plan.request.growth, leak.next) {
            if now >= next {
                leak.step(g.per_step, accepting)?;
                leak.steps_done += 1;
                leak.next = (leak.steps_done < g.steps).then(|| next + g.every);
                now = Instant::now();
            }
        }
        if now >= deadline {
            return Ok(());
        }
        let wake = leak.next.map_or(deadline, |n| n.min(deadline));
        let mut fds = vec![libc::pollfd {
            fd: signals.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        for w in &farm.workers {
            fds.push(libc::pollfd {
                fd: w.report.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if watch_stdin {
            fds.push(libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        sys::poll(&mut fds, wake.saturating_duration_since(now))?;
        if fds[0].revents != 0 {
            return Ok(());
        }
        for (pfd, w) in fds[1..].iter().zip(&farm.workers) {
            if pfd.revents != 0 {
                return fail(format!(
                    "worker pid {} {} while holding",
                    w.pid,
                    wait_briefly(w.pid)
                ));
            }
        }
        if watch_stdin {
            let stdin = fds[fds.len() - 1];
            if stdin.revents & libc::POLLNVAL != 0 {
                // No stdin at all counts as EOF.
                return Ok(());
            }
            if stdin.revents != 0 {
                match sys::read_some(0, &mut buf) {
                    Ok(0) | Err(_) => return Ok(()),
                    Ok(_) => {}
                }
            }
        }
    }
}

/// The connections --grow-close-wait made: held (never closed) until the farm exits.
struct Leak {
    held: Vec<OwnedFd>,
    steps_done: u64,
    /// When the next step is due; `None` once all steps are done.
    next: Option<Instant>,
}

impl Leak {
    /// Makes `n` connections round-robin over the accepting listeners; each client shuts
    /// down its sending side, so the accepted end turns CLOSE_WAIT (EOF unread).
    fn step(&mut self, n: u64, accepting: &[(OwnedFd, SocketAddr)]) -> Result<()> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        for i in 0..n {
            let Some((listener, addr)) = accepting.get((i as usize) % accepting.len().max(1))
            else {
                return fail("--grow-close-wait: no --listen socket");
            };
            let client = sys::tcp_socket(&addr.ip())?;
            sys::set_timeout(&client, libc::SO_SNDTIMEO, SETTLE_TIMEOUT)?;
            sys::connect(&client, addr)?;
            sys::shutdown_write(&client)?;
            let (server, _) = sys::accept(listener, addr)?;
            worker::wait_state(&server, sys::TCP_CLOSE_WAIT, deadline)
                .map_err(|e| FarmError(format!("--grow-close-wait: {}", e.0)))?;
            self.held.push(server);
            self.held.push(client);
        }
        Ok(())
    }
}

pub fn run(args: Args) -> Result<()> {
    if let Some(c) = crate::churn::Churn::from_args(&args)? {
        return crate::churn::run(c);
    }
    if let Some(f) = crate::forks::ForkRun::from_args(&args)? {
        return crate::forks::run(f);
    }
    let started = Instant::now();
    let request = Request::from_args(args)?;
    host::apply_sysctls(&request)?;
    let nofile = sys::raise_nofile_limit()?;
    let limits = host::read_limits(nofile)?;
    let tw_before = limits.tw_in_use;
    let mut plan = Plan::resolve(request, limits)?;
    for warning in plan.warnings() {
        eprintln!("sockfarm: warning: {warning}");
    }
    let counters_before = host::guard_counters()?;

    let mut accepting = Vec::new();
    let mut accepting_addrs = Vec::new();
    for addr in &plan.request.listen {
        let (fd, bound) = open_listener(addr, plan.listen_backlog, true)?;
        accepting.push(fd);
        accepting_addrs.push(bound);
    }
    let mut backlog = Vec::new();
    let mut backlog_addrs = Vec::new();
    for addr in &plan.request.backlog_listen {
        let (fd, bound) = open_listener(addr, plan.unaccepted_backlog, false)?;
        backlog.push(fd);
        backlog_addrs.push(bound);
    }
    plan.set_bound_addrs(&accepting_addrs, &backlog_addrs);

    let mut farm = spawn_workers(&plan, &accepting, &backlog)?;
    let mut queued = vec![0; backlog.len()];
    let mut time_wait_started = None;
    let mut phase_ms = BTreeMap::new();
    for phase in Phase::ALL {
        if plan.request.count(phase) == 0 {
            continue;
        }
        if phase == Phase::TimeWait {
            time_wait_started = Some(SystemTime::now());
        }
        let phase_started = Instant::now();
        farm.broadcast(phase.code())?;
        farm.gather(Instant::now() + plan.phase_deadline(phase), phase.flag())?;
        if phase == Phase::Unaccepted {
            queued = wait_backlog_queues(&plan, &backlog)?;
        }
        phase_ms.insert(phase.name(), phase_started.elapsed().as_millis() as u64);
    }
    // --overflow: clients whose SYNs the full accept queue drops. Held here until exit.
    let _overflow = overflow_clients(&plan, &backlog_addrs)?;
    host::check_counters(
        &counters_before,
        &host::guard_counters()?,
        plan.request.overflow > 0,
    )?;
    if tw_before == 0 {
        wait_time_wait(0, plan.request.count(Phase::TimeWait))?;
    }

    farm.broadcast(b'Q')?;
    let lines = farm.gather(Instant::now() + Duration::from_secs(120), "report")?;
    let workers = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<WorkerReport>(l)
                .map_err(|e| FarmError(format!("worker report: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;

    let pid = std::process::id();
    let mut listeners = Vec::new();
    for (fd, addr) in accepting.iter().zip(&accepting_addrs) {
        listeners.push(ListenerReport {
            addr: addr.to_string(),
            pid,
            fd: fd.as_raw_fd(),
            role: "accept",
            backlog: plan.listen_backlog,
            queued: 0,
        });
    }
    for ((fd, addr), q) in backlog.iter().zip(&backlog_addrs).zip(&queued) {
        listeners.push(ListenerReport {
            addr: addr.to_string(),
            pid,
            fd: fd.as_raw_fd(),
            role: "backlog",
            backlog: plan.unaccepted_backlog,
            queued: *q,
        });
    }
    let ready = Ready {
        pid,
        netns: host::netns_id()?,
        listeners,
        workers,
        expected: expected(&plan),
        build_ms: started.elapsed().as_millis() as u64,
        phase_ms,
        time_wait_valid_until_unix_ms: time_wait_started.map(|t| unix_ms(t) + 60_000),
    };
    let line =
        serde_json::to_string(&ready).map_err(|e| FarmError(format!("encode ready line: {e}")))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| FarmError(format!("write ready line to stdout: {e}")))?;
    drop(out);

    let accepting: Vec<(OwnedFd, SocketAddr)> =
        accepting.into_iter().zip(accepting_addrs).collect();
    hold(&plan, &farm, &accepting)?;
    drop(farm);
    Ok(())
}
