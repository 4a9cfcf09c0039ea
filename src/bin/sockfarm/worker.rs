//! A worker process: makes its share of each phase's connections when the parent
//! says so, holds the resulting descriptors, and reports them. Runs in a forked
//! child; talks to the parent only over its two pipes.
//!
//! Protocol: the parent writes one phase byte (see `Phase::code`) or `Q`; the
//! worker answers one line, `ok`, `err <message>` or (for `Q`) the JSON
//! `WorkerReport`. EOF on the control pipe means "exit now".

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::thread;
use std::time::{Duration, Instant};

use crate::plan::{Phase, Plan};
use crate::report::{SocketReport, WorkerCounts, WorkerReport};
use crate::sys::{self, fail, FarmError, Result};

/// Longest a single blocking connect() may take (SO_SNDTIMEO). On loopback it
/// takes microseconds; a full accept queue would make it wait for SYN retries.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a worker waits for a peer's FIN when it reads to EOF (SO_RCVTIMEO).
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a worker waits for the sockets of one phase to reach their states.
const STATE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// A socket the worker keeps open until it exits.
struct Held {
    fd: OwnedFd,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    side: Side,
}

/// The listeners inherited from the parent; closed once building is done.
pub struct Listeners {
    pub accepting: Vec<OwnedFd>,
    /// Never used by a worker; held only so that dropping `Listeners` closes them.
    pub _backlog: Vec<OwnedFd>,
}

struct Worker<'a> {
    plan: &'a Plan,
    index: u32,
    listeners: Option<Listeners>,
    quiet: bool,
    established: Vec<Held>,
    close_wait: Vec<Held>,
    close_wait_read: Vec<Held>,
    fin_wait2: Vec<Held>,
    unaccepted_clients: Vec<Held>,
    detached: Vec<Held>,
    time_wait_made: u64,
}

/// Runs the worker loop until the parent closes the control pipe; returns the
/// process exit code.
pub fn run(
    plan: &Plan,
    index: u32,
    listeners: Listeners,
    control: OwnedFd,
    report: OwnedFd,
) -> i32 {
    let mut worker = Worker {
        plan,
        index,
        listeners: Some(listeners),
        quiet: plan.request.quiet_fds,
        established: Vec::new(),
        close_wait: Vec::new(),
        close_wait_read: Vec::new(),
        fin_wait2: Vec::new(),
        unaccepted_clients: Vec::new(),
        detached: Vec::new(),
        time_wait_made: 0,
    };
    // Bounded: the parent sends one byte per phase plus one `Q`, then only
    // closes the pipe (or dies, and PR_SET_PDEATHSIG kills us), so the read
    // after the last request blocks until the farm ends.
    let mut byte = [0u8; 1];
    for _ in 0..=Phase::ALL.len() + 1 {
        let n = match sys::read_some(control.as_raw_fd(), &mut byte) {
            Ok(n) => n,
            Err(_) => return 1,
        };
        if n == 0 {
            return 0;
        }
        let answer = match byte[0] {
            b'Q' => worker.report().map(|json| json + "\n"),
            code => match Phase::from_code(code) {
                Some(phase) => worker.run_phase(phase).map(|()| "ok\n".to_string()),
                None => fail(format!("unknown control byte {code}")),
            },
        };
        let (line, failed) = match answer {
            Ok(line) => (line, false),
            Err(e) => (format!("err {}\n", e.0.replace('\n', " ")), true),
        };
        if sys::write_all(report.as_raw_fd(), line.as_bytes()).is_err() || failed {
            return 1;
        }
    }
    // More requests than phases: the parent is confused; exit and let it notice.
    1
}

impl Worker<'_> {
    fn run_phase(&mut self, phase: Phase) -> Result<()> {
        let (start, len) = self.plan.share(phase, self.index);
        match phase {
            Phase::Unaccepted => self.unaccepted_phase(start, len),
            _ => self.accepting_phase(phase, start, len),
        }
        .map_err(|e| FarmError(format!("{}: {}", phase.flag(), e.0)))
    }

    fn listeners(&self) -> Result<&Listeners> {
        self.listeners
            .as_ref()
            .ok_or_else(|| FarmError("listeners already closed".into()))
    }

    /// Makes one client socket to `dst`, optionally from source address `src`.
    fn connect(&self, dst: &SocketAddr, src: Option<IpAddr>) -> Result<OwnedFd> {
        let fd = sys::tcp_socket(&dst.ip())?;
        sys::set_timeout(&fd, libc::SO_SNDTIMEO, CONNECT_TIMEOUT)?;
        if let Some(ip) = src {
            // Defer the port choice to connect(), so the port is unique per
            // (source, destination) rather than per source address alone.
            sys::set_int_opt(
                &fd,
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                1,
                "IP_BIND_ADDRESS_NO_PORT",
            )?;
            sys::bind(&fd, &SocketAddr::new(ip, 0))?;
        }
        sys::connect(&fd, dst).map_err(|e| {
            if e.0.contains("Cannot assign requested address") {
                FarmError(format!(
                    "{} (ephemeral ports exhausted: add --listen addresses or --source-ips, or --widen-port-range)",
                    e.0
                ))
            } else {
                e
            }
        })?;
        Ok(fd)
    }

    fn client(&self, fd: OwnedFd, dst: SocketAddr) -> Result<Held> {
        let local = if self.quiet {
            None
        } else {
            Some(sys::local_addr(&fd)?)
        };
        Ok(Held {
            fd,
            local,
            remote: Some(dst),
            side: Side::Client,
        })
    }

    fn accepting_phase(&mut self, phase: Phase, start: u64, len: u64) -> Result<()> {
        let before = (
            self.established.len(),
            self.close_wait.len(),
            self.close_wait_read.len(),
            self.fin_wait2.len(),
        );
        let mut done = 0;
        // Connect a batch, then accept as many: every worker does the same, so an
        // accept queue never holds more than processes * batch children (the
        // plan keeps that under somaxconn). The children we accept may belong to
        // another worker's clients; only the counts per listener must match.
        while done < len {
            // TIME_WAIT connections go one at a time: the server must answer the
            // client's FIN with its own FIN before the 40 ms delayed-ACK timer
            // fires. Otherwise the timer's pure ACK may overtake the FIN on
            // loopback (per-CPU queues), draw an ACK from the new TIME_WAIT
            // socket, the closed server end answers that with RST, and with
            // tcp_rfc1337=0 the RST kills the TIME_WAIT socket.
            let batch = if phase == Phase::TimeWait {
                1
            } else {
                self.plan.batch
            };
            let n = batch.min(len - done);
            let mut pending: Vec<(usize, Option<OwnedFd>)> = Vec::with_capacity(n as usize);
            for i in 0..n {
                let (l, src) = self.plan.target_of(phase, start + done + i);
                let dst = self.plan.main_targets[l].addr;
                let fd = self.connect(&dst, src)?;
                let keep = match phase {
                    Phase::CloseWait | Phase::CloseWaitRead => {
                        sys::shutdown_write(&fd)?;
                        true
                    }
                    // The client closes first, so the client end gets TIME_WAIT.
                    Phase::TimeWait => false,
                    _ => true,
                };
                pending.push((l, keep.then_some(fd)));
            }
            for (l, client) in pending {
                let listen_addr = self.plan.main_targets[l].addr;
                let (srv, peer) = sys::accept(&self.listeners()?.accepting[l], &listen_addr)?;
                let server = Held {
                    fd: srv,
                    local: Some(listen_addr),
                    remote: peer,
                    side: Side::Server,
                };
                let client = match client {
                    Some(fd) => Some(self.client(fd, listen_addr)?),
                    None => None,
                };
                match phase {
                    Phase::Established => {
                        self.established.push(server);
                        self.established.extend(client);
                    }
                    Phase::CloseWait => {
                        self.close_wait.push(server);
                        self.fin_wait2.extend(client);
                    }
                    Phase::CloseWaitRead => {
                        sys::set_timeout(&server.fd, libc::SO_RCVTIMEO, READ_TIMEOUT)?;
                        sys::read_to_eof(&server.fd)?;
                        self.close_wait_read.push(server);
                        self.fin_wait2.extend(client);
                    }
                    Phase::TimeWait => {
                        close_after_peer(server.fd)?;
                        self.time_wait_made += 1;
                    }
                    Phase::Unaccepted => return fail("internal: unaccepted phase accepts nothing"),
                }
            }
            done += n;
        }
        let deadline = Instant::now() + STATE_TIMEOUT;
        wait_states(
            &self.established[before.0..],
            sys::TCP_ESTABLISHED,
            deadline,
        )?;
        wait_states(&self.close_wait[before.1..], sys::TCP_CLOSE_WAIT, deadline)?;
        wait_states(
            &self.close_wait_read[before.2..],
            sys::TCP_CLOSE_WAIT,
            deadline,
        )?;
        wait_states(&self.fin_wait2[before.3..], sys::TCP_FIN_WAIT2, deadline)?;
        if phase == Phase::CloseWait && self.plan.request.reset_close_wait {
            self.reset_close_wait(before.1, before.3, deadline)?;
        }
        Ok(())
    }

    /// --reset-close-wait: the clients of this phase's CLOSE_WAIT connections abort
    /// (SO_LINGER {1, 0} then close: an RST from FIN_WAIT2). `tcp_reset()` moves each
    /// server end from CLOSE_WAIT to CLOSE and unhashes it; its descriptor is kept.
    fn reset_close_wait(
        &mut self,
        servers_from: usize,
        clients_from: usize,
        deadline: Instant,
    ) -> Result<()> {
        let clients: Vec<Held> = self.fin_wait2.drain(clients_from..).collect();
        for c in &clients {
            sys::set_linger_zero(&c.fd)?;
        }
        drop(clients);
        let servers: Vec<Held> = self.close_wait.drain(servers_from..).collect();
        wait_states(&servers, sys::TCP_CLOSE, deadline)?;
        self.detached.extend(servers);
        Ok(())
    }

    fn unaccepted_phase(&mut self, start: u64, len: u64) -> Result<()> {
        let before = self.unaccepted_clients.len();
        for i in 0..len {
            let (l, src) = self.plan.target_of(Phase::Unaccepted, start + i);
            let dst = self.plan.backlog_targets[l].addr;
            let fd = self.connect(&dst, src)?;
            let held = self.client(fd, dst)?;
            self.unaccepted_clients.push(held);
        }
        let deadline = Instant::now() + STATE_TIMEOUT;
        wait_states(
            &self.unaccepted_clients[before..],
            sys::TCP_ESTABLISHED,
            deadline,
        )?;
        if self.plan.request.give_up {
            // The client gives up: its FIN reaches the child still in the accept
            // queue, which turns CLOSE_WAIT without ever getting a descriptor.
            for held in &self.unaccepted_clients[before..] {
                sys::shutdown_write(&held.fd)?;
            }
            wait_states(
                &self.unaccepted_clients[before..],
                sys::TCP_FIN_WAIT2,
                deadline,
            )?;
        }
        Ok(())
    }

    /// Closes the inherited listeners (the parent alone owns them from now on)
    /// and describes what this worker holds, as one JSON line.
    fn report(&mut self) -> Result<String> {
        self.listeners = None;
        let list = |held: &[Held]| -> Option<Vec<SocketReport>> {
            if self.quiet {
                return None;
            }
            Some(held.iter().map(describe).collect())
        };
        let report = WorkerReport {
            pid: sys::getpid() as u32,
            counts: WorkerCounts {
                established: self.established.len() as u64,
                close_wait: self.close_wait.len() as u64,
                close_wait_read: self.close_wait_read.len() as u64,
                fin_wait2: self.fin_wait2.len() as u64,
                unaccepted_clients: self.unaccepted_clients.len() as u64,
                time_wait_made: self.time_wait_made,
                detached: self.detached.len() as u64,
            },
            established: list(&self.established),
            close_wait: list(&self.close_wait),
            close_wait_read: list(&self.close_wait_read),
            fin_wait2: list(&self.fin_wait2),
            unaccepted_clients: list(&self.unaccepted_clients),
            detached: list(&self.detached),
        };
        serde_json::to_string(&report).map_err(|e| FarmError(format!("encode worker report: {e}")))
    }
}

fn describe(held: &Held) -> SocketReport {
    let show = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    SocketReport {
        fd: held.fd.as_raw_fd(),
        local: show(held.local),
        remote: show(held.remote),
        side: match held.side {
            Side::Client => "client".to_string(),
            Side::Server => "server".to_string(),
        },
    }
}

/// Server end of a TIME_WAIT connection: read the client's FIN, send ours, and
/// wait until the client's ACK has moved us to CLOSE. By then the client has
/// entered TIME_WAIT, and closing the fd removes the server end without a trace.
fn close_after_peer(fd: OwnedFd) -> Result<()> {
    sys::set_timeout(&fd, libc::SO_RCVTIMEO, READ_TIMEOUT)?;
    sys::read_to_eof(&fd)?;
    sys::shutdown_write(&fd)?;
    let deadline = Instant::now() + STATE_TIMEOUT;
    wait_state(&fd, sys::TCP_CLOSE, deadline)?;
    drop(fd);
    Ok(())
}

/// Polls TCP_INFO until the socket is in `want` or the deadline passes. On
/// loopback the transition has nearly always happened already.
pub fn wait_state(fd: &OwnedFd, want: u8, deadline: Instant) -> Result<()> {
    let mut pause = Duration::from_micros(50);
    loop {
        let state = sys::tcp_info(fd)?.tcpi_state;
        if state == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return fail(format!(
                "socket fd {} stayed in {} instead of reaching {}",
                fd.as_raw_fd(),
                sys::state_name(state),
                sys::state_name(want)
            ));
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

fn wait_states(held: &[Held], want: u8, deadline: Instant) -> Result<()> {
    for h in held {
        wait_state(&h.fd, want, deadline)?;
    }
    Ok(())
}
